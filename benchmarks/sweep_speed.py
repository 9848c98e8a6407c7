"""Wall time of a 1,000-config `hdc sweep` (goal: <= 60 s on 2 cores).

Grid: 10 distances × 5 WAN capacities × 4 strategies × 5 chunk counts = 1,000 configs of
Llama-3-70B (TP 8, PP 4, DP 96) on the two-site topology, simulated (not closed form), run
with `--jobs 2`. A 100-config slice of the Nemotron-4 340B step is timed beside it, and the
closed-form (alpha-beta) evaluator on the same 1,000 configs as a baseline.

    python benchmarks/sweep_speed.py [--jobs 2] [--skip-nemotron] [--compare main] [--reps 1]

`--compare REF` also runs the simulated 1,000-config sweep with version REF (git archive,
benchmarks/baseline.py), alternating child processes, and prints the ratio of medians.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from experiments.sweep import run_sweep


def grid(workload: str, n_dist: int, n_links: int, n_chunks: int, evaluate: str) -> dict:
    return {"base": {"topology": "nemotron-2dc", "workload": workload, "sim": {"compute_efficiency": 0.6}},
            "grid": {"topology.wan[0].distance": [f"{d}km" for d in (100, 300, 500, 750, 1000, 1500, 2000, 3000,
                                                                     4000, 5000)[:n_dist]],
                     "topology.wan[0].links": [5, 10, 20, 40, 80][:n_links],
                     "strategy.name": ["flat_ring", "hierarchical", "chunked", "distributed_optimizer"],
                     "strategy.chunks": [1, 2, 4, 8, 16][:n_chunks],
                     "strategy.overlap_backward": [True]},
            "evaluate": evaluate}


def timed(g: dict, jobs: int) -> tuple[int, float]:
    out = os.path.join(tempfile.mkdtemp(prefix="hdc-sweep-"), "r.csv")
    t0 = time.perf_counter()
    n = run_sweep(g, out, jobs=jobs, progress=False)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-nemotron", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", metavar="REF", default=None, help="also time git REF (e.g. main) alternately")
    ap.add_argument("--reps", type=int, default=1, help="alternating runs per version with --compare")
    a = ap.parse_args()
    if a.child:  # the simulated 1,000-config sweep only; last line {name: seconds} (for baseline.py)
        print(json.dumps({"simulate, llama-3-70b, 1,000 configs": timed(grid("llama-3-70b", 10, 5, 5, "simulate"),
                                                                         a.jobs)[1]}))
        return
    rows = []
    n, t = timed(grid("llama-3-70b", 10, 5, 5, "alpha_beta"), a.jobs)
    rows.append(("alpha-beta, llama-3-70b", n, t))
    n, t = timed(grid("llama-3-70b", 10, 5, 5, "simulate"), a.jobs)
    rows.append(("simulate, llama-3-70b", n, t))
    if not a.skip_nemotron:
        n, t = timed(grid("nemotron-4-340b", 5, 5, 1, "simulate"), a.jobs)
        rows.append(("simulate, nemotron-4-340b", n, t))
    print(f"{'sweep':<28} {'configs':>8} {'wall s':>8} {'configs/s':>10}")
    for name, n, t in rows:
        print(f"{name:<28} {n:>8} {t:>8.1f} {n / t:>10.1f}")
    base = rows[0][2] / rows[0][1]
    for name, n, t in rows[1:]:
        print(f"{name}: {t / n / base:.1f}x the closed form's time per config")
    if a.compare:
        from baseline import compare, ratio_lines

        ours, theirs = compare(os.path.abspath(__file__), ["--jobs", str(a.jobs)], a.compare, a.reps)
        print("\n".join(ratio_lines(ours, theirs, a.compare)))


if __name__ == "__main__":
    main()
