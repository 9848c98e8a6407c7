"""Topology: sites ▸ pods ▸ nodes ▸ GPUs, each tier a latency and a per-GPU bandwidth,
plus long-haul (WAN) links between sites.

The network this describes is a tree per site joined by WAN links (all links directed,
each direction its own capacity):

    GPU ──intra_node── NVSwitch(node)         GPU↔GPU in a node:   g → nvs → g'
    GPU ──intra_pod─── leaf(pod)              across nodes:         g → leaf → g'
    leaf ─────────── gateway(site)            across pods:          g → leaf → gw → leaf' → g'
    gateway ══WAN══ gateway                   across sites:         ... gw → (WAN route) → gw' ...

Latency between two GPUs is the latency of the tier they cross (`intra_node`, `intra_pod`,
`intra_site`), and across sites `intra_site/2 + WAN one-way + intra_site'/2`. Bandwidths are
per GPU (NVLink per GPU, one NIC per GPU); the leaf↔gateway uplink carries
`intra_site.bandwidth × GPUs per pod`; a WAN link carries `bandwidth × links`.
The simulator builds its NetworkX graph from `links()`; `path()` is the same routing in
closed form, used by the alpha-beta costs.
"""
from __future__ import annotations

import bisect
import heapq
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property, wraps
from typing import Any, Callable, Optional

from hdc.config import from_dict, load_yaml, meta, preset_source, yaml_names
from hdc.errors import UserError
from hdc.units import parse_bandwidth, parse_distance, parse_flops, parse_size, parse_time

# Light in fiber travels at c / n with n ≈ 1.468 (≈ 204,000 km/s); real routes are longer than
# the straight line. We take one-way delay = distance × 1.5 / (c / 1.468) ≈ 7.3 µs/km, so
# 1,000 km → 7.3 ms one way, 14.7 ms RTT before switching/queuing. NVIDIA reports 21 ms RTT for
# their ~1,000 km pair: give `rtt` when it is known; `distance` is for what-if sweeps.
FIBER_ROUTE_FACTOR = 1.5
FIBER_SPEED_MPS = 299_792_458.0 / 1.468


# The largest topology accepted: 2^20 GPUs, several times the largest cluster built so far.
# The simulator's graph and the placement tables grow with it, so a mistyped node count fails
# here with a message instead of exhausting memory.
MAX_GPUS = 1 << 20


def fiber_one_way_s(distance_m: float) -> float:
    """One-way fiber delay for a straight-line distance (route factor 1.5, n = 1.468)."""
    return distance_m * FIBER_ROUTE_FACTOR / FIBER_SPEED_MPS


# Presets live in the repository's top-level topologies/ folder (the project installs editable).
PRESET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "topologies")


@dataclass
class Tier:
    latency_s: float = meta("one-way latency of a message across this tier, e.g. '2us'",
                            parse=parse_time, ge=0.0)
    bandwidth_Bps: float = meta("bandwidth per GPU across this tier, e.g. '400Gbps' or '450GB/s'",
                                parse=parse_bandwidth, gt=0.0)


@dataclass
class GPU:
    name: str = meta("GPU model name, for reports", default="gpu")
    peak_flops: float = meta("dense peak FLOP/s at training precision, e.g. '989TFLOPS'",
                             parse=parse_flops, gt=0.0, default=989e12)
    memory_bytes: float = meta("GPU memory, e.g. '80GB'", parse=parse_size, gt=0, default=80e9)
    generation: str = meta("GPU generation for the simulator's GEMM shape model (SMs, tiles, HBM "
                           "bandwidth): ampere (A100), hopper (H100/H200), generic (no tiling)",
                           choices=("ampere", "hopper", "generic"), default="generic")


@dataclass
class Site:
    name: str = meta("unique site name")
    nodes: int = meta("number of nodes in this site", gt=0)
    gpus_per_node: int = meta("GPUs in each node", gt=0)
    intra_node: Tier = meta("GPU↔GPU inside a node (NVLink/NVSwitch)")
    intra_pod: Tier = meta("GPU↔GPU across nodes of one pod (scale-out NIC per GPU)")
    pods: int = meta("pods (leaf groups) the nodes are split into, at most nodes; when they do not divide "
                     "nodes the first nodes % pods pods hold one node more", gt=0, default=1)
    intra_site: Optional[Tier] = meta("GPU↔GPU across pods of the site; default: same as intra_pod "
                                      "(non-blocking fabric)", default=None)

    def validate(self, path: str) -> None:
        if self.pods > self.nodes:
            raise UserError(f"{path}.pods: must be at most nodes ({self.nodes}), got {self.pods}")
        if self.intra_site is None:
            self.intra_site = Tier(self.intra_pod.latency_s, self.intra_pod.bandwidth_Bps)
        if self.intra_site.latency_s < self.intra_pod.latency_s:
            raise UserError(f"{path}.intra_site.latency_s: must be >= intra_pod latency "
                            f"({self.intra_pod.latency_s:g} s), got {self.intra_site.latency_s:g} s")

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def nodes_per_pod(self) -> int:
        """Nodes of the smallest pod (pods differ by at most one node)."""
        return self.nodes // self.pods

    def pod_of(self, node: int) -> int:
        """The pod of a node: the first nodes % pods pods take nodes_per_pod + 1 nodes each."""
        q, r = divmod(self.nodes, self.pods)
        big = r * (q + 1)
        return node // (q + 1) if node < big else r + (node - big) // q


@dataclass
class WanLink:
    sites: list[str] = meta("the two site names this link joins")
    bandwidth_Bps: float = meta("bandwidth of one link, each direction, e.g. '400Gbps'",
                                parse=parse_bandwidth, gt=0.0)
    links: int = meta("parallel links (their bandwidth adds up)", gt=0, default=1)
    rtt_s: Optional[float] = meta("round-trip time, e.g. '21ms'; one way is half", parse=parse_time,
                                  gt=0.0, default=None)
    distance_m: Optional[float] = meta("fiber distance, e.g. '1000km'; one way = distance × 1.5 / "
                                       "(c/1.468); used when rtt_s is not given", parse=parse_distance,
                                       gt=0.0, default=None)

    def validate(self, path: str) -> None:
        if len(self.sites) != 2 or self.sites[0] == self.sites[1]:
            raise UserError(f"{path}.sites: must name two different sites, got {self.sites!r}")
        if (self.rtt_s is None) == (self.distance_m is None):
            raise UserError(f"{path}: give exactly one of rtt_s or distance_m")

    @property
    def one_way_s(self) -> float:
        return self.rtt_s / 2 if self.rtt_s is not None else fiber_one_way_s(self.distance_m)

    @property
    def capacity_Bps(self) -> float:
        return self.bandwidth_Bps * self.links


@dataclass(frozen=True)
class Location:
    """Where a GPU sits; `gpu` is the global GPU id (site-major, then pod, node, local)."""
    gpu: int
    site: int
    pod: int
    node: int  # node index within the site
    local: int  # GPU index within the node


def instance_cache(method):
    """Memoise a method in its instance's own dict. Unlike `lru_cache` on a method, the cache
    dies with the object, so a sweep building thousands of topologies does not keep them all."""
    key = f"_cache_{method.__name__}"

    @wraps(method)
    def wrapper(self, *args):
        cache = self.__dict__.get(key)
        if cache is None:
            cache = self.__dict__[key] = {}
        value = cache.get(args, _MISSING)
        if value is _MISSING:
            value = cache[args] = method(self, *args)
        return value
    return wrapper


_MISSING = object()


def lru_get(table: "OrderedDict", key, make: Callable[[], Any], size: int = 16) -> Any:
    """`table[key]`, made by `make()` on a miss; the least recently used entry goes beyond `size`.
    For caches shared by equal topologies (key on `Topology.content_key`)."""
    value = table.get(key, _MISSING)
    if value is _MISSING:
        value = table[key] = make()
        if len(table) > size:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return value


@dataclass(frozen=True)
class Link:
    latency_s: float
    bandwidth_Bps: float
    tier: str  # intra_node | intra_pod | intra_site | wan


def link_class(key: tuple[str, str]) -> tuple[int, int, frozenset]:
    """(lower site, higher site, {endpoint kinds}) of a link: links of one class have the same
    latency and bandwidth, so costs can be worked out per class once paths are known."""
    (site_a, kind_a), (site_b, kind_b) = (_node_kind(n) for n in key)
    return min(site_a, site_b), max(site_a, site_b), frozenset((kind_a, kind_b))


def _node_kind(name: str) -> tuple[int, str]:
    """(site index, gpu | nvs | leaf | gw) of a network node name made by `Topology._names`."""
    parts = name.split("/")
    last = parts[-1]
    return int(parts[0][1:]), last if last in ("nvs", "leaf", "gw") else "gpu"


@dataclass(eq=False)  # compared and hashed by identity: caches key on the object
class Topology:
    name: str = meta("topology name")
    sites: list[Site] = meta("the sites (datacenters)")
    description: str = meta("free text: sources and assumptions", default="")
    gpu: GPU = meta("the GPU model (all GPUs are alike)", default_factory=GPU)
    wan: list[WanLink] = meta("long-haul links between sites", default_factory=list)
    assumptions: list[str] = meta("assumptions this topology makes, each with its source or "
                                  "marked as an assumption", default_factory=list)

    # ---------------------------------------------------------------- validation
    def validate(self, path: str) -> None:
        if not self.sites:
            raise UserError(f"{_p(path, 'sites')}: must list at least one site")
        names = [s.name for s in self.sites]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise UserError(f"{_p(path, f'sites[{i}].name')}: duplicate site name {n!r}")
        seen = set()
        for i, w in enumerate(self.wan):
            for s in w.sites:
                if s not in names:
                    raise UserError(f"{_p(path, f'wan[{i}].sites')}: unknown site {s!r}; sites are {', '.join(names)}")
            key = frozenset(w.sites)
            if key in seen:
                raise UserError(f"{_p(path, f'wan[{i}].sites')}: a link between {w.sites[0]} and {w.sites[1]} is already given")
            seen.add(key)
        total = sum(s.gpus for s in self.sites)
        if total > MAX_GPUS:
            raise UserError(f"{_p(path, 'sites')}: at most {MAX_GPUS:,} GPUs in all (nodes × gpus_per_node "
                            f"summed over sites), got {total:,}")
        for j in range(1, len(self.sites)):
            if self._wan_route(0, j) is None:
                raise UserError(f"{_p(path, 'wan')}: site {names[j]!r} is not connected to {names[0]!r} by any WAN link")

    # ---------------------------------------------------------------- structure
    @cached_property
    def content_key(self) -> str:
        """Equal for topologies that describe the same network (names and notes aside): what
        caches across equal topology objects key on."""
        return repr((self.sites, self.wan, self.gpu))

    @cached_property
    def structure_key(self) -> tuple:
        """Equal for topologies with the same sites, pods, nodes and GPUs per node, whatever their
        links' speeds: plans and placements depend on this alone."""
        return tuple((s.nodes, s.gpus_per_node, s.pods) for s in self.sites)

    @cached_property
    def route_key(self) -> tuple:
        """`structure_key` plus the WAN route between every pair of sites: equal for topologies
        whose GPU-to-GPU paths (`path()`) are the same."""
        n = len(self.sites)
        return self.structure_key, tuple(tuple(self._wan_route(a, b) or ()) for a in range(n) for b in range(n))

    @cached_property
    def num_gpus(self) -> int:
        return sum(s.gpus for s in self.sites)

    @cached_property
    def _site_offsets(self) -> list[int]:
        out, acc = [], 0
        for s in self.sites:
            out.append(acc)
            acc += s.gpus
        return out

    def site_index(self, name: str) -> int:
        for i, s in enumerate(self.sites):
            if s.name == name:
                return i
        raise UserError(f"unknown site {name!r}; sites are {', '.join(s.name for s in self.sites)}")

    def site_gpus(self, site: int) -> range:
        start = self._site_offsets[site]
        return range(start, start + self.sites[site].gpus)

    @instance_cache
    def locate(self, gpu: int) -> Location:
        if not 0 <= gpu < self.num_gpus:
            raise IndexError(f"GPU {gpu} out of range 0..{self.num_gpus - 1}")
        site = bisect.bisect_right(self._site_offsets, gpu) - 1
        s = self.sites[site]
        idx = gpu - self._site_offsets[site]
        node, local = divmod(idx, s.gpus_per_node)
        return Location(gpu, site, s.pod_of(node), node, local)

    # ---------------------------------------------------------------- network
    @instance_cache
    def _names(self, g: int) -> tuple[str, str, str, str]:
        loc = self.locate(g)
        return (f"s{loc.site}/n{loc.node}/g{loc.local}", f"s{loc.site}/n{loc.node}/nvs",
                f"s{loc.site}/p{loc.pod}/leaf", f"s{loc.site}/gw")

    def links(self) -> dict[tuple[str, str], Link]:
        """Every directed link of the network, keyed (from, to)."""
        out: dict[tuple[str, str], Link] = {}

        def both(a: str, b: str, link: Link) -> None:
            out[(a, b)] = link
            out[(b, a)] = link

        for si, s in enumerate(self.sites):
            up_link = self.class_link((si, si, frozenset(("leaf", "gw"))))
            node_link = self.class_link((si, si, frozenset(("gpu", "nvs"))))
            pod_link = self.class_link((si, si, frozenset(("gpu", "leaf"))))
            for p in range(s.pods):
                both(f"s{si}/p{p}/leaf", f"s{si}/gw", up_link)
            for n in range(s.nodes):  # the names _names() gives, without locating each GPU
                nvs, leaf = f"s{si}/n{n}/nvs", f"s{si}/p{s.pod_of(n)}/leaf"
                for local in range(s.gpus_per_node):
                    gpu = f"s{si}/n{n}/g{local}"
                    both(gpu, nvs, node_link)
                    both(gpu, leaf, pod_link)
        for w in self.wan:
            a, b = sorted(self.site_index(n) for n in w.sites)
            both(f"s{a}/gw", f"s{b}/gw", self.class_link((a, b, frozenset(("gw",)))))
        return out

    def link(self, key: tuple[str, str]) -> Link:
        """`links()[key]` for a key of `links()` (as `path()` returns them), worked out from the
        two names alone, so that costing a plan on a huge topology touches only the GPUs it uses."""
        link = self.class_link(link_class(key))
        if link is None:
            raise KeyError(key)
        return link

    @instance_cache
    def class_link(self, cls: tuple[int, int, frozenset]) -> Optional[Link]:
        """The Link shared by every link of a class (see `link_class`); None if there is none."""
        site_a, site_b, kinds = cls
        s = self.sites[site_a]
        if kinds == {"gw"}:
            for w in self.wan:
                if {self.site_index(n) for n in w.sites} == {site_a, site_b}:
                    return Link(w.one_way_s, w.capacity_Bps, "wan")
        elif site_a != site_b:
            pass
        elif kinds == {"leaf", "gw"}:
            up_lat = (s.intra_site.latency_s - s.intra_pod.latency_s) / 2
            # every pod's uplink: per-GPU bandwidth × the GPUs of the smallest pod (uneven pods: conservative)
            return Link(up_lat, s.intra_site.bandwidth_Bps * s.nodes_per_pod * s.gpus_per_node, "intra_site")
        elif kinds == {"gpu", "nvs"}:
            return Link(s.intra_node.latency_s / 2, s.intra_node.bandwidth_Bps, "intra_node")
        elif kinds == {"gpu", "leaf"}:
            return Link(s.intra_pod.latency_s / 2, s.intra_pod.bandwidth_Bps, "intra_pod")
        return None

    @instance_cache
    def _wan_route(self, a: int, b: int) -> Optional[list[int]]:
        """Lowest-latency sequence of sites from a to b over WAN links (Dijkstra)."""
        adj: dict[int, list[tuple[int, float]]] = {}
        for w in self.wan:
            x, y = (self.site_index(n) for n in w.sites)
            adj.setdefault(x, []).append((y, w.one_way_s))
            adj.setdefault(y, []).append((x, w.one_way_s))
        dist, prev, heap = {a: 0.0}, {}, [(0.0, a)]
        while heap:
            d, u = heapq.heappop(heap)
            if u == b:
                route = [b]
                while route[-1] != a:
                    route.append(prev[route[-1]])
                return route[::-1]
            if d > dist.get(u, float("inf")):
                continue
            for v, lat in adj.get(u, []):
                if d + lat < dist.get(v, float("inf")):
                    dist[v], prev[v] = d + lat, u
                    heapq.heappush(heap, (d + lat, v))
        return None

    def path(self, src: int, dst: int) -> tuple[tuple[str, str], ...]:
        """The directed links a message from GPU `src` to GPU `dst` crosses."""
        if src == dst:
            return ()
        a, b = self.locate(src), self.locate(dst)
        ga, nvs_a, leaf_a, gw_a = self._names(src)
        gb, nvs_b, leaf_b, gw_b = self._names(dst)
        if a.site == b.site and a.node == b.node:
            return ((ga, nvs_a), (nvs_a, gb))
        if a.site == b.site and a.pod == b.pod:
            return ((ga, leaf_a), (leaf_a, gb))
        hops = [(ga, leaf_a), (leaf_a, gw_a)]
        if a.site != b.site:
            route = self._wan_route(a.site, b.site)
            hops += [(f"s{x}/gw", f"s{y}/gw") for x, y in zip(route, route[1:])]
        hops += [(gw_b, leaf_b), (leaf_b, gb)]
        return tuple(hops)

    def path_latency_s(self, src: int, dst: int) -> float:
        return sum(self.link(k).latency_s for k in self.path(src, dst))

    def tier_between(self, src: int, dst: int) -> str:
        a, b = self.locate(src), self.locate(dst)
        if a.site != b.site:
            return "wan"
        if a.node == b.node:
            return "intra_node"
        return "intra_pod" if a.pod == b.pod else "intra_site"

    def summary(self) -> list[tuple[str, str]]:
        from hdc.units import fmt_bandwidth, fmt_time

        rows = [("topology", self.name), ("GPUs", f"{self.num_gpus} × {self.gpu.name}"),
                ("sites", str(len(self.sites)))]
        for s in self.sites:
            rows.append((f"site {s.name}",
                         f"{s.nodes} nodes × {s.gpus_per_node} GPUs in {s.pods} pod(s); "
                         f"node {fmt_bandwidth(s.intra_node.bandwidth_Bps)}/{fmt_time(s.intra_node.latency_s)}, "
                         f"pod {fmt_bandwidth(s.intra_pod.bandwidth_Bps)}/{fmt_time(s.intra_pod.latency_s)}, "
                         f"site {fmt_bandwidth(s.intra_site.bandwidth_Bps)}/{fmt_time(s.intra_site.latency_s)} per GPU"))
        for w in self.wan:
            rows.append((f"wan {w.sites[0]}↔{w.sites[1]}",
                         f"{w.links} × {fmt_bandwidth(w.bandwidth_Bps)}, one way {fmt_time(w.one_way_s)}"
                         + (f" ({w.distance_m / 1e3:g} km)" if w.distance_m else "")))
        return rows


def _p(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# Field aliases so YAML reads naturally (`latency: 2us`, `bandwidth: 400Gbps`, `rtt: 21ms`).
_ALIASES = {"latency": "latency_s", "bandwidth": "bandwidth_Bps", "rtt": "rtt_s",
            "distance": "distance_m", "memory": "memory_bytes"}


def _dealias(data: object) -> object:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            nk = _ALIASES.get(k, k)
            if nk in out:
                raise UserError(f"{k}: given twice (as {k} and {nk})")
            out[nk] = _dealias(v)
        return out
    if isinstance(data, list):
        return [_dealias(v) for v in data]
    return data


def topology_from_dict(data: object, source: str = "topology") -> Topology:
    """Validate a topology mapping. `site_defaults` (optional) is merged into every site."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: must be a mapping with keys name, sites, wan, ...")
    data = dict(data)
    defaults = data.pop("site_defaults", None) or {}
    if not isinstance(defaults, dict):
        raise UserError("site_defaults: must be a mapping of site fields")
    sites = data.get("sites")
    if isinstance(sites, list):
        data["sites"] = [{**defaults, **s} if isinstance(s, dict) else s for s in sites]
    try:
        return from_dict(Topology, _dealias(data))
    except UserError as e:  # speak the YAML's names back to the user
        msg = str(e)
        for short, internal in _ALIASES.items():
            msg = re.sub(rf"\b{internal}\b", short, msg)
        raise UserError(msg) from None


def preset_names() -> list[str]:
    return yaml_names(PRESET_DIR)


def load_topology(path_or_preset: str) -> Topology:
    """Load a topology YAML file, or a preset by name (see `preset_names()`)."""
    source = preset_source(path_or_preset, PRESET_DIR, "topology")
    data = load_yaml(source)
    try:
        return topology_from_dict(data, source)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
