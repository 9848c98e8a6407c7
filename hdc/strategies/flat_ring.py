"""flat_ring: one ring all-reduce over the whole group, WAN hops included."""
from __future__ import annotations

from dataclasses import dataclass

from hdc.strategies.base import Strategy, groups_tier, register


@register
@dataclass(frozen=True)
class FlatRing(Strategy):
    """One ring all-reduce over the whole group, WAN hops included."""
    name = "flat_ring"
    order = 10
    summary = "one ring all-reduce over every rank of the group, WAN hops included (the baseline)"

    def build(self, plan, topology, groups):
        plan.add("all_reduce", groups, [(0, plan.numel)] * len(groups), tier=groups_tier(topology, groups),
                 overlap="backward", label="ar")
