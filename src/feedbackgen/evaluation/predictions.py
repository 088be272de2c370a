"""The one reader of PRED.jsonl files: every command that reads predictions goes through here.

A prediction row is one JSON object a line with at least `user_id`, `item_id`, `rating` (a finite
number, or null for a text-only model), `text` (empty for a rating-only model) and `model`;
optionally `target` ("explanation" | "review"), `aspect` (a string), `decoding` and `meta`
(objects; `meta.answer` one of `feedbackgen.types.ANSWER_KINDS`, `meta.provenance` one of
`feedbackgen.types.PROVENANCE`: whether the text was written or copied). Blank lines are skipped. A bad
line stops the read with a `DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.errors import DataError
from feedbackgen.types import ANSWER_KINDS, PROVENANCE

REQUIRED_FIELDS = ("user_id", "item_id", "rating", "text", "model")
TARGETS = ("explanation", "review")
SCHEMA = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "text": pl.Utf8, "model": pl.Utf8,
          "target": pl.Utf8, "aspect": pl.Utf8, "decoding": pl.Utf8, "answer": pl.Utf8, "provenance": pl.Utf8, "file": pl.Utf8}


def _field_error(path: Path, line: int, field: str, message: str) -> DataError:
    return DataError(message, source=str(path), line=line, field=field)


def _as_id(value: Any, path: Path, line: int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise _field_error(path, line, field, f"expected a non-empty string (or integer), got {value!r}")
    return str(value)


def _optional(obj: dict, key: str, kind: type, what: str, path: Path, line: int) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise _field_error(path, line, key, f"expected {what} or null, got {value!r}")
    return value


def parse_prediction(obj: Any, path: Path, line: int) -> dict[str, Any]:
    """One checked row (the columns of `SCHEMA`); `DataError` naming file, line and field if bad."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", source=str(path), line=line)
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise _field_error(path, line, name, "missing field (each row needs " + ", ".join(REQUIRED_FIELDS) + ")")
    rating = obj["rating"]
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))
                               or not math.isfinite(rating)):
        raise _field_error(path, line, "rating", f"expected a finite number or null, got {rating!r}")
    if not isinstance(obj["text"], str):
        raise _field_error(path, line, "text", f"expected a string (empty for no text), got {obj['text']!r}")
    if not isinstance(obj["model"], str) or not obj["model"]:
        raise _field_error(path, line, "model", f"expected a non-empty string, got {obj['model']!r}")
    target = obj.get("target")
    if target is not None and target not in TARGETS:
        raise _field_error(path, line, "target", f"expected one of {', '.join(TARGETS)} or null, got {target!r}")
    aspect = _optional(obj, "aspect", str, "a string", path, line)
    decoding = _optional(obj, "decoding", dict, "an object", path, line)
    meta = _optional(obj, "meta", dict, "an object", path, line)
    answer = (meta or {}).get("answer")  # LLM generators: how the JSON answer was obtained
    if answer is not None and answer not in ANSWER_KINDS:
        raise _field_error(path, line, "meta.answer", f"expected one of {', '.join(ANSWER_KINDS)}, got {answer!r}")
    provenance = (meta or {}).get("provenance")  # generated, copied, fallback or none
    if provenance is not None and provenance not in PROVENANCE:
        raise _field_error(path, line, "meta.provenance",
                           f"expected one of {', '.join(PROVENANCE)}, got {provenance!r}")
    return {
        "user_id": _as_id(obj["user_id"], path, line, "user_id"),
        "item_id": _as_id(obj["item_id"], path, line, "item_id"),
        "rating": None if rating is None else float(rating),
        "text": obj["text"],
        "model": obj["model"],
        "target": target,
        "aspect": aspect,
        "decoding": json.dumps(decoding, sort_keys=True) if decoding is not None else None,
        "answer": answer,
        "provenance": provenance,
        "file": str(path),
    }


def read_predictions(path: str | Path) -> pl.DataFrame:
    """One row per prediction line, columns `SCHEMA`, in file order (repeated pairs kept)."""
    path = Path(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"not valid JSON ({e.msg} at column {e.colno})",
                                    source=str(path), line=number) from None
                rows.append(parse_prediction(obj, path, number))
    except FileNotFoundError:
        raise DataError("prediction file does not exist", source=str(path)) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=str(path)) from None
    if not rows:
        raise DataError("holds no predictions", source=str(path))
    return pl.DataFrame(rows, schema=SCHEMA)


def predictions_by_pair(path: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """`read_predictions` rows keyed by (user_id, item_id); the first row of a repeated pair wins."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in read_predictions(path).iter_rows(named=True):
        rows.setdefault((row["user_id"], row["item_id"]), row)
    return rows
