"""Seconds per GRPO step and tokens/s at a fixed setting, ours against TRL's GRPOTrainer.

Setting: 16 prompts x 8 generations x 32 new tokens, dr_grpo, beta 0.04, a randomly
initialised Qwen2 built locally (--shape tiny: 3.3M parameters, hidden 256, 4 layers;
qwen2-0.5b: hidden 896, 24 layers, 14 heads, MLP 4864, as Qwen2-0.5B but with the local
512-token vocabulary), so completions run to the full 32 tokens in both trainers. Both get the
same model, prompts, micro-batching (2 x 64 completions), HF generation, the same cheap
`format` reward and the same precision options (--bf16: bf16 autocast, fp32 weights, on both;
--gradient-checkpointing on both; TRL's own defaults turn both on, so they are always passed
explicitly), so the trainers are what differ. TRL is measured in the same run when it is
installed (`pip install -e .[bench]`). Warm-up steps are left out on both sides.

    .venv/bin/python benchmarks/grpo_step.py [--steps 8] [--warmup 2] [--threads 2] [--no-trl]
        [--device cpu|cuda] [--bf16] [--gradient-checkpointing] [--shape tiny|qwen2-0.5b]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPTS, GENERATIONS, NEW_TOKENS = 16, 8, 32
MICRO_BATCH, ACCUMULATION = 64, 2
SHAPES = {"tiny": {}, "qwen2-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                                     "intermediate_size": 4864}}


def setup(root: Path, shape: str = "tiny"):
    from trainer.arith import ArithDataConfig, make_arith_data
    from trainer.tiny import TinyModelConfig, make_tiny_model

    model = make_tiny_model(root / "model", TinyModelConfig(**SHAPES[shape]))
    paths = make_arith_data(root / "data", ArithDataConfig(num_train=512, num_heldout=16, num_sft=1))
    return model, paths["train"]


def run_ours(model: Path, train: Path, out: Path, steps: int, device: str = "cpu", bf16: bool = False,
             checkpointing: bool = False) -> list[dict]:
    from trainer.config import GRPOConfig
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer

    args = GRPOConfig(output_dir=str(out), learning_rate=1e-5, beta=0.04, loss_type="dr_grpo",
                      num_generations=GENERATIONS, per_device_train_batch_size=MICRO_BATCH,
                      gradient_accumulation_steps=ACCUMULATION, max_completion_length=NEW_TOKENS,
                      max_steps=steps, save_steps=10**6, seed=0, bf16=bf16, gradient_checkpointing=checkpointing)
    trainer = GRPOTrainer(str(model), ["format"], args, load_jsonl(str(train)), device=device)
    rows = []
    for _ in range(steps):
        m = trainer.train_step()
        trainer.step += 1
        rows.append({"step_s": m["time/step_s"], "tokens": m["completions/mean_length"] * PROMPTS * GENERATIONS})
    return rows


def run_trl(model: Path, train: Path, out: Path, steps: int, device: str = "cpu", bf16: bool = False,
            checkpointing: bool = False) -> list[dict]:
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainer.rewards import format as format_reward

    data = datasets.load_dataset("json", data_files=str(train), split="train")
    data = data.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]})
    rows: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            rows.append({"step_s": time.perf_counter() - self.t, "tokens": None})

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and rows:
                rows[-1]["tokens"] = logs["completions/mean_length"] * PROMPTS * GENERATIONS

    args = GRPOConfig(output_dir=str(out), learning_rate=1e-5, beta=0.04, loss_type="dr_grpo",
                      num_generations=GENERATIONS, per_device_train_batch_size=MICRO_BATCH,
                      gradient_accumulation_steps=ACCUMULATION, max_completion_length=NEW_TOKENS,
                      max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                      use_cpu=device == "cpu", bf16=bf16, gradient_checkpointing=checkpointing,
                      disable_tqdm=True, seed=0, temperature=1.0, top_p=1.0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=str(model), reward_funcs=format_reward, args=args, train_dataset=data,
                          callbacks=[Timer()])
    trainer.train()
    return rows


def summarize(rows: list[dict], warmup: int) -> tuple[float, float]:
    timed = rows[warmup:]
    step_s = statistics.median(r["step_s"] for r in timed)
    tokens = statistics.mean(r["tokens"] or PROMPTS * GENERATIONS * NEW_TOKENS for r in timed)
    return step_s, tokens / step_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights) in both trainers")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in both trainers")
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    root = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    model, train = setup(root, opts.shape)
    same = dict(device=opts.device, bf16=opts.bf16, checkpointing=opts.gradient_checkpointing)
    results = {"hdc": summarize(run_ours(model, train, root / "ours", opts.steps, **same), opts.warmup)}
    if not opts.no_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl not installed: pip install -e .[bench] to compare")
        else:
            results[f"trl {trl.__version__}"] = summarize(run_trl(model, train, root / "trl", opts.steps, **same),
                                                          opts.warmup)
    where = torch.cuda.get_device_name() if opts.device == "cuda" else f"{opts.threads} threads"
    print(f"\nGRPO step, {PROMPTS} prompts x {GENERATIONS} generations x {NEW_TOKENS} new tokens, "
          f"dr_grpo, beta 0.04, model {opts.shape}, {where}, bf16 {opts.bf16}, gradient checkpointing "
          f"{opts.gradient_checkpointing}, median of {opts.steps - opts.warmup} steps after {opts.warmup} warm-up")
    print(f"{'trainer':<12} {'s/step':>8} {'tokens/s':>10} {'speed vs hdc':>13}")
    base = results["hdc"][0]
    for name, (step_s, tps) in results.items():
        print(f"{name:<12} {step_s:>8.3f} {tps:>10.0f} {base / step_s:>12.2f}x")
    if len(results) == 2:
        other = [v for k, v in results.items() if k != "hdc"][0][0]
        print(f"hdc is {other / base:.2f}x faster than TRL per step (TRL s/step / hdc s/step)")


if __name__ == "__main__":
    main()
