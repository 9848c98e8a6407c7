"""CLI commands of experiments/: report, sweep, plot."""
from __future__ import annotations

import argparse
import sys

from hdc.commands import MAX_LOCAL_PROCESSES, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="build the HTML report (what `make report` runs)",
                       description="Build a self-contained HTML report with PNG figures and CSV tables.")
    p.add_argument("--out", default="out/report", help="output folder (default out/report)")
    p.add_argument("--config", default=None, help="report YAML (what-if ranges, published figures, jobs)")
    p.add_argument("--runs", nargs="*", default=[], metavar="DIR", help="GRPO run folders (with metrics.jsonl)")
    p.add_argument("--measured", nargs="*", default=[], metavar="CSV",
                   help="CSVs written by hdc validate, or their .raw.jsonl (re-predicted by today's model); "
                        "default: the measurements stored in experiments/emulate/measured/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_report)

    p = sub.add_parser("sweep", help="evaluate a product grid of configs into a CSV",
                       description="Run every point of a grid (dotted paths into topology, workload, "
                                   "strategy, sim) and write one CSV row per config; resumable.")
    p.add_argument("--grid", required=True, help="grid YAML (base, grid, evaluate)")
    p.add_argument("--out", required=True, help="results CSV (rows already there are skipped)")
    p.add_argument("--jobs", type=positive_int("--jobs", MAX_LOCAL_PROCESSES), default=1,
                   help=f"parallel worker processes (default 1, at most {MAX_LOCAL_PROCESSES})")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local processes, or Ray (needs the ray extra)")
    p.add_argument("--require-fit", action="store_true",
                   help="exit 2 when a config's peak memory estimate exceeds its GPU's memory "
                        "(rows are still written; default: a one-line warning)")
    p.set_defaults(handler=_sweep)

    p = sub.add_parser("plot", help="quick line plot from a sweep CSV")
    p.add_argument("csv", help="results CSV")
    p.add_argument("--x", required=True, help="column for the x axis (unit strings are converted)")
    p.add_argument("--y", required=True, help="column for the y axis")
    p.add_argument("--hue", default=None, help="column whose values become separate lines (every other grid "
                                               "input that varies splits lines too)")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="keep only rows with this value (repeatable), e.g. --where topology.wan[0].links=20")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--out", default=None, help="PNG path (default: CSV name with .png)")
    p.set_defaults(handler=_plot)


def _report(args: argparse.Namespace) -> int:
    import sys

    if not args.no_progress:
        print(f"report: building {args.out} (about 2 minutes on 2 cores) ...", file=sys.stderr, flush=True)
    from experiments.report import build_report

    path = build_report(args.out, args.config, tuple(args.runs), tuple(args.measured), not args.no_progress)
    print(f"report written to {path}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import time

    from experiments.sweep import load_grid, run_sweep

    from hdc.errors import UserError

    grid = load_grid(args.grid)
    t0 = time.perf_counter()
    unfit: list[str] = []
    n = run_sweep(grid, args.out, jobs=args.jobs, executor=args.executor,
                  on_row=lambda r: unfit.append(r["config_id"]) if r.get("fits") is False else None)
    print(f"{n} config(s) evaluated in {time.perf_counter() - t0:.1f} s -> {args.out}")
    if unfit:
        msg = (f"{len(unfit)} of {n} config(s) do not fit the GPU's memory (column fits = False), "
               f"e.g. config_id {unfit[0]}")
        if args.require_fit:
            raise UserError(f"--require-fit: {msg}")
        print(f"warning: {msg}", file=sys.stderr)
    return 0


def _plot(args: argparse.Namespace) -> int:
    import os

    from experiments.plot import plot_csv

    out = args.out or os.path.splitext(args.csv)[0] + ".png"
    print(plot_csv(args.csv, args.x, args.y, args.hue, out, logx=args.logx, where=args.where))
    return 0
