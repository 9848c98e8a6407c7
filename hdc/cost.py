"""Closed-form alpha-beta costs: the lower bound simulated and measured times are held to.

A collective over p ranks runs in rounds; in each round every member sends one message to
its ring successor and a round lasts as long as its slowest message:
    t_round = max over messages (path latency α + message bytes / bandwidth share β⁻¹).
Ring reduce-scatter and all-gather take p-1 rounds of n/p bytes, ring all-reduce 2(p-1)
(Patarasuk & Yuan 2009; Thakur et al. 2005). When several groups run the same step at once,
every directed link's bandwidth is split evenly among the messages crossing it — exact for
symmetric traffic, a bound otherwise. Each plan step is timed alone; a whole plan is the
critical path through its dependencies (concurrent steps are assumed not to contend).
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from typing import Sequence

from hdc.plan import Plan, Step
from hdc.topology import Topology, link_class, lru_get


# --- textbook formulas (single group, uniform links) ------------------------------------------
def ring_reduce_scatter_s(p: int, size_bytes: float, alpha_s: float, bandwidth_Bps: float) -> float:
    """(p-1)·(α + n/(p·B))  — ring reduce-scatter (Thakur et al. 2005)."""
    return (p - 1) * (alpha_s + size_bytes / p / bandwidth_Bps) if p > 1 else 0.0


def ring_all_gather_s(p: int, size_bytes: float, alpha_s: float, bandwidth_Bps: float) -> float:
    """(p-1)·(α + n/(p·B))  — ring all-gather, the mirror of reduce-scatter."""
    return ring_reduce_scatter_s(p, size_bytes, alpha_s, bandwidth_Bps)


def ring_all_reduce_s(p: int, size_bytes: float, alpha_s: float, bandwidth_Bps: float) -> float:
    """2(p-1)·(α + n/(p·B))  — ring all-reduce = reduce-scatter + all-gather (Patarasuk & Yuan 2009)."""
    return 2 * ring_reduce_scatter_s(p, size_bytes, alpha_s, bandwidth_Bps)


def hierarchical_all_reduce_s(k: int, sites: int, size_bytes: float, alpha_site_s: float,
                              bw_site_Bps: float, alpha_wan_s: float, bw_wan_share_Bps: float) -> float:
    """RS in site (k ranks) + AR of n/k across `sites` + AG in site."""
    return (2 * ring_reduce_scatter_s(k, size_bytes, alpha_site_s, bw_site_Bps)
            + ring_all_reduce_s(sites, size_bytes / k, alpha_wan_s, bw_wan_share_Bps))


# --- plan steps on a real topology ---------------------------------------------------------------
def rounds(op: str, p: int, algorithm: str = "ring") -> int:
    """Number of message rounds of a collective over p ranks (hdc.plan.ALGORITHMS)."""
    if p < 2:
        return 0
    if algorithm == "direct":  # one all-to-all round (all-reduce: reduce-scatter + all-gather)
        return {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1}[op]
    return {"all_reduce": 2 * (p - 1), "reduce_scatter": p - 1, "all_gather": p - 1,
            "broadcast": math.ceil(math.log2(p)), "send_recv": 1}[op]


def message_elems(op: str, p: int, numel: int) -> int:
    """Elements in the largest message of one round."""
    if op in ("broadcast", "send_recv"):
        return numel
    return -(-numel // p)


def round_messages(op: str, group: Sequence[int], algorithm: str = "ring") -> list[tuple[int, int]]:
    """(src, dst) pairs of one round: ring successor, every other member (direct), or the
    tree/pair for broadcast/send_recv."""
    p = len(group)
    if algorithm == "direct":
        return [(a, b) for a in group for b in group if a != b]
    if op == "send_recv":
        return [(group[0], group[1])]
    if op == "broadcast":  # the widest round of a binomial tree: half the members send
        return [(group[i], group[i + p // 2]) for i in range(p - p // 2) if i + p // 2 < p] or [(group[0], group[1])]
    return [(group[i], group[(i + 1) % p]) for i in range(p)]


_SIGNATURES: OrderedDict = OrderedDict()


def _round_signatures(topology: Topology, op: str, groups: tuple[tuple[int, ...], ...],
                      algorithm: str = "ring") -> tuple:
    """The distinct messages of one round of a step, each as ((link class, messages sharing the
    link), ...) along its path. Depends on the paths alone (`Topology.route_key`), so a sweep
    over link speeds works it out once per structure."""
    def make():
        paths = [topology.path(s, d) for g in groups if len(g) > 1 for s, d in round_messages(op, g, algorithm)]
        load = Counter(link for path in paths for link in path)
        return tuple({tuple((link_class(k), load[k]) for k in path) for path in paths})
    return lru_get(_SIGNATURES, (topology.route_key, op, groups, algorithm), make, 256)


def _round_profile(topology: Topology, op: str, groups: tuple[tuple[int, ...], ...],
                   algorithm: str = "ring") -> tuple[tuple[float, float], ...]:
    """Distinct (latency_s, bandwidth share Bps) of the messages in one round of a step."""
    out = set()
    for signature in _round_signatures(topology, op, groups, algorithm):
        links = [(topology.class_link(cls), n) for cls, n in signature]
        out.add((sum(l.latency_s for l, _ in links), min(l.bandwidth_Bps / n for l, n in links)))
    return tuple(sorted(out))


def step_time_s(topology: Topology, plan: Plan, step: Step) -> float:
    """Alpha-beta time of one plan step, all its groups running at once."""
    p = max(len(g) for g in step.groups)
    if p < 2 or step.numel == 0:
        return 0.0
    msg_bytes = message_elems(step.op, p, step.numel) * plan.wire_bytes(step)
    profile = _round_profile(topology, step.op, step.groups, step.algorithm)
    return rounds(step.op, p, step.algorithm) * max(lat + msg_bytes / share for lat, share in profile)


def plan_time_s(topology: Topology, plan: Plan, train_step: int = 0) -> float:
    """Critical path of the plan's active steps (each step timed alone)."""
    finish: dict[int, float] = {}
    for step in plan.steps:
        if not step.active(train_step):
            continue
        start = max((finish[d] for d in step.deps if d in finish), default=0.0)
        finish[step.id] = start + step_time_s(topology, plan, step)
    return max(finish.values(), default=0.0)


def wan_bytes(topology: Topology, plan: Plan, train_step: int = 0) -> tuple[float, float]:
    """(total, max per rank) bytes sent across site boundaries by the plan's active steps."""
    sent: Counter = Counter()
    for step in plan.steps:
        if not step.active(train_step):
            continue
        for g, (_, n) in zip(step.groups, step.regions):
            p = len(g)
            if p < 2:
                continue
            msg = message_elems(step.op, p, n) * plan.wire_bytes(step)
            for s, d in round_messages(step.op, g, step.algorithm):
                if topology.locate(s).site != topology.locate(d).site:
                    sent[s] += msg * rounds(step.op, p, step.algorithm)
    return float(sum(sent.values())), float(max(sent.values(), default=0.0))
