"""The reference executor: runs a Plan on numpy arrays in one process — the oracle the
simulator's and torch.distributed's executors are tested against.

Semantics per step and group (region = the group's (offset, numel)):
  all_reduce      every member's region <- sum of members' regions
  reduce_scatter  member i's shard i <- sum of members' shard i (other elements unspecified)
  all_gather      every member's shard j <- member j's shard j
  broadcast       every member's region <- first member's region
  send_recv       group (src, dst): dst's region <- src's region
A step whose wire is narrower than the buffer (`Plan.lossy`) encodes what it sends and sums in
fp32 as hdc.wire defines (reduce_scatter and all_gather only).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from hdc import wire as codec
from hdc.plan import Plan, Step, split


def apply_step(step: Step, buffers: Mapping[int, np.ndarray], wire: str | None = None) -> None:
    """Run one step in place; `wire` names a lossy wire format (hdc.wire), None for exact."""
    for group, (off, n) in zip(step.groups, step.regions):
        if len(group) < 2 or n == 0:
            continue
        sl = slice(off, off + n)
        if wire is not None:
            _apply_lossy(step.op, group, off, n, buffers, wire)
        elif step.op == "all_reduce":
            total = np.sum([buffers[r][sl] for r in group], axis=0)
            for r in group:
                buffers[r][sl] = total
        elif step.op == "reduce_scatter":
            for i, (so, sn) in enumerate(split(n, len(group))):
                shard = slice(off + so, off + so + sn)
                buffers[group[i]][shard] = np.sum([buffers[r][shard] for r in group], axis=0)
        elif step.op == "all_gather":
            for j, (so, sn) in enumerate(split(n, len(group))):
                shard = slice(off + so, off + so + sn)
                for r in group:
                    if r != group[j]:
                        buffers[r][shard] = buffers[group[j]][shard]
        elif step.op == "broadcast":
            for r in group[1:]:
                buffers[r][sl] = buffers[group[0]][sl]
        elif step.op == "send_recv":
            src, dst = group
            buffers[dst][sl] = buffers[src][sl]
        else:  # pragma: no cover - Step validates op
            raise ValueError(step.op)


def run_plan(plan: Plan, buffers: Mapping[int, np.ndarray], train_step: int = 0,
             phase: str | None = None) -> None:
    """Execute the plan's active steps in order (a valid topological order), in place.

    `phase` restricts to 'grad' or 'param' steps (e.g. the distributed optimizer runs its
    'grad' steps, updates the shard, then its 'param' steps).
    """
    for step in plan.steps:
        if step.active(train_step) and (phase is None or step.phase == phase):
            apply_step(step, buffers, plan.wire(step) if plan.lossy(step) else None)


def _apply_lossy(op: str, group, off: int, n: int, buffers, wire: str) -> None:
    shards = split(n, len(group))
    if op == "reduce_scatter":
        for j, (so, sn) in enumerate(shards):
            sl = slice(off + so, off + so + sn)
            acc = None
            for r in group:  # decode each member's encoded shard j; sum in fp32, member order
                part = codec.roundtrip(buffers[r][sl].astype(np.float32), wire)
                acc = part.copy() if acc is None else acc + part
            buffers[group[j]][sl] = acc
    elif op == "all_gather":
        for j, (so, sn) in enumerate(shards):
            sl = slice(off + so, off + so + sn)
            shard = codec.roundtrip(buffers[group[j]][sl].astype(np.float32), wire)
            for r in group:
                buffers[r][sl] = shard
    else:
        raise ValueError(f"{op} on a lossy wire ({wire}): plan it as reduce_scatter + all_gather")
