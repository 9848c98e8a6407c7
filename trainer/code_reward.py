"""The `code` reward: judge each completion's program by the row's tests, in the sandbox.

Contract as every reward: `code(prompts, completions, tests=[...], **kwargs) -> list[float|None]`.
`tests` is a dataset column of Python test code (asserts) per row; rows without tests get
None (not applicable — e.g. the math rows of a mixed dataset). The program is the last fenced
```python block of the completion (or the <answer> content, or the whole text). The tests run
in a separate process from the program (trainer.sandbox.run_judged) and call its functions
and classes by name (`add(2, 3)`, `Solution().solve(x)`, `from solution import add`);
arguments and results cross as plain data. Reward is 1.0 when every test ran to its end
within the limits, else `failure_value` (0.0), with the reason logged: a program that exits
early, crashes, or returns objects that only pretend to be equal scores 0. Completions are
judged in parallel, each in its own sandbox. `sandbox` is the recipe's `code_sandbox`
(strong: refuse where namespaces and cgroups are missing; weak: per-process limits there).
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trainer.sandbox import SandboxLimits, resolve_isolation, run_judged

log = logging.getLogger("hdc.code_reward")
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_code(text: str) -> str:
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[-1]
    m = _ANSWER.findall(text)
    return m[-1] if m else text


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return completion[0]["content"] if completion else ""
    return str(completion)


def code(prompts: list, completions: list, tests: list | None = None, failure_value: float = 0.0,
         cpu_time_s: int = 5, wall_time_s: float = 10.0, memory_mb: int = 512, max_workers: int = 4,
         sandbox: str = "strong", **kwargs: Any) -> list[float | None]:
    if tests is None:
        return [None] * len(completions)
    resolve_isolation(sandbox)  # refuse (or warn) once, before any row runs
    limits = SandboxLimits(cpu_time_s=cpu_time_s, wall_time_s=wall_time_s, memory_bytes=memory_mb * 2**20)

    def one(i: int) -> float | None:
        if not tests[i]:
            return None
        result = run_judged(extract_code(_text(completions[i])), str(tests[i]), limits, isolation=sandbox)
        if not result.ok:
            last = result.stderr.strip().splitlines()[-1:] or [""]
            log.info("code reward: completion %d failed (%s) %s", i, result.reason[:200], last[0][:200])
            return failure_value
        return 1.0

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(completions)))) as pool:
        return list(pool.map(one, range(len(completions))))


def check_code_sandbox(recipe) -> None:
    """At the edge (`hdc train`, `hdc recipe validate`): a recipe using the code reward gets the
    isolation it asks for, or a one-line refusal before anything runs."""
    if any(spec.func == "code" for spec in recipe.rewards):
        resolve_isolation(recipe.code_sandbox)
