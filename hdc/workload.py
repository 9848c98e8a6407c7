"""Workload: the model, its parallel layout and batch, and what each DP rank must synchronize.

Parameter counts follow the transformer's weight matrices exactly (attention with grouped
KV heads, gated or plain MLP, norms, untied or tied embeddings). Training FLOPs per token
use the PaLM convention (Chowdhery et al. 2022, App. B): 6·N_matmul + 12·L·d·s, counting
every parameter that takes part in a matmul (not the input embedding lookup) and the
attention score/value products without causal savings — the convention behind MFU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from hdc.config import from_dict, load_yaml, meta, preset_source, yaml_names
from hdc.errors import UserError

# What one simulated step may hold, so that no workload makes `hdc simulate` or a sweep run for
# minutes: the simulator's events grow with the buckets (2,271 buckets of Llama-3-70B took 11 s,
# 568 took 1.4 s) and with micro-batches × virtual stages × stages (115,200 took 7.7 s).
MAX_BUCKETS = 1024
MAX_PIPELINE_PASSES = 50_000


@dataclass
class ModelSpec:
    name: str = meta("model name")
    layers: int = meta("transformer layers", gt=0)
    hidden: int = meta("hidden size d_model", gt=0)
    heads: int = meta("attention heads", gt=0)
    kv_heads: int = meta("key/value heads (GQA); = heads for MHA", gt=0)
    ffn: int = meta("MLP inner size", gt=0)
    vocab: int = meta("vocabulary size", gt=0)
    seq_len: int = meta("training sequence length in tokens", gt=0)
    gated_mlp: bool = meta("SwiGLU-style gated MLP (3 matrices) instead of 2", default=True)
    tied_embeddings: bool = meta("output projection shares the input embedding", default=False)
    head_dim: Optional[int] = meta("per-head dimension; default hidden / heads", gt=0, default=None)

    def validate(self, path: str) -> None:
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise UserError(f"{path}.heads: must divide hidden ({self.hidden}) unless head_dim is given, got {self.heads}")
            self.head_dim = self.hidden // self.heads
        if self.heads % self.kv_heads:
            raise UserError(f"{path}.kv_heads: must divide heads ({self.heads}), got {self.kv_heads}")

    # -- parameters ---------------------------------------------------------
    @property
    def params_per_layer(self) -> int:
        d, hd = self.hidden, self.head_dim
        attn = d * self.heads * hd * 2 + d * self.kv_heads * hd * 2  # q, o  +  k, v
        mlp = (3 if self.gated_mlp else 2) * d * self.ffn
        norms = 2 * d
        return attn + mlp + norms

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def num_params(self) -> int:
        out = 0 if self.tied_embeddings else self.embedding_params
        return self.layers * self.params_per_layer + self.embedding_params + out + self.hidden

    @property
    def matmul_params(self) -> int:
        # every weight that multiplies activations: layers + the output projection
        return self.layers * self.params_per_layer + self.embedding_params

    def train_flops_per_token(self) -> float:
        """6·N_matmul + 12·L·(heads·head_dim)·seq  (PaLM, App. B: model FLOPs for MFU)."""
        return 6.0 * self.matmul_params + 12.0 * self.layers * self.heads * self.head_dim * self.seq_len


@dataclass
class Parallel:
    tp: int = meta("tensor-parallel size (kept inside a node)", gt=0, default=1)
    pp: int = meta("pipeline-parallel stages", gt=0, default=1)
    dp: int = meta("data-parallel replicas", gt=0, default=1)
    vpp: int = meta("virtual pipeline stages per rank (interleaved 1F1B)", gt=0, default=1)
    cp: int = meta("context-parallel size: each sequence split over cp GPUs, K/V passed around a ring "
                   "(placed next to TP; may span nodes)", gt=0, default=1)
    first_stage_layers: Optional[int] = meta("layers on the first pipeline stage (Megatron's "
                                             "--decoder-first-pipeline-num-layers); default: an even split",
                                             gt=0, default=None)
    last_stage_layers: Optional[int] = meta("layers on the last pipeline stage (--decoder-last-pipeline-num-layers); "
                                            "default: an even split", gt=0, default=None)
    micro_batch_size: int = meta("sequences per micro-batch", gt=0, default=1)
    global_batch_size: int = meta("sequences per optimizer step, all replicas", gt=0, default=1)

    def validate(self, path: str) -> None:
        per_step = self.micro_batch_size * self.dp
        if self.global_batch_size % per_step:
            raise UserError(f"{path}.global_batch_size: must be a multiple of micro_batch_size × dp "
                            f"({per_step}), got {self.global_batch_size}")
        if self.vpp > 1 and self.micro_batches % self.pp:  # Megatron's interleaved 1F1B requires it too
            raise UserError(f"{path}.global_batch_size: with vpp > 1 the micro-batches per step "
                            f"(global_batch_size / (micro_batch_size × dp) = {self.micro_batches}) must be a "
                            f"multiple of pp ({self.pp}), got global_batch_size {self.global_batch_size}")
        passes = self.micro_batches * self.vpp * self.pp
        if passes > MAX_PIPELINE_PASSES:
            raise UserError(f"{path}.global_batch_size: {self.global_batch_size} gives {self.micro_batches:,} "
                            f"micro-batches × vpp {self.vpp} × pp {self.pp} = {passes:,} pipeline passes per "
                            f"step to simulate; at most {MAX_PIPELINE_PASSES:,} (a few seconds)")

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def micro_batches(self) -> int:
        """Micro-batches each pipeline runs per step (gradient accumulation)."""
        return self.global_batch_size // (self.micro_batch_size * self.dp)


@dataclass
class Workload:
    model: ModelSpec = meta("the model")
    parallel: Parallel = meta("the parallel layout and batch", default_factory=Parallel)
    grad_bytes: int = meta("bytes per gradient element in the DP reduction and in memory (1 = int8 or "
                           "fp8, 2 = bf16, 4 = fp32)", choices=(1, 2, 4), default=2)
    param_bytes: int = meta("bytes per parameter element (weights in memory and in parameter all-gathers)",
                            choices=(1, 2, 4), default=2)
    overlap_grad_reduce: bool = meta("start each gradient bucket's reduction when backward has produced it "
                                     "(Megatron --overlap-grad-reduce); false: all after backward",
                                     default=True)
    recompute: str = meta("activation recomputation: none, selective (attention core, Korthikanti et al. "
                          "2022) or full (every layer's forward again in backward)",
                          choices=("none", "selective", "full"), default="selective")
    flash_attention: bool = meta("fused attention that never stores the s × s scores (memory; with "
                                 "recompute none the scores are kept otherwise)", default=True)
    fp8: bool = meta("GEMMs in FP8 (the GPU's FP8 peak; attention and elementwise stay bf16)", default=False)
    sequence_parallel: bool = meta("norms and residuals split over the TP ranks (Megatron "
                                   "--sequence-parallel); false: replicated on each", default=True)
    shard_params: bool = meta("FSDP / ZeRO-3 inside each site: parameters, gradients and optimizer states "
                              "sharded over the site's DP ranks; each layer's parameters all-gathered in "
                              "forward and again in backward, its gradients reduce-scattered, every "
                              "micro-batch; the strategy syncs each rank's shard across sites", default=False)
    bucket_numel: int = meta("gradient elements per bucket for overlapped reduction (Megatron default 40M)",
                             gt=0, default=40_000_000)

    def validate(self, path: str) -> None:
        p, m = self.parallel, self.model
        if (p.first_stage_layers or p.last_stage_layers) and p.pp < 2:
            raise UserError(f"{path}.parallel.first_stage_layers: uneven stages need pp >= 2, got pp {p.pp}")
        if p.first_stage_layers is None and p.last_stage_layers is None:
            if m.layers % (p.pp * p.vpp):
                raise UserError(f"{path}.parallel.pp: pp × vpp ({p.pp * p.vpp}) "
                                f"must divide the model's layers ({m.layers})")
        else:
            self._check_uneven(path)
        if m.seq_len % p.cp:
            raise UserError(f"{path}.parallel.cp: must divide the model's seq_len ({m.seq_len}), got {p.cp}")
        if self.shard_params and p.pp > 1:
            raise UserError(f"{path}.shard_params: FSDP / ZeRO-3 is modelled without pipeline parallelism "
                            f"(pp 1), got pp {p.pp}")
        buckets = -(-self.params_per_rank // self.bucket_numel)  # ceil
        if buckets > MAX_BUCKETS:
            least = -(-self.params_per_rank // MAX_BUCKETS)
            raise UserError(f"{path + '.' if path else ''}bucket_numel: {self.bucket_numel:,} gives {buckets:,} gradient "
                            f"buckets per rank ({self.params_per_rank:,} parameters); at most {MAX_BUCKETS:,}, "
                            f"so bucket_numel >= {least:,}")

    def _check_uneven(self, path: str) -> None:
        p, layers = self.parallel, self.model.layers
        first = p.first_stage_layers or 0
        last = p.last_stage_layers or 0
        middle_stages = p.pp - (p.first_stage_layers is not None) - (p.last_stage_layers is not None)
        rest = layers - first - last
        if rest < 0 or (middle_stages == 0 and rest) or (middle_stages and (rest <= 0 or rest % middle_stages)):
            raise UserError(f"{path}.parallel.first_stage_layers: first {p.first_stage_layers} and last "
                            f"{p.last_stage_layers} stage layers leave {rest} of the model's {layers} layers, "
                            f"which must split evenly over the other {middle_stages} stages")
        for name, n in (("first_stage_layers", p.first_stage_layers), ("last_stage_layers", p.last_stage_layers),
                        ("pp", rest // middle_stages if middle_stages else None)):
            if n is not None and n % p.vpp:
                raise UserError(f"{path}.parallel.{name}: every stage's layers must split evenly over vpp "
                                f"({p.vpp}) chunks, got {n} layers")

    def stage_layers(self) -> list[int]:
        """Layers on each pipeline stage (Megatron: first/last stage counts, the rest even)."""
        p, layers = self.parallel, self.model.layers
        if p.first_stage_layers is None and p.last_stage_layers is None:
            return [layers // p.pp] * p.pp
        middle = p.pp - (p.first_stage_layers is not None) - (p.last_stage_layers is not None)
        each = (layers - (p.first_stage_layers or 0) - (p.last_stage_layers or 0)) // middle if middle else 0
        out = [each] * p.pp
        if p.first_stage_layers is not None:
            out[0] = p.first_stage_layers
        if p.last_stage_layers is not None:
            out[-1] = p.last_stage_layers
        return out

    @property
    def params_per_rank(self) -> int:
        """Parameters one (tp, pp) rank holds: its share of the layers plus embeddings on the end stages.

        The largest stage is used (first/last stages carry the embeddings) since the DP sync of
        that stage bounds the step.
        """
        m, p = self.model, self.parallel
        layers = self.stage_layers()
        # input embedding on the first stage, output projection on the last; both when pp == 1
        if p.pp == 1:
            ends = [m.embedding_params * (1 if m.tied_embeddings else 2)]
        else:
            ends = [m.embedding_params] + [0] * (p.pp - 2) + [m.embedding_params]
        return max(n * m.params_per_layer + e for n, e in zip(layers, ends)) // p.tp

    @property
    def grad_size_bytes(self) -> int:
        """Gradient bytes each DP rank must synchronize per step."""
        return self.params_per_rank * self.grad_bytes

    def param_numels(self, numel: Optional[int] = None) -> list[int]:
        """The per-rank gradient buffer (default params_per_rank elements; with shard_params, a
        rank's shard) as parameters in production order, for bucketing (hdc.sync): tensors are
        not modelled one by one, so the buffer is parameters of bucket_numel elements (the last
        takes the remainder) and buckets are exactly bucket_numel, as Megatron's buffer makes them."""
        return self.buckets(numel)

    def buckets(self, numel: Optional[int] = None) -> list[int]:
        """Gradient bucket sizes in elements (last bucket takes the remainder)."""
        numel = self.params_per_rank if numel is None else numel
        per = self.bucket_numel
        out = [per] * (numel // per)
        if numel % per:
            out.append(numel % per)
        return out

    @property
    def tokens_per_step(self) -> int:
        return self.parallel.global_batch_size * self.model.seq_len

    def step_flops(self) -> float:
        return self.tokens_per_step * self.model.train_flops_per_token()


WORKLOAD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workloads")

# Model presets. Sources: Nemotron-4 340B tech report (NVIDIA, 2024, Table 1); Llama 3 paper
# (Meta, 2024, Table 3) for the 8B and 70B classes; the tiny models are the trainer's CPU models.
MODELS: dict[str, dict] = {
    "nemotron-4-340b": dict(name="nemotron-4-340b", layers=96, hidden=18432, heads=96, kv_heads=8,
                            ffn=73728, vocab=256000, seq_len=4096, gated_mlp=False, tied_embeddings=False),
    "llama-3-8b": dict(name="llama-3-8b", layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336,
                       vocab=128256, seq_len=8192, gated_mlp=True, tied_embeddings=False),
    "llama-3-70b": dict(name="llama-3-70b", layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672,
                        vocab=128256, seq_len=8192, gated_mlp=True, tied_embeddings=False),
    # DeepSeek-R1-Distill-Qwen-1.5B (the DeepScaleR policy): Qwen2.5-Math-1.5B's shape, from its
    # config.json (28 layers, hidden 1536, 12 heads, 2 KV heads, ffn 8960, vocab 151936, untied)
    "deepseek-r1-distill-qwen-1.5b": dict(name="deepseek-r1-distill-qwen-1.5b", layers=28, hidden=1536, heads=12,
                                          kv_heads=2, ffn=8960, vocab=151936, seq_len=8192, gated_mlp=True,
                                          tied_embeddings=False),
    "tiny-qwen2": dict(name="tiny-qwen2", layers=4, hidden=256, heads=4, kv_heads=2, ffn=688,
                       vocab=512, seq_len=128, gated_mlp=True, tied_embeddings=True),
}


def model_preset(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; presets are {', '.join(sorted(MODELS))}")
    return from_dict(ModelSpec, MODELS[name])


def workload_from_dict(data: object) -> Workload:
    """A workload mapping; `model` may be a preset name or a full model mapping."""
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        data = {**data, "model": MODELS.get(data["model"]) or _unknown_model(data["model"])}
    return from_dict(Workload, data)


def _unknown_model(name: str) -> dict:
    raise UserError(f"model: unknown preset {name!r}; presets are {', '.join(sorted(MODELS))}")


def workload_names() -> list[str]:
    return yaml_names(WORKLOAD_DIR)


def load_workload(path_or_preset: str) -> Workload:
    """A workload YAML file, or a preset from workloads/ by name."""
    source = preset_source(path_or_preset, WORKLOAD_DIR, "workload")
    try:
        return workload_from_dict(load_yaml(source))
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
