"""The PETER / PEPLER input format: `reviews.pickle` plus `index_dir/N/{train,validation,test}.index`.

reviews.pickle is a list of plain dicts
    {'user': str, 'item': str, 'rating': float, 'template': (feature, adj, text, sentiment)}
or, as the Sentires toolkit writes it (the PETER README sends its users there to build one),
    {'user', 'item', 'rating', 'text': review, 'sentence': [(feature, adj, sentence, sentiment), ...]}
A Sentires record's explanation is its first `sentence` tuple (the order Sentires found them in:
deterministic, and what PETER's own pickles keep when a review has one); its `text` is the review.
A Sentires record with no `sentence` (no aspect found) is kept, with no explanation, and counted
(`without_template` in the source info). Each index file one line of space-separated positions in that list. We read it with an
unpickler that refuses every class, so a pickle can only ever produce lists, dicts, tuples,
strings and numbers — a crafted file cannot run code. We write it (`export_peter`) so the
reference implementations can run on our prepared datasets.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError, RecordProblem
from feedbackgen.io import atomic_write, atomic_write_text
from feedbackgen.types import is_finite

INDEX_FILES = {"train": "train.index", "valid": "validation.index", "test": "test.index"}
PICKLE_PROTOCOL = 4  # what the reference code's Python versions read


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings and numbers only: no class or function is ever looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: this file may hold only plain lists, dicts, tuples, "
            "strings and numbers")


def load_plain_pickle(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return PlainDataUnpickler(f).load()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except Exception as e:  # safe to catch broadly: nothing from the file was executed
        raise DataError(f"not a plain-data pickle ({type(e).__name__}: {e})", source=str(path)) from None


def _short(value: Any) -> str:
    try:
        return repr(value)[:40]
    except ValueError:  # repr refuses an int of more than 4300 digits
        return f"an int of {value.bit_length()} bits"


def _unicode(value: Any) -> bool:
    """False for a string holding a lone surrogate (a pickle can carry one; no column can hold it)."""
    try:
        value.encode("utf-8") if isinstance(value, str) else None
    except UnicodeEncodeError:
        return False
    return True


def _row(record: Any) -> dict[str, Any]:
    """One PETER record as our columns; raises `RecordProblem` naming the field."""
    if not isinstance(record, dict):
        raise RecordProblem(None, f"expected a dict, got {type(record).__name__}")
    sentires = "template" not in record and ("sentence" in record or "text" in record)
    for key in ("user", "item", "rating", "text" if sentires else "template"):
        if key not in record:
            raise RecordProblem(key, "missing")
    user, item, rating = (record[k] for k in ("user", "item", "rating"))
    if sentires:
        review, sentences = record["text"], record.get("sentence") or []
        if not isinstance(review, str) or not _unicode(review):
            raise RecordProblem("text", "expected a string of valid Unicode text")
        if not isinstance(sentences, (list, tuple)):
            raise RecordProblem("sentence", "expected a list of (feature, adj, sentence, sentiment) tuples")
        template = sentences[0] if sentences else None
    else:
        template = record["template"]
    for key, value in (("user", user), ("item", item)):
        if (not isinstance(value, (str, int)) or isinstance(value, bool) or value == ""
                or (isinstance(value, int) and not -2**63 <= value < 2**63) or not _unicode(value)):
            raise RecordProblem(key, f"expected a non-empty string id, got {_short(value)}")
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not is_finite(rating):
        raise RecordProblem("rating", f"expected a finite number, got {_short(rating)}")
    ids = {"user_id": str(user), "item_id": str(item), "rating": float(rating)}
    if template is None:
        return {**ids, "text": review, "aspect": None, "explanation": None, "sentiment": None}
    name = "sentence" if sentires else "template"
    if not isinstance(template, (tuple, list)) or len(template) != 4:
        raise RecordProblem(name, "expected (feature, adj, text, sentiment)")
    feature, _adj, text, sentiment = template
    if not isinstance(feature, str) or not isinstance(text, str):
        raise RecordProblem(name, "feature and text must be strings")
    if not (_unicode(feature) and _unicode(text)):
        raise RecordProblem(name, "feature and text must be valid Unicode text (no lone surrogates)")
    if isinstance(sentiment, bool) or not isinstance(sentiment, (int, float)) or sentiment not in (-1, 0, 1):
        raise RecordProblem(name, f"sentiment must be -1, 0 or 1, got {_short(sentiment)}")
    return {**ids, "text": review if sentires else text, "aspect": feature or None, "explanation": text,
            "sentiment": int(sentiment)}


def read_index(folder: Path, n_rows: int) -> pl.Series | None:
    """The split of each of `n_rows` rows from `folder/*.index`; None when the folder is absent."""
    if not folder.is_dir():
        return None
    split: list[str | None] = [None] * n_rows
    for name, file_name in INDEX_FILES.items():
        path = folder / file_name
        if not path.exists():
            raise DataError(f"missing {file_name} (expected {', '.join(INDEX_FILES.values())})", source=str(folder))
        for token in path.read_text(errors="replace").split():  # a bad byte shows as U+FFFD: not a row index
            try:
                i = int(token)
            except ValueError:
                raise DataError(f"not a row index: {token!r}", source=str(path)) from None
            if not 0 <= i < n_rows:
                raise DataError(f"row index {i} out of range (the pickle has {n_rows} rows)", source=str(path))
            if split[i] is not None:
                raise DataError(f"row {i} is in both {split[i]} and {name}", source=str(path))
            split[i] = name
    return pl.Series("split", split, dtype=pl.Utf8)


def read_peter(folder: str | Path, index_dir: str = "1",
               problems: Problems | None = None) -> tuple[pl.DataFrame, pl.Series | None]:
    """Read a PETER data folder: (interactions, split per row from `folder/index_dir`, or None).

    Columns: user_id, item_id, rating, text (= the explanation), aspect, explanation, sentiment,
    source_row (the position in reviews.pickle). Malformed records go to `problems` (strict when
    not given).
    """
    folder = Path(folder)
    problems = problems if problems is not None else Problems(strict=True)
    path = folder / "reviews.pickle"
    data = load_plain_pickle(path)
    if not isinstance(data, list):
        raise DataError(f"expected a list of reviews, got {type(data).__name__}", source=str(path))
    rows, kept = [], []
    for i, record in enumerate(data):
        try:
            rows.append(_row(record))
            kept.append(i)
        except RecordProblem as bad:
            problems.report(str(path), i, bad.field, f"{bad.reason} (record {i})")
    columns = ("user_id", "item_id", "rating", "text", "aspect", "explanation", "sentiment")
    dtypes = {"rating": pl.Float64, "sentiment": pl.Int8}
    frame = pl.DataFrame([pl.Series(c, [r[c] for r in rows], dtype=dtypes.get(c, pl.Utf8)) for c in columns])
    frame = frame.with_columns(pl.Series("source_row", kept, dtype=pl.Int64))
    split = read_index(folder / index_dir, len(data))
    if split is not None:
        split = split.gather(kept)
    return frame, split


def export_peter(dataset, out_dir: str | Path, index_dir: str = "1") -> Path:
    """Write `dataset` (prepared, split, with explanations) as a PETER data folder.

    Only rows with an explanation are written, in the dataset's order; the index files give each
    row's position in reviews.pickle. Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    df = dataset.interactions
    if not dataset.has_explanations:
        raise DataError("this dataset has no explanations; prepare it with explanation extraction on")
    if df["split"].null_count() == df.height:
        raise DataError("this dataset has no split; prepare it with --split")
    df = df.filter(pl.col("explanation").is_not_null() & pl.col("split").is_not_null())
    records = [
        {"user": u, "item": i, "rating": float(r), "template": (a or "", "", e, int(s or 0))}
        for u, i, r, a, e, s in zip(df["user_id"], df["item_id"], df["rating"], df["aspect"],
                                    df["explanation"], df["sentiment"])
    ]
    atomic_write(out_dir / "reviews.pickle",
                 lambda p: p.write_bytes(pickle.dumps(records, protocol=PICKLE_PROTOCOL)))
    positions = df.with_row_index("position").select("position", "split")
    for name, file_name in INDEX_FILES.items():
        index = positions.filter(pl.col("split") == name)["position"].to_list()
        atomic_write_text(out_dir / index_dir / file_name, " ".join(map(str, index)))
    return out_dir
