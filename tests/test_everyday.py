"""What a TRL / torchrun / Hugging Face user reaches for first: resumed logs, chat templates,
hub ids, list-index overrides, preset sweeps."""
import json
import shutil
from pathlib import Path

import pytest

from hdc.errors import UserError
from trainer.config import GRPOConfig
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.logs import read_metrics, truncate_logs
from trainer.selfcheck.assets import tiny_assets

ROOT = Path(__file__).resolve().parents[1]


def tiny_trainer(out: Path, model=None, **kw) -> GRPOTrainer:
    assets = tiny_assets()
    args = GRPOConfig(**{**dict(output_dir=str(out), learning_rate=1e-4, num_generations=4,
                                per_device_train_batch_size=8, max_completion_length=16, max_steps=2,
                                save_steps=1, seed=0), **kw})
    return GRPOTrainer(model=str(model or assets.sft_model), reward_funcs=["accuracy", "format"], args=args,
                       train_dataset=load_jsonl(str(assets.data / "train.jsonl")))


def test_resume_truncates_the_logs_to_the_checkpoint_step(tmp_path):
    # a run killed after logging step 3 but before checkpointing it: its newest checkpoint is step 2
    tiny_trainer(tmp_path, max_steps=3, save_steps=2, log_completions=True).train(progress=False)
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000003")
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    tiny_trainer(tmp_path, max_steps=3, save_steps=2, log_completions=True).train(resume_from_checkpoint=True,
                                                                                  progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    steps = [json.loads(line)["step"] for line in open(tmp_path / "completions.jsonl")]
    assert sorted(set(steps)) == [1, 2, 3] and len(steps) == 3 * 4  # 4 rows per step, none twice


def test_truncate_logs_keeps_rows_up_to_the_step_and_drops_a_cut_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval/x": 1}\n{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    assert truncate_logs(tmp_path, 2) == {"metrics.jsonl": 2}
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]
