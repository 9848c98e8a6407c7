"""The rank side of a measurement: a common start instant, timing, and the sum check (the plans
themselves run on trainer.distributed.executor.PlanExecutor, see executor.py).

Timing (`timed`): rank 0 picks a start instant a little in the future on CLOCK_MONOTONIC —
one clock for every process on this machine, namespaces included — everyone sleeps until it,
runs the plan, and the time is (latest finish − start): what a simulator that starts every
rank at t = 0 predicts.
"""
from __future__ import annotations

import time
from datetime import timedelta

import torch
import torch.distributed as dist



def init_from_env(timeout_s: float = 120.0) -> tuple[int, int]:
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def synced_start(margin_s: float) -> float:
    """Agree on a start instant (rank 0's clock + margin) and sleep until it."""
    t = torch.tensor([time.monotonic() + margin_s], dtype=torch.float64)
    dist.broadcast(t, src=0)
    start = float(t[0])
    while True:
        left = start - time.monotonic()
        if left <= 0:
            return start
        time.sleep(left - 0.0005 if left > 0.001 else 0)


def gather_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


def timed(fn, margin_s: float) -> float:
    """Wall time of fn() run by every rank from a common start: latest finish − start."""
    start = synced_start(margin_s)
    fn()
    return gather_max(time.monotonic() - start)


def check_sum(buf: torch.Tensor, world: list[int]) -> None:
    """After a sync that started from buf = rank + 1, every element is Σ (r + 1)."""
    want = float(sum(r + 1 for r in world))
    lo, hi = float(buf.min()), float(buf.max())
    if lo != want or hi != want:
        raise AssertionError(f"sync result wrong: values in [{lo}, {hi}], expected {want}")
