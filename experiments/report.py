"""`hdc report`: the main job. Calibrates the simulator once on the published single-site
MFU, reproduces NVIDIA's two-site Nemotron-4 340B run, answers what-if questions (distance,
WAN bandwidth, chunks, three sites, model size), draws a simulated step, and — when given —
sets emulated measurements and GRPO runs beside the predictions.

Output: one folder with index.html, every figure as PNG and its data as CSV; written to a
temporary folder and renamed into place, so a failed run never leaves a partial report.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Optional

from hdc.config import from_dict, load_yaml, meta
from hdc.errors import UserError
from hdc.outputs import check_output_folder
from experiments.html import ReportWriter


@dataclass
class ReportConfig:
    topology: str = meta("the two-site topology to reproduce", default="nemotron-2dc")
    baseline_topology: str = meta("the same GPUs in one site", default="single-site-3072")
    workload: str = meta("the workload", default="nemotron-4-340b")
    strategy: dict = meta("the strategy of the published run", default_factory=lambda: {"name": "chunked", "chunks": 8,
                                                                         "overlap_backward": True})
    published_single_site_mfu: float = meta("published single-site MFU (calibration target)", gt=0, le=1, default=0.51)
    published_two_site_mfu: float = meta("published two-site MFU", gt=0, le=1, default=0.49)
    published_scaling_efficiency: float = meta("published scaling efficiency", gt=0, le=1, default=0.96)
    distances_km: list[float] = meta("what-if distances (fiber, km)", gt=0,
                                     default_factory=lambda: [10.0, 1000.0, 2500.0, 5000.0])
    wan_links: list[int] = meta("what-if counts of 400G WAN links", gt=0, default_factory=lambda: [2, 5, 10, 20, 40])
    chunks: list[int] = meta("what-if chunk counts", gt=0, default_factory=lambda: [1, 2, 4, 8])
    local_sgd_every: list[int] = meta("local SGD sync periods to show", gt=0, default_factory=lambda: [8])
    models: list[str] = meta("workload presets for the model-size what-if",
                             default_factory=lambda: ["llama-3-8b", "llama-3-70b", "nemotron-4-340b"])
    jobs: int = meta("parallel simulator processes", gt=0, le=64, default=2)
    published: bool = meta("section 8: the simulator against 13 published runs (about 30 s)", default=True)

    def validate(self, path: str = "") -> None:
        from hdc.strategies import strategy_from_dict

        strategy_from_dict(self.strategy, f"{path}.strategy" if path else "strategy")


FAULTS = {"one GPU 20% slower": {"slow_gpu_factor": 1.2},
          "site dc-b 10% slower": {"slow_site": "dc-b", "slow_site_factor": 1.1},
          "WAN at 50% bandwidth": {"wan_bandwidth_factor": 0.5},
          "5 of 22 WAN links down": {"wan_links_failed": 5}}


def load_config(path: Optional[str]) -> ReportConfig:
    if path is None:
        return ReportConfig()
    try:
        return from_dict(ReportConfig, load_yaml(path))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def _sim(job: tuple) -> dict:
    """One simulation in a worker: (key, config dict, timeline?) -> row (+ timeline spans)."""
    from experiments.configs import resolve
    from experiments.evaluate import constants_from, result_row
    from simulator import simulate

    key, config, timeline = job
    parts = resolve(config)
    r = simulate(parts["topology"], parts["workload"], parts["strategy"], constants_from(parts["sim"]),
                 timeline=timeline, faults=parts["faults"])
    row = result_row(r)
    row.update(key=key, gpus=r.gpus, assumptions=r.assumptions,
               tiers={t: (u.bytes, u.utilization) for t, u in r.tiers.items()},
               memory=r.memory.to_dict(), memory_alternative=r.memory_alternative.to_dict(),
               gpu_memory_bytes=r.gpu_memory_bytes)
    if timeline:
        row["spans"] = r.timeline()["spans"]
    return row


REPORT_MARKER = ".hdc-report"  # in every folder hdc report writes: only such a folder is ever replaced
TITLE = "hdc report — training across datacenters"


def check_report_out(out_dir: str) -> None:
    """`--out` must be a new or empty folder, or one an earlier `hdc report` wrote (it holds
    REPORT_MARKER): anything else would be deleted when the new report replaces it."""
    check_output_folder(out_dir, "--out")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not _written_by_report(out_dir):
        raise UserError(f"--out {out_dir}: holds files that no hdc report wrote (no {REPORT_MARKER} marker); "
                        f"choose a new or empty folder, it would be replaced")


def _written_by_report(folder: str) -> bool:
    """The marker is there, or (reports from before the marker) index.html carries the report's
    title and nothing but the report's own kinds of files sit beside it."""
    if os.path.isfile(os.path.join(folder, REPORT_MARKER)):
        return True
    try:
        with open(os.path.join(folder, "index.html"), encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    own = all(e.is_file() and e.name.endswith((".html", ".png", ".csv", ".json")) for e in os.scandir(folder))
    return own and f"<title>{TITLE}</title>" in head


def build_report(out_dir: str, config_path: Optional[str] = None, runs: tuple[str, ...] = (),
                 measured: tuple[str, ...] = (), progress: bool = True) -> str:
    check_report_out(out_dir)  # before any work: a bad --out used to fail after 25 s, or delete a folder
    cfg = load_config(config_path)
    for r in runs:
        if not os.path.exists(os.path.join(r, "metrics.jsonl")):
            raise UserError(f"--runs {r}: no metrics.jsonl there (a folder written by hdc train)")
    for m in measured:
        if not os.path.isfile(m):
            raise UserError(f"--measured {m}: no such file (write one with hdc validate --out)")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".report-", dir=parent)
    try:
        _write(ReportWriter(tmp, TITLE), cfg, runs, measured, progress)
        with open(os.path.join(tmp, REPORT_MARKER), "w", encoding="utf-8") as fh:
            fh.write("written by hdc report; hdc report replaces only folders holding this file\n")
        check_report_out(out_dir)  # again: the folder may have changed while the report was built
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out_dir, "index.html")


def _jobs(cfg: ReportConfig, sim: dict) -> list[tuple]:
    base = {"topology": cfg.topology, "workload": cfg.workload, "sim": sim}
    strat = dict(cfg.strategy)
    strategies = {"flat_ring": {"name": "flat_ring"}, "hierarchical": {"name": "hierarchical"},
                  "hierarchical + chunked": strat,
                  "distributed optimizer": {"name": "distributed_optimizer"}}
    strategies.update({f"local_sgd H={h}": {"name": "local_sgd", "every": h} for h in cfg.local_sgd_every})
    jobs = [("repro/2site", {**base, "strategy": strat}, True),
            ("repro/1site", {**base, "topology": cfg.baseline_topology, "strategy": strat}, True)]
    # strategies compared at 21 ms only (not over distance): the compressed and streaming variants
    extra = {"compressed int8 (hierarchical + chunked)": {"name": "compressed", "inner": strat},
             **{f"streaming local_sgd H={h} (4 fragments)": {"name": "streaming_local_sgd", "every": h,
                                                             "fragments": 4} for h in cfg.local_sgd_every}}
    for name, s in extra.items():
        jobs.append((f"strategy/{name}", {**base, "strategy": s}, False))
    for name, s in strategies.items():
        jobs.append((f"strategy/{name}", {**base, "strategy": s}, False))
        for d in cfg.distances_km:
            jobs.append((f"distance/{name}/{d:g}", {**base, "strategy": s,
                                                    "overrides": {"topology.wan[0].distance": f"{d:g}km"}}, False))
    for name in ("flat_ring", "hierarchical", "hierarchical + chunked"):
        for n in cfg.wan_links:
            jobs.append((f"bandwidth/{name}/{n}", {**base, "strategy": strategies[name],
                                                   "overrides": {"topology.wan[0].links": n}}, False))
    for c in cfg.chunks:
        jobs.append((f"chunks/{c}", {**base, "strategy": {**strat, "name": "chunked", "chunks": c}}, False))
    # three sites of 1,024 GPUs hold 10 replicas of 96 GPUs each: DP 30 (2,880 GPUs busy)
    three = {"workload.parallel.dp": 30, "workload.parallel.global_batch_size": 1440}
    for name in ("flat_ring", "hierarchical + chunked"):
        jobs.append((f"3site/{name}", {**base, "topology": "three-site", "strategy": strategies[name],
                                       "overrides": three}, False))
        jobs.append((f"2site-dp30/{name}", {**base, "strategy": strategies[name], "overrides": three}, False))
    for label, faults in FAULTS.items():
        jobs.append((f"faults/{label}", {**base, "strategy": strat, "faults": faults}, False))
    for m in cfg.models:
        if m != cfg.workload:
            jobs.append((f"model/{m}", {**base, "workload": m, "strategy": strat}, False))
    return jobs


def _write(w: ReportWriter, cfg: ReportConfig, runs, measured, progress: bool) -> None:
    from tqdm import tqdm

    from simulator import SimConstants, calibrate_compute_efficiency
    from hdc.strategies import strategy_from_dict

    _say(progress, f"report: calibrating the simulator on {cfg.baseline_topology} (published MFU "
                   f"{cfg.published_single_site_mfu:.0%}) ...")
    bar = tqdm(total=1, desc="report: calibrating", disable=not progress, unit="sim")
    eff = calibrate_compute_efficiency(cfg.baseline_topology, cfg.workload, strategy_from_dict(cfg.strategy),
                                       cfg.published_single_site_mfu)
    bar.update()
    bar.close()
    sim = {"compute_efficiency": eff}
    jobs = _jobs(cfg, sim)
    rows: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc="report: simulating", disable=not progress, unit="sim")
    with ProcessPoolExecutor(max_workers=cfg.jobs) as pool:
        for row in pool.map(_sim, jobs):
            rows[row["key"]] = row
            bar.update()
    bar.close()
    from experiments.report_sections import write_sections

    _say(progress, f"report: drawing {len(rows)} simulations and {len(runs)} run(s) into figures and tables ...")
    write_sections(w, cfg, eff, rows, runs, measured, SimConstants(compute_efficiency=eff))
    w.save()


def _say(progress: bool, line: str) -> None:
    """A status line on stderr where the report works without a bar (start-up, figures)."""
    if progress:
        print(line, file=sys.stderr, flush=True)
