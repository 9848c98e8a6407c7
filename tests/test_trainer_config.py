"""Recipes: validated at the edge, errors name the field, `recipe show` prints everything."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hdc.config import help_table
from hdc.errors import UserError
from trainer.config import GRPOConfig, Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_both_recipes_validate():
    tiny = load_recipe(str(ROOT / "recipes/tiny-arith.yaml"))
    assert tiny.grpo.completions_per_step() == 16 * 8
    deep = load_recipe(str(ROOT / "recipes/deepscaler.yaml"))
    g = deep.grpo
    assert (g.generation_batch_size // g.num_generations, g.num_generations) == (512, 64)
    assert (g.max_completion_length, g.learning_rate, g.beta, g.epsilon) == (8192, 1e-6, 0.04, 0.2)
    assert [(r.func, r.weight) for r in deep.rewards] == [("accuracy", 1.0), ("format", 0.5)]


def test_deepscaler_batch_needs_64_processes():
    g = load_recipe(str(ROOT / "recipes/deepscaler.yaml")).grpo
    assert g.completions_per_step(world_size=64) == 512 * 64
    assert g.updates_per_generation(world_size=64) == 1
    # on fewer processes the same generation batch is several optimizer steps (TRL's steps_per_generation)
    assert g.updates_per_generation(world_size=8) == 8
    with pytest.raises(UserError, match="grpo.generation_batch_size: must be per_device_train_batch_size x "
                                        "processes x a multiple of gradient_accumulation_steps"):
        g.completions_per_step(world_size=3)


def test_steps_per_generation_and_generation_batch_size_follow_trl():
    g = GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=6,
                   num_generations=4, num_iterations=2)
    assert (g.completions_per_step(2), g.updates_per_generation(2)) == (4 * 2 * 6, 2 * 6 // 2)
    with pytest.raises(UserError, match="grpo.steps_per_generation: set generation_batch_size or "
                                        "steps_per_generation, not both"):
        GRPOConfig(steps_per_generation=2, generation_batch_size=16).validate("grpo")
    with pytest.raises(UserError, match="grpo.steps_per_generation: must be a multiple of "
                                        "gradient_accumulation_steps \\(2\\), got 3"):
        GRPOConfig(gradient_accumulation_steps=2, steps_per_generation=3).validate("grpo")


def test_grpo_config_built_in_python_gets_the_recipe_checks():
    assert GRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"
    with pytest.raises(UserError, match="grpo.loss_type: must be one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, "
                                        "got 'vespo'"):
        GRPOConfig(loss_type="vespo")
    with pytest.raises(UserError, match="grpo.top_entropy_quantile: must be a number > 0 and <= 1, got 1.5"):
        GRPOConfig(top_entropy_quantile=1.5)
    with pytest.raises(UserError, match="grpo.sync_ref_model: needs a reference model: set beta > 0"):
        GRPOConfig(sync_ref_model=True).validate("grpo")
    GRPOConfig(loss_type="cispo", epsilon_high=5.0).validate("grpo")  # cispo works (tests/test_trainer_algorithm.py)


@pytest.mark.parametrize("override, message", [
    ("grpo.loss_type=sum", "grpo.loss_type: must be one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, got 'sum'"),
    ("grpo.learning_rate=-1", "grpo.learning_rate: must be a number > 0 and <= 10, got -1.0"),
    ("grpo.num_generations=3", "grpo.num_generations: must divide"),
    ("grpo.lerning_rate=1", "grpo.lerning_rate: unknown key"),
    ("grpo.scale_rewards=std", "grpo.scale_rewards: must be one of group, batch, none"),
    ("rewards=[]", "rewards: must list at least one"),
    ("grpo.reward_weights=[1,2]", "grpo.reward_weights: set weights per function in rewards[i].weight"),
    ("grpo.num_generations_eval=0", "grpo.num_generations_eval: must be an integer >= 1 and <= 1024, got 0"),
    ("distributed.grad_dtype=float16", "distributed.grad_dtype: must be one of float32, bfloat16, got 'float16'"),
    ("distributed.shard_within_site=maybe", "distributed.shard_within_site: must be true or false, got 'maybe'"),
    ("distributed.chunks=2", "distributed.chunks: not a knob of strategy flat_ring"),
    ("distributed.bucket_size_mb=.inf", "distributed.bucket_size_mb: must be a number > 0 and <= 1000000.0, got inf"),
])
def test_mistakes_name_the_field(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(str(ROOT / "recipes/tiny-arith.yaml"), [override])


def test_scale_rewards_accepts_trl_booleans():
    assert load_recipe(str(ROOT / "recipes/tiny-arith.yaml"), ["grpo.scale_rewards=true"]).grpo.scale_rewards == "group"
    assert load_recipe(str(ROOT / "recipes/tiny-arith.yaml"), ["grpo.scale_rewards=false"]).grpo.scale_rewards == "none"


def test_config_uses_trl_option_names():
    names = {f[0] for f in help_table(GRPOConfig)}
    trl = {"learning_rate", "beta", "epsilon", "epsilon_high", "loss_type", "scale_rewards", "num_generations",
           "num_iterations", "max_completion_length", "temperature", "top_p", "per_device_train_batch_size",
           "gradient_accumulation_steps", "max_steps", "reward_weights", "mask_truncated_completions",
           "log_completions", "seed", "save_steps", "logging_steps"}
    assert trl <= names
    assert all(row[3] for row in help_table(Recipe)), "every field has help text"


def _hdc(*argv):
    code = "import sys; from trainer.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)


def test_cli_recipe_validate_and_show():
    from trainer.selfcheck.assets import tiny_assets

    assets = tiny_assets()  # validate checks that the model folder and data files exist
    ok = _hdc("recipe", "validate", "recipes/deepscaler.yaml", "--set", f"model.name_or_path={assets.sft_model}",
              "--set", f"data.train_file={assets.data / 'train.jsonl'}", "--set", "data.eval_file=null")
    assert ok.returncode == 0, ok.stderr
    absent = _hdc("recipe", "validate", "recipes/deepscaler.yaml")
    assert absent.returncode == 2
    err = absent.stderr.strip()  # owner/name could be a Hub id: the line says how to download one
    assert err.startswith("error: model.name_or_path: no such directory 'models/DeepSeek-R1-Distill-Qwen-1.5B'")
    assert "\n" not in err
    bad = _hdc("recipe", "validate", "recipes/tiny-arith.yaml", "--set", "grpo.epsilon=2")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: grpo.epsilon: must be a number > 0 and < 1, got 2.0"
    shown = yaml.safe_load(_hdc("recipe", "show", "recipes/tiny-arith.yaml").stdout)
    assert shown["grpo"]["adam_beta2"] == 0.99  # a default, not written in the file
    assert shown["rewards"][1] == {"func": "format", "weight": 0.5, "params": {}}
    missing = _hdc("recipe", "show", "recipes/nope.yaml")
    assert (missing.returncode, missing.stderr.strip()) == (2, "error: recipes/nope.yaml: no such file")


def test_docs_config_table_is_generated_from_the_dataclasses():
    from trainer.docs import DOC, render

    text = DOC.read_text()
    assert render(text) == text, "run: python -m trainer.docs --write"
    assert "| `grpo.loss_type` | str | `'dapo'` |" in text


def _lrs(updates: int, **fields) -> list[float]:
    """The learning rate of the first `updates` optimizer updates under build_scheduler."""
    import torch

    from trainer.grpo import build_scheduler

    args = GRPOConfig(learning_rate=1.0, **fields)
    args.validate("grpo")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    sched = build_scheduler(opt, args)
    out = []
    for _ in range(updates):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_lr_schedules_follow_transformers():
    # constant_with_warmup: linear from 0 over warmup_ratio x max_steps, then flat
    assert _lrs(6, lr_scheduler_type="constant_with_warmup", warmup_ratio=0.4, max_steps=10) == \
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # warmup_steps overrides warmup_ratio; both count optimizer updates, as in TRL, whatever num_iterations is
    assert _lrs(5, lr_scheduler_type="constant_with_warmup", warmup_ratio=0.9, warmup_steps=4, max_steps=10,
                num_iterations=2) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # linear: warm-up, then down to 0 at max_steps
    assert _lrs(5, lr_scheduler_type="linear", warmup_steps=1, max_steps=5) == [0.0, 1.0, 0.75, 0.5, 0.25]
    assert _lrs(3, lr_scheduler_type="constant", max_steps=5) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("override", ["grpo.warmup_ratio=0.1", "grpo.warmup_steps=5"])
def test_constant_schedule_with_warmup_is_refused(override):
    # transformers' "constant" silently skips any warm-up; a recipe that asks for one is told so
    field = override.split("=")[0]
    with pytest.raises(UserError, match=f"{field}: lr_scheduler_type constant has no warm-up.*constant_with_warmup"):
        load_recipe(str(ROOT / "recipes/tiny-arith.yaml"),
                    ["grpo.lr_scheduler_type=constant", "grpo.warmup_steps=0", "grpo.warmup_ratio=0", override])
    ok = load_recipe(str(ROOT / "recipes/tiny-arith.yaml"),
                     ["grpo.lr_scheduler_type=constant_with_warmup", "grpo.warmup_steps=0", override])
    assert ok.grpo.warmup_updates() > 0
