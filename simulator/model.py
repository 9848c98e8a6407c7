"""The simulator's named constants and the per-operation quantities derived from a workload.

Every number the step model uses that is not in the topology or the workload is a field of
`SimConstants`, with its default and where the default comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from hdc.config import meta
from hdc.workload import Workload
from simulator.compute import GENERATIONS, layer_times, logits_times


@dataclass(frozen=True)
class SimConstants:
    compute_efficiency: float = meta(
        "achieved fraction of the GPU's peak FLOP/s in forward/backward compute; calibrate it "
        "with simulator.calibrate_compute_efficiency (e.g. to a published single-site MFU); one per "
        "GPU generation: the GEMM shapes' own efficiency is modelled (simulator.compute)",
        gt=0.0, le=1.0, default=0.75)
    tp_comm_overlap: float = meta(
        "fraction of tensor-parallel communication hidden under compute (0 = all exposed)",
        ge=0.0, le=1.0, default=0.0)
    activation_bytes: int = meta("bytes per activation element (2 = bf16)", choices=(2, 4), default=2)
    pp_scatter_gather: bool = meta(
        "each TP rank sends 1/tp of the activation between stages (Megatron scatter-gather)",
        default=True)
    hbm_bandwidth_Bps: Optional[float] = meta(
        "GPU memory bandwidth for the optimizer step and memory-bound operators; default: the GPU "
        "generation's (simulator.compute.GENERATIONS: A100 2.039 TB/s, H100 3.35 TB/s)", gt=0.0, default=None)
    optimizer_bytes_per_param: float = meta(
        "HBM bytes an Adam step moves per owned parameter: reads fp32 grad, master, m, v (16), "
        "writes master, m, v (12) and the bf16 weight (2)", gt=0.0, default=30.0)
    intra_node_efficiency: float = meta("achieved fraction of NVLink bandwidth", gt=0.0, le=1.0, default=1.0)
    intra_pod_efficiency: float = meta("achieved fraction of NIC bandwidth inside a pod", gt=0.0, le=1.0,
                                       default=1.0)
    intra_site_efficiency: float = meta("achieved fraction of bandwidth across pods", gt=0.0, le=1.0,
                                        default=1.0)
    wan_efficiency: float = meta("achieved goodput fraction of WAN capacity (ASSUMPTION: 0.9 for RDMA/TCP "
                                 "over long-haul links; intra-site losses are folded into compute_efficiency "
                                 "by calibration)", gt=0.0, le=1.0, default=0.9)

    def hbm_Bps(self, generation: str) -> float:
        """HBM bandwidth: this constant when set, else the GPU generation's."""
        return self.hbm_bandwidth_Bps or GENERATIONS[generation].hbm_bandwidth_Bps

    def link_efficiency(self) -> dict[str, float]:
        return {"intra_node": self.intra_node_efficiency, "intra_pod": self.intra_pod_efficiency,
                "intra_site": self.intra_site_efficiency, "wan": self.wan_efficiency}

    def with_(self, **kw) -> "SimConstants":
        return replace(self, **kw)


@dataclass(frozen=True)
class OpCosts:
    """Per-GPU costs of the pipeline's operations, per virtual stage vs = chunk · pp + stage
    (one micro-batch through that stage's layers)."""
    forward_s: list[float]  # compute only
    backward_s: list[float]  # compute, recomputation included
    tp_forward_s: list[float]  # exposed TP (and CP, FSDP) communication
    tp_backward_s: list[float]
    p2p_bytes: int  # activation (or its gradient) one TP rank sends to the next stage
    tp_bytes_per_microbatch: float  # bytes all GPUs send over NVLink for TP in one micro-batch, all stages


def virtual_stage_layers(workload: Workload) -> list[int]:
    """Layers of each virtual stage vs = chunk · pp + stage: a stage's layers split evenly over its chunks."""
    p = workload.parallel
    per_stage = workload.stage_layers()
    return [per_stage[vs % p.pp] // p.vpp for vs in range(p.pp * p.vpp)]


def op_costs(workload: Workload, gpu, constants: SimConstants, tp_collective_s: float,
             tp_collective_bytes: float, cp_exchange_s: float = 0.0,
             fsdp_s: tuple[float, float] = (0.0, 0.0)) -> OpCosts:
    """Compute per virtual stage from the shape-aware roofline (simulator.compute): its layers,
    plus the output projection on the last one. TP with sequence parallelism: per layer 2
    all-gathers and 2 reduce-scatters of the activation in forward, and again in backward
    (Korthikanti et al. 2022), 4 more when full recomputation redoes the forward;
    `tp_collective_s` is one of them on the node's NVLink. Context parallelism's K/V ring
    (`cp_exchange_s` per layer, forward; twice in backward for dK/dV) hides under the attention
    core and is exposed only where it is longer. FSDP's per-layer all-gather (`fsdp_s[0]`,
    forward and backward) and reduce-scatter (`fsdp_s[1]`, backward) are prefetched under the
    neighbouring layer's compute and exposed only where longer. The exposed TP, CP and FSDP
    communication together form `tp_forward_s` / `tp_backward_s`."""
    m, p = workload.model, workload.parallel
    eff = constants.compute_efficiency
    hbm = constants.hbm_Bps(gpu.generation)
    layer = layer_times(workload, gpu.peak_flops, eff, gpu.generation, constants.activation_bytes, hbm)
    logit_f, logit_b = logits_times(workload, gpu.peak_flops, eff, gpu.generation, constants.activation_bytes, hbm)
    attn_f = layer.by_op["attention"][0]
    cp_f = max(cp_exchange_s - attn_f, 0.0)
    cp_b = max(2 * cp_exchange_s - 2 * attn_f, 0.0)
    fsdp_f = max(fsdp_s[0] - layer.forward_s, 0.0)
    fsdp_b = max(fsdp_s[0] + fsdp_s[1] - layer.backward_s, 0.0)
    tp_per_layer = tp_collective_s * (1.0 - constants.tp_comm_overlap) if p.tp > 1 else 0.0
    full = workload.recompute == "full"
    layers = virtual_stage_layers(workload)
    last = len(layers) - 1
    fwd = [n * layer.forward_s + (logit_f if vs == last else 0.0) for vs, n in enumerate(layers)]
    bwd = [n * layer.backward_s + (logit_b if vs == last else 0.0) for vs, n in enumerate(layers)]
    tp_f = [n * (4 * tp_per_layer + cp_f + fsdp_f) for n in layers]
    tp_b = [n * ((8 if full else 4) * tp_per_layer + cp_b + (cp_f if full else 0.0) + fsdp_b) for n in layers]
    act = p.micro_batch_size * m.seq_len // p.cp * m.hidden * constants.activation_bytes
    p2p = act // p.tp if constants.pp_scatter_gather else act
    collectives = (12 if full else 8) * m.layers
    tp_bytes = collectives * tp_collective_bytes * p.tp * p.cp * p.dp if p.tp > 1 else 0.0
    return OpCosts(fwd, bwd, tp_f, tp_b, int(p2p), tp_bytes)
