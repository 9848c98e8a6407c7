"""Non-finite guards: a step whose rewards, loss or gradients hold NaN/inf never reaches the optimizer.

`grpo.on_nonfinite` chooses what happens then: `error` (default) ends the run with one line
naming the reward function (or the loss, or the gradients) and the step; `skip` drops the
update — the optimizer does not step, the gradients are zeroed, the step still counts towards
max_steps (as Megatron-LM and DeepSpeed count their skipped iterations) — and logs a warning
and the metric `nonfinite/skipped_steps`.

Every rank decides alike: each counts what it saw this update (non-finite values per reward
function, non-finite micro-batch losses, non-finite gradients on its shard) and one all-reduce
of those counts, before `optimizer.step()`, tells every rank the same thing, so a single rank's
NaN stops (or skips on) every rank and none waits in a collective the others never reach.
Weights that still turn non-finite (a finite but overflowing update) are caught before a
checkpoint is sealed (trainer/checkpoint.py: `check_finite_weights`).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from hdc.errors import UserError

ON_NONFINITE = ("error", "skip")
TOTAL = -1  # reward index of the weighted sum (finite terms whose sum overflows)
log = logging.getLogger("hdc.guards")


class NonFiniteError(UserError):
    """A step met NaN/inf before the optimizer touched the weights (grpo.on_nonfinite: error)."""


def local_grads_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient this rank holds (its shard, for a DTensor) is finite: one reduction."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
             for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm([g.float() for g in grads])  # inf or NaN iff some element is
    return bool(torch.isfinite(torch.stack(norms)).all())


class StepGuard:
    """Collects one update's non-finite counts and decides, on every rank alike, whether it may step."""

    def __init__(self, reward_names: list[str], policy: str, all_reduce_sum: Callable[[list[float]], list[float]]):
        self.reward_names, self.policy, self.all_reduce_sum = reward_names, policy, all_reduce_sum
        self.skipped_steps = 0
        self._reset_round()

    def _reset_round(self) -> None:
        self.rewards = [0] * (len(self.reward_names) + 1)  # per function, then the weighted sum
        self.losses = 0

    def start_round(self) -> None:
        """A new generation round: its rewards are counted afresh."""
        self._reset_round()

    def reward(self, index: int, count: int) -> None:
        """`count` completions got a non-finite value from reward function `index` (TOTAL: the weighted sum)."""
        self.rewards[index] += count

    def loss(self, value: float) -> None:
        self.losses += not math.isfinite(value)

    def allows_update(self, model: torch.nn.Module, grad_norm: float | None, step: int) -> bool:
        """True when every rank saw finite rewards, losses and gradients this update; else raise
        (policy error) or warn and return False (policy skip). A collective: every rank calls it."""
        grads_bad = not (math.isfinite(grad_norm) if grad_norm is not None else local_grads_finite(model))
        counts = self.all_reduce_sum([float(c) for c in self.rewards] + [float(self.losses), float(grads_bad)])
        self.losses = 0  # the round's reward counts stay: every update of the round trains on those rewards
        if not any(counts):
            return True
        why = self.describe(counts, step)
        if self.policy == "error":
            raise NonFiniteError(f"{why}; stopped before the optimizer step, no checkpoint of this step was written "
                                 f"(grpo.on_nonfinite: skip drops such steps instead)")
        self.skipped_steps += 1
        log.warning("%s; skipped this update (grpo.on_nonfinite: skip), %d skipped so far", why, self.skipped_steps)
        return False

    def describe(self, counts: list[float], step: int) -> str:
        """The first cause in the summed counts, in the order they arise: rewards, loss, gradients."""
        n = len(self.reward_names)
        for i, c in enumerate(counts[:n]):
            if c:
                return (f"step {step}: reward function {self.reward_names[i]!r} returned NaN/inf for {int(c)} "
                        f"completion(s)")
        if counts[n]:
            return f"step {step}: the weighted sum of rewards overflowed to inf for {int(counts[n])} completion(s)"
        if counts[n + 1]:
            return f"step {step}: the loss is NaN/inf in {int(counts[n + 1])} micro-batch(es)"
        return f"step {step}: the gradients hold NaN/inf on {int(counts[n + 2])} rank(s)"
