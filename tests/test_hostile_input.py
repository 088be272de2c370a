"""Hostile and broken input (issue 7, part 4): property-based tests for every loader and the
request types.

The property, everywhere: a bad input gives a clear error (`DataError` naming the file, and for a
record its line and field) or a counted skip (`Problems`), never an uncaught crash
(RecursionError, UnicodeDecodeError, OverflowError, KeyError, a polars/pyarrow exception, ...) or a
hang. Valid records mixed with bad ones are all kept, in order: records in == kept + skipped.

Reproducible: the default profile is derandomized and writes no example database. Set
FEEDBACKGEN_HYPOTHESIS_PROFILE=thorough for a longer, randomized search.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import os
import pickle
import signal
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feedbackgen.data.loaders import load_tables
from feedbackgen.data.peter_format import load_plain_pickle
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError
from feedbackgen.batch.jobs import read_requests
from feedbackgen.types import Feedback, FeedbackRequest

_COMMON = dict(database=None, suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile("feedbackgen-ci", max_examples=20, derandomize=True,
                          deadline=timedelta(seconds=10), **_COMMON)
settings.register_profile("feedbackgen-thorough", max_examples=400, derandomize=False,
                          deadline=timedelta(seconds=30), **_COMMON)
PROFILE = settings.get_profile("feedbackgen-" + os.environ.get("FEEDBACKGEN_HYPOTHESIS_PROFILE", "ci"))
FEW = settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 2))

WALL_S = 60  # a wall bound around every load: a hang fails the test instead of stalling CI
BIG = 10 * 1024 * 1024  # "huge line": 10 MB on one line


# -- harness ---------------------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the wall bound; a BaseException so no `except Exception` in the code can swallow it."""


@contextlib.contextmanager
def wall_bound(seconds: float = WALL_S) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hostile-") as d:
        yield Path(d)


def assert_clear(err: DataError, *paths: Path) -> None:
    """A DataError names one of the files (or folders) it is about."""
    text = str(err)
    assert text.strip(), "empty error message"
    names = {p.name for p in paths} | {str(p) for p in paths}
    assert err.source is not None or any(n in text for n in names), f"error names no file: {text}"
    if err.source is not None:  # that file, or one found beside it (RecBole .item/.user, PETER index files)
        assert any(n in err.source for n in names | {str(p.parent) for p in paths}), (err.source, names)


class AllProblems(Problems):
    """Problems that also remembers every report (`examples` keeps only the first 20)."""

    def __init__(self, strict: bool = False):
        super().__init__(strict=strict)
        self.all: list[dict] = []

    def report(self, source, line, field_name, reason):
        super().report(source, line, field_name, reason)
        self.all.append({"source": source, "line": line, "field": field_name, "reason": reason})


def attempt(paths: list[Path], fmt: str, *, strict: bool = False, **kw):
    """load_tables under a wall bound: (loaded or None, problems, DataError or None)."""
    problems = AllProblems(strict=strict)
    meta = kw.get("meta")
    try:
        with wall_bound():
            loaded = load_tables(paths, fmt, problems=problems, **kw)
    except DataError as e:
        assert_clear(e, *paths, *([Path(meta)] if meta else []))
        return None, problems, e
    assert loaded.interactions.schema["rating"] == pl.Float64
    assert loaded.interactions.schema["timestamp"] == pl.Int64
    assert loaded.interactions["rating"].is_finite().all()
    assert loaded.interactions["user_id"].null_count() == 0 and loaded.interactions["item_id"].null_count() == 0
    assert problems.count == sum(problems.by_reason.values())
    return loaded, problems, None


def file_info(loaded, path: Path) -> dict:
    (info,) = [f for f in loaded.info["files"] if f["path"] == str(path)]
    return info


def problems_at(problems: AllProblems, path: Path) -> int:
    return sum(1 for e in problems.all if e["source"] == str(path))


def nonblank_lines(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.strip())


def check_strict_agrees(paths, fmt, problems: Problems, loaded, **kw) -> None:
    """Strict mode fails on exactly the first problem the lenient run reported, with file/line/field."""
    strict_loaded, _, err = attempt(paths, fmt, strict=True, **kw)
    if problems.count == 0:
        assert err is None and strict_loaded.interactions.equals(loaded.interactions)
        return
    first = problems.examples[0]
    assert err is not None
    assert (err.source, err.line, err.field) == (first["source"], first["line"], first["field"])
    if first["line"] is not None:
        assert f"{Path(first['source']).name}, line {first['line']}" in str(err)


# -- strategies ------------------------------------------------------------------------------------

SAFE_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs",))  # any valid Unicode scalar
TEXT = st.text(SAFE_CHARS, max_size=30)
ID = st.text(SAFE_CHARS, min_size=1, max_size=12)
FLAT_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\t\r\n\x00")
FLAT_ID = st.text(FLAT_CHARS, min_size=1, max_size=12).filter(lambda s: s.strip())
RATING = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 10),
                   st.integers(-2**80, 2**80), st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0, 4.5, -1.0, 0.0]))
DEEP = 10_000  # nesting levels of the "deeply nested JSON"


def deep_list(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


def deep_object(levels: int = DEEP) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def nested(levels: int) -> Any:
    value: Any = ["leaf"]
    for _ in range(levels):
        value = [value]
    return value


# raw lines that are not one JSON object: always reported as a record-level problem (field None)
JUNK_LINES = [b"{not json", b"[1, 2]", b"null", b"42", b'"a string"', b"{\"a\": 1", b"\x00\x01\x02 binary",
              b'{"reviewerID": "\xff\xfe latin-1 \xe9"}', "{'python': 'dict'}".encode(),
              deep_list().encode(), deep_object().encode(), b"\xef\xbb\xbf\xef\xbb\xbf{}",
              ("{" + '"k": 1, ' * 3 + '"k"').encode()]


@dataclass(frozen=True)
class JsonFormat:
    """A JSON-lines review format: its file names and where each canonical field lives."""

    fmt: str
    reviews: str
    user: str
    item: str
    rating: str
    text: str
    ts: str
    ts_kind: str  # "s", "ms", "date", "auto"
    meta: str
    meta_id: str
    mapping: dict | None = None
    extras: tuple[str, ...] = ()  # source fields read by lenient converters (never drop a record)


GENERIC_MAPPING = {"user_id": "who", "item_id": "what", "rating": "stars", "text": "body", "timestamp": "when",
                   "votes": "votes"}
JSON_FORMATS = [
    JsonFormat("amazon2014", "reviews_Hostile_5.json", "reviewerID", "asin", "overall", "reviewText",
               "unixReviewTime", "s", "meta_Hostile.json", "asin", extras=("helpful",)),
    JsonFormat("amazon2018", "Hostile_5.json", "reviewerID", "asin", "overall", "reviewText", "unixReviewTime",
               "s", "meta_Hostile.json", "asin", extras=("vote", "verified")),
    JsonFormat("amazon2023", "Hostile.jsonl", "user_id", "parent_asin", "rating", "text", "timestamp", "ms",
               "meta_Hostile.jsonl", "parent_asin", extras=("helpful_vote", "verified_purchase", "asin")),
    JsonFormat("yelp", "yelp_academic_dataset_review.json", "user_id", "business_id", "stars", "text", "date",
               "date", "yelp_academic_dataset_business.json", "business_id", extras=("useful", "funny", "review_id")),
    JsonFormat("jsonl", "reviews.jsonl", "who", "what", "stars", "body", "when", "auto", "items.jsonl", "what",
               mapping=GENERIC_MAPPING, extras=("votes",)),
]
JSON_IDS = [f.fmt for f in JSON_FORMATS]

DATES = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31))
EXTRA_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), TEXT,
                         st.sampled_from(["1e400", "inf", "-inf", "nan", "1,234", [1e400, 5], [10**300, 1],
                                          ["x", "y"], {"a": [1]}, [1, 2], nested(50)]))


def valid_timestamp(kind: str) -> st.SearchStrategy[tuple[Any, int | None]]:
    """(value as written, unix seconds the loader must give)."""
    utc = timezone.utc
    if kind == "s":
        values = st.integers(0, 2**34).map(lambda v: (v, v))
    elif kind == "ms":
        values = st.integers(0, 2**44).map(lambda v: (v, int(v / 1000)))
    elif kind == "date":
        values = DATES.map(lambda d: (d.isoformat(sep=" "), int(d.replace(tzinfo=utc).timestamp())))
    else:
        values = st.one_of(st.integers(-2**31, 2**36).map(lambda v: (v, v)),
                           DATES.map(lambda d: (d.isoformat(), int(d.replace(tzinfo=utc).timestamp()))))
    return st.one_of(st.just((None, None)), values)


BAD_RATINGS = [None, "", "five", "4.5", True, False, [4], {"v": 4}, math.nan, math.inf, -math.inf, 10**400]
BAD_IDS = [None, "", 1.5, True, ["a"], {"a": "b"}, math.nan]
BAD_TEXTS = [5, 1.5, True, ["x"], {"a": 1}]
BAD_TIMESTAMPS = ["soon", True, [1], {"t": 1}, 1e300, -1e300, 10**300, 10**400, math.nan, math.inf]


@st.composite
def json_review_lines(draw, f: JsonFormat):
    """A mixed file: [(raw line, expected row or None, expected problem field or None)]."""
    out = []
    for _ in range(draw(st.integers(0, 12))):
        uid, iid = draw(st.one_of(ID, st.integers(-2**63, 2**63))), draw(st.one_of(ID, st.integers(0, 10**6)))
        rating = draw(RATING)
        text = draw(st.one_of(st.none(), TEXT))
        ts, seconds = draw(valid_timestamp(f.ts_kind))
        record = {f.user: uid, f.item: iid, f.rating: rating}
        if text is not None:
            record[f.text] = text
        if ts is not None:
            record[f.ts] = ts
        for extra in f.extras:
            if draw(st.booleans()):
                record[extra] = draw(EXTRA_VALUES)
        expected = {"user_id": str(uid), "item_id": str(iid), "rating": float(rating), "text": text,
                    "timestamp": seconds}
        problem = None
        how = draw(st.sampled_from(["valid", "valid", "valid", "drop", "rating", "id", "text", "ts", "junk",
                                    "surrogate", "blank"]))
        if how == "drop":
            key = draw(st.sampled_from([f.user, f.item, f.rating]))
            del record[key]
            problem = key
        elif how == "rating":
            record[f.rating], problem = draw(st.sampled_from(BAD_RATINGS)), f.rating
        elif how == "id":
            key = draw(st.sampled_from([f.user, f.item]))
            record[key], problem = draw(st.sampled_from(BAD_IDS)), key
        elif how == "text":
            record[f.text], problem = draw(st.sampled_from(BAD_TEXTS + [nested(30)])), f.text
        elif how == "ts":
            record[f.ts], problem = draw(st.sampled_from(BAD_TIMESTAMPS)), f.ts
        elif how == "surrogate":  # "\ud800" escapes decode to a lone surrogate: not valid Unicode text
            record[draw(st.sampled_from([f.user, f.text]))] = "bad \ud800 text"
            problem = "*"
        if how == "junk":
            out.append((draw(st.sampled_from(JUNK_LINES)) + b"\n", None, None))
        elif how == "blank":
            out.append((draw(st.sampled_from([b"\n", b"   \n", b"\t\r\n"])), None, "blank"))
        else:
            line = json.dumps(record).encode() + draw(st.sampled_from([b"\n", b"\r\n"]))
            out.append((line, expected if problem is None else None, problem))
    return out


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


# -- JSON-lines formats: mixed valid and bad records -----------------------------------------------

@pytest.mark.parametrize("f", JSON_FORMATS, ids=JSON_IDS)
@settings(PROFILE)
@given(data=st.data())
def test_json_formats_keep_every_valid_record_and_count_every_bad_one(f, data):
    lines = data.draw(json_review_lines(f))
    gz = data.draw(st.booleans())
    bom = data.draw(st.booleans()) and bool(lines) and lines[0][2] != "blank"
    raw = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line for line, _, _ in lines)
    with workdir() as d:
        path = write(d / (f.reviews + (".gz" if gz else "")), raw)
        kw = {"mapping": f.mapping} if f.mapping else {}
        loaded, problems, err = attempt([path], f.fmt, **kw)
        assert err is None, err
        df = loaded.interactions
        expected = [e for _, e, _ in lines if e is not None]
        got = df.select("user_id", "item_id", "rating", "text", "timestamp").to_dicts()
        assert got == expected
        assert df["source_row"].to_list() == sorted(df["source_row"].to_list())
        bad = [(n, field) for n, (line, e, field) in enumerate(lines, 1) if e is None and field != "blank"]
        # records in == kept + skipped, and each skip names its line and field
        assert nonblank_lines(raw) == df.height + problems.count == len(expected) + len(bad)
        info = file_info(loaded, path)
        assert info["rows"] == df.height
        assert [e["line"] for e in problems.all] == [n for n, _ in bad]
        for (n, field), reported in zip(bad, problems.all):
            assert reported["source"] == str(path) and reported["reason"]
            assert field == "*" or reported["field"] == field, (n, field, reported)
        check_strict_agrees([path], f.fmt, problems, loaded, **kw)


@st.composite
def meta_lines(draw, f: JsonFormat):
    out = []
    for _ in range(draw(st.integers(0, 10))):
        item = {f.meta_id: draw(st.one_of(ID, st.sampled_from(["dup", "dup"])))}
        for key in ("title", "brand", "store", "description", "category", "categories", "price", "name",
                    "main_cat", "city"):
            if draw(st.booleans()):
                item[key] = draw(st.one_of(EXTRA_VALUES, st.sampled_from(
                    ["$1,250.00", "$5 - $9", "['a', 'b']", "[" * 300 + "]" * 300, "['\\ud800']", "A, B",
                     10**400, nested(400), [["Music", "Pop </span>"]], "(" + "-" * 100_000 + "1)"])))
        how = draw(st.sampled_from(["ok", "ok", "ok", "no_id", "bad_id", "junk", "literal", "deep"]))
        if how == "no_id":
            del item[f.meta_id]
        elif how == "bad_id":
            item[f.meta_id] = draw(st.sampled_from(BAD_IDS))
        if how == "junk":
            line = draw(st.sampled_from(JUNK_LINES))
        elif how == "literal":  # the 2014 meta files are Python literals
            line = repr(item).encode()
        elif how == "deep":
            depth = draw(st.integers(100, 990))
            line = ('{"%s": "deep", "categories": %s"leaf"%s}' % (f.meta_id, "[" * depth, "]" * depth)).encode()
        else:
            line = json.dumps(item).encode()
        out.append(line + b"\n")
    return out


@pytest.mark.parametrize("f", JSON_FORMATS, ids=JSON_IDS)
@settings(FEW)
@given(data=st.data())
def test_metadata_files_count_every_record(f, data):
    lines = data.draw(meta_lines(f))
    raw = b"".join(lines)
    with workdir() as d:
        reviews = write(d / f.reviews, json.dumps({f.user: "u", f.item: "dup", f.rating: 5}).encode() + b"\n")
        meta = write(d / f.meta, raw)
        kw = {"mapping": f.mapping} if f.mapping else {}
        loaded, problems, err = attempt([reviews], f.fmt, meta=meta, **kw)
        assert err is None, err
        info = file_info(loaded, meta)
        assert nonblank_lines(raw) == info["rows"] + info["duplicate_items"] + problems_at(problems, meta)
        if loaded.items is not None:
            assert set(loaded.items["item_id"].to_list()) <= {"dup"}


# -- every format: random bytes, wrong encodings, truncation ---------------------------------------

def _valid_bytes(kind: str, n: int = 5) -> bytes:
    """A small valid file of each kind (n records), to mutate."""
    if kind == "json":
        return b"".join(json.dumps({"reviewerID": f"u{i}", "asin": f"i{i}", "overall": 4.0, "reviewText": "gr\u00e9at",
                                    "unixReviewTime": 1_300_000_000 + i}).encode() + b"\n" for i in range(n))
    if kind == "csv":
        return ("user_id,item_id,rating,text\r\n" + "".join(f"u{i},i{i},{i % 5 + 1},\"a, b \u00e9\"\r\n"
                                                             for i in range(n))).encode()
    if kind == "inter":
        return ("user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n"
                + "".join(f"u{i}\ti{i}\t{i % 5 + 1}.0\t{1.3e9 + i}\tgr\u00e9at\n" for i in range(n))).encode()
    raise ValueError(kind)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, wrong encodings, BOMs, truncation, flipped bytes, NULs."""
    text = valid.decode("utf-8")
    fixed = [b"", b"\n\n", b"\xef\xbb\xbf", text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32"),
             text.encode("latin-1", "replace"), b"\xef\xbb\xbf" + valid, b"\xff\xfe" + valid,
             valid.replace(b"\n", b"\r"),
             valid.replace(b"\n", b"\x00\n"), valid[: len(valid) // 2], b"\x1f\x8b\x08\x00" + valid]

    @st.composite
    def flipped(draw):
        b = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)

    return st.one_of(st.binary(max_size=512), st.sampled_from(fixed), flipped(),
                     st.integers(0, len(valid)).map(lambda n: valid[:n]))


# (format, file name, kind of file to mutate, extra load_tables arguments)
ANY_FILE_CASES = [
    ("amazon2014", "reviews_X_5.json", "json", {}),
    ("amazon2014", "reviews_X_5.json.gz", "json", {}),
    ("amazon2018", "X_5.json.gz", "json", {}),
    ("amazon2023", "X.jsonl", "json", {}),
    ("yelp", "yelp_academic_dataset_review.json", "json", {}),
    ("yelp", "yelp.csv", "csv", {}),
    ("yelp", "yelp.csv.zip", "csv", {}),
    ("jsonl", "r.jsonl.gz", "json", {"mapping": {"user_id": "reviewerID", "item_id": "asin", "rating": "overall"}}),
    ("csv", "r.csv", "csv", {}),
    ("csv", "r.csv.gz", "csv", {}),
    ("recbole", "x.inter", "inter", {}),
    ("recbole", "x.inter.gz", "inter", {}),
]


def _encode_file(name: str, data: bytes) -> bytes:
    """`data` as stored under `name`: gzip or zip by extension."""
    if name.endswith(".gz"):
        return gzip.compress(data, mtime=0)
    if name.endswith(".zip"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name[:-4], data)
        return buf.getvalue()
    return data


@pytest.mark.parametrize("fmt, name, kind, kw", ANY_FILE_CASES, ids=[c[1] + "-" + c[0] for c in ANY_FILE_CASES])
@settings(PROFILE)
@given(data=st.data())
def test_any_bytes_give_a_clear_error_or_counted_skips(fmt, name, kind, kw, data):
    content = data.draw(mutations(_valid_bytes(kind)), label="content")
    encoded = _encode_file(name, content)
    cut = data.draw(st.one_of(st.none(), st.integers(0, max(0, len(encoded) - 1))), label="truncate at")
    truncated = cut is not None and name.endswith((".gz", ".zip"))
    if truncated:
        encoded = encoded[:cut]
    with workdir() as d:
        path = d / name
        path.write_bytes(encoded)
        loaded, problems, err = attempt([path], fmt, **kw)
        if err is not None:
            return
        info = file_info(loaded, path)
        assert info["rows"] == loaded.interactions.height <= info["records"]
        if not name.endswith((".gz", ".zip")) and kind == "json":
            # a UTF-8 byte-order mark is not text: a file holding only one holds no record
            assert nonblank_lines(content.removeprefix(b"\xef\xbb\xbf")) == info["rows"] + problems.count
        if truncated and (cut > 0 or name.endswith(".zip")):
            assert problems.count >= 1, "a truncated file read without a word"
        check_strict_agrees([path], fmt, problems, loaded, **kw)


MATCHING = [c for c in ANY_FILE_CASES if c[0] in ("amazon2014", "amazon2018", "jsonl", "csv", "recbole")]
PLAIN = [c for c in MATCHING if not c[1].endswith((".gz", ".zip"))]
GZ = [c for c in MATCHING if c[1].endswith(".gz")]


@pytest.mark.parametrize("fmt, name, kind, kw", PLAIN, ids=[c[1] + "-" + c[0] for c in PLAIN])
def test_utf8_bom_loses_nothing(fmt, name, kind, kw):
    with workdir() as d:
        path = write(d / name, b"\xef\xbb\xbf" + _valid_bytes(kind))
        loaded, problems, err = attempt([path], fmt, **kw)
        assert err is None and problems.count == 0, (err, problems.examples)
        assert loaded.interactions.height == 5


@pytest.mark.parametrize("fmt, name, kind, kw", GZ, ids=[c[1] + "-" + c[0] for c in GZ])
def test_truncated_gzip_keeps_the_rows_before_the_break(fmt, name, kind, kw):
    packed = gzip.compress(_valid_bytes(kind, 1000), mtime=0)
    with workdir() as d:
        path = d / name
        path.write_bytes(packed[: len(packed) // 2])
        loaded, problems, err = attempt([path], fmt, **kw)
        assert err is None, err
        assert 0 < loaded.interactions.height < 1000 and problems.count == 1
        assert "truncated" in problems.examples[0]["reason"] and problems.examples[0]["source"] == str(path)


EMPTY_CASES = [*((c[0], c[1], c[3]) for c in ANY_FILE_CASES), ("amazon2018", "meta_X.json", {}),
               ("parquet", "r.parquet", {}), ("peter", "reviews.pickle", {})]


@pytest.mark.parametrize("fmt, name, kw", EMPTY_CASES, ids=[c[1] + "-" + c[0] for c in EMPTY_CASES])
def test_empty_files(fmt, name, kw):
    with workdir() as d:
        path = d / name
        path.write_bytes(b"")
        loaded, problems, err = attempt([path if fmt != "peter" else d], fmt, **kw)
        if fmt in ("parquet", "peter") or name.startswith("meta_"):
            assert err is not None  # not a Parquet file / not a pickle / no review file among the paths
        elif name.endswith(".zip"):
            assert err is None and problems.count == 1 and loaded.interactions.height == 0
        else:
            assert err is None and problems.count == 0 and loaded.interactions.height == 0, (err, problems.examples)


# -- huge lines ------------------------------------------------------------------------------------

@pytest.mark.parametrize("f", JSON_FORMATS, ids=JSON_IDS)
def test_huge_lines_are_kept_or_counted_quickly(f):
    text = "x" * BIG
    good = json.dumps({f.user: "u", f.item: "i", f.rating: 4, f.text: text}).encode()
    garbage = b"{" + b"9" * BIG
    literal = b"{'" + b"a" * BIG + b"': 1}"
    with workdir() as d:
        path = write(d / f.reviews, b"\n".join([good, garbage, literal, good]) + b"\n")
        meta = write(d / f.meta, b"\n".join([literal, b"{" + b"[" * BIG, good]) + b"\n")
        kw = {"mapping": f.mapping} if f.mapping else {}
        loaded, problems, err = attempt([path], f.fmt, meta=meta, **kw)
        assert err is None, err
        assert loaded.interactions.height == 2 and loaded.interactions["text"].str.len_chars().to_list() == [BIG] * 2
        assert [(e["source"], e["line"]) for e in problems.examples] == [(str(path), 2), (str(path), 3),
                                                                          (str(meta), 1), (str(meta), 2)]


def test_huge_csv_and_recbole_lines():
    with workdir() as d:
        big = "y" * BIG
        csv_path = d / "r.csv"
        csv_path.write_text(f"user_id,item_id,rating,text\nu,i,4,{big}\nu,i,{big},t\n\"{big}\n")
        loaded, problems, err = attempt([csv_path], "csv")
        assert err is None and loaded.interactions.height == 1 and problems.count == 2, (err, problems.examples)
        inter = d / "x.inter"
        inter.write_text(f"user_id:token\titem_id:token\trating:float\treview:token_seq\nu\ti\t4\t{big}\n"
                         f"u\ti\t{big}\tt\n{big}\n")
        loaded, problems, err = attempt([inter], "recbole")
        assert err is None and loaded.interactions.height == 1 and problems.count == 2, (err, problems.examples)


# -- CSV (with a field map) and the flat yelp.csv ---------------------------------------------------

CSV_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)


@st.composite
def csv_rows(draw, yelp: bool):
    """(header, [(cells, expected row or None)])."""
    header = (["business_id", "date", "review_id", "stars", "text", "type", "user_id", "cool", "useful", "funny"]
              if yelp else ["who", "what", "score", "body", "when", "votes"])
    user, item, rating, text, ts = (("user_id", "business_id", "stars", "text", "date") if yelp else
                                    ("who", "what", "score", "body", "when"))
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        r = draw(RATING)
        seconds = None
        if yelp:
            stamp = draw(st.one_of(st.none(), DATES))
            when = "" if stamp is None else stamp.isoformat(sep=" ")
            if stamp is not None:
                seconds = int(stamp.replace(tzinfo=timezone.utc).timestamp())
        else:
            when_value = draw(st.one_of(st.none(), st.integers(-2**31, 2**36)))
            when, seconds = ("", None) if when_value is None else (str(when_value), when_value)
        cells = {user: draw(CSV_TEXT.filter(bool)), item: draw(CSV_TEXT.filter(bool)), rating: repr(float(r)),
                 text: draw(CSV_TEXT), ts: when}
        for extra in set(header) - set(cells):
            cells[extra] = draw(st.one_of(CSV_TEXT, st.sampled_from(["1e400", "inf", "nan", "-3", "1,000", "True"])))
        expected = {"user_id": cells[user], "item_id": cells[item], "rating": float(r), "text": cells[text],
                    "timestamp": seconds}
        how = draw(st.sampled_from(["ok", "ok", "ok", "rating", "id", "ts", "short", "long"]))
        if how == "rating":
            cells[rating] = draw(st.sampled_from(["", "five", "nan", "inf", "-inf", "1e400", "4,5", "[4]"]))
        elif how == "id":
            cells[draw(st.sampled_from([user, item]))] = ""
        elif how == "ts":
            cells[ts] = draw(st.sampled_from(["soon", "1e300", "-1e300", "1e400", "2020-13-45", "inf", "nan"]))
        values = [cells[h] for h in header]
        if how == "short":
            values = values[: header.index(rating)]
        elif how == "long":
            values = values + ["surplus"]
        rows.append((values, expected if how == "ok" else None))
    return header, rows


@pytest.mark.parametrize("yelp", [False, True], ids=["csv", "yelp.csv"])
@settings(PROFILE)
@given(data=st.data())
def test_csv_keeps_every_valid_row_and_counts_every_bad_one(yelp, data):
    header, rows = data.draw(csv_rows(yelp))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for values, _ in rows:
        writer.writerow(values)
    with workdir() as d:
        path = write(d / ("yelp.csv" if yelp else "r.csv"), buf.getvalue().encode())
        kw = {} if yelp else {"mapping": {"user_id": "who", "item_id": "what", "rating": "score", "text": "body",
                                          "timestamp": "when", "votes": "votes"}}
        loaded, problems, err = attempt([path], "yelp" if yelp else "csv", **kw)
        assert err is None, err
        expected = [e for _, e in rows if e is not None]
        got = loaded.interactions.select("user_id", "item_id", "rating", "text", "timestamp").to_dicts()
        assert got == expected
        assert len(rows) == loaded.interactions.height + problems.count
        check_strict_agrees([path], "yelp" if yelp else "csv", problems, loaded, **kw)


# -- RecBole atomic files --------------------------------------------------------------------------

@settings(PROFILE)
@given(data=st.data())
def test_recbole_keeps_every_valid_row_and_counts_every_bad_one(data):
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n"
    lines, expected = [header.encode()], []
    for _ in range(data.draw(st.integers(0, 12))):
        uid, iid, r = data.draw(FLAT_ID), data.draw(FLAT_ID), data.draw(RATING)
        stamp = data.draw(st.integers(0, 2**36))
        review = data.draw(st.text(FLAT_CHARS, max_size=20))
        cells = [uid, iid, repr(float(r)), str(stamp), review]
        how = data.draw(st.sampled_from(["ok", "ok", "ok", "rating", "id", "cells", "latin1", "surrogate_bytes"]))
        if how == "rating":
            cells[2] = data.draw(st.sampled_from(["", "x", "nan", "inf", "1e400", "True"]))
        elif how == "id":
            cells[data.draw(st.integers(0, 1))] = ""
        elif how == "cells":
            cells = cells[: data.draw(st.integers(1, 4))] if data.draw(st.booleans()) else cells + ["more"]
        line = "\t".join(cells).encode() + b"\n"
        if how == "latin1":
            line = "\t".join(cells[:4] + ["caf\u00e9"]).encode("latin-1", "replace") + b"\n"
        elif how == "surrogate_bytes":
            line = "\t".join(cells[:4]).encode() + b"\t\xed\xa0\x80\n"
        lines.append(line)
        if how == "ok":
            expected.append({"user_id": uid, "item_id": iid, "rating": float(r), "timestamp": stamp,
                             "text": review or None})
    with workdir() as d:
        path = write(d / "x.inter", b"".join(lines))
        (d / "x.item").write_bytes(data.draw(mutations(b"item_id:token\ttitle:token_seq\tprice:float\ni0\tt\t1.5\n")))
        (d / "x.user").write_bytes(data.draw(mutations(b"user_id:token\tage:float\nu0\t33\n")))
        # the Latin-1 lines are damage in a UTF-8 file here; `auto` would read a file with no UTF-8
        # text at all as windows-1252 (data/encoding.py), so the encoding is declared
        loaded, problems, err = attempt([path], "recbole", encoding="utf-8")
        if err is not None:  # only a broken .item/.user header may stop the run
            assert err.source is not None and not err.source.endswith(".inter"), err
            return
        got = loaded.interactions.select("user_id", "item_id", "rating", "timestamp", "text").to_dicts()
        for g, e in zip(got, expected):
            g["text"] = g["text"] or None
        assert got == expected
        info = file_info(loaded, path)
        assert len(lines) - 1 == info["rows"] + problems_at(problems, path)


# -- Parquet ---------------------------------------------------------------------------------------

@st.composite
def parquet_table(draw):
    import pyarrow as pa

    n = draw(st.integers(0, 8))
    kinds = {
        "user_id": draw(st.sampled_from(["str", "int", "binary", "float", "list"])),
        "item_id": draw(st.sampled_from(["str", "int"])),
        "rating": draw(st.sampled_from(["float", "int", "str", "bool", "list", "null"])),
        "text": draw(st.sampled_from(["str", "int", "null", "struct"])),
        "timestamp": draw(st.sampled_from(["int", "float", "str", "datetime", "null"])),
    }

    def column(kind):
        if kind == "str":
            return pa.array(draw(st.lists(st.one_of(st.none(), TEXT), min_size=n, max_size=n)), pa.string())
        if kind == "int":
            return pa.array(draw(st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
                                          min_size=n, max_size=n)), pa.int64())
        if kind == "float":
            return pa.array(draw(st.lists(st.one_of(st.none(), st.floats()), min_size=n, max_size=n)), pa.float64())
        if kind == "bool":
            return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), pa.bool_())
        if kind == "binary":
            return pa.array(draw(st.lists(st.binary(max_size=5), min_size=n, max_size=n)), pa.binary())
        if kind == "list":
            return pa.array(draw(st.lists(st.lists(st.integers(0, 5), max_size=2), min_size=n, max_size=n)))
        if kind == "struct":
            return pa.array([{"a": i} for i in range(n)])
        if kind == "datetime":
            return pa.array(draw(st.lists(DATES, min_size=n, max_size=n)), pa.timestamp("us"))
        return pa.nulls(n)

    return pa.table({name: column(kind) for name, kind in kinds.items()})


@settings(FEW)
@given(table=parquet_table(), data=st.data())
def test_parquet_wrong_types_and_corruption(table, data):
    import pyarrow.parquet as pq

    with workdir() as d:
        path = d / "r.parquet"
        pq.write_table(table, path, compression=data.draw(st.sampled_from(["none", "snappy", "zstd"])))
        loaded, problems, err = attempt([path], "parquet")
        assert err is None, err
        assert table.num_rows == loaded.interactions.height + problems.count
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 6))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        path.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
        attempt([path], "parquet")  # a clear error or counted skips; never a crash


# -- the PETER pickle ------------------------------------------------------------------------------

def peter_record(draw) -> tuple[Any, dict | None]:
    user, item = draw(st.one_of(ID, st.integers(0, 10**6))), draw(ID)
    rating = draw(RATING)
    feature, text, sentiment = draw(TEXT), draw(TEXT), draw(st.sampled_from([-1, 0, 1, 1.0]))
    record = {"user": user, "item": item, "rating": rating, "template": (feature, "", text, sentiment)}
    expected = {"user_id": str(user), "item_id": item, "rating": float(rating), "text": text}
    how = draw(st.sampled_from(["ok", "ok", "ok", "drop", "rating", "id", "template", "not_dict", "surrogate"]))
    if how == "drop":
        del record[draw(st.sampled_from(["user", "item", "rating", "template"]))]
    elif how == "rating":
        record["rating"] = draw(st.sampled_from(BAD_RATINGS + ["5", 10**5000]))
    elif how == "id":
        record[draw(st.sampled_from(["user", "item"]))] = draw(st.sampled_from(BAD_IDS + [10**5000, b"bytes"]))
    elif how == "template":
        record["template"] = draw(st.sampled_from([None, "text", (1, 2), ("a", "", 5, 1), ("a", "", "t", 2),
                                                   ("a", "", "t", True), ("a", "", "t", math.nan),
                                                   ("a", "", "t", 10**5000), [None] * 4]))
    elif how == "surrogate":
        record["template"] = (feature, "", "bad \udc80 text", sentiment)
    elif how == "not_dict":
        record = draw(st.sampled_from([None, 5, "text", [1, 2], (1,), nested(300)]))
    return record, expected if how == "ok" else None


@settings(PROFILE)
@given(data=st.data())
def test_peter_keeps_every_valid_record_and_counts_every_bad_one(data):
    pairs = [peter_record(data.draw) for _ in range(data.draw(st.integers(0, 10)))]
    with workdir() as d:
        folder = d / "peter"
        folder.mkdir()
        (folder / "reviews.pickle").write_bytes(pickle.dumps([r for r, _ in pairs], protocol=4))
        if data.draw(st.booleans()):
            (folder / "1").mkdir()
            for name in ("train.index", "validation.index", "test.index"):
                (folder / "1" / name).write_bytes(data.draw(st.one_of(
                    st.binary(max_size=20), st.sampled_from([b"0", b"\xff\xfe1", b"9" * 5000, b"-1", b"0 0"]))))
        loaded, problems, err = attempt([folder], "peter")
        if err is not None:  # only the index files can make a plain list unreadable
            assert "index" in str(err) or "row" in str(err), err
            return
        expected = [e for _, e in pairs if e is not None]
        got = loaded.interactions.select("user_id", "item_id", "rating", "text").to_dicts()
        assert got == expected
        assert len(pairs) == loaded.interactions.height + problems.count
        assert [e["line"] for e in problems.examples] == [i for i, (_, e) in enumerate(pairs) if e is None]


@settings(PROFILE)
@given(content=st.one_of(st.binary(max_size=300), st.sampled_from([
    b"", pickle.dumps({"not": "a list"}), pickle.dumps([1] * 3)[:-3],
    b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",  # a list nested 100,000 deep
    b"\x80\x02]" + b"]" * 100_000 + b"a" * 100_000 + b".",  # ... inside the list of reviews
    b"\x80\x04\x8e" + b"\xff" * 8, b"\x80\x04\x8e" + (2**40).to_bytes(8, "little"),
    b"cos\nsystem\n(S'touch /tmp/hostile-pwned'\ntR.", pickle.dumps(10**5000)])))
def test_any_pickle_bytes_give_a_clear_error(content):
    with workdir() as d:
        folder = d / "peter"
        folder.mkdir()
        (folder / "reviews.pickle").write_bytes(content)
        loaded, problems, err = attempt([folder], "peter")
        assert err is not None or loaded.interactions.height + problems.count == len(load_plain_pickle(
            folder / "reviews.pickle"))
    assert not Path("/tmp/hostile-pwned").exists()


# -- requests: JSONL / CSV / Parquet, FeedbackRequest, Feedback ------------------------------------

@st.composite
def request_lines(draw):
    out = []
    for _ in range(draw(st.integers(0, 12))):
        uid, iid = draw(st.one_of(ID, st.integers(-2**63, 2**63))), draw(ID)
        aspect = draw(st.one_of(st.none(), TEXT))
        rating = draw(st.one_of(st.none(), RATING, RATING.map(repr)))
        record = {"user_id": uid, "item_id": iid, "aspect": aspect, "rating": rating}
        expected = FeedbackRequest(str(uid), iid, aspect or None,
                                   float(rating) if isinstance(rating, str) else rating)
        how = draw(st.sampled_from(["ok", "ok", "ok", "drop", "rating", "id", "aspect", "junk", "surrogate"]))
        if how == "drop":
            del record[draw(st.sampled_from(["user_id", "item_id"]))]
        elif how == "rating":
            record["rating"] = draw(st.sampled_from([math.nan, math.inf, "nan", "inf", "1e999", "five", True,
                                                     [4], {"r": 1}, 10**400]))
        elif how == "id":
            record[draw(st.sampled_from(["user_id", "item_id"]))] = draw(st.sampled_from(BAD_IDS))
        elif how == "aspect":
            record["aspect"] = draw(st.sampled_from([5, ["a"], {"a": 1}, True]))
        elif how == "surrogate":
            record["user_id"] = "\ud800"
        line = draw(st.sampled_from(JUNK_LINES)) if how == "junk" else json.dumps(record).encode()
        out.append((line + b"\n", expected if how == "ok" else None))
    return out


@settings(PROFILE)
@given(lines=request_lines(), bom=st.booleans())
def test_request_jsonl_keeps_every_valid_request_and_counts_every_bad_one(lines, bom):
    raw = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line for line, _ in lines)
    with workdir() as d:
        path = write(d / "requests.jsonl", raw)
        problems = Problems()
        try:
            with wall_bound():
                got = read_requests(path, problems)
        except DataError as e:  # only a file that is not UTF-8 text at all
            assert_clear(e, path)
            assert any(b"\xff" in line or b"\xe9" in line for line, _ in lines), e
            return
        assert got == [e for _, e in lines if e is not None]
        assert len(lines) == len(got) + problems.count
        assert [e["line"] for e in problems.examples] == [n for n, (_, e) in enumerate(lines, 1) if e is None][:20]
        if problems.count:
            with pytest.raises(DataError) as err:
                read_requests(path)  # strict by default
            assert err.value.line == problems.examples[0]["line"] and err.value.source == str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".json"])
@settings(FEW)
@given(content=st.one_of(mutations(b"user_id,item_id,rating\r\nu1,i1,4\r\nu2,i2,\r\n\"u3\",i3,2.5\r\n"),
                         st.sampled_from([deep_list().encode(), b"PAR1\x00\x00PAR1"])))
def test_any_request_file_gives_a_clear_error_or_counted_skips(suffix, content):
    with workdir() as d:
        path = write(d / ("requests" + suffix), content)
        problems = Problems()
        try:
            with wall_bound():
                got = read_requests(path, problems)
        except DataError as e:
            assert_clear(e, path)
            return
        assert all(isinstance(r, FeedbackRequest) for r in got)
        if suffix in (".jsonl", ".json"):
            # lines end at "\n" only; a line that is not UTF-8 costs its own request, no more
            assert nonblank_lines(content.removeprefix(b"\xef\xbb\xbf")) == len(got) + problems.count


def test_request_file_with_a_huge_line():
    with workdir() as d:
        path = write(d / "requests.jsonl", json.dumps({"user_id": "u", "item_id": "i", "aspect": "a" * BIG}).encode()
                     + b"\n" + b"[" * BIG + b"\n" + b'{"user_id": "u", "item_id": ' + b"9" * BIG + b"}\n")
        problems = Problems()
        with wall_bound():
            got = read_requests(path, problems)
        assert [len(r.aspect) for r in got] == [BIG]
        assert [e["line"] for e in problems.examples] == [2, 3]  # nested too deeply; an int of 10M digits


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_request_file_with_bom_loses_nothing(suffix):
    body = ('{"user_id": "u1", "item_id": "i1"}\n{"user_id": "u2", "item_id": "i2", "rating": 3}\n'
            if suffix == ".jsonl" else "user_id,item_id,rating\nu1,i1,\nu2,i2,3\n")
    with workdir() as d:
        path = write(d / ("requests" + suffix), b"\xef\xbb\xbf" + body.encode())
        assert read_requests(path) == [FeedbackRequest("u1", "i1"), FeedbackRequest("u2", "i2", rating=3.0)]


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), TEXT),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=10)
REQUEST_DICTS = st.fixed_dictionaries({}, optional={
    "user_id": st.one_of(JSON_VALUES, ID), "item_id": st.one_of(JSON_VALUES, ID),
    "aspect": st.one_of(JSON_VALUES, TEXT), "rating": st.one_of(JSON_VALUES, RATING, st.just(10**400)),
    "extra": JSON_VALUES})


@settings(PROFILE)
@given(value=st.one_of(REQUEST_DICTS, JSON_VALUES))
@example(value={"user_id": "u", "item_id": "i", "rating": 10**400})
@example(value={"user_id": "\ud800", "item_id": "i"})
@example(value={"user_id": 10**30, "item_id": "i"})
def test_feedback_request_from_any_json_value_is_valid_or_a_value_error(value):
    try:
        request = FeedbackRequest.from_dict(value)
    except ValueError as e:
        assert "FeedbackRequest" in str(e) or "request" in str(e)
        return
    assert isinstance(request.user_id, str) and request.user_id and isinstance(request.item_id, str)
    assert request.aspect is None or isinstance(request.aspect, str)
    assert request.rating is None or math.isfinite(request.rating)
    json.dumps([request.user_id, request.item_id, request.aspect, request.rating]).encode("utf-8")
    (request.user_id + request.item_id + (request.aspect or "")).encode("utf-8")


@settings(FEW)
@given(user=ID, item=ID, rating=RATING, text=TEXT, aspects=st.lists(TEXT, max_size=3))
def test_feedback_to_dict_round_trips_through_json(user, item, rating, text, aspects):
    fb = Feedback(user, item, float(rating), text, aspects, model="m", meta={"k": [1, "x"]})
    assert json.loads(json.dumps(fb.to_dict())) == fb.to_dict()


# -- the HTTP request body -------------------------------------------------------------------------

BODIES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
    st.builds(lambda reqs, extra: json.dumps({"requests": reqs, **extra}).encode(),
              st.lists(REQUEST_DICTS, max_size=3),
              st.fixed_dictionaries({}, optional={"model": JSON_VALUES, "decoding": JSON_VALUES})),
    st.sampled_from([deep_list().encode(), deep_object().encode(), b'{"requests": ' + deep_list().encode() + b"}",
                     b'{"requests": [{"user_id": "\\ud800", "item_id": "i"}]}', "\ufeff{}".encode(),
                     '{"requests": [{"user_id": "u", "item_id": "i"}]}'.encode("utf-16"),
                     b'{"requests": [{"user_id": "u", "item_id": "i", "rating": 1e999}]}']))


@settings(PROFILE)
@given(body=BODIES)
def test_http_body_validation_gives_a_validation_error_or_valid_requests(body):
    from pydantic import ValidationError

    from feedbackgen.serve.api import FeedbackCall
    from feedbackgen.serve.recommend import RecommendCall

    try:
        with wall_bound(10):
            RecommendCall.model_validate_json(body)
    except ValidationError as e:
        assert e.errors()
    try:
        with wall_bound(10):
            call = FeedbackCall.model_validate_json(body)
    except ValidationError as e:
        assert e.errors() and all(err["loc"] is not None for err in e.errors())
        return
    for r in call.requests:  # what the endpoint builds next must not fail
        FeedbackRequest(r.user_id, r.item_id, r.aspect, r.rating)


@pytest.fixture(scope="module")
def http_client():
    from fastapi.testclient import TestClient

    from feedbackgen.serve import create_app

    with TestClient(create_app({}, config={"max_body_bytes": 1 << 20}), raise_server_exceptions=False) as client:
        yield client


def test_http_hostile_bodies_never_get_a_500(http_client):
    for body in [deep_list().encode(), deep_object().encode(), b"\xff\xfe\x00", "\ufeff{}".encode(),
                 b'{"requests": [{"user_id": "\\ud800", "item_id": "i"}]}', b"[" * 600_000,
                 b'{"requests": [{"user_id": "u", "item_id": "i", "rating": ' + b"9" * 5000 + b"}]}",
                 b"x" * (2 << 20)]:
        with wall_bound(20):
            r = http_client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 404, 413, 422), (body[:40], r.status_code, r.text)
    assert http_client.get("/healthz").status_code == 200
