"""Tables as Markdown, the one format the CLI, the benches and the README share."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl


def markdown_table(df: pl.DataFrame, digits: int = 4, formats: Mapping[str, str] | None = None) -> str:
    """`df` as a Markdown table: floats to `digits` places, numbers right-aligned, nulls as "–".

    formats: a format spec per column where `digits` would mislead, e.g. `{"candidates": ".1f"}`
    for a mean list length; raises FeedbackgenError naming a column `df` does not have.
    """
    formats = dict(formats or {})
    unknown = sorted(set(formats) - set(df.columns))
    if unknown:
        from feedbackgen.errors import FeedbackgenError

        raise FeedbackgenError(f"formats for column(s) {', '.join(unknown)} not in the table "
                               f"(columns: {', '.join(df.columns)})")

    def cell(column: str, v) -> str:
        if v is None:
            return "–"
        if column in formats:
            return format(v, formats[column])
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---:" if df[c].dtype.is_numeric() else "---" for c in df.columns) + "|"
    rows = ["| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row)) + " |" for row in df.iter_rows()]
    return "\n".join([head, rule, *rows])
