"""The config reference table of docs/trainer.md, generated from the dataclass metadata.

    python -m trainer.docs            # print the table
    python -m trainer.docs --write    # replace it in docs/trainer.md (between the markers)
"""
from __future__ import annotations

import sys
from pathlib import Path

from hdc.config import help_table
from hdc.strategies.docs import replace_marked

BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "trainer.md"


def config_table() -> str:
    from trainer.config import Recipe, RewardSpec
    from trainer.lora import LoraSpec

    rows = []
    for row in help_table(Recipe):
        rows.append(row)
        if row[0] == "rewards":  # the list's items, one row per field
            rows.extend(help_table(RewardSpec, "rewards[i]"))
        if row[0] == "model.lora":  # an optional section: its fields when given
            rows.extend(help_table(LoraSpec, "model.lora"))
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, tp, default, text in rows:
        cell = text.replace("|", "\\|")
        lines.append(f"| `{name}` | {tp.replace('|', 'or')} | `{default}` | {cell} |")
    return "\n".join(lines)


def render(doc: str) -> str:
    return replace_marked(doc, BEGIN, END, config_table())


if __name__ == "__main__":
    if "--write" in sys.argv:
        DOC.write_text(render(DOC.read_text()))
    else:
        print(config_table())
