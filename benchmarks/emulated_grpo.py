"""A data-parallel GRPO run on emulated sites, its logged gradient-sync time beside the simulator (root).

    .venv/bin/python benchmarks/emulated_grpo.py [--one-way-delay 10ms] [--bandwidth 1Gbps] [--steps 8]
                                                 [--strategy hierarchical] [--bucket-mb 25] [--warm]
                                                 [--sysctl KEY=VALUE ...] [--out RESULT.json] [--work-dir DIR]

Brings up tiny-2site as 2 sites x 2 ranks (prefix `hdcgrpo`; torn down at the end, also on
failure or Ctrl-C) and, in those sites, one after the other:
1. `hdc validate`'s worker (experiments.emulate.worker: the same launcher and allocator setting)
   with one case: its calibration probe, so the model's constants are this config's, measured
   on the same namespaces, delay line and TCP settings right before training; then the
   strategy's plan over the whole gradient (the trainer's plan when it has one bucket) timed
   alone from a common start, as `hdc validate` times a case;
2. `hdc train` once per rank on the small recipe of the reliability tests
   (trainer.selfcheck.assets.tiny_assets: the small Qwen2 model, arithmetic prompts, length reward, 8
   completions per rank per step, float32), reading the rank-0 metrics.jsonl.

Measured per step: `time/sync_s`, the longest time one rank waited in the gradient sync, and its
two parts from every rank's wall-clock entry into and exit from finish()
(trainer.grpo.sync_wait_parts): `time/sync_skew_s`, the wait for the last rank to arrive, and
`time/sync_collective_s`, from the last arrival to the last exit: the sync itself.

Predicted, for the plan the trainer builds (hdc.sync over the model's parameter buckets, reverse
registration order, cap distributed.bucket_size_mb; 4-byte elements; experiments/emulate/grpo_sync.py),
run alone from a common start:
  calibrated    - `hdc validate`'s model: the simulator's `pipelined` mode (gloo's ring) on the
                  topology with the probe's constants (calibrate.fit, calibrate.model_for)
  uncalibrated  - simulate_plan's default (coflow) mode on the topology as written
  bound         - hdc.cost.plan_time_s, the alpha-beta time on the topology as written
The collective part compares with the calibrated prediction; the plan timed alone separates the
model's error (alone vs predicted) from what the training step adds (collective vs alone).
Medians are over steps 2..N (step 1 pays connection set-up). `--warm` sets
net.ipv4.tcp_slow_start_after_idle=0 in the sites (as `hdc validate` does); `--sysctl` sets any
other, e.g. the congestion control (docs/emulation.md shows what the host's BBR does here).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.logs import read_metrics  # noqa: E402
from experiments.emulate.grpo_sync import MEASURED, STRATEGIES, model_buckets, predict, summarize  # noqa: E402

PREFIX = "hdcgrpo"
def run_worker(spec, topo_file: str, work: Path, master_port: int, case: dict, timeout_s: float) -> dict:
    """`hdc validate`'s worker in the sites as they are: its calibration probe, then `case` timed
    from a common start (1 warm-up, 5 repeats). The worker's result (calibration, results)."""
    from experiments.emulate.validate import run_workers

    folder = work / "worker"
    folder.mkdir(exist_ok=True)
    job = {"topology_file": topo_file, "cases": [case], "warmup": 1, "repeats": 5, "timeout_s": timeout_s}
    return run_workers(spec, topo_file, job, str(folder), timeout_s, master_port=master_port)


def print_tables(rows: list[dict], s: dict) -> None:
    print("\nper step (rank-0 log; each value is one step's, over all ranks):")
    print("| step | time/sync_s ms | skew ms | collective ms | time/step_s s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['time/sync_s'] * 1e3:.1f} | {r['time/sync_skew_s'] * 1e3:.1f} | "
              f"{r['time/sync_collective_s'] * 1e3:.1f} | {r['time/step_s']:.2f} |")
    steps = f"{s['steps'][0]}..{s['steps'][-1]}"
    print(f"\n| quantity (median of steps {steps}) | ms |")
    print("|---|---:|")
    print(f"| measured time/sync_s (longest wait of one rank) | {s['sync_ms']:.1f} |")
    print(f"| measured skew (wait for the last rank to enter the sync) | {s['skew_ms']:.1f} |")
    print(f"| measured collective (last entry to last exit) | {s['collective_ms']:.1f} |")
    print(f"| measured: the plan alone from a common start (validate's worker, median of 5) | {s['alone_ms']:.1f} |")
    print(f"| predicted, calibrated pipelined model (as hdc validate) | {s['calibrated_ms']:.1f} |")
    print(f"| predicted, uncalibrated simulator | {s['uncalibrated_ms']:.1f} |")
    print(f"| alpha-beta bound | {s['bound_ms']:.1f} |")
    print(f"| collective / calibrated | {s['collective_over_calibrated']:.2f} |")
    print(f"| plan alone / calibrated | {s['alone_over_calibrated']:.2f} |")
    print(f"| time/sync_s / calibrated | {s['sync_over_calibrated']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one-way-delay", default="10ms")
    ap.add_argument("--bandwidth", default="1Gbps")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--strategy", default="hierarchical", choices=STRATEGIES)
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="distributed.bucket_size_mb")
    ap.add_argument("--warm", action="store_true", help="tcp_slow_start_after_idle=0 in the sites")
    ap.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                    help="a sysctl to set in every site (repeatable), e.g. net.ipv4.tcp_congestion_control=reno")
    ap.add_argument("--out", default=None, help="also write the tables, calibration and prediction here (JSON)")
    ap.add_argument("--work-dir", default=None, help="work directory (default: a fresh temporary one)")
    args = ap.parse_args(argv)

    import kill_storm as ks
    from transformers import AutoModelForCausalLM

    from hdc.topology import load_topology
    from hdc.units import parse_bandwidth, parse_time
    from experiments.emulate import calibrate, launch, netns
    from experiments.emulate.spec import build_spec, with_ranks_per_site, with_wan, write_topology
    from trainer.selfcheck.assets import tiny_assets

    netns.require_root()
    if any("=" not in kv for kv in args.sysctl):
        ap.error(f"--sysctl: expected KEY=VALUE, got {args.sysctl}")
    sysctl = dict(kv.split("=", 1) for kv in args.sysctl)
    if args.warm:
        sysctl["net.ipv4.tcp_slow_start_after_idle"] = "0"
    one_way, bw = parse_time(args.one_way_delay), parse_bandwidth(args.bandwidth)
    topo = with_ranks_per_site(with_wan(load_topology("tiny-2site"), one_way_s=one_way, bandwidth_Bps=bw), 2)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hdc-emulated-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    assets = tiny_assets(sft_steps=1, num_train=200)
    recipe = ks.write_recipe(work / "recipe.yaml", assets, max_steps=args.steps, save_steps=10 ** 6,
                             save_total_limit=None, timeout_s=60.0, strategy=args.strategy)
    out, log = work / "run", work / "ranks.log"
    model = AutoModelForCausalLM.from_pretrained(str(assets.sft_model), dtype="float32")
    numels, esize = model_buckets(model, int(args.bucket_mb * 1e6))
    alone = {"strategy": args.strategy, "size_bytes": sum(numels) * esize}
    config = {"topology": "tiny-2site", "sites": 2, "ranks_per_site": 2, "one_way_ms": one_way * 1e3,
              "bandwidth_Mbps": bw * 8 / 1e6, "strategy": args.strategy,
              "steps": args.steps, "bucket_mb": args.bucket_mb, "sysctl": sysctl}

    netns.down(PREFIX, quiet=True)
    try:
        spec = build_spec(topo, prefix=PREFIX, mode="delayline")
        spec.extra = {"shaped": True, "sysctl": sysctl}
        netns.up(spec, shape_bandwidth=True)
        topo_file = write_topology(topo, os.path.join(spec.state_dir, "topology.yaml"))
        print(f"emulated: tiny-2site, 2 sites x 2 ranks, one way {one_way * 1e3:g} ms, {bw * 8 / 1e9:g} Gbit/s, "
              f"sysctl {sysctl or 'none'}; {args.strategy}, {args.steps} steps; work dir {work}", flush=True)
        port = launch.free_port(spec)  # the worker and the run each get their own rendezvous port
        worker = run_worker(spec, topo_file, work, port, alone, timeout_s=300.0)
        argv_train = ks.train_argv(recipe, out, sets=(f"distributed.bucket_size_mb={args.bucket_mb}",))
        with open(log, "wb") as fh:
            procs = launch.start_ranks(spec, argv_train, topo_file, master_port=port + 1, stdout=fh, stderr=fh,
                                       extra_env={"PYTHONUNBUFFERED": "1"})
            rc = launch.wait_ranks(procs, timeout_s=60 + 60 * args.steps)
        dl = netns.status(PREFIX)["delayline_stats"]
    finally:
        netns.down(PREFIX, quiet=True)
    if rc != 0:
        print(f"the run failed (rc {rc}); last lines of {log}:\n" + log.read_text()[-3000:], file=sys.stderr)
        return 1

    rows = [row for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    constants = calibrate.fit(topo, worker["calibration"])
    pred = predict(topo, constants, args.strategy, numels, esize)
    s = summarize(rows, worker["results"][0]["times_s"], pred)

    print(f"\nmodel: {sum(numels)} parameters, {sum(numels) * esize / 1e6:.2f} MB of gradient per rank in "
          f"{len(numels)} bucket(s); plan {pred['plan']} ({pred['plan_steps']} steps)")
    print("calibration: " + ", ".join(f"{k} {v:.4g}" for k, v in dataclasses.asdict(constants).items()))
    print_tables(rows, s)
    if dl:
        print(f"\ndelay line: {dl['forwarded_bytes'] / 1e6:.1f} MB forwarded, mean lateness "
              f"{dl['mean_lateness_s'] * 1e6:.0f} us, CPU {dl['cpu_user_s'] + dl['cpu_system_s']:.1f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "config": config, "summary": s, "prediction": pred, "calibration": dataclasses.asdict(constants),
            "worker": worker, "steps": [{"step": r["step"], **{k: r[m] * 1e3 for k, m in MEASURED.items()},
                                       "step_s": r["time/step_s"]} for r in rows]}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
