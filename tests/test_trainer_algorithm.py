"""GRPO maths against hand-computed numbers (the arithmetic is in the comments)."""
import math

import pytest
import torch

from trainer.algorithm import group_advantages, grpo_loss, token_logps

# Two groups of two completions. Group 1: rewards 1, 3 -> mean 2, unbiased std sqrt(2).
# Group 2: rewards 2, 2 -> mean 2, std 0, advantages exactly 0.
REWARDS = torch.tensor([1.0, 3.0, 2.0, 2.0])


def test_advantages_scaled_by_group_std():
    a = 1 / (math.sqrt(2) + 1e-4)
    assert group_advantages(REWARDS, 2, "group").tolist() == pytest.approx([-a, a, 0.0, 0.0])


def test_advantages_scaled_by_batch_std():
    # batch: mean 2, squared deviations 1+1+0+0 = 2, unbiased variance 2/3
    a = 1 / (math.sqrt(2 / 3) + 1e-4)
    assert group_advantages(REWARDS, 2, "batch").tolist() == pytest.approx([-a, a, 0.0, 0.0])


def test_advantages_unscaled():
    assert group_advantages(REWARDS, 2, "none").tolist() == [-1.0, 1.0, 0.0, 0.0]


# A micro-batch of 2 completions, 3 token slots; the third token of row 0 is padding.
# Importance ratios r = exp(logp - old_logp) are chosen directly (old_logp = 0).
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [0.7, 1.0, 1.3]], dtype=torch.float64)
ADV = torch.tensor([1.0, -2.0], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
# Clipping to [0.8, 1.2] and taking min(r A, clip(r) A), the per-token loss -min(...) is:
#   row 0 (A = +1): r 1.0 -> -1.0 ; r 1.5 -> clip 1.2 -> -1.2 ; (padding)
#   row 1 (A = -2): r 0.7 -> min(-1.4, -1.6) -> 1.6 ; r 1.0 -> 2.0 ; r 1.3 -> min(-2.6, -2.4) -> 2.6
# masked sum = -2.2 + 6.2 = 4.0 over 5 tokens
EXPECTED = {
    "grpo": ((-2.2 / 2) + (6.2 / 3)) / 2,  # mean per sequence, then over sequences = 0.48333
    "bnpo": 4.0 / 5,                       # mean over the micro-batch's tokens
    "dr_grpo": 4.0 / (2 * 4),              # sum / (batch 2 x max_completion_length 4)
    "dapo": 4.0 / 10,                      # sum / tokens of the whole step (10 here, given)
}


def _loss(loss_type, logps=None, **kw):
    logps = RATIOS.log() if logps is None else logps
    return grpo_loss(logps, torch.zeros_like(logps), ADV, MASK, loss_type=loss_type, epsilon_low=0.2,
                     epsilon_high=0.2, max_completion_length=4, num_items_in_batch=10, **kw)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_variants_match_hand_computed_values(loss_type):
    loss, _ = _loss(loss_type)
    assert loss.item() == pytest.approx(EXPECTED[loss_type])


def test_clip_ratios_count_tokens_clipped_in_the_objective():
    _, stats = _loss("bnpo")
    assert stats.clip_ratio_high == pytest.approx(1 / 5)  # row 0, r = 1.5 with A > 0
    assert stats.clip_ratio_low == pytest.approx(1 / 5)   # row 1, r = 0.7 with A < 0
    assert stats.tokens == 5


def test_k3_kl_term_is_added_times_beta():
    # k3 with ref_logp = 0: 1/r + log r - 1 -> 0, (0.0721), (padding) | 0.0719, 0, 0.0316
    k3 = (1 / RATIOS + RATIOS.log() - 1) * MASK
    loss, stats = _loss("bnpo", beta=0.1, ref_logps=torch.zeros_like(RATIOS))
    assert stats.kl == pytest.approx(k3.sum().item() / 5)
    assert loss.item() == pytest.approx((4.0 + 0.1 * k3.sum().item()) / 5)


def test_gradient_flows_only_through_unclipped_tokens():
    logps = RATIOS.log().requires_grad_()
    loss, _ = _loss("bnpo", logps=logps)
    loss.backward()
    # d(-r A)/d logp = -A r, divided by the 5 tokens; clipped tokens and padding get 0.
    expected = torch.tensor([[-1.0 * 1.0 / 5, 0.0, 0.0], [0.0, 2.0 * 1.0 / 5, 2.0 * 1.3 / 5]], dtype=torch.float64)
    assert torch.allclose(logps.grad, expected)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_add_up_to_the_full_batch_gradient(loss_type):
    full = RATIOS.log().requires_grad_()
    grpo_loss(full, full.detach(), ADV, MASK, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2,
              max_completion_length=4, num_items_in_batch=5)[0].backward()
    split = RATIOS.log().requires_grad_()
    for rows in (slice(0, 1), slice(1, 2)):
        grpo_loss(split[rows], split[rows].detach(), ADV[rows], MASK[rows], loss_type=loss_type, epsilon_low=0.2,
                  epsilon_high=0.2, max_completion_length=4, num_micro_batches=2, num_items_in_batch=5)[0].backward()
    assert torch.allclose(full.grad, split.grad)


def test_at_ratio_one_the_gradient_is_the_policy_gradient():
    # num_iterations == 1: old_logps is logps.detach(), ratio == 1, gradient = -A / tokens
    logps = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = grpo_loss(logps, logps.detach(), ADV, MASK, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.2)
    loss.backward()
    assert torch.allclose(logps.grad, -ADV.unsqueeze(1) * MASK / 5)


def test_token_logps_is_log_softmax_at_the_token():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert token_logps(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # temperature 2 halves the logits: p = (1/(1+sqrt 3), sqrt 3/(1+sqrt 3))
    assert token_logps(logits, torch.tensor([[0]]), 2.0).item() == pytest.approx(-math.log(1 + math.sqrt(3)))
