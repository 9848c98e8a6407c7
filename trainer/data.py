"""Datasets, prompt formatting, the prompt sampler (with a resumable position) and evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hdc.errors import UserError


def load_jsonl(path: str, field_path: str = "data.train_file"):
    """A `datasets.Dataset` from a JSONL file; a missing file is a UserError naming the field."""
    if not Path(path).is_file():
        raise UserError(f"{field_path}: no such file {path!r}")
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as e:  # a malformed file is the user's to fix
        raise UserError(f"{field_path}: cannot read {path!r} as JSONL ({type(e).__name__}: {e})") from None


def format_prompt(tokenizer, prompt: Any, system_prompt: str | None = None, use_chat_template: bool = True) -> str:
    """The text the model continues: a string prompt (plus system message) or a message list, templated."""
    if not use_chat_template:
        if not isinstance(prompt, str):
            raise UserError("data.use_chat_template: conversational prompts need the chat template")
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
                         use_chat_template: bool = True, batch_size: int = 100) -> dict[str, float]:
    """Greedy decoding on held-out rows: fraction whose extracted answer equals the reference exactly,
    and fraction in the <think>..</think><answer>..</answer> format."""
    from trainer.generation import HFGenerationBackend, SamplingParams
    from trainer.rewards import extract_answer
    from trainer.rewards import format as format_reward

    backend = HFGenerationBackend(model, tokenizer)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    correct = formatted = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        prompts = [format_prompt(tokenizer, r[prompt_column], system_prompt, use_chat_template) for r in chunk]
        texts = backend.generate(prompts, 1, params).texts
        for row, text in zip(chunk, texts):
            found = extract_answer(text)
            correct += int(found is not None and found == str(row[answer_column]).strip())
        formatted += int(sum(format_reward(prompts, texts)))
    n = max(len(rows), 1)
    return {"eval/exact_match": correct / n, "eval/format": formatted / n}
