"""The arithmetic task of the CPU demo: prompts like "37+48", answers like "85".

`make_arith_data(out_dir)` writes three JSONL files, loadable with
`datasets.load_dataset("json", data_files=...)`:
- train.jsonl    prompt, answer   (GRPO prompts; `answer` feeds the accuracy reward)
- heldout.jsonl  prompt, answer   (never seen in training; exact-match evaluation)
- sft.jsonl      prompt, completion  (the supervised warm start, in the answer format
                 <think>37+48</think><answer>85</answer>)
"""
from __future__ import annotations

import json
import random
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


def sft_completion(row: dict) -> str:
    """The target answer format: the expression in <think>, the result in <answer>."""
    return f"<think>{row['prompt']}</think><answer>{row['answer']}</answer>"


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
    write_jsonl(paths["sft"], [{"prompt": r["prompt"], "completion": sft_completion(r)} for r in sft])
    return paths
