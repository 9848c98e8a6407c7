"""A data-parallel GRPO run on emulated sites, its logged gradient-sync time beside the simulator (root).

    .venv/bin/python benchmarks/emulated_grpo.py [--one-way-delay 10ms] [--bandwidth 1Gbps] [--steps 8]
                                                 [--strategy hierarchical] [--bucket-mb 25] [--warm]

Brings up tiny-2site as 2 sites x 2 ranks (prefix `hdcgrpo`; torn down at the end, also on
failure or Ctrl-C), runs `hdc train` once per rank inside its site on the small recipe of the
reliability tests (trainer.testing.tiny_assets: the small Qwen2 model, arithmetic prompts,
length reward, 8 completions per rank per step, float32) and reads `time/sync_s` from the rank-0
metrics.jsonl (the max over ranks of the time a rank WAITED for gradient sync in that step).

Beside it, for the same gradient sync: the plan the trainer builds (hdc.strategies.bucketed over
the model's parameter buckets, reverse registration order, cap distributed.bucket_size_mb; 4-byte
elements) timed alone by `simulator.collectives.simulate_plan` on the emulated topology (delay
and bandwidth overrides applied, nothing calibrated) and its alpha-beta bound `hdc.cost.plan_time_s`.

The two are not the same quantity: buckets are synchronized while backward is still running,
so time/sync_s is only the exposed part of the sync (what overlap did not hide): it times
after_backward + finish (fire what is left, wait) + after_optimizer_step; the trainer's metric
all-reduces are outside it. With this model's one bucket (1.5 MB < the 25 MB cap) the bucket fires
when backward has produced its last gradient, so little is hidden and time/sync_s is close to the
whole sync. Step 1 (connection set-up, first window) is
excluded from the median. `--warm` sets net.ipv4.tcp_slow_start_after_idle=0 in the sites (as
`hdc validate` does); by default the kernel restarts TCP slow start after the idle gap between
steps, as a real job on default settings would.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from trainer.logs import read_metrics  # noqa: E402

PREFIX = "hdcgrpo"


def model_buckets(model_dir: str, bucket_cap_bytes: int) -> tuple[list[int], int]:
    """(bucket numels, element size) exactly as DistGradientSync._make_buckets forms them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype="float32")
    params = list(reversed([p for p in model.parameters() if p.requires_grad]))
    buckets, cur, size = [], 0, 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if cur and size + nbytes > bucket_cap_bytes:
            buckets.append(cur)
            cur, size = 0, 0
        cur += p.numel()
        size += nbytes
    buckets.append(cur)
    return buckets, params[0].element_size()


def predict(topology, strategy_name: str, numels: list[int], esize: int) -> dict:
    from hdc.cost import plan_time_s
    from hdc.strategies import bucketed, make_strategy
    from simulator.collectives import simulate_plan
    from simulator.network import Routes

    plan = bucketed(make_strategy(strategy_name), topology, [list(range(topology.num_gpus))], numels, esize)
    times = simulate_plan(Routes(topology), plan)
    return {"plan": plan.strategy, "steps": len(plan.steps),
            "simulated_s": max((end for _, end in times.values()), default=0.0),
            "bound_s": plan_time_s(topology, plan)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one-way-delay", default="10ms")
    ap.add_argument("--bandwidth", default="1Gbps")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--strategy", default="hierarchical")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="distributed.bucket_size_mb")
    ap.add_argument("--warm", action="store_true", help="tcp_slow_start_after_idle=0 in the sites")
    ap.add_argument("--out", default=None, help="work directory (default: a fresh temporary one)")
    args = ap.parse_args(argv)

    import kill_storm as ks
    from hdc.topology import load_topology
    from hdc.units import parse_bandwidth, parse_time
    from experiments.emulate import launch, netns
    from experiments.emulate.spec import build_spec, with_ranks_per_site, with_wan, write_topology
    from trainer.testing import tiny_assets

    netns.require_root()
    one_way, bw = parse_time(args.one_way_delay), parse_bandwidth(args.bandwidth)
    topo = with_ranks_per_site(with_wan(load_topology("tiny-2site"), one_way_s=one_way, bandwidth_Bps=bw), 2)
    work = Path(args.out or tempfile.mkdtemp(prefix="hdc-emulated-grpo-"))
    assets = tiny_assets(sft_steps=1, num_train=200)
    recipe = ks.write_recipe(work / "recipe.yaml", assets, max_steps=args.steps, save_steps=10 ** 6,
                             save_total_limit=None, timeout_s=60.0, strategy=args.strategy)
    out, log = work / "run", work / "ranks.log"

    netns.down(PREFIX, quiet=True)
    try:
        spec = build_spec(topo, prefix=PREFIX, mode="delayline")
        sysctl = {"net.ipv4.tcp_slow_start_after_idle": "0"} if args.warm else {}
        spec.extra = {"shaped": True, "sysctl": sysctl}
        netns.up(spec, shape_bandwidth=True)
        topo_file = write_topology(topo, os.path.join(spec.state_dir, "topology.yaml"))
        argv_train = ks.train_argv(recipe, out, sets=(f"distributed.bucket_size_mb={args.bucket_mb}",))
        print(f"emulated: tiny-2site, 2 sites x 2 ranks, one way {one_way * 1e3:g} ms, {bw * 8 / 1e9:g} Gbit/s, "
              f"{'warm TCP' if args.warm else 'kernel-default TCP'}; {args.strategy}, {args.steps} steps; "
              f"work dir {work}", flush=True)
        with open(log, "wb") as fh:
            procs = launch.start_ranks(spec, argv_train, topo_file, stdout=fh, stderr=fh,
                                       extra_env={"PYTHONUNBUFFERED": "1"})
            rc = launch.wait_ranks(procs, timeout_s=60 + 60 * args.steps)
        dl = netns.status(PREFIX)["delayline_stats"]
    finally:
        netns.down(PREFIX, quiet=True)
    if rc != 0:
        print(f"the run failed (rc {rc}); last lines of {log}:\n" + log.read_text()[-3000:], file=sys.stderr)
        return 1

    rows = [row for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    sync = [r["time/sync_s"] for r in rows]
    step = [r["time/step_s"] for r in rows]
    steady = sync[1:] if len(sync) > 1 else sync
    numels, esize = model_buckets(str(assets.sft_model), int(args.bucket_mb * 1e6))
    pred = predict(topo, args.strategy, numels, esize)

    print(f"\nmodel: {sum(numels)} parameters, {sum(numels) * esize / 1e6:.2f} MB of gradient per rank in "
          f"{len(numels)} bucket(s); plan {pred['plan']} ({pred['steps']} steps)")
    print("\nper step (rank-0 log; time/sync_s is the max over ranks):")
    print("| step | time/sync_s ms | time/step_s s |")
    print("|---:|---:|---:|")
    for r, s_, t in zip(rows, sync, step):
        print(f"| {r['step']} | {s_ * 1e3:.1f} | {t:.2f} |")
    med = statistics.median(steady)
    print("\n| quantity | ms |")
    print("|---|---:|")
    print(f"| measured exposed sync per step (median of steps 2..{len(sync)}) | {med * 1e3:.1f} |")
    print(f"| measured exposed sync, min..max over those steps | {min(steady) * 1e3:.1f}..{max(steady) * 1e3:.1f} |")
    print(f"| simulator: full plan alone (simulate_plan, uncalibrated topology) | {pred['simulated_s'] * 1e3:.1f} |")
    print(f"| alpha-beta bound (hdc.cost.plan_time_s) | {pred['bound_s'] * 1e3:.1f} |")
    print(f"| measured / simulated | {med / pred['simulated_s']:.2f} |")
    if dl:
        print(f"\ndelay line: {dl['forwarded_bytes'] / 1e6:.1f} MB forwarded, mean lateness "
              f"{dl['mean_lateness_s'] * 1e6:.0f} us, CPU {dl['cpu_user_s'] + dl['cpu_system_s']:.1f} s")
    print("note: time/sync_s is only the part of the sync the trainer waited for (buckets start during "
          "backward), so it can sit below the full plan's time; gloo's per-message rendezvous (a second "
          "one-way delay per message, see docs/emulation.md) and TCP slow start push it above the model.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
