"""Quick figures from a sweep CSV: `hdc plot results.csv --x COL --y COL [--hue COL]`."""
from __future__ import annotations

import os

from hdc.errors import UserError


def plot_csv(csv_path: str, x: str, y: str, hue: str | None, out: str, logx: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not os.path.exists(csv_path):
        raise UserError(f"{csv_path}: no such file")
    try:
        df = pd.read_csv(csv_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise UserError(f"{csv_path}: not a readable CSV ({e})") from None
    for flag, col in (("--x", x), ("--y", y), ("--hue", hue)):
        if col is not None and col not in df.columns:
            raise UserError(f"{flag}: no column {col!r} in {csv_path}; columns: {', '.join(df.columns)}")
    if df.empty:
        raise UserError(f"{csv_path}: has no rows to plot")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    groups = df.groupby(hue, sort=False) if hue else [(None, df)]
    for name, part in groups:
        part = part.assign(_x=_numeric(part[x])).sort_values("_x")
        ax.plot(part["_x"], part[y], marker="o", label=str(name) if hue else None)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logx:
        ax.set_xscale("log")
    if hue:
        ax.legend(title=hue, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _numeric(series):
    """Numbers as they are; unit strings ('21ms', '400Gbps', '1000km') as SI numbers."""
    import pandas as pd

    from hdc.units import UnitError, parse_bandwidth, parse_distance, parse_size, parse_time

    if pd.api.types.is_numeric_dtype(series):
        return series
    for parser in (parse_time, parse_bandwidth, parse_distance, parse_size):
        try:
            return series.map(parser)
        except (UnitError, ValueError, TypeError):
            continue
    return series
