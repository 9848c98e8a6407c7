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

    funcs = [bind_params(resolve_reward(s.func, f"rewards[{i}].func"), s.params) for i, s in enumerate(recipe.rewards)]
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


def write_resolved(recipe: Recipe, out_dir: str | Path) -> None:
    """Save the fully resolved recipe next to the run's outputs."""
    import yaml

    from trainer.config import recipe_to_dict

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
