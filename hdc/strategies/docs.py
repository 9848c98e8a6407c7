"""The strategy table of docs/distributed.md, generated from the registry.

    python -m hdc.strategies.docs            # print the table
    python -m hdc.strategies.docs --write    # replace it in docs/distributed.md (between the markers)
"""
from __future__ import annotations

import sys
from pathlib import Path

from hdc.strategies import strategy_table

BEGIN, END = "<!-- strategy-table:begin -->", "<!-- strategy-table:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def replace_marked(doc: str, begin: str, end: str, text: str) -> str:
    """`doc` with what stands between the markers `begin` and `end` replaced by `text`."""
    start, stop = doc.index(begin) + len(begin), doc.index(end)
    return doc[:start] + "\n" + text + "\n" + doc[stop:]


def render(doc: str) -> str:
    return replace_marked(doc, BEGIN, END, strategy_table())


if __name__ == "__main__":
    if "--write" in sys.argv:
        DOC.write_text(render(DOC.read_text()))
    else:
        print(strategy_table())
