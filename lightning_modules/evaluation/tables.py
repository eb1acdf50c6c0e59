"""Markdown and CSV tables of evaluation rows, shared by the dubbing and motion evaluations."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4g}")
    return "—" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def write_table(path: Path, rows: list[dict[str, Any]], keys: list[str], note: str) -> str:
    """`path`.md (with `note` under it) and `path`.csv; returns the Markdown."""
    text = markdown_table(rows, keys) + f"\n\n{note}\n"
    path.with_suffix(".md").write_text(text)
    with open(path.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return text
