"""A plain gloo all-reduce timer for the reference points (run it under `hdc emulate run`).

    hdc emulate run --topology T -- python -m experiments.emulate.allreduce_bench --size 4MB

Every rank all-reduces one float32 tensor of --size bytes over the whole world, from a
common start instant (see runner.timed), --warmup times unrecorded then --repeats times;
rank 0 prints the median, min and max in ms (and --json writes them).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.distributed as dist

from hdc.units import parse_size
from experiments.emulate.runner import init_from_env, timed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.emulate.allreduce_bench")
    ap.add_argument("--size", default="4MB", help="bytes per rank, e.g. 4MB (default)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--margin-ms", type=float, default=60.0, help="start-instant lead (> 2 one-way delays)")
    ap.add_argument("--json", default=None, help="rank 0 writes the times here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rank, world = init_from_env()
    x = torch.ones(parse_size(args.size) // 4)
    times = []
    for i in range(args.warmup + args.repeats):
        t = timed(lambda: dist.all_reduce(x), args.margin_ms / 1e3)
        if i >= args.warmup:
            times.append(t)
    if rank == 0:
        med = statistics.median(times)
        print(f"all-reduce {args.size} x {world} ranks: median {med * 1e3:.1f} ms "
              f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, n={len(times)})", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"size": args.size, "world": world, "times_s": times, "median_s": med}, fh)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
