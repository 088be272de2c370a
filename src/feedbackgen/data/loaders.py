"""Read public review formats into the canonical tables.

Ratings-only and interactions-only formats live in their own modules and are registered here:
`movielens` (`feedbackgen.data.movielens`) and `lightgcn` (`feedbackgen.data.lightgcn`).

    load_source(paths, fmt, meta=..., mapping=..., problems=...) -> (interactions, items | None, info)

interactions: user_id, item_id, rating (float), text, summary, timestamp (unix seconds, nullable),
source_row (the record's 0-based position among the records parsed, across all files in the order
given; for the peter format, its position in reviews.pickle), plus a few
format-specific extras (helpful votes, verified purchase, ...). items: item_id, title, brand,
categories, price, description (+ extras). info: per-file name, bytes, sha256, records read, rows kept.

Files are streamed record by record. A bad record (bad JSON, not an object, a missing id or rating,
a rating that is not a finite number, a field of the wrong type) is reported to `problems` with
its file, line and field, and skipped; `Problems(strict=True)` turns the first one into a
`DataError`. A truncated or corrupt compressed file is reported once, at the line where it broke,
and the rest of that file is not read (rows before it are kept unless strict).
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data.delimiters import csv_delimiter, one_column
from feedbackgen.data.encoding import AUTO, LineDecoder, UndecodableLine, check_encoding
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError
from feedbackgen.io import sha256_file

FORMATS = ("amazon2014", "amazon2018", "amazon2023", "yelp", "peter", "recbole", "movielens", "lightgcn", "csv",
           "jsonl", "parquet")
CANONICAL_REVIEW_FIELDS = ("user_id", "item_id", "rating", "text", "summary", "timestamp")
CANONICAL_ITEM_FIELDS = ("item_id", "title", "brand", "categories", "price", "description")

# A metadata line that is not JSON may be a Python literal (the 2014 Amazon meta files are);
# ast.literal_eval parses those without executing anything, but is quadratic-ish on huge input.
MAX_LITERAL_CHARS = 1_000_000
MS_THRESHOLD = 100_000_000_000  # a "seconds" value this large (year 5138) must be milliseconds


@dataclass
class Loaded:
    interactions: pl.DataFrame
    items: pl.DataFrame | None
    users: pl.DataFrame | None
    info: dict[str, Any]


class _Bad(Exception):
    """A record-level problem: which field, and why. Caught once per record and reported."""

    def __init__(self, field_name: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field_name, reason


# -- value parsing ---------------------------------------------------------------------------------

def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _finite(value: int | float) -> bool:
    """math.isfinite, but False (not OverflowError) for an int beyond float range such as 10**400."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _parse_id(value: Any, name: str) -> str:
    if value is None or value == "":
        raise _Bad(name, "missing")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _Bad(name, f"expected a string id, got {_describe(value)}")


def _parse_rating(value: Any, name: str, numbers_as_text: bool) -> float:
    if value is None or value == "":
        raise _Bad(name, "missing")
    if isinstance(value, str) and numbers_as_text:
        try:
            value = float(value.strip())
        except ValueError:
            raise _Bad(name, f"expected a number, got {_describe(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(name, f"expected a number, got {_describe(value)}")
    if not _finite(value):
        raise _Bad(name, f"not a finite number: {_describe(value)}")
    return float(value)


def _parse_text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _Bad(name, f"expected a string, got {_describe(value)}")


def _parse_date(text: str) -> int:
    stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)  # review dumps write local dates; UTC is our convention
    return int(stamp.timestamp())


def _parse_timestamp(value: Any, name: str, unit: str, numbers_as_text: bool) -> int | None:
    """Unix seconds from seconds, milliseconds ("ms"), an ISO date ("date") or any of them ("auto")."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            if unit == "date" or (unit == "auto" and not _looks_numeric(value)):
                return _parse_date(value)
            if not (numbers_as_text or unit == "auto"):
                raise _Bad(name, f"expected a number, got {_describe(value)}")
            value = float(value.strip())
        except ValueError:
            raise _Bad(name, f"not a {'date' if unit == 'date' else 'timestamp'}: {_describe(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise _Bad(name, f"expected a unix timestamp, got {_describe(value)}")
    if unit == "ms" or (unit == "auto" and abs(value) >= MS_THRESHOLD):
        value = value / 1000
    if not -2**63 <= value < 2**63:  # the timestamp column is Int64
        raise _Bad(name, f"timestamp out of range: {_describe(value)}")
    return int(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value.replace(",", "").strip()))
        except (ValueError, OverflowError):  # "nan", "inf", "1e400"
            return None
    return None


def _bool_or_none(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _helpful(index: int) -> Callable[[Any], int | None]:
    """SNAP 2014 `helpful` is [helpful votes, total votes]."""
    def get(value: Any) -> int | None:
        if isinstance(value, list) and len(value) == 2:
            return _int_or_none(value[index])
        return None
    return get


def _lone_surrogate(value: Any) -> bool:
    """Whether a parsed value holds a lone surrogate ("\\ud800" decodes to one): no column can hold it."""
    try:
        json.dumps(value, ensure_ascii=False, default=repr, skipkeys=True).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, TypeError, RecursionError):
        return False
    return False


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _literal(value: Any) -> Any:
    """A field that may hold a Python-literal list as a string ("['a', 'b']"): parsed, never eval'd."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "(") and len(value) <= MAX_LITERAL_CHARS:
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
        return value if "\\" in value and _lone_surrogate(parsed) else parsed
    return value


def _string_list(value: Any, sep: str | None = None) -> list[str]:
    """Categories from a list, a list of lists (2014 meta), a literal-list string, or "A, B" text."""
    value = _literal(value)
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(sep) if sep else [value]
        return [p.strip() for p in parts if p.strip()]
    out: list[str] = []
    if isinstance(value, (list, tuple)):
        stack = [iter(value)]  # nested lists flattened depth-first without recursion (a file may nest 1000 deep)
        while stack:
            s = next(stack[-1], stack)
            if s is stack:
                stack.pop()
            elif isinstance(s, (list, tuple)):
                stack.append(iter(s))
            # The 2018 crawls end some category lists with HTML debris ("</span></span>").
            elif isinstance(s, str) and s.strip() and "<" not in s and s.strip() not in out:
                out.append(s.strip())
    return out


def _joined_text(value: Any) -> str | None:
    value = _literal(value)
    if isinstance(value, (list, tuple)):
        value = "\n".join(str(x) for x in value if isinstance(x, str) and x.strip())
    if isinstance(value, str) and value.strip():
        return value
    return None


def _price(value: Any) -> float | None:
    """A price from a number or a string like "$1,250.00"; ranges ("$5 - $9") and junk give None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if _finite(value) and value >= 0 else None
    if isinstance(value, str):
        text = value.strip().lstrip("$").strip().replace(",", "")
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) and number >= 0 else None
    return None


# -- record sources --------------------------------------------------------------------------------

def _open_binary(path: Path):
    """The raw byte stream of `path`: gzip by extension, or the single member of a .zip."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            raise DataError(f"expected exactly one file inside the zip, found {len(members)}", source=str(path))
        return archive.open(members[0])
    return open(path, "rb")


# Lines that may decode to a lone surrogate: a "\ud800"-style escape (raw surrogate bytes are not UTF-8).
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|\\U0000[dD][89a-fA-F]")
_BROKEN_STREAM = (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile, UnicodeDecodeError)


def _decoder(path: Path, encoding: str, *, delimited: bool) -> LineDecoder:
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


def _lines(path: Path, problems: Problems, decoder: LineDecoder) -> Iterator[tuple[int, str]]:
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


def _raw_lines(path: Path, problems: Problems) -> Iterator[tuple[int, bytes]]:
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


def _json_records(path: Path, problems: Problems, *, literals: bool = False,
                  decoder: LineDecoder | None = None) -> Iterator[tuple[int, dict]]:
    """JSON objects, one per line. With `literals`, Python-literal dict lines are accepted too."""
    decoder = decoder or _decoder(path, "auto", delimited=False)
    for line_no, raw in _lines(path, problems, decoder):
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
        if _MAYBE_SURROGATE.search(raw) and _lone_surrogate(record):
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


def _csv_records(path: Path, problems: Problems, delimiter: str = ",", decoder: LineDecoder | None = None,
                 facts: dict[str, Any] | None = None) -> Iterator[tuple[int, dict]]:
    """CSV records. Lines are decoded one by one, so a line that is not text in the file's
    encoding costs the record it belongs to, and no other. The separator is checked against the
    header (data/delimiters.py); what was found goes to `facts`."""
    csv.field_size_limit(1 << 28)
    decoder = decoder or _decoder(path, "auto", delimited=True)
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

def _parquet_records(path: Path, problems: Problems) -> Iterator[tuple[int, dict]]:
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


def _recbole_records(path: Path, problems: Problems,
                     decoder: LineDecoder | None = None) -> Iterator[tuple[int, dict]]:
    """RecBole atomic file: tab-separated, first line `name:type` headers; values stay strings."""
    decoder = decoder or _decoder(path, "auto", delimited=True)
    header: list[str] | None = None
    for line_no, text in _lines(path, problems, decoder):
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


# -- review rows -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Extra:
    """An extra interaction column: our name, the source field, a lenient converter, the dtype."""

    name: str
    source: str
    convert: Callable[[Any], Any] = _scalar
    dtype: Any = None


@dataclass(frozen=True)
class ReviewFields:
    """Where each canonical field lives in a source record, and how its values are written."""

    user_id: str
    item_id: str
    rating: str
    text: str | None
    summary: str | None
    timestamp: str | None
    time_unit: str = "s"  # "s", "ms", "date" or "auto"
    numbers_as_text: bool = False  # CSV / RecBole: every value arrives as a string
    extras: tuple[Extra, ...] = ()


AMAZON2014 = ReviewFields(
    "reviewerID", "asin", "overall", "reviewText", "summary", "unixReviewTime",
    extras=(Extra("helpful_votes", "helpful", _helpful(0), pl.Int64),
            Extra("total_votes", "helpful", _helpful(1), pl.Int64)))
AMAZON2018 = ReviewFields(
    "reviewerID", "asin", "overall", "reviewText", "summary", "unixReviewTime",
    extras=(Extra("helpful_votes", "vote", _int_or_none, pl.Int64),
            Extra("verified", "verified", _bool_or_none, pl.Boolean)))
AMAZON2023 = ReviewFields(
    "user_id", "parent_asin", "rating", "text", "title", "timestamp", time_unit="ms",
    extras=(Extra("helpful_votes", "helpful_vote", _int_or_none, pl.Int64),
            Extra("verified", "verified_purchase", _bool_or_none, pl.Boolean),
            Extra("variant_asin", "asin", _scalar, pl.Utf8)))
_YELP_EXTRAS = (Extra("review_id", "review_id", _scalar, pl.Utf8),
                Extra("useful", "useful", _int_or_none, pl.Int64),
                Extra("funny", "funny", _int_or_none, pl.Int64),
                Extra("cool", "cool", _int_or_none, pl.Int64))
YELP = ReviewFields("user_id", "business_id", "stars", "text", None, "date", time_unit="date",
                    extras=_YELP_EXTRAS)
YELP_CSV = ReviewFields("user_id", "business_id", "stars", "text", None, "date", time_unit="date",
                        numbers_as_text=True, extras=_YELP_EXTRAS)


def _generic_fields(mapping: dict[str, str] | None, *, numbers_as_text: bool,
                    columns: list[str] | None = None) -> ReviewFields:
    """Fields for csv/jsonl/parquet/recbole: `mapping` maps our names to theirs; other mapped
    names become extra columns; unmapped canonical names are looked up under our own name."""
    mapping = dict(mapping or {})
    for ours in ("user_id", "item_id", "rating", "text", "summary", "timestamp"):
        mapping.setdefault(ours, ours)
    if columns is not None:  # RecBole names the text field in several ways
        for ours, theirs in (("text", ("review", "review_text", "text", "comment")),
                             ("summary", ("summary", "title"))):
            if mapping[ours] not in columns:
                mapping[ours] = next((c for c in theirs if c in columns), mapping[ours])
    extras = tuple(Extra(ours, theirs) for ours, theirs in mapping.items() if ours not in CANONICAL_REVIEW_FIELDS)
    return ReviewFields(mapping["user_id"], mapping["item_id"], mapping["rating"], mapping["text"],
                        mapping["summary"], mapping["timestamp"], time_unit="auto",
                        numbers_as_text=numbers_as_text, extras=extras)


class _ReviewColumns:
    """Rows validated into per-column lists (cheap: no per-row dicts kept)."""

    def __init__(self, fields: ReviewFields):
        self.fields = fields
        self.columns: dict[str, list] = {n: [] for n in (*CANONICAL_REVIEW_FIELDS, "source_row")}
        for extra in fields.extras:
            self.columns[extra.name] = []

    def __len__(self) -> int:
        return len(self.columns["user_id"])

    def add(self, record: dict, source: str, line: int, problems: Problems, source_row: int) -> bool:
        f = self.fields
        try:
            row = {
                "user_id": _parse_id(record.get(f.user_id), f.user_id),
                "item_id": _parse_id(record.get(f.item_id), f.item_id),
                "rating": _parse_rating(record.get(f.rating), f.rating, f.numbers_as_text),
                "text": _parse_text(record.get(f.text), f.text) if f.text else None,
                "summary": _parse_text(record.get(f.summary), f.summary) if f.summary else None,
                "timestamp": (_parse_timestamp(record.get(f.timestamp), f.timestamp, f.time_unit,
                                               f.numbers_as_text) if f.timestamp else None),
            }
        except _Bad as bad:
            problems.report(source, line, bad.field, bad.reason)
            return False
        for name, value in row.items():
            self.columns[name].append(value)
        self.columns["source_row"].append(source_row)
        for extra in f.extras:
            self.columns[extra.name].append(extra.convert(record.get(extra.source)))
        return True

    def frame(self) -> pl.DataFrame:
        schema = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "text": pl.Utf8,
                  "summary": pl.Utf8, "timestamp": pl.Int64, "source_row": pl.Int64}
        series = [pl.Series(n, self.columns[n], dtype=d) for n, d in schema.items()]
        for extra in self.fields.extras:
            series.append(_series(extra.name, self.columns[extra.name], extra.dtype))
        return pl.DataFrame(series)

    def take(self) -> pl.DataFrame:
        """The rows added so far as a frame; the lists start empty again (one chunk at a time)."""
        frame = self.frame()
        for values in self.columns.values():
            values.clear()
        return frame


def _series(name: str, values: list, dtype: Any = None) -> pl.Series:
    """A column from Python values; mixed types (a CSV extra, a loose JSON field) become strings."""
    try:
        return pl.Series(name, values, dtype=dtype, strict=dtype is None)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):  # OverflowError: ints beyond Int64
        return pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.Utf8)


# -- item rows -------------------------------------------------------------------------------------

def _amazon_item(r: dict) -> dict:
    """2014 (`categories`: list of lists), 2018 (`category`) and 2023 (`categories`, `store`) meta."""
    return {
        "item_id": r.get("parent_asin") or r.get("asin"),
        "title": _joined_text(r.get("title")),
        "brand": _joined_text(r.get("brand") if r.get("brand") else r.get("store")),
        "categories": _string_list(r.get("category") if "category" in r else r.get("categories")),
        "price": _price(r.get("price")),
        "description": _joined_text(r.get("description")),
        "main_category": _joined_text(r.get("main_cat") or r.get("main_category")),
    }


def _yelp_item(r: dict) -> dict:
    return {"item_id": r.get("business_id"), "title": _joined_text(r.get("name")), "brand": None,
            "categories": _string_list(r.get("categories"), sep=","), "price": None, "description": None,
            "city": _joined_text(r.get("city")), "state": _joined_text(r.get("state"))}


def _recbole_item(r: dict) -> dict:
    title = next((r[k] for k in ("title", "item_name", "name", "movie_title") if r.get(k)), None)
    cats = next((r[k] for k in ("categories", "category", "genre", "class") if r.get(k)), None)
    return {"item_id": r.get("item_id"), "title": title, "brand": r.get("brand") or None,
            "categories": _string_list(cats, sep="," if cats and "," in cats else " "),
            "price": _price(r.get("price")), "description": r.get("description") or None}


def _generic_item(mapping: dict[str, str] | None) -> Callable[[dict], dict]:
    item_key = (mapping or {}).get("item_id", "item_id")

    def item(r: dict) -> dict:
        return {"item_id": r.get(item_key), "title": _joined_text(r.get("title")),
                "brand": _joined_text(r.get("brand")), "categories": _string_list(r.get("categories")),
                "price": _price(r.get("price")), "description": _joined_text(r.get("description"))}
    return item


def _collect_items(records: Iterator[tuple[int, dict]], to_item: Callable[[dict], dict], source: str,
                   problems: Problems, seen: dict[str, dict]) -> tuple[int, int, int]:
    """Add items to `seen` (first occurrence wins). Returns (records read, kept, duplicates)."""
    read = kept = duplicates = 0
    for line, record in records:
        read += 1
        item = to_item(record)
        item_id = item["item_id"]
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = item["item_id"] = str(item_id)
        if not isinstance(item_id, str) or not item_id:
            problems.report(source, line, "item_id", "missing" if item_id in (None, "") else
                            f"expected a string id, got {_describe(item_id)}")
            continue
        if item_id in seen:
            duplicates += 1
            continue
        seen[item_id] = item
        kept += 1
    return read, kept, duplicates


def _items_frame(items: dict[str, dict]) -> pl.DataFrame:
    rows = list(items.values())
    names = list(rows[0]) if rows else list(CANONICAL_ITEM_FIELDS)
    dtypes = {"categories": pl.List(pl.Utf8), "price": pl.Float64}
    return pl.DataFrame([_series(n, [r.get(n) for r in rows], dtypes.get(n, pl.Utf8)) for n in names])


# -- the formats -----------------------------------------------------------------------------------

def _file_info(path: Path, role: str) -> dict[str, Any]:
    return {"name": path.name, "path": str(path), "role": role, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _existing(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path} does not exist")
    return path


def _roles(paths: list[Path], fmt: str, meta: Path | None) -> list[tuple[Path, str]]:
    """Which file holds reviews and which holds item metadata, by name and extension."""
    out = []
    for path in paths:
        name = path.name.lower()
        words = set(re.split(r"[^a-z]+", name))
        if fmt == "yelp" and words & {"tip", "tips", "checkin", "photo", "photos", "user", "users"}:
            raise DataError("is not a Yelp review or business file; pass review.json (or yelp.csv) "
                            "and business.json (as --meta)", source=str(path))
        is_meta = (name.startswith("meta_") if fmt.startswith("amazon") else
                   "business" in name if fmt == "yelp" else False)
        out.append((path, "items" if is_meta else "reviews"))
    if meta is not None:
        out.append((Path(meta), "items"))
    return out


def _review_fields(fmt: str, path: Path, mapping: dict[str, str] | None) -> ReviewFields:
    if fmt == "amazon2014":
        return AMAZON2014
    if fmt == "amazon2018":
        return AMAZON2018
    if fmt == "amazon2023":
        return AMAZON2023
    if fmt == "yelp":
        return YELP_CSV if ".csv" in path.suffixes else YELP
    return _generic_fields(mapping, numbers_as_text=fmt == "csv")


def _review_records(fmt: str, path: Path, problems: Problems, encoding: str,
                    facts: dict[str, Any]) -> Iterator[tuple[int, dict]]:
    if fmt == "parquet":
        return _parquet_records(path, problems)
    if fmt == "csv" or (fmt == "yelp" and ".csv" in path.suffixes):
        decoder = _decoder(path, encoding, delimited=True)
        facts.update(decoder.describe())
        return _csv_records(path, problems, decoder=decoder, facts=facts)
    decoder = _decoder(path, encoding, delimited=False)
    facts.update(decoder.describe())
    return _json_records(path, problems, decoder=decoder)


def _item_records(fmt: str, path: Path, problems: Problems, encoding: str,
                  facts: dict[str, Any]) -> Iterator[tuple[int, dict]]:
    if fmt == "parquet":
        return _parquet_records(path, problems)
    decoder = _decoder(path, encoding, delimited=fmt == "csv")
    facts.update(decoder.describe())
    if fmt == "csv":
        return _csv_records(path, problems, decoder=decoder, facts=facts)
    return _json_records(path, problems, literals=fmt.startswith("amazon"), decoder=decoder)


def _yield_facts(read: int, kept: int, problems: Problems, mark: Counter) -> dict[str, Any]:
    """How many of a file's records were skipped; and, when every one was, why (see `check_yielded`)."""
    skipped = problems.count - sum(mark.values())
    out: dict[str, Any] = {"skipped": skipped}
    if not kept and skipped > 0:
        out["yielded_nothing"] = problems.describe(since=mark)
    return out


def check_yielded(info: dict[str, Any]) -> None:
    """Raise for a file whose every record was skipped: it is most often in another format,
    encoding or separator than assumed, and an empty table would hide that. (`load_tables` itself
    returns what it could read, with the counts; `prepare` calls this.)"""
    for f in info.get("files", []):
        if f.get("yielded_nothing"):
            raise DataError(f"yielded no rows: every record was skipped ({f['yielded_nothing']}); is it in "
                            "another format, encoding (--encoding) or separator?", source=f["path"])


def _item_reader(fmt: str, mapping: dict[str, str] | None) -> Callable[[dict], dict]:
    if fmt.startswith("amazon"):
        return _amazon_item
    if fmt == "yelp":
        return _yelp_item
    return _generic_item(mapping)


def _full(columns: _ReviewColumns, chunk_rows: int | None) -> bool:
    return chunk_rows is not None and len(columns) >= chunk_rows


def _load_records(paths: list[Path], fmt: str, meta: Path | None, mapping: dict[str, str] | None,
                  problems: Problems, chunk_rows: int | None, done: dict[str, Any],
                  encoding: str = AUTO) -> Iterator[pl.DataFrame]:
    """Every format but peter and recbole: review files, then item files. Yields the interactions
    in chunks (one per file when `chunk_rows` is None), then fills `done` with items and info."""
    files, items = [], {}
    source_row = 0
    roles = _roles(paths, fmt, meta)
    if not any(role == "reviews" for _, role in roles):
        meta_names = "meta_*" if fmt.startswith("amazon") else "*business*"
        raise DataError(f"no review file among {', '.join(str(p) for p in paths)} "
                        f"(metadata files are recognised by name: {meta_names})")
    for path, role in roles:
        if role != "reviews":
            continue
        fields = _review_fields(fmt, path, mapping)
        columns = _ReviewColumns(fields)
        read = rows = 0
        facts: dict[str, Any] = {}
        mark = problems.mark()
        for line, record in _review_records(fmt, path, problems, encoding, facts):
            columns.add(record, str(path), line, problems, source_row)
            read += 1
            source_row += 1
            if _full(columns, chunk_rows):
                rows += len(columns)
                yield columns.take()
        rows += len(columns)
        yield columns.take()  # even when empty: its columns still join the table
        files.append({**_file_info(path, role), "records": read, "rows": rows, **facts,
                      **_yield_facts(read, rows, problems, mark)})
    for path, role in roles:
        if role == "items":
            facts, mark = {}, problems.mark()
            read, kept, dups = _collect_items(_item_records(fmt, _existing(path), problems, encoding, facts),
                                              _item_reader(fmt, mapping), str(path), problems, items)
            files.append({**_file_info(path, role), "records": read, "rows": kept, "duplicate_items": dups,
                          **facts, **_yield_facts(read, kept, problems, mark)})
    done.update(items=_items_frame(items) if items else None, users=None, info={"files": files})


def _recbole_paths(paths: list[Path], meta: Path | None) -> dict[str, list[Path]]:
    """`.inter`, `.item`, `.user` files from the paths given, a folder, or next to the `.inter` file."""
    found: dict[str, list[Path]] = {"inter": [], "item": [], "user": []}
    for path in [*paths, *([meta] if meta else [])]:
        candidates = sorted(path.iterdir()) if path.is_dir() else [path]
        for p in candidates:
            kind = p.name.split(".")[-2 if p.suffix == ".gz" else -1]
            if kind in found and p not in found[kind]:
                found[kind].append(p)
    for inter in list(found["inter"]):
        stem = inter.name[: inter.name.index(".inter")]
        for kind in ("item", "user"):
            sibling = inter.with_name(f"{stem}.{kind}")
            if sibling.exists() and sibling not in found[kind]:
                found[kind].append(sibling)
    if not found["inter"]:
        raise DataError(f"no RecBole .inter file among {', '.join(str(p) for p in paths)}")
    return found


def _load_recbole(paths: list[Path], meta: Path | None, mapping: dict[str, str] | None,
                  problems: Problems, chunk_rows: int | None, done: dict[str, Any],
                  encoding: str = AUTO) -> Iterator[pl.DataFrame]:
    found = _recbole_paths(paths, meta)
    files, items, users = [], {}, []
    source_row = 0
    for path in found["inter"]:
        decoder = _decoder(path, encoding, delimited=True)
        header = _recbole_header(path, decoder)
        columns = _ReviewColumns(_generic_fields(mapping, numbers_as_text=True, columns=list(header)))
        read = rows = 0
        mark = problems.mark()
        for line, record in _recbole_records(path, problems, decoder):
            columns.add(record, str(path), line, problems, source_row)
            read += 1
            source_row += 1
            if _full(columns, chunk_rows):
                rows += len(columns)
                yield columns.take()
        rows += len(columns)
        yield columns.take()
        files.append({**_file_info(path, "reviews"), "records": read, "rows": rows, **decoder.describe(),
                      **_yield_facts(read, rows, problems, mark)})
    for path in found["item"]:
        decoder, mark = _decoder(path, encoding, delimited=True), problems.mark()
        read, kept, dups = _collect_items(_recbole_records(path, problems, decoder), _recbole_item, str(path),
                                          problems, items)
        files.append({**_file_info(path, "items"), "records": read, "rows": kept, "duplicate_items": dups,
                      **decoder.describe(), **_yield_facts(read, kept, problems, mark)})
    for path in found["user"]:
        decoder = _decoder(path, encoding, delimited=True)
        header = _recbole_header(path, decoder)
        if "user_id" not in header:
            raise DataError(f"a .user file needs a user_id column; its header has {', '.join(header)}",
                            source=str(path), line=1)
        rows = [r for _, r in _recbole_records(path, problems, decoder) if r.get("user_id")]
        users.append(pl.DataFrame([
            _series(n, [_recbole_value(r[n], t) for r in rows], pl.Float64 if t == "float" else pl.Utf8)
            for n, t in header.items()]))
        files.append({**_file_info(path, "users"), "records": len(rows), "rows": len(rows)})
    done.update(items=_items_frame(items) if items else None,
                users=pl.concat(users, how="diagonal_relaxed").unique("user_id", keep="first", maintain_order=True)
                if users else None, info={"files": files})


def _recbole_header(path: Path, decoder: LineDecoder) -> dict[str, str]:
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


def _recbole_value(text: str, kind: str) -> Any:
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return None
    return text or None


def _load_peter(paths: list[Path], problems: Problems, index_dir: str, chunk_rows: int | None,
                done: dict[str, Any]) -> Iterator[pl.DataFrame]:
    """reviews.pickle is one pickle, so it is read whole; it is still handed on in chunks."""
    from feedbackgen.data.peter_format import read_peter

    if len(paths) != 1:
        raise DataError("the peter format takes one folder (holding reviews.pickle and index folders)")
    folder = paths[0].parent if paths[0].name == "reviews.pickle" else paths[0]
    frame, split = read_peter(folder, index_dir=index_dir, problems=problems)
    records = frame.height
    if split is not None:
        frame = frame.with_columns(split)
    files = [{**_file_info(folder / "reviews.pickle", "reviews"), "records": records, "rows": frame.height,
              "without_explanation": frame["explanation"].null_count()}]  # Sentires records with no sentence
    for p in sorted((folder / index_dir).glob("*.index")) if split is not None else []:
        files.append(_file_info(p, "split"))
    done.update(items=None, users=None,
                info={"files": files, "peter_index_dir": index_dir if split is not None else None})
    step = chunk_rows or max(frame.height, 1)
    for start in range(0, max(frame.height, 1), step):
        yield frame.slice(start, step)


def _with_canonical_columns(df: pl.DataFrame) -> pl.DataFrame:
    """Canonical columns first (missing ones as nulls), then source_row and the extras."""
    dtypes = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "text": pl.Utf8,
              "summary": pl.Utf8, "timestamp": pl.Int64, "source_row": pl.Int64}
    first = [pl.col(n) if n in df.columns else pl.lit(None, d).alias(n) for n, d in dtypes.items()]
    return df.select(*first, *[pl.col(n) for n in df.columns if n not in dtypes])


class TableStream:
    """The interactions of a source in chunks of at most `chunk_rows` rows, in source order, with
    canonical columns. The items, users and source info are set once every chunk has been read
    (items are kept only when some review names them, so they need the whole stream)."""

    def __init__(self, chunks: Iterator[pl.DataFrame], fmt: str, done: dict[str, Any]):
        self._chunks, self.fmt, self._done = chunks, fmt, done
        self.items: pl.DataFrame | None = None
        self.users: pl.DataFrame | None = None
        self.info: dict[str, Any] = {}
        self.finished = False

    def __iter__(self) -> Iterator[pl.DataFrame]:
        rows, reviewed = 0, []
        for chunk in self._chunks:
            chunk = _with_canonical_columns(chunk)
            rows += chunk.height
            reviewed.append(chunk["item_id"].unique())
            yield chunk
        self.items, self.users, info = self._done["items"], self._done["users"], self._done["info"]
        if self.items is not None:
            ids = pl.concat(reviewed).unique() if reviewed else pl.Series("item_id", [], pl.Utf8)
            before = len(self.items)
            self.items = self.items.filter(pl.col("item_id").is_in(ids))
            info["items_without_reviews"] = before - len(self.items)
        self.info = {"format": self.fmt, **info, "rows": rows,
                     "records": sum(f.get("records", 0) for f in info["files"]
                                    if f["role"] in ("reviews", "interactions"))}
        self.finished = True


def stream_tables(paths: list[Path] | list[str], fmt: str, *, meta: Path | str | None = None,
                  mapping: dict[str, str] | None = None, problems: Problems,
                  peter_index_dir: str = "1", chunk_rows: int | None = None, encoding: str = AUTO) -> TableStream:
    """`load_tables` one chunk at a time: memory holds one chunk of rows (plus the item metadata
    and the distinct item ids), whatever the size of the files. The arguments are checked now,
    the files are read as the stream is iterated."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no source files given")
    if chunk_rows is not None and chunk_rows < 1:
        raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
    paths = [_existing(Path(p)) for p in paths]
    meta = _existing(Path(meta)) if meta is not None else None
    if mapping and fmt not in ("csv", "jsonl", "parquet", "recbole", "lightgcn"):
        raise DataError(f"a column mapping applies to csv, jsonl, parquet, recbole and lightgcn (its --meta "
                        f"file), not {fmt}")
    if fmt in ("peter", "movielens") and meta is not None:
        raise DataError(f"the {fmt} format takes no --meta file"
                        + (" (titles and genres come from the release's own files)" if fmt == "movielens" else ""))
    try:
        encoding = check_encoding(encoding)
    except ValueError as e:
        raise DataError(str(e)) from None
    if encoding != AUTO and fmt in ("peter", "parquet"):
        raise DataError(f"--encoding applies to text files; {fmt} files carry their own")
    done: dict[str, Any] = {}
    if fmt == "peter":
        chunks = _load_peter(paths, problems, peter_index_dir, chunk_rows, done)
    elif fmt == "recbole":
        chunks = _load_recbole(paths, meta, mapping, problems, chunk_rows, done, encoding)
    elif fmt == "movielens":
        from feedbackgen.data.movielens import load_movielens

        chunks = load_movielens(paths, problems, chunk_rows, done)
    elif fmt == "lightgcn":
        from feedbackgen.data.lightgcn import load_lightgcn

        chunks = load_lightgcn(paths, meta, mapping, problems, chunk_rows, done)
    else:
        chunks = _load_records(paths, fmt, meta, mapping, problems, chunk_rows, done, encoding)
    return TableStream(chunks, fmt, done)


def load_tables(paths: list[Path] | list[str], fmt: str, *, meta: Path | str | None = None,
                mapping: dict[str, str] | None = None, problems: Problems,
                peter_index_dir: str = "1", encoding: str = AUTO) -> Loaded:
    """Like `load_source`, but also returns a users table (RecBole `.user` files), and for the
    peter format reads the split from `peter_index_dir` (a `split` column). `encoding`: see
    data/encoding.py (default: a BOM, else UTF-8, else for delimited text windows-1252)."""
    stream = stream_tables(paths, fmt, meta=meta, mapping=mapping, problems=problems,
                           peter_index_dir=peter_index_dir, encoding=encoding)
    frames = list(stream)
    return Loaded(pl.concat(frames, how="diagonal_relaxed"), stream.items, stream.users, stream.info)


def load_source(paths: list[Path] | list[str], fmt: str, *, meta: Path | str | None = None,
                mapping: dict[str, str] | None = None,
                problems: Problems) -> tuple[pl.DataFrame, pl.DataFrame | None, dict[str, Any]]:
    """Read `paths` in format `fmt` into (interactions, items or None, source info).

    `meta` is an item metadata file (Amazon `meta_*.json.gz`, Yelp `business.json`, RecBole `.item`,
    any CSV/JSON-lines file for lightgcn). `mapping` maps our column names to the source's for
    csv/jsonl/parquet/recbole, and to the `meta` file's for lightgcn; mapped names that are not
    ours (e.g. {"helpful": "helpful_votes"}) are kept as extra columns. `movielens` and `lightgcn`
    have no text (see `feedbackgen.data.movielens`, `feedbackgen.data.lightgcn`); lightgcn has
    no ratings either, and gives each row's split from its file.
    """
    loaded = load_tables(paths, fmt, meta=meta, mapping=mapping, problems=problems)
    return loaded.interactions, loaded.items, loaded.info
