"""The network: a NetworkX graph of the topology, and a flow-level SimPy model of its links.

Routing. The graph has one node per GPU, NVSwitch, pod leaf and site gateway, and one
directed edge per entry of `Topology.links()` (WAN capacity already × parallel links).
Messages take the lowest-latency path; GPUs are endpoints, never transit. Paths are
computed with NetworkX (all-pairs Dijkstra over the switch nodes, then the best first/last
hop) and cached; tests check them against the closed-form `Topology.path()`.

Bandwidth sharing. A *flow* moves `size_bytes` over a set of resources (links, or groups
of links that always carry the same load — see `atoms`) with a weight per resource: how
many of the flow's unit messages cross it at once. Concurrent flows share every resource
max-min fairly (progressive filling, weighted): all unfrozen flows rise together until a
resource saturates, its flows freeze at that rate, and so on. Rates are recomputed whenever
a flow starts or ends; between those instants every rate is constant, so completion times
are exact. A flow pays its latency first, then size / rate.

Token buckets (optional, for shaped links such as an emulator's tbf/htb qdisc): a bucketed
resource sustains its capacity but holds up to `burst` bytes of tokens, refilled at that
capacity while it is used below it; while it holds tokens it carries up to `peak` (so a burst
after an idle gap passes at the unshaped rate). Tokens are integrated exactly between events,
and running out is an event of its own.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Iterable, Mapping

import networkx as nx
import simpy

from hdc.topology import Link, Topology, instance_cache


# ------------------------------------------------------------------------------ routing
class Routes:
    """Lowest-latency paths between GPUs over the topology's NetworkX graph (cached)."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.links: dict[tuple[str, str], Link] = topology.links()
        self.gpu_names = frozenset(a for (a, b), link in self.links.items() if b.endswith("/nvs"))
        edges = [(a, b, {"latency_s": link.latency_s, "tier": link.tier, "bandwidth_Bps": link.bandwidth_Bps})
                 for (a, b), link in self.links.items()]
        self.graph = nx.DiGraph(edges)
        switches = nx.DiGraph(e for e in edges if e[0] not in self.gpu_names and e[1] not in self.gpu_names)
        switches.add_nodes_from(n for n in self.graph if n not in self.gpu_names)
        self._dist = dict(nx.all_pairs_dijkstra(switches, weight="latency_s"))  # node -> (distances, paths)
        self.templates: dict = {}  # the simulator's step templates, shared by runs on equal topologies

    @instance_cache
    def capacities(self, efficiency: tuple[tuple[str, float], ...] = ()) -> dict[tuple[str, str], float]:
        """Each link's usable bandwidth: its bandwidth × the efficiency of its tier."""
        eff = dict(efficiency)
        return {k: l.bandwidth_Bps * eff.get(l.tier, 1.0) for k, l in self.links.items()}

    @instance_cache
    def tier_capacity(self) -> dict[str, float]:
        """Sum of link bandwidths per tier."""
        out: dict[str, float] = defaultdict(float)
        for link in self.links.values():
            out[link.tier] += link.bandwidth_Bps
        return dict(out)

    @instance_cache
    def path(self, src: int, dst: int) -> tuple[tuple[str, str], ...]:
        """The directed links a message from GPU `src` to GPU `dst` crosses."""
        if src == dst:
            return ()
        a, b = self.topology._names(src)[0], self.topology._names(dst)[0]
        best = None
        # neighbours in name order put the NVSwitch ('.../nvs') before the leaf ('.../leaf'):
        # on equal latency the in-node route wins, as in Topology.path().
        for u in sorted(self.graph.successors(a), key=lambda n: not n.endswith("/nvs")):
            dist, paths = self._dist[u]
            for v in sorted(self.graph.predecessors(b), key=lambda n: not n.endswith("/nvs")):
                if v not in dist:
                    continue
                lat = self.links[(a, u)].latency_s + dist[v] + self.links[(v, b)].latency_s
                hops = len(paths[v]) + 1
                if best is None or (lat, hops) < best[:2]:
                    best = (lat, hops, [a] + paths[v] + [b])
        if best is None:
            raise ValueError(f"no route from GPU {src} to GPU {dst}")
        nodes = best[2]
        return tuple(zip(nodes, nodes[1:]))

    def latency_s(self, path: Iterable[tuple[str, str]]) -> float:
        return sum(self.links[k].latency_s for k in path)


# ------------------------------------------------------------------------------ link groups
def atoms(capacity_Bps: Mapping[Hashable, float], templates: Iterable[Mapping[Hashable, float]]
          ) -> tuple[dict[Hashable, int], list[float], list[int]]:
    """Group links that no flow can tell apart: same capacity and the same weight in every
    template. Each group is one fair-sharing constraint — an exact reduction, since equal
    constraints bind together. Returns (link -> atom id, atom capacity, links per atom)."""
    sig: dict[Hashable, list] = defaultdict(list)
    for i, t in enumerate(templates):
        for link, w in t.items():
            sig[link].append((i, w))
    index: dict[tuple, int] = {}
    of: dict[Hashable, int] = {}
    caps: list[float] = []
    counts: list[int] = []
    for link in sorted(sig, key=repr):
        key = (capacity_Bps[link], tuple(sig[link]))
        if key not in index:
            index[key] = len(caps)
            caps.append(capacity_Bps[link])
            counts.append(0)
        of[link] = index[key]
        counts[index[key]] += 1
    return of, caps, counts


# ------------------------------------------------------------------------------ flows
class _Flow:
    __slots__ = ("weights", "size", "remaining", "rate", "done", "tag", "start", "seq", "kind", "solo")

    def __init__(self, weights, size, done, tag, seq, kind):
        self.seq, self.kind = seq, kind
        self.weights, self.size, self.remaining = weights, size, float(size)
        self.rate, self.done, self.tag, self.start = 0.0, done, tag, 0.0


class Network:
    """Flows over shared resources in a SimPy environment (see the module docstring).

    `capacity_Bps[r]` is the bandwidth of resource r. `bytes_by_resource[r]` accumulates the
    bytes that crossed one link of r (weight × flow bytes).
    """

    def __init__(self, env: simpy.Environment, capacity_Bps: Mapping[Hashable, float],
                 buckets: Mapping[Hashable, tuple[float, float]] | None = None):
        """`buckets`: resource -> (burst bytes, peak bytes/s) of a token bucket in front of it
        (see the module docstring); every bucket starts full."""
        self.env = env
        self.capacity_Bps = dict(capacity_Bps)
        self.sustained_Bps = {r: self.capacity_Bps[r] for r in buckets or {}}
        self.buckets = {r: (float(b), float(peak)) for r, (b, peak) in (buckets or {}).items()}
        self.tokens = {r: b for r, (b, _) in self.buckets.items()}
        for r, (b, peak) in self.buckets.items():
            if b <= 0 or peak <= self.sustained_Bps[r]:
                raise ValueError(f"token bucket on {r!r}: burst must be > 0 and peak above the capacity")
            self.capacity_Bps[r] = peak
        # dicts, not sets: iteration in insertion order keeps runs deterministic
        self.active: dict[_Flow, None] = {}
        self.users: dict[Hashable, dict] = defaultdict(dict)
        self.bytes_by_resource: dict[Hashable, float] = defaultdict(float)
        self._last = 0.0
        self._version = 0
        self.flows_started = 0
        self.reallocations = 0
        self._kinds: dict[Hashable, int] = {}
        self._memo: dict[tuple, dict[int, float]] = {}
        self._solo: dict[int, float] = {}
        self.keep: dict = {}  # objects whose id() names a kind
        self.demand: dict[Hashable, float] = defaultdict(float)

    def transfer(self, weights: Mapping[Hashable, float], size_bytes: float, latency_s: float = 0.0,
                 tag: object = None, kind: Hashable = None) -> simpy.Event:
        """An event that fires when a flow of `size_bytes` (per unit message) has arrived.

        `kind` names the weights (flows of one kind have equal weights); it lets rates be
        reused whenever the same kinds share a component again."""
        done = self.env.event()
        self.flows_started += 1
        if kind is None:
            kind = tuple(sorted(weights.items(), key=repr))
        kid = self._kinds.setdefault(kind, len(self._kinds))
        flow = _Flow(weights, size_bytes, done, tag, self.flows_started, kid)
        if latency_s > 0:
            self.env.timeout(latency_s).callbacks.append(lambda _e: self._start(flow))
        else:
            self._start(flow)
        return done

    # -- internals ------------------------------------------------------------------
    # A resource *binds* when its demand — the sum over its flows of weight × the rate the
    # flow would get alone (`solo`) — exceeds its capacity. Resources that do not bind never
    # limit anyone, so max-min rates are found over binding resources only, per connected
    # component, each flow also capped at its solo rate.
    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0:
            for f in self.active:
                f.remaining -= f.rate * dt
            for r, (burst, _) in self.buckets.items():
                used = self._usage(r)
                tokens = min(burst, self.tokens[r] + (self.sustained_Bps[r] - used) * dt)
                self.tokens[r] = tokens if tokens > 1e-9 * burst else 0.0
        self._last = now

    def _usage(self, r) -> float:
        return sum(f.weights[r] * f.rate for f in self.users[r])

    def _rebalance(self) -> None:
        """Bucket mode: each bucket's capacity from its tokens (peak while it holds any), then
        every active flow's rate afresh (rates depend on the token state: no memo)."""
        for r, (burst, peak) in self.buckets.items():
            self.capacity_Bps[r] = peak if self.tokens[r] > 0 else self.sustained_Bps[r]
        self.demand.clear()
        for f in self.active:
            f.solo = min(self.capacity_Bps[r] / w for r, w in f.weights.items())
            for r, w in f.weights.items():
                self.demand[r] += w * f.solo
        if self.active:
            self._fill(list(self.active))

    def _binds(self, r) -> bool:
        return self.demand[r] > self.capacity_Bps[r] * (1 + 1e-9)

    def _start(self, flow: _Flow) -> None:
        if flow.size <= 0 or not flow.weights:
            flow.done.succeed()
            return
        self._advance()
        flow.start = self.env.now
        solo = self._solo.get(flow.kind)
        if solo is None:
            solo = self._solo[flow.kind] = min(self.capacity_Bps[r] / w for r, w in flow.weights.items())
        flow.solo = solo
        binding = False
        for r, w in flow.weights.items():
            self.users[r][flow] = None
            self.demand[r] += w * solo
            self.bytes_by_resource[r] += w * flow.size
            binding = binding or self._binds(r)
        self.active[flow] = None
        if self.buckets:  # rates (and solo rates) depend on the token state: all afresh
            self._rebalance()
        elif binding:
            self._allocate(self._component([flow]))
        else:  # no resource of this flow binds: nobody else's rate changes
            flow.rate = solo
        self._schedule()

    def _finish_due(self, version: int) -> None:
        if version != self._version:
            return
        self._advance()
        now = self.env.now
        done = [f for f in self.active
                if f.remaining <= 1e-9 * f.size or f.remaining <= f.rate * 1e-12 * max(now, 1.0)]
        seeds: dict[_Flow, None] = {}
        for f in done:
            del self.active[f]
            for r, w in f.weights.items():
                was = self._binds(r)
                users = self.users[r]
                del users[f]
                self.demand[r] -= w * f.solo
                if not users:
                    self.demand[r] = 0.0
                elif was:
                    seeds.update(users)
        seeds = [f for f in seeds if f in self.active]  # not the other flows finishing now
        if self.buckets:
            self._rebalance()
        elif seeds:
            self._allocate(self._component(seeds))
        self._schedule()
        for f in done:
            f.done.succeed()

    def _schedule(self) -> None:
        self._version += 1
        if not self.active:
            return
        dt = min(f.remaining / f.rate for f in self.active)
        for r in self.buckets:  # a bucket that runs dry changes the rates
            over = self._usage(r) - self.sustained_Bps[r]
            if over > 1e-9 * self.sustained_Bps[r] and self.tokens[r] > 0:
                dt = min(dt, self.tokens[r] / over)
        version = self._version
        self.env.timeout(max(dt, 0.0)).callbacks.append(lambda _e: self._finish_due(version))

    def _component(self, seeds: list[_Flow]) -> list[_Flow]:
        """Active flows connected to `seeds` through binding resources."""
        seen, stack = dict.fromkeys(seeds), list(seeds)
        seen_r = set()
        while stack:
            f = stack.pop()
            for r in f.weights:
                if r not in seen_r and self._binds(r):
                    seen_r.add(r)
                    for g in self.users[r]:
                        if g not in seen:
                            seen[g] = None
                            stack.append(g)
        return list(seen)

    def _allocate(self, flows: list[_Flow]) -> None:
        """Max-min rates of a component; they depend only on which kinds of flow it holds,
        so they are computed once per such set."""
        key = tuple(sorted(f.kind for f in flows))
        rates = self._memo.get(key)
        if rates is None:
            self._fill(flows)
            if len(self._memo) > 200_000:
                self._memo.clear()
            self._memo[key] = {f.kind: f.rate for f in flows}
        else:
            for f in flows:
                f.rate = rates[f.kind]

    def _fill(self, flows: list[_Flow]) -> None:
        """Weighted max-min fair rates by progressive filling over the binding resources."""
        self.reallocations += 1
        residual: dict[Hashable, float] = {}
        wsum: dict[Hashable, float] = defaultdict(float)
        by_res: dict[Hashable, list[_Flow]] = defaultdict(list)
        for f in flows:
            for r, w in f.weights.items():
                if self._binds(r):
                    wsum[r] += w
                    residual[r] = self.capacity_Bps[r]
                    by_res[r].append(f)
        unfrozen = dict.fromkeys(sorted(flows, key=lambda f: f.solo))
        while unfrozen:
            level, tight = math.inf, []
            for r, s in wsum.items():
                if s > 1e-12:
                    x = residual[r] / s
                    if x < level * (1 - 1e-12):
                        level, tight = x, [r]
                    elif x <= level * (1 + 1e-12):
                        tight.append(r)
            first = next(iter(unfrozen))
            if first.solo <= level * (1 + 1e-12):  # a flow reaches its own cap first
                level, freeze = first.solo, [first]
                tight = []
            else:
                freeze = [f for r in tight for f in by_res[r] if f in unfrozen]
            for f in freeze:
                if f in unfrozen:
                    del unfrozen[f]
                    f.rate = level
                    for q, w in f.weights.items():
                        if q in wsum:
                            residual[q] -= w * level
                            wsum[q] -= w
            for r in tight:
                wsum[r] = 0.0
