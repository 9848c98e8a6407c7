"""compressed: another strategy with its cross-site steps sent in int8 or bf16.

The wrapped strategy's steps that cross sites (scope 'wan'; every step with scope 'all') and
carry sums — gradients, or local_sgd's pseudo-gradients (anchor - parameters) in its outer
sync — are sent in `wire` (hdc.wire: int8 with one absmax scale per shard, as INTELLECT-1
quantized DiLoCo's pseudo-gradients; or bf16), and summed in fp32. An all-reduce among them
becomes a reduce-scatter plus an all-gather on that wire: each owner sums its shard in fp32 and
re-encodes the sum once. Parameter all-gathers (the distributed optimizer's) stay exact. The
compressed steps are planned with the direct algorithm: the executors send the encoded shards
in one all-to-all (or all-gather), which costs one latency where a ring costs p-1.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from hdc.config import meta
from hdc.plan import Plan
from hdc.strategies.base import Strategy, inner_field, register


@register
@dataclass(frozen=True)
class Compressed(Strategy):
    inner: Strategy = inner_field()
    wire: str = meta("compressed: wire format of the compressed steps (int8: absmax scale per shard)",
                     default="int8", choices=("int8", "bf16"))
    scope: str = meta("compressed: compress the steps that cross sites (wan) or every step (all)",
                      default="wan", choices=("wan", "all"))
    name = "compressed"
    order = 60
    summary = ("the inner strategy with its cross-site gradient (or pseudo-gradient) steps sent in int8 or "
               "bf16 and summed in fp32")

    def describe(self) -> str:
        return f"{self.name}({self.inner.describe()}, {self.wire}" + (", all)" if self.scope == "all" else ")")

    def build(self, plan, topology, groups):
        plan.steps = self.compress(self.inner.plan(topology, groups, plan.numel, plan.element_size).steps)

    def sync_plan(self, topology, groups, buckets, element_size):
        plan, triggers = self.inner.sync_plan(topology, groups, buckets, element_size)
        out = Plan(numel=plan.numel, element_size=plan.element_size, strategy=self.describe(), ranks=plan.ranks,
                   notes=plan.notes, steps=self.compress(plan.steps))
        return out, triggers

    def outer_optimizer(self):
        return self.inner.outer_optimizer()

    def _selected(self, s) -> bool:
        if s.op not in ("all_reduce", "reduce_scatter", "all_gather"):
            return False
        carries_sums = s.phase == "grad" or s.op != "all_gather"
        return carries_sums and (self.scope == "all" or s.tier == "wan")

    def compress(self, steps):
        """The steps with the selected ones on this wire, all-reduces split in two; ids renumbered."""
        out, done_by = [], {}  # old id -> the new step that completes it
        for s in steps:
            deps = tuple(sorted({done_by[d] for d in s.deps}))
            if not self._selected(s):
                out.append(replace(s, id=len(out), deps=deps))
            elif s.op == "all_reduce":
                rs = replace(s, id=len(out), op="reduce_scatter", deps=deps, wire=self.wire, algorithm="direct",
                             label=f"{s.label.replace('ar', 'rs', 1)}-{self.wire}")
                out.append(rs)
                out.append(replace(s, id=len(out), op="all_gather", deps=(rs.id,), wire=self.wire, trigger=None,
                                   algorithm="direct", label=f"{s.label.replace('ar', 'ag', 1)}-{self.wire}"))
            else:
                out.append(replace(s, id=len(out), deps=deps, wire=self.wire, algorithm="direct",
                                   label=f"{s.label}-{self.wire}"))
            done_by[s.id] = out[-1].id
        return out
