"""Rollout generation behind one small interface, so vLLM can replace transformers later.

A backend turns prompt texts (already chat-formatted) into `n` sampled completions each,
the `n` completions of a prompt adjacent, cut after the first EOS. `update_weights(model)`
is called after every optimizer update; a backend that holds its own copy of the weights
(vLLM) reloads them there, the transformers backend shares the model and does nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from trainer.device import autocast


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seeds: tuple[int, ...] | None = None  # one per prompt: sample each prompt's group from its own seed


@dataclass
class Generation:
    """Completions in prompt order, `n` per prompt, adjacent."""

    completion_ids: list[list[int]]  # tokens up to and including the first EOS
    texts: list[str]                 # decoded without special tokens
    truncated: list[bool]            # no EOS within max_new_tokens


class GenerationBackend(Protocol):
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> Generation:
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        ...


def cut_at_eos(rows: list[list[int]], eos_ids: set[int]) -> tuple[list[list[int]], list[bool]]:
    """Keep each row up to and including its first EOS; rows without one are truncated."""
    out, truncated = [], []
    for row in rows:
        for i, tok in enumerate(row):
            if tok in eos_ids:
                out.append(row[:i + 1])
                truncated.append(False)
                break
        else:
            out.append(list(row))
            truncated.append(True)
    return out, truncated


class HFGenerationBackend:
    """Sampling on the training model itself (left padding, stop at EOS): with `model.generate`, or with
    `sample_shared_prefill` (grpo.fast_generation), which samples the same tokens without redone work."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_prompt_length: int | None = None, bf16: bool = False,
                 shared_prefill: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.bf16 = bf16  # sample under bf16 autocast (grpo.bf16), as the training forward runs
        self.shared_prefill = shared_prefill  # grpo.fast_generation: sample_shared_prefill instead of generate
        eos = tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> Generation:
        if params.seeds is not None:  # per-prompt seeded groups: independent of batching and process count
            parts = []
            device = self.model.device
            for prompt, seed in zip(prompts, params.seeds):  # the sampling RNG is the device's: fork that one
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    parts.append(self.generate([prompt], n, replace(params, seeds=None)))
            return Generation(completion_ids=[c for g in parts for c in g.completion_ids],
                              texts=[t for g in parts for t in g.texts],
                              truncated=[t for g in parts for t in g.truncated])
        from transformers import GenerationConfig

        enc = encode_prompts(self.tokenizer, prompts, self.max_prompt_length)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=sample, num_return_sequences=n,
            temperature=params.temperature if sample else None, top_p=params.top_p if sample else None,
            top_k=params.top_k if sample else None, min_p=params.min_p if sample else None,
            repetition_penalty=params.repetition_penalty, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids), use_cache=True)
        was_training = self.model.training
        self.model.eval()
        with autocast(self.model.device, self.bf16):
            if self.shared_prefill:
                new_tokens = sample_shared_prefill(self.model, enc["input_ids"], enc["attention_mask"], n, params,
                                                   self.eos_ids, self.tokenizer.pad_token_id)
            else:
                out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          generation_config=config)
                new_tokens = out[:, enc["input_ids"].shape[1]:]
        self.model.train(was_training)
        rows = new_tokens.tolist()
        ids, truncated = cut_at_eos(rows, self.eos_ids)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return Generation(completion_ids=ids, texts=texts, truncated=truncated)

    def update_weights(self, model: torch.nn.Module) -> None:
        pass  # generates with the training model itself


def logits_processors(params: SamplingParams):
    """transformers' processors for `params`, in generate's order (repetition penalty, then temperature,
    top-k, top-p, min-p), each only where it changes something, as GenerationMixin._get_logits_processor."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    out = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty=params.repetition_penalty))
    if params.temperature > 0:
        if params.temperature != 1.0:
            out.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            out.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=params.top_p))
        if params.min_p is not None:
            out.append(MinPLogitsWarper(min_p=params.min_p))
    return out


@torch.no_grad()
def sample_shared_prefill(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int,
                          params: SamplingParams, eos_ids: set[int], pad_id: int) -> torch.Tensor:
    """`n` completions of each left-padded prompt, (P * n, <= max_new_tokens), a prompt's adjacent.

    What `model.generate(num_return_sequences=n)` does, minus its redone work: each prompt is prefilled
    once (generate prefills its n copies) and its KV cache repeated n times. Then the same loop: position
    ids from the attention mask, each step's fp32 logits through the same processors, softmax and one
    torch.multinomial over the whole batch (argmax when temperature is 0), finished rows padded, stop
    when every row has emitted an EOS. So a seed gives generate's tokens (tests/test_trainer_speed.py)."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions.masked_fill_(attention_mask == 0, 1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)
    mask = attention_mask.repeat_interleave(n, dim=0)
    position = positions[:, -1:].repeat_interleave(n, dim=0)
    sequences = input_ids.repeat_interleave(n, dim=0)  # the repetition penalty reads the prompt too
    processors = logits_processors(params)
    eos = torch.tensor(sorted(eos_ids), device=input_ids.device)
    unfinished = torch.ones(len(sequences), dtype=torch.bool, device=input_ids.device)
    start = sequences.shape[1]
    # every key a row may attend to, prompt then new tokens: sliced per step into the bool mask SDPA reads, so
    # the model need not rebuild it from the 2D mask at every token (full-attention models; others get the 2D mask)
    full_attention = set(getattr(model.config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    keys = torch.cat([mask, mask.new_ones((len(mask), params.max_new_tokens))], dim=1).bool()[:, None, None, :]
    for step in range(params.max_new_tokens):
        scores = processors(sequences, logits)
        if params.temperature > 0:
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        tokens = torch.where(unfinished, tokens, pad_id)
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        unfinished &= ~torch.isin(tokens, eos)
        if step == params.max_new_tokens - 1 or not unfinished.any():
            break
        position = position + 1
        width = sequences.shape[1]
        step_mask = ({"full_attention": keys[..., :width]} if full_attention
                     else keys[:, 0, 0, :width].long())
        logits = model(input_ids=tokens[:, None], attention_mask=step_mask, position_ids=position,
                       past_key_values=cache, use_cache=True).logits[:, -1].float()
    return sequences[:, start:]


def encode_prompts(tokenizer, prompts: list[str], max_prompt_length: int | None = None) -> dict:
    """Left-padded input_ids / attention_mask, keeping the last `max_prompt_length` tokens."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_prompt_length is not None:
        ids = [row[-max_prompt_length:] for row in ids]
    width = max(len(r) for r in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask}
