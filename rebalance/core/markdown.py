"""User text as inert markdown, and small tables as GitHub markdown (cards, step outputs)."""

from __future__ import annotations

import html
import re
from typing import Any

import pyarrow as pa


def markdown_text(text: str) -> str:
    """``text`` (a class name, a title: user input) as inert inline markdown on one line: no HTML,
    no links or code spans, no cell breaks in a table."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`\[\]|])", r"\\\1", escaped)


def markdown_table(table: pa.Table) -> str:
    """Render a small table as GitHub markdown (floats to 4 significant digits, text escaped)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return ", ".join(markdown_text(v) for v in value)
        return "" if value is None else markdown_text(value)

    header = "| " + " | ".join(markdown_text(name) for name in table.column_names) + " |"
    rule = "|" + "|".join("---" for _ in table.column_names) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in table.to_pylist()]
    return "\n".join([header, rule, *rows]) + "\n"
