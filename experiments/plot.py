"""Quick figures from a sweep CSV: `hdc plot results.csv --x COL --y COL [--hue COL] [--where COL=VALUE]`.

One line per combination of the *other* grid inputs that vary (after `--where` filters): a
line never joins points that differ in anything but x, so there are no zig-zags. Unit strings
('1000km', '21ms', '400Gbps') become numbers in a unit people read (km, ms, Gbit/s, GB), and
y columns named in seconds (`_s`) are shown in ms when they are all below a second.
"""
from __future__ import annotations

import os

from experiments.configs import SECTIONS  # a grid input's first word
from hdc.errors import UserError
from hdc.outputs import check_output_file

# a parsed unit string (SI) -> (factor, axis unit): what people read on an axis
DISPLAY = {"distance": (1e-3, "km"), "bandwidth": (8e-9, "Gbit/s"), "size": (1e-9, "GB")}


def plot_csv(csv_path: str, x: str, y: str, hue: str | None, out: str, logx: bool = False,
             where: tuple[str, ...] | list[str] = ()) -> str:
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
    df = apply_where(df, where, csv_path)
    lines, x_label, y_label = plot_lines(df, x, y, hue)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, xs, ys in lines:
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if logx:
        ax.set_xscale("log")
    if lines[0][0] is not None:
        ax.legend(fontsize=8)
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


def plot_lines(df, x: str, y: str, hue: str | None) -> tuple[list[tuple], str, str]:
    """([(label, xs, ys) per line], x label, y label): a line per value of hue and of every
    other varying grid input, its points in x order, values in readable units."""
    by = line_columns(df, x, hue)
    xs, x_label = axis_values(df[x], x)
    ys, y_label = axis_values(df[y], y)
    df = df.assign(_x=xs, _y=ys)
    lines = []
    for name, part in (df.groupby(by, sort=False, dropna=False) if by else [(None, df)]):
        part = part.sort_values("_x")
        values = name if isinstance(name, tuple) else (name,)
        label = ", ".join(str(v) if c == hue else f"{c}={v}" for c, v in zip(by, values)) if by else None
        lines.append((label, part["_x"].tolist(), part["_y"].tolist()))
    return lines, x_label, y_label


def apply_where(df, where, csv_path: str):
    """Rows where every `COL=VALUE` holds (numbers compared as numbers: 1 matches 1.0)."""
    for cond in where:
        col, sep, value = cond.partition("=")
        if not sep or not col:
            raise UserError(f"--where {cond!r}: expected COLUMN=VALUE")
        if col not in df.columns:
            raise UserError(f"--where {cond}: no column {col!r} in {csv_path}; columns: {', '.join(df.columns)}")
        kept = df[df[col].map(lambda v: _same(v, value))]
        if kept.empty:
            raise UserError(f"--where {cond}: no row left has it (values of {col}: "
                            f"{', '.join(sorted(map(str, df[col].unique())))})")
        df = kept
    return df


def _same(cell, value: str) -> bool:
    try:
        return float(cell) == float(value)
    except (TypeError, ValueError):
        return str(cell) == value


def line_columns(df, x: str, hue: str | None) -> list[str]:
    """The columns that tell lines apart: hue first, then every other grid input that varies."""
    inputs = [c for c in df.columns if c.split(".", 1)[0] in SECTIONS and c not in (x, hue)]
    return ([hue] if hue else []) + [c for c in inputs if df[c].nunique(dropna=False) > 1]


def axis_values(series, name: str):
    """(numbers to plot, axis label): unit strings in a readable unit, seconds as ms when small."""
    import pandas as pd

    from hdc.units import UnitError, parse_bandwidth, parse_distance, parse_size, parse_time

    if pd.api.types.is_numeric_dtype(series):
        if name.endswith("_s") and series.abs().max() < 1:
            return series * 1e3, f"{name} (ms)"
        return series, name
    for kind, parser in (("time", parse_time), ("bandwidth", parse_bandwidth), ("distance", parse_distance),
                         ("size", parse_size)):
        try:
            si = series.map(parser)
        except (UnitError, ValueError, TypeError):
            continue
        if kind == "time":
            factor, unit = (1e3, "ms") if si.abs().max() < 1 else (1.0, "s")
        else:
            factor, unit = DISPLAY[kind]
        return si * factor, f"{name} ({unit})"
    return series, name
