"""How fast the simulator is: one Nemotron-4 340B step on nemotron-2dc (goal <= 1 s on one
core, must be <= 10 s), flows (network events) per second, and a 100-config sweep.

    .venv/bin/python benchmarks/sim_speed.py [--compare main] [--reps 3]

`--compare REF` also times the one-step runs of version REF (git archive, benchmarks/baseline.py)
in alternating child processes and prints the ratio of medians (this / REF).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

from hdc.config import load_yaml
from hdc.strategies import make_strategy
from hdc.topology import PRESET_DIR, load_topology, topology_from_dict
from hdc.workload import load_workload
from simulator import SimConstants, simulate


def timed(fn):
    t0 = time.perf_counter()  # benchmark wall time, never used inside the simulation
    out = fn()
    return out, time.perf_counter() - t0


def strategies():
    return [("chunked(hierarchical, 8, overlap_backward)", make_strategy("chunked", chunks=8, overlap_backward=True)),
            ("hierarchical (40M buckets)", make_strategy("hierarchical")),
            ("distributed_optimizer (40M buckets)", make_strategy("distributed_optimizer")),
            ("flat_ring (40M buckets)", make_strategy("flat_ring"))]


def child() -> None:
    """One warm-up and one timed step per strategy; the last line is {name: seconds} (for baseline.py)."""
    work, two = load_workload("nemotron-4-340b"), load_topology("nemotron-2dc")
    c = SimConstants(compute_efficiency=0.61)
    out = {}
    for name, strat in strategies():
        simulate(two, work, strat, c, baseline=False)
        out[name] = timed(lambda: simulate(two, work, strat, c, baseline=False))[1]
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", metavar="REF", default=None, help="also time git REF (e.g. main) alternately")
    ap.add_argument("--reps", type=int, default=3, help="alternating runs per version with --compare")
    a = ap.parse_args()
    if a.child:
        return child()
    work = load_workload("nemotron-4-340b")
    two = load_topology("nemotron-2dc")
    c = SimConstants(compute_efficiency=0.61)
    print(f"{'strategy':<44} {'wall s':>7} {'flows':>7} {'flows/s':>9} {'step s':>7}")
    rows = strategies()
    first = None
    for name, strat in rows:
        simulate(two, work, strat, c, baseline=False)  # warm: routes and plan are cached per topology
        r, dt = timed(lambda: simulate(two, work, strat, c, baseline=False))
        first = first or dt
        print(f"{name:<44} {dt:>7.3f} {r.events['flows']:>7} {r.events['flows'] / dt:>9.0f} {r.step_time_s:>7.3f}")
    data = load_yaml(f"{PRESET_DIR}/nemotron-2dc.yaml")
    configs = []
    for links in (4, 8, 16, 20, 32):
        for rtt in ("2ms", "10ms", "21ms", "50ms", "105ms"):
            for chunks in (4, 8, 16, 32):
                d = copy.deepcopy(data)
                d["wan"][0].update(links=links, rtt=rtt)
                configs.append((topology_from_dict(d), chunks))
    strat = {n: make_strategy("chunked", chunks=n, overlap_backward=True) for n in (4, 8, 16, 32)}
    _, sweep = timed(lambda: [simulate(t, work, strat[n], c) for t, n in configs])
    print(f"sweep of {len(configs)} configs (WAN links × RTT × chunks, with single-site baselines): "
          f"{sweep:.1f} s, {sweep / len(configs):.3f} s per config")
    print(f"ratio to the 1 s goal for one step: {first:.2f}×")
    if a.compare:
        from baseline import compare, ratio_lines

        ours, theirs = compare(os.path.abspath(__file__), [], a.compare, a.reps)
        print(f"one step, this tree vs {a.compare}:")
        print("\n".join(ratio_lines(ours, theirs, a.compare)))


if __name__ == "__main__":
    main()
