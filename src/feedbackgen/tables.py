"""Tables and numbers as every report writes them: report.md, ranking.md, fidelity.md, a
simulation's summary.md, the human-evaluation report and the benches' tables, and the same Markdown
printed in a terminal.

- `number(x, spec)`: one number as text; None, NaN and infinities are the missing mark;
- `table_lines(header, rows, align)`: a Markdown table from its cells ("|" in a cell is escaped);
- `markdown_table(df, digits, formats)`: a polars DataFrame as a Markdown table;
- `print_markdown(md, console)`: Markdown with its tables fitted to the terminal's width: a table
  too wide is cut into several, each repeating the first column, so no number is ever shortened.

Sits with the shared vocabulary at the bottom of the layers (docs/layout.md): evaluation, recommend,
the command line and the benches all write tables, and evaluation may not import recommend.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import polars as pl

from feedbackgen.errors import FeedbackgenError

MISSING = "–"  # a cell with no value (report.md, whose readers know "—", passes its own)


def number(x: Any, spec: str = ".3f", missing: str = MISSING) -> str:
    """`x` formatted with the format spec `spec` (".3f", ".1%", ",d", "" for `str`); `missing` for
    None and for a NaN or infinite number, which no table should show as "nan"."""
    if x is None or (isinstance(x, Real) and not isinstance(x, int) and not math.isfinite(x)):
        return missing
    return format(x, spec)


def table_lines(header: Sequence[Any], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """A Markdown table as lines: `header`, then each row of cells (str() of each), "|" escaped.
    `align`: one letter per column, "l" (left, the default) or "r" (right: numbers)."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise FeedbackgenError(f"align has {len(align)} letters for {len(header)} columns")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


def markdown_table(df: pl.DataFrame, digits: int = 4, formats: Mapping[str, str] | None = None) -> str:
    """`df` as a Markdown table: floats to `digits` places, numbers right-aligned, nulls as "–".

    formats: a format spec per column where `digits` would mislead, e.g. `{"candidates": ".1f"}`
    for a mean list length; raises FeedbackgenError naming a column `df` does not have.
    """
    formats = dict(formats or {})
    unknown = sorted(set(formats) - set(df.columns))
    if unknown:
        raise FeedbackgenError(f"formats for column(s) {', '.join(unknown)} not in the table "
                               f"(columns: {', '.join(df.columns)})")

    def cell(column: str, v: Any) -> str:
        if column in formats:
            return number(v, formats[column])
        return number(v, f".{digits}f" if isinstance(v, float) else "")

    align = "".join("r" if df[c].dtype.is_numeric() else "l" for c in df.columns)
    rows = ([cell(c, v) for c, v in zip(df.columns, row)] for row in df.iter_rows())
    return "\n".join(table_lines(df.columns, rows, align))


# -- the terminal -------------------------------------------------------------------------------

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
FIRST_COLUMN_MAX = 28
TEXT_COLUMN_MAX = 40  # a column with longer cells holds prose (definitions, sources): that may wrap


def _parse_table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    cells = [[c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line.strip())[1:-1]] for line in lines]
    return cells[0], [row for row in cells[2:]]


def _column_chunks(widths: list[int], total: int) -> list[list[int]]:
    """Indices of columns 1.. grouped so each group, after the first column, fits `total` cells wide
    (each column costs its width plus 3 for padding and rule)."""
    budget = total - (min(widths[0], FIRST_COLUMN_MAX) + 4)
    chunks: list[list[int]] = [[]]
    used = 0
    for i in range(1, len(widths)):
        cost = widths[i] + 3
        if chunks[-1] and used + cost > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += cost
    return [c for c in chunks if c]


def _print_table(lines: list[str], console) -> None:
    from rich import box  # rich only when printing: `import feedbackgen.tables` stays light
    from rich.table import Table

    header, rows = _parse_table(lines)
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    widths = [min(max(len(c) for c in col), TEXT_COLUMN_MAX) for col in zip(header, *rows)]
    for chunk in _column_chunks(widths, console.width):
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        table.add_column(header[0], overflow="fold", max_width=FIRST_COLUMN_MAX)
        for i in chunk:  # short cells (numbers) never wrap: the chunking made room for them
            prose = widths[i] == TEXT_COLUMN_MAX
            table.add_column(header[i], no_wrap=not prose, overflow="fold", min_width=None if prose else widths[i])
        for row in rows:
            table.add_row(row[0], *(row[i] for i in chunk))
        console.print(table)


def print_markdown(md: str, console) -> None:
    """Print Markdown with rich, its tables fitted to `console.width` (see the module docstring)."""
    from rich.markdown import Markdown  # as in _print_table

    block: list[str] = []
    is_table = False
    for line in md.splitlines() + [""]:
        table_line = line.lstrip().startswith("|")
        if block and table_line != is_table:
            _print_table(block, console) if is_table else console.print(Markdown("\n".join(block)))
            block = []
        is_table = table_line
        block.append(line)
    if block and any(b.strip() for b in block):
        _print_table(block, console) if is_table else console.print(Markdown("\n".join(block)))
