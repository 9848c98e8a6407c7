"""Plan steps as the messages their algorithms send (the synchronous-ring model of hdc.cost).

A step over groups of p ranks runs `rounds(op, p, algorithm)` rounds; in each round every member
sends one message of `message_elems(op, p, n)` elements to its ring successor (or, per
`round_messages`, to every other member for the direct algorithm, or the tree/pair of a
broadcast/send_recv), and the round ends when the group's messages have all arrived. The
`pipelined` mode models gloo's ring for every step (a direct step over 2 members is the same).

Three ways to execute it on a `Network`, all here:
  * `exact`: every group a SimPy process, every message its own flow, a barrier per round.
  * `coflow`: the rounds of a group repeat the same messages, so the step is one flow of
    R × message bytes after R × (largest message latency), loading each link with the number
    of the step's messages that cross it per round, times `multiplicity(link)` (how many
    symmetric copies of these groups — e.g. the other tensor-parallel ranks — also cross it).
    All groups of the step advance together at the rate of their common bottleneck. Equal to
    `exact` whenever the groups are symmetric and contention does not change mid-step
    (tested), and to hdc.cost's alpha-beta time when the step runs alone (tested).
  * `pipelined`: what a collective library really sends (`LibraryPipelining`, gloo's ring by default):
    each round's message split into segments, a few in flight per connection, each segment
    sent only after the receiver's ready notice arrived — no barrier per round, so latency
    and transfer overlap. Every segment is its own flow, so concurrent groups share links
    as in `exact`. For validating against real gloo; slower than `coflow` on big plans.
"""
from __future__ import annotations

import math
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
                  multiplicity: Callable[[tuple[str, str]], int] = lambda link: 1,
                  algorithm: str = "ring") -> Template:
    p = max(len(g) for g in groups)
    weights: dict = defaultdict(float)
    lat = 0.0
    for g in groups:
        if len(g) < 2:
            continue
        for s, d in round_messages(op, g, algorithm):
            path = routes.path(s, d)
            lat = max(lat, routes.latency_s(path))
            for link in path:
                weights[link] += multiplicity(link)
    return Template(dict(weights), lat, rounds(op, p, algorithm), p)


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
              numel: int, element_size: int, algorithm: str = "ring"):
    """SimPy process: one group's rounds, each message its own flow, a barrier per round."""
    p = len(group)
    if p < 2 or numel == 0:
        return
    size = message_bytes(op, p, numel, element_size)
    msgs = [(routes.path(s, d)) for s, d in round_messages(op, group, algorithm)]
    for _ in range(rounds(op, p, algorithm)):
        yield simpy.AllOf(env, [net.transfer({link: 1.0 for link in path}, size, routes.latency_s(path), kind=path)
                                for path in msgs])


# ------------------------------------------------------------------------------ pipelined
RING_OPS = ("all_reduce", "reduce_scatter", "all_gather")
FORWARDER = "wan-forwarder"  # the resource of LibraryPipelining.forwarder_Bps


@dataclass(frozen=True)
class LibraryPipelining:
    """How a collective library streams a step, instead of synchronous rounds.

    The defaults are gloo's ring all-reduce (gloo/allreduce.cc: what torch's ProcessGroupGloo
    runs for a CPU all_reduce): each member's chunk is cut into segments of at most
    `segment_bytes` (kMaxSegmentSize, 1 MiB), at least `min_segments` (2) per chunk; iteration
    i of the loop first waits for segment i-`window` (2 in flight per connection), then posts
    segment i. gloo's TCP transport sends a segment only once the receiver's ready notice has
    arrived (`rendezvous`): a segment costs the reverse path's latency, then its own latency
    and size / rate. The notice is a message on the pair's one TCP connection, so where that
    connection also carries data towards the sender (a 2-member ring: both directions are one
    pair), it leaves only after the data already on the wire. An all-reduce drains the
    pipeline once, between its reduce-scatter and all-gather halves. `call_overhead_s`: a fixed cost per collective call (issuing it, the
    ranks' wake-ups, noticing completion) — measured, e.g. by experiments/emulate/calibrate.py.

    `forwarder_Bps`: every WAN byte also passes one forwarding process of this capacity (an
    emulator's single-threaded delay line on one core): the WAN flows' rates sum to at most
    this, across all links and directions. 0: none.

    `codec_Bps`: a step on a lossy wire (hdc.wire) also costs each rank the encoding of what it
    sends and the decoding (and fp32 sum) of what it receives, at this many fp32 bytes per
    second: before its transfer, values encoded; after it, values decoded. 0: free (a GPU
    quantizes at memory bandwidth).

    `shaper_*`: the WAN links are shaped by a token bucket (an emulator's tbf/htb egress qdisc):
    each holds max(shaper_min_burst_bytes, shaper_burst_s × its rate) bytes of tokens and,
    while it has any, passes data at up to shaper_peak_Bps (the unshaped path's rate). 0: none.
    """
    segment_bytes: float = float(1 << 20)
    min_segments: int = 2
    window: int = 2
    rendezvous: bool = True
    call_overhead_s: float = 0.0
    shaper_burst_s: float = 0.0
    shaper_min_burst_bytes: float = 0.0
    shaper_peak_Bps: float = 0.0
    forwarder_Bps: float = 0.0
    codec_Bps: float = 0.0

    def codec_s(self, op: str, p: int, numel: int) -> tuple[float, float]:
        """(encode, decode) seconds of a lossy step over p members and a region of numel values:
        a reduce-scatter encodes all of its region and decodes p shards of it; an all-gather
        encodes one shard and decodes all p."""
        if self.codec_Bps <= 0 or p < 2:
            return 0.0, 0.0
        shard = -(-numel // p)
        enc, dec = (numel, p * shard) if op == "reduce_scatter" else (shard, p * shard)
        return 4 * enc / self.codec_Bps, 4 * dec / self.codec_Bps

    def buckets(self, capacities: Mapping[Hashable, float], wan_links) -> dict:
        """link -> (burst bytes, peak bytes/s) for the WAN links this shaper applies to (a
        link already as fast as the peak has no burst to give)."""
        if self.shaper_burst_s <= 0 or self.shaper_peak_Bps <= 0:
            return {}
        return {k: (max(self.shaper_min_burst_bytes, self.shaper_burst_s * capacities[k]), self.shaper_peak_Bps)
                for k in wan_links if capacities[k] < self.shaper_peak_Bps}


def pipeline_shape(op: str, p: int, numel: int, element_size: int, pipe: LibraryPipelining) -> tuple[int, int, float]:
    """(phases, segments per connection per phase, bytes per segment) of one group's step.
    Ring ops: a round's message of m bytes is k = max(min_segments, ceil(m / segment_bytes))
    segments, p-1 rounds per phase (all-reduce: 2 phases). Other ops: one message per round."""
    m = message_bytes(op, p, numel, element_size)
    if op in RING_OPS:
        k = max(pipe.min_segments, math.ceil(m / pipe.segment_bytes))
        return (2 if op == "all_reduce" else 1), (p - 1) * k, m / k
    return rounds(op, p), 1, float(m)


def run_pipelined(env: simpy.Environment, net: Network, routes: Routes, op: str, group: Sequence[int],
                  numel: int, element_size: int, pipe: LibraryPipelining):
    """SimPy process: one group's step as the library runs it (see `LibraryPipelining`).

    Every member loops like gloo's ring: at iteration i it waits until segment i-W has arrived
    on each of its incoming connections and left on each outgoing one, then posts segment i
    (a ready notice upstream, the send downstream). A segment leaves when both its send is
    posted and the notice has crossed the reverse path, behind the connection's previous
    segment (one TCP stream is FIFO); it is a flow of `seg` bytes sharing links with every
    other flow, then pays its path's latency. Data dependencies of the ring (a segment
    forwarded at i was received at i-k, k >= W) hold by construction."""
    p = len(group)
    if p < 2 or numel == 0:
        return
    phases, count, seg = pipeline_shape(op, p, numel, element_size, pipe)
    conns = round_messages(op, group)
    path = {c: routes.path(*c) for c in conns}
    weights = {c: {link: 1.0 for link in path[c]} for c in conns}
    if pipe.forwarder_Bps > 0:
        for c in conns:
            if any(routes.links[k].tier == "wan" for k in path[c]):
                weights[c][FORWARDER] = 1.0
    latency = {c: routes.latency_s(path[c]) for c in conns}
    notice = {c: routes.latency_s(routes.path(c[1], c[0])) if pipe.rendezvous else 0.0 for c in conns}
    members = sorted({m for c in conns for m in c})
    ins = {m: [c for c in conns if c[1] == m] for m in members}
    outs = {m: [c for c in conns if c[0] == m] for m in members}
    window = max(pipe.window, 1)
    posted, left, arrived = {}, {}, {}
    for ph in range(phases):
        for c in conns:
            for i in range(count):
                posted[ph, c, i], left[ph, c, i], arrived[ph, c, i] = env.event(), env.event(), env.event()

    wire = {c: None for c in conns}  # the connection's last segment on the wire: TCP is one FIFO stream

    def segment(ph, c, i, ready):
        yield simpy.AllOf(env, [posted[ph, c, i], ready])
        left[ph, c, i].succeed()
        mine = env.event()
        ahead, wire[c] = wire[c], mine
        if ahead is not None and not ahead.processed:
            yield ahead
        yield net.transfer(weights[c], seg, 0.0, kind=path[c])  # onto the wire (shared links)...
        mine.succeed()
        yield env.timeout(latency[c])  # ...then across the path
        arrived[ph, c, i].succeed()

    def ready(c):
        # the receiver's notice travels back on c's own TCP connection: where that connection
        # carries data the other way too (a 2-member ring), it leaves behind that data
        ahead = wire.get((c[1], c[0])) if pipe.rendezvous else None
        if ahead is not None and not ahead.processed:
            yield ahead
        yield env.timeout(notice[c])

    def member(m):
        for ph in range(phases):
            for i in range(count + window):
                if i >= window:
                    yield simpy.AllOf(env, [arrived[ph, c, i - window] for c in ins[m]]
                                      + [left[ph, c, i - window] for c in outs[m]])
                if i < count:
                    for c in ins[m]:
                        env.process(segment(ph, c, i, env.process(ready(c))))
                    for c in outs[m]:
                        posted[ph, c, i].succeed()

    yield simpy.AllOf(env, [env.process(member(m)) for m in members])


def link_capacities(routes: Routes, efficiency: Mapping[str, float] | None = None) -> dict:
    return routes.capacities(tuple(sorted((efficiency or {}).items())))


def simulate_plan(routes: Routes, plan: Plan, mode: str = "coflow", train_step: int = 0,
                  efficiency: Mapping[str, float] | None = None,
                  pipeline: LibraryPipelining | None = None) -> dict[int, tuple[float, float]]:
    """Run a plan's active steps alone on the network (deps respected, triggers ignored).

    mode: 'coflow' (default), 'exact' or 'pipelined' (see the module docstring; `pipeline`
    describes the library, gloo's ring when None). Returns step id -> (start_s, end_s). The
    plan's time is the largest end.
    """
    pipe = pipeline or LibraryPipelining()
    env = simpy.Environment()
    caps = link_capacities(routes, efficiency)
    buckets = {}
    if mode == "pipelined":
        buckets = pipe.buckets(caps, [k for k, link in routes.links.items() if link.tier == "wan"])
        if pipe.forwarder_Bps > 0:
            caps = {**caps, FORWARDER: pipe.forwarder_Bps}
    net = Network(env, caps, buckets)
    done: dict[int, simpy.Event] = {}
    times: dict[int, tuple[float, float]] = {}

    def run(step: Step):
        deps = [done[d] for d in step.deps if d in done]
        if deps:
            yield simpy.AllOf(env, deps)
        if mode == "pipelined":  # in its groups' issue order
            ahead, mine = issued[step.id]
            if ahead:
                yield simpy.AllOf(env, ahead)
            mine.succeed()
        start = env.now
        if mode == "exact":
            procs = [env.process(run_exact(env, net, routes, step.op, g, n, plan.wire_bytes(step), step.algorithm))
                     for g, (_, n) in zip(step.groups, step.regions)]
            yield simpy.AllOf(env, procs)
        elif mode == "pipelined":
            if pipe.call_overhead_s > 0:
                yield env.timeout(pipe.call_overhead_s)
            enc_s, dec_s = pipe.codec_s(step.op, max(len(g) for g in step.groups), step.numel) \
                if plan.lossy(step) else (0.0, 0.0)
            if enc_s:
                yield env.timeout(enc_s)
            procs = [env.process(run_pipelined(env, net, routes, step.op, g, n, plan.wire_bytes(step), pipe))
                     for g, (_, n) in zip(step.groups, step.regions)]
            yield simpy.AllOf(env, procs)
            if dec_s:
                yield env.timeout(dec_s)
        else:
            tpl = step_template(routes, step.op, step.groups, algorithm=step.algorithm)
            yield start_coflow(net, step.op, tpl, step.numel, plan.wire_bytes(step))
        times[step.id] = (start, env.now)

    if mode == "pipelined":
        issued = _issue_order(plan, train_step, env)
    for step in plan.steps:
        if step.active(train_step):
            done[step.id] = env.process(run(step))
    env.run()
    return times


def _issue_order(plan: Plan, train_step: int, env: simpy.Environment) -> dict:
    """step id -> (events of the steps issued before it on its groups, its own 'issued' event).

    A collective library needs the collectives of one communicator issued in the same order on
    every rank, so an executor issues each group's steps in one fixed order from the plan alone
    — `Plan.depths()`: (dependency depth, step id) — and a step whose deps are done still
    waits until the step before it on the same group has been issued (e.g. chunk 2's
    reduce-scatter in a site queues behind chunk 0's all-gather, which waits for the WAN)."""
    level = plan.depths()
    queues: dict = defaultdict(list)
    for s in plan.steps:
        if s.active(train_step):
            for g in s.groups:
                if len(g) > 1:
                    queues[tuple(sorted(g))].append(s)
    ev = {s.id: env.event() for s in plan.steps if s.active(train_step)}
    before: dict[int, list] = defaultdict(list)
    for q in queues.values():
        q.sort(key=lambda s: (level[s.id], s.id))
        for a, b in zip(q, q[1:]):
            before[b.id].append(ev[a.id])
    return {sid: (before[sid], e) for sid, e in ev.items()}
