"""Field parsing: a source record's values checked and converted into the canonical columns.

`ReviewFields` says where each canonical field lives in a format's records; the `parse_*`
functions turn one value into ours or raise `BadValue` (the field and why), which the loader
reports to `Problems` with the record's file and line and then skips the record. Lenient
converters (`scalar`, `int_or_none`, `string_list`, `price`, ...) read optional extras and
item metadata, where a bad value becomes a null rather than a lost record.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import polars as pl

from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError, RecordProblem
from feedbackgen.types import is_finite

CANONICAL_REVIEW_FIELDS = ("user_id", "item_id", "rating", "text", "summary", "timestamp")
# A metadata line that is not JSON may be a Python literal (the 2014 Amazon meta files are);
# ast.literal_eval parses those without executing anything, but is quadratic-ish on huge input.
MAX_LITERAL_CHARS = 1_000_000
MS_THRESHOLD = 100_000_000_000  # a "seconds" value this large (year 5138) must be milliseconds


# -- value parsing ---------------------------------------------------------------------------------

def describe_value(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _parse_id(value: Any, name: str) -> str:
    if value is None or value == "":
        raise RecordProblem(name, "missing")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RecordProblem(name, f"expected a string id, got {describe_value(value)}")


def _parse_rating(value: Any, name: str, numbers_as_text: bool) -> float:
    if value is None or value == "":
        raise RecordProblem(name, "missing")
    if isinstance(value, str) and numbers_as_text:
        try:
            value = float(value.strip())
        except ValueError:
            raise RecordProblem(name, f"expected a number, got {describe_value(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordProblem(name, f"expected a number, got {describe_value(value)}")
    if not is_finite(value):
        raise RecordProblem(name, f"not a finite number: {describe_value(value)}")
    return float(value)


def _parse_text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise RecordProblem(name, f"expected a string, got {describe_value(value)}")


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
                raise RecordProblem(name, f"expected a number, got {describe_value(value)}")
            value = float(value.strip())
        except ValueError:
            raise RecordProblem(name, f"not a {'date' if unit == 'date' else 'timestamp'}: {describe_value(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value):
        raise RecordProblem(name, f"expected a unix timestamp, got {describe_value(value)}")
    if unit == "ms" or (unit == "auto" and abs(value) >= MS_THRESHOLD):
        value = value / 1000
    if not -2**63 <= value < 2**63:  # the timestamp column is Int64
        raise RecordProblem(name, f"timestamp out of range: {describe_value(value)}")
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


def lone_surrogate(value: Any) -> bool:
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
        return value if "\\" in value and lone_surrogate(parsed) else parsed
    return value


def string_list(value: Any, sep: str | None = None) -> list[str]:
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
        return float(value) if is_finite(value) and value >= 0 else None
    if isinstance(value, str):
        text = value.strip().lstrip("$").strip().replace(",", "")
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) and number >= 0 else None
    return None


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
    rating: str | None  # None: an interaction log without ratings (implicit feedback)
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


def _weight(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if is_finite(number) else None


def generic_fields(mapping: dict[str, str] | None, *, numbers_as_text: bool,
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
    # a weight (plays, clicks, a count) is a number however the file writes it; other extras as they come
    extras = tuple(Extra(ours, theirs, _weight, pl.Float64) if ours == "weight" else Extra(ours, theirs)
                   for ours, theirs in mapping.items() if ours not in CANONICAL_REVIEW_FIELDS)
    return ReviewFields(mapping["user_id"], mapping["item_id"], mapping["rating"], mapping["text"],
                        mapping["summary"], mapping["timestamp"], time_unit="auto",
                        numbers_as_text=numbers_as_text, extras=extras)



def _did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_mapping(mapping: dict[str, str] | None, resolved: dict[str, str | None], names: list[str], *,
                  known: tuple[str, ...], required: tuple[str, ...], where: str, what: str = "column") -> None:
    """Check a `--map` (ours -> theirs) against a file's column `names` before its records are read.

    `resolved`: the name each of our `known` fields will be read under (mapped, defaulted, or None);
    `where`: the place the names come from, e.g. "the header of reviews.csv" or "the first 100
    records of r.jsonl" (`what` then "key"). Raises `DataError` for a mapped name that is not in
    `names` ("--map user_id=reviewr: column 'reviewr' is not in the header of ..."), for an unmapped
    field of ours that is missing while a mapped key that is not ours is close to it (a typo on our
    side: "--map user=reviewer: unknown field 'user'"), and for a `required` field that is missing.
    A mapped key that is not ours and close to no missing field is an extra column, by design.
    """
    mapping = mapping or {}
    listed = f"({what}s: {', '.join(names)})"
    for ours, theirs in mapping.items():
        if theirs not in names:
            raise DataError(f"--map {ours}={theirs}: {what} {theirs!r} is not in {where} {listed}"
                            + _did_you_mean(theirs, names))
    unknown = [ours for ours in mapping if ours not in known]
    for field in known:
        if resolved.get(field) in names:
            continue
        typo = next((ours for ours in unknown if difflib.get_close_matches(ours, [field], n=1)), None)
        if typo is not None:
            raise DataError(f"--map {typo}={mapping[typo]}: unknown field {typo!r}; known: {', '.join(known)} "
                            f"(any other name adds an extra column); did you mean {field!r}?")
        if field in required:
            raise DataError(f"no {field} {what} in {where} {listed}; name the {what} holding it with "
                            f"--map {field}={what.upper()}")


def check_review_mapping(fields: ReviewFields, mapping: dict[str, str] | None, names: list[str], *,
                          where: str, what: str = "column") -> None:
    """`check_mapping` for a review file read with `fields`: user_id, item_id and rating must be found."""
    resolved = {"user_id": fields.user_id, "item_id": fields.item_id, "rating": fields.rating, "text": fields.text,
                "summary": fields.summary, "timestamp": fields.timestamp}
    check_mapping(mapping, resolved, names, known=CANONICAL_REVIEW_FIELDS,
                  required=("user_id", "item_id", "rating") if fields.rating else ("user_id", "item_id"),
                  where=where, what=what)


class ReviewColumns:
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
                "rating": _parse_rating(record.get(f.rating), f.rating, f.numbers_as_text) if f.rating else None,
                "text": _parse_text(record.get(f.text), f.text) if f.text else None,
                "summary": _parse_text(record.get(f.summary), f.summary) if f.summary else None,
                "timestamp": (_parse_timestamp(record.get(f.timestamp), f.timestamp, f.time_unit,
                                               f.numbers_as_text) if f.timestamp else None),
            }
        except RecordProblem as bad:
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
            series.append(column_series(extra.name, self.columns[extra.name], extra.dtype))
        return pl.DataFrame(series)

    def take(self) -> pl.DataFrame:
        """The rows added so far as a frame; the lists start empty again (one chunk at a time)."""
        frame = self.frame()
        for values in self.columns.values():
            values.clear()
        return frame


def column_series(name: str, values: list, dtype: Any = None) -> pl.Series:
    """A column from Python values; mixed types (a CSV extra, a loose JSON field) become strings."""
    try:
        return pl.Series(name, values, dtype=dtype, strict=dtype is None)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):  # OverflowError: ints beyond Int64
        return pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.Utf8)


# -- item rows -------------------------------------------------------------------------------------

def amazon_item(r: dict) -> dict:
    """2014 (`categories`: list of lists), 2018 (`category`) and 2023 (`categories`, `store`) meta."""
    return {
        "item_id": r.get("parent_asin") or r.get("asin"),
        "title": _joined_text(r.get("title")),
        "brand": _joined_text(r.get("brand") if r.get("brand") else r.get("store")),
        "categories": string_list(r.get("category") if "category" in r else r.get("categories")),
        "price": _price(r.get("price")),
        "description": _joined_text(r.get("description")),
        "main_category": _joined_text(r.get("main_cat") or r.get("main_category")),
    }


def yelp_item(r: dict) -> dict:
    return {"item_id": r.get("business_id"), "title": _joined_text(r.get("name")), "brand": None,
            "categories": string_list(r.get("categories"), sep=","), "price": None, "description": None,
            "city": _joined_text(r.get("city")), "state": _joined_text(r.get("state"))}


def recbole_item(r: dict) -> dict:
    title = next((r[k] for k in ("title", "item_name", "name", "movie_title") if r.get(k)), None)
    cats = next((r[k] for k in ("categories", "category", "genre", "class") if r.get(k)), None)
    return {"item_id": r.get("item_id"), "title": title, "brand": r.get("brand") or None,
            "categories": string_list(cats, sep="," if cats and "," in cats else " "),
            "price": _price(r.get("price")), "description": r.get("description") or None}


def generic_item(mapping: dict[str, str] | None) -> Callable[[dict], dict]:
    item_key = (mapping or {}).get("item_id", "item_id")

    def item(r: dict) -> dict:
        return {"item_id": r.get(item_key), "title": _joined_text(r.get("title")),
                "brand": _joined_text(r.get("brand")), "categories": string_list(r.get("categories")),
                "price": _price(r.get("price")), "description": _joined_text(r.get("description"))}
    return item


def recbole_value(text: str, kind: str) -> Any:
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return None
    return text or None
