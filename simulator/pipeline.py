"""The pipeline schedule: (interleaved) 1F1B as Megatron-LM runs it, as SimPy processes.

Each stage runs its operations in a fixed order; an operation waits for its input (the
activation from the previous virtual stage, or the gradient from the next one), computes,
and sends its output to the stage that needs it as a network flow. Virtual stage
`vs = chunk · pp + stage` (Narayanan et al. 2021, interleaved schedule).
"""
from __future__ import annotations

from typing import Callable, Optional

import simpy


def schedule(pp: int, vpp: int, micro_batches: int, stage: int) -> list[tuple[str, int, int]]:
    """The order of ('F'|'B', chunk, micro-batch) operations on `stage` (Megatron-LM's
    forward_backward_pipelining_with/without_interleaving)."""
    p, v, m = pp, vpp, micro_batches
    total = m * v
    if v == 1:
        warm = min(p - stage - 1, m)
    else:
        warm = min((p - stage - 1) * 2 + (v - 1) * p, total)

    def at(k: int, backward: bool) -> tuple[int, int]:
        chunk = (k // p) % v
        return (v - 1 - chunk if backward else chunk), (k // (p * v)) * p + k % p

    ops = [("F", *at(k, False)) for k in range(warm)]
    f = warm
    for b in range(total):
        if f < total:
            ops.append(("F", *at(f, False)))
            f += 1
        ops.append(("B", *at(b, True)))
    return ops


def ideal_bubble_s(pp: int, vpp: int, stage_forward_s: float, stage_backward_s: float) -> float:
    """(pp - 1)/vpp · (t_f + t_b) of a whole stage (Narayanan et al. 2021, §2.2)."""
    return (pp - 1) / vpp * (stage_forward_s + stage_backward_s)


class PipelineSchedule:
    """One pipeline (or a set of identical replicas simulated as one) on a SimPy env.

    send(src_stage, dst_stage) -> event: the network transfer of one activation/gradient.
    param_ready(stage, chunk) -> list of events the first forward of that chunk waits for.
    on_last_backward(stage, chunk, start_s, duration_s): called when a stage starts the last
    micro-batch's backward of a chunk (gradients of that chunk become final during it).
    """

    def __init__(self, env: simpy.Environment, pp: int, vpp: int, micro_batches: int,
                 forward_s: list[float], backward_s: list[float],
                 send: Callable[[int, int], simpy.Event],
                 param_ready: Callable[[int, int], list],
                 on_last_backward: Callable[[int, int, float, float], None],
                 spans: Optional[list] = None, name: str = "pipeline",
                 stage_factors: Optional[list[float]] = None):
        self.env, self.pp, self.vpp, self.m = env, pp, vpp, micro_batches
        self.stage_factors = stage_factors or [1.0] * pp  # compute slowdown per stage (stragglers)
        self.forward_s, self.backward_s = forward_s, backward_s
        self.send, self.param_ready, self.on_last_backward = send, param_ready, on_last_backward
        self.spans = spans
        self.name = name
        self.act: dict[tuple[int, int], simpy.Event] = {}
        self.grad: dict[tuple[int, int], simpy.Event] = {}
        self.param_wait_s = [0.0] * pp
        self.done = [env.process(self._stage(s)) for s in range(pp)]
        self.end_s = [0.0] * pp

    def _event(self, table, key):
        ev = table.get(key)
        if ev is None:
            ev = table[key] = self.env.event()
        return ev

    def _deliver(self, table, key, src_stage: int, dst_stage: int) -> None:
        target = self._event(table, key)
        if src_stage == dst_stage:
            target.succeed()
        else:
            self.send(src_stage, dst_stage).callbacks.append(lambda _e: target.succeed())

    def _stage(self, s: int):
        env, p, v, last_vs = self.env, self.pp, self.vpp, self.pp * self.vpp - 1
        seen_chunk = set()
        for kind, j, i in schedule(p, v, self.m, s):
            vs = j * p + s
            if kind == "F":
                if vs > 0:
                    yield self._event(self.act, (vs, i))
                if j not in seen_chunk:
                    seen_chunk.add(j)
                    waits = self.param_ready(s, j)
                    if waits:
                        t0 = env.now
                        yield simpy.AllOf(env, waits)
                        self.param_wait_s[s] += env.now - t0
                start = env.now
                yield env.timeout(self.forward_s[vs] * self.stage_factors[s])
                self._span(s, "forward", start, j, i)
                if vs < last_vs:
                    self._deliver(self.act, (vs + 1, i), s, (vs + 1) % p)
            else:
                if vs < last_vs:
                    yield self._event(self.grad, (vs, i))
                start = env.now
                if i == self.m - 1:
                    self.on_last_backward(s, j, start, self.backward_s[vs] * self.stage_factors[s])
                yield env.timeout(self.backward_s[vs] * self.stage_factors[s])
                self._span(s, "backward", start, j, i)
                if vs > 0:
                    self._deliver(self.grad, (vs - 1, i), s, (vs - 1) % p)
        self.end_s[s] = env.now

    def _span(self, s, kind, start, chunk, mb):
        if self.spans is not None:
            self.spans.append((self.name, s, kind, start, self.env.now, f"chunk {chunk} mb {mb}"))
