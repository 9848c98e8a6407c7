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
    """Sampling with `model.generate` on the training model itself (left padding, stop at EOS)."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_prompt_length: int | None = None, bf16: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.bf16 = bf16  # sample under bf16 autocast (grpo.bf16), as the training forward runs
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
            out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      generation_config=config)
        self.model.train(was_training)
        rows = out[:, enc["input_ids"].shape[1]:].tolist()
        ids, truncated = cut_at_eos(rows, self.eos_ids)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return Generation(completion_ids=ids, texts=texts, truncated=truncated)

    def update_weights(self, model: torch.nn.Module) -> None:
        pass  # generates with the training model itself


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
