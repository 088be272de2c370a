"""The adjacency-list layout of LightGCN/NGCF-style research code and Agent4Rec: `--format lightgcn`.

    load_lightgcn(paths, meta=..., mapping=..., problems=..., chunk_rows=..., done=...) -> chunks

Layout (github.com/gusye1234/LightGCN-PyTorch `data/*/`, github.com/LehengTHU/Agent4Rec
`datasets/ml-1m/cf_data/`): one file per split, `train.txt`, `valid.txt` (or `val.txt`; optional)
and `test.txt`, each line `user_id item_id item_id ...` separated by white space, ids being
non-negative integers. A user may have a line with no items (nothing held out for them) or no line.
Given a folder, the files are found in it by these names; given files, their names say the split.

Tables:
- interactions: user_id, item_id (the integer ids as strings), split (from the file), source_row
  (position among the (user, item) pairs of train, valid, test in that order). `rating`,
  `timestamp` and `text` are null: the files only say that the user chose the item (implicit
  feedback). Rating models refuse such a dataset, choice models train on it, and `prepare`
  records it as `"feedback": "implicit"` in the manifest.
- items (with `meta`): one row per item of a CSV (`.csv`, `.tsv`) or JSON-lines file; `mapping`
  (ours=theirs, from `--map`) names its columns. Unmapped, `item_id` is read from a column of that
  name, title from title/name, categories from categories/category/genres/genre (split on "|" or
  ","), description from description/summary/plot/overview; every other column is kept under its
  own name (as numbers when every value is one). Agent4Rec's `movie_detail.csv`
  (movie_id,title,genres,rating,summary) needs `--map item_id=movie_id`; its `rating` column, the
  movie's mean rating over all of MovieLens (held-out ratings included), is kept as `rating`.

Id maps: LightGCN's own releases (amazon-book, gowalla, yelp2018) ship `user_list.txt` and
`item_list.txt` beside the split files, `org_id remap_id [freebase_id]` separated by spaces under
that header. When present they are used: every id is the original one (a user's reviewer id, a
book's ISBN, kept as text with its leading zeros), so lists and metadata in original ids match;
the manifest records each map. A remapped id missing from its map is a bad pair, reported.
An id column of the `--meta` file (`item_id`, or any column named `*id`) always stays text.

A bad line or id (an id that is not a non-negative integer, as a comma-separated file gives) is
reported with its file, line and field and skipped, costing only its own pairs (`Problems`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data.fields import check_mapping, string_list
from feedbackgen.data.loaders import collect_items, file_info
from feedbackgen.data.readers import csv_records, json_records, raw_lines
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError, FeedbackgenWarning

SPLIT_FILES = {"train.txt": "train", "valid.txt": "valid", "val.txt": "valid", "test.txt": "test"}
SPLIT_ORDER = ("train", "valid", "test")
ID_MAPS = {"user_id": "user_list.txt", "item_id": "item_list.txt"}
DEFAULT_CHUNK = 200_000
ITEM_FIELDS = {
    "title": ("title", "name", "movie_title", "item_name"),
    "categories": ("categories", "category", "genres", "genre"),
    "description": ("description", "summary", "plot", "overview"),
    "brand": ("brand",),
    "price": ("price",),
}


def split_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, split) in train, valid, test order. Raises `DataError` when train.txt is missing,
    or a file's name says no split."""
    if len(paths) == 1 and paths[0].is_dir():
        candidates = [paths[0] / name for name in SPLIT_FILES if (paths[0] / name).is_file()]
    else:
        candidates = list(paths)
    found: dict[str, Path] = {}
    for path in candidates:
        split = SPLIT_FILES.get(path.name)
        if split is None:
            raise DataError(f"not a LightGCN split file; expected {', '.join(SPLIT_FILES)} "
                            "(one line per user: user_id item_id item_id ...)", source=str(path))
        if split in found:
            raise DataError(f"two files for the {split} split: {found[split]} and {path}")
        found[split] = path
    if "train" not in found:
        raise DataError(f"no train.txt in {', '.join(str(p) for p in paths)}; the lightgcn format is "
                        "train.txt, test.txt and optionally valid.txt, one line per user: user_id item_id ...")
    return [(found[s], s) for s in SPLIT_ORDER if s in found]


def read_id_map(path: Path) -> dict[str, str]:
    """remap_id -> org_id of a LightGCN id-map file (a header naming `org_id` and `remap_id`, then
    one line per id, separated by white space). Raises DataError for another layout or a repeated id."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = lines[0].split() if lines else []
    if "org_id" not in header or "remap_id" not in header:
        raise DataError(f"expected a header naming org_id and remap_id (LightGCN's id map), got {header[:5]}",
                        source=str(path))
    org, remap = header.index("org_id"), header.index("remap_id")
    out: dict[str, str] = {}
    for line_no, line in enumerate(lines[1:], 2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) <= max(org, remap):
            raise DataError(f"line {line_no}: {len(fields)} field(s), expected org_id and remap_id", source=str(path))
        if fields[remap] in out:
            raise DataError(f"line {line_no}: remap_id {fields[remap]} given twice", source=str(path))
        out[fields[remap]] = fields[org]
    return out


def _id_maps(paths: list[tuple[Path, str]]) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """The id maps beside train.txt, by column, and their manifest entries."""
    folder = paths[0][0].parent
    maps, info = {}, {}
    for column, name in ID_MAPS.items():
        if (folder / name).is_file():
            maps[column] = read_id_map(folder / name)
            info[column] = {"file": name, "ids": len(maps[column])}
    return maps, info


def _original(token: str, column: str, maps: dict[str, dict[str, str]]) -> str | None:
    mapping = maps.get(column)
    return token if mapping is None else mapping.get(token)


def _pairs(path: Path, split: str, problems: Problems, chunk: int, first_row: int,
           counts: dict[str, int], maps: dict[str, dict[str, str]] | None = None) -> Iterator[pl.DataFrame]:
    maps = maps or {}
    users: list[str] = []
    items: list[str] = []
    rows: list[int] = []
    row = first_row
    source = str(path)
    for line_no, raw in raw_lines(path, problems):
        tokens = raw.decode("latin-1").split()  # ids are ASCII digits; any other byte fails the check
        counts["lines"] += 1
        user, rest = tokens[0], tokens[1:]
        if not user.isdigit() or not user.isascii():
            problems.report(source, line_no, "user_id",
                            f"expected a non-negative integer id first on the line, got {user[:40]!r}"
                            + (f" (its {len(rest)} item(s) skipped)" if rest else ""))
            row += len(rest)
            continue
        if (original_user := _original(user, "user_id", maps)) is None:
            problems.report(source, line_no, "user_id", f"{user} is not in {ID_MAPS['user_id']}"
                            + (f" (its {len(rest)} item(s) skipped)" if rest else ""))
            row += len(rest)
            continue
        for position, item in enumerate(rest, 2):
            if item.isdigit() and item.isascii() and (original := _original(item, "item_id", maps)) is None:
                problems.report(source, line_no, "item_id", f"token {position}: {item} is not in {ID_MAPS['item_id']}")
            elif item.isdigit() and item.isascii():
                users.append(original_user)
                items.append(original)
                rows.append(row)
            else:
                problems.report(source, line_no, "item_id",
                                f"token {position}: expected a non-negative integer id, got {item[:40]!r}")
            row += 1
        if len(users) >= chunk:
            yield _frame(users, items, rows, split)
            users, items, rows = [], [], []
    counts["records"] += row - first_row
    yield _frame(users, items, rows, split)


def _frame(users: list[str], items: list[str], rows: list[int], split: str) -> pl.DataFrame:
    return pl.DataFrame({"user_id": pl.Series(users, dtype=pl.Utf8), "item_id": pl.Series(items, dtype=pl.Utf8),
                         "rating": pl.Series([None] * len(users), dtype=pl.Float64),
                         "source_row": pl.Series(rows, dtype=pl.Int64),
                         "split": pl.Series([split] * len(users), dtype=pl.Utf8)})


# -- item metadata ---------------------------------------------------------------------------------

def _meta_is_json(path: Path) -> bool:
    return bool({".jsonl", ".json"} & {s.lower() for s in path.suffixes})


def _meta_records(path: Path, problems: Problems) -> Iterator[tuple[int, dict]]:
    if _meta_is_json(path):
        return json_records(path, problems)
    if path.suffix.lower() == ".txt":  # LightGCN's item_list.txt: a header, fields separated by spaces
        return _whitespace_records(path)
    return csv_records(path, problems, delimiter="\t" if ".tsv" in [s.lower() for s in path.suffixes] else ",")


def _whitespace_records(path: Path) -> Iterator[tuple[int, dict]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = lines[0].split() if lines else []
    for line_no, line in enumerate(lines[1:], 2):
        if line.strip():
            yield line_no, dict(zip(header, line.split()))


def _columns(header: list[str], mapping: dict[str, str], path: Path, where: str) -> dict[str, str]:
    """ours -> theirs for every item column kept. A wrong `--map` is refused (`check_mapping`)."""
    columns = {"item_id": mapping.get("item_id", "item_id")}
    for ours, names in ITEM_FIELDS.items():
        theirs = mapping.get(ours) or next((n for n in names if n in header and n not in mapping.values()), None)
        if theirs is not None:
            columns[ours] = theirs
    check_mapping(mapping, columns, header, known=("item_id", *ITEM_FIELDS), required=("item_id",),
                  where=f"{where} {path}")
    for ours, theirs in mapping.items():
        columns.setdefault(ours, theirs)
    used = set(columns.values())
    for name in header:
        if name not in used and name not in columns:
            columns[name] = name
    return columns


def _is_id_column(ours: str, theirs: str) -> bool:
    """An identifier (org_id, remap_id, movie_id, asin, isbn...): text, never a number (ISBN 0553092626)."""
    return any(n.lower().endswith("id") or n.lower() in ("asin", "isbn", "sku") for n in (ours, theirs))


def _numbers(values: list[Any]) -> list[float | None] | None:
    """The values as floats when every non-empty one is a number, else None."""
    out: list[float | None] = []
    for v in values:
        if v is None or v == "":
            out.append(None)
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return None
    return out


def read_item_meta(path: Path, mapping: dict[str, str] | None, problems: Problems) -> tuple[pl.DataFrame, dict]:
    """The items of a metadata file, columns named by `mapping`; and the file's manifest entry."""
    records = _meta_records(path, problems)
    first = next(records, None)
    columns: dict[str, str] = {}
    if first is not None:
        where = "the first record of" if _meta_is_json(path) else "the header of"
        columns = _columns(list(first[1]), dict(mapping or {}), path, where)

    def item(r: dict) -> dict:
        out = {ours: r.get(theirs) for ours, theirs in columns.items()}
        out["item_id"] = str(out["item_id"]).strip() if out["item_id"] not in (None, "") else None
        if "categories" in out:
            value = out["categories"]
            sep = "|" if isinstance(value, str) and "|" in value else ","
            out["categories"] = string_list(value, sep=sep)
        return out

    seen: dict[str, dict] = {}
    stream = iter([first, *records]) if first is not None else iter(())
    read, kept, dups = collect_items(stream, item, str(path), problems, seen)
    rows = list(seen.values())
    series = []
    for name in columns:
        values = [r.get(name) for r in rows]
        if name == "categories":
            series.append(pl.Series(name, values, dtype=pl.List(pl.Utf8)))
        elif (name not in ("item_id", "title", "description", "brand") and not _is_id_column(name, columns[name])
              and (floats := _numbers(values)) is not None):
            series.append(pl.Series(name, floats, dtype=pl.Float64))
        else:
            series.append(pl.Series(name, [None if v in (None, "") else str(v) for v in values], dtype=pl.Utf8))
    frame = pl.DataFrame(series) if series else None
    entry = {**file_info(path, "items"), "records": read, "rows": kept, "duplicate_items": dups,
             "columns": {k: v for k, v in columns.items()}}
    return frame, entry


# -- the format ------------------------------------------------------------------------------------

def load_lightgcn(paths: list[Path], meta: Path | None, mapping: dict[str, str] | None, problems: Problems,
                  chunk_rows: int | None, done: dict[str, Any]) -> Iterator[pl.DataFrame]:
    """Interaction chunks of train, valid and test (at most `chunk_rows` rows each); then `done`
    gets the items (from `meta`), no users, and info (files, each with its split and line count)."""
    if mapping and meta is None:
        raise DataError("for --format lightgcn, --map names the columns of the --meta file; give --meta FILE")
    files = []
    source_row = 0
    splits = split_files(paths)
    maps, map_info = _id_maps(splits)
    if map_info:  # said, not only recorded: ids in the dataset are no longer the files' numbers
        warnings.warn(FeedbackgenWarning(
            "ids translated to the original ones through " + " and ".join(
                f"{m['file']} ({m['ids']} ids)" for m in map_info.values())
            + ": lists and metadata must use the original ids"), stacklevel=2)
    for path, split in splits:
        counts = {"records": 0, "lines": 0}
        rows = 0
        for chunk in _pairs(path, split, problems, chunk_rows or DEFAULT_CHUNK, source_row, counts, maps):
            rows += chunk.height
            yield chunk
        source_row += counts["records"]
        files.append({**file_info(path, "interactions"), "split": split, "lines": counts["lines"],
                      "records": counts["records"], "rows": rows})
    items = None
    if meta is not None:
        items, entry = read_item_meta(meta, mapping, problems)
        files.append(entry)
    done.update(items=items, users=None,
                info={"files": files, "feedback": "implicit", "has_text": False, "has_ratings": False,
                      "split_from": "files", **({"id_maps": map_info} if map_info else {})})
