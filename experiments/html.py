"""A small builder for the self-contained report: sections of text, tables and figures.

Every figure is a PNG written next to index.html with its data as a CSV of the same name;
every table is also written as CSV. Links are relative, so the folder opens offline.
"""
from __future__ import annotations

import csv
import html
import os
from typing import Any, Iterable, Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#1d2330;line-height:1.45}
h1{border-bottom:2px solid #3b6ea5;padding-bottom:.2em} h2{margin-top:2em;color:#23466e}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em} th,td{border:1px solid #cfd6e0;padding:.3em .6em;
text-align:right} th{background:#eef2f7} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #dde3ea} figcaption{font-size:.9em;color:#4a5568}
.note{background:#f6f8fb;border-left:4px solid #3b6ea5;padding:.5em 1em} code{background:#f1f3f6;padding:0 .2em}
.small{font-size:.85em;color:#4a5568}
"""


class ReportWriter:
    def __init__(self, folder: str, title: str):
        self.folder, self.title = folder, title
        self.parts: list[str] = []
        self.files: list[str] = []

    def h2(self, text: str, anchor: str | None = None) -> None:
        a = f' id="{anchor}"' if anchor else ""
        self.parts.append(f"<h2{a}>{html.escape(text)}</h2>")

    def p(self, text: str, cls: str | None = None, raw: bool = False) -> None:
        body = text if raw else html.escape(text)
        self.parts.append(f'<p class="{cls}">{body}</p>' if cls else f"<p>{body}</p>")

    def bullets(self, items: Iterable[str]) -> None:
        self.parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              caption: str = "", fmt: dict[str, str] | None = None) -> None:
        """An HTML table plus `name`.csv with the raw values."""
        self.write_csv(f"{name}.csv", columns, rows)
        fmt = fmt or {}
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v, fmt.get(c)))}</td>" for c, v in zip(columns, r))
                       + "</tr>" for r in rows)
        cap = f'<p class="small">{html.escape(caption)} (<a href="{name}.csv">{name}.csv</a>)</p>'
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>{cap}")

    def figure(self, name: str, fig: Any, caption: str, columns: Sequence[str] | None = None,
               rows: Sequence[Sequence[Any]] | None = None) -> None:
        """Save a matplotlib figure as name.png with its data as name.csv."""
        import matplotlib.pyplot as plt

        png = f"{name}.png"
        fig.savefig(os.path.join(self.folder, png), dpi=100)
        plt.close(fig)
        self.files.append(png)
        link = ""
        if columns is not None and rows is not None:
            self.write_csv(f"{name}.csv", columns, rows)
            link = f' (data: <a href="{name}.csv">{name}.csv</a>)'
        self.parts.append(f'<figure><img src="{png}" alt="{html.escape(caption)}" onerror="hdcBroken(this)">'
                          f"<figcaption>{html.escape(caption)}{link}</figcaption></figure>")

    def write_csv(self, filename: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        with open(os.path.join(self.folder, filename), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            w.writerows(rows)
        self.files.append(filename)

    def html_page(self) -> str:
        # an image that fails to load marks the page (checked by the browser test)
        script = ("<script>function hdcBroken(img){document.body.dataset.brokenImages="
                  "(+(document.body.dataset.brokenImages||0)+1);img.alt='MISSING: '+img.src;}</script>")
        return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
                f"<style>{CSS}</style>{script}</head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.parts) + "</body></html>")

    def save(self) -> str:
        path = os.path.join(self.folder, "index.html")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.html_page())
        return path


def _fmt(v: Any, spec: str | None) -> str:
    if v is None:
        return "–"
    if spec and isinstance(v, (int, float)):
        return format(v, spec)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
