"""The executor's local reduce-scatter and all-gather, before and after scratch reuse and the
gloo all-gather as an all-to-all, measured in the same run on 4 local gloo processes.

    python benchmarks/executor_buffers.py                      # 16 and 64 MiB, median of 5
    python benchmarks/executor_buffers.py --sizes 4MiB --repeats 3 --before <git rev>

"before" is trainer/distributed/executor.py as it was at `--before` (read with `git show`, so this
needs the repository), "after" the working tree's. Both run the same one-step plans, one
call after the other in each repetition so that load on the machine hits both alike:
  sites 2x2  the step over (0,1) and (2,3) at once, as hierarchical's rs-site / ag-site
  group of 4 one step over all 4 ranks
Time per call: from a barrier to the slowest rank's end, median over the repetitions after
2 warm-ups (which also fill the new executor's scratch pool).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types

BEFORE = "9f15efb"  # the last executor with fresh scratch per call and gloo's own all_gather
LAYOUTS = {"sites 2x2": [(0, 1), (2, 3)], "group of 4": [(0, 1, 2, 3)]}
OPS = ("reduce_scatter", "all_gather")


def _load(source: str, name: str):
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def _bench(rank: int, world: int, before_source: str, sizes: list[int], repeats: int) -> list[dict]:
    import torch
    import torch.distributed as dist

    from hdc.plan import Plan
    from trainer.distributed import executor as after
    from trainer.selfcheck.executor import topology_for_world
    from trainer.distributed.groups import ProcessGroups

    before = _load(before_source, "executor_before")
    groups = ProcessGroups(topology_for_world(world), timeout_s=300)
    rows = []
    for n in sizes:
        buf = torch.ones(n)
        for layout, gs in LAYOUTS.items():
            for op in OPS:
                plan = Plan(numel=n, element_size=4, strategy=op, ranks=tuple(range(world)))
                plan.add(op, gs, [(0, n)] * len(gs), label=op)
                execs = {"before": before.PlanExecutor(plan, groups), "after": after.PlanExecutor(plan, groups)}
                times: dict = {k: [] for k in execs}
                for i in range(repeats + 2):
                    for k, ex in execs.items():
                        buf.fill_(1.0)
                        dist.barrier()
                        t0 = time.perf_counter()
                        ex.run(buf)
                        dt = torch.tensor([time.perf_counter() - t0])
                        dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # a step ends when its slowest rank does
                        if i >= 2:
                            times[k].append(float(dt))
                rows.append({"layout": layout, "op": op, "numel": n, "times": times,
                             "scratch_bytes": execs["after"].scratch_bytes})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["16MiB", "64MiB"], help="buffer sizes (fp32)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per case (median; after 2 warm-ups)")
    ap.add_argument("--before", default=BEFORE, help=f"git revision of the baseline executor (default {BEFORE})")
    args = ap.parse_args(argv)

    from hdc.units import fmt_bytes, parse_size
    from trainer.distributed.local import spawn_world

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "show", f"{args.before}:trainer/distributed/executor.py"], cwd=root,
                            check=True, capture_output=True, text=True).stdout
    sizes = [parse_size(s) // 4 for s in args.sizes]
    t0 = time.time()
    rows = spawn_world(_bench, 4, args=(source, sizes, args.repeats), timeout_s=900, collective_timeout_s=300)[0]
    load = os.getloadavg()[0]
    print(f"executor scratch buffers: 4 local gloo processes, median of {args.repeats} calls (min-max), "
          f"before = {args.before}, run took {time.time() - t0:.0f} s, load {load:.1f} on {os.cpu_count()} cores")
    head = (f"{'layout':<11} {'op':<15} {'size':>7} {'before ms':>21} {'after ms':>21} {'before/after':>12} "
            f"{'pool':>9}")
    print(head)
    print("-" * len(head))

    def cell(ts):
        return f"{statistics.median(ts) * 1e3:7.1f} ({min(ts) * 1e3:5.0f}-{max(ts) * 1e3:4.0f})"

    for r in rows:
        b, a = r["times"]["before"], r["times"]["after"]
        print(f"{r['layout']:<11} {r['op']:<15} {fmt_bytes(4 * r['numel']):>7} {cell(b):>21} {cell(a):>21} "
              f"{statistics.median(b) / statistics.median(a):>11.2f}x {fmt_bytes(r['scratch_bytes']):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
