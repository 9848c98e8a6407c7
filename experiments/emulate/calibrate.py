"""The calibration probe: what the topology cannot know, measured before validating.

A topology gives the WAN's configured one-way delay and bandwidth. What a real collective
sees on top of that is this machine's: the cost of one collective call (issuing it, waking
the ranks, noticing it finished), how fast two ranks of one site exchange data over loopback
while every site does (copies and reductions on 2 shared cores), and how much of the shaped
WAN rate a transfer really gets.

The probe times 2-rank all-reduces through the real executor, each the median of 7 after a
warm-up:
  local    - every site's first two ranks at once, 4 KiB, 1 MiB and 16 MiB
  wan      - rank 0 of site 0 with rank 0 of site 1, alone: 4 KiB and two sizes scaled to
             the WAN rate
  wan_all  - every rank-j pair between sites 0 and 1 at once; while its largest size runs, the
             delay line's CPU time gives its cost per byte, hence its capacity (one core)
  codec    - every site's first two ranks at once, an int8 reduce-scatter + all-gather of 16 MiB
             (hdc.wire): what encoding, decoding and the fp32 sums cost on these cores

`fit` turns the medians into the model's constants (`Calibration`) by running the probe's own
plans through the model that predicts the validated plans — the simulator's `pipelined` mode
with gloo's ring (`simulator.collectives.LibraryPipelining`) on the topology of `model_for`. gloo's
segments, window and rendezvous need no constant: they are the algorithm (gloo/allreduce.cc).
The same constants serve every strategy and size of the config; nothing is fitted to the
collectives being validated.
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, replace

from hdc.plan import Plan
from hdc.topology import Topology
from experiments.emulate.spec import with_tiers
from simulator.collectives import LibraryPipelining

LOCAL_SIZES_BYTES = (4 << 10, 1 << 20, 16 << 20)
CODEC_SIZES_BYTES = (1 << 20, 16 << 20)
PROBE_OPS = ("all_reduce",)
CODEC_OPS = ("reduce_scatter:int8", "all_gather:int8")  # op:wire
PROBE_WAN_SECONDS = 0.12  # the largest WAN probe moves ~this long at the configured rate...
WAN_MAX_BYTES = (4 << 20, 32 << 20)  # ...within these bounds: large enough to meet the TCP window


def wan_sizes_bytes(topology: Topology) -> tuple[int, int, int]:
    """4 KiB (latency), and a medium and a large all-reduce scaled to the WAN's bandwidth, so
    the large one runs long enough for gloo's window over the long RTT to limit it."""
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


def probe_plan(name: str, pairs, size_bytes: int, ops=PROBE_OPS) -> Plan:
    """One probe case: `ops` ('op' or 'op:wire') in sequence over `pairs` at once, labelled so
    they get their own groups."""
    numel = size_bytes // 4
    plan = Plan(numel=numel, element_size=4, strategy=f"probe-{name}",
                ranks=tuple(sorted(r for p in pairs for r in p)))
    prev: list[int] = []
    for spec in ops:
        op, _, wire = spec.partition(":")
        step = plan.add(op, pairs, [(0, numel)] * len(pairs), deps=tuple(prev), label=f"probe-{name}",
                        wire=wire or None)
        prev = [step.id]
    return plan


def probe_specs(topology: Topology) -> dict[str, tuple[list, tuple[int, ...], tuple[str, ...]]]:
    """name -> (pairs, sizes, ops) of every probe this topology gets."""
    local, wan, wan_all = probe_pairs(topology)
    wsizes = wan_sizes_bytes(topology)
    out = {"local": (local, LOCAL_SIZES_BYTES, PROBE_OPS), "wan": ([wan], wsizes, PROBE_OPS),
           "wan_all": (wan_all if len(wan_all) > 1 else [], wsizes, PROBE_OPS),
           "codec": (local, CODEC_SIZES_BYTES, CODEC_OPS)}
    return {k: v for k, v in out.items() if v[0]}


def probe_plans(topology: Topology) -> dict[str, list[Plan]]:
    """The probe's plans, in the order the ranks run them."""
    return {name: [probe_plan(name, pairs, size, ops) for size in sizes]
            for name, (pairs, sizes, ops) in probe_specs(topology).items()}


def fit_alpha_beta(sizes_bytes, times_s) -> tuple[float, float]:
    """(α s, B Bps) of t = 2α + n/B, a 2-rank all-reduce of n bytes (two rounds of n/2). B is
    the marginal rate between the two largest sizes; α is what the smallest size leaves after
    n/B. The local B is the model's local rate; the rest is descriptive (CSV, log)."""
    (n0, t0), (n1, t1), (n2, t2) = sorted(zip(sizes_bytes, times_s))[:1] + sorted(zip(sizes_bytes, times_s))[-2:]
    bw = (n2 - n1) / (t2 - t1) if t2 > t1 else float("inf")
    alpha = (t0 - n0 / bw) / 2
    return max(float(alpha), 0.0), float(bw)


def run_probe(topology: Topology, plans: dict[str, list[Plan]], measure, repeats: int = 5,
              forwarder_cpu_s=None) -> dict:
    """Rank side: `measure(plan) -> seconds` (every rank calls it for every plan, same order).
    Returns per probe the sizes, ops, medians and the descriptive 2α + n/B fit (same on every rank).
    `forwarder_cpu_s() -> seconds`: the delay line's CPU time so far; with it each size also
    records the CPU the delay line spent on its timed repeats (`forwarder_cpu_s`)."""
    out = {}
    for name, plist in plans.items():
        if not plist:
            continue
        sizes, med, cpu = [], [], []
        for plan in plist:
            measure(plan)  # warm-up: connections, TCP window, allocator
            c0 = forwarder_cpu_s() if forwarder_cpu_s else 0.0
            ts = [measure(plan) for _ in range(repeats)]
            cpu.append(forwarder_cpu_s() - c0 if forwarder_cpu_s else None)
            sizes.append(plan.numel * plan.element_size)
            med.append(statistics.median(ts))
        alpha, bw = fit_alpha_beta(sizes, med)
        pairs = len(plist[0].steps[0].groups)
        out[name] = {"sizes_bytes": sizes, "median_s": med,
                     "ops": [f"{s.op}:{s.wire}" if s.wire else s.op for s in plist[0].steps],
                     "alpha_s": alpha, "bandwidth_Bps": bw, "pairs": pairs, "aggregate_Bps": bw * pairs,
                     "repeats": repeats}
        if forwarder_cpu_s:
            out[name]["forwarder_cpu_s"] = cpu
    return out


def delayline_cpu_clock(state_dir: str | None):
    """() -> CPU seconds the emulation's delay line has used (from /proc: it is another
    process), or None where there is none (netem or direct mode, no state folder)."""
    try:
        with open(os.path.join(state_dir or "", "delayline.pid")) as fh:
            pid = int(fh.read().split()[0])
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None

    def cpu_s() -> float:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    try:
        cpu_s()
    except (OSError, ValueError, IndexError):
        return None
    return cpu_s


def forwarder_Bps(calib: dict) -> float:
    """The delay line's capacity: one core over its CPU cost per byte, measured while the
    `wan_all` probe's largest size ran (every rank pair between two sites at once, the WAN
    saturated: the shaped regime, the delay line's costliest per byte). A 2-rank all-reduce of
    n bytes sends n each way: pairs × 2n per run. 0 where not measured (no delay line, older
    raw files)."""
    w = calib.get("wan_all") or calib.get("wan", {})  # one rank per site: the one pair
    cpu = (w.get("forwarder_cpu_s") or [None])[-1]
    if not cpu:
        return 0.0
    moved = w["pairs"] * 2 * w["sizes_bytes"][-1] * w["repeats"]
    return moved / cpu


@dataclass(frozen=True)
class Calibration:
    """The model's constants for one emulated config, derived from the probe's medians by
    running the probe's own plans through the same model (`model_for`) that predicts the
    validated plans: nothing is fitted to those."""
    call_overhead_s: float  # fixed cost of one collective call: issuing it, waking the ranks, noticing it finished
    local_latency_s: float  # one-way latency between two ranks of a site, beyond the call overhead
    local_Bps: float  # rate between two ranks of a site, every site's pair at once (loopback + CPU)
    wan_efficiency: float  # fraction of the configured WAN rate the largest WAN probe reaches (<= 1)
    forwarder_Bps: float = 0.0  # the delay line's capacity for all WAN bytes together (0: unlimited)
    codec_Bps: float = 0.0  # fp32 bytes per second a rank encodes/decodes on a lossy wire (0: free)


def model_for(topology: Topology, c: Calibration) -> tuple[Topology, LibraryPipelining]:
    """(the topology the simulator predicts on, the pipeline of its `pipelined` mode).
    Every WAN path keeps its configured one-way delay (the delay line holds each packet that
    long; its own lateness is 40-100 us) and its configured rate × wan_efficiency; ranks of a
    site talk at (local_latency_s, local_Bps); each collective call costs call_overhead_s;
    gloo's ring (segments, window, rendezvous) is `LibraryPipelining`'s defaults. The WAN links carry
    the shaper's token bucket exactly as `netns` configures tbf/htb (2 ms of the rate, at least
    4 packets); a burst passes at the rate of an unshaped path, for which the local rate
    stands in (a loopback TCP path through this machine's kernel, like the TUN path unshaped)."""
    from experiments.emulate.netns import BURST_MIN_MTUS, BURST_S
    from experiments.emulate.spec import EmulationSpec, wan_pair

    cross = {}
    for w in topology.wan:
        a, b = (topology.site_index(n) for n in w.sites)
        cross[tuple(w.sites)] = wan_pair(topology, a, b)[0]
    topo = with_tiers(topology, node=(c.local_latency_s, c.local_Bps), cross_site_s=cross,
                      wan_share=c.wan_efficiency, name_suffix="+calibrated")
    return topo, LibraryPipelining(call_overhead_s=c.call_overhead_s, shaper_burst_s=BURST_S,
                          shaper_min_burst_bytes=BURST_MIN_MTUS * EmulationSpec.mtu_bytes,
                          shaper_peak_Bps=c.local_Bps, forwarder_Bps=c.forwarder_Bps, codec_Bps=c.codec_Bps)


def _simulate(topology: Topology, c: Calibration, plan: Plan) -> float:
    from simulator.collectives import simulate_plan
    from simulator.network import Routes

    topo, pipe = model_for(topology, c)
    times = simulate_plan(Routes(topo), plan, "pipelined", pipeline=pipe)
    return max((end for _, end in times.values()), default=0.0)


def fit(topology: Topology, calib: dict) -> Calibration:
    """The model's constants from the probe's medians (`run_probe`'s result):
    1. call_overhead_s: the smallest WAN probe's time minus the model's time for it (the
       configured delay, twice per message: gloo's rendezvous);
    2. local_latency_s: what the smallest local probe leaves after the call overhead, over the
       model's sensitivity to that latency;
    3. local_Bps: the rate at which the model's time for the largest local probe is the
       measured one (starting from the slope of the two largest sizes: loopback is never
       latency-bound, but the model's 2-rank ring is not a plain n / B);
    4. wan_efficiency: the configured WAN rate is scaled down (never up) until the model's time
       for the largest WAN probe reaches the measured one;
    5. codec_Bps (when the probe has it): for each int8 probe size the encode/decode rate at
       which the model's time is the measured one, and their geometric mean. The codec is
       faster per byte on small buffers (they stay in cache: ~1.6 GB/s at 1 MiB, ~1.0 GB/s at
       16 MiB here), and the validated steps' shards lie between the two sizes; the 16 MiB rate
       alone made the 1-4 MiB cases 5-11% too slow.
    They depend on each other a little (a slower WAN lengthens the 4 KiB probe too): three passes."""
    specs = probe_specs(topology)

    def plans(name: str) -> dict[int, Plan]:  # as the probe ran them (older raw files: all-reduce)
        ops = tuple(calib[name].get("ops", PROBE_OPS))
        return {n: probe_plan(name, specs[name][0], n, ops) for n in calib[name]["sizes_bytes"]}

    def measured(name: str) -> dict[int, float]:
        return dict(zip(calib[name]["sizes_bytes"], calib[name]["median_s"]))

    if "local" in calib:
        local_Bps = fit_alpha_beta(calib["local"]["sizes_bytes"], calib["local"]["median_s"])[1]
    else:  # one rank per site: no intra-site steps, keep the file's numbers
        local_Bps = topology.sites[0].intra_node.bandwidth_Bps
    c = Calibration(0.0, 0.0, local_Bps, 1.0, forwarder_Bps(calib))
    wan_t, wan_plans = measured("wan"), plans("wan")
    small, big = min(wan_t), max(wan_t)
    for _ in range(3):
        bare = _simulate(topology, replace(c, call_overhead_s=0.0), wan_plans[small])
        c = replace(c, call_overhead_s=max(wan_t[small] - bare, 0.0))
        if "local" in calib:
            loc_t = measured("local")
            loc_plan = plans("local")[min(loc_t)]
            t0 = _simulate(topology, replace(c, local_latency_s=0.0), loc_plan)
            per_s = (_simulate(topology, replace(c, local_latency_s=1e-3), loc_plan) - t0) / 1e-3
            c = replace(c, local_latency_s=max((loc_t[min(loc_t)] - t0) / per_s, 0.0))
            big_plan = plans("local")[max(loc_t)]
            c = replace(c, local_Bps=_solve(lambda x: _simulate(topology, replace(c, local_Bps=x), big_plan),
                                            loc_t[max(loc_t)], local_Bps / 4, local_Bps * 4, geometric=True))
        c = replace(c, wan_efficiency=_solve(lambda x: _simulate(topology, replace(c, wan_efficiency=x), wan_plans[big]),
                                             wan_t[big], 0.25, 1.0))
    if "codec" in calib:  # 5. codec_Bps: one rate for the codec probe's sizes (see the docstring)
        codec_t, codec_plans = measured("codec"), plans("codec")
        rates = [_solve(lambda x, n=n: _simulate(topology, replace(c, codec_Bps=x), codec_plans[n]), codec_t[n],
                        1e7, 1e11, geometric=True) for n in sorted(codec_t)]
        c = replace(c, codec_Bps=math.prod(rates) ** (1 / len(rates)))
    return c


def _solve(model, measured: float, lo: float, hi: float, geometric: bool = False) -> float:
    """The x in [lo, hi] at which `model(x)` (a time falling as x rises) is `measured`, by
    bisection; hi where even hi is slower than measured. Never beyond the range."""
    if model(hi) >= measured:
        return hi
    for _ in range(30):
        mid = math.sqrt(lo * hi) if geometric else (lo + hi) / 2
        if model(mid) > measured:
            lo = mid
        else:
            hi = mid
    return hi


def wan_share(topology: Topology, calib: dict) -> float:
    """Fraction of the configured WAN capacity that every rank pair between two sites reaches
    together (wan_all probe; 1 when there is one rank per site). Descriptive: the model does
    not use it (gloo's window limits each connection, see LibraryPipelining)."""
    from experiments.emulate.spec import wan_pair

    if "wan_all" not in calib:
        return 1.0
    _, bw_Bps = wan_pair(topology, 0, 1)
    return min(calib["wan_all"]["aggregate_Bps"] / bw_Bps, 1.0)


def wan_excess(topology: Topology, wan: dict) -> tuple[float, float]:
    """(latency beyond the configured one-way delay, the rate one connection reaches — at most
    the configured bandwidth) of the probed WAN path, by the 2-round fit. Descriptive."""
    from experiments.emulate.spec import wan_pair

    one_way_s, bw_Bps = wan_pair(topology, 0, 1)
    return max(wan["alpha_s"] - one_way_s, 0.0), min(wan["bandwidth_Bps"], bw_Bps)
