"""The report: a self-contained HTML page (relative links) with its tables as CSV beside it."""
from __future__ import annotations

import csv
import html
import os
import shutil
import tempfile

from hdc import cost
from hdc.placement import place
from hdc.strategies import make_strategy
from hdc.topology import load_topology
from hdc.units import fmt_bytes, fmt_time
from hdc.workload import load_workload


def alpha_beta_rows(topology_name: str, workload_name: str) -> list[dict]:
    """Alpha-beta time of one full gradient sync of the workload, per strategy."""
    topo = load_topology(topology_name)
    work = load_workload(workload_name)
    groups = place(topo, work.parallel).dp_groups()
    numel = work.params_per_rank
    rows = []
    for name in ("flat_ring", "hierarchical", "chunked", "distributed_optimizer"):
        plan = make_strategy(name).plan(topo, groups, numel, work.grad_bytes)
        total, per_rank = cost.wan_bytes(topo, plan)
        rows.append({"topology": topology_name, "strategy": plan.strategy,
                     "grad_bytes_per_rank": numel * work.grad_bytes,
                     "alpha_beta_s": cost.plan_time_s(topo, plan),
                     "wan_bytes_per_rank": per_rank})
    return rows


def build_report(out_dir: str) -> str:
    """Write the report into out_dir atomically (a temp folder renamed into place)."""
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".report-", dir=parent)
    try:
        rows = []
        for topo in ("single-site-3072", "nemotron-2dc"):
            rows += alpha_beta_rows(topo, "nemotron-4-340b")
        with open(os.path.join(tmp, "alpha_beta.csv"), "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        topo = load_topology("nemotron-2dc")
        summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in topo.summary())
        table = "".join(
            f"<tr><td>{html.escape(r['topology'])}</td><td>{html.escape(r['strategy'])}</td>"
            f"<td>{fmt_bytes(r['grad_bytes_per_rank'])}</td><td>{fmt_time(r['alpha_beta_s'])}</td>"
            f"<td>{fmt_bytes(r['wan_bytes_per_rank'])}</td></tr>" for r in rows)
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hdc report</title></head><body>
<h1>hdc report</h1>
<h2>Topology: {html.escape(topo.name)}</h2><table>{summary}</table>
<h2>Gradient sync of Nemotron-4 340B (alpha-beta lower bound)</h2>
<table><tr><th>topology</th><th>strategy</th><th>grad bytes / rank</th><th>alpha-beta</th><th>WAN bytes / rank</th></tr>
{table}</table><p><a href="alpha_beta.csv">alpha_beta.csv</a></p></body></html>"""
        with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as fh:
            fh.write(page)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out_dir, "index.html")
