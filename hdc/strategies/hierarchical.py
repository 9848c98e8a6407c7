"""hierarchical: reduce-scatter inside each site, all-reduce of each shard across sites,
all-gather inside the site. Only 1/k of the buffer crosses the WAN per rank (k = ranks per
site in the group)."""
from __future__ import annotations

from dataclasses import dataclass

from hdc.strategies.base import Strategy, cross_site, groups_tier, register


@register
@dataclass(frozen=True)
class Hierarchical(Strategy):
    name = "hierarchical"
    order = 20
    summary = ("reduce-scatter inside each site, all-reduce of each shard across sites, all-gather "
               "inside: 1/k of the buffer crosses the WAN per rank")

    def build(self, plan, topology, groups):
        site_groups, across = cross_site(topology, groups, self.name)
        x_groups, x_regions = across(plan.numel)
        whole = [(0, plan.numel)] * len(site_groups)
        tier = groups_tier(topology, site_groups)
        deps: tuple[int, ...] = ()
        local = any(len(s) > 1 for s in site_groups)
        if local:
            deps = (plan.add("reduce_scatter", site_groups, whole, tier=tier, overlap="backward",
                             label="rs-site").id,)
        if x_groups:
            deps = (plan.add("all_reduce", x_groups, x_regions, deps=deps, tier="wan",
                             overlap="backward", label="ar-wan").id,)
        if local:
            plan.add("all_gather", site_groups, whole, deps=deps, tier=tier, overlap="backward", label="ag-site")
