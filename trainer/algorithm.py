"""The GRPO maths: group-relative advantages, per-token log-probs, and the clipped loss.

Pure tensor functions with no model, data or process group in sight, so each one is
tested against numbers worked out by hand (tests/test_trainer_algorithm.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.config import LOSS_TYPES, TIS_LEVELS

ADVANTAGE_EPS = 1e-4  # (r - mean) / (std + 1e-4), as in the DeepSeekMath GRPO paper and TRL


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std ignoring NaNs; NaN where fewer than 2 values remain (TRL's trainer/utils.nanstd)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    count = (~torch.isnan(x)).sum(dim=dim)
    var = torch.nanmean((x - torch.nanmean(x, dim=dim, keepdim=True)) ** 2, dim=dim) * count / (count - 1)
    return torch.where(count > 1, var, torch.full_like(var, math.nan)).sqrt()


def reward_moments(rewards: torch.Tensor) -> list[float]:
    """[count, sum, sum of squares] of the non-NaN rewards: summed over processes, they give the batch std."""
    ok = rewards[~torch.isnan(rewards)]
    return [float(ok.numel()), float(ok.sum()), float((ok ** 2).sum())]


def std_from_moments(count: float, total: float, squares: float) -> float:
    """Unbiased std from reward_moments (summed over processes); NaN below 2 values, as nanstd."""
    if count < 2:
        return math.nan
    return math.sqrt(max(squares - total * total / count, 0.0) / (count - 1))


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     batch_std: float | None = None) -> torch.Tensor:
    """Advantage of each completion relative to the other completions of its prompt.

    rewards: (prompts * num_generations,), the completions of one prompt adjacent; NaN marks a
    completion no reward function could score (all returned None).
    A = r - mean_group, divided by (std + 1e-4) where std is the group's ("group"), the whole
    batch's ("batch"), or not divided ("none"). std is the unbiased sample std, as in TRL.
    As in TRL 1.16, NaN rewards are left out of every mean and std, and every advantage that
    comes out NaN (an unscorable completion, a group with fewer than two scores) is 0.
    `batch_std` gives the whole step's std when the batch is split over processes.
    """
    grouped = rewards.view(-1, num_generations)
    centred = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
        advantages = centred / (std + ADVANTAGE_EPS)
    elif scale_rewards == "batch":
        std = nanstd(rewards) if batch_std is None else torch.tensor(batch_std)
        advantages = centred / (std.expand_as(rewards) + ADVANTAGE_EPS)
    elif scale_rewards == "none":
        advantages = centred
    else:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    return torch.nan_to_num(advantages, nan=0.0)


def generation_order(n: int, seed: int, step: int) -> torch.Tensor:
    """The permutation applied to a generation batch before it is cut into micro-batches (TRL's
    shuffle_sequence_dict), from its own generator: the same on a resumed run, whatever ran before."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))


def token_logps(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature); logits (B, T, V), tokens (B, T) -> (B, T)."""
    logits = logits.float() / temperature
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / temperature) at every position: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, top_entropy_quantile: float) -> torch.Tensor:
    """Tokens whose entropy is in the top `top_entropy_quantile` of the micro-batch's masked tokens
    (entropy >= its (1 - q) quantile; TRL's get_high_entropy_mask, Wang et al. 2025 "80/20")."""
    valid = mask.bool()
    if not valid.any():
        return torch.zeros_like(valid)
    threshold = torch.quantile(entropies[valid].float(), 1 - top_entropy_quantile)
    return (entropies * mask >= threshold) & valid


@dataclass
class LossStats:
    """Masked means for logging (floats, detached): per token, or per sequence where the
    importance ratio is one per sequence (GSPO), as TRL's metrics."""

    kl: float
    clip_ratio_low: float
    clip_ratio_high: float
    tokens: int


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              loss_type: str, epsilon_low: float, epsilon_high: float, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None, max_completion_length: int | None = None,
              num_micro_batches: int = 1, num_items_in_batch: float | None = None,
              is_weights: torch.Tensor | None = None, importance_sampling_level: str = "token",
              delta: float | None = None, use_bias_correction_kl: bool = True,
              entropy_mask: torch.Tensor | None = None, sapo_temperature_pos: float = 1.0,
              sapo_temperature_neg: float = 1.05) -> tuple[torch.Tensor, LossStats]:
    """The GRPO objective for one micro-batch, aggregated as `loss_type` says (TRL 1.16's _compute_loss).

    logps, old_logps, ref_logps, mask: (B, T) over completion tokens; advantages: (B,).
    ratio r = exp(logps - old_logps) against the behaviour policy (old_logps = logps.detach()
    when each batch is used once): per token, or (importance_sampling_level "sequence", GSPO,
    Zheng et al. 2025) exp of the sequence's mean log-ratio, one per sequence.
    Policy term per token, by loss_type:
      grpo, bnpo, dr_grpo, dapo  -min(r A, clip(r, 1 - epsilon_low, 1 + epsilon_high) A), with r
                                 first capped at `delta` when set (two-sided clipping, Wang et al. 2025)
      cispo                      -min(r, epsilon_high).detach() A logp (MiniMax-M1: the weight is
                                 clipped, never the gradient)
      sapo                       -sigmoid(tau (r - 1)) 4 / tau A, tau = sapo_temperature_pos when A > 0
                                 else sapo_temperature_neg (soft gate instead of a hard clip)
    then times entropy_mask (top_entropy_quantile), times is_weights (B, T) when rollouts come
    from another engine (TIS: tis_weights), plus beta x k3 KL to the reference:
    k3 = exp(ref - logp) - (ref - logp) - 1, times r when use_bias_correction_kl (so that it
    estimates the KL of the current policy from samples of the behaviour one; r carries gradient).

    The return value is this micro-batch's share of the step loss, so that summing the
    gradients of all micro-batches gives the gradient of the step loss:
      grpo, sapo     mean over each sequence's tokens, then over sequences   / num_micro_batches
      bnpo           mean over all tokens of the micro-batch                  / num_micro_batches
      dr_grpo        sum over tokens / (B * max_completion_length)            / num_micro_batches
      dapo, cispo    sum over tokens / num_items_in_batch, the token count of the optimizer update
                     over all micro-batches (and processes: pass global count / processes when
                     gradients are averaged across processes)
    """
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1)
    log_ratio = logps - old_logps
    if importance_sampling_level == "token":
        log_weights = log_ratio
    elif importance_sampling_level == "sequence":
        log_weights = ((log_ratio * mask).sum(1) / mask.sum(1).clamp(min=1)).unsqueeze(1)
    else:
        raise ValueError(f"importance_sampling_level must be token or sequence, got {importance_sampling_level!r}")
    ratio = torch.exp(log_weights)  # (B, T), or (B, 1) per sequence

    kl = None
    if beta != 0.0:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        if use_bias_correction_kl:
            kl = kl * ratio

    if loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=epsilon_high).detach() * adv * logps
    elif loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
        if delta is not None:
            ratio = torch.clamp(ratio, max=delta)
        per_token = -torch.min(ratio * adv, clipped * adv)
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, sapo_temperature_pos, sapo_temperature_neg)
        per_token = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
    else:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if entropy_mask is not None:
        per_token = per_token * entropy_mask
    if is_weights is not None:  # truncated importance sampling: sampler (vLLM) vs trainer log-probs
        per_token = per_token * is_weights
    if kl is not None:
        per_token = per_token + beta * kl

    masked_sum = (per_token * mask).sum()
    if loss_type in ("grpo", "sapo"):
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean() / num_micro_batches
    elif loss_type == "bnpo":
        loss = masked_sum / mask.sum().clamp(min=1) / num_micro_batches
    elif loss_type == "dr_grpo":
        loss = masked_sum / (per_token.shape[0] * max_completion_length) / num_micro_batches
    else:  # dapo, cispo
        loss = masked_sum / max(float(num_items_in_batch), 1.0)

    with torch.no_grad():
        def masked_mean(x: torch.Tensor) -> float:  # per sequence when x holds one value per sequence
            if x.shape[1] == 1:
                return float(x.float().mean())
            return float((x * mask).sum() / mask.sum().clamp(min=1))

        if loss_type == "cispo":  # TRL's cispo_clip_ratio: weights capped where they carry a positive advantage
            low, high = torch.zeros_like(ratio), ((ratio > epsilon_high) & (adv > 0)).to(mask.dtype)
        elif loss_type == "sapo":  # nothing is clipped
            low = high = torch.zeros_like(ratio)
        else:
            low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
            high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        stats = LossStats(kl=masked_mean(kl) if kl is not None else 0.0, clip_ratio_low=masked_mean(low),
                          clip_ratio_high=masked_mean(high), tokens=int(mask.sum()))
    return loss, stats


# --------------------------------------------------------------------------- TIS
def tis_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                level: str = "token") -> torch.Tensor:
    """Truncated importance-sampling weights, (B, T), no gradient, 0 where mask is 0.

    token:    w_t = min(exp(trainer_logp_t - sampler_logp_t), cap)
    sequence: w   = min(prod_t exp(trainer_logp_t - sampler_logp_t), cap) over the masked tokens,
              the same w on every token of the sequence (computed in log space: no overflow)
    none:     w_t = 1
    A NaN sampler log-prob (vLLM can return them) counts as no mismatch (weight 1), as TRL's
    nan_to_num. The policy-gradient term of each token is multiplied by w (Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training"; TRL's
    vllm_importance_sampling_correction with a *_truncate mode).
    """
    with torch.no_grad():
        m = mask.to(torch.float32)
        delta = torch.nan_to_num((trainer_logp.float() - sampler_logp.float()) * m, nan=0.0)
        log_cap = torch.log(torch.tensor(float(cap)))
        if level == "token":
            w = torch.exp(torch.clamp(delta, max=log_cap))
        elif level == "sequence":
            w = torch.exp(torch.clamp(delta.sum(dim=1, keepdim=True), max=log_cap)).expand_as(delta)
        elif level == "none":
            w = torch.ones_like(delta)
        else:
            raise ValueError(f"level must be one of {', '.join(TIS_LEVELS)}, got {level!r}")
        return w * m


def tis_metrics(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                level: str = "token") -> dict[str, float]:
    """Log names: tis/weight_mean, tis/clipped_fraction, tis/logp_abs_diff_mean (masked token means;
    the log-prob difference leaves NaN sampler log-probs out, as TRL's sampling_logp_difference)."""
    with torch.no_grad():
        m = mask.to(torch.float32)
        n = float(m.sum().clamp(min=1))
        w = tis_weights(trainer_logp, sampler_logp, mask, cap, level)
        raw = tis_weights(trainer_logp, sampler_logp, mask, float("inf"), level)
        diff = (trainer_logp.float() - sampler_logp.float()).abs()
        known = (m > 0) & ~torch.isnan(diff)
        return {"tis/weight_mean": float(w.sum()) / n,
                "tis/clipped_fraction": float(((raw > cap) & (m > 0)).float().sum()) / n,
                "tis/logp_abs_diff_mean": float(diff[known].sum()) / max(float(known.sum()), 1.0)}


def pad_logprobs(logprobs: list[list[float | None]], width: int) -> torch.Tensor:
    """Right-pad per-completion sampler log-probs to (B, width) with 0, like the completion tensor
    (None, a log-prob the engine did not return, becomes NaN: tis_weights reads it as weight 1)."""
    out = torch.zeros((len(logprobs), width), dtype=torch.float32)
    for i, row in enumerate(logprobs):
        out[i, :len(row)] = torch.tensor([math.nan if v is None else v for v in row[:width]], dtype=torch.float32)
    return out


@dataclass(frozen=True)
class TIS:
    """Truncated importance sampling as the trainer is handed it: level (token, sequence, none) and cap."""

    level: str = "none"
    cap: float = 2.0


@torch.no_grad()
def mix_reference(ref_model: torch.nn.Module, model: torch.nn.Module, alpha: float) -> None:
    """ref <- alpha * policy + (1 - alpha) * ref, parameter by parameter (TRL's SyncRefModelCallback,
    TR-DPO: Gorbatovski et al. 2024)."""
    for ref, cur in zip(ref_model.parameters(), model.parameters()):
        ref.mul_(1 - alpha).add_(cur.detach().to(ref.dtype), alpha=alpha)
