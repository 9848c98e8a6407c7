"""The `code` reward: run each completion's program against the row's tests in the sandbox.

Contract as every reward: `code(prompts, completions, tests=[...], **kwargs) -> list[float|None]`.
`tests` is a dataset column of Python test code (asserts) per row; rows without tests get
None (not applicable — e.g. the math rows of a mixed dataset). The program is the last fenced
```python block of the completion (or the <answer> content, or the whole text). Reward is
1.0 when the program and its tests exit 0 within the limits, else `failure_value` (0.0), with
the reason logged. Completions are run in parallel, each in its own sandbox.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trainer.sandbox import SandboxLimits, run_python

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
         **kwargs: Any) -> list[float | None]:
    if tests is None:
        return [None] * len(completions)
    limits = SandboxLimits(cpu_time_s=cpu_time_s, wall_time_s=wall_time_s, memory_bytes=memory_mb * 2**20)

    def one(i: int) -> float | None:
        if not tests[i]:
            return None
        program = extract_code(_text(completions[i])) + "\n\n" + str(tests[i]) + "\n"
        result = run_python(program, limits)
        if not result.ok:
            last = result.stderr.strip().splitlines()[-1:] or [""]
            log.info("code reward: completion %d failed (%s) %s", i, result.reason, last[0][:200])
            return failure_value
        return 1.0

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(completions)))) as pool:
        return list(pool.map(one, range(len(completions))))
