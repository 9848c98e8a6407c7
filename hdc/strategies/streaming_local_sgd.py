"""streaming_local_sgd: Streaming DiLoCo (Douillard et al. 2025, arXiv:2501.18512). The inner
strategy syncs gradients inside each site every step; the parameters are cut into `fragments`,
and fragment p is averaged across sites (pseudo-gradient and outer step, as local_sgd) every
`every` steps at its own offset p·every/fragments, so the WAN carries 1/fragments of the model
at a time instead of all of it every `every` steps — the paper's lower peak bandwidth. With
`stride` > 1 a fragment is `stride` interleaved pieces of the buffer (the paper's strided layer
pattern: fragment p holds pieces p, p+P, p+2P, ...).

`delay` (the paper's tau; torchft's fragment_sync_delay): a fragment's sync starts after the
optimizer step it is due on and overlaps the next `delay` inner steps (the plan's `lag`); then
the outer step is applied and the fragment's parameters become (1 - alpha) x the new global
values + alpha x the local ones trained meanwhile (`alpha`: torchft's fragment_update_alpha;
0 keeps the global values). One fragment is in flight at a time: delay < every / fragments.
"""
from __future__ import annotations

from dataclasses import dataclass

from hdc.config import meta
from hdc.plan import Plan, split
from hdc.errors import UserError
from hdc.strategies.base import OuterStep, cross_site, groups_tier, register
from hdc.strategies.local_sgd import LocalSGD


@register
@dataclass(frozen=True)
class StreamingLocalSGD(LocalSGD):
    fragments: int = meta("streaming_local_sgd: parameter fragments, each synced every `every` steps at its "
                          "own offset", default=4, ge=1, le=1024)
    stride: int = meta("streaming_local_sgd: interleaved pieces per fragment (1 = contiguous; the paper's "
                       "strided layers)", default=1, ge=1, le=1024)
    delay: int = meta("streaming_local_sgd: inner steps a fragment's sync overlaps before it is applied (the "
                      "paper's tau); must be < every / fragments", default=0, ge=0, le=1_000_000)
    alpha: float = meta("streaming_local_sgd: weight of the local parameters when a delayed fragment is merged "
                        "with the new global ones (0 = take the global ones)", default=0.0, ge=0, le=1)
    name = "streaming_local_sgd"
    order = 55
    summary = ("Streaming DiLoCo: local_sgd with the parameters in fragments, each averaged across sites "
               "every `every` steps at its own offset (1/fragments of the model on the WAN at a time)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delay and self.delay >= max(self.every // self.fragments, 1):
            raise UserError(f"delay: must be < every / fragments = {self.every} / {self.fragments} (one fragment in "
                            f"flight at a time), got {self.delay}")

    def _extra(self) -> str:
        return (f", fragments={self.fragments}" + (f", stride={self.stride}" if self.stride > 1 else "")
                + (f", delay={self.delay}, alpha={self.alpha:g}" if self.delay else ""))

    def outer_optimizer(self):
        return OuterStep(self.outer_lr, self.outer_momentum, self.alpha)

    def fragment_regions(self, numel: int) -> list[list[tuple[int, int]]]:
        """(offset, numel) pieces of each fragment: the buffer in fragments x stride pieces, dealt
        round-robin (fragment p gets pieces p, p + fragments, ...)."""
        pieces = split(numel, min(self.fragments * self.stride, max(numel, 1)))
        out = [pieces[p::self.fragments] for p in range(self.fragments)]
        return [f for f in out if f and any(n for _, n in f)]

    def build(self, plan, topology, groups):
        site_groups, _ = cross_site(topology, groups, self.name)
        plan.steps.extend(self.inner.plan(topology, site_groups, plan.numel, plan.element_size).shifted(0, 0))
        self._outer_steps(plan, topology, groups)

    def sync_plan(self, topology, groups, buckets, element_size):
        """The inner strategy's bucketed plan over each site, then the fragments' outer syncs over
        the whole buffer (they run after the optimizer, not per gradient bucket)."""
        site_groups, _ = cross_site(topology, groups, self.name)
        inner, triggers = self.inner.sync_plan(topology, site_groups, buckets, element_size)
        plan = Plan(numel=inner.numel, element_size=element_size, strategy=self.describe(),
                    ranks=tuple(sorted(r for g in groups for r in g)), steps=list(inner.steps))
        self._outer_steps(plan, topology, groups)
        return plan, triggers

    def _outer_steps(self, plan: Plan, topology, groups) -> None:
        site_groups, across = cross_site(topology, groups, self.name)
        frags = self.fragment_regions(plan.numel)
        after = (plan.steps[-1].id,) if plan.steps else ()
        local = any(len(s) > 1 for s in site_groups)
        tier = groups_tier(topology, site_groups)
        for p, pieces in enumerate(frags):
            offset = p * self.every // len(frags)
            for off, n in pieces:
                x_groups, x_regions = across(n)
                if not x_groups:
                    continue
                due = {"phase": "param", "period": self.every, "offset": offset, "lag": self.delay, "chunk": p}
                x = plan.add("all_reduce", x_groups, [(off + o, k) for o, k in x_regions], deps=after, tier="wan",
                             label=f"outer-ar-wan-f{p}", **due)
                if local:
                    plan.add("all_gather", site_groups, [(off, n)] * len(site_groups), deps=(x.id,), tier=tier,
                             label=f"outer-ag-site-f{p}", **due)
