"""Peak memory per GPU: weights, gradients, optimizer states, activations.

Mixed-precision Adam as Megatron-LM keeps it (Rajbhandari et al. 2020, ZeRO §3.1):
weights in `param_bytes` (bf16), gradients in `grad_bytes` (the grad buffer), optimizer
states 12 bytes per parameter (fp32 master weights, Adam m and v). The distributed optimizer
(ZeRO-1) shards the optimizer states over the DP ranks.

Activations per layer and micro-batch with tensor + sequence parallelism depend on the
recomputation (Korthikanti et al. 2022, Table 2; see activation_bytes). Under 1F1B the
first stage holds `pp` micro-batches in flight, i.e. all L layers' worth, × (1 + (pp-1)/(pp·vpp))
with interleaving (Korthikanti et al. 2022, §4.2.3).
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
    """Activations the first pipeline stage holds at its peak. Per layer and micro-batch with
    TP + sequence parallelism (Korthikanti et al. 2022, eq. 2 and Table 2): none s·b·h·(34 +
    5·a·s/h)/tp (the 5·a·s/h attention scores are not kept with flash attention), selective
    s·b·h·34/tp (flash attention / recomputed attention core), full
    s·b·h·2/tp (only each layer's input is kept). s is the rank's s/cp tokens."""
    m, p = workload.model, workload.parallel
    s = m.seq_len / p.cp
    sbh = s * p.micro_batch_size * m.hidden
    scores = 0 if workload.flash_attention else 5 * m.heads * s / m.hidden
    per_layer = {"none": sbh * (34 + scores) / p.tp, "selective": sbh * 34 / p.tp,
                 "full": sbh * 2 / p.tp}[workload.recompute]
    in_flight = min(p.pp, p.micro_batches) / p.pp  # fewer micro-batches than stages: fewer in flight
    interleave = 1 + (p.pp - 1) / (p.pp * p.vpp) if p.vpp > 1 else 1.0
    layers = workload.stage_layers()[0] * p.pp  # the first stage holds pp micro-batches of its layers
    return per_layer * layers * in_flight * interleave


def estimate(workload: Workload, distributed_optimizer: bool, sites: int = 1) -> Memory:
    """Peak per-GPU memory of the largest pipeline stage. Gradients in `grad_bytes` (Megatron's
    grad buffer: bf16 with the distributed optimizer unless reduced in fp32). With shard_params
    (FSDP / ZeRO-3) weights, gradients and optimizer states are split over a site's DP ranks
    (dp / sites) and the two layers being gathered (current + prefetched) are held whole."""
    n = workload.params_per_rank
    p = workload.parallel
    if workload.shard_params:
        shards = p.dp // sites
        gathered = 2 * workload.model.params_per_layer / p.tp * workload.param_bytes
        return Memory(weights_bytes=n * workload.param_bytes / shards + gathered,
                      grads_bytes=n * workload.grad_bytes / shards,
                      optimizer_bytes=n * OPTIMIZER_BYTES_PER_PARAM / shards,
                      activations_bytes=activation_bytes(workload))
    shards = p.dp if distributed_optimizer else 1
    return Memory(weights_bytes=n * workload.param_bytes, grads_bytes=n * workload.grad_bytes,
                  optimizer_bytes=n * OPTIMIZER_BYTES_PER_PARAM / shards,
                  activations_bytes=activation_bytes(workload))
