"""Read public review formats into the canonical tables: the per-format tables and the load.

The layers, bottom up: `readers` (a file's records, one at a time, whatever its compression and
encoding), `fields` (a record's values checked and converted, where each format keeps them),
and this module (which files play which role in a format, and the tables built from them).
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

import dataclasses
import itertools
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data.encoding import AUTO, check_encoding
from feedbackgen.data.fields import (AMAZON2014, AMAZON2018, AMAZON2023, YELP, YELP_CSV, ReviewColumns,
                                     ReviewFields, amazon_item, check_review_mapping, column_series,
                                     describe_value, generic_fields, generic_item, recbole_item, recbole_value,
                                     yelp_item)
from feedbackgen.data.peter_format import read_peter
from feedbackgen.data.problems import Problems
from feedbackgen.data.readers import (csv_records, json_records, line_decoder, parquet_records, recbole_header,
                                      recbole_records)
from feedbackgen.errors import DataError
from feedbackgen.io import sha256_file

FORMATS = ("amazon2014", "amazon2018", "amazon2023", "yelp", "peter", "recbole", "movielens", "lightgcn", "csv",
           "jsonl", "parquet")
CANONICAL_ITEM_FIELDS = ("item_id", "title", "brand", "categories", "price", "description")
# A JSON-lines record leaves out the keys it has no value for, so a key is judged absent from a file
# only when none of this many records holds it (a key in 5% of records is missed 0.6% of the time).
SAMPLE_RECORDS = 100


@dataclass
class Loaded:
    interactions: pl.DataFrame
    items: pl.DataFrame | None
    users: pl.DataFrame | None
    info: dict[str, Any]


# -- item rows -------------------------------------------------------------------------------------

def collect_items(records: Iterator[tuple[int, dict]], to_item: Callable[[dict], dict], source: str,
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
                            f"expected a string id, got {describe_value(item_id)}")
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
    return pl.DataFrame([column_series(n, [r.get(n) for r in rows], dtypes.get(n, pl.Utf8)) for n in names])


# -- the formats -----------------------------------------------------------------------------------

def file_info(path: Path, role: str) -> dict[str, Any]:
    return {"name": path.name, "path": str(path), "role": role, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _existing(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.suffix.lower() == ".zip" and path.is_file() and zipfile.is_zipfile(path):
        members = [m for m in zipfile.ZipFile(path).namelist() if not m.endswith("/")]
        if len(members) != 1:  # one file is read as it lies (reviews.csv.zip); a release is a folder
            raise DataError(f"is a zip archive of {len(members)} files: unzip it first (unzip {path.name}) and "
                            f"give the folder or files it holds, e.g. {path.name[:-4]}/", source=str(path))
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
    return generic_fields(mapping, numbers_as_text=fmt == "csv")


def _review_records(fmt: str, path: Path, problems: Problems, encoding: str,
                    facts: dict[str, Any]) -> Iterator[tuple[int, dict]]:
    if fmt == "parquet":
        return parquet_records(path, problems)
    if fmt == "csv" or (fmt == "yelp" and ".csv" in path.suffixes):
        decoder = line_decoder(path, encoding, delimited=True)
        facts.update(decoder.describe())
        return csv_records(path, problems, decoder=decoder, facts=facts)
    decoder = line_decoder(path, encoding, delimited=False)
    facts.update(decoder.describe())
    return json_records(path, problems, decoder=decoder)



RATING_LIKE = re.compile(r"rating|stars?$|^overall$|score$|^grade$", re.IGNORECASE)


def _check_map(fmt: str, path: Path, fields: ReviewFields, mapping: dict[str, str] | None,
               encoding: str) -> ReviewFields:
    """Check the field names against the keys of the file's first records (`check_review_mapping`),
    so that a wrong `--map` fails before any record is read rather than as every record skipped.
    The sample is read by a reader of its own: its problems are the main read's to report, in order.
    CSV and Parquet records all have the header's keys; JSON lines are judged on a full sample only.
    Returns `fields`, with no rating field when the sample has none (`--map rating=...` not given):
    such a file is an interaction log, prepared as implicit feedback."""
    sample = _review_records(fmt, path, Problems(), encoding, {})
    try:
        head = list(itertools.islice(sample, SAMPLE_RECORDS))
    finally:
        getattr(sample, "close", lambda: None)()
    names = list(dict.fromkeys(key for _, record in head for key in record))
    if (names and fields.rating not in names and "rating" not in (mapping or {})
            and not any(RATING_LIKE.search(n) for n in names)):
        # no rating in the sample: an interaction log (clicks, plays, purchases), read as implicit feedback;
        # a column that looks like one (stars, score) is refused below, asking for --map rating=COLUMN
        fields = dataclasses.replace(fields, rating=None)
    if fmt == "jsonl" and len(head) == SAMPLE_RECORDS:
        check_review_mapping(fields, mapping, names, what="key",
                             where=f"any of the first {SAMPLE_RECORDS} records of {path}")
    elif fmt in ("csv", "parquet") and names:
        check_review_mapping(fields, mapping, names, where=f"the {'header' if fmt == 'csv' else 'schema'} of {path}")
    return fields


def _item_records(fmt: str, path: Path, problems: Problems, encoding: str,
                  facts: dict[str, Any]) -> Iterator[tuple[int, dict]]:
    if fmt == "parquet":
        return parquet_records(path, problems)
    decoder = line_decoder(path, encoding, delimited=fmt == "csv")
    facts.update(decoder.describe())
    if fmt == "csv":
        return csv_records(path, problems, decoder=decoder, facts=facts)
    return json_records(path, problems, literals=fmt.startswith("amazon"), decoder=decoder)


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
        return amazon_item
    if fmt == "yelp":
        return yelp_item
    return generic_item(mapping)


def _chunks(records: Iterator[tuple[int, dict]], columns: ReviewColumns, path: Path, problems: Problems,
            first_row: int, chunk_rows: int | None) -> Generator[pl.DataFrame, None, tuple[int, int]]:
    """Parse `records` into `columns`, yielding a table every `chunk_rows` rows and a last one, even
    when empty (its columns still join the table); returns (records read, rows kept). Source rows
    are numbered from `first_row` on."""
    read = rows = 0
    for line, record in records:
        columns.add(record, str(path), line, problems, first_row + read)
        read += 1
        if chunk_rows is not None and len(columns) >= chunk_rows:
            rows += len(columns)
            yield columns.take()
    rows += len(columns)
    yield columns.take()
    return read, rows


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
        facts: dict[str, Any] = {}
        mark = problems.mark()
        if fmt in ("csv", "jsonl", "parquet"):
            fields = _check_map(fmt, path, fields, mapping, encoding)
            if fields.rating is None:
                facts["feedback"] = "implicit"
        columns = ReviewColumns(fields)
        read, rows = yield from _chunks(_review_records(fmt, path, problems, encoding, facts), columns, path,
                                        problems, source_row, chunk_rows)
        source_row += read
        files.append({**file_info(path, role), "records": read, "rows": rows, **facts,
                      **_yield_facts(read, rows, problems, mark)})
    for path, role in roles:
        if role == "items":
            facts, mark = {}, problems.mark()
            read, kept, dups = collect_items(_item_records(fmt, _existing(path), problems, encoding, facts),
                                              _item_reader(fmt, mapping), str(path), problems, items)
            files.append({**file_info(path, role), "records": read, "rows": kept, "duplicate_items": dups,
                          **facts, **_yield_facts(read, kept, problems, mark)})
    implicit = any(f.get("feedback") == "implicit" for f in files)
    done.update(items=_items_frame(items) if items else None, users=None,
                info={"files": files, **({"feedback": "implicit"} if implicit else {})})


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


def _theirs(mapping: dict[str, str] | None, names) -> dict[str, str]:
    """ours -> the file's name for each of `names`: `--map` applies to every atomic file of a
    RecBole dataset (`item_id=movie_id` names the id column of the .inter and the .item alike)."""
    renamed = {theirs: ours for ours, theirs in (mapping or {}).items() if theirs in names}
    return {renamed.get(name, name): name for name in names}


def _renamed(records: Iterator[tuple[int, dict]], mapping: dict[str, str] | None) -> Iterator[tuple[int, dict]]:
    for line, record in records:
        yield line, ({ours: record[theirs] for ours, theirs in _theirs(mapping, record).items()} if mapping
                     else record)


def _load_recbole(paths: list[Path], meta: Path | None, mapping: dict[str, str] | None,
                  problems: Problems, chunk_rows: int | None, done: dict[str, Any],
                  encoding: str = AUTO) -> Iterator[pl.DataFrame]:
    found = _recbole_paths(paths, meta)
    files, items, users = [], {}, []
    source_row = 0
    for path in found["inter"]:
        decoder = line_decoder(path, encoding, delimited=True)
        header = recbole_header(path, decoder)
        fields = generic_fields(mapping, numbers_as_text=True, columns=list(header))
        if any(header):  # an empty file has no header to check (and no records)
            check_review_mapping(fields, mapping, list(header), where=f"the header of {path}")
        columns = ReviewColumns(fields)
        mark = problems.mark()
        read, rows = yield from _chunks(recbole_records(path, problems, decoder), columns, path, problems,
                                        source_row, chunk_rows)
        source_row += read
        files.append({**file_info(path, "reviews"), "records": read, "rows": rows, **decoder.describe(),
                      **_yield_facts(read, rows, problems, mark)})
    for path in found["item"]:
        decoder, mark = line_decoder(path, encoding, delimited=True), problems.mark()
        read, kept, dups = collect_items(_renamed(recbole_records(path, problems, decoder), mapping),
                                          recbole_item, str(path), problems, items)
        files.append({**file_info(path, "items"), "records": read, "rows": kept, "duplicate_items": dups,
                      **decoder.describe(), **_yield_facts(read, kept, problems, mark)})
    for path in found["user"]:
        decoder = line_decoder(path, encoding, delimited=True)
        given = recbole_header(path, decoder)
        header = {ours: given[theirs] for ours, theirs in _theirs(mapping, given).items()}
        if "user_id" not in header:
            raise DataError(f"a .user file needs a user_id column (or --map user_id=COLUMN); its header has "
                            f"{', '.join(given)}", source=str(path), line=1)
        rows = [r for _, r in _renamed(recbole_records(path, problems, decoder), mapping) if r.get("user_id")]
        users.append(pl.DataFrame([
            column_series(n, [recbole_value(r[n], t) for r in rows], pl.Float64 if t == "float" else pl.Utf8)
            for n, t in header.items()]))
        files.append({**file_info(path, "users"), "records": len(rows), "rows": len(rows)})
    done.update(items=_items_frame(items) if items else None,
                users=pl.concat(users, how="diagonal_relaxed").unique("user_id", keep="first", maintain_order=True)
                if users else None, info={"files": files})


def _load_peter(paths: list[Path], problems: Problems, index_dir: str, chunk_rows: int | None,
                done: dict[str, Any]) -> Iterator[pl.DataFrame]:
    """reviews.pickle is one pickle, so it is read whole; it is still handed on in chunks."""

    if len(paths) != 1:
        raise DataError("the peter format takes one folder (holding reviews.pickle and index folders)")
    folder = paths[0].parent if paths[0].name == "reviews.pickle" else paths[0]
    frame, split = read_peter(folder, index_dir=index_dir, problems=problems)
    records = frame.height
    if split is not None:
        frame = frame.with_columns(split)
    files = [{**file_info(folder / "reviews.pickle", "reviews"), "records": records, "rows": frame.height,
              "without_explanation": frame["explanation"].null_count()}]  # Sentires records with no sentence
    for p in sorted((folder / index_dir).glob("*.index")) if split is not None else []:
        files.append(file_info(p, "split"))
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
    encoding = check_encoding(encoding)  # ConfigError naming the codecs it takes
    if encoding != AUTO and fmt in ("peter", "parquet"):
        raise DataError(f"--encoding applies to text files; {fmt} files carry their own")
    done: dict[str, Any] = {}
    if fmt == "peter":
        chunks = _load_peter(paths, problems, peter_index_dir, chunk_rows, done)
    elif fmt == "recbole":
        chunks = _load_recbole(paths, meta, mapping, problems, chunk_rows, done, encoding)
    elif fmt == "movielens":
        from feedbackgen.data.movielens import load_movielens  # it imports this module

        chunks = load_movielens(paths, problems, chunk_rows, done)
    elif fmt == "lightgcn":
        from feedbackgen.data.lightgcn import load_lightgcn  # it imports this module

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
