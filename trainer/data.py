"""Datasets, prompt formatting, the prompt sampler (with a resumable position) and evaluation."""
from __future__ import annotations

from dataclasses import replace

from pathlib import Path
from typing import Any

import torch

from hdc.errors import UserError
from trainer.models import wants_chat_template


def load_jsonl(path: str, field_path: str = "data.train_file"):
    """A `datasets.Dataset` from a JSONL file; a missing file is a UserError naming the field."""
    if not Path(path).is_file():
        raise UserError(f"{field_path}: no such file {path!r}")
    import datasets

    datasets.disable_progress_bars()
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)  # a malformed file is our
    try:                                                                    # one-line error below, not its log too
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as e:  # a malformed file is the user's to fix
        raise UserError(f"{field_path}: cannot read {path!r} as JSONL ({type(e).__name__}: {e})") from None
    finally:
        datasets.utils.logging.set_verbosity(verbosity)


def format_prompt(tokenizer, prompt: Any, system_prompt: str | None = None,
                  use_chat_template: bool | str = "auto") -> str:
    """The text the model continues: a string prompt (plus system message) or a message list, templated
    (data.use_chat_template: auto = when the tokenizer has a template)."""
    if not wants_chat_template(tokenizer, use_chat_template):
        if not isinstance(prompt, str):
            raise UserError("data.use_chat_template: conversational prompts need the tokenizer's chat template")
        return prompt
    if isinstance(prompt, str):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
                   [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class PromptSampler:
    """Walks a shuffled permutation of the dataset, epoch after epoch; position is resumable."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        if size == 0:
            raise UserError("data.train_file: the dataset is empty")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.index == self.size:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(n - len(out), self.size - self.index)
            out.extend(self._order[self.index:self.index + take])
            self.index += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()


@torch.no_grad()
def evaluate_exact_match(model, tokenizer, rows: list[dict], *, max_new_tokens: int, prompt_column: str = "prompt",
                         answer_column: str = "answer", system_prompt: str | None = None,
                         use_chat_template: bool | str = "auto", batch_size: int = 100,
                         num_generations: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
                         seed: int = 0) -> dict[str, float]:
    """Held-out rows: the fraction of completions whose extracted answer equals the reference
    exactly, and the fraction in the <think>..</think><answer>..</answer> format. Greedy, one
    completion per prompt; with `num_generations` (TRL's num_generations_eval) that many
    sampled completions per prompt at `temperature`/`top_p` (seeded), averaged, plus
    eval/pass@N: the fraction of prompts with at least one exact match."""
    texts = eval_completions(model, tokenizer, rows, max_new_tokens=max_new_tokens, prompt_column=prompt_column,
                             system_prompt=system_prompt, use_chat_template=use_chat_template,
                             batch_size=batch_size, num_generations=num_generations, temperature=temperature,
                             top_p=top_p, seed=seed)
    return exact_match_metrics(rows, texts, answer_column, num_generations)


@torch.no_grad()
def eval_completions(model, tokenizer, rows: list[dict], *, max_new_tokens: int, prompt_column: str = "prompt",
                     system_prompt: str | None = None, use_chat_template: bool | str = "auto",
                     batch_size: int = 100, num_generations: int | None = None, temperature: float = 1.0,
                     top_p: float = 1.0, seed: int = 0) -> list[str]:
    """The completions of the rows' prompts, each prompt's adjacent: one greedy, or
    `num_generations` sampled with a seed per prompt (the same however rows are batched)."""
    from trainer.generation import HFGenerationBackend, SamplingParams

    backend = HFGenerationBackend(model, tokenizer)
    n_gen = num_generations or 1
    params = (SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0) if num_generations is None else
              SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p))
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        prompts = [format_prompt(tokenizer, r[prompt_column], system_prompt, use_chat_template) for r in chunk]
        if num_generations is not None:
            params = replace(params, seeds=tuple(seed * 1_000_003 + start + i for i in range(len(chunk))))
        texts += backend.generate(prompts, n_gen, params).texts
    return texts


def exact_match_metrics(rows: list[dict], texts: list[str], answer_column: str = "answer",
                        num_generations: int | None = None) -> dict[str, float]:
    """eval/exact_match, eval/format (and eval/pass@N with num_generations) of completions
    `texts` (each row's num_generations adjacent) against the rows' answers."""
    from trainer.rewards import extract_answer
    from trainer.rewards import format as format_reward

    n_gen = num_generations or 1
    correct = solved = 0
    for i, row in enumerate(rows):
        hits = [found is not None and found == str(row[answer_column]).strip()
                for found in map(extract_answer, texts[i * n_gen:(i + 1) * n_gen])]
        correct += sum(hits)
        solved += int(any(hits))
    formatted = int(sum(format_reward([""] * len(texts), texts)))
    n = max(len(rows), 1)
    out = {"eval/exact_match": correct / (n * n_gen), "eval/format": formatted / (n * n_gen)}
    if num_generations is not None:
        out[f"eval/pass@{n_gen}"] = solved / n
    return out
