"""The calibration probe: what the topology cannot know, measured before validating.

A topology gives the WAN's configured one-way delay and bandwidth. What a real collective
sees on top of that is this machine's: gloo's per-message cost, the delay line's own latency,
TCP's effective throughput over a long-RTT path (window, pacing, the delay line's CPU), and
loopback speed between ranks of one site while the other sites run too.

The probe times 2-rank all-reduces (2 rounds of n/2 bytes each way) at a few sizes:
  local  - two ranks of each site, every site at once (what a site's reduce-scatter sees)
  wan    - rank 0 of site 0 with rank 0 of site 1, alone on the WAN
and fits, per path, t(n) = 2·(α + (n/2)/B): B from the two largest sizes, α from the smallest.
The model's topology then gets intra-node = (α_local, B_local), cross-site one-way latency
α_wan, and B_wan as the rate of ONE connection (the per-GPU link out of the site: gloo keeps a
bounded amount in flight per connection, so over a long RTT one connection stays below the
link while two can fill it); the WAN link keeps its configured capacity. The same constants
serve every strategy and size of the config: nothing is fitted to the collectives validated.
"""
from __future__ import annotations

import math
import statistics


from hdc.plan import Plan
from hdc.topology import Topology
from experiments.emulate.spec import with_tiers

LOCAL_SIZES_BYTES = (4 << 10, 1 << 20, 16 << 20)
PROBE_WAN_SECONDS = 0.12  # the largest WAN probe moves ~this long at the configured rate...
WAN_MAX_BYTES = (4 << 20, 32 << 20)  # ...within these bounds: large enough to meet the TCP window


def wan_sizes_bytes(topology: Topology) -> tuple[int, int, int]:
    """4 KiB (latency), and a medium and a large all-reduce scaled to the WAN's bandwidth, so
    the large one runs long enough for TCP's window over the long RTT to limit it."""
    from experiments.emulate.spec import wan_pair

    _, bw_Bps = wan_pair(topology, 0, 1)
    big = int(min(max(bw_Bps * PROBE_WAN_SECONDS, WAN_MAX_BYTES[0]), WAN_MAX_BYTES[1]))
    big = 1 << round(math.log2(big))  # the nearest power of two
    return (4 << 10, big // 8, big)


def probe_pairs(topology: Topology) -> tuple[list[tuple[int, int]], tuple[int, int], list[tuple[int, int]]]:
    """(local pairs, the WAN pair, every rank-j pair between sites 0 and 1)."""
    local = [tuple(topology.site_gpus(i)[:2]) for i, s in enumerate(topology.sites) if s.gpus >= 2]
    a, b = topology.site_gpus(0), topology.site_gpus(1)
    return local, (a[0], b[0]), list(zip(a, b))


def probe_plans(topology: Topology) -> dict[str, list[Plan]]:
    """The probe's plans: one all-reduce step per size, labelled so they get their own groups."""
    local, wan, wan_all = probe_pairs(topology)
    out: dict[str, list[Plan]] = {"local": [], "wan": [], "wan_all": []}
    wsizes = wan_sizes_bytes(topology)
    for name, pairs, sizes in (("local", local, LOCAL_SIZES_BYTES), ("wan", [wan], wsizes),
                               ("wan_all", wan_all if len(wan_all) > 1 else [], wsizes)):
        if not pairs:
            continue
        for size in sizes:
            numel = size // 4
            plan = Plan(numel=numel, element_size=4, strategy=f"probe-{name}",
                        ranks=tuple(sorted(r for p in pairs for r in p)))
            plan.add("all_reduce", pairs, [(0, numel)] * len(pairs), label=f"probe-{name}")
            out[name].append(plan)
    return out


def fit_alpha_beta(sizes_bytes, times_s) -> tuple[float, float]:
    """(α s, B Bps) of t = 2·(α + (n/2)/B) = 2α + n/B, a 2-rank ring all-reduce of n bytes.
    B is the marginal rate between the two largest sizes (what long messages see: TCP and
    gloo's pipelining over the RTT); α is what the smallest size leaves after n/B."""
    (n0, t0), (n1, t1), (n2, t2) = sorted(zip(sizes_bytes, times_s))[:1] + sorted(zip(sizes_bytes, times_s))[-2:]
    bw = (n2 - n1) / (t2 - t1) if t2 > t1 else float("inf")
    alpha = (t0 - n0 / bw) / 2
    return max(float(alpha), 0.0), float(bw)


def run_probe(topology: Topology, plans: dict[str, list[Plan]], measure, repeats: int = 5) -> dict:
    """Rank side: `measure(plan) -> seconds` (every rank calls it for every plan, same order).
    Returns the medians and the fitted constants (same on every rank)."""
    out = {}
    for name, plist in plans.items():
        if not plist:
            continue
        sizes, med = [], []
        for plan in plist:
            measure(plan)  # warm-up: connections, TCP window, allocator
            ts = [measure(plan) for _ in range(repeats)]
            sizes.append(plan.numel * plan.element_size)
            med.append(statistics.median(ts))
        alpha, bw = fit_alpha_beta(sizes, med)
        pairs = len(plist[0].steps[0].groups)
        out[name] = {"sizes_bytes": sizes, "median_s": med, "alpha_s": alpha, "bandwidth_Bps": bw,
                     "pairs": pairs, "aggregate_Bps": bw * pairs}
    return out


def calibrated_topology(topology: Topology, calib: dict) -> Topology:
    """The topology with the probe's constants: what the model predicts from."""
    if "local" in calib:
        node = (calib["local"]["alpha_s"], calib["local"]["bandwidth_Bps"])
    else:  # one rank per site: no intra-site steps, keep the file's numbers
        s = topology.sites[0]
        node = (s.intra_node.latency_s, s.intra_node.bandwidth_Bps)
    extra_s, flow_Bps = wan_excess(topology, calib["wan"])
    share = wan_share(topology, calib)
    # every WAN link: its configured one-way delay + what the probe found beyond it on the
    # probed path (gloo's rendezvous, the delay line); one connection reaches flow_Bps (the
    # per-GPU link); all of a site's connections at once reach `share` of the link's capacity.
    cross = {tuple(w.sites): w.one_way_s + extra_s for w in topology.wan}
    return with_tiers(topology, node=node, nic_Bps=flow_Bps, cross_site_s=cross, wan_share=share,
                      name_suffix="+calibrated")


def wan_share(topology: Topology, calib: dict) -> float:
    """Fraction of the configured WAN capacity that every rank pair between two sites reaches
    together (wan_all probe; 1 when there is one rank per site)."""
    from experiments.emulate.spec import wan_pair

    if "wan_all" not in calib:
        return 1.0
    _, bw_Bps = wan_pair(topology, 0, 1)
    return min(calib["wan_all"]["aggregate_Bps"] / bw_Bps, 1.0)


def wan_excess(topology: Topology, wan: dict) -> tuple[float, float]:
    """(latency beyond the configured one-way delay, the rate one connection reaches — at most
    the configured bandwidth) of the probed WAN path."""
    from experiments.emulate.spec import wan_pair

    one_way_s, bw_Bps = wan_pair(topology, 0, 1)
    return max(wan["alpha_s"] - one_way_s, 0.0), min(wan["bandwidth_Bps"], bw_Bps)
