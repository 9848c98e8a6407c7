"""The GRPO trainer end to end on a tiny local model: metrics, checkpoints, resume, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trainer.config import DataConfig, GRPOConfig
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.logs import read_metrics
from trainer.sync import GradientSync, LocalSync
from trainer.selfcheck.assets import tiny_assets

ROOT = Path(__file__).resolve().parents[1]
STEP_METRICS = ["rewards/accuracy/mean", "rewards/accuracy/std", "rewards/format/mean", "rewards/total/mean",
                "advantages/mean", "kl", "clip_ratio/low", "clip_ratio/high", "entropy", "loss",
                "completions/mean_length", "completions/max_length", "completions/truncated_fraction",
                "time/generate_s", "time/score_s", "time/reference_s", "time/update_s", "time/sync_s",
                "time/sync_skew_s", "time/sync_collective_s", "throughput/tokens_per_s", "learning_rate", "grad_norm"]


def small_args(out: Path, **kw) -> GRPOConfig:
    base = dict(output_dir=str(out), learning_rate=1e-4, num_generations=4, per_device_train_batch_size=8,
                gradient_accumulation_steps=2, max_completion_length=24, max_steps=2, save_steps=1, seed=0,
                loss_type="dr_grpo")
    return GRPOConfig(**{**base, **kw})


def make_trainer(out: Path, sync: GradientSync | None = None, **kw) -> GRPOTrainer:
    assets = tiny_assets()
    return GRPOTrainer(model=str(assets.sft_model), reward_funcs=["accuracy", "format"], args=small_args(out, **kw),
                       train_dataset=load_jsonl(str(assets.data / "train.jsonl")), grad_sync=sync)


def test_steps_write_every_metric_a_checkpoint_and_a_loadable_model(tmp_path):
    result = make_trainer(tmp_path, log_completions=True).train(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for name in STEP_METRICS:
        assert name in rows[-1], name
    assert result["rewards/total/mean"] == rows[-1]["rewards/total/mean"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"} <= \
        {p.name for p in (tmp_path / "checkpoints" / "step-00000002").iterdir()}
    assert list((tmp_path / "tb").iterdir()), "TensorBoard events written"
    completions = [json.loads(line) for line in open(tmp_path / "completions.jsonl")]
    assert {"step", "prompt", "completion", "reward", "advantage", "rewards/accuracy"} <= set(completions[0])
    AutoModelForCausalLM.from_pretrained(tmp_path / "final")


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    make_trainer(tmp_path / "straight", max_steps=3).train(progress=False)
    make_trainer(tmp_path / "resumed", max_steps=2).train(progress=False)
    resumed = make_trainer(tmp_path / "resumed", max_steps=3)
    resumed.train(resume_from_checkpoint=True, progress=False)
    assert resumed.step == 3
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "same data, RNG and optimizer state after resume"
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert state["data"] == {"epoch": 0, "index": 3 * 4}  # 4 prompts per step


def test_reference_model_only_when_beta_is_nonzero(tmp_path):
    assert make_trainer(tmp_path / "a", beta=0.0).ref_model is None
    trainer = make_trainer(tmp_path / "b", beta=0.04, num_iterations=2, max_steps=1)
    assert trainer.ref_model is not None
    m = trainer.train_step()
    assert m["kl"] >= 0.0
    # the second iteration moved away from the reference; else nothing moved (up to rounding: the reference
    # pass and the policy's agree to ~1e-6, not bit for bit, once prompts are shared, grpo.share_prompt_prefix)
    assert m["kl"] > 0.0 or m["grad_norm"] < 1e-6


class CountingSync(LocalSync):
    """A sync that records the calls the trainer makes (the trainer must not care which sync it has)."""

    def __init__(self):
        self.calls = []

    def attach(self, model):
        self.calls.append("attach")

    def after_backward(self, model):
        self.calls.append("after_backward")

    def finish(self, step):
        self.calls.append(f"finish {step}")

    def after_optimizer_step(self, model, optimizer, step):
        self.calls.append(f"after_optimizer_step {step}")


def test_trainer_drives_the_sync_it_was_given(tmp_path):
    sync = CountingSync()
    trainer = make_trainer(tmp_path, sync=sync, num_iterations=2)
    trainer.train_step()
    assert isinstance(sync, GradientSync)
    # finish / after_optimizer_step count optimizer updates (num_iterations per step), not steps
    assert sync.calls == ["attach"] + ["after_backward"] * 2 + ["finish 0", "after_optimizer_step 0"] \
        + ["after_backward"] * 2 + ["finish 1", "after_optimizer_step 1"]


def test_steps_per_generation_cuts_one_batch_into_several_updates(tmp_path):
    # TRL: steps_per_generation 4 with gradient_accumulation_steps 2 -> 2 updates per generation round
    sync = CountingSync()
    trainer = make_trainer(tmp_path, sync=sync, steps_per_generation=4)
    assert trainer.prompts_per_step == 8 * 4 // 4  # per_device 8 x 4 micro-batches / 4 generations
    trainer.train_step()
    assert sync.calls == ["attach"] + ["after_backward"] * 2 + ["finish 0", "after_optimizer_step 0"] \
        + ["after_backward"] * 2 + ["finish 1", "after_optimizer_step 1"]


def test_max_steps_and_checkpoints_count_optimizer_updates_as_trl(tmp_path):
    # num_iterations 2: each generation round is 2 optimizer updates, so max_steps 4 is 2 rounds
    result = make_trainer(tmp_path, num_iterations=2, max_steps=4, save_steps=2).train(progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    state = json.loads((tmp_path / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["data"]["index"] == 2 * 4  # 2 rounds of 4 prompts
    assert result["learning_rate"] == pytest.approx(1e-4)


def test_sync_ref_model_mixes_the_policy_into_the_reference(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.04, sync_ref_model=True, ref_model_sync_steps=1,
                           ref_model_mixup_alpha=0.25)
    with torch.no_grad():  # make policy and reference differ whatever the update does
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    trainer.train_step()
    policy, mixed = trainer.model.state_dict(), trainer.ref_model.state_dict()
    for name in before:
        assert torch.allclose(mixed[name], 0.25 * policy[name] + 0.75 * before[name], atol=1e-6), name
    assert not torch.equal(mixed[name], before[name])


def test_bad_user_input_names_the_field(tmp_path):
    from hdc.errors import UserError

    assets = tiny_assets()
    data = load_jsonl(str(assets.data / "train.jsonl"))
    with pytest.raises(UserError, match="grpo.reward_weights: must have one weight per reward function"):
        GRPOTrainer(str(assets.sft_model), ["accuracy"], small_args(tmp_path, reward_weights=[1.0, 2.0]), data)
    with pytest.raises(UserError, match="data.prompt_column: no column 'question'"):
        GRPOTrainer(str(assets.sft_model), ["accuracy"], small_args(tmp_path), data,
                    data=DataConfig(train_file="x", prompt_column="question"))
    with pytest.raises(UserError, match="data.train_file: no such file"):
        load_jsonl(str(tmp_path / "missing.jsonl"))


def test_hdc_train_from_a_recipe(tmp_path):
    assets = tiny_assets()
    sets = [f"model.name_or_path={assets.sft_model}", f"data.train_file={assets.data / 'train.jsonl'}",
            f"data.eval_file={assets.data / 'heldout.jsonl'}", "data.eval_max_samples=20", "grpo.max_steps=1",
            "grpo.per_device_train_batch_size=16", "grpo.gradient_accumulation_steps=1"]
    code = "import sys; from trainer.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "train", "recipes/tiny-arith.yaml", "--out", str(tmp_path), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eval/exact_match_start=" in done.stdout
    assert (tmp_path / "recipe.resolved.yaml").exists()
    names = {k for row in read_metrics(tmp_path / "metrics.jsonl") for k in row}
    assert {"eval/exact_match", "eval/format", "rewards/total/mean"} <= names


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])
def test_every_loss_type_trains(tmp_path, loss_type):
    m = make_trainer(tmp_path, loss_type=loss_type, max_steps=1).train_step()
    assert m["grad_norm"] >= 0.0 and m["loss"] == m["loss"]


def test_truncated_completions_can_be_left_out_of_the_loss(tmp_path):
    # 2 new tokens at temperature 0.5: every completion is truncated. A reward that differs within each
    # group gives non-zero advantages, so the gradient is zero only because the mask drops every token.
    def distinct(prompts, completions, **kwargs):
        return [float(i % 4) for i in range(len(completions))]

    assets = tiny_assets()
    for mask, grad_is_zero in ((True, True), (False, False)):
        args = small_args(tmp_path / str(mask), max_completion_length=2, temperature=0.5,
                          mask_truncated_completions=mask)
        trainer = GRPOTrainer(str(assets.sft_model), [distinct], args, load_jsonl(str(assets.data / "train.jsonl")))
        m = trainer.train_step()
        assert m["completions/truncated_fraction"] == 1.0
        assert (m["grad_norm"] == 0.0) == grad_is_zero


def test_read_metrics_skips_a_line_cut_by_a_kill(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo{"step": 2, "loss": 0.25}\n{"step": 3, "loss": 0.1}\n')
    assert [r["step"] for r in read_metrics(p)] == [1, 3]


def test_reward_functions_log_metrics_and_completion_columns(tmp_path):
    """A TRL-style reward with log_metric / log_extra / completion_ids / trainer_state, and an
    async one: their metric lands in metrics.jsonl, their column in completions.jsonl."""
    steps = []

    def lengthy(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **kw):
        steps.append(trainer_state.global_step)
        log_metric("lengthy/mean_tokens", sum(map(len, completion_ids)) / len(completion_ids))
        log_extra("n_tokens", [len(c) for c in completion_ids])
        return [len(c) / 24 for c in completion_ids]

    async def constant(prompts, completions, **kw):
        return [0.5] * len(completions)

    assets = tiny_assets()
    GRPOTrainer(model=str(assets.sft_model), reward_funcs=[lengthy, constant],
                args=small_args(tmp_path, log_completions=True),
                train_dataset=load_jsonl(str(assets.data / "train.jsonl"))).train(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert steps == [0, 1] and all(0 < r["lengthy/mean_tokens"] <= 24 for r in rows)
    assert all(r["rewards/constant/mean"] == 0.5 for r in rows)
    completions = [json.loads(line) for line in open(tmp_path / "completions.jsonl")]
    assert all(isinstance(c["n_tokens"], int) and c["n_tokens"] > 0 for c in completions)


def test_num_generations_eval_samples_several_completions_per_held_out_prompt():
    """TRL's num_generations_eval: N sampled completions per prompt (seeded, so repeatable),
    their mean exact match and pass@N; None stays greedy."""
    from trainer.data import evaluate_exact_match

    assets = tiny_assets()
    model = AutoModelForCausalLM.from_pretrained(assets.sft_model)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.sft_model)
    rows = load_jsonl(str(assets.data / "heldout.jsonl"))
    rows = [rows[i] for i in range(6)]
    greedy = evaluate_exact_match(model, tok, rows, max_new_tokens=16)
    assert set(greedy) == {"eval/exact_match", "eval/format"}
    a = evaluate_exact_match(model, tok, rows, max_new_tokens=16, num_generations=3, seed=5)
    b = evaluate_exact_match(model, tok, rows, max_new_tokens=16, num_generations=3, seed=5, batch_size=4)
    assert a == b and set(a) == {"eval/exact_match", "eval/format", "eval/pass@3"}
    assert a["eval/exact_match"] <= a["eval/pass@3"] <= 1


def test_disable_dropout_zeroes_every_dropout_module_as_trl_does(tmp_path):
    """TRL's disable_dropout: every nn.Dropout of the policy gets p = 0 (its
    disable_dropout_in_model); off, they are left alone."""
    assets = tiny_assets()
    for disable, expected in ((True, 0.0), (False, 0.3)):
        model = AutoModelForCausalLM.from_pretrained(assets.sft_model)
        model.model.extra_dropout = torch.nn.Dropout(0.3)  # Qwen2 itself uses functional dropout
        from transformers import AutoTokenizer

        GRPOTrainer(model=model, reward_funcs=["format"], args=small_args(tmp_path, disable_dropout=disable),
                    train_dataset=load_jsonl(str(assets.data / "train.jsonl")),
                    processing_class=AutoTokenizer.from_pretrained(assets.sft_model))
        assert model.model.extra_dropout.p == expected
