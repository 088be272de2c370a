"""Byte readers: the records of a file, one at a time, whatever its compression and encoding.

Each reader yields (line number, record) and reports what it cannot read to `Problems`: a line
that is not JSON, a CSV row with the wrong number of fields, an undecodable line, and a
truncated or corrupt compressed file (once, at the line where it broke; the rest of that file is
not read). gzip is chosen by the .gz extension, a .zip must hold one file, and the text
encoding is declared or detected (data/encoding.py), the CSV delimiter detected
(data/delimiters.py).
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from feedbackgen.data.delimiters import csv_delimiter, one_column
from feedbackgen.data.encoding import LineDecoder, UndecodableLine
from feedbackgen.data.fields import MAX_LITERAL_CHARS, lone_surrogate
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError


# -- record sources --------------------------------------------------------------------------------

def _open_binary(path: Path):
    """The raw byte stream of `path`: gzip by extension, or the single member of a .zip."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            raise DataError(f"expected exactly one file inside the zip, found {len(members)}: unzip it first "
                            f"(unzip {path.name}) and give the files it holds", source=str(path))
        return archive.open(members[0])
    return open(path, "rb")


# Lines that may decode to a lone surrogate: a "\ud800"-style escape (raw surrogate bytes are not UTF-8).
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|\\U0000[dD][89a-fA-F]")
_BROKEN_STREAM = (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile, UnicodeDecodeError)


def line_decoder(path: Path, encoding: str, *, delimited: bool) -> LineDecoder:
    """How `path`'s lines are decoded (data/encoding.py: declared, BOM, UTF-8, or detected)."""
    try:
        return LineDecoder(lambda: _open_binary(path), encoding, detect=delimited)
    except _BROKEN_STREAM:  # a broken compressed stream is reported where reading it stops
        return LineDecoder(lambda: io.BytesIO(), encoding, detect=False)


def _broken(path: Path, line_no: int, e: Exception, decoder: LineDecoder, problems: Problems) -> None:
    if isinstance(e, UnicodeDecodeError):
        why = f"not valid {decoder.name} text ({e.reason}); stopped reading it here"
    else:
        why = f"file is truncated or corrupt ({type(e).__name__}: {e}); stopped reading it here"
    problems.report(str(path), line_no, None, why)


def decoded_lines(path: Path, problems: Problems, decoder: LineDecoder) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line; a line that does not decode is reported (its
    record is lost, no other), a broken stream at the line where it broke."""
    line_no = 0
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(decoder.lines(f), 1):
                if not raw.strip():
                    continue
                try:
                    yield line_no, decoder.decode(raw)
                except UndecodableLine as bad:
                    problems.report(str(path), line_no, None, bad.reason)
    except _BROKEN_STREAM as e:
        _broken(path, line_no + 1, e, decoder, problems)


def raw_lines(path: Path, problems: Problems) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each non-blank line, for readers that decode line by line
    themselves (movielens, lightgcn); a broken stream is reported at its line."""
    line_no = 0
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, 1):
                if raw.strip():
                    yield line_no, raw
    except _BROKEN_STREAM as e:
        problems.report(str(path), line_no + 1, None,
                        f"file is truncated or corrupt ({type(e).__name__}: {e}); stopped reading it here")


def json_records(path: Path, problems: Problems, *, literals: bool = False,
                  decoder: LineDecoder | None = None) -> Iterator[tuple[int, dict]]:
    """JSON objects, one per line. With `literals`, Python-literal dict lines are accepted too."""
    decoder = decoder or line_decoder(path, "auto", delimited=False)
    for line_no, raw in decoded_lines(path, problems, decoder):
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError) as e:
            record = _python_literal(raw) if literals else None
            if record is None:
                why = "nested too deeply" if isinstance(e, RecursionError) else e
                problems.report(str(path), line_no, None, f"not valid JSON ({why})")
                continue
        if not isinstance(record, dict):
            problems.report(str(path), line_no, None, f"expected a JSON object, got {type(record).__name__}")
            continue
        if _MAYBE_SURROGATE.search(raw) and lone_surrogate(record):
            problems.report(str(path), line_no, None, "not valid Unicode text (a lone surrogate such as \\ud800)")
            continue
        yield line_no, record


def _python_literal(raw: str) -> dict | None:
    if len(raw) > MAX_LITERAL_CHARS or not raw.lstrip().startswith("{"):
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# Line ends as csv expects them from a file opened with newline="": "\r\n", "\r" or "\n".
_CSV_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def csv_records(path: Path, problems: Problems, delimiter: str = ",", decoder: LineDecoder | None = None,
                 facts: dict[str, Any] | None = None) -> Iterator[tuple[int, dict]]:
    """CSV records. Lines are decoded one by one, so a line that is not text in the file's
    encoding costs the record it belongs to, and no other. The separator is checked against the
    header (data/delimiters.py); what was found goes to `facts`."""
    csv.field_size_limit(1 << 28)
    decoder = decoder or line_decoder(path, "auto", delimited=True)
    try:
        with _open_binary(path) as f:
            header = decoder.decode(next(iter(decoder.lines(f)), b""))
    except (UndecodableLine, *_BROKEN_STREAM):
        header = ""  # reported when the records are read
    delimiter, note = csv_delimiter(header, delimiter, str(path))
    if note and facts is not None:
        facts.update(delimiter=delimiter, delimiter_note=note)
    bad: dict[int, str] = {}  # csv line number -> why it did not decode
    line_no = 0

    def lines(f) -> Iterator[str]:
        n = 0
        for raw in decoder.lines(f):
            try:
                text = decoder.decode(raw)
            except UndecodableLine as e:
                # a stand-in keeps the record structure; the record holding it is dropped below
                text, reason = raw.decode("utf-8", errors="replace"), e.reason
            else:
                reason = None
            for piece in _CSV_LINE.findall(text):
                n += 1
                if reason is not None:
                    bad[n] = reason
                yield piece

    try:
        with _open_binary(path) as raw:
            reader = csv.DictReader(lines(raw), delimiter=delimiter)
            fields = reader.fieldnames  # reads the header
            if 1 in bad:
                raise DataError(f"the header line: {bad[1]}", source=str(path), line=1)
            del fields
            previous = reader.line_num
            for record in reader:
                first, line_no, previous = previous + 1, reader.line_num, reader.line_num
                damaged = next((n for n in range(first, line_no + 1) if n in bad), None)
                if damaged is not None:
                    problems.report(str(path), damaged, None, bad[damaged])
                    continue
                if None in record:  # more cells than header columns
                    problems.report(str(path), line_no, None,
                                    f"{len(reader.fieldnames or []) + len(record[None])} cells for "
                                    f"{len(reader.fieldnames or [])} columns")
                    continue
                yield line_no, record
    except _BROKEN_STREAM as e:
        _broken(path, line_no + 1, e, decoder, problems)
    except csv.Error as e:
        problems.report(str(path), line_no + 1, None, f"not valid CSV ({e}); stopped reading it here")

def parquet_records(path: Path, problems: Problems) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several unrelated types for a non-Parquet file
        raise DataError(f"not a readable Parquet file ({e})", source=str(path)) from None
    row = 0
    try:
        for batch in table.iter_batches(batch_size=65_536):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except Exception as e:  # a corrupt page: pyarrow raises OSError, ArrowInvalid, UnicodeDecodeError, ...
        problems.report(str(path), row + 1, None,
                        f"file is corrupt ({type(e).__name__}: {e}); stopped reading it here")


def recbole_records(path: Path, problems: Problems,
                     decoder: LineDecoder | None = None) -> Iterator[tuple[int, dict]]:
    """RecBole atomic file: tab-separated, first line `name:type` headers; values stay strings."""
    decoder = decoder or line_decoder(path, "auto", delimited=True)
    header: list[str] | None = None
    for line_no, text in decoded_lines(path, problems, decoder):
        cells = text.rstrip("\r\n").split("\t")
        if header is None:
            if line_no != 1:
                raise DataError("the header line is not text in the file's encoding", source=str(path), line=1)
            header = [c.split(":", 1)[0].strip() for c in cells]
            continue
        if len(cells) != len(header):
            problems.report(str(path), line_no, None, f"{len(cells)} cells for {len(header)} columns")
            continue
        yield line_no, dict(zip(header, cells))


def recbole_header(path: Path, decoder: LineDecoder) -> dict[str, str]:
    try:
        with _open_binary(path) as f:
            first = next(iter(decoder.lines(f)), b"")
            first = decoder.decode(first).rstrip("\r\n")
    except UndecodableLine as e:
        raise DataError(f"the header line: {e.reason}", source=str(path), line=1) from None
    except _BROKEN_STREAM as e:
        raise DataError(f"cannot read the header line ({type(e).__name__}: {e})", source=str(path), line=1) from None
    cells = first.split("\t")
    if len(cells) == 1:
        one_column(first, "\t", str(path), what=" in a RecBole atomic file (name:type cells)")
    header = {}
    for cell in cells:
        name, _, kind = cell.partition(":")
        header[name.strip()] = kind.strip() or "token"
    return header
