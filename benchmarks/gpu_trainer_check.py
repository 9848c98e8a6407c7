"""The GRPO trainer's GPU options on one GPU, and the summary of a `hdc train` run (used by gpu_check.sh).

    python benchmarks/gpu_trainer_check.py options              # bf16 + checkpointing + offloaded bf16 reference
    python benchmarks/gpu_trainer_check.py summary RUN_DIR      # reward first vs last 5 steps, tokens/s

`options` trains 3 steps on cuda with grpo.bf16, grpo.gradient_checkpointing, beta 0.04,
grpo.ref_dtype bfloat16 and grpo.ref_offload, and checks where everything lives: the model and
every batch tensor on cuda, fp32 weights and AdamW state, the reference in bf16 back on the
CPU after each step; it prints the peak GPU memory. Exit status 1 on a failed check.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path


def options() -> int:
    import torch

    from trainer.config import GRPOConfig
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer
    from trainer.selfcheck.assets import tiny_assets

    assets = tiny_assets(sft_steps=50)
    out = Path(tempfile.mkdtemp(prefix="gpu-options-"))
    args = GRPOConfig(output_dir=str(out), learning_rate=1e-4, num_generations=4, per_device_train_batch_size=8,
                      gradient_accumulation_steps=2, max_completion_length=24, max_steps=3, save_steps=100, seed=0,
                      bf16=True, gradient_checkpointing=True, beta=0.04, ref_dtype="bfloat16", ref_offload=True)
    t = GRPOTrainer(str(assets.sft_model), ["format"], args, load_jsonl(str(assets.data / "train.jsonl")),
                    device="cuda")
    seen = set()
    t.model.model.register_forward_pre_hook(lambda m, a, kw: seen.add(kw["input_ids"].device.type), with_kwargs=True)
    torch.cuda.reset_peak_memory_stats()
    losses = []
    for _ in range(args.max_steps):
        losses.append(t.train_step()["loss"])
        t.step += 1
    checks = {
        "model on cuda": {p.device.type for p in t.model.parameters()} == {"cuda"},
        "every forward's input_ids on cuda": seen == {"cuda"},
        "fp32 master weights": {p.dtype for p in t.model.parameters()} == {torch.float32},
        "fp32 AdamW state": {s["exp_avg"].dtype for s in t.optimizer.state.values()} == {torch.float32},
        "reference in bf16": {p.dtype for p in t.ref_model.parameters()} == {torch.bfloat16},
        "reference back on the CPU": {p.device.type for p in t.ref_model.parameters()} == {"cpu"},
        "finite losses": all(x == x and abs(x) < 1e6 for x in losses),
        "gradient checkpointing on": t.model.is_gradient_checkpointing,
    }
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"  losses {['%.4g' % x for x in losses]}, peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 0 if all(checks.values()) else 1


def summary(run_dir: str) -> int:
    from trainer.logs import read_metrics

    rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "rewards/total/mean" in r]
    first = statistics.mean(r["rewards/total/mean"] for r in rows[:5])
    last = statistics.mean(r["rewards/total/mean"] for r in rows[-5:])
    tps = statistics.median(r["throughput/tokens_per_s"] for r in rows[2:])
    step_s = statistics.median(r["time/step_s"] for r in rows[2:])
    print(f"  {len(rows)} steps: reward {first:.3f} (steps 1-5) -> {last:.3f} (last 5): "
          f"{'rises' if last > first else 'DOES NOT RISE'}; median {tps:.0f} tokens/s, {step_s:.3f} s/step "
          "(steps 3 on)")
    return 0 if last > first else 1


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "options":
        sys.exit(options())
    if len(sys.argv) == 3 and sys.argv[1] == "summary":
        sys.exit(summary(sys.argv[2]))
    sys.exit(__doc__)
