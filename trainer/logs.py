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


LOG_FILES = ("metrics.jsonl", "completions.jsonl")  # rows keyed by "step", appended as a run goes


def truncate_logs(out_dir: str | Path, step: int) -> dict[str, int]:
    """Drop the rows logged after `step` (the checkpoint a run resumes from) from OUT's JSONL
    logs, so the resumed run's rows replace them instead of repeating their steps; a line cut
    short by a kill goes too. Each file is rewritten atomically (temp file + os.replace).
    Returns the rows dropped per file."""
    import os

    dropped = {}
    for name in LOG_FILES:
        path = Path(out_dir) / name
        if not path.is_file():
            continue
        kept, n = [], 0
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    keep = json.loads(line)["step"] <= step
                except (ValueError, KeyError, TypeError):
                    keep = False
                if keep:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    n += 1
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        dropped[name] = n
    return dropped


REPORT_TO = ("jsonl", "tensorboard", "wandb")  # grpo.report_to's choices, as TRL's report_to names them


class MetricsLogger:
    """Each step's metrics to every sink of `report_to` (metrics.jsonl, TensorBoard under tb/,
    Weights & Biases under wandb/, offline unless WANDB_MODE says otherwise), and sampled
    completions to completions.jsonl. `resume_step`: the checkpoint this run resumed from;
    TensorBoard then purges the events logged after it (truncate_logs does the JSONL files)."""

    def __init__(self, out_dir: str | Path, report_to: tuple[str, ...] | list[str] = ("jsonl", "tensorboard"),
                 resume_step: int | None = None, run_config: dict | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") if "jsonl" in report_to else None
        self._completions = None
        self._tb = self._wandb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=purge)
        if "wandb" in report_to:
            self._wandb = open_wandb(self.out_dir, run_config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        finite = {k: v for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
        if self._metrics is not None:
            row = {"step": step, **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                    for k, v in metrics.items()}}
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
        if self._tb is not None:
            for k, v in finite.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(finite, step=step)

    def log_completions(self, step: int, rows: list[dict]) -> None:
        if self._completions is None:
            self._completions = open(self.out_dir / "completions.jsonl", "a", encoding="utf-8")
        for row in rows:
            self._completions.write(json.dumps({"step": step, **row}) + "\n")
        self._completions.flush()

    def close(self) -> None:
        for sink in (self._metrics, self._completions, self._tb):
            if sink is not None:
                sink.close()
        if self._wandb is not None:
            self._wandb.finish()


def open_wandb(out_dir: Path, run_config: dict | None):
    """A wandb run writing under OUT/wandb: offline (no network, no account) unless WANDB_MODE
    is set; `wandb sync OUT/wandb/offline-run-*` uploads it later."""
    import os

    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "hdc"), name=out_dir.name, dir=str(out_dir),
                      config=run_config or {})


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
