"""Smoke version of the learning demo (benchmarks/grpo_learning.py): the mean reward goes up."""
import statistics

from trainer.config import GRPOConfig
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.logs import read_metrics
from trainer.testing import tiny_assets


def test_grpo_raises_the_mean_reward(tmp_path):
    assets = tiny_assets()  # small Qwen2, briefly warm-started: answers in format about half the time
    args = GRPOConfig(output_dir=str(tmp_path), learning_rate=1e-3, num_generations=8, per_device_train_batch_size=64,
                      gradient_accumulation_steps=1, max_completion_length=20, max_steps=16, save_steps=100,
                      loss_type="dr_grpo", seed=0)
    trainer = GRPOTrainer(str(assets.sft_model), ["accuracy", "format"], args,
                          load_jsonl(str(assets.data / "train.jsonl")))
    trainer.train(progress=False)
    rewards = [row["rewards/total/mean"] for row in read_metrics(tmp_path / "metrics.jsonl")]
    first, last = statistics.mean(rewards[:4]), statistics.mean(rewards[-4:])
    print(f"mean reward, first 4 steps {first:.3f} -> last 4 steps {last:.3f}")
    assert last > first + 0.1
