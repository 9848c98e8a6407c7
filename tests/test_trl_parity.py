"""The cross-check against TRL itself: identical tensors through TRL 1.16's loss and advantage code
and through hdc's, for every shared loss type and option; equal to 1e-6.

TRL's own code paths run on a real `trl.GRPOTrainer` built on the tiny local model: only the
model forward (`_get_per_token_logps_and_entropies`) and the sampling (`_generate`) are replaced
by the hand-made tensors, so `_compute_loss` and `_generate_and_score_completions` are TRL's.
Needs `pip install -e .[bench]` (trl==1.16.0); skipped without it.
"""
import itertools
import math

import pytest
import torch

trl = pytest.importorskip("trl", reason="the TRL cross-check needs trl==1.16.0: pip install -e .[bench]")
pytestmark = pytest.mark.slow

from trainer.algorithm import group_advantages, grpo_loss, high_entropy_mask  # noqa: E402
from trainer.rewards import score  # noqa: E402

if trl.__version__ != "1.16.0":
    pytest.skip(f"the cross-check is written against trl 1.16.0, found {trl.__version__}", allow_module_level=True)

B, T = 6, 7  # completions per micro-batch, completion tokens


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """A real TRL GRPOTrainer on the tiny local model (no download)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trainer.selfcheck.assets import tiny_assets

    model = str(tiny_assets(sft_steps=1).model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.pad_token = tok.pad_token or tok.eos_token
    args = trl.GRPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=B,
                          num_generations=3, max_completion_length=T, report_to=[], use_cpu=True, logging_steps=1,
                          gradient_accumulation_steps=2)
    return trl.GRPOTrainer(model=model, reward_funcs=[math_reward, code_reward], args=args, processing_class=tok,
                           train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 12}))


def math_reward(prompts, completions, task, **kwargs):
    return [float(c.endswith("2")) if t == "math" else None for c, t in zip(completions, task)]


def code_reward(prompts, completions, task, **kwargs):
    return [0.5 * len(c) if t == "code" else None for c, t in zip(completions, task)]


def _tensors(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    for i, n in enumerate([7, 5, 3, 7, 1, 6]):  # ragged completions
        mask[i, n:] = 0
    logps = -torch.rand(B, T, generator=g) * 2
    return {"logps": logps, "old": logps + (torch.rand(B, T, generator=g) - 0.5) * 0.8,
            "ref": logps + (torch.rand(B, T, generator=g) - 0.5) * 0.6,
            "entropies": torch.rand(B, T, generator=g) * 3, "mask": mask,
            "advantages": torch.randn(B, generator=g), "num_items": torch.tensor(float(mask.sum() * 2 + 5))}


def _trl_loss(tr, t, *, loss_type, beta, bias_correction, off_policy, delta=None, level="token", quantile=1.0,
              steps_per_generation=2):
    tr.model.train()
    tr.loss_type, tr.beta, tr.importance_sampling_level, tr.top_entropy_quantile = loss_type, beta, level, quantile
    tr.epsilon_low, tr.epsilon_high = 0.2, (5.0 if loss_type == "cispo" else 0.28)
    tr.args.delta, tr.args.use_bias_correction_kl = delta, bias_correction
    tr.args.steps_per_generation, tr.current_gradient_accumulation_steps = steps_per_generation, 2
    logps = t["logps"].clone().requires_grad_()
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logps, t["entropies"], None)
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": t["mask"],
              "advantages": t["advantages"], "num_items_in_batch": t["num_items"]}
    if off_policy:
        inputs["old_per_token_logps"] = t["old"]
    if beta:
        inputs["ref_per_token_logps"] = t["ref"]
    tr._metrics["train"].clear()
    loss = tr._compute_loss(tr.model, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}
    return loss.item(), logps.grad, metrics


def _hdc_loss(t, *, loss_type, beta, bias_correction, off_policy, delta=None, level="token", quantile=1.0,
              steps_per_generation=2):
    logps = t["logps"].clone().requires_grad_()
    per_pass = steps_per_generation // 2  # optimizer updates per pass over the generation batch
    loss, stats = grpo_loss(
        logps, t["old"] if off_policy else logps.detach(), t["advantages"], t["mask"], loss_type=loss_type,
        epsilon_low=0.2, epsilon_high=5.0 if loss_type == "cispo" else 0.28, beta=beta,
        ref_logps=t["ref"] if beta else None, max_completion_length=T, num_micro_batches=2,
        num_items_in_batch=float(t["num_items"]) / per_pass, importance_sampling_level=level, delta=delta,
        use_bias_correction_kl=bias_correction,
        entropy_mask=high_entropy_mask(t["entropies"], t["mask"], quantile) if quantile < 1 else None)
    loss.backward()
    return loss.item(), logps.grad, stats


LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]
KL = [(0.0, True), (0.04, True), (0.04, False)]  # beta, use_bias_correction_kl
CASES = [dict(loss_type=lt, beta=b, bias_correction=bc, off_policy=off)
         for lt, (b, bc), off in itertools.product(LOSS_TYPES, KL, (False, True))]
CASES += [dict(loss_type=lt, beta=0.04, bias_correction=True, off_policy=True, **extra)
          for lt in LOSS_TYPES
          for extra in ({"level": "sequence"}, {"quantile": 0.4}, {"steps_per_generation": 4})]
CASES += [dict(loss_type=lt, beta=0.04, bias_correction=True, off_policy=True, delta=1.1, **extra)
          for lt in ("grpo", "bnpo", "dr_grpo", "dapo") for extra in ({}, {"level": "sequence"})]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_loss_gradient_and_metrics_equal_trl(trl_trainer, case):
    t = _tensors(seed=len(str(case)))
    ref_loss, ref_grad, metrics = _trl_loss(trl_trainer, t, **case)
    loss, grad, stats = _hdc_loss(t, **case)
    assert loss == pytest.approx(ref_loss, abs=1e-6, rel=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=1e-6)
    if case["beta"]:
        assert stats.kl == pytest.approx(metrics["kl"], abs=1e-6)
    if case["loss_type"] == "cispo":
        assert stats.clip_ratio_high == pytest.approx(metrics["cispo_clip_ratio"], abs=1e-6)
    elif case["loss_type"] != "sapo":
        assert stats.clip_ratio_low == pytest.approx(metrics["clip_ratio/low_mean"], abs=1e-6)
        assert stats.clip_ratio_high == pytest.approx(metrics["clip_ratio/high_mean"], abs=1e-6)


# The multi-task example: math rows (code_reward says None), code rows (math_reward says None), and
# chat rows neither scores; 3 completions per prompt. Group 2 mixes: one row no function scores.
ROWS = [("math", "=2"), ("math", "=3"), ("math", "=2"),
        ("code", "print(1)"), ("code", "x"), ("code", "pass"),
        ("chat", "hi"), ("chat", "hello"), ("chat", "hey"),
        ("math", "=2"), ("chat", "??"), ("math", "=5")]


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_multi_task_advantages_equal_trl(trl_trainer, scale_rewards):
    tok = trl_trainer.processing_class
    completions = [c for _, c in ROWS]
    ids = [tok(c, add_special_tokens=False)["input_ids"] or [0] for c in completions]
    trl_trainer._generate = lambda prompts: ([[1]] * len(prompts), ids, None, completions, None, {}, None, None)
    trl_trainer.scale_rewards, trl_trainer.beta = scale_rewards, 0.0
    trl_trainer.model.train()
    trl_trainer._metrics["train"].clear()
    inputs = [{"prompt": "q", "task": task} for task, _ in ROWS]
    out = trl_trainer._generate_and_score_completions(inputs)

    per_func, totals = score([math_reward, code_reward], [1.0, 1.0], ["q"] * len(ROWS), completions,
                             {"task": [task for task, _ in ROWS]})
    rewards = torch.tensor(totals)
    ours = group_advantages(rewards, 3, scale_rewards)
    assert torch.allclose(ours, out["advantages"], atol=1e-6)
    assert [math.isnan(x) for x in totals] == [task == "chat" for task, _ in ROWS]
    assert ours[6:9].tolist() == [0.0, 0.0, 0.0] and ours[10] == 0.0
    # rewards/total/mean as hdc logs it (unscorable rows left out) is TRL's `reward`
    assert float(rewards[~rewards.isnan()].mean()) == pytest.approx(trl_trainer._metrics["train"]["reward"][-1])
