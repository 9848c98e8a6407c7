"""Smoke version of the learning demo (benchmarks/grpo_learning.py): the mean reward goes up."""
import statistics

from trainer.config import GRPOConfig
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.logs import read_metrics
from trainer.testing import tiny_assets


def run_smoke(out_dir, seed: int = 0) -> tuple[float, float]:
    """Mean total reward (accuracy + 0.5 x format) over the first 3 and the last 3 of 12 steps."""
    # Small Qwen2, briefly warm-started on a mix: half of its completions work the sum out in
    # <think> (format reward 1), the rest answer at once (format reward 0). GRPO moves it to the
    # format that pays; completions are up to 30 tokens, so 32 new tokens leave nothing truncated.
    assets = tiny_assets()
    args = GRPOConfig(output_dir=str(out_dir), learning_rate=1e-3, num_generations=8, per_device_train_batch_size=64,
                      gradient_accumulation_steps=1, max_completion_length=32, max_steps=12, save_steps=100,
                      loss_type="dr_grpo", seed=seed)
    trainer = GRPOTrainer(str(assets.sft_model), ["accuracy", "format"], args,
                          load_jsonl(str(assets.data / "train.jsonl")))
    trainer.train(progress=False)
    rewards = [row["rewards/total/mean"] for row in read_metrics(out_dir / "metrics.jsonl")]
    return statistics.mean(rewards[:3]), statistics.mean(rewards[-3:])


def test_grpo_raises_the_mean_reward(tmp_path):
    first, last = run_smoke(tmp_path)
    print(f"mean reward, first 3 steps {first:.3f} -> last 3 steps {last:.3f}")
    assert last > first + 0.1
