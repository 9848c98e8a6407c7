"""Reward functions that misbehave on purpose, for the non-finite guards' checks
(tests/test_hostile_training.py, benchmarks/kill_storm.py --nonfinite).

`poisoned_length` is the length reward, except that at the optimizer steps listed in
`poison_steps` (trainer_state.global_step + 1, the step being made) it returns `value` (nan,
inf or -inf) for one completion — only on the process whose RANK is `poison_rank`, when set,
so a single rank's NaN must stop every rank."""
from __future__ import annotations

import os
from pathlib import Path
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


def poison_recipe(recipe: Path, policy: str, steps, value: str = "nan", rank: int | None = None,
                  **grpo: Any) -> Path:
    """Rewrite a recipe of trainer.selfcheck.runs.write_recipe to score with `poisoned_length` at `steps`
    and set grpo.on_nonfinite (and any other grpo fields)."""
    import yaml

    params = {"poison_steps": sorted(steps), "value": value, "target_length": 24}
    if rank is not None:
        params["poison_rank"] = rank
    data = yaml.safe_load(recipe.read_text())
    data["rewards"] = [{"func": "trainer.selfcheck.poison:poisoned_length", "params": params}]
    data["grpo"].update(on_nonfinite=policy, **grpo)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe


def nonfinite_checkpoints(out: Path) -> int:
    """Checkpoints under OUT whose weights hold NaN/inf (must be 0)."""
    import torch
    from safetensors.torch import load_file

    from trainer.checkpoint import list_checkpoints

    return sum(not all(bool(torch.isfinite(t).all()) for t in load_file(str(c / "model.safetensors")).values())
               for c in list_checkpoints(out))
