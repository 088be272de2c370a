"""Tables as Markdown, the one format the CLI, the benches and the README share."""

from __future__ import annotations

import polars as pl


def markdown_table(df: pl.DataFrame, digits: int = 4) -> str:
    """`df` as a Markdown table: floats to `digits` places, numbers right-aligned, nulls as "–"."""
    def cell(v) -> str:
        if v is None:
            return "–"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---:" if df[c].dtype.is_numeric() else "---" for c in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join([head, rule, *rows])
