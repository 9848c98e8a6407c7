"""distributed_optimizer: ZeRO-1 style. Reduce-scatter gradients so each rank owns 1/dp of
them, update that shard, all-gather the parameters (phase 'param', may overlap the next
forward). hierarchical=True does each collective site-first (RS in site, RS across sites; AG
across sites, AG in site) so only 1/k of the buffer crosses the WAN."""
from __future__ import annotations

from dataclasses import dataclass

from hdc.config import meta
from hdc.strategies.base import Strategy, cross_site, groups_tier, register


@register
@dataclass(frozen=True)
class DistributedOptimizer(Strategy):
    hierarchical: bool = meta("distributed_optimizer: do each collective site-first so 1/k of the buffer "
                              "crosses the WAN", default=True)
    name = "distributed_optimizer"
    order = 40
    summary = ("ZeRO-1: reduce-scatter gradients, each rank updates its 1/dp shard, all-gather the "
               "parameters (overlapping the next forward)")

    def describe(self) -> str:
        return f"{self.name}(hierarchical={self.hierarchical})"

    def build(self, plan, topology, groups):
        whole = [(0, plan.numel)] * len(groups)
        multi = [g for g in groups if len({topology.locate(r).site for r in g}) > 1]
        if not self.hierarchical or not multi:
            tier = groups_tier(topology, groups)
            rs = plan.add("reduce_scatter", groups, whole, tier=tier, overlap="backward", label="rs")
            plan.add("all_gather", groups, whole, deps=(rs.id,), tier=tier, phase="param",
                     overlap="forward", label="ag")
            return
        site_groups, across = cross_site(topology, groups, self.name)
        x_groups, x_regions = across(plan.numel)
        site_whole = [(0, plan.numel)] * len(site_groups)
        stier = groups_tier(topology, site_groups)
        a = plan.add("reduce_scatter", site_groups, site_whole, tier=stier, overlap="backward", label="rs-site")
        b = plan.add("reduce_scatter", x_groups, x_regions, deps=(a.id,), tier="wan", overlap="backward",
                     label="rs-wan")
        c = plan.add("all_gather", x_groups, x_regions, deps=(b.id,), tier="wan", phase="param",
                     overlap="forward", label="ag-wan")
        plan.add("all_gather", site_groups, site_whole, deps=(c.id,), tier=stier, phase="param",
                 overlap="forward", label="ag-site")
