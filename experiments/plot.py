"""Quick figures from a sweep CSV: `hdc plot results.csv --x COL --y COL [--hue COL]`."""
from __future__ import annotations

import os

from hdc.errors import UserError
from hdc.outputs import check_output_file


def plot_csv(csv_path: str, x: str, y: str, hue: str | None, out: str, logx: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = read_csv_table(csv_path)
    for flag, col in (("--x", x), ("--y", y), ("--hue", hue)):
        if col is not None and col not in df.columns:
            raise UserError(f"{flag}: no column {col!r} in {csv_path}; columns: {', '.join(map(str, df.columns))}")
    if df.empty:
        raise UserError(f"{csv_path}: has no rows to plot")
    if not pd.api.types.is_numeric_dtype(df[y]) or not df[y].notna().any():
        raise UserError(f"--y {y}: the column holds no numbers (first value {df[y].iloc[0]!r}); pick a numeric column")
    check_output_file(out, "--out")
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


def read_csv_table(csv_path: str):
    """A CSV as a DataFrame; a missing, binary, empty or malformed file is a UserError."""
    import pandas as pd

    if not os.path.isfile(csv_path):
        raise UserError(f"{csv_path}: {'is a folder' if os.path.isdir(csv_path) else 'no such file'}, expected a CSV file")
    with open(csv_path, "rb") as fh:
        head = fh.read(1 << 16)
    if b"\x00" in head:
        raise UserError(f"{csv_path}: not a text CSV (binary content)")
    try:
        return pd.read_csv(csv_path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{csv_path}: is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{csv_path}: not a readable CSV ({str(e).splitlines()[0]})") from None


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
