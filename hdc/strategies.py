"""Communication strategies: pure functions from (topology, rank groups, buffer) to a Plan.

Every strategy synchronizes the same thing — the element-wise sum of each group's buffers —
and differs in which collectives it uses, over which sub-groups, and in what order. A strategy
never knows which executor will run its plan.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from hdc.errors import UserError
from hdc.plan import Plan, split
from hdc.topology import Topology

TIER_ORDER = ("intra_node", "intra_pod", "intra_site", "wan")


def widest_tier(topology: Topology, group: Sequence[int]) -> str:
    """The widest network tier any pair of ring neighbours in `group` crosses."""
    if len(group) < 2:
        return "intra_node"
    tiers = {topology.tier_between(a, b) for a, b in zip(group, list(group[1:]) + [group[0]])}
    return max(tiers, key=TIER_ORDER.index)


def _tier(topology: Topology, groups: Sequence[Sequence[int]]) -> str:
    return max((widest_tier(topology, g) for g in groups), key=TIER_ORDER.index)


def by_site(topology: Topology, group: Sequence[int], strategy: str) -> list[list[int]]:
    """Members of `group` per site (sites in order), each list in ring (location) order.

    Hierarchical strategies need the same number of members in every site they span.
    """
    per: dict[int, list[int]] = {}
    for r in sorted(group):
        per.setdefault(topology.locate(r).site, []).append(r)
    parts = [per[s] for s in sorted(per)]
    if len({len(p) for p in parts}) > 1:
        counts = ", ".join(f"{topology.sites[s].name}={len(per[s])}" for s in sorted(per))
        raise UserError(f"strategy {strategy}: needs the same number of ranks in every site of a "
                        f"group, got {counts}")
    return parts


class Strategy:
    """Base class: `plan(topology, groups, numel, element_size)` returns a Plan."""
    name = "strategy"

    def plan(self, topology: Topology, groups: Optional[Sequence[Sequence[int]]], numel: int,
             element_size: int = 4) -> Plan:
        groups = [sorted(g) for g in (groups if groups is not None else [range(topology.num_gpus)])]
        plan = Plan(numel=numel, element_size=element_size, strategy=self.describe(),
                    ranks=tuple(sorted(r for g in groups for r in g)))
        if numel > 0:
            self.build(plan, topology, groups)
        return plan

    def build(self, plan: Plan, topology: Topology, groups: list[list[int]]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class FlatRing(Strategy):
    """One ring all-reduce over the whole group, WAN hops included."""
    name = "flat_ring"

    def build(self, plan, topology, groups):
        plan.add("all_reduce", groups, [(0, plan.numel)] * len(groups), tier=_tier(topology, groups),
                 overlap="backward", label="ar")


class Hierarchical(Strategy):
    """Reduce-scatter inside each site, all-reduce of each shard across sites, all-gather inside.

    Only 1/k of the buffer crosses the WAN per rank (k = ranks per site in the group).
    """
    name = "hierarchical"

    def build(self, plan, topology, groups):
        rs_groups, x_groups, x_regions = [], [], []
        for g in groups:
            sites = by_site(topology, g, self.name)
            k = len(sites[0])
            rs_groups += sites
            if len(sites) > 1:
                for j, region in enumerate(split(plan.numel, k)):
                    x_groups.append([s[j] for s in sites])
                    x_regions.append(region)
        whole = [(0, plan.numel)] * len(rs_groups)
        deps: tuple[int, ...] = ()
        local = any(len(s) > 1 for s in rs_groups)
        if local:
            deps = (plan.add("reduce_scatter", rs_groups, whole, tier=_tier(topology, rs_groups),
                             overlap="backward", label="rs-site").id,)
        if x_groups:
            deps = (plan.add("all_reduce", x_groups, x_regions, deps=deps, tier="wan",
                             overlap="backward", label="ar-wan").id,)
        if local:
            plan.add("all_gather", rs_groups, whole, deps=deps, tier=_tier(topology, rs_groups),
                     overlap="backward", label="ag-site")


class DistributedOptimizer(Strategy):
    """ZeRO-1 style: reduce-scatter gradients so each rank owns 1/dp of them, update that shard,
    all-gather the parameters (phase 'param', may overlap the next forward).

    hierarchical=True does each collective site-first (RS in site, RS across sites; AG across
    sites, AG in site) so only 1/k of the buffer crosses the WAN.
    """
    name = "distributed_optimizer"

    def __init__(self, hierarchical: bool = True):
        self.hierarchical = hierarchical

    def describe(self) -> str:
        return f"{self.name}(hierarchical={self.hierarchical})"

    def build(self, plan, topology, groups):
        whole = [(0, plan.numel)] * len(groups)
        multi = [g for g in groups if len({topology.locate(r).site for r in g}) > 1]
        if not self.hierarchical or not multi:
            tier = _tier(topology, groups)
            rs = plan.add("reduce_scatter", groups, whole, tier=tier, overlap="backward", label="rs")
            plan.add("all_gather", groups, whole, deps=(rs.id,), tier=tier, phase="param",
                     overlap="forward", label="ag")
            return
        site_groups, x_groups, x_regions = [], [], []
        for g in groups:
            sites = by_site(topology, g, self.name)
            site_groups += sites
            for j, region in enumerate(split(plan.numel, len(sites[0]))):
                x_groups.append([s[j] for s in sites])
                x_regions.append(region)
        site_whole = [(0, plan.numel)] * len(site_groups)
        stier = _tier(topology, site_groups)
        a = plan.add("reduce_scatter", site_groups, site_whole, tier=stier, overlap="backward", label="rs-site")
        b = plan.add("reduce_scatter", x_groups, x_regions, deps=(a.id,), tier="wan", overlap="backward",
                     label="rs-wan")
        c = plan.add("all_gather", x_groups, x_regions, deps=(b.id,), tier="wan", phase="param",
                     overlap="forward", label="ag-wan")
        plan.add("all_gather", site_groups, site_whole, deps=(c.id,), tier=stier, phase="param",
                 overlap="forward", label="ag-site")


class Chunked(Strategy):
    """Split the buffer into N chunks, each synchronized by the inner strategy; chunk c's phase j
    waits for chunk c-1's phase j, so phases of successive chunks pipeline (RS of chunk c+1
    runs while chunk c crosses the WAN). With overlap_backward, chunk c also waits for the
    'bucket:c' event: it starts as soon as backward has produced that part of the gradients.
    """
    name = "chunked"

    def __init__(self, inner: Strategy, chunks: int = 4, overlap_backward: bool = False, inflight: int = 1):
        if chunks < 1:
            raise UserError(f"chunks: must be >= 1, got {chunks}")
        if inflight < 1:
            raise UserError(f"inflight: must be >= 1, got {inflight}")
        self.inner, self.chunks, self.overlap_backward = inner, chunks, overlap_backward
        self.inflight = inflight

    def describe(self) -> str:
        return (f"{self.name}({self.inner.describe()}, chunks={self.chunks}"
                + (f", inflight={self.inflight}" if self.inflight > 1 else "")
                + (", overlap_backward)" if self.overlap_backward else ")"))

    def build(self, plan, topology, groups):
        sizes = [n for _, n in split(plan.numel, min(self.chunks, plan.numel))]
        append_chunks(plan, self.inner, topology, groups, sizes, triggers=self.overlap_backward,
                      inflight=self.inflight)


def append_chunks(plan: Plan, inner: Strategy, topology: Topology, groups, sizes: Sequence[int],
                  triggers: bool, inflight: int = 1) -> None:
    """Append inner's plan for consecutive chunks of `sizes` elements, pipelined phase by phase:
    chunk c's phase j waits for chunk c-inflight's phase j (1 = one stream, as NCCL runs
    collectives of one communicator in order; more lets long-latency phases overlap)."""
    offset, history = 0, []
    for c, n in enumerate(sizes):
        sub = inner.plan(topology, groups, n, plan.element_size)
        base = len(plan.steps)
        steps = sub.shifted(offset, base, chunk=c)
        prev = history[-inflight] if len(history) >= inflight else []
        cur = []
        for j, s in enumerate(steps):
            deps = set(s.deps)
            if j < len(prev):
                deps.add(prev[j])
            extra = {}
            if triggers and not s.deps:
                extra = {"trigger": f"bucket:{c}", "overlap": "backward"}
            s = replace(s, deps=tuple(sorted(deps)), **extra)
            plan.steps.append(s)
            cur.append(s.id)
        history.append(cur)
        offset += n


def bucketed(inner: Strategy, topology: Topology, groups, bucket_numels: Sequence[int],
             element_size: int) -> Plan:
    """The plan for gradients that arrive bucket by bucket during backward (DDP-style overlap)."""
    plan = Plan(numel=sum(bucket_numels), element_size=element_size,
                strategy=f"bucketed({inner.describe()}, buckets={len(bucket_numels)})",
                ranks=tuple(sorted(r for g in groups for r in g)))
    append_chunks(plan, inner, topology, [sorted(g) for g in groups], bucket_numels, triggers=True)
    return plan


class LocalSGD(Strategy):
    """DiLoCo-style local updates: the inner strategy syncs gradients inside each site every
    step; every `every` steps the sites average their parameters (phase 'param', period
    `every`): each rank exchanges 1/k of the buffer with its peers in the other sites, then an
    all-gather inside the site. An optional outer optimizer (e.g. Nesterov, as in DiLoCo) is
    applied by the trainer to the averaged parameter delta.
    """
    name = "local_sgd"

    def __init__(self, inner: Strategy, every: int = 10, outer_lr: float = 1.0, outer_momentum: float = 0.0):
        if every < 1:
            raise UserError(f"every: must be >= 1, got {every}")
        self.inner, self.every = inner, every
        self.outer_lr, self.outer_momentum = outer_lr, outer_momentum

    def describe(self) -> str:
        return f"{self.name}({self.inner.describe()}, every={self.every})"

    def build(self, plan, topology, groups):
        sites_of = [by_site(topology, g, self.name) for g in groups]
        site_groups = [s for sites in sites_of for s in sites]
        inner = self.inner.plan(topology, site_groups, plan.numel, plan.element_size)
        plan.steps.extend(inner.shifted(0, 0))
        last = (plan.steps[-1].id,) if plan.steps else ()
        x_groups, x_regions = [], []
        for sites in sites_of:
            if len(sites) > 1:
                for j, region in enumerate(split(plan.numel, len(sites[0]))):
                    x_groups.append([s[j] for s in sites])
                    x_regions.append(region)
        if not x_groups:
            return
        x = plan.add("all_reduce", x_groups, x_regions, deps=last, tier="wan", phase="param",
                     period=self.every, label="outer-ar-wan")
        if any(len(s) > 1 for s in site_groups):
            plan.add("all_gather", site_groups, [(0, plan.numel)] * len(site_groups), deps=(x.id,),
                     tier=_tier(topology, site_groups), phase="param", period=self.every,
                     label="outer-ag-site")


STRATEGY_NAMES = ("flat_ring", "hierarchical", "chunked", "distributed_optimizer", "local_sgd")


def make_strategy(name: str, *, chunks: int = 4, inner: str = "hierarchical", every: int = 10,
                  overlap_backward: bool = False, hierarchical: bool = True, inflight: int = 1) -> Strategy:
    """A strategy by name, as the CLI and configs spell it."""
    if name == "flat_ring":
        return FlatRing()
    if name == "hierarchical":
        return Hierarchical()
    if name == "distributed_optimizer":
        return DistributedOptimizer(hierarchical=hierarchical)
    if name in ("chunked", "local_sgd"):
        if inner not in ("flat_ring", "hierarchical", "distributed_optimizer"):
            raise UserError(f"inner: must be one of flat_ring, hierarchical, distributed_optimizer, got {inner!r}")
        base = make_strategy(inner, hierarchical=hierarchical)
        if name == "chunked":
            return Chunked(base, chunks=chunks, overlap_backward=overlap_backward, inflight=inflight)
        return LocalSGD(base, every=every)
    raise UserError(f"strategy: must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}")
