"""The report's GRPO-across-sites section: colocated vs split vs async for a DeepScaleR-shaped
step on two sites, across WAN bandwidth and distance (simulator.rl)."""
from __future__ import annotations

from dataclasses import replace

from experiments import figures
from hdc.topology import load_topology
from hdc.units import fmt_time

TOPOLOGY = "rl-2dc"
WORKLOAD = "deepscaler-1.5b"
STRATEGY = "hierarchical"
BANDWIDTHS_GBPS = (1, 3, 10, 30, 100, 400)
DISTANCES_KM = (10, 300, 1000, 3000, 10000)
CASES = {"colocated": {"kind": "colocated"},
         "split (dc-b generates)": {"kind": "split", "generator_sites": ["dc-b"]},
         "async 1 (dc-b generates)": {"kind": "async", "generator_sites": ["dc-b"], "async_steps": 1}}


def _topology(bandwidth_gbps: float, distance_km: float):
    topo = load_topology(TOPOLOGY)
    wan = replace(topo.wan[0], bandwidth_Bps=bandwidth_gbps * 1e9 / 8, distance_m=distance_km * 1e3, rtt_s=None)
    return replace(topo, wan=[wan])


def _place(spec: dict):
    from hdc.config import from_dict
    from simulator.rl import RLPlacement

    return from_dict(RLPlacement, spec, "placement")


def rl_rows() -> dict[str, dict]:
    """Every simulated case of the section, keyed 'base/CASE', 'bw/CASE/GBPS', 'km/CASE/KM'."""
    from simulator.rl import load_rl_workload, simulate_rl

    work = load_rl_workload(WORKLOAD)
    out = {}
    for name, spec in CASES.items():
        out[f"base/{name}"] = simulate_rl(_topology(100, 1000), work, _place(spec), STRATEGY)
        for bw in BANDWIDTHS_GBPS:
            out[f"bw/{name}/{bw}"] = simulate_rl(_topology(bw, 1000), work, _place(spec), STRATEGY)
        for km in DISTANCES_KM:
            out[f"km/{name}/{km}"] = simulate_rl(_topology(10, km), work, _place(spec), STRATEGY)
    return out


def write_rl_section(w, number: int) -> None:
    rows = rl_rows()
    w.h2(f"{number}. GRPO across two sites: where to generate, train and push weights", "rl")
    base = {name: rows[f"base/{name}"] for name in CASES}
    first = next(iter(base.values()))
    w.p(f"hdc simulate-rl on {TOPOLOGY} (2 sites × 32 H100, 1,000 km, one 100 Gb/s WAN link) with the "
        f"{WORKLOAD} workload: {first.workload}. Gradient sync: {STRATEGY}. Colocated: every GPU generates "
        "then trains (gradients cross the WAN every step); split: site dc-b generates, dc-a trains, new weights "
        "cross the WAN every step; async 1: split with generation one step ahead (rollouts one step stale).")
    table = []
    for name, r in base.items():
        ph = r.phases_s
        table.append((name, r.step_time_s, ph["generate"], ph["logprobs"], ph["train"], r.detail_s["sync_s"],
                      ph["push"], r.tokens_per_s, r.staleness_steps))
    w.table("rl_placements", ["placement", "step (s)", "generate (s)", "log-probs (s)", "train (s)",
                              "exposed grad sync (s)", "weight push (s)", "completion tok/s", "staleness"], table,
            fmt={c: ".3g" for c in ("step (s)", "generate (s)", "log-probs (s)", "train (s)",
                                    "exposed grad sync (s)", "weight push (s)")} | {"completion tok/s": ",.0f"})
    series = {name: [(bw, rows[f"bw/{name}/{bw}"].step_time_s) for bw in BANDWIDTHS_GBPS] for name in CASES}
    fig, c, r = figures.lines(series, "WAN bandwidth (Gb/s, one link, 1,000 km)", "GRPO step time (s)",
                              "Step time vs WAN bandwidth per placement", logx=True, percent=False)
    w.figure("rl_bandwidth", fig, "Where split or async beats colocated: below the bandwidth at which the "
             "colocated step's cross-site gradient sync outweighs generating on half the GPUs", c, r)
    series = {name: [(km, rows[f"km/{name}/{km}"].step_time_s) for km in DISTANCES_KM] for name in CASES}
    fig, c, r = figures.lines(series, "distance between sites (km of fiber, 10 Gb/s WAN)", "GRPO step time (s)",
                              "Step time vs distance per placement", logx=True, percent=False)
    w.figure("rl_distance", fig, "Step time vs distance at 10 Gb/s", c, r)
    crossing = _crossing(rows)
    w.p(crossing)
    asy = rows[f"bw/async 1 (dc-b generates)/{BANDWIDTHS_GBPS[0]}"]
    fig, c, r = figures.gantt({f"async 1 at {BANDWIDTHS_GBPS[0]} Gb/s": asy.timeline()["spans"]},
                              "Simulated GRPO steps: generation, scoring, log-probs, training and the weight push")
    w.figure("rl_gantt", fig, "Generators, trainers and the WAN push over the simulated steps "
             f"(steady-state step {fmt_time(asy.step_time_s)})", c, r)
    w.p("Assumptions (colocated case):")
    w.bullets(base["colocated"].assumptions)
    from simulator.rl_published import predictions

    w.table("rl_published", ["published GRPO run", "published step (s)", "predicted step (s)", "error"],
            [(name, pub, pred, (pred - pub) / pub) for name, pub, pred in predictions()],
            caption="NeMo RL v0.5's H100 table beside simulate-rl with its default constants (nothing fitted); "
                    "sources and assumptions in simulator/rl_published.py. The model is optimistic: it leaves "
                    "out the refit/offload between colocated phases and small log-prob batches.",
            fmt={"published step (s)": ".1f", "predicted step (s)": ".1f", "error": "+.1%"})
    _trainer_check(w)


def _trainer_check(w) -> None:
    """The cost model on this machine's CPU ranks beside hdc's own trainer (experiments/rl_check.py)."""
    from experiments import rl_check

    found = rl_check.load_measurements()
    if not found:
        w.p("No trainer measurements are stored (experiments/rl_measured/ is empty).")
        return
    result = rl_check.compare(found)
    phases = list(rl_check.PHASES.values())
    rows = []
    for r in result["rows"]:
        cells = []
        for p in phases:
            e = r["error"].get(p)
            cells.append(f"{r['measured'][p]:.3f} / {r['predicted'][p]:.3f}" + (f" ({e:+.0%})" if e is not None else ""))
        rows.append((r["name"], r["describe"], *cells))
    rows.append(("median |error|", "phases of at least 5 ms", *[
        f"{result['median_abs_error'][p]:.1%}" if p in result["median_abs_error"] else "-" for p in phases]))
    w.table("rl_trainer_check", ["config", "what ran", *[f"{p} (s) measured / predicted" for p in phases]], rows,
            caption="simulate-rl's cost model, calibrated by a short probe on this machine (experiments/rl_check.py: "
                    "the probe's own shapes, nothing fitted to these runs), re-predicting the per-phase times hdc "
                    "train logged (time/generate_s, score_s, reference_s, update_s, sync_s, weight_sync_s, step_s; "
                    "means over the steps after the first two) for the runs stored in experiments/rl_measured/ "
                    "(benchmarks/rl_trainer_check.py). Completion lengths are the runs' logged means and maxima.")


def _crossing(rows) -> str:
    """One sentence: below which WAN bandwidth each non-colocated placement beats colocated."""
    out = []
    for name in list(CASES)[1:]:
        wins = [bw for bw in BANDWIDTHS_GBPS
                if rows[f"bw/{name}/{bw}"].step_time_s < rows[f"bw/colocated/{bw}"].step_time_s]
        out.append(f"{name} beats colocated at {', '.join(f'{b:g}' for b in wins)} Gb/s" if wins
                   else f"{name} never beats colocated in {BANDWIDTHS_GBPS[0]}–{BANDWIDTHS_GBPS[-1]} Gb/s")
    return "At 1,000 km: " + "; ".join(out) + "."
