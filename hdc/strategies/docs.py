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


def render(doc: str) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + strategy_table() + "\n" + doc[end:]


if __name__ == "__main__":
    if "--write" in sys.argv:
        DOC.write_text(render(DOC.read_text()))
    else:
        print(strategy_table())
