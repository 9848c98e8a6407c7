"""GRPO maths against hand-computed numbers (the arithmetic is in the comments)."""
import math

import pytest
import torch

from trainer.algorithm import group_advantages, grpo_loss, high_entropy_mask, token_logps

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


NAN = math.nan
# Group 1: 1, 3, unscorable -> mean 2, std sqrt(2) over the two scores; group 2: 2, 4, 6 -> mean 4, std 2.
PARTIAL = torch.tensor([1.0, 3.0, NAN, 2.0, 4.0, 6.0])


def test_unscorable_completions_are_left_out_of_the_group_and_get_advantage_zero():
    a, b = 1 / (math.sqrt(2) + 1e-4), 2 / (2 + 1e-4)
    assert group_advantages(PARTIAL, 3, "group").tolist() == pytest.approx([-a, a, 0.0, -b, 0.0, b])
    assert group_advantages(PARTIAL, 3, "none").tolist() == [-1.0, 1.0, 0.0, -2.0, 0.0, 2.0]


def test_unscorable_completions_are_left_out_of_the_batch_std():
    # the 5 scores 1 3 2 4 6: mean 3.2, squared deviations 4.84 0.04 1.44 0.64 7.84 = 14.8, variance 14.8 / 4
    s = math.sqrt(14.8 / 4) + 1e-4
    assert group_advantages(PARTIAL, 3, "batch").tolist() == pytest.approx([-1 / s, 1 / s, 0.0, -2 / s, 0.0, 2 / s])


def test_a_group_with_a_single_score_has_advantage_zero():
    # TRL: nanstd of one value is NaN, so is the advantage, then 0
    assert group_advantages(torch.tensor([5.0, NAN, NAN, NAN]), 2, "group").tolist() == [0.0, 0.0, 0.0, 0.0]


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
    loss, stats = _loss("bnpo", beta=0.1, ref_logps=torch.zeros_like(RATIOS), use_bias_correction_kl=False)
    assert stats.kl == pytest.approx(k3.sum().item() / 5)
    assert loss.item() == pytest.approx((4.0 + 0.1 * k3.sum().item()) / 5)


def test_bias_corrected_kl_is_k3_times_the_ratio_in_loss_and_metric():
    # TRL 1.16 default: k3 x r (r = 1.0 1.5 | 0.7 1.0 1.3): 0, 0.1082 | 0.0503, 0, 0.0411
    k3r = (1 / RATIOS + RATIOS.log() - 1) * RATIOS * MASK
    loss, stats = _loss("bnpo", beta=0.1, ref_logps=torch.zeros_like(RATIOS))
    assert stats.kl == pytest.approx(k3r.sum().item() / 5)
    assert loss.item() == pytest.approx((4.0 + 0.1 * k3r.sum().item()) / 5)


def test_bias_corrected_kl_gradient_on_policy_flows_through_the_ratio():
    # ratio == 1 but carries gradient: d/dlogp [k3 x exp(logp - old)] = dk3 + k3. With ref = 0, logp = l:
    # k3 = e^-l + l - 1, dk3 = 1 - e^-l; one token, beta 1, advantage 0, bnpo over 1 token.
    l = torch.tensor([[-0.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.zeros_like(l)
    grads = {}
    for on in (True, False):
        l.grad = None
        loss, _ = grpo_loss(l, l.detach(), torch.zeros(1, dtype=torch.float64), torch.ones(1, 1), loss_type="bnpo",
                            epsilon_low=0.2, epsilon_high=0.2, beta=1.0, ref_logps=ref, use_bias_correction_kl=on)
        loss.backward()
        grads[on] = l.grad.item()
    k3, dk3 = math.exp(0.5) - 0.5 - 1, 1 - math.exp(0.5)
    assert grads[False] == pytest.approx(dk3)
    assert grads[True] == pytest.approx(dk3 + k3)


def test_gspo_ratio_is_one_per_sequence_from_the_mean_log_ratio():
    # row 0: mean(log 1.0, log 1.5) -> r = sqrt(1.5) = 1.2247, clipped at 1.2 (A = +1): -1.2 on both tokens
    # row 1: r = (0.7 x 1.0 x 1.3)^(1/3) = 0.9691, inside the range (A = -2): +1.9382 on each token
    loss, stats = _loss("grpo", importance_sampling_level="sequence")
    r1 = (0.7 * 1.3) ** (1 / 3)
    assert loss.item() == pytest.approx((-1.2 + 2 * r1) / 2)
    assert stats.clip_ratio_high == pytest.approx(1 / 2)  # one sequence of two: a per-sequence mean


def test_delta_caps_the_unclipped_ratio_of_negative_advantages():
    # A = -2, r = 1.3: -min(rA, clip(r)A) = 2.6; with delta 1.25 r is capped first: min(-2.5, -2.4) -> 2.5
    loss, _ = _loss("bnpo", delta=1.25)
    assert loss.item() == pytest.approx((4.0 - 0.1) / 5)


def test_cispo_weights_logp_by_the_detached_capped_ratio():
    # per token -min(r, eps_high 1.2) A logp: row 0 (A 1): -(1 x 0), -(1.2 x log 1.5)
    #                                         row 1 (A -2): 2 x 0.7 log 0.7, 0, 2 x 1.2 log 1.3
    logps = RATIOS.log().requires_grad_()
    # for cispo, epsilon_high is the cap of the ratio itself (TRL)
    loss, stats = grpo_loss(logps, torch.zeros_like(logps), ADV, MASK, loss_type="cispo", epsilon_low=0.2,
                            epsilon_high=1.2, num_items_in_batch=10)
    total = -1.2 * math.log(1.5) + 2 * 0.7 * math.log(0.7) + 2 * 1.2 * math.log(1.3)
    assert loss.item() == pytest.approx(total / 10)  # global token mean, 10 given
    loss.backward()  # gradient -w A / 10 on every token, clipped or not
    w = torch.clamp(RATIOS, max=1.2)
    assert torch.allclose(logps.grad, -w * ADV.unsqueeze(1) * MASK / 10)
    assert stats.clip_ratio_high == pytest.approx(1 / 5)  # r = 1.5 > 1.2 with A > 0


def test_sapo_soft_gate():
    # -sigmoid(tau (r - 1)) 4 / tau A, tau 1 for A > 0, 1.05 for A < 0; per-sequence means (grpo)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    row0 = [-sig(r - 1) * 4 for r in (1.0, 1.5)]
    row1 = [sig(1.05 * (r - 1)) * 4 / 1.05 * 2 for r in (0.7, 1.0, 1.3)]
    loss, _ = _loss("sapo")
    assert loss.item() == pytest.approx((sum(row0) / 2 + sum(row1) / 3) / 2)


def test_high_entropy_mask_keeps_the_top_quantile_of_real_tokens():
    entropies = torch.tensor([[0.1, 0.9, 5.0], [0.5, 0.3, 0.7]])  # 5.0 is padding
    # real tokens 0.1 0.9 0.5 0.3 0.7: the 0.6 quantile is 0.58 -> keep 0.9 and 0.7
    mask = high_entropy_mask(entropies, MASK, 0.4)
    assert mask.tolist() == [[False, True, False], [False, False, True]]
    loss, _ = _loss("bnpo", entropy_mask=mask)  # only r 1.5 (A 1: -1.2) and r 1.3 (A -2: 2.6) count
    assert loss.item() == pytest.approx((-1.2 + 2.6) / 5)


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
