"""The arithmetic task of the CPU demo: prompts like "37+48", answers like "85".

`make_arith_data(out_dir)` writes three JSONL files, loadable with
`datasets.load_dataset("json", data_files=...)`:
- train.jsonl    prompt, answer   (GRPO prompts; `answer` feeds the accuracy reward)
- heldout.jsonl  prompt, answer   (never seen in training; exact-match evaluation)
- sft.jsonl      prompt, completion  (the supervised warm start)

The warm start mixes two answer styles. A fraction `sft_think_fraction` of the examples
work the sum out digit by digit, units column first, carry (or borrow) written out:

    37+48  ->  <think>7+8=15,3+4+1=8</think><answer>85</answer>
    52-38  ->  <think>12-8=4,5-3-1=1</think><answer>14</answer>

the rest answer at once, without a <think> block (`<answer>85</answer>`). The warm-started
model so does both: the direct answers are often wrong and miss the format reward, the
worked ones are mostly right. GRPO has to find out which style pays (format reward
~0.5 -> ~1.0) and sharpen the column work (held-out exact match up).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from hdc.config import meta


@dataclass
class ArithDataConfig:
    num_train: int = meta("Training prompts.", default=4000, ge=1)
    num_heldout: int = meta("Held-out prompts (disjoint from train and sft).", default=500, ge=1)
    num_sft: int = meta("Warm-start examples (disjoint from held-out).", default=4000, ge=1)
    max_operand: int = meta("Operands are drawn from 0..max_operand.", default=99, ge=1)
    ops: str = meta("Operators to use, any of + and -.", default="+-")
    sft_think_fraction: float = meta("Fraction of warm-start completions that show the digit-wise work in "
                                     "<think>; the rest give the <answer> alone.", default=0.5, ge=0, le=1)
    seed: int = meta("Sampling seed.", default=0, ge=0)


def _problem(rng: random.Random, max_operand: int, ops: str) -> dict:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    op = rng.choice(ops)
    if op == "-" and b > a:
        a, b = b, a  # keep answers non-negative
    return {"prompt": f"{a}{op}{b}", "answer": str(a + b if op == "+" else a - b)}


def sample_problems(n: int, max_operand: int = 99, seed: int = 0, ops: str = "+-",
                    exclude: set[str] | None = None) -> list[dict]:
    """`n` distinct problems whose prompts are not in `exclude`."""
    rng = random.Random(seed)
    exclude = set(exclude or ())
    space = (max_operand + 1) ** 2 * len(ops)
    if n > space - len(exclude):
        raise ValueError(f"only {space - len(exclude)} distinct problems with max_operand={max_operand}")
    rows: list[dict] = []
    while len(rows) < n:
        row = _problem(rng, max_operand, ops)
        if row["prompt"] not in exclude:
            exclude.add(row["prompt"])
            rows.append(row)
    return rows


def column_trace(prompt: str) -> str:
    """The column-by-column work for `a+b` / `a-b` (a >= b), units first: "7+8=15,3+4+1=8".

    Each column after the first adds the carry (or subtracts the borrow), 0 or 1, explicitly;
    a subtraction column that borrows shows the borrowed 10 ("12-8=4").
    """
    m = re.fullmatch(r"(\d+)([+-])(\d+)", prompt)
    if m is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    a, op, b = m.group(1), m.group(2), m.group(3)
    width = max(len(a), len(b))
    da, db = [int(c) for c in a.zfill(width)[::-1]], [int(c) for c in b.zfill(width)[::-1]]
    steps, carry = [], 0
    for i, (x, y) in enumerate(zip(da, db)):
        if op == "+":
            total = x + y + carry
            steps.append(f"{x}+{y}={total}" if i == 0 else f"{x}+{y}+{carry}={total}")
            carry = total // 10
        else:
            top = x - carry if i else x
            borrow = int(top < y)
            lhs = f"{x}-{y}" if i == 0 else f"{x}-{y}-{carry}"
            if borrow:
                lhs = f"1{lhs}"
            steps.append(f"{lhs}={top + 10 * borrow - y}")
            carry = borrow
    return ",".join(steps)


def sft_completion(row: dict, think: bool = True) -> str:
    """The warm-start target: the column work in <think> and the result in <answer>, or
    (think=False) the bare <answer>, which the format reward does not accept."""
    if not think:
        return f"<answer>{row['answer']}</answer>"
    return f"<think>{column_trace(row['prompt'])}</think><answer>{row['answer']}</answer>"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def make_arith_data(out_dir: str | Path, cfg: ArithDataConfig | None = None) -> dict[str, Path]:
    cfg = cfg or ArithDataConfig()
    for op in cfg.ops:
        if op not in "+-":
            from hdc.errors import UserError

            raise UserError(f"ops: must use only + and -, got {cfg.ops!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heldout = sample_problems(cfg.num_heldout, cfg.max_operand, cfg.seed, cfg.ops)
    seen = {r["prompt"] for r in heldout}
    train = sample_problems(cfg.num_train, cfg.max_operand, cfg.seed + 1, cfg.ops, exclude=seen)
    sft = sample_problems(cfg.num_sft, cfg.max_operand, cfg.seed + 2, cfg.ops, exclude=seen)
    paths = {"train": out / "train.jsonl", "heldout": out / "heldout.jsonl", "sft": out / "sft.jsonl"}
    write_jsonl(paths["train"], train)
    write_jsonl(paths["heldout"], heldout)
    rng = random.Random(cfg.seed + 3)
    think = [i < round(cfg.sft_think_fraction * len(sft)) for i in range(len(sft))]
    rng.shuffle(think)
    write_jsonl(paths["sft"], [{"prompt": r["prompt"], "completion": sft_completion(r, t)}
                               for r, t in zip(sft, think)])
    return paths
