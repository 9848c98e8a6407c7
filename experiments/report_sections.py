"""The report's sections, from the simulated rows (see experiments/report.py)."""
from __future__ import annotations

import csv
import json
import os

from experiments import figures
from hdc.units import fmt_bytes, fmt_time

BREAKDOWN = [("compute", "compute_s"), ("exposed TP comm", "tp_exposed_s"), ("exposed PP comm", "pp_exposed_s"),
             ("exposed DP comm", "dp_exposed_s"), ("pipeline bubble", "bubble_s"), ("optimizer", "optimizer_s")]


def write_sections(w, cfg, eff, rows, runs, measured, constants) -> None:
    two, one = rows["repro/2site"], rows["repro/1site"]
    summary = {"compute_efficiency": eff, "strategy": cfg.strategy, "topology": cfg.topology,
               "baseline_topology": cfg.baseline_topology, "workload": cfg.workload,
               "predicted": {k: {m: r[m] for m in ("step_time_s", "mfu", "scaling_efficiency")}
                             for k, r in rows.items()}}
    with open(os.path.join(w.folder, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    w.files.append("summary.json")
    w.p("Every number below comes out of hdc's simulator (SimPy over a NetworkX model of the topology) "
        "running the same strategy objects the trainer uses. The simulator is calibrated once: its achievable "
        f"compute efficiency is chosen so that the single-site run reaches the published "
        f"{cfg.published_single_site_mfu:.0%} MFU (result: {eff:.4f} of peak). Nothing else is fitted.", cls="note")
    w.parts.append('<p class="small">Sections: <a href="#repro">1 Nemotron-4 340B on two sites</a> · '
                   '<a href="#distance">2 distance</a> · <a href="#whatif">3 what-ifs</a> · <a href="#gantt">4 one step</a>'
                   ' · <a href="#tiers">5 link tiers</a> · <a href="#measured">6 predicted vs measured</a> · '
                   '<a href="#runs">7 GRPO runs</a> · <a href="#published">8 published runs</a> · '
                   '<a href="#rl">9 GRPO across sites</a></p>')

    # 1. reproduction
    w.h2("1. Nemotron-4 340B across two datacenters: published vs predicted", "repro")
    flat = rows["strategy/flat_ring"]
    table = [
        ("GPUs", "3,072 (1,536 per site)", f"{two['gpus']:,}"),
        ("distance / round trip", "~1,000 km / 21 ms", "21 ms RTT (preset)"),
        ("single-site MFU", f"{cfg.published_single_site_mfu:.0%}", f"{one['mfu']:.1%} (calibrated)"),
        ("two-site MFU", f"{cfg.published_two_site_mfu:.0%}", f"{two['mfu']:.1%}"),
        ("scaling efficiency", f"{cfg.published_scaling_efficiency:.0%}", f"{two['scaling_efficiency']:.1%}"),
        ("step time, one site / two sites", "not published", f"{fmt_time(one['step_time_s'])} / {fmt_time(two['step_time_s'])}"),
        ("two sites with a flat ring instead", "not published",
         f"MFU {flat['mfu']:.1%}, efficiency {flat['scaling_efficiency']:.1%}"),
    ]
    w.table("repro", ["quantity", "NVIDIA (published)", "hdc (predicted)"], table,
            caption=f"Strategy: {two['strategy_desc']}")
    cases = ["one site", "two sites", "two sites, flat ring"]
    src = [one, two, flat]
    parts = {label: [r[k] for r in src] for label, k in BREAKDOWN}
    w.table("breakdown", ["term (s)", *cases], [(label, *parts[label]) for label, _ in BREAKDOWN]
            + [("step time", *[r["step_time_s"] for r in src])], fmt={c: ".4g" for c in cases})
    fig, c, r = figures.stacked_breakdown(cases, parts, "Where the step time goes (critical pipeline stage)")
    w.figure("breakdown", fig, "Step-time breakdown per case", c, r)
    w.p("Assumptions of the prediction (from the simulator's output):")
    w.bullets(two["assumptions"])

    # 2. distance
    w.h2("2. Scaling efficiency vs distance", "distance")
    series = {}
    for key, row in rows.items():
        if key.startswith("distance/"):
            _, name, d = key.split("/")
            series.setdefault(name, []).append((float(d), row["scaling_efficiency"]))
    fig, c, r = figures.lines(series, "distance between sites (km, fiber; one way = 7.3 µs/km)",
                              "scaling efficiency", "Efficiency vs distance, per strategy", logx=True,
                              ref=cfg.published_scaling_efficiency, ref_label="published at ~1,000 km")
    w.figure("distance", fig, "Scaling efficiency vs distance (same GPUs in one site = 100%)", c, r)

    # 3. what-ifs
    w.h2("3. What-ifs: WAN bandwidth, chunks, three sites, model size", "whatif")
    series = {}
    for key, row in rows.items():
        if key.startswith("bandwidth/"):
            _, name, n = key.split("/")
            series.setdefault(name, []).append((int(n) * 0.4, row["scaling_efficiency"]))
    fig, c, r = figures.lines(series, "WAN capacity (Tb/s, multiples of 400G links)", "scaling efficiency",
                              "Efficiency vs WAN bandwidth at 21 ms", logx=True)
    w.figure("bandwidth", fig, "Scaling efficiency vs WAN capacity", c, r)
    pts = sorted((int(k.split("/")[1]), row["scaling_efficiency"]) for k, row in rows.items() if k.startswith("chunks/"))
    fig, c, r = figures.lines({"hierarchical + chunked": pts}, "chunks per bucket", "scaling efficiency",
                              "Efficiency vs chunk count at 21 ms")
    w.figure("chunks", fig, "Scaling efficiency vs number of chunks", c, r)
    whatif = [("two sites, DP 30", name, rows[f"2site-dp30/{name}"]) for name in ("flat_ring", "hierarchical + chunked")]
    whatif += [("three sites, DP 30", name, rows[f"3site/{name}"]) for name in ("flat_ring", "hierarchical + chunked")]
    whatif += [(k.split("/")[1], "hierarchical + chunked", row) for k, row in rows.items() if k.startswith("model/")]
    whatif.append((cfg.workload, "hierarchical + chunked", two))
    w.table("whatif", ["case", "strategy", "step time (s)", "MFU", "scaling efficiency"],
            [(case, s, r["step_time_s"], r["mfu"], r["scaling_efficiency"]) for case, s, r in whatif],
            caption="Three sites: the three-site preset (21/21/30 ms RTT) with DP 30 (10 replicas per site), "
                    "beside two sites at the same DP; models: their workload presets on the two-site topology",
            fmt={"MFU": ".1%", "scaling efficiency": ".1%", "step time (s)": ".3f"})
    strat_rows = [(k.split("/", 1)[1], row) for k, row in rows.items() if k.startswith("strategy/")]
    fig, c, r = figures.bars([n for n, _ in strat_rows], [row["scaling_efficiency"] for _, row in strat_rows],
                             "scaling efficiency", "Strategies on the two-site topology (21 ms)")
    w.figure("strategies", fig, "Scaling efficiency per strategy at 21 ms", c, r)

    fault_rows = [("healthy", two)] + [(k.split("/", 1)[1], row) for k, row in rows.items() if k.startswith("faults/")]
    w.table("faults", ["fault (two sites, hierarchical + chunked)", "step time (s)", "MFU", "scaling efficiency"],
            [(name, r["step_time_s"], r["mfu"], r["scaling_efficiency"]) for name, r in fault_rows],
            caption="Stragglers and WAN faults against the healthy single-site baseline",
            fmt={"MFU": ".1%", "scaling efficiency": ".1%", "step time (s)": ".3f"})

    # 4. Gantt
    w.h2("4. One simulated step", "gantt")
    fig, c, r = figures.gantt({"one site": one["spans"], "two sites": two["spans"]},
                              "Compute, pipeline and data-parallel communication per rank class")
    w.figure("gantt", fig, "Gantt chart of one step: rows are pipeline stages (compute) and their DP sync", c, r)

    # 5. tiers
    w.h2("5. Bytes and utilization per link tier", "tiers")
    tier_rows = []
    for case, row in (("one site", one), ("two sites", two), ("two sites, flat ring", flat)):
        for tier, (b, u) in row["tiers"].items():
            tier_rows.append((case, tier, b, fmt_bytes(b), u))
    w.table("tiers", ["case", "tier", "bytes per step", "", "utilization"], tier_rows,
            fmt={"bytes per step": ".4g", "utilization": ".1%"})
    mem = [("this strategy", two["memory"]), ("other optimizer choice", two["memory_alternative"])]
    gpu_memory = two["gpu_memory_bytes"]
    w.table("memory", ["per GPU", "weights", "grads", "optimizer", "activations", "total",
                       f"fits {fmt_bytes(gpu_memory)}"],
            [(n, *(fmt_bytes(m[k]) for k in ("weights_bytes", "grads_bytes", "optimizer_bytes",
                                             "activations_bytes", "total_bytes")),
              "yes" if m["total_bytes"] <= gpu_memory else "no") for n, m in mem])

    # 6. measured
    w.h2("6. Predicted vs measured (emulated sites)", "measured")
    _measured(w, measured)

    # 7. runs
    w.h2("7. GRPO runs", "runs")
    _runs(w, runs)

    # 8. published runs
    w.h2("8. Published training runs: predicted vs published", "published")
    _published(w, cfg.published)

    # 9. GRPO placements across sites
    from experiments.report_rl import write_rl_section

    write_rl_section(w, 9)


def _published(w, include: bool) -> None:
    from experiments import published

    if not include:
        w.p("Skipped (report config published: false); run <code>python benchmarks/published.py</code>.", raw=True)
        return
    results = published.run()
    median, worst = published.summary(results)
    w.p(f"{len(results)} published configurations (sources and assumptions in the table; rows and code in "
        f"<code>experiments/published.py</code>), simulated on clusters built from the hardware each source names. "
        f"One compute efficiency per GPU generation is calibrated, on the row marked as calibration; the "
        f"GEMM shapes, recomputation, layout and communication do the rest. |error| over the other "
        f"{sum(not r['calibration'] for r in results)} rows: median {median:.1%}, worst {worst:.1%}.", raw=True)
    fig, c, r = published.scatter(results)
    w.figure("published", fig, "Step time: each point one published run; the diagonal is a perfect prediction", c, r)
    cols = ["name", "gpu", "gpus", "published_step_s", "predicted_step_s", "error", "calibration", "fits",
            "source", "assumptions"]
    w.table("published_table", cols, [[row[k] for k in cols] for row in results],
            fmt={"published_step_s": ".3g", "predicted_step_s": ".3g", "error": "+.1%"})


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "emulate", "measured")


def shipped_measurements() -> list[str]:
    """The measurements stored in the repository (`hdc validate`'s raw files, see docs/emulation.md)."""
    return sorted(os.path.join(SHIPPED, f) for f in os.listdir(SHIPPED) if f.endswith(".raw.jsonl"))


def _measured(w, paths) -> None:
    from experiments.emulate.validate import rows_from_raw, summarize, summary_line

    raw = [p for p in paths if p.endswith(".raw.jsonl")]
    if not paths:
        raw = shipped_measurements()
        w.p("The measurements stored with hdc (<code>experiments/emulate/measured/</code>: real gloo collectives "
            "between emulated sites on a 2-core machine, see docs/emulation.md), predicted by today's simulator. "
            "Measure your own as root with <code>hdc validate --topology tiny-2site --out v.csv</code>, then "
            "<code>hdc report --measured v.csv</code> (or its <code>v.csv.raw.jsonl</code> to re-predict).", raw=True)
    rows = rows_from_raw(raw)
    for p in paths:
        if p not in raw:
            with open(p, newline="") as fh:
                rows += list(csv.DictReader(fh))
    need = {"measured_median_ms", "predicted_ms"}
    if not rows:
        w.p("The measured files hold no rows.")
        return
    if not need <= set(rows[0]):
        w.p(f"The measured CSV lacks the columns {', '.join(sorted(need))}.")
        return
    pts = [(f"{r.get('config', '')} {r.get('strategy', '')} {r.get('size_MiB', '')}MiB",
            float(r["predicted_ms"]) / 1e3, float(r["measured_median_ms"]) / 1e3) for r in rows]
    fig, c, r = figures.scatter_predicted_measured(pts, "Real gloo collectives vs the simulator")
    w.figure("measured", fig, "Each point: one (config, strategy, size); the diagonal is a perfect prediction", c, r)
    if all("error_pct" in r for r in rows):
        w.p(summary_line(summarize([{**r, **{k: float(r[k]) for k in ("size_MiB", "measured_median_ms",
                                                                           "predicted_ms", "error_pct")}}
                                    for r in rows])) + ".")
    cols = [k for k in ("config", "strategy", "size_MiB", "measured_median_ms", "predicted_ms", "error_pct",
                        "alpha_beta_bound_ms") if k in rows[0]]
    w.table("measured_table", cols, [[r[k] for k in cols] for r in rows])


def _runs(w, paths) -> None:
    from trainer.logs import read_metrics

    if not paths:
        w.p("No runs given. Train with <code>hdc train recipes/tiny-arith.yaml --out runs/a</code>, then "
            "<code>hdc report --runs runs/a</code>.", raw=True)
        return
    runs = {os.path.basename(os.path.normpath(p)): read_metrics(os.path.join(p, "metrics.jsonl")) for p in paths}
    keys = sorted({k for rows in runs.values() for r in rows for k in r})
    rewards = [k for k in keys if k.startswith("rewards/") and k.endswith("/mean")]
    metrics = rewards + [k for k in ("eval/exact_match", "kl", "completions/mean_length", "clip_ratio/high",
                                     "throughput/tokens_per_s", "time/sync_s") if k in keys]
    fig, c, r = figures.run_curves(runs, metrics, "GRPO runs")
    w.figure("runs", fig, "Rewards per function, accuracy, KL, length, clip ratio, tokens/s and sync time", c, r)
    summary = []
    for name, rows in runs.items():
        last = rows[-1] if rows else {}
        sync = [r["time/sync_s"] for r in rows if r.get("time/sync_s") is not None]
        summary.append((name, len(rows), last.get("rewards/total/mean"), last.get("eval/exact_match"),
                        sum(sync) / len(sync) if sync else None))
    w.table("runs_summary", ["run", "logged steps", "final reward", "final exact match", "mean sync s/step"], summary)

