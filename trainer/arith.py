"""The arithmetic task of the CPU demo: prompts like "37+48", answers like "85".

`make_arith_data(out_dir)` writes three JSONL files, loadable with
`datasets.load_dataset("json", data_files=...)`:
- train.jsonl    prompt, answer   (GRPO prompts; `answer` feeds the accuracy reward)
- heldout.jsonl  prompt, answer   (never seen in training; exact-match evaluation)
- sft.jsonl      prompt, completion  (the supervised warm start)

The warm start imitates a deliberately imperfect teacher, so that GRPO has something
real to fix:

- Every completion works the sum out digit by digit, units column first, the carry (or
  borrow) written out as the last term of the next column. A fraction `sft_think_fraction`
  wrap that work in <think> tags:

      37+48  ->  <think>7+8=15,3+4+1=8</think><answer>85</answer>
      52-38  ->  <think>12-8=4,5-3-1=1</think><answer>14</answer>

  the rest write the same work untagged (`7+8=15,3+4+1=8<answer>85</answer>`), which the
  format reward scores 0 and the accuracy reward scores like the tagged form. The
  warm-started model does both (sampled format reward ~0.5), equally well.
- The teacher forgets the carry (or the borrow) in a fraction `sft_carry_slip` of its
  worked problems (default 0.6): it writes 0 where the carry is 1 and gives the answer that
  follows from its own slipped work:

      37+48  ->  <think>7+8=15,3+4+0=7</think><answer>75</answer>

  The warm-started model learns the column procedure and the slip with it: decoded greedily
  it drops the carry (the teacher's majority habit), so it fails most problems that carry,
  while sampling still carries about a third of the time. The accuracy reward prefers the
  samples that carry, and GRPO turns the minority habit into the greedy one: held-out exact
  match can rise by up to the share of problems that carry or borrow (~45% of 2-digit ones).
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
    sft_think_fraction: float = meta("Fraction of warm-start completions that wrap the column work in "
                                     "<think>...</think>; the rest write it untagged (format reward 0).",
                                     default=0.5, ge=0, le=1)
    sft_carry_slip: float = meta("Fraction of worked warm-start problems in which the teacher forgets every "
                                 "carry/borrow (writes +0/-0) and answers accordingly, a flaw for GRPO to fix.",
                                 default=0.6, ge=0, le=1)
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


def column_work(prompt: str, forget_carry: bool = False) -> tuple[str, str]:
    """The column-by-column work for `a+b` / `a-b` (a >= b), units first, and the result it gives:
    ("7+8=15,3+4+1=8", "85").

    Each column after the first adds the carry (or subtracts the borrow), 0 or 1, explicitly;
    a subtraction column that borrows shows the borrowed 10 ("12-8=4"). `forget_carry` is the
    teacher's slip: every carry (borrow) is written and used as 0, so "37+48" gives
    ("7+8=15,3+4+0=7", "75"); problems without a carry are unchanged.
    """
    m = re.fullmatch(r"(\d+)([+-])(\d+)", prompt)
    if m is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    a, op, b = m.group(1), m.group(2), m.group(3)
    width = max(len(a), len(b))
    da, db = [int(c) for c in a.zfill(width)[::-1]], [int(c) for c in b.zfill(width)[::-1]]
    steps, digits, carry = [], [], 0
    for i, (x, y) in enumerate(zip(da, db)):
        if op == "+":
            total = x + y + carry
            steps.append(f"{x}+{y}={total}" if i == 0 else f"{x}+{y}+{carry}={total}")
            digits.append(total % 10)
            carry = total // 10
        else:
            top = x - carry if i else x
            borrow = int(top < y)
            lhs = f"{x}-{y}" if i == 0 else f"{x}-{y}-{carry}"
            if borrow:
                lhs = f"1{lhs}"
            total = top + 10 * borrow - y
            steps.append(f"{lhs}={total}")
            digits.append(total)
            carry = borrow
        if i == width - 1 and op == "+" and carry:
            digits.append(carry)  # the last column's total is written in full: "9+9+1=19"
        if forget_carry:
            carry = 0
    result = int("".join(str(d) for d in reversed(digits)))
    return ",".join(steps), str(result)


def column_trace(prompt: str) -> str:
    """The correct column work alone: "7+8=15,3+4+1=8" for "37+48"."""
    return column_work(prompt)[0]


def sft_completion(row: dict, think: bool = True, forget_carry: bool = False) -> str:
    """The warm-start target: the column work in <think> and its result in <answer>, or
    (think=False) the same work untagged before the <answer>, which the format reward does not
    accept. `forget_carry`: the teacher's slip (see `column_work`); the answer follows the work."""
    work, result = column_work(row["prompt"], forget_carry)
    return f"<think>{work}</think><answer>{result}</answer>" if think else f"{work}<answer>{result}</answer>"


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
    slip = [rng.random() < cfg.sft_carry_slip for _ in sft]
    write_jsonl(paths["sft"], [{"prompt": r["prompt"], "completion": sft_completion(r, t, s)}
                               for r, t, s in zip(sft, think, slip)])
    return paths
