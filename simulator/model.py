"""The simulator's named constants and the per-operation quantities derived from a workload.

Every number the step model uses that is not in the topology or the workload is a field of
`SimConstants`, with its default and where the default comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from hdc.config import meta
from hdc.workload import Workload


@dataclass(frozen=True)
class SimConstants:
    compute_efficiency: float = meta(
        "achieved fraction of the GPU's peak FLOP/s in forward/backward compute; calibrate it "
        "with simulator.calibrate_compute_efficiency (e.g. to a published single-site MFU)",
        gt=0.0, le=1.0, default=0.75)
    backward_to_forward: float = meta(
        "backward FLOPs / forward FLOPs (2: the 6N = 2N + 4N rule)", gt=0.0, default=2.0)
    tp_comm_overlap: float = meta(
        "fraction of tensor-parallel communication hidden under compute (0 = all exposed)",
        ge=0.0, le=1.0, default=0.0)
    activation_bytes: int = meta("bytes per activation element (2 = bf16)", choices=(2, 4), default=2)
    pp_scatter_gather: bool = meta(
        "each TP rank sends 1/tp of the activation between stages (Megatron scatter-gather)",
        default=True)
    hbm_bandwidth_Bps: float = meta(
        "GPU memory bandwidth for the optimizer step (H100 SXM: 3.35 TB/s)", gt=0.0, default=3.35e12)
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

    def link_efficiency(self) -> dict[str, float]:
        return {"intra_node": self.intra_node_efficiency, "intra_pod": self.intra_pod_efficiency,
                "intra_site": self.intra_site_efficiency, "wan": self.wan_efficiency}

    def with_(self, **kw) -> "SimConstants":
        return replace(self, **kw)


@dataclass(frozen=True)
class OpCosts:
    """Per-GPU costs of one pipeline operation (one micro-batch through one virtual stage)."""
    forward_s: float  # compute only
    backward_s: float
    tp_forward_s: float  # exposed TP communication
    tp_backward_s: float
    p2p_bytes: int  # activation (or its gradient) one TP rank sends to the next stage
    tp_bytes_per_op: float  # bytes one GPU sends over NVLink for TP in one forward + backward


def op_costs(workload: Workload, peak_flops: float, constants: SimConstants,
             tp_collective_s: float, tp_collective_bytes: float) -> OpCosts:
    """FLOPs per op = PaLM model FLOPs of the micro-batch's tokens / (tp · pp · vpp), split
    forward : backward = 1 : backward_to_forward. TP with sequence parallelism: per layer 2
    all-gathers and 2 reduce-scatters of the activation in forward, and again in backward
    (Korthikanti et al. 2022); `tp_collective_s` is one of them on the node's NVLink."""
    m, p = workload.model, workload.parallel
    tokens = p.micro_batch_size * m.seq_len
    flops = m.train_flops_per_token() * tokens / (p.tp * p.pp * p.vpp)
    rate = peak_flops * constants.compute_efficiency
    fwd = flops / (1.0 + constants.backward_to_forward) / rate
    layers = m.layers // (p.pp * p.vpp)
    tp_s = 4 * layers * tp_collective_s * (1.0 - constants.tp_comm_overlap) if p.tp > 1 else 0.0
    act = tokens * m.hidden * constants.activation_bytes
    p2p = act // p.tp if constants.pp_scatter_gather else act
    return OpCosts(fwd, fwd * constants.backward_to_forward, tp_s, tp_s, int(p2p),
                   8 * layers * tp_collective_bytes if p.tp > 1 else 0.0)


def activation_bytes_per_microbatch(workload: Workload, constants: SimConstants) -> int:
    m, p = workload.model, workload.parallel
    return p.micro_batch_size * m.seq_len * m.hidden * constants.activation_bytes
