"""Matplotlib figures of the report; each returns (figure, columns, rows) so the data is saved too."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KIND_COLORS = {"forward": "#4c78a8", "backward": "#72b7b2", "optimizer": "#b279a2", "dp": "#e45756",
               "pp": "#f58518", "tp": "#eeca3b", "bubble": "#bab0ac"}


def lines(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
          logx: bool = False, percent: bool = True, ref: float | None = None, ref_label: str = ""):
    """One line per series name from (x, y) points."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    rows = []
    for name, pts in series.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [y * (100 if percent else 1) for _, y in pts], marker="o", label=name)
        rows += [(name, x, y) for x, y in pts]
    if ref is not None:
        ax.axhline(ref * (100 if percent else 1), color="grey", ls="--", lw=1, label=ref_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.set_title(title, fontsize=11)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ["series", "x", "y"], rows


def bars(labels: list[str], values: list[float], ylabel: str, title: str, percent: bool = True):
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.bar(labels, [v * (100 if percent else 1) for v in values], color="#4c78a8")
    for i, v in enumerate(values):
        ax.text(i, v * (100 if percent else 1), f"{v:.1%}" if percent else f"{v:.3g}", ha="center", va="bottom",
                fontsize=8)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3, axis="y")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    fig.tight_layout()
    return fig, ["label", "value"], list(zip(labels, values))


def stacked_breakdown(names: list[str], parts: dict[str, list[float]], title: str):
    """Horizontal stacked bars: where each case's step time goes."""
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(names) + 1.6))
    left = [0.0] * len(names)
    colors = ["#4c78a8", "#eeca3b", "#f58518", "#e45756", "#bab0ac", "#b279a2"]
    for (part, vals), color in zip(parts.items(), colors):
        ax.barh(names, vals, left=left, label=part, color=color)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("seconds per step")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, ncol=3, loc="lower right")
    ax.invert_yaxis()
    fig.tight_layout()
    rows = [(n, *(parts[p][i] for p in parts)) for i, n in enumerate(names)]
    return fig, ["case", *parts], rows


def gantt(timelines: dict[str, list[dict]], title: str):
    """Spans per rank class; one panel per case (shared time axis)."""
    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 2.2 + 1.2 * len(timelines)), sharex=True)
    axes = [axes] if len(timelines) == 1 else list(axes)
    rows = []
    for ax, (case, spans) in zip(axes, timelines.items()):
        ranks = sorted({s["rank"] for s in spans}, key=_rank_order)
        bars: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for s in spans:  # one collection per (rank, kind): thousands of spans draw in one call each
            bars.setdefault((s["rank"], s["kind"].split(":")[0]), []).append((s["start_s"], s["end_s"] - s["start_s"]))
            rows.append((case, s["rank"], s["kind"], s["start_s"], s["end_s"]))
        for (rank, kind), xranges in bars.items():
            ax.broken_barh(xranges, (ranks.index(rank) - 0.4, 0.8), color=KIND_COLORS.get(kind, "#999999"))
        ax.set_yticks(range(len(ranks)))
        ax.set_yticklabels(ranks, fontsize=6)
        ax.set_title(case, fontsize=9)
        ax.invert_yaxis()
    axes[-1].set_xlabel("time in step (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLORS.values()]
    fig.suptitle(title, fontsize=11)
    fig.legend(handles, list(KIND_COLORS), ncol=len(KIND_COLORS), fontsize=8, loc="lower center")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig, ["case", "rank", "kind", "start_s", "end_s"], rows


def _rank_order(rank: str) -> tuple:
    """'pipeline/stage10' sorts after 'pipeline/stage9'; pipelines before their DP rows."""
    row, _, stage = rank.partition("/")
    digits = "".join(ch for ch in stage if ch.isdigit())
    return (row != "pipeline", int(digits) if digits else 0, rank)


def scatter_predicted_measured(points: list[tuple[str, float, float]], title: str, actual: str = "measured"):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    xs = [p for _, p, _ in points]
    ys = [m for _, _, m in points]
    ax.scatter(xs, ys, color="#e45756")
    hi = max(xs + ys) * 1.1 if points else 1
    lo = min(xs + ys) * 0.9 if points else 0.001
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, label=f"{actual} = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted (s)")
    ax.set_ylabel(f"{actual} (s)")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, ["config", "predicted_s", f"{actual}_s"], points


def run_curves(runs: dict[str, list[dict]], metrics: list[str], title: str):
    """GRPO metrics against step, one panel per metric, one line per run."""
    present = [m for m in metrics if any(m in r for rows in runs.values() for r in rows)]
    n = max(1, len(present))
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4 * cols, 3 * ((n + cols - 1) // cols)),
                             squeeze=False)
    out = []
    for k, metric in enumerate(present):
        ax = axes[k // cols][k % cols]
        for name, rows in runs.items():
            pts = [(r["step"], r[metric]) for r in rows if metric in r and "step" in r]
            if pts:
                ax.plot(*zip(*pts), label=name)
                out += [(name, metric, s, v) for s, v in pts]
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    for k in range(len(present), axes.size):
        axes[k // cols][k % cols].axis("off")
    if present:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig, ["run", "metric", "step", "value"], out
