"""Which character separates the columns of a delimited file, judged from its header line.

A header that splits into one column under the expected separator is the usual sign of a file
written with another one (a ";" CSV from a European spreadsheet, a space-separated RecBole file).
Left alone, every record then lacks every field and the run reports a symptom ("24× item_id:
missing"). So:

- CSV: when the header has no "," but holds tabs, ";" or "|", the most frequent of them is the
  separator (the choice is stated in the file's manifest entry and the `prepare` output);
- any delimited format: a one-column header whose name holds spaces is an error naming what was
  found and what is expected — spaces cannot be told apart from spaces inside a text column.
"""

from __future__ import annotations

from feedbackgen.errors import DataError

CSV_ALTERNATIVES = ("\t", ";", "|")
_NAMES = {",": "','", "\t": "tab", ";": "';'", "|": "'|'", " ": "space"}


def _name(sep: str) -> str:
    return _NAMES.get(sep, repr(sep))


def csv_delimiter(header: str, expected: str, source: str) -> tuple[str, str | None]:
    """The separator of a CSV file from its header line, and a note when it is not `expected`."""
    header = header.rstrip("\r\n")
    if expected in header or not header:
        return expected, None
    counts = {sep: header.count(sep) for sep in CSV_ALTERNATIVES if sep != expected}
    sep, n = max(counts.items(), key=lambda kv: (kv[1], -CSV_ALTERNATIVES.index(kv[0])))
    if n:
        return sep, (f"the header has no {_name(expected)} but {n} {_name(sep)}: read as "
                     f"{_name(sep)}-separated ({n + 1} columns)")
    one_column(header, expected, source)
    return expected, None


def one_column(header: str, expected: str, source: str, *, what: str = "") -> None:
    """Raise when a one-column `header` holds spaces: the file is separated by something else."""
    if " " in header.strip():
        words = len(header.split())
        raise DataError(f"the header is one column, {header.strip()[:80]!r}, whose name holds spaces: columns "
                        f"must be separated by {_name(expected)}{what}, and the header has none (it holds {words} "
                        f"space-separated words; was the file written with spaces between columns?)",
                        source=source, line=1)
