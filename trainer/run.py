"""From a validated Recipe to a running GRPOTrainer (what `hdc train` does)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from trainer.config import Recipe


def build_trainer(recipe: Recipe, out_dir: str | None = None, grad_sync=None, generation_backend=None):
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import bind_params, resolve_reward

    funcs = [bind_params(resolve_reward(s.func, f"rewards[{i}].func"), s.params) for i, s in enumerate(recipe.rewards)]
    args = dataclasses.replace(recipe.grpo, reward_weights=[s.weight for s in recipe.rewards],
                               output_dir=str(out_dir) if out_dir is not None else recipe.grpo.output_dir)
    train = load_jsonl(recipe.data.train_file, "data.train_file")
    evaluation = load_jsonl(recipe.data.eval_file, "data.eval_file") if recipe.data.eval_file else None
    trainer = GRPOTrainer(model=recipe.model.name_or_path, reward_funcs=funcs, args=args, train_dataset=train,
                          eval_dataset=evaluation, data=recipe.data, grad_sync=grad_sync,
                          generation_backend=generation_backend, dtype=recipe.model.dtype)
    return trainer


def write_resolved(recipe: Recipe, out_dir: str | Path) -> None:
    """Save the fully resolved recipe next to the run's outputs."""
    import yaml

    from trainer.config import recipe_to_dict

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
