"""How far an int8 / bf16 sum is from the exact sum, on random gradients.

Runs compressed(hierarchical, WIRE) plans in the numpy reference executor — the same
arithmetic as torch.distributed's, bit for bit (tests/test_dist_executor.py) — on 2 sites x K
ranks with Gaussian and heavy-tailed (Student-t, 3 dof) gradients, and prints, against the
exact float64 sum: the max error relative to the largest |sum| (what absmax scaling bounds),
the relative L2 error, and the median per-element relative error.

    .venv/bin/python benchmarks/wire_error.py [--numel 1000000] [--seeds 3]
"""
from __future__ import annotations

import argparse

import numpy as np

from hdc.reference import run_plan
from hdc.strategies import strategy_from_dict
from hdc.topology import topology_from_dict

TIER = {"latency": "5us", "bandwidth": "100Gbps"}


def topology(per_site: int):
    return topology_from_dict({"name": f"2x{per_site}", "sites": [
        {"name": n, "nodes": 1, "gpus_per_node": per_site, "intra_node": TIER, "intra_pod": TIER} for n in "ab"],
        "wan": [{"sites": ["a", "b"], "rtt": "20ms", "bandwidth": "10Gbps"}]})


def errors(wire: str, per_site: int, numel: int, dist: str, seed: int) -> dict:
    topo = topology(per_site)
    plan = strategy_from_dict({"name": "compressed", "wire": wire}).plan(topo, None, numel)
    rng = np.random.default_rng(seed)
    world = 2 * per_site
    draw = (lambda: rng.standard_normal(numel)) if dist == "gaussian" else (lambda: rng.standard_t(3, numel))
    start = {r: draw().astype(np.float32) for r in range(world)}
    bufs = {r: v.copy() for r, v in start.items()}
    run_plan(plan, bufs)
    exact = np.sum([v.astype(np.float64) for v in start.values()], axis=0)
    err = np.abs(bufs[0] - exact)
    return {"max_over_absmax": float(err.max() / np.abs(exact).max()),
            "rel_l2": float(np.linalg.norm(err) / np.linalg.norm(exact)),
            "median_rel": float(np.median(err / np.maximum(np.abs(exact), 1e-30)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(f"{'wire':<5} {'ranks':>5} {'gradients':<10} {'max err / max|sum|':>19} {'rel L2':>9} {'median rel':>11}")
    for wire in ("int8", "bf16"):
        for per_site in (1, 2, 4):
            for dist in ("gaussian", "student-t3"):
                rows = [errors(wire, per_site, args.numel, dist, s) for s in range(args.seeds)]
                worst = {k: max(r[k] for r in rows) for k in rows[0]}
                print(f"{wire:<5} {2 * per_site:>5} {dist:<10} {worst['max_over_absmax']:>19.2e} "
                      f"{worst['rel_l2']:>9.2e} {worst['median_rel']:>11.2e}")


if __name__ == "__main__":
    main()
