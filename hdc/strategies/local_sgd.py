"""local_sgd: DiLoCo-style local updates. The inner strategy syncs gradients inside each site
every step; every `every` steps the sites average their parameters (phase 'param', period
`every`): each rank exchanges 1/k of the buffer with its peers in the other sites, then an
all-gather inside the site. Executors average the replicas' pseudo-gradients (anchor minus
parameters) and apply the outer SGD step (`outer_lr`, `outer_momentum`: Nesterov, as in
DiLoCo, Douillard et al. 2023); lr 1 and momentum 0 is a plain parameter average."""
from __future__ import annotations

from dataclasses import dataclass

from hdc.config import meta
from hdc.strategies.base import OuterStep, Strategy, cross_site, groups_tier, inner_field, register


@register
@dataclass(frozen=True)
class LocalSGD(Strategy):
    inner: Strategy = inner_field()
    every: int = meta("local_sgd, streaming_local_sgd: training steps between cross-site parameter syncs",
                      default=10, ge=1, le=1_000_000)
    outer_lr: float = meta("local_sgd, streaming_local_sgd: outer learning rate on the averaged "
                           "pseudo-gradient (1 with momentum 0 = plain averaging)", default=1.0, gt=0, le=10)
    outer_momentum: float = meta("local_sgd, streaming_local_sgd: outer Nesterov momentum (DiLoCo uses 0.9 "
                                 "with outer_lr 0.7)", default=0.0, ge=0, lt=1)
    name = "local_sgd"
    order = 50
    summary = ("gradients synced inside each site every step; every `every` steps the sites average "
               "their parameters (DiLoCo outer step)")

    def describe(self) -> str:
        return f"{self.name}({self.inner.describe()}, every={self.every}{self._extra()}{self._outer()})"

    def _extra(self) -> str:
        return ""

    def _outer(self) -> str:
        return ("" if (self.outer_lr, self.outer_momentum) == (1.0, 0.0)
                else f", outer_lr={self.outer_lr:g}, outer_momentum={self.outer_momentum:g}")

    def outer_optimizer(self):
        return OuterStep(self.outer_lr, self.outer_momentum)

    def build(self, plan, topology, groups):
        site_groups, across = cross_site(topology, groups, self.name)
        inner = self.inner.plan(topology, site_groups, plan.numel, plan.element_size)
        plan.steps.extend(inner.shifted(0, 0))
        last = (plan.steps[-1].id,) if plan.steps else ()
        x_groups, x_regions = across(plan.numel)
        if not x_groups:
            return
        x = plan.add("all_reduce", x_groups, x_regions, deps=last, tier="wan", phase="param",
                     period=self.every, label="outer-ar-wan")
        if any(len(s) > 1 for s in site_groups):
            plan.add("all_gather", site_groups, [(0, plan.numel)] * len(site_groups), deps=(x.id,),
                     tier=groups_tier(topology, site_groups), phase="param", period=self.every,
                     label="outer-ag-site")
