"""The learning demo's task and its smoke version (benchmarks/grpo_learning.py is the full one)."""
import json
import statistics

from trainer.arith import ArithDataConfig, column_work, make_arith_data, sft_completion
from trainer.config import GRPOConfig
from trainer.data import load_jsonl
from trainer.grpo import GRPOTrainer
from trainer.logs import read_metrics
from trainer.selfcheck.assets import tiny_assets


def test_column_work_and_the_teachers_slip():
    assert column_work("37+48") == ("7+8=15,3+4+1=8", "85")
    assert column_work("52-38") == ("12-8=4,5-3-1=1", "14")
    assert column_work("99+99") == ("9+9=18,9+9+1=19", "198")
    # the slip: the carry (borrow) is written and used as 0; the answer follows the slipped work
    assert column_work("37+48", forget_carry=True) == ("7+8=15,3+4+0=7", "75")
    assert column_work("52-38", forget_carry=True) == ("12-8=4,5-3-0=2", "24")
    assert column_work("99+99", forget_carry=True) == ("9+9=18,9+9+0=18", "188")
    assert column_work("41+23", forget_carry=True) == column_work("41+23")  # nothing to carry, nothing to slip
    row = {"prompt": "37+48", "answer": "85"}
    assert sft_completion(row) == "<think>7+8=15,3+4+1=8</think><answer>85</answer>"
    assert sft_completion(row, think=False, forget_carry=True) == "7+8=15,3+4+0=7<answer>75</answer>"


def test_warm_start_data_mixes_formats_and_slips(tmp_path):
    cfg = ArithDataConfig(num_train=10, num_heldout=10, num_sft=2000, sft_think_fraction=0.5, sft_carry_slip=0.6)
    rows = [json.loads(line) for line in open(make_arith_data(tmp_path, cfg)["sft"])]
    tagged = sum(r["completion"].startswith("<think>") for r in rows) / len(rows)
    carrying = [r for r in rows if column_work(r["prompt"]) != column_work(r["prompt"], forget_carry=True)]
    slipped = sum(column_work(r["prompt"], forget_carry=True)[0] in r["completion"] for r in carrying) / len(carrying)
    assert tagged == 0.5
    assert 0.55 < slipped < 0.65 and len(carrying) > 800


def run_smoke(out_dir, seed: int = 0, learning_rate: float = 1e-3, lora=None) -> tuple[float, float]:
    """Mean total reward (accuracy + 0.5 x format) over the first 3 and the last 3 of 12 steps."""
    # Small Qwen2, briefly warm-started: half of its completions wrap the column work in <think>
    # tags (format reward 1), the rest write it untagged (format reward 0). GRPO moves it to the
    # format that pays; completions are up to 30 tokens, so 32 new tokens leave nothing truncated.
    assets = tiny_assets()
    args = GRPOConfig(output_dir=str(out_dir), learning_rate=learning_rate, num_generations=8, per_device_train_batch_size=64,
                      gradient_accumulation_steps=1, max_completion_length=32, max_steps=12, save_steps=100,
                      loss_type="dr_grpo", seed=seed)
    trainer = GRPOTrainer(str(assets.sft_model), ["accuracy", "format"], args,
                          load_jsonl(str(assets.data / "train.jsonl")), lora=lora)
    trainer.train(progress=False)
    rewards = [row["rewards/total/mean"] for row in read_metrics(out_dir / "metrics.jsonl")]
    return statistics.mean(rewards[:3]), statistics.mean(rewards[-3:])


def test_grpo_raises_the_mean_reward(tmp_path):
    first, last = run_smoke(tmp_path)
    print(f"mean reward, first 3 steps {first:.3f} -> last 3 steps {last:.3f}")
    assert last > first + 0.1


def test_lora_grpo_raises_the_mean_reward(tmp_path):
    """LoRA adapters (r 8, about 5% of the weights) learn the same lesson, at LoRA's usual
    larger learning rate (measured: 0.36 -> 0.77 at 3e-3; 1e-2 overshoots)."""
    from trainer.lora import LoraSpec

    first, last = run_smoke(tmp_path, learning_rate=3e-3, lora=LoraSpec(r=8, alpha=16))
    print(f"LoRA: mean reward, first 3 steps {first:.3f} -> last 3 steps {last:.3f}")
    assert last > first + 0.1
