"""Does GRPO learn? Held-out exact match before/after recipes/tiny-arith.yaml, with the curve.

Builds everything locally (tiny Qwen2 + BPE tokenizer, arithmetic data, supervised warm
start on a teacher that forgets the carry 60% of the time, see trainer/arith.py), then
trains with the tiny-arith recipe under a wall-clock budget (default 15 min, evaluations
included) and prints held-out exact match (greedy) and the format reward over time, and
exact match before/after on the held-out problems that carry (or borrow) and those that do
not. Assets already in --work are reused, so a rerun skips the warm start.

    .venv/bin/python benchmarks/grpo_learning.py [--work runs/learning] [--budget-s 900] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_assets(work: Path, sft_steps: int, sft_lr: float) -> None:
    from trainer.arith import make_arith_data
    from trainer.sft import SFTConfig, sft
    from trainer.tiny import make_tiny_model

    if not (work / "tiny" / "config.json").exists():
        make_tiny_model(work / "tiny")
    if not (work / "data" / "train.jsonl").exists():
        make_arith_data(work / "data")
    if not (work / "tiny-sft" / "config.json").exists():
        t = time.perf_counter()
        sft(str(work / "tiny"), str(work / "data" / "sft.jsonl"), str(work / "tiny-sft"),
            SFTConfig(max_steps=sft_steps, learning_rate=sft_lr), progress=True)
        print(f"warm start: {sft_steps} SFT steps in {time.perf_counter() - t:.0f} s", flush=True)


def exact_match_by_carry(trainer) -> dict[str, float]:
    """Held-out exact match (greedy) on the evaluated problems that carry/borrow and on the rest."""
    from trainer.arith import column_work
    from trainer.data import evaluate_exact_match

    d = trainer.data
    rows = [trainer.eval_dataset[i] for i in range(min(len(trainer.eval_dataset), d.eval_max_samples))]
    carries = lambda r: column_work(r[d.prompt_column]) != column_work(r[d.prompt_column], True)  # noqa: E731
    out = {}
    for name, subset in (("carry", [r for r in rows if carries(r)]), ("no_carry", [r for r in rows if not carries(r)])):
        ev = evaluate_exact_match(trainer.model, trainer.tokenizer, subset,
                                  max_new_tokens=trainer.args.max_completion_length, prompt_column=d.prompt_column,
                                  answer_column=d.answer_column, system_prompt=d.system_prompt,
                                  use_chat_template=d.use_chat_template)
        out[name], out[f"{name}_n"] = ev["eval/exact_match"], len(subset)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/learning")
    parser.add_argument("--budget-s", type=float, default=900.0, help="wall-clock budget for GRPO incl. evals")
    parser.add_argument("--sft-steps", type=int, default=1000)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    work = Path(opts.work)
    build_assets(work, opts.sft_steps, opts.sft_lr)

    from trainer.config import load_recipe
    from trainer.logs import MetricsLogger
    from trainer.run import build_trainer

    overrides = [f"model.name_or_path={work / 'tiny-sft'}", f"data.train_file={work / 'data' / 'train.jsonl'}",
                 f"data.eval_file={work / 'data' / 'heldout.jsonl'}", f"grpo.torch_num_threads={opts.threads}",
                 "grpo.max_steps=100000", *opts.overrides]
    recipe = load_recipe(str(ROOT / "recipes" / "tiny-arith.yaml"), overrides)
    out = work / "grpo"
    trainer = build_trainer(recipe, out)
    logger = MetricsLogger(out)
    trainer.logger = logger
    split_before = exact_match_by_carry(trainer)  # a diagnostic, outside the timed budget
    start = time.perf_counter()
    before = trainer.evaluate()
    curve = [(0, 0.0, before["eval/exact_match"], before["eval/format"], None)]
    logger.log(0, before)
    window: list[dict] = []
    while time.perf_counter() - start < opts.budget_s:
        m = trainer.train_step()
        trainer.step += 1
        window.append(m)
        logger.log(trainer.step, m)
        if trainer.step % opts.eval_every == 0:
            ev = trainer.evaluate()
            logger.log(trainer.step, ev)
            fmt = statistics.mean(w["rewards/format/mean"] for w in window)
            curve.append((trainer.step, time.perf_counter() - start, ev["eval/exact_match"], ev["eval/format"], fmt))
            print(f"step {trainer.step:4d}  {curve[-1][1]:6.0f} s  exact_match {ev['eval/exact_match']:.3f}  "
                  f"format(train, last {len(window)} steps) {fmt:.3f}", flush=True)
            window = []
    after = trainer.evaluate()
    elapsed = time.perf_counter() - start
    logger.log(trainer.step, after)
    logger.close()
    split_after = exact_match_by_carry(trainer)
    trainer.model.save_pretrained(out / "final")
    trainer.tokenizer.save_pretrained(out / "final")

    print(f"\nGRPO on tiny-arith, {trainer.step} steps in {elapsed:.0f} s ({opts.threads} threads)")
    print(f"{'step':>5} {'time_s':>7} {'exact_match':>12} {'eval_format':>12} {'train_format':>13}")
    for step, t, em, ef, tf in curve + [(trainer.step, elapsed, after["eval/exact_match"], after["eval/format"], None)]:
        print(f"{step:>5} {t:>7.0f} {em:>12.3f} {ef:>12.3f} {'' if tf is None else f'{tf:.3f}':>13}")
    gain = 100 * (after["eval/exact_match"] - before["eval/exact_match"])
    print(f"held-out exact match: {100 * before['eval/exact_match']:.1f}% -> {100 * after['eval/exact_match']:.1f}% "
          f"({gain:+.1f} points); target >= +15 points within 900 s")
    for name, label in (("carry", "problems that carry/borrow"), ("no_carry", "problems without carry")):
        print(f"  {label} ({split_before[f'{name}_n']}): {100 * split_before[name]:.1f}% -> "
              f"{100 * split_after[name]:.1f}%")
    (out / "learning_summary.json").write_text(json.dumps(
        {"before": before, "after": after, "steps": trainer.step, "elapsed_s": elapsed, "curve": curve,
         "by_carry_before": split_before, "by_carry_after": split_after}, indent=2))


if __name__ == "__main__":
    main()
