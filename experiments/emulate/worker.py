"""One rank of `hdc validate`: calibrate, then time every (strategy, size) case of a job.

    python -m experiments.emulate.worker --job JOB.json

started by `validate` in each site's namespace (env from launch.rank_env). The job names the
topology file, the cases, warm-up and repeats; rank 0 writes the result JSON. Each strategy's
connections are warmed once first (`warm_cases`), then the calibration probe runs. Repeats are
interleaved across strategies (size by size) so slow drift in the machine's load hits every
strategy alike; the first `warmup` rounds are not recorded. Every case's first run is checked
for the right sum.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

from hdc.topology import load_topology
from experiments.emulate import calibrate
from experiments.emulate.executor import executor_for
from experiments.emulate.runner import check_sum, init_from_env, timed
from experiments.emulate.spec import case_strategy


WARM_BYTES = 16 << 20


def warm_cases(cases: list[dict]) -> list[int]:
    """One case per strategy to run once, unrecorded, before anything is timed: its largest
    size up to WARM_BYTES (else its smallest). TCP opens a connection's window (and BBR learns
    the path's rate) only while the connection is busy; without this the first size timed on
    each strategy's connections paid for it while hierarchical's WAN pairs were already warm
    from the probe (flat ring 1 MiB at 1 Gbit/s and 20 ms: 304 ms cold, 245 modelled). So
    validate measures connections as a job that moves megabytes every step keeps them; a job
    whose syncs are short bursts may not (docs/emulation.md, the GRPO section)."""
    def preference(n: int) -> tuple[bool, int]:  # sizes up to WARM_BYTES first, largest first
        return (n > WARM_BYTES, n if n > WARM_BYTES else -n)

    best: dict[tuple, int] = {}
    for i, c in enumerate(cases):
        key = (c["strategy"], c.get("chunks", 4), c.get("inner", "hierarchical"))
        if key not in best or preference(c["size_bytes"]) < preference(cases[best[key]]["size_bytes"]):
            best[key] = i
    return list(best.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.emulate.worker")
    ap.add_argument("--job", required=True)
    args = ap.parse_args(argv)
    with open(args.job) as fh:
        job = json.load(fh)
    torch.set_num_threads(1)
    rank, world = init_from_env(timeout_s=job.get("timeout_s", 300))
    topo = load_topology(job["topology_file"])
    max_delay_s = max(w.one_way_s for w in topo.wan) * max(len(topo.sites) - 1, 1)
    margin_s = 2 * max_delay_s + 0.02

    cases = job["cases"]
    plans = [case_strategy(c).plan(topo, None, c["size_bytes"] // 4, 4) for c in cases]
    probes = calibrate.probe_plans(topo) if job.get("calibrate", True) else {}
    execu = executor_for(topo, plans + [p for ps in probes.values() for p in ps], rank, world)
    t0 = time.monotonic()

    def measure(plan) -> float:
        buf = torch.empty(plan.numel, dtype=torch.float32)
        buf.fill_(rank + 1)
        return timed(lambda: execu.run(plan, buf), margin_s)

    if job.get("warm_connections", True):
        for i in warm_cases(cases):
            measure(plans[i])
    clock = calibrate.delayline_cpu_clock(os.environ.get("HDC_EMULATE_STATE"))
    calib = calibrate.run_probe(topo, probes, measure, repeats=job.get("probe_repeats", 7),
                                forwarder_cpu_s=clock) if probes else {}
    results = []
    by_size: dict[int, list[int]] = {}
    for i, c in enumerate(cases):
        by_size.setdefault(c["size_bytes"], []).append(i)
    times: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    spans: dict[int, list] = {}
    for size, idx in by_size.items():
        bufs = {i: torch.empty(plans[i].numel, dtype=torch.float32) for i in idx}
        for rep in range(job["warmup"] + job["repeats"]):
            for i in idx:
                bufs[i].fill_(rank + 1)
                t = timed(lambda: execu.run(plans[i], bufs[i]), margin_s)
                if rep == 0:
                    check_sum(bufs[i], list(range(world)))
                if rep >= job["warmup"]:
                    times[i].append(t)
                    spans[i] = [{k: sp[k] for k in ("label", "op", "chunk", "start_s", "end_s")}
                                for sp in (execu.last_spans or [])]
    for i, c in enumerate(cases):
        results.append({**c, "plan": plans[i].strategy, "times_s": times[i], "rank0_spans": spans.get(i)})
    if rank == 0:
        out = {"calibration": calib, "results": results, "world_size": world, "executor": execu.name,
               "wall_s": time.monotonic() - t0}
        with open(job["out"] + ".tmp", "w") as fh:
            json.dump(out, fh, indent=1)
        os.replace(job["out"] + ".tmp", job["out"])
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
