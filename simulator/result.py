"""What a simulated step predicts, as one object: `Result` (text, dict/JSON, timeline)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from hdc.units import fmt_bandwidth, fmt_bytes, fmt_time
from simulator.memory import Memory

TIERS = ("intra_node", "intra_pod", "intra_site", "wan")


@dataclass
class Breakdown:
    """Where one step's time goes on the critical stage; the parts sum to step_time_s."""
    compute_s: float
    tp_exposed_s: float
    pp_exposed_s: float
    dp_exposed_s: float
    bubble_s: float
    optimizer_s: float


@dataclass
class TierUse:
    bytes: float  # bytes that crossed links of this tier in one step (all GPUs)
    utilization: float  # bytes / (tier capacity, all links both directions × step time)


@dataclass
class Result:
    topology: str
    workload: str
    strategy: str
    gpus: int
    step_time_s: float
    breakdown: Breakdown
    mfu: float
    tokens_per_s: float
    scaling_efficiency: Optional[float]  # single-site step time / this step time
    single_site_step_time_s: Optional[float]
    tiers: dict[str, TierUse]
    memory: Memory  # with the optimizer states as this strategy keeps them
    memory_alternative: Memory  # the other choice (with / without the distributed optimizer)
    distributed_optimizer: bool
    gpu_memory_bytes: float  # the topology's GPU memory, what `fits` compares against
    constants: dict
    assumptions: list[str]
    events: dict = field(default_factory=dict)  # flows, plan steps: for benchmarks
    spans: list = field(default_factory=list, repr=False)

    @property
    def fits(self) -> bool:
        """Whether the peak memory estimate fits the GPU's memory."""
        return self.memory.total_bytes <= self.gpu_memory_bytes

    def fit_warning(self) -> str | None:
        """One line when the configuration does not fit, else None."""
        if self.fits:
            return None
        other_fits = self.memory_alternative.total_bytes <= self.gpu_memory_bytes
        hint = " (the other optimizer choice fits)" if other_fits else ""
        return (f"warning: does not fit: {fmt_bytes(self.memory.total_bytes)} per GPU estimated, the GPU has "
                f"{fmt_bytes(self.gpu_memory_bytes)}{hint}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fits"] = self.fits
        out.pop("spans")
        out["memory"] = self.memory.to_dict()
        out["memory_alternative"] = self.memory_alternative.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def timeline(self) -> dict:
        """Per-rank spans for a Gantt chart. Rank = (row, stage): row 'pipeline' is the compute
        of the stage's ranks (all DP replicas and TP ranks alike), row 'dp' its gradient or
        parameter synchronization."""
        return {"topology": self.topology, "strategy": self.strategy, "step_time_s": self.step_time_s,
                "spans": [{"rank": f"{row}/stage{stage}", "stage": stage, "kind": kind, "start_s": start,
                           "end_s": end, "label": label}
                          for row, stage, kind, start, end, label in self.spans]}

    def format(self) -> str:
        b = self.breakdown
        lines = [f"simulate: {self.workload} on {self.topology} ({self.gpus} GPUs), strategy {self.strategy}",
                 f"  step time            {fmt_time(self.step_time_s)}",
                 f"    compute            {fmt_time(b.compute_s)}",
                 f"    exposed TP comm    {fmt_time(b.tp_exposed_s)}",
                 f"    pipeline bubble    {fmt_time(b.bubble_s)}",
                 f"    exposed PP comm    {fmt_time(b.pp_exposed_s)}",
                 f"    exposed DP comm    {fmt_time(b.dp_exposed_s)}",
                 f"    optimizer          {fmt_time(b.optimizer_s)}",
                 f"  MFU                  {self.mfu:.1%}",
                 f"  tokens/s             {self.tokens_per_s:,.0f}"]
        if self.scaling_efficiency is not None:
            lines.append(f"  scaling efficiency   {self.scaling_efficiency:.1%} "
                         f"(same GPUs in one site: {fmt_time(self.single_site_step_time_s)})")
        lines.append("  link tiers           bytes/step   utilization")
        for tier in TIERS:
            if tier in self.tiers:
                u = self.tiers[tier]
                lines.append(f"    {tier:<18} {fmt_bytes(u.bytes):>10}   {u.utilization:.1%}")
        for title, mem, dist in (("memory per GPU", self.memory, self.distributed_optimizer),
                                 ("  other optimizer", self.memory_alternative, not self.distributed_optimizer)):
            lines.append(f"  {title:<20} {fmt_bytes(mem.total_bytes)} "
                         f"({'distributed' if dist else 'replicated'} optimizer): weights "
                         f"{fmt_bytes(mem.weights_bytes)}, grads {fmt_bytes(mem.grads_bytes)}, optimizer "
                         f"{fmt_bytes(mem.optimizer_bytes)}, activations {fmt_bytes(mem.activations_bytes)}")
        lines.append(f"  fits                 {'yes' if self.fits else 'NO'} ({fmt_bytes(self.memory.total_bytes)} of "
                     f"{fmt_bytes(self.gpu_memory_bytes)} GPU memory)")
        lines.append("  assumptions:")
        lines += [f"    - {a}" for a in self.assumptions]
        return "\n".join(lines)


def wan_summary(topology) -> str:
    parts = [f"{w.sites[0]}↔{w.sites[1]} {w.links} × {fmt_bandwidth(w.bandwidth_Bps)} = "
             f"{fmt_bandwidth(w.capacity_Bps)}, one way {fmt_time(w.one_way_s)}" for w in topology.wan]
    return "; ".join(parts) or "none (one site)"
