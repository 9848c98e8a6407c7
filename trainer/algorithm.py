"""The GRPO maths: group-relative advantages, per-token log-probs, and the clipped loss.

Pure tensor functions with no model, data or process group in sight, so each one is
tested against numbers worked out by hand (tests/test_trainer_algorithm.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGE_EPS = 1e-4  # (r - mean) / (std + 1e-4), as in the DeepSeekMath GRPO paper and TRL


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     batch_std: float | None = None) -> torch.Tensor:
    """Advantage of each completion relative to the other completions of its prompt.

    rewards: (prompts * num_generations,), the completions of one prompt adjacent.
    A = r - mean_group, divided by (std + 1e-4) where std is the group's ("group"), the whole
    batch's ("batch"), or not divided ("none"). std is the unbiased sample std, as in TRL.
    `batch_std` gives the whole step's std when the batch is split over processes.
    """
    grouped = rewards.view(-1, num_generations)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        std = grouped.std(dim=1).repeat_interleave(num_generations)
    elif scale_rewards == "batch":
        std = (rewards.std() if batch_std is None else torch.tensor(batch_std)).expand_as(rewards)
    elif scale_rewards == "none":
        return centred
    else:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    return centred / (std + ADVANTAGE_EPS)


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


@dataclass
class LossStats:
    """Masked token means for logging (floats, detached)."""

    kl: float
    clip_ratio_low: float
    clip_ratio_high: float
    tokens: int


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              loss_type: str, epsilon_low: float, epsilon_high: float, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None, max_completion_length: int | None = None,
              num_micro_batches: int = 1, num_items_in_batch: float | None = None,
              is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, LossStats]:
    """The clipped GRPO objective for one micro-batch, aggregated as `loss_type` says.

    logps, old_logps, ref_logps, mask: (B, T) over completion tokens; advantages: (B,).
    ratio = exp(logps - old_logps) against the behaviour policy (old_logps = logps.detach()
    when each batch is used once), clipped to [1 - epsilon_low, 1 + epsilon_high].
    KL to the reference: k3 = exp(ref - logp) - (ref - logp) - 1, times beta.
    is_weights (B, T), when rollouts come from another engine: the policy term is multiplied
    by min(p_trainer / p_sampler, cap) per token (TIS), before the KL term is added.

    The return value is this micro-batch's share of the step loss, so that summing the
    gradients of all micro-batches gives the gradient of the step loss:
      grpo     mean over each sequence's tokens, then over sequences      / num_micro_batches
      bnpo     mean over all tokens of the micro-batch                     / num_micro_batches
      dr_grpo  sum over tokens / (B * max_completion_length)               / num_micro_batches
      dapo     sum over tokens / num_items_in_batch, the token count of the whole step over all
               micro-batches (and processes: pass global count / processes when gradients
               are averaged across processes)
    """
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if is_weights is not None:  # truncated importance sampling: sampler (vLLM) vs trainer log-probs
        per_token = per_token * is_weights
    kl = None
    if beta != 0.0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl

    masked_sum = (per_token * mask).sum()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean() / num_micro_batches
    elif loss_type == "bnpo":
        loss = masked_sum / mask.sum().clamp(min=1) / num_micro_batches
    elif loss_type == "dr_grpo":
        loss = masked_sum / (logps.shape[0] * max_completion_length) / num_micro_batches
    elif loss_type == "dapo":
        loss = masked_sum / max(float(num_items_in_batch), 1.0)
    else:
        raise ValueError(f"loss_type must be grpo, bnpo, dr_grpo or dapo, got {loss_type!r}")

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        stats = LossStats(kl=float((kl * mask).sum() / n) if kl is not None else 0.0,
                          clip_ratio_low=float((low * mask).sum() / n),
                          clip_ratio_high=float((high * mask).sum() / n),
                          tokens=int(mask.sum()))
    return loss, stats
