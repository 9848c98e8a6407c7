"""Reward functions that misbehave on purpose, for the non-finite guards' checks
(tests/test_hostile_training.py, benchmarks/kill_storm.py --nonfinite).

`poisoned_length` is the length reward, except that at the optimizer steps listed in
`poison_steps` (trainer_state.global_step + 1, the step being made) it returns `value` (nan,
inf or -inf) for one completion — only on the process whose RANK is `poison_rank`, when set,
so a single rank's NaN must stop every rank."""
from __future__ import annotations

import os
from typing import Any

from trainer.rewards import length


def poisoned_length(prompts: list, completions: list, trainer_state=None, poison_steps: list[int] = (),
                    value: str = "nan", poison_rank: int | None = None, target_length: int = 24,
                    **kwargs: Any) -> list[float | None]:
    out = length(prompts, completions, target_length=target_length)
    step = trainer_state.global_step + 1 if trainer_state is not None else 1
    if step in poison_steps and poison_rank in (None, int(os.environ.get("RANK", "0"))):
        out[0] = float(value)
    return out
