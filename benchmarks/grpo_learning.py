"""Does GRPO learn? Held-out exact match before/after recipes/tiny-arith.yaml, with the curve.

Builds everything locally (tiny Qwen2 + BPE tokenizer, arithmetic data, supervised warm
start), then trains with the tiny-arith recipe under a wall-clock budget (default 15 min,
evaluations included) and prints held-out exact match (greedy) and the format reward over
time. Assets already in --work are reused, so a rerun skips the warm start.

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
            SFTConfig(max_steps=sft_steps, learning_rate=sft_lr))
        print(f"warm start: {sft_steps} SFT steps in {time.perf_counter() - t:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/learning")
    parser.add_argument("--budget-s", type=float, default=900.0, help="wall-clock budget for GRPO incl. evals")
    parser.add_argument("--sft-steps", type=int, default=400)
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
    trainer.model.save_pretrained(out / "final")
    trainer.tokenizer.save_pretrained(out / "final")

    print(f"\nGRPO on tiny-arith, {trainer.step} steps in {elapsed:.0f} s ({opts.threads} threads)")
    print(f"{'step':>5} {'time_s':>7} {'exact_match':>12} {'eval_format':>12} {'train_format':>13}")
    for step, t, em, ef, tf in curve + [(trainer.step, elapsed, after["eval/exact_match"], after["eval/format"], None)]:
        print(f"{step:>5} {t:>7.0f} {em:>12.3f} {ef:>12.3f} {'' if tf is None else f'{tf:.3f}':>13}")
    gain = 100 * (after["eval/exact_match"] - before["eval/exact_match"])
    print(f"held-out exact match: {100 * before['eval/exact_match']:.1f}% -> {100 * after['eval/exact_match']:.1f}% "
          f"({gain:+.1f} points); target >= +15 points within 900 s")
    (out / "learning_summary.json").write_text(json.dumps(
        {"before": before, "after": after, "steps": trainer.step, "elapsed_s": elapsed, "curve": curve}, indent=2))


if __name__ == "__main__":
    main()
