"""Reward functions with TRL's contract, and how the trainer combines them.

A reward function is `f(prompts, completions, **kwargs) -> list[float | None]`:
- `completions` are strings, or (conversational data) message lists whose text is
  `completion[0]["content"]`;
- every dataset column arrives as a keyword argument holding one value per completion
  (e.g. `answer=[...]`), and so do TRL's others: `completion_ids` (token ids per completion),
  `trainer_state` (a transformers TrainerState: global_step = optimizer updates so far,
  max_steps), `log_extra(column, values)` (columns for completions.jsonl) and
  `log_metric(name, value)` (a scalar averaged into the step's metrics); a function may be
  `async def` — TRL reward functions work unchanged;
- `None` means "not applicable to this sample" (multi-task data): it is skipped in the
  weighted sum rather than counted as zero; a sample no function scores has reward NaN and
  advantage 0, as in TRL.

Built-ins: `accuracy` (answer in \\boxed{} or <answer>, checked with math-verify),
`format` (<think>...</think><answer>...</answer>), `length` (distance to a target length).
User functions are named by import path `package.module:function`.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import re
from typing import Any, Callable

from hdc.errors import UserError

RewardFunc = Callable[..., list]
log = logging.getLogger(__name__)

_FORMAT_RE = re.compile(r"^<think>.*?</think><answer>.*?</answer>$", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the first message's content."""
    if isinstance(completion, str):
        return completion
    return completion[0]["content"]


def extract_answer(text: str) -> str | None:
    """The last \\boxed{...} (braces balanced), else the last <answer>...</answer>, else None."""
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 0, start + len("\\boxed")
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j].strip()
    found = _ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def accuracy(prompts: list, completions: list, answer: list | None = None, **kwargs: Any) -> list[float | None]:
    """1.0 when the extracted answer equals the reference `answer` column (math-verify), else 0.0.

    None for rows without a reference answer (other tasks in a mixed dataset).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    answers = answer if answer is not None else kwargs.get("solution", [None] * len(completions))
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    parsed: dict[str, list] = {}  # a group shares its reference answer: parse it once

    def parse_once(text: str) -> list:
        if text not in parsed:
            parsed[text] = parse(f"${text}$", extraction_config=configs)
        return parsed[text]

    out: list[float | None] = []
    for completion, ref in zip(completions, answers):
        if ref is None:
            out.append(None)
            continue
        found = extract_answer(completion_text(completion))
        if found is None:
            out.append(0.0)
        elif found == str(ref).strip():  # identical text needs no symbolic check
            out.append(1.0)
        else:
            gold, guess = parse_once(str(ref)), parse_once(found)
            out.append(1.0 if gold and guess and verify(gold, guess) else 0.0)
    return out


def format(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:  # noqa: A001 (TRL's name)
    """1.0 when the completion is exactly <think>...</think><answer>...</answer> (dot matches newline)."""
    return [1.0 if _FORMAT_RE.match(completion_text(c).strip()) else 0.0 for c in completions]


def length(prompts: list, completions: list, target_length: int = 64, **kwargs: Any) -> list[float | None]:
    """1 - |characters - target_length| / target_length, floored at -1: 1.0 exactly on target."""
    out = []
    for c in completions:
        n = len(completion_text(c))
        out.append(max(-1.0, 1.0 - abs(n - target_length) / target_length))
    return out


def code(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
    """Run the completion's program against the row's `tests` column in the sandbox
    (trainer/code_reward.py); None for rows without tests."""
    from trainer.code_reward import code as run_code

    return run_code(prompts, completions, **kwargs)


BUILTIN_REWARDS: dict[str, RewardFunc] = {"accuracy": accuracy, "format": format, "length": length, "code": code}


def resolve_reward(name: str, path: str = "reward") -> RewardFunc:
    """A built-in by name, or `package.module:function` imported; errors name the field."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if ":" not in name:
        raise UserError(f"{path}: must be one of {', '.join(BUILTIN_REWARDS)} or package.module:function, "
                        f"got {name!r}")
    module_name, func_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{path}: cannot import module {module_name!r} ({e})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"{path}: module {module_name!r} has no function {func_name!r}")
    return func


def reward_name(func: RewardFunc) -> str:
    """The name a reward is logged under: rewards/<name>/mean."""
    return getattr(func, "__name__", type(func).__name__)


def is_async(func: RewardFunc) -> bool:
    """An `async def` reward function (or a callable object with an async __call__), as TRL allows."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))


def bind_params(func: RewardFunc, params: dict[str, Any]) -> RewardFunc:
    """`func` with extra keyword arguments fixed (a recipe's rewards[i].params), same log name."""
    if not params:
        return func
    if is_async(func):
        async def bound(prompts: list, completions: list, **kwargs: Any) -> list:
            return await func(prompts, completions, **{**kwargs, **params})
    else:
        def bound(prompts: list, completions: list, **kwargs: Any) -> list:
            return func(prompts, completions, **{**kwargs, **params})

    bound.__name__ = reward_name(func)
    return bound


def score(reward_funcs: list[RewardFunc], weights: list[float], prompts: list, completions: list,
          columns: dict[str, list], **extra: Any) -> tuple[list[list[float]], list[float]]:
    """Run every reward function; return per-function values (NaN for None) and the weighted sums.

    Each function gets TRL's keywords: prompts, completions, every dataset column, and `extra`
    (the trainer passes completion_ids, trainer_state, log_extra and log_metric). `async`
    functions run concurrently (asyncio.gather), after the plain ones.
    A sample's total skips functions that returned None for it. If all did, its total is NaN
    (TRL 1.16): it is left out of its group's and the batch's reward mean and std, its advantage
    is 0 (trainer.algorithm.group_advantages), and a warning names the first such row.
    """
    kwargs = {**columns, **extra}
    outputs: list[Any] = [None] * len(reward_funcs)
    pending = [i for i, f in enumerate(reward_funcs) if is_async(f)]
    for i, func in enumerate(reward_funcs):
        if i not in pending:
            outputs[i] = func(prompts=prompts, completions=completions, **kwargs)
    if pending:
        async def run_async() -> list:
            return await asyncio.gather(*(reward_funcs[i](prompts=prompts, completions=completions, **kwargs)
                                          for i in pending))
        for i, values in zip(pending, asyncio.run(run_async())):
            outputs[i] = values
    per_func: list[list[float]] = []
    for func, values in zip(reward_funcs, outputs):
        if len(values) != len(completions):
            raise ValueError(f"reward {reward_name(func)} returned {len(values)} values for "
                             f"{len(completions)} completions")
        per_func.append([math.nan if v is None else float(v) for v in values])
    totals = []
    for i in range(len(completions)):
        terms = [w * vals[i] for w, vals in zip(weights, per_func) if not math.isnan(vals[i])]
        totals.append(sum(terms) if terms else math.nan)
    unscorable = [i for i, t in enumerate(totals) if math.isnan(t)]
    if unscorable:
        i = unscorable[0]
        log.warning("All reward functions returned None for %d of %d completions, e.g. prompt %r, completion %r, "
                    "columns %r; they get advantage 0. Make sure at least one reward function scores every row.",
                    len(unscorable), len(totals), prompts[i], completions[i], {k: v[i] for k, v in columns.items()})
    return per_func, totals
