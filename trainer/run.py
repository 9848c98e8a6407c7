"""From a validated Recipe to a running GRPOTrainer (what `hdc train` does)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from trainer.config import Recipe


def build_grad_sync(recipe: Recipe):
    """The GradientSync for this process: LocalSync alone, DistGradientSync when `hdc launch`
    (or `hdc train --nproc`) started it in a torch.distributed world, HSDPGradientSync there
    with distributed.shard_within_site."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from trainer.sync import LocalSync

        return LocalSync()
    from trainer.distributed.grad_sync import DistGradientSync
    from trainer.distributed.hsdp import HSDPGradientSync

    d = recipe.distributed
    kwargs = dict(micro_batches=recipe.grpo.gradient_accumulation_steps, timeout_s=d.timeout_s,
                  backend=None if d.backend == "auto" else d.backend, grad_dtype=d.grad_dtype)
    if d.shard_within_site:  # the buckets are FSDP2's groups (one per decoder layer, and the root)
        return HSDPGradientSync.from_env(d.build_strategy(), **kwargs)
    return DistGradientSync.from_env(d.build_strategy(), bucket_cap_bytes=int(d.bucket_size_mb * 1e6), **kwargs)


def build_trainer(recipe: Recipe, out_dir: str | None = None, grad_sync=None, generation_backend=None):
    from trainer.algorithm import TIS
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import bind_params, resolve_reward

    funcs = [bind_params(resolve_reward(s.func, f"rewards[{i}].func"), reward_params(recipe, s))
             for i, s in enumerate(recipe.rewards)]
    args = dataclasses.replace(recipe.grpo, reward_weights=[s.weight for s in recipe.rewards],
                               output_dir=str(out_dir) if out_dir is not None else recipe.grpo.output_dir)
    train = load_jsonl(recipe.data.train_file, "data.train_file")
    evaluation = load_jsonl(recipe.data.eval_file, "data.eval_file") if recipe.data.eval_file else None
    vllm = recipe.generation.backend == "vllm"
    tis = TIS(recipe.vllm.tis_level, recipe.vllm.tis_cap) if vllm else TIS()
    trainer = GRPOTrainer(model=recipe.model.name_or_path, reward_funcs=funcs, args=args, train_dataset=train,
                          eval_dataset=evaluation, data=recipe.data, grad_sync=grad_sync,
                          generation_backend=generation_backend, dtype=recipe.model.dtype, tis=tis,
                          device=recipe.model.device, lora=recipe.model.lora)
    if generation_backend is None and vllm:
        from trainer.vllm_backend import make_generation_backend

        trainer.backend = make_generation_backend(recipe.vllm, recipe.model.name_or_path, trainer.tokenizer,
                                                  args.max_prompt_length, seed=args.seed, model=trainer.model)
    return trainer


def reward_params(recipe: Recipe, spec) -> dict:
    """rewards[i].params, and for the code reward the recipe's code_sandbox."""
    return {"sandbox": recipe.code_sandbox, **spec.params} if spec.func == "code" else spec.params


def check_recipe_inputs(recipe: Recipe) -> None:
    """What `hdc recipe validate` checks beyond the fields: the model folder, the data files and the
    columns the prompts and rewards need, the topology; each mistake a UserError naming the field."""
    from hdc.errors import UserError
    from trainer.checkpoint import refuse_pickled_weights
    from trainer.data import load_jsonl
    from trainer.rewards import check_reward_columns, resolve_reward

    from trainer.models import require_model_dir

    model = Path(require_model_dir(recipe.model.name_or_path, "model.name_or_path"))  # says so for a Hub id
    if not (model / "config.json").is_file():
        raise UserError(f"model.name_or_path: {model} has no config.json (save a model with save_pretrained)")
    refuse_pickled_weights(model)
    data = recipe.data
    for field, path in (("data.train_file", data.train_file), ("data.eval_file", data.eval_file)):
        if path is None:
            continue
        columns = load_jsonl(path, field).column_names
        needed = [data.prompt_column] + ([data.answer_column] if field == "data.eval_file" else [])
        for column in needed:
            if column not in columns:
                raise UserError(f"{field}: no column {column!r} in {path} (columns: {', '.join(columns)})")
        if field == "data.train_file":
            funcs = [resolve_reward(s.func, f"rewards[{i}].func") for i, s in enumerate(recipe.rewards)]
            check_reward_columns(funcs, columns, field)
    if recipe.distributed.topology is not None:
        from hdc.topology import load_topology

        try:
            load_topology(recipe.distributed.topology)
        except UserError as e:
            raise UserError(f"distributed.topology: {e}") from None


def write_resolved(recipe: Recipe, out_dir: str | Path) -> None:
    """Save the fully resolved recipe next to the run's outputs."""
    import yaml

    from trainer.config import recipe_to_dict

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
