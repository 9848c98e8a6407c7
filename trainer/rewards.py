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
import numbers
import os
import re
import sys
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
    """A built-in by name, or `package.module:function` imported; errors name the field.

    A module in the current folder is found (as `python -m` would); any error while importing it
    (a SyntaxError, an exception at import) is one line; the object must be a Python function
    (or callable object) taking prompts, completions and **kwargs, so `os:system` is refused."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if ":" not in name:
        raise UserError(f"{path}: must be one of {', '.join(BUILTIN_REWARDS)} or package.module:function, "
                        f"got {name!r}")
    module_name, func_name = name.split(":", 1)
    module = _import_user_module(module_name, path)
    func = getattr(module, func_name, None)
    if func is None:
        raise UserError(f"{path}: module {module_name!r} has no function {func_name!r}")
    problem = _not_a_reward_function(func)
    if problem:
        raise UserError(f"{path}: {name!r} is not a reward function ({problem}); a reward function is "
                        f"f(prompts, completions, **kwargs) -> list[float | None]")
    return func


def _import_user_module(module_name: str, path: str):
    """importlib.import_module, with the current folder on sys.path; every failure is a UserError."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # last: a module of the current folder never shadows an installed one
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = (f"; a module outside the current folder ({cwd}) needs its folder on PYTHONPATH"
                if e.name == module_name.split(".")[0] else "")
        raise UserError(f"{path}: cannot import module {module_name!r} ({e}){hint}") from None
    except SyntaxError as e:
        raise UserError(f"{path}: module {module_name!r} has a syntax error: {e.msg} ({e.filename}, line "
                        f"{e.lineno})") from None
    except BaseException as e:  # noqa: BLE001 (anything raised while the user's module runs, SystemExit too)
        raise UserError(f"{path}: importing module {module_name!r} raised {_one_line(e)}") from None


def _not_a_reward_function(func: Any) -> str | None:
    """Why `func` cannot be called as score() calls a reward function, or None."""
    if inspect.isclass(func) or inspect.ismodule(func) or not callable(func):
        return f"a {type(func).__name__}, not a function"
    target = getattr(func, "func", func)  # functools.partial
    if inspect.isbuiltin(target) or not (inspect.isfunction(target) or inspect.ismethod(target)
                                         or inspect.isfunction(getattr(type(target), "__call__", None))):
        return "a built-in, not a Python function"
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return "its signature cannot be read"
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return "it takes no **kwargs, so the dataset columns cannot reach it"
    positional = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if positional:  # everything is passed by keyword (prompts=..., completions=..., columns)
        return f"its argument {positional[0]!r} is positional-only"
    return None


def _one_line(e: BaseException) -> str:
    """`Type: message (file:line)` of an exception, the innermost frame of its traceback."""
    import traceback

    where = ""
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}{where}"


# built-in rewards and the dataset columns they need (any one of each tuple)
REQUIRED_COLUMNS: dict[RewardFunc, tuple[str, ...]] = {accuracy: ("answer", "solution"), code: ("tests",)}


def check_reward_columns(funcs: list[RewardFunc], columns: list[str], path: str = "data.train_file") -> None:
    """A built-in reward whose column is missing would score None for every row: refuse up front."""
    for i, func in enumerate(funcs):
        needed = REQUIRED_COLUMNS.get(getattr(func, "__wrapped__", func))
        if needed and not set(needed) & set(columns):
            raise UserError(f"{path}: the {reward_name(func)} reward (rewards[{i}]) needs a column "
                            f"{' or '.join(repr(c) for c in needed)}; the data has {', '.join(columns) or 'none'}")


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
    bound.__wrapped__ = func  # the built-in behind it (REQUIRED_COLUMNS)
    return bound


def score(reward_funcs: list[RewardFunc], weights: list[float], prompts: list, completions: list,
          columns: dict[str, list], nonfinite: Callable[[int, int], None] | None = None,
          **extra: Any) -> tuple[list[list[float]], list[float]]:
    """Run every reward function; return per-function values (NaN for None) and the weighted sums.

    Each function gets TRL's keywords: prompts, completions, every dataset column, and `extra`
    (the trainer passes completion_ids, trainer_state, log_extra and log_metric). `async`
    functions run concurrently (asyncio.gather), after the plain ones.
    A sample's total skips functions that returned None for it. If all did, its total is NaN
    (TRL 1.16): it is left out of its group's and the batch's reward mean and std, its advantage
    is 0 (trainer.algorithm.group_advantages), and a warning names the first such row.

    What a function returns is checked (`check_reward_values`): anything but a list of one
    number or None per completion, or an exception inside it, is a UserError naming it. NaN or
    inf values (and a weighted sum that overflows) are reported to `nonfinite(function index or
    trainer.guards.TOTAL, count)` — the trainer's step guard, which every rank consults before
    the optimizer steps — and count as NaN here; without `nonfinite` they raise NonFiniteError.
    """
    from trainer.guards import TOTAL, NonFiniteError

    if nonfinite is None:
        def nonfinite(index: int, count: int) -> None:
            what = ("the weighted sum of rewards" if index == TOTAL
                    else f"reward function {reward_name(reward_funcs[index])!r}")
            raise NonFiniteError(f"{what} gave NaN/inf for {count} of {len(completions)} completions")
    kwargs = {**columns, **extra}
    outputs: list[Any] = [None] * len(reward_funcs)
    pending = [i for i, f in enumerate(reward_funcs) if is_async(f)]
    for i, func in enumerate(reward_funcs):
        if i not in pending:
            outputs[i] = _call(func, prompts=prompts, completions=completions, **kwargs)
    if pending:
        async def run_async() -> list:
            return await asyncio.gather(*(reward_funcs[i](prompts=prompts, completions=completions, **kwargs)
                                          for i in pending), return_exceptions=True)
        for i, values in zip(pending, asyncio.run(run_async())):
            if isinstance(values, BaseException):
                raise UserError(f"reward function {reward_name(reward_funcs[i])!r} raised {_one_line(values)}")
            outputs[i] = values
    per_func: list[list[float]] = []
    poisoned: set[int] = set()  # completions with a non-finite value: not "unscorable"
    for i, (func, values) in enumerate(zip(reward_funcs, outputs)):
        floats, bad = check_reward_values(reward_name(func), values, len(completions))
        if bad:
            nonfinite(i, len(bad))
            poisoned.update(bad)
        per_func.append(floats)
    totals = []
    for i in range(len(completions)):
        terms = [w * vals[i] for w, vals in zip(weights, per_func) if not math.isnan(vals[i])]
        totals.append(sum(terms) if terms else math.nan)
    overflowed = sum(math.isinf(t) for t in totals)
    if overflowed:
        nonfinite(TOTAL, overflowed)
    unscorable = [i for i, t in enumerate(totals) if math.isnan(t) and i not in poisoned]
    if unscorable:
        i = unscorable[0]
        log.warning("All reward functions returned None for %d of %d completions, e.g. prompt %r, completion %r, "
                    "columns %r; they get advantage 0. Make sure at least one reward function scores every row.",
                    len(unscorable), len(totals), prompts[i], completions[i], {k: v[i] for k, v in columns.items()})
    return per_func, totals


def _call(func: RewardFunc, **kwargs: Any) -> Any:
    """func(**kwargs); an exception inside a reward function is the user's: one line naming it."""
    try:
        return func(**kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"reward function {reward_name(func)!r} raised {_one_line(e)}") from None


def check_reward_values(name: str, values: Any, n: int) -> tuple[list[float], list[int]]:
    """(floats with NaN for None and for non-finite values, the indices of the non-finite ones) of one function's
    output; a UserError naming the function when it is not a list of n numbers or None."""
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):  # a numpy array or torch tensor
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        kind = "a generator" if inspect.isgenerator(values) else f"a {type(values).__name__} ({values!r:.60})"
        raise UserError(f"reward function {name!r} returned {kind}; it must return a list with one float or None "
                        f"per completion ({n})")
    if len(values) != n:
        raise UserError(f"reward function {name!r} returned {len(values)} values for {n} completions")
    floats, bad = [], []
    for j, v in enumerate(values):
        if v is None:
            floats.append(math.nan)
            continue
        if not isinstance(v, numbers.Real):  # bools count as 0/1, as torch.tensor makes them in TRL
            raise UserError(f"reward function {name!r} returned a {type(v).__name__} at index {j} ({v!r:.60}); "
                            f"each value must be a float or None")
        f = float(v)
        if not math.isfinite(f):
            bad.append(j)
        floats.append(f if math.isfinite(f) else math.nan)
    return floats, bad
