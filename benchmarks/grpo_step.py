"""Seconds per GRPO step, hdc against TRL's GRPOTrainer, measured so that it cannot mislead.

Setting: 16 prompts x 8 generations x 32 new tokens, dr_grpo, beta 0.04, a randomly initialised
Qwen2 built locally (so completions run to the full 32 tokens in both trainers; --shape: tiny
3.3M parameters, hidden 256 x 4 layers; qwen2-512x8 hidden 512, 8 layers, 8 heads, MLP 2816
(Qwen2-0.5B's MLP ratio); qwen2-0.5b hidden 896 x 24 layers as Qwen2-0.5B with the local 512-token
vocabulary). Both get the same model, prompts, micro-batching (2 x 64 completions), the same cheap
`format` reward, the same threads and the same precision options (--bf16 and
--gradient-checkpointing on both or neither: TRL's own defaults turn both on, so they are passed
explicitly). TRL runs its fastest CPU generation path as measured here (--trl-generation: `static`,
generate with cache_implementation="static", 1.70 s/step against 1.75 s for plain `generate` and
7.75 s with use_transformers_continuous_batching; docs/trainer.md).

How it measures:
- both trainers live in one process and alternate step by step: TRL's training loop runs, and
  each TRL step is followed by one hdc step (run from TRL's on_step_end callback, outside TRL's
  timed window), so a change in the machine's state hits both alike;
- a TRL step is timed from its on_step_begin to its on_step_end (generation, scoring, reference
  pass, both micro-batches, optimizer step; its logging is left out, in TRL's favour); an hdc step
  is `train_step()` end to end;
- the first --warmup steps of each trainer are left out (both have slow first steps);
- /proc/loadavg before and after, and the CPU other processes used while it ran (from /proc/stat,
  this process's own time taken out); when they used more than the cores left beside the threads
  used (+0.25), no ratio is printed. (The 1-minute load average alone cannot decide: it still
  carries the minute before the run, and counts this run's own threads.)

    python benchmarks/grpo_step.py [--steps 8] [--warmup 3] [--threads 2] [--no-trl] [--shape tiny]
        [--device cpu|cuda] [--bf16] [--gradient-checkpointing] [--set grpo_field=value ...] [--ablation]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPTS, GENERATIONS, NEW_TOKENS = 16, 8, 32
MICRO_BATCH, ACCUMULATION = 64, 2
SHAPES = {"tiny": {},
          "qwen2-512x8": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
                          "intermediate_size": 2816},
          "qwen2-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                         "intermediate_size": 4864}}
OTHERS_MAX_CORES = 0.25  # CPU other processes may use during a measurement (cores, averaged)
PHASES = ("time/generate_s", "time/reference_s", "time/update_s")


def setup(root: Path, shape: str = "tiny"):
    from trainer.arith import ArithDataConfig, make_arith_data
    from trainer.tiny import TinyModelConfig, make_tiny_model

    model = make_tiny_model(root / "model", TinyModelConfig(**SHAPES[shape]))
    paths = make_arith_data(root / "data", ArithDataConfig(num_train=512, num_heldout=16, num_sft=1))
    return model, paths["train"]


def hdc_trainer(model: Path, train: Path, out: Path, steps: int, device: str = "cpu", bf16: bool = False,
                checkpointing: bool = False, overrides: dict | None = None):
    from trainer.config import GRPOConfig
    from trainer.data import load_jsonl
    from trainer.grpo import GRPOTrainer

    args = GRPOConfig(output_dir=str(out), learning_rate=1e-5, beta=0.04, loss_type="dr_grpo",
                      num_generations=GENERATIONS, per_device_train_batch_size=MICRO_BATCH,
                      gradient_accumulation_steps=ACCUMULATION, max_completion_length=NEW_TOKENS,
                      max_steps=steps, save_steps=10**6, seed=0, bf16=bf16, gradient_checkpointing=checkpointing,
                      **(overrides or {}))
    return GRPOTrainer(str(model), ["format"], args, load_jsonl(str(train)), device=device)


def hdc_step(trainer) -> dict:
    """One hdc step, timed to when all of its work is done: under grpo.async_generation that includes the
    next round's rollout running in the background (waited for here, so it neither overlaps the next
    trainer's step nor goes uncounted)."""
    start = time.perf_counter()
    m = trainer.train_step()
    if trainer.pending_rollout is not None:
        trainer.pending_rollout.exception()  # blocks until the background rollout is done
    trainer.step = trainer.updates
    return {"step_s": time.perf_counter() - start, **{k: m[k] for k in PHASES}}


def run_trl(model: Path, train: Path, out: Path, steps: int, between, device: str = "cpu", bf16: bool = False,
            checkpointing: bool = False, generation: str = "generate") -> list[dict]:
    """TRL's training loop for `steps` steps; `between()` runs after each, outside the timed window."""
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainer.rewards import format as format_reward

    data = datasets.load_dataset("json", data_files=str(train), split="train")
    data = data.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]})
    rows: list[dict] = []

    class Alternate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            rows.append({"step_s": time.perf_counter() - self.t})
            between()

    extra = {"static": {"cache_implementation": "static"},
             "continuous": {"use_transformers_continuous_batching": True}}.get(generation, {})
    args = GRPOConfig(output_dir=str(out), learning_rate=1e-5, beta=0.04, loss_type="dr_grpo",
                      num_generations=GENERATIONS, per_device_train_batch_size=MICRO_BATCH,
                      gradient_accumulation_steps=ACCUMULATION, max_completion_length=NEW_TOKENS,
                      max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                      use_cpu=device == "cpu", bf16=bf16, gradient_checkpointing=checkpointing,
                      disable_tqdm=True, seed=0, temperature=1.0, top_p=1.0, dataloader_num_workers=0,
                      log_completions=False, **extra)
    trainer = GRPOTrainer(model=str(model), reward_funcs=format_reward, args=args, train_dataset=data,
                          callbacks=[Alternate()])
    trainer.train()
    return rows


# --------------------------------------------------------------------------- the machine's load
def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy / tick, (int(own[11]) + int(own[12])) / tick  # utime, stime


def busy(others_cores: float, threads: int) -> bool:
    """Whether other processes loaded the machine during a run: more than OTHERS_MAX_CORES of CPU beyond the
    cores this run leaves free. Measured from /proc/stat over the run itself, not from /proc/loadavg,
    whose 1-minute figure still carries the minute before (and counts this run's own threads)."""
    free_cores = max(0, (os.cpu_count() or threads) - threads)
    return others_cores > free_cores + OTHERS_MAX_CORES


def spread(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


SPEEDUPS = ("trim_padding", "share_prompt_prefix", "fast_generation", "onednn_linear")


def ablation(model: Path, train: Path, root: Path, opts, same: dict) -> None:
    """Each speed-up alone against the plain path (all off), and all together: one hdc trainer per
    variant in this process, stepping in turn, warm-up left out; medians per phase."""
    variants = {"plain": {s: False for s in SPEEDUPS}, **{f"+{s}": {t: t == s for t in SPEEDUPS} for s in SPEEDUPS},
                "all": {s: True for s in SPEEDUPS},
                "all+async_generation": {**{s: True for s in SPEEDUPS}, "async_generation": True}}
    trainers = {name: hdc_trainer(model, train, root / name.strip("+"), opts.steps, overrides=v, **same)
                for name, v in variants.items()}
    torch.set_num_threads(opts.threads)
    rows: dict[str, list[dict]] = {name: [] for name in trainers}
    load_before = loadavg()
    busy0, own0 = cpu_seconds()
    wall0 = time.perf_counter()
    for _ in range(opts.steps):
        for name, trainer in trainers.items():
            rows[name].append(hdc_step(trainer))
    wall = time.perf_counter() - wall0
    busy1, own1 = cpu_seconds()
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    print(f"\nhdc speed-ups in isolation, model {opts.shape}, {opts.threads} threads, median of "
          f"{opts.steps - opts.warmup} steps after {opts.warmup} warm-up steps, variants stepping in turn")
    print(f"load before: {load_before}\nload after:  {loadavg()}\nother processes used {others:.2f} cores")
    if busy(others, opts.threads):
        print("NOT IDLE: other processes used the cores during the run, the ratios below are noise")
    keys = ("step_s",) + PHASES
    med = {name: {k: statistics.median(r[k] for r in rs[opts.warmup:]) for k in keys} for name, rs in rows.items()}
    print(f"{'variant':<22}" + "".join(f"{k.split('/')[-1]:>16}" for k in keys))
    for name, m in med.items():
        print(f"{name:<22}" + "".join(f"{m[k]:>8.3f} ({med['plain'][k] / m[k]:.2f}x)" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per trainer, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="first steps of each trainer left out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights) in both trainers")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in both trainers")
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--trl-generation", default="static", choices=("generate", "static", "continuous"),
                        help="TRL's generation path: model.generate, with a static KV cache, or continuous batching")
    parser.add_argument("--ablation", action="store_true",
                        help="hdc only: each speed-up alone against the plain path, and all together")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an hdc GRPOConfig field (YAML value), e.g. --set fast_logps=false for the baseline")
    opts = parser.parse_args()
    if opts.warmup >= opts.steps:
        parser.error(f"--warmup must be below --steps ({opts.steps}), got {opts.warmup}")
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in opts.set)}
    torch.set_num_threads(opts.threads)
    root = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    model, train = setup(root, opts.shape)
    same = dict(device=opts.device, bf16=opts.bf16, checkpointing=opts.gradient_checkpointing)
    if opts.ablation:
        return ablation(model, train, root, opts, same)
    ours = hdc_trainer(model, train, root / "ours", opts.steps, overrides=overrides, **same)
    torch.set_num_threads(opts.threads)  # the trainer sets its own when asked; both run on these
    trl_version = None
    if not opts.no_trl:
        try:
            import trl
            trl_version = trl.__version__
        except ImportError:
            print("trl not installed: pip install -e .[bench] to compare")

    load_before = loadavg()
    busy0, own0 = cpu_seconds()
    wall0 = time.perf_counter()
    hdc_rows: list[dict] = []
    trl_rows: list[dict] = []
    if trl_version:
        trl_rows = run_trl(model, train, root / "trl", opts.steps, lambda: hdc_rows.append(hdc_step(ours)),
                           generation=opts.trl_generation, **same)
    else:
        hdc_rows = [hdc_step(ours) for _ in range(opts.steps)]
    wall = time.perf_counter() - wall0
    busy1, own1 = cpu_seconds()
    load_after = loadavg()
    others_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall

    where = torch.cuda.get_device_name() if opts.device == "cuda" else f"{opts.threads} threads"
    print(f"\nGRPO step, {PROMPTS} prompts x {GENERATIONS} generations x {NEW_TOKENS} new tokens, dr_grpo, "
          f"beta 0.04, model {opts.shape}, {where}, bf16 {opts.bf16}, gradient checkpointing "
          f"{opts.gradient_checkpointing}, hdc options {overrides or 'default'}, TRL generation "
          f"{opts.trl_generation}; {opts.steps - opts.warmup} steps per trainer after {opts.warmup} warm-up "
          f"steps each, alternating")
    print(f"load before: {load_before}\nload after:  {load_after}\n"
          f"other processes used {others_cores:.2f} cores on average during the {wall:.0f} s run")
    print(f"{'trainer':<12} {'min s':>7} {'median s':>9} {'max s':>7}   all timed steps (s)")
    timed = {"hdc": [r["step_s"] for r in hdc_rows[opts.warmup:]]}
    if trl_version:
        timed[f"trl {trl_version}"] = [r["step_s"] for r in trl_rows[opts.warmup:]]
    for name, xs in timed.items():
        lo, med, hi = spread(xs)
        print(f"{name:<12} {lo:>7.3f} {med:>9.3f} {hi:>7.3f}   {' '.join(f'{x:.2f}' for x in xs)}")
    parts = {k.split("/")[1][:-2]: statistics.median(r[k] for r in hdc_rows[opts.warmup:]) for k in PHASES}
    print("hdc median parts: " + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()))
    if not trl_version:
        return
    if opts.device == "cpu" and busy(others_cores, opts.threads):
        print(f"NO RATIO: the machine was not idle (other processes used {others_cores:.2f} cores, above "
              f"{OTHERS_MAX_CORES}, or the cores left beside the {opts.threads} used); measure again on an idle machine")
        return
    hdc_s, trl_s = timed["hdc"], timed[f"trl {trl_version}"]
    ratio = statistics.median(trl_s) / statistics.median(hdc_s)
    print(f"hdc is {ratio:.2f}x faster than TRL per step (median TRL s / median hdc s); spread "
          f"{min(trl_s) / max(hdc_s):.2f}x (TRL's fastest / hdc's slowest) to "
          f"{max(trl_s) / min(hdc_s):.2f}x (TRL's slowest / hdc's fastest)")


if __name__ == "__main__":
    main()
