"""`hdc validate`: the simulator checked against real gloo collectives on emulated sites.

For each config (topology × one-way delay × bandwidth) it brings the sites up, starts one
worker per rank (experiments.emulate.worker) that first runs the calibration probe
(calibrate.py) and then times every (strategy, size) case with the real executor; it tears
the sites down (also on Ctrl-C or an error) and sets beside each measured median:
  predicted  - the simulator's `pipelined` mode (gloo's ring: segments, window, rendezvous) on
               the topology with the probe's constants (calibrate.fit / calibrate.model_for)
  bound      - hdc.cost's alpha-beta time on the topology as written (no calibration)
Rows go to a CSV as each config finishes, the raw measurements to <out>.raw.jsonl; the table
and a summary are printed. `--recompute RAW...` redoes the predictions from raw files alone.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile

from hdc import cost
from hdc.errors import UserError
from hdc.strategies import STRATEGY_NAMES, make_strategy
from hdc.topology import Topology
from hdc.units import parse_bandwidth, parse_size, parse_time
from experiments.emulate import calibrate, launch, netns
from experiments.emulate.executor import predict_s
from experiments.emulate.spec import build_spec, case_strategy, topology_to_data, wan_pair, write_topology

# Connections stay warm between repeats: without this, TCP restarts from its initial window
# after every idle gap longer than an RTO, and each measurement mixes in a random amount of
# slow start (documented in docs/emulation.md with the numbers either way).
VALIDATE_SYSCTL = {"net.ipv4.tcp_slow_start_after_idle": "0"}

# Freed memory stays in the rank for reuse, as a training loop's caching allocator keeps it:
# glibc otherwise unmaps every block over its mmap threshold (at most 32 MiB) on free, and a
# large block allocated per call page-faults afresh every time — 1.1-1.8 GB/s on this VM against
# 9-12 GB/s for reused memory (docs/emulation.md). The executor now pools its own scratch
# (trainer/distributed/buffers.py); this keeps any other per-call allocation honest too.
# `--allocator default` measures with glibc's defaults.
ALLOCATOR_ENV = {"reuse": {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)},
                 "default": {}}

TIE_PCT = 5.0  # strategies measured closer than this are a tie for the ranking check

COLUMNS = ["config", "sites", "ranks_per_site", "one_way_ms", "bandwidth_Mbps", "strategy", "size_MiB",
           "repeats", "measured_median_ms", "measured_min_ms", "measured_max_ms", "spread_pct",
           "predicted_ms", "error_pct", "alpha_beta_bound_ms", "measured_over_bound", "model", "executor",
           "calib_call_overhead_ms", "calib_local_latency_us", "calib_local_MBps", "calib_wan_efficiency",
           "calib_forwarder_MBps",
           "probe_wan_alpha_ms", "probe_wan_extra_ms", "probe_wan_flow_Mbps", "probe_wan_share"]


def add_validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategies", default="flat_ring,hierarchical,chunked",
                   help=f"comma list of {', '.join(STRATEGY_NAMES)}, each with its defaults (chunked: --chunks; "
                        f"compressed: int8 over hierarchical) (default flat_ring,hierarchical,chunked)")
    p.add_argument("--sizes", default="1MiB,4MiB,16MiB,64MiB", help="bytes per rank, comma list")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per case first (default 1)")
    p.add_argument("--chunks", type=int, default=4, help="chunks of 'chunked' (default 4, inner hierarchical)")
    p.add_argument("--max-case-s", type=float, default=2.5,
                   help="skip a size whose alpha-beta bound exceeds this for some strategy (keeps sweeps short)")
    p.add_argument("--allocator", choices=sorted(ALLOCATOR_ENV), default="reuse",
                   help="reuse (default): ranks keep freed memory for reuse, as a training loop does; "
                        "default: glibc's defaults (large scratch buffers page-fault on every call)")
    p.add_argument("--out", default="out/validate.csv", help="CSV written as configs finish")
    p.add_argument("--timeout-s", type=float, default=900.0, help="limit per config")
    p.add_argument("--keep-results", default=None, metavar="JSON",
                   help="also keep the last config's raw worker results (times, calibration, rank 0's spans)")
    p.add_argument("--recompute", default=None, nargs="+", metavar="RAW.jsonl",
                   help="measure nothing: recompute predictions and bounds from raw files earlier runs "
                        "wrote next to their CSV (<out>.raw.jsonl), e.g. after the simulator changed; "
                        "no root, no --topology needed")
    p.add_argument("--baseline", default=None, nargs="+", metavar="CSV",
                   help="with --recompute: CSVs whose predictions to summarize beside the new ones "
                        "(read before --out is written, so --out itself may be one)")


def _cases(topo: Topology, strategies: list[str], sizes: list[int], chunks: int, max_case_s: float):
    cases, skipped = [], []
    for size in sizes:
        plans = {s: case_strategy({"strategy": s, "chunks": chunks}).plan(topo, None, size // 4, 4)
                 for s in strategies}
        worst = max(cost.plan_time_s(topo, p) for p in plans.values())
        if worst > max_case_s:
            skipped.append(size)
            continue
        cases += [{"strategy": s, "chunks": chunks, "size_bytes": size} for s in strategies]
    return cases, skipped


def measure_config(topo: Topology, cases: list[dict], args, workdir: str) -> dict:
    """Bring the sites up, run the workers, bring them down; the workers' result JSON."""
    spec = build_spec(topo, prefix=args.prefix, mode=netns.resolve_mode("auto"))
    spec.extra = {"shaped": True, "sysctl": dict(VALIDATE_SYSCTL)}
    topo_file = write_topology(topo, os.path.join(workdir, "topology.yaml"))
    job = {"topology_file": topo_file, "cases": cases, "warmup": args.warmup, "repeats": args.repeats,
           "timeout_s": min(args.timeout_s, 300)}
    try:
        netns.up(spec)
        spec.extra["topology_file"] = topo_file
        res = run_workers(spec, topo_file, job, workdir, args.timeout_s, getattr(args, "allocator", "reuse"))
    finally:
        netns.down(args.prefix, quiet=True)
    if getattr(args, "keep_results", None):
        shutil.copy(os.path.join(workdir, "result.json"), args.keep_results)
    return res


def run_workers(spec, topo_file: str, job: dict, workdir: str, timeout_s: float, allocator: str = "reuse",
                master_port: int | None = None) -> dict:
    """The worker (experiments.emulate.worker: probe, then `job`'s cases) once per rank in sites
    that are up; its result JSON (rank 0's). `job` as the worker reads it, without "out"."""
    job = {**job, "out": os.path.join(workdir, "result.json")}
    job_file = os.path.join(workdir, "job.json")
    with open(job_file, "w") as fh:
        json.dump(job, fh)
    log_path = os.path.join(workdir, "ranks.log")
    with open(log_path, "ab") as log:
        procs = launch.start_ranks(spec, [sys.executable, "-m", "experiments.emulate.worker", "--job", job_file],
                                   topo_file, master_port=master_port, stdout=log, stderr=log,
                                   extra_env=ALLOCATOR_ENV[allocator])
        rc = launch.wait_ranks(procs, timeout_s)
    if rc or not os.path.exists(job["out"]):
        with open(log_path, "rb") as fh:
            tail = fh.read()[-3000:].decode(errors="replace")
        raise RuntimeError(f"validate: workers failed (exit {rc}) for {spec.topology_name}; log tail:\n{tail}")
    with open(job["out"]) as fh:
        return json.load(fh)


def rows_for(config: str, topo: Topology, res: dict) -> list[dict]:
    calib = res["calibration"]
    constants = calibrate.fit(topo, calib)
    model_topo, pipeline = calibrate.model_for(topo, constants)
    extra_s, flow_Bps = calibrate.wan_excess(topo, calib["wan"])
    one_way_s, bw = wan_pair(topo, 0, 1)
    rows = []
    for r in res["results"]:
        strat = case_strategy(r)
        plan_model = strat.plan(model_topo, None, r["size_bytes"] // 4, 4)
        plan_nominal = strat.plan(topo, None, r["size_bytes"] // 4, 4)
        pred, model = predict_s(model_topo, plan_model, pipeline)
        bound = cost.plan_time_s(topo, plan_nominal)
        ts = r["times_s"]
        med = statistics.median(ts)
        rows.append({
            "config": config, "sites": len(topo.sites), "ranks_per_site": topo.sites[0].gpus,
            "one_way_ms": round(one_way_s * 1e3, 3), "bandwidth_Mbps": round(bw * 8 / 1e6, 3),
            "strategy": r["strategy"] if r["strategy"] != "chunked" else f"chunked{r['chunks']}",
            "size_MiB": r["size_bytes"] / 2**20, "repeats": len(ts),
            "measured_median_ms": med * 1e3, "measured_min_ms": min(ts) * 1e3, "measured_max_ms": max(ts) * 1e3,
            "spread_pct": (max(ts) - min(ts)) / med * 100, "predicted_ms": pred * 1e3,
            "error_pct": (pred - med) / med * 100, "alpha_beta_bound_ms": bound * 1e3,
            "measured_over_bound": med / bound if bound > 0 else float("nan"), "model": model,
            "executor": res["executor"],
            "calib_call_overhead_ms": constants.call_overhead_s * 1e3,
            "calib_local_latency_us": constants.local_latency_s * 1e6,
            "calib_local_MBps": constants.local_Bps / 1e6,
            "calib_wan_efficiency": constants.wan_efficiency,
            "calib_forwarder_MBps": constants.forwarder_Bps / 1e6,
            "probe_wan_alpha_ms": calib["wan"]["alpha_s"] * 1e3, "probe_wan_extra_ms": extra_s * 1e3,
            "probe_wan_flow_Mbps": flow_Bps * 8 / 1e6, "probe_wan_share": calibrate.wan_share(topo, calib)})
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(path + ".tmp", path)


def _print_calibration(config: str, topo: Topology, calib: dict) -> None:
    for name, c in calib.items():
        pts = ", ".join(f"{n / 2**10:g} KiB: {t * 1e3:.2f} ms" for n, t in zip(c["sizes_bytes"], c["median_s"]))
        print(f"{config} probe {name}: {pts} -> alpha {c['alpha_s'] * 1e3:.3f} ms, "
              f"B {c['bandwidth_Bps'] * 8 / 1e6:.0f} Mbit/s", flush=True)
    fwd = calibrate.forwarder_Bps(calib)
    if fwd:
        print(f"{config} delay line: {fwd / 1e6:.0f} MB/s of WAN traffic per core (its CPU during the "
              f"largest {'wan_all' if 'wan_all' in calib else 'wan'} probe)", flush=True)


def print_table(rows: list[dict], file=sys.stdout) -> None:
    print(f"{'config':<22} {'strategy':<13} {'MiB':>5} {'measured ms':>12} {'spread%':>7} {'predicted':>10} "
          f"{'err%':>6} {'bound ms':>9} {'meas/bound':>10}", file=file)
    for r in rows:
        print(f"{r['config']:<22} {r['strategy']:<13} {r['size_MiB']:>5g} {r['measured_median_ms']:>12.1f} "
              f"{r['spread_pct']:>7.1f} {r['predicted_ms']:>10.1f} {r['error_pct']:>+6.1f} "
              f"{r['alpha_beta_bound_ms']:>9.1f} {r['measured_over_bound']:>10.2f}", file=file)


def summarize(rows: list[dict]) -> dict:
    """Median/worst |error|, share within 10/25%, median signed error by strategy, ranking
    agreement per (config, size), flat/hierarchical ratios."""
    errs = [abs(r["error_pct"]) for r in rows]
    signed: dict = {}
    for r in rows:
        signed.setdefault(r["strategy"], []).append(r["error_pct"])
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["size_MiB"]), []).append(r)
    mismatches, ties, ratios = [], [], []
    for (config, size), rs in groups.items():
        meas = [r["strategy"] for r in sorted(rs, key=lambda r: r["measured_median_ms"])]
        pred = [r["strategy"] for r in sorted(rs, key=lambda r: r["predicted_ms"])]
        if meas != pred:
            text = f"{config} {size:g} MiB: measured {' < '.join(meas)}, predicted {' < '.join(pred)}"
            # a swap of two strategies measured within TIE_PCT of each other is a tie, not a miss
            m = {r["strategy"]: r["measured_median_ms"] for r in rs}
            swapped = [(a, b) for i, a in enumerate(pred) for b in pred[i + 1:] if m[a] > m[b]]
            if all((m[a] - m[b]) / m[b] * 100 <= TIE_PCT for a, b in swapped):
                ties.append(text)
            else:
                mismatches.append(text)
        by = {r["strategy"]: r for r in rs}
        if "flat_ring" in by and "hierarchical" in by:
            ratios.append((config, size, by["flat_ring"]["measured_median_ms"] / by["hierarchical"]["measured_median_ms"],
                           by["flat_ring"]["predicted_ms"] / by["hierarchical"]["predicted_ms"]))
    share = (lambda lim: sum(e <= lim for e in errs) / len(errs) * 100) if errs else (lambda lim: float("nan"))
    return {"cases": len(rows), "median_abs_error_pct": statistics.median(errs) if errs else float("nan"),
            "worst_abs_error_pct": max(errs, default=float("nan")),
            "within_10_pct": share(10), "within_25_pct": share(25),
            "median_error_by_strategy": {k: statistics.median(v) for k, v in signed.items()},
            "rankings": len(groups), "ranking_mismatches": mismatches, "ranking_ties": ties,
            "flat_over_hierarchical": ratios}


def summary_line(s: dict) -> str:
    exact = s["rankings"] - len(s["ranking_mismatches"]) - len(s["ranking_ties"])
    by = ", ".join(f"{k} {v:+.1f}%" for k, v in s["median_error_by_strategy"].items())
    return (f"{s['cases']} cases: median |error| {s['median_abs_error_pct']:.1f}%, worst {s['worst_abs_error_pct']:.1f}%, "
            f"within 10%: {s['within_10_pct']:.0f}%, within 25%: {s['within_25_pct']:.0f}%; strategy ranking: "
            f"{exact}/{s['rankings']} (config, size) identical, {len(s['ranking_ties'])} differ only between "
            f"strategies measured within {TIE_PCT:g}% of each other, {len(s['ranking_mismatches'])} differ; "
            f"median error by strategy: {by}")


def print_summary(s: dict) -> None:
    print("\n" + summary_line(s))
    for m in s["ranking_ties"]:
        print(f"  tie: {m}")
    for m in s["ranking_mismatches"]:
        print(f"  ranking differs: {m}")
    for config, size, meas, pred in s["flat_over_hierarchical"]:
        print(f"  flat_ring / hierarchical at {config} {size:g} MiB: measured {meas:.2f}x, predicted {pred:.2f}x")


def read_csv(path: str) -> list[dict]:
    """Rows of a CSV this module wrote, numbers as floats (what `summarize` needs)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise UserError(f"--baseline: {e.strerror}: {path}") from None
    for r in rows:
        for k in ("size_MiB", "measured_median_ms", "predicted_ms", "error_pct"):
            r[k] = float(r[k])
    return rows


def rows_from_raw(raw_paths: list[str]) -> list[dict]:
    """The CSV rows of saved measurements (`<csv>.raw.jsonl`), predicted by today's model."""
    from hdc.topology import topology_from_dict

    rows = []
    for raw_path in raw_paths:
        try:
            with open(raw_path) as fh:
                for line in fh:
                    rec = json.loads(line)
                    rows += rows_for(rec["config"], topology_from_dict(rec["topology"], raw_path), rec["result"])
        except OSError as e:
            raise UserError(f"--recompute: {e.strerror}: {raw_path}") from None
    return rows


def recompute(raw_paths: list[str], out: str, baseline: list[str] | None = None) -> int:
    """Rows from saved measurements with today's model (no root, no measuring). With
    `baseline`, the same cases' predictions from those CSVs are summarized first ("before")."""
    before = [r for path in baseline or [] for r in read_csv(path)]
    rows = rows_from_raw(raw_paths)
    write_csv(rows, out)
    print_table(rows)
    if before:
        keys = {(r["config"], r["strategy"], r["size_MiB"]) for r in rows}
        same = [r for r in before if (r["config"], r["strategy"], r["size_MiB"]) in keys]
        print(f"\nbefore ({', '.join(baseline)}; model {same[0].get('model', '?') if same else '?'}):")
        print(summary_line(summarize(same)))
        print(f"after ({out}; model {rows[0]['model'] if rows else '?'}):", end="")
    print_summary(summarize(rows))
    return 0


def run_validate(args) -> int:
    from experiments.emulate.spec import effective_topology, parse_list
    from experiments.emulate.spec import check_prefix

    if args.recompute:
        return recompute(args.recompute, args.out, args.baseline)
    if not args.topology:
        raise UserError("validate: --topology is required (unless --recompute)")
    netns.require_root()
    check_prefix(args.prefix)
    if os.path.exists(args.out + ".raw.jsonl"):
        os.unlink(args.out + ".raw.jsonl")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for s in strategies:
        make_strategy(s)  # UserError names the allowed ones
    sizes = parse_list(args.sizes, parse_size, "--sizes")
    if any(s < 1024 for s in sizes):
        raise UserError(f"--sizes: every size must be at least 1 KiB, got {args.sizes!r}")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError("--repeats: must be >= 1 and --warmup >= 0")
    delays = parse_list(args.one_way_delays, parse_time, "--one-way-delays")
    bws = parse_list(args.bandwidths, parse_bandwidth, "--bandwidths")
    if "unlimited" in bws:
        raise UserError("--bandwidths: validate needs a shaped WAN; give e.g. 1Gbps")
    rows: list[dict] = []
    old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for delay in delays:
            for bw in bws:
                topo = effective_topology(args.topology, delay, bw, args.ranks_per_site)
                one_way_s, bw_Bps = wan_pair(topo, 0, 1)
                config = f"{len(topo.sites)}x{topo.sites[0].gpus} {one_way_s * 1e3:g}ms {bw_Bps * 8 / 1e6:g}M"
                cases, skipped = _cases(topo, strategies, sizes, args.chunks, args.max_case_s)
                if skipped:
                    print(f"{config}: skipping {', '.join(f'{s / 2**20:g} MiB' for s in skipped)} "
                          f"(alpha-beta bound > --max-case-s {args.max_case_s:g} s)", flush=True)
                if not cases:
                    continue
                workdir = tempfile.mkdtemp(prefix="hdc-validate-")
                res = measure_config(topo, cases, args, workdir)
                shutil.rmtree(workdir, ignore_errors=True)
                _print_calibration(config, topo, res["calibration"])
                with open(args.out + ".raw.jsonl", "a") as fh:
                    fh.write(json.dumps({"config": config, "topology": topology_to_data(topo), "result": res,
                                         "allocator": args.allocator}) + "\n")
                new = rows_for(config, topo, res)
                rows += new
                write_csv(rows, args.out)
                print_table(new)
                sys.stdout.flush()
    finally:
        signal.signal(signal.SIGTERM, old)
        netns.down(args.prefix, quiet=True)
    if not rows:
        raise UserError("validate: no case to run (every size skipped by --max-case-s?)")
    print(f"\n== all configs (CSV: {args.out})")
    print_table(rows)
    print_summary(summarize(rows))
    return 0
