"""What to build for a topology: namespace and device names, addresses, and the one-way delay
and bandwidth of every ordered pair of sites.

Only the WAN is emulated. Ranks of one site share their namespace and talk over its loopback
(all "GPUs" of a site are processes on this machine); a message between sites pays the WAN
route's one-way latency and is shaped to the narrowest WAN link on the route.

Names: every namespace is `<prefix>-<i>-<site>` and every device `<prefix>t<i>` (TUN) or
`<prefix><i>v<j>` (veth), so `down` can remove exactly what `up` made. Addresses are
10.77.<i>.1 inside the namespaces only; nothing is configured in the root namespace.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import yaml

from hdc.errors import UserError
from hdc.topology import Topology, topology_from_dict
from hdc.units import UnitError, parse_bandwidth

STATE_ROOT = "/run/hdc-emulate"
DEFAULT_PREFIX = "hdc"
MODES = ("auto", "delayline", "netem", "direct")
ADDR_NET = "10.77"


@dataclass
class SiteSpec:
    index: int
    name: str
    netns: str
    dev: str  # the device whose address gloo binds (GLOO_SOCKET_IFNAME)
    addr: str  # this site's IPv4 address, inside its namespace


@dataclass
class EmulationSpec:
    prefix: str
    topology_name: str
    sites: list[SiteSpec]
    one_way_s: list[list[float]]  # [src][dst] WAN one-way delay, 0 on the diagonal
    bandwidth_Bps: list[list[float]]  # [src][dst] narrowest WAN link on the route
    ranks_site: list[int]  # site index of each global rank
    mtu_bytes: int = 9000
    mode: str = "delayline"  # resolved: delayline | netem | direct
    extra: dict = field(default_factory=dict)

    @property
    def state_dir(self) -> str:
        return state_dir(self.prefix)

    def to_dict(self) -> dict:
        return {"prefix": self.prefix, "topology_name": self.topology_name,
                "sites": [vars(s) for s in self.sites], "one_way_s": self.one_way_s,
                "bandwidth_Bps": self.bandwidth_Bps, "ranks_site": self.ranks_site,
                "mtu_bytes": self.mtu_bytes, "mode": self.mode, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "EmulationSpec":
        d = dict(d)
        d["sites"] = [SiteSpec(**s) for s in d["sites"]]
        return cls(**d)


def state_dir(prefix: str) -> str:
    return os.path.join(STATE_ROOT, prefix)


def check_prefix(prefix: str) -> str:
    if not re.fullmatch(r"hdc[a-z0-9]{0,5}", prefix):
        raise UserError(f"--prefix: must be 'hdc' followed by up to 5 lowercase letters/digits "
                        f"(names must stay recognisably ours and fit 15-character device names), got {prefix!r}")
    return prefix


def wan_pair(topology: Topology, a: int, b: int) -> tuple[float, float]:
    """(one-way delay s, bandwidth Bps) of the WAN route from site a to site b."""
    src, dst = topology.site_gpus(a)[0], topology.site_gpus(b)[0]
    links = [topology.link(k) for k in topology.path(src, dst) if topology.link(k).tier == "wan"]
    return sum(l.latency_s for l in links), min(l.bandwidth_Bps for l in links)


def build_spec(topology: Topology, prefix: str = DEFAULT_PREFIX, mode: str = "delayline",
               mtu_bytes: int = 9000) -> EmulationSpec:
    check_prefix(prefix)
    n = len(topology.sites)
    if n > 200:
        raise UserError(f"topology {topology.name}: {n} sites; emulation supports at most 200")
    sites = []
    for i, s in enumerate(topology.sites):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", s.name)[:40]
        dev = f"{prefix}t{i}" if mode == "delayline" else f"{prefix}{i}v{(i + 1) % n if n > 1 else 0}"
        sites.append(SiteSpec(i, s.name, f"{prefix}-{i}-{safe}", dev, f"{ADDR_NET}.{i}.1"))
    delay = [[0.0] * n for _ in range(n)]
    bw = [[0.0] * n for _ in range(n)]
    for a in range(n):
        for b in range(n):
            if a != b:
                delay[a][b], bw[a][b] = wan_pair(topology, a, b)
    ranks_site = [topology.locate(r).site for r in range(topology.num_gpus)]
    return EmulationSpec(prefix, topology.name, sites, delay, bw, ranks_site, mtu_bytes, mode)


# ------------------------------------------------------------------ topology overrides
def _t(x: float) -> str:
    return f"{x!r}s"


def _bw(x: float) -> str:
    return f"{x!r}B/s"


def topology_to_data(t: Topology) -> dict:
    """A topology as YAML-ready data with explicit units (topology_from_dict reads it back)."""
    tier = lambda x: {"latency": _t(x.latency_s), "bandwidth": _bw(x.bandwidth_Bps)}  # noqa: E731
    wan = []
    for w in t.wan:
        d = {"sites": list(w.sites), "bandwidth": _bw(w.bandwidth_Bps), "links": w.links}
        d["rtt"] = _t(w.one_way_s * 2)
        wan.append(d)
    return {"name": t.name, "description": t.description,
            "gpu": {"name": t.gpu.name, "peak_flops": f"{t.gpu.peak_flops!r}FLOPS",
                    "memory": f"{int(t.gpu.memory_bytes)}B"},
            "sites": [{"name": s.name, "nodes": s.nodes, "gpus_per_node": s.gpus_per_node,
                       "pods": s.pods, "intra_node": tier(s.intra_node), "intra_pod": tier(s.intra_pod),
                       "intra_site": tier(s.intra_site)} for s in t.sites],
            "wan": wan, "assumptions": list(t.assumptions)}


def with_wan(topology: Topology, one_way_s: float | None = None, bandwidth_Bps: float | None = None,
             name_suffix: str = "") -> Topology:
    """The same topology with every WAN link's one-way delay and/or bandwidth replaced."""
    data = topology_to_data(topology)
    for w in data["wan"]:
        if one_way_s is not None:
            w["rtt"] = _t(2 * one_way_s)
        if bandwidth_Bps is not None:
            w["bandwidth"], w["links"] = _bw(bandwidth_Bps), 1
    data["name"] = topology.name + name_suffix
    return topology_from_dict(data, f"{topology.name} (WAN override)")


def with_tiers(topology: Topology, *, node=None, nic_Bps: float | None = None, cross_site_s=None,
               wan_share: float = 1.0, name_suffix="") -> Topology:
    """How calibrated constants enter the model, on the same structure:
    node          (latency_s, Bps) of the intra-node tier (ranks of a site share loopback)
    nic_Bps       per-GPU bandwidth on the way out of the site (intra_pod/intra_site tiers): the
                  rate ONE connection reaches across the WAN; the WAN links keep their capacity,
                  so several connections share one only when together they would exceed it
    cross_site_s  {(site a, site b): one-way latency of a message between them}; each WAN link
                  gets it minus the intra-site part of the path (the node latency)
    wan_share     fraction of every WAN link's capacity that connections reach together
    The intra-pod/site latency equals the node latency, so no route prefers leaving the node."""
    data = topology_to_data(topology)
    lat = node[0] if node is not None else None
    for s in data["sites"]:
        if node is not None:
            s["intra_node"] = {"latency": _t(node[0]), "bandwidth": _bw(node[1])}
        bw = nic_Bps if nic_Bps is not None else (node[1] if node is not None else None)
        if bw is not None:
            latency = _t(lat) if lat is not None else s["intra_pod"]["latency"]
            s["intra_pod"] = {"latency": latency, "bandwidth": _bw(bw)}
            s["intra_site"] = dict(s["intra_pod"])
    for w, orig in zip(data["wan"], topology.wan):
        if cross_site_s:
            one_way = cross_site_s[tuple(w["sites"])] - (lat or 0.0)
            w["rtt"] = _t(2 * max(one_way, 1e-9))
        w["bandwidth"], w["links"] = _bw(orig.capacity_Bps * wan_share), 1
    data["name"] = topology.name + name_suffix
    return topology_from_dict(data, f"{topology.name} (calibrated)")


def write_topology(topology: Topology, path: str) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(topology_to_data(topology), fh, sort_keys=False)
    return path


def check_topology_for_emulation(topology: Topology) -> None:
    if len(topology.sites) < 2:
        raise UserError(f"topology {topology.name}: has one site; emulation needs at least two")
    if topology.num_gpus > 32:
        raise UserError(f"topology {topology.name}: {topology.num_gpus} ranks; this machine can run "
                        f"at most 32 emulated ranks (use tiny-2site / tiny-3site or a small file)")


def with_ranks_per_site(topology: Topology, ranks: int) -> Topology:
    """Every site as one node of `ranks` ranks (emulation runs one process per rank)."""
    data = topology_to_data(topology)
    for s in data["sites"]:
        s.update(nodes=1, gpus_per_node=ranks, pods=1)
    return topology_from_dict(data, f"{topology.name} (--ranks-per-site {ranks})")


def case_strategy(case: dict):
    """A measured case's strategy: its name with the case's knobs (chunks applies to chunked only)."""
    from hdc.strategies import strategy_from_dict

    return strategy_from_dict({"name": case["strategy"], **{k: case[k] for k in ("chunks", "inner") if k in case}},
                              "strategy", lenient=True)


def parse_list(text: str | None, parse, flag: str) -> list:
    """A comma-separated flag value, each item parsed with `parse` (units); errors name the flag."""
    if text is None:
        return [None]
    out = []
    for item in text.split(","):
        item = item.strip()
        if item == "unlimited" and parse is parse_bandwidth:
            out.append("unlimited")
            continue
        try:
            out.append(parse(item))
        except UnitError as e:
            raise UserError(f"{flag}: {e}") from None
    if not out:
        raise UserError(f"{flag}: empty list")
    return out


def effective_topology(path: str, one_way_s=None, bandwidth=None, ranks_per_site=None):
    """The topology as emulated: the file/preset with the command line's overrides."""
    from hdc.topology import load_topology

    topo = load_topology(path)
    if ranks_per_site is not None:
        if ranks_per_site < 1:
            raise UserError(f"--ranks-per-site: must be >= 1, got {ranks_per_site}")
        topo = with_ranks_per_site(topo, ranks_per_site)
    bw = None if bandwidth in (None, "unlimited") else bandwidth
    if one_way_s is not None or bw is not None:
        topo = with_wan(topo, one_way_s=one_way_s, bandwidth_Bps=bw)
    check_topology_for_emulation(topo)
    return topo
