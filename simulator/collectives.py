"""Plan steps as the messages their algorithms send (the synchronous-ring model of hdc.cost).

A step over groups of p ranks runs `rounds(op, p)` rounds; in each round every member sends
one message of `message_elems(op, p, n)` elements to its ring successor (or the tree/pair
of `round_messages`), and the round ends when the group's messages have all arrived.

Two ways to execute it on a `Network`, both here:
  * `exact`: every group a SimPy process, every message its own flow, a barrier per round.
  * `coflow`: the rounds of a group repeat the same messages, so the step is one flow of
    R × message bytes after R × (largest message latency), loading each link with the number
    of the step's messages that cross it per round, times `multiplicity(link)` (how many
    symmetric copies of these groups — e.g. the other tensor-parallel ranks — also cross it).
    All groups of the step advance together at the rate of their common bottleneck. Equal to
    `exact` whenever the groups are symmetric and contention does not change mid-step
    (tested), and to hdc.cost's alpha-beta time when the step runs alone (tested).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Sequence

import simpy

from hdc.cost import message_elems, round_messages, rounds
from hdc.plan import Plan, Step
from simulator.network import Network, Routes


@dataclass(frozen=True)
class Template:
    """One step's traffic pattern, independent of its size."""
    weights: Mapping[Hashable, float]  # link -> messages crossing it per round (× multiplicity)
    latency_s: float  # largest path latency of one round's messages
    rounds: int
    members: int  # p


def step_template(routes: Routes, op: str, groups: Sequence[Sequence[int]],
                  multiplicity: Callable[[tuple[str, str]], int] = lambda link: 1) -> Template:
    p = max(len(g) for g in groups)
    weights: dict = defaultdict(float)
    lat = 0.0
    for g in groups:
        if len(g) < 2:
            continue
        for s, d in round_messages(op, g):
            path = routes.path(s, d)
            lat = max(lat, routes.latency_s(path))
            for link in path:
                weights[link] += multiplicity(link)
    return Template(dict(weights), lat, rounds(op, p), p)


def message_bytes(op: str, p: int, numel: int, element_size: int) -> int:
    return message_elems(op, p, numel) * element_size if p > 1 else 0


def coflow_bytes(op: str, tpl: Template, numel: int, element_size: int) -> float:
    """Bytes one member sends over the whole step (R rounds of one message)."""
    if tpl.rounds == 0:
        return 0.0
    return tpl.rounds * message_bytes(op, tpl.members, numel, element_size)


def start_coflow(net: Network, op: str, tpl: Template, numel: int, element_size: int,
                 resource_of: Callable[[Hashable], Hashable] | None = None, tag=None) -> simpy.Event:
    return _start(net, tpl, coflow_bytes(op, tpl, numel, element_size), resource_of, tag)


def _start(net, tpl, size, resource_of, tag):
    if size <= 0:
        ev = net.env.event()
        ev.succeed()
        return ev
    weights = tpl.weights
    if resource_of is not None:
        weights = _on_resources(tpl, resource_of)
    net.keep[id(tpl)] = tpl  # the kind below is the template's id: keep it from being reused
    return net.transfer(weights, size, tpl.rounds * tpl.latency_s, tag, kind=id(tpl))


_MERGED: dict = {}


def _on_resources(tpl: Template, resource_of) -> dict:
    """The template's weights on resources (atoms) instead of links; links of one atom carry
    equal weight, so the atom's weight is any of its links'."""
    key = (id(tpl), id(resource_of))
    hit = _MERGED.get(key)
    if hit is None or hit[0] is not tpl or hit[1] is not resource_of:
        merged = {resource_of(link): w for link, w in tpl.weights.items()}
        if len(_MERGED) > 10_000:
            _MERGED.clear()
        _MERGED[key] = hit = (tpl, resource_of, merged)
    return hit[2]


def run_exact(env: simpy.Environment, net: Network, routes: Routes, op: str, group: Sequence[int],
              numel: int, element_size: int):
    """SimPy process: one group's rounds, each message its own flow, a barrier per round."""
    p = len(group)
    if p < 2 or numel == 0:
        return
    size = message_bytes(op, p, numel, element_size)
    msgs = [(routes.path(s, d)) for s, d in round_messages(op, group)]
    for _ in range(rounds(op, p)):
        yield simpy.AllOf(env, [net.transfer({link: 1.0 for link in path}, size, routes.latency_s(path), kind=path)
                                for path in msgs])


def link_capacities(routes: Routes, efficiency: Mapping[str, float] | None = None) -> dict:
    return routes.capacities(tuple(sorted((efficiency or {}).items())))


def simulate_plan(routes: Routes, plan: Plan, mode: str = "coflow", train_step: int = 0,
                  efficiency: Mapping[str, float] | None = None) -> dict[int, tuple[float, float]]:
    """Run a plan's active steps alone on the network (deps respected, triggers ignored).

    Returns step id -> (start_s, end_s). The plan's time is the largest end.
    """
    env = simpy.Environment()
    net = Network(env, link_capacities(routes, efficiency))
    done: dict[int, simpy.Event] = {}
    times: dict[int, tuple[float, float]] = {}

    def run(step: Step):
        deps = [done[d] for d in step.deps if d in done]
        if deps:
            yield simpy.AllOf(env, deps)
        start = env.now
        if mode == "exact":
            procs = [env.process(run_exact(env, net, routes, step.op, g, n, plan.element_size))
                     for g, (_, n) in zip(step.groups, step.regions)]
            yield simpy.AllOf(env, procs)
        else:
            tpl = step_template(routes, step.op, step.groups)
            yield start_coflow(net, step.op, tpl, step.numel, plan.element_size)
        times[step.id] = (start, env.now)

    for step in plan.steps:
        if step.active(train_step):
            done[step.id] = env.process(run(step))
    env.run()
    return times
