"""CLI commands of experiments/: report (and, as they land, sweep and plot)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="build the HTML report (what `make report` runs)",
                       description="Build a self-contained HTML report with PNG figures and CSV tables.")
    p.add_argument("--out", default="out/report", help="output folder (default out/report)")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from experiments.report import build_report

    path = build_report(args.out)
    print(f"report written to {path}")
    return 0
