"""The rank side: run an hdc Plan's steps over gloo process groups and time them.

This is a stand-in for the trainer's executor (`trainer/distributed/executor.py`) until it lands;
`validate` uses that one when it is importable (see `executor_for`).

Each step is launched asynchronously as soon as its deps are done, each on a process group
keyed by (label, ranks) — one "stream" per phase, so chunk c+1's site reduce-scatter can run
while chunk c crosses the WAN, as the plan's deps allow. Within one group, ops are issued in
plan order on every rank (gloo, like NCCL, needs one order per communicator).

Timing (`timed`): rank 0 picks a start instant a little in the future on CLOCK_MONOTONIC —
one clock for every process on this machine, namespaces included — everyone sleeps until it,
runs the plan, and the time is (latest finish − start): what a simulator that starts every
rank at t = 0 predicts.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from hdc.plan import Plan, Step, split


def init_from_env(timeout_s: float = 120.0) -> tuple[int, int]:
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


class Groups:
    """One gloo process group per (key, ranks); every rank must create them in the same order,
    so create them all up front from the plans with `prepare`."""

    def __init__(self) -> None:
        self.pgs: dict[tuple, object] = {}

    def prepare(self, plans: list[Plan]) -> None:
        keys = sorted({(s.label or s.op, g) for p in plans for s in p.steps for g in s.groups if len(g) > 1})
        for key in keys:
            if key not in self.pgs:
                self.pgs[key] = dist.new_group(list(key[1]))

    def get(self, step: Step, group: tuple[int, ...]):
        return self.pgs[(step.label or step.op, group)]


def _launch(step: Step, group: tuple[int, ...], region: tuple[int, int], buf: torch.Tensor, pg, rank: int):
    """Start my part of one step; returns (work, finish) where finish() runs after completion."""
    off, n = region
    view = buf[off:off + n]
    p = len(group)
    me = group.index(rank)
    nothing = lambda: None  # noqa: E731
    if step.op == "all_reduce":
        return dist.all_reduce(view, group=pg, async_op=True), nothing
    if step.op in ("reduce_scatter", "all_gather"):
        shards = split(n, p)
        m = shards[0][1]  # the largest shard (the first n % p are one longer)
        s_off, s_len = shards[me]
        if step.op == "reduce_scatter":
            src = view if n == m * p else _padded(view, shards, m)
            out = torch.empty(m, dtype=buf.dtype)

            def finish():
                view[s_off:s_off + s_len].copy_(out[:s_len])
            return dist.reduce_scatter_tensor(out, src, group=pg, async_op=True), finish
        mine = torch.zeros(m, dtype=buf.dtype)
        mine[:s_len].copy_(view[s_off:s_off + s_len])
        if n == m * p:
            return dist.all_gather_into_tensor(view, mine, group=pg, async_op=True), nothing
        out = torch.empty(m * p, dtype=buf.dtype)

        def finish():
            for i, (o, ln) in enumerate(shards):
                view[o:o + ln].copy_(out[i * m:i * m + ln])
        return dist.all_gather_into_tensor(out, mine, group=pg, async_op=True), finish
    if step.op == "broadcast":
        return dist.broadcast(view, src=group[0], group=pg, async_op=True), nothing
    if step.op == "send_recv":
        if rank == group[0]:
            return dist.isend(view, dst=group[1], group=pg), nothing
        return dist.irecv(view, src=group[0], group=pg), nothing
    raise ValueError(f"unknown op {step.op}")


def _padded(view: torch.Tensor, shards, m: int) -> torch.Tensor:
    out = torch.zeros(m * len(shards), dtype=view.dtype)
    for i, (o, ln) in enumerate(shards):
        out[i * m:i * m + ln].copy_(view[o:o + ln])
    return out


def run_plan(plan: Plan, buf: torch.Tensor, groups: Groups, rank: int, timeout_s: float = 300.0) -> None:
    """Execute my part of every step, respecting deps; returns when all my steps are done."""
    mine = {}
    for s in plan.steps:
        for g, r in zip(s.groups, s.regions):
            if rank in g and len(g) > 1:
                mine[s.id] = (g, r)
    pending = list(plan.steps)
    running: dict[int, tuple] = {}
    done: set[int] = set()
    wake = threading.Event()
    deadline = time.monotonic() + timeout_s
    while pending or running:
        issued_keys: set = set()  # a group blocked earlier in plan order blocks later steps on it
        for s in list(pending):
            key = (s.label or s.op, mine[s.id][0]) if s.id in mine else None
            if all(d in done for d in s.deps) and key not in issued_keys:
                pending.remove(s)
                if key is None:
                    done.add(s.id)
                    continue
                g, region = mine[s.id]
                work, finish = _launch(s, g, region, buf, groups.get(s, g), rank)
                work.get_future().add_done_callback(lambda _f: wake.set())
                running[s.id] = (work, finish)
            elif key is not None:
                issued_keys.add(key)
        progressed = False
        for sid, (work, finish) in list(running.items()):
            if work.is_completed():
                work.wait()
                finish()
                done.add(sid)
                del running[sid]
                progressed = True
        if not progressed and running:
            wake.wait(0.01)
            wake.clear()
        if time.monotonic() > deadline:
            raise TimeoutError(f"plan {plan.strategy}: steps {sorted(running)} not done after {timeout_s:g} s")


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
