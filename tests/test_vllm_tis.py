"""TIS weights against hand-computed values, and the vLLM config section (no vLLM needed)."""
import math

import pytest
import torch

from hdc.config import from_dict
from hdc.errors import UserError
from trainer.algorithm import pad_logprobs, tis_metrics, tis_weights
from trainer.vllm_backend import VLLMConfig

# Two sequences; the second has one padding position.
TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.2, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_token_level_is_the_capped_ratio_per_token():
    w = tis_weights(TRAINER, SAMPLER, MASK, cap=2.0, level="token")
    # exp(0.5)=1.6487, exp(-1)=0.3679, exp(0)=1 | exp(1)=2.718 -> cap 2, exp(0.2)=1.2214, padding -> 0
    expected = torch.tensor([[math.exp(0.5), math.exp(-1.0), 1.0], [2.0, math.exp(0.2), 0.0]])
    assert torch.allclose(w, expected, atol=1e-6)


def test_sequence_level_is_the_capped_product_on_every_token():
    w = tis_weights(TRAINER, SAMPLER, MASK, cap=2.0, level="sequence")
    # seq 0: exp(0.5 - 1 + 0) = exp(-0.5) = 0.6065; seq 1: exp(1 + 0.2) = 3.32 -> cap 2
    expected = torch.tensor([[math.exp(-0.5)] * 3, [2.0, 2.0, 0.0]])
    assert torch.allclose(w, expected, atol=1e-6)


def test_none_level_and_no_gradient_and_no_overflow():
    assert torch.equal(tis_weights(TRAINER, SAMPLER, MASK, 2.0, "none"), MASK.float())
    logp = TRAINER.clone().requires_grad_(True)
    assert not tis_weights(logp, SAMPLER, MASK, 2.0).requires_grad
    huge = tis_weights(torch.full((1, 400), 0.0), torch.full((1, 400), -5.0), torch.ones(1, 400), 3.0, "sequence")
    assert torch.allclose(huge, torch.full((1, 400), 3.0))  # exp(2000) would overflow; log space does not
    with pytest.raises(ValueError, match="level must be one of token, sequence, none"):
        tis_weights(TRAINER, SAMPLER, MASK, 2.0, "batch")


def test_metrics_are_masked_token_means():
    m = tis_metrics(TRAINER, SAMPLER, MASK, cap=2.0)
    assert m["tis/weight_mean"] == pytest.approx((math.exp(0.5) + math.exp(-1) + 1 + 2 + math.exp(0.2)) / 5)
    assert m["tis/clipped_fraction"] == pytest.approx(1 / 5)
    assert m["tis/logp_abs_diff_mean"] == pytest.approx((0.5 + 1 + 0 + 1 + 0.2) / 5)


def test_pad_logprobs_right_pads_with_zero():
    assert torch.equal(pad_logprobs([[-1.0, -2.0], [-3.0]], 3), torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]]))


def test_vllm_config_section_validates_with_field_names():
    cfg = from_dict(VLLMConfig, {"mode": "server", "server_port": 8123, "tis_level": "sequence"}, "vllm")
    assert (cfg.mode, cfg.server_port, cfg.tis_cap) == ("server", 8123, 2.0)
    with pytest.raises(UserError, match="vllm.mode: must be one of colocate, server, got 'remote'"):
        from_dict(VLLMConfig, {"mode": "remote"}, "vllm")
    with pytest.raises(UserError, match="vllm.gpu_memory_utilization: must be a number > 0 and <= 1"):
        from_dict(VLLMConfig, {"gpu_memory_utilization": 1.5}, "vllm")


def test_a_nan_sampler_logprob_gives_weight_one_as_in_trl():
    # vLLM can return NaN (or no) log-probs: TRL's nan_to_num makes that token's difference 0
    sampler = SAMPLER.clone()
    sampler[0, 1] = math.nan
    w = tis_weights(TRAINER, sampler, MASK, cap=2.0, level="token")
    assert w[0, 1].item() == 1.0 and not torch.isnan(w).any()
    seq = tis_weights(TRAINER, sampler, MASK, cap=2.0, level="sequence")  # exp(0.5 + 0 + 0)
    assert seq[0, 0].item() == pytest.approx(math.exp(0.5))
    m = tis_metrics(TRAINER, sampler, MASK, cap=2.0)
    assert m["tis/logp_abs_diff_mean"] == pytest.approx((0.5 + 0 + 1.0 + 0.2) / 4)  # the NaN token left out
    assert torch.isnan(pad_logprobs([[-1.0, None]], 2)[0, 1])


def test_trl_importance_sampling_names_are_aliases_of_the_tis_options():
    cfg = from_dict(VLLMConfig, {"vllm_importance_sampling_mode": "sequence_truncate",
                                 "vllm_importance_sampling_clip_max": 3.0}, "vllm")
    assert (cfg.tis_level, cfg.tis_cap) == ("sequence", 3.0)
    assert from_dict(VLLMConfig, {"vllm_importance_sampling_correction": False}, "vllm").tis_level == "none"
    assert from_dict(VLLMConfig, {"vllm_importance_sampling_cap": 4.0}, "vllm").tis_cap == 4.0
    with pytest.raises(UserError, match="vllm.vllm_importance_sampling_mode: must be one of token_truncate, "
                                        "sequence_truncate, got 'sequence_mask'"):
        from_dict(VLLMConfig, {"vllm_importance_sampling_mode": "sequence_mask"}, "vllm")
