"""Compute time that follows shapes: a transformer layer as its operators, each timed by a roofline.

Per micro-batch and virtual stage, one GPU (one tensor- and context-parallel rank) runs, per
layer, four GEMMs (QKV, attention output, MLP in, MLP out), the attention core and the
elementwise ops (norms, residual adds, activation). Each operator takes

    time = max(FLOPs / (peak × shape efficiency × compute_efficiency), bytes / HBM bandwidth)

(the roofline: Williams et al. 2009). The shape efficiency of a GEMM is what its tiling leaves
of the GPU (NVIDIA, "Matrix Multiplication Background User's Guide", §tile and wave
quantization): output tiles of TILE_M × TILE_N that overhang the matrix do wasted work, and the
last wave of tiles over the SMs runs partly empty. So small hidden sizes and large TP degrees
run below peak, with no constant fitted per model; `compute_efficiency` (SimConstants, one
per GPU generation) is what remains: kernel efficiency, launch gaps, clocks.

Backward: each GEMM's data- and weight-gradient GEMMs (the same FLOPs twice, transposed
shapes); attention core 2× forward; elementwise 2× the bytes. Recomputation adds the forward
again in backward: the attention core ('selective', Korthikanti et al. 2022 §5) or the whole
layer ('full'). FP8 runs the GEMMs at the GPU's FP8 peak (2× BF16 on Hopper); attention and
elementwise stay in BF16.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import ceil

from hdc.workload import Workload


@dataclass(frozen=True)
class Generation:
    """What the shape model needs to know about a GPU generation."""
    sms: int  # streaming multiprocessors the tiles are spread over
    tile_m: int  # output tile of the BF16 GEMM kernels (rows x columns)
    tile_n: int
    hbm_bandwidth_Bps: float  # for memory-bound operators
    fp8_speedup: float  # FP8 dense peak / BF16 dense peak (0: no FP8 tensor cores)


# SM counts and HBM bandwidth: NVIDIA A100 datasheet (108 SMs, 80 GB SXM 2.039 TB/s) and H100
# datasheet (SXM5: 132 SMs, 3.35 TB/s; FP8 1,979 vs BF16 989 dense TFLOP/s). Tile 256 x 128:
# the largest CUTLASS/cuBLAS BF16 tile on both (NVIDIA GEMM guide, "Tile quantization").
# 'generic' has no tiling (CPU models, tiny test topologies): shape efficiency 1.
GENERATIONS: dict[str, Generation] = {
    "ampere": Generation(sms=108, tile_m=256, tile_n=128, hbm_bandwidth_Bps=2.039e12, fp8_speedup=0.0),
    "hopper": Generation(sms=132, tile_m=256, tile_n=128, hbm_bandwidth_Bps=3.35e12, fp8_speedup=2.0),
    "generic": Generation(sms=1, tile_m=1, tile_n=1, hbm_bandwidth_Bps=3.35e12, fp8_speedup=2.0),
}


@lru_cache(maxsize=4096)
def gemm_shape_efficiency(gen: Generation, m: int, n: int, batch: int = 1) -> float:
    """Useful fraction of the tiles' work: tile quantization × wave quantization (NVIDIA GEMM guide)."""
    tiles_m, tiles_n = ceil(m / gen.tile_m), ceil(n / gen.tile_n)
    tile_util = (m * n) / (tiles_m * gen.tile_m * tiles_n * gen.tile_n)
    tiles = tiles_m * tiles_n * batch
    wave_util = tiles / (ceil(tiles / gen.sms) * gen.sms)
    return tile_util * wave_util


@dataclass(frozen=True)
class Op:
    """One operator of a layer's forward: FLOPs, HBM bytes and, for GEMMs, the shape."""
    name: str
    flops: float
    bytes: float
    shape: tuple[int, int, int, int] | None = None  # (m, n, k, batch) for GEMM-like ops
    fp8: bool = False  # runs on FP8 tensor cores


def _gemm(name: str, m: int, k: int, n: int, elem: int, fp8: bool, batch: int = 1) -> Op:
    """C[m,n] = A[m,k] B[k,n]: 2mnk FLOPs; reads A, B and writes C once."""
    return Op(name, 2.0 * m * n * k * batch, float(elem * (m * k + k * n + m * n) * batch), (m, n, k, batch), fp8)


def layer_ops(workload: Workload, act_bytes: int) -> list[Op]:
    """The forward operators of one layer on one GPU for one micro-batch."""
    m, p = workload.model, workload.parallel
    tp, cp = p.tp, p.cp
    T = p.micro_batch_size * m.seq_len // cp  # tokens this rank processes
    d, hd, h, kv = m.hidden, m.head_dim, m.heads, m.kv_heads
    f8 = workload.fp8
    ops = [
        _gemm("qkv", T, d, (h + 2 * kv) * hd // tp, act_bytes, f8),
        # attention core: QK^T and AV, 4·T·s·h·hd / tp FLOPs (PaLM's 12·L·h·hd·s per token, forward part)
        Op("attention", 4.0 * T * m.seq_len * h * hd / tp,
           float(act_bytes * 2 * T * (h + kv) * hd // tp), (T, m.seq_len, hd, p.micro_batch_size * h // tp)),
        _gemm("proj", T, h * hd // tp, d, act_bytes, f8),
        _gemm("fc1", T, d, m.ffn * (2 if m.gated_mlp else 1) // tp, act_bytes, f8),
        _gemm("fc2", T, m.ffn // tp, d, act_bytes, f8),
        Op("elementwise", 0.0, float(act_bytes * T * elementwise_elems_per_token(workload))),
    ]
    return ops


def elementwise_elems_per_token(workload: Workload) -> float:
    """Elements the non-GEMM ops read and write per token and layer: 2 norms (read d, write d),
    2 residual adds with dropout (read 2d, write d), the activation (read f or 2f gated, write f);
    norms and residuals work on 1/tp of the tokens with sequence parallelism."""
    m, p = workload.model, workload.parallel
    per_d = 10 * m.hidden / (p.tp if workload.sequence_parallel else 1)
    per_f = (3 if m.gated_mlp else 2) * m.ffn / p.tp
    return per_d + per_f


def logits_op(workload: Workload, act_bytes: int) -> Op:
    """The output projection on the last stage: [T, d] x [d, V/tp]."""
    m, p = workload.model, workload.parallel
    T = p.micro_batch_size * m.seq_len // p.cp
    return _gemm("logits", T, m.hidden, m.vocab // p.tp, act_bytes, workload.fp8)


def op_time_s(op: Op, peak_flops: float, efficiency: float, gen: Generation, hbm_Bps: float,
              backward: bool = False) -> float:
    """Roofline time of one operator (backward: its data- and weight-gradient passes)."""
    peak = peak_flops * (gen.fp8_speedup if op.fp8 else 1.0) * efficiency
    memory_s = op.bytes / hbm_Bps
    if op.shape is None:
        compute = op.flops / peak if op.flops else 0.0
        return max(compute, memory_s) * (2.0 if backward else 1.0)
    m, n, k, batch = op.shape
    if not backward:
        return max(op.flops / (peak * gemm_shape_efficiency(gen, m, n, batch)), memory_s)
    # dgrad (m x k output) and wgrad (k x n output), each the forward's FLOPs
    dgrad = max(op.flops / (peak * gemm_shape_efficiency(gen, m, k, batch)), memory_s)
    wgrad = max(op.flops / (peak * gemm_shape_efficiency(gen, k, n, batch)), memory_s)
    return dgrad + wgrad


@dataclass(frozen=True)
class LayerTimes:
    """Compute seconds of one layer for one micro-batch on one GPU."""
    forward_s: float
    backward_s: float  # includes recomputed forward work
    recompute_s: float  # the part of backward_s that recomputes forward operators
    by_op: dict  # name -> (forward_s, backward_s without recompute)


def layer_times(workload: Workload, peak_flops: float, efficiency: float, generation: str,
                act_bytes: int, hbm_Bps: float | None = None) -> LayerTimes:
    """One layer's operators timed (HBM bandwidth: the generation's unless given)."""
    gen = GENERATIONS[generation]
    hbm = hbm_Bps or gen.hbm_bandwidth_Bps
    by_op = {op.name: (op_time_s(op, peak_flops, efficiency, gen, hbm),
                       op_time_s(op, peak_flops, efficiency, gen, hbm, True))
             for op in layer_ops(workload, act_bytes)}
    fwd = sum(f for f, _ in by_op.values())
    bwd = sum(b for _, b in by_op.values())
    recompute = {"none": 0.0, "selective": by_op["attention"][0], "full": fwd}[workload.recompute]
    return LayerTimes(fwd, bwd + recompute, recompute, by_op)


def logits_times(workload: Workload, peak_flops: float, efficiency: float, generation: str,
                 act_bytes: int, hbm_Bps: float | None = None) -> tuple[float, float]:
    """(forward_s, backward_s) of the output projection (last pipeline stage only)."""
    gen = GENERATIONS[generation]
    hbm = hbm_Bps or gen.hbm_bandwidth_Bps
    op = logits_op(workload, act_bytes)
    return op_time_s(op, peak_flops, efficiency, gen, hbm), op_time_s(op, peak_flops, efficiency, gen, hbm, True)
