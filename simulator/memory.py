"""Peak memory per GPU: weights, gradients, optimizer states, activations.

Mixed-precision Adam as Megatron-LM keeps it (Rajbhandari et al. 2020, ZeRO §3.1):
weights in `param_bytes` (bf16), gradients in `grad_bytes` (fp32 main grads), optimizer
states 12 bytes per parameter (fp32 master weights, Adam m and v). The distributed optimizer
(ZeRO-1) shards the optimizer states over the DP ranks.

Activations per layer and micro-batch with tensor + sequence parallelism and selective
recomputation (flash attention): s·b·h·34 / tp bytes (Korthikanti et al. 2022, eq. 5 and
Table 2). Under 1F1B the first stage holds `pp` micro-batches in flight, i.e. all L layers'
worth, × (1 + (pp-1)/(pp·vpp)) with interleaving (Korthikanti et al. 2022, §4.2.3).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from hdc.workload import Workload

OPTIMIZER_BYTES_PER_PARAM = 12  # fp32 master + Adam m + Adam v


@dataclass(frozen=True)
class Memory:
    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    activations_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def activation_bytes(workload: Workload) -> float:
    """Activations the first pipeline stage holds at its peak (selective recompute)."""
    m, p = workload.model, workload.parallel
    per_layer = m.seq_len * p.micro_batch_size * m.hidden * 34 / p.tp
    in_flight = min(p.pp, p.micro_batches) / p.pp  # fewer micro-batches than stages: fewer in flight
    interleave = 1 + (p.pp - 1) / (p.pp * p.vpp) if p.vpp > 1 else 1.0
    return per_layer * m.layers * in_flight * interleave


def estimate(workload: Workload, distributed_optimizer: bool) -> Memory:
    """Peak per-GPU memory of the largest pipeline stage."""
    n = workload.params_per_rank
    shards = workload.parallel.dp if distributed_optimizer else 1
    return Memory(weights_bytes=n * workload.param_bytes, grads_bytes=n * workload.grad_bytes,
                  optimizer_bytes=n * OPTIMIZER_BYTES_PER_PARAM / shards,
                  activations_bytes=activation_bytes(workload))
