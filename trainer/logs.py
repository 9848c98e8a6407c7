"""Metrics to JSONL and TensorBoard under one set of stable names, and sampled completions.

Metric names (the same in metrics.jsonl, TensorBoard and docs/trainer.md):
  rewards/<name>/mean, rewards/<name>/std   each reward function (NaN rows = not applicable skipped)
  rewards/total/mean, rewards/total/std     the weighted sum
  advantages/mean, advantages/std, loss, kl, entropy, clip_ratio/low, clip_ratio/high
  completions/mean_length, completions/max_length, completions/truncated_fraction (tokens)
  time/generate_s, time/score_s, time/reference_s, time/update_s, time/sync_s, time/step_s
  time/sync_skew_s, time/sync_collective_s   time/sync_s's gradient sync (finish()) split with every
      rank's wall-clock entry and exit: skew = last entry - first entry (the wait for the slowest
      rank), collective = last exit - last entry (the sync itself); trainer.grpo.sync_wait_parts.
      Across hosts the clocks' offset moves time between the two
  throughput/tokens_per_s (completion tokens per second of step time), learning_rate, grad_norm
  eval/exact_match, eval/format            greedy decoding on held-out prompts
"""
from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._completions = None
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                for k, v in metrics.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def log_completions(self, step: int, rows: list[dict]) -> None:
        if self._completions is None:
            self._completions = open(self.out_dir / "completions.jsonl", "a", encoding="utf-8")
        for row in rows:
            self._completions.write(json.dumps({"step": step, **row}) + "\n")
        self._completions.flush()

    def close(self) -> None:
        self._metrics.close()
        if self._completions is not None:
            self._completions.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file. A line cut short by a killed writer (the resumed run
    appends right after it) is not a row and is skipped."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows
