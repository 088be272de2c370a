"""`prepare`: raw review files in, a clean, split `Dataset` with explanation targets out.

    load → clean_text → drop_empty → drop_duplicates → copies → scrub_pii → length_limits → k_core
         → normalize_ratings → split (+ cold start) → explanations → keep_referenced

Every step is configured by one field of `PrepareConfig` (validated before anything is read) and
logs a record to the manifest's `steps`. The result is a pure function of the inputs, the seed
and the config: rows stay in source order, and nothing time- or machine-dependent goes into the
tables, so the same inputs give the same Parquet bytes.

A source without review text (MovieLens, the lightgcn layout, a ratings-only CSV) prepares too:
the text-only steps (clean_text on reviews, drop_empty, scrub_pii, length_limits, explanations)
log `"skipped_because": NO_TEXT` instead of running, and the manifest says `"has_text": false`
(a source with a text field whose texts are all blank is a review source that drop_empty
empties, not a text-less one). A source
without ratings (lightgcn) skips normalize_ratings and says `"feedback": "implicit"`. A loader
that knows its source's scale (MovieLens: 1-5, or 0.5-5 in half stars) has it kept, not rescaled.

Memory holds `chunk_rows` rows at a time, whatever the input's size: the table goes from pass to
pass as temporary Parquet parts, and the chunk size changes nothing in the result
(docs/scale.md says which state is kept beside a chunk).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from feedbackgen.config import StrictModel, validate
from feedbackgen.data import aspects as aspect_mining
from feedbackgen.data import duplicates, preprocess, splits
from feedbackgen.data.dataset import (EXTRA_INTERACTION_SCHEMA, INTERACTION_SCHEMA, ITEM_SCHEMA, MANIFEST_VERSION,
                                      SPLITS, Dataset, conform)
from feedbackgen.data.loaders import FORMATS, check_yielded, stream_tables
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.io import atomic_write, atomic_write_json, sha256_file


class PrepareConfig(StrictModel):
    """Every preprocessing choice. Set from the command line with `--set key=value`."""

    clean_text: bool = Field(True, description="NFKC, decode HTML entities, strip tags and control characters")
    drop_empty: bool = Field(True, description="drop reviews with no text")
    drop_duplicates: bool = Field(True, description="keep the latest review per (user, item)")
    copies: Literal["auto", "keep_one", "keep_all", "report"] = Field(
        "auto", description="one user's identical text on several items (data/duplicates.py): keep_one (the "
                            "most-reviewed item's), keep_all (never split apart), report (counted only); "
                            "auto = report for the peter format, else keep_one")
    scrub_pii: bool = Field(True, description="replace e-mails, URLs, phones, cards, @handles by placeholders")
    min_tokens: int = Field(0, ge=0, le=100_000, description="drop reviews shorter than this (0 = off)")
    max_tokens: int = Field(0, ge=0, le=100_000, description="longest review kept, in tokens (0 = no limit)")
    over_max: Literal["truncate", "drop"] = Field("truncate", description="what to do with longer reviews")
    k_core: int = Field(0, ge=0, le=10_000, description="keep users and items with >= k reviews (0 = off)")
    rating_scale: Literal["auto"] | tuple[float, float] = Field(
        "auto", description="source rating range mapped onto 1-5; auto = the format's known scale (Amazon, Yelp: "
                           "1-5; outside it = a bad record), else the observed min/max, said in the output")
    split_ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/valid/test for --split random")
    cold_start: Literal["move_to_train", "keep"] | None = Field(
        None, description="valid/test rows with a user or item unseen in train: move them to train, or keep "
                          "them (counts are always recorded); default move_to_train, keep for --split peter")
    split_index_dir: str | None = Field(
        None, description="folder of PETER index files over source positions, for --split peter "
                          "(default: the peter source's folder 1)")
    explanations: Literal["auto", "extract", "source", "off"] = Field(
        "auto", description="explanation targets: mined (extract), given by the source, auto (source if it has them)")
    n_aspects: int = Field(200, ge=1, le=100_000, description="number of aspect words mined")
    aspect_window: int = Field(3, ge=1, le=50, description="tokens between an aspect and an opinion word")
    explanation_max_tokens: int = Field(20, ge=1, le=1024, description="explanations are cut to this many tokens")
    sentiment_threshold: float = Field(0.05, ge=0.0, lt=1.0, description="|VADER compound| below this is neutral")

    @model_validator(mode="after")
    def _consistent(self) -> PrepareConfig:
        if self.max_tokens and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.rating_scale != "auto":
            lo, hi = self.rating_scale
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"rating_scale must be [lo, hi] with lo < hi, got {list(self.rating_scale)}")
        ratios = self.split_ratios
        if min(ratios) < 0 or ratios[0] <= 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise ValueError(f"split_ratios must be >= 0, with train > 0, summing to 1; got {list(ratios)}")
        return self


class _Log:
    """Collects step records; prints one line per step when `progress`."""

    def __init__(self, progress: bool):
        self.progress, self.steps, self.started = progress, [], time.perf_counter()

    def __call__(self, record: dict[str, Any]) -> None:
        self.steps.append(record)
        if self.progress:
            extra = {k: v for k, v in record.items()
                     if k not in ("step", "params", "rows_in", "rows_out", "aspects", "cold_before", "cold_after")}
            print(f"prepare: {record['step']:<18} {record['rows_in']:>9,} -> {record['rows_out']:>9,} rows  "
                  f"{_brief(extra)}  [{time.perf_counter() - self.started:.1f}s]", file=sys.stderr)


def _brief(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v not in (None, {}, 0) or k == "touched")


NO_TEXT = "no review text in this source"
NO_RATINGS = "no ratings in this source (implicit feedback: a row says the user chose the item)"


def _default_split(fmt: str, split: str | None) -> str:
    """The lightgcn layout carries its split in its files; every other source is split randomly."""
    return split if split is not None else ("files" if fmt == "lightgcn" else "random")


def _check_arguments(fmt: str, split: str, seed: Any, config: PrepareConfig) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if (fmt == "lightgcn") != (split == "files"):
        raise ConfigError("the lightgcn format takes its split from train.txt/valid.txt/test.txt: leave --split "
                          "out (or give --split files)" if fmt == "lightgcn" else
                          f"--split files reads the split from the source's files, which only --format lightgcn "
                          f"has; for {fmt} use random, temporal or peter")
    if split not in splits.SPLIT_METHODS:
        raise ConfigError(f"unknown split {split!r}; expected one of: {', '.join(splits.SPLIT_METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if split == "peter" and fmt != "peter" and config.split_index_dir is None:
        raise ConfigError("--split peter reads PETER index files: use it with --format peter, or set "
                          "split_index_dir=FOLDER")


DEFAULT_CHUNK_ROWS = 100_000
MAX_DUPLICATE_PASSES = 64  # each reads the id columns once: past this, time beats memory


class _Parts:
    """A table kept on disk as Parquet parts of at most one chunk each, in source order: each pass
    of `prepare` reads one part, transforms it and writes it to the next table, so memory holds
    one chunk whatever the size of the input."""

    def __init__(self, folder: Path, name: str):
        self.folder = folder / name
        self.folder.mkdir(parents=True)
        self.paths: list[Path] = []
        self.rows = 0

    def append(self, df: pl.DataFrame) -> None:
        path = self.folder / f"part-{len(self.paths):06d}.parquet"
        df.write_parquet(path, compression="lz4", statistics=False)
        self.paths.append(path)
        self.rows += df.height

    def __iter__(self):
        for path in self.paths:
            yield pl.read_parquet(path)

    def scan(self, columns: list[str] | None = None) -> pl.LazyFrame:
        """All parts as one lazy table. Parts written before the schemas were aligned (the loaded
        table: chunks of different files may differ in their extra columns) are scanned each on
        its own, for `columns` only."""
        if columns is not None:
            return pl.concat([pl.scan_parquet(p).select(columns) for p in self.paths])
        return pl.scan_parquet(self.paths)

    def schema(self) -> pl.DataFrame:
        """An empty frame with every part's columns, types widened as `pl.concat` widens them."""
        return pl.concat([pl.read_parquet(p, n_rows=0) for p in self.paths], how="diagonal_relaxed")

    def remove(self) -> None:
        shutil.rmtree(self.folder)


class _Distinct:
    """The distinct values of a column met chunk by chunk (memory: one copy of each value)."""

    def __init__(self, name: str):
        self.parts: list[pl.Series] = [pl.Series(name, [], pl.Utf8)]
        self.size = 0

    def add(self, values: pl.Series) -> None:
        unique = values.unique()
        self.parts.append(unique)
        self.size += unique.len()
        if len(self.parts) > 64:
            self.parts = [pl.concat(self.parts).unique()]

    def count(self) -> int:
        return pl.concat(self.parts).n_unique()


def _merge(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One step record from the records of its chunks: counts added up, the rest from the first."""
    out = dict(records[0])
    for record in records[1:]:
        for key, value in record.items():
            if isinstance(value, bool) or key in ("step", "params"):
                continue
            if isinstance(value, int):
                out[key] += value
            elif isinstance(value, dict):
                merged = dict(out[key])
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
                out[key] = merged
    return out


def _override(split: pl.Expr, rows_by_split: dict[str, list[int]]) -> pl.Expr:
    """`split`, with the source rows listed under a split name set to that split."""
    out = split
    for name, rows in sorted(rows_by_split.items()):
        out = (pl.when(pl.col("source_row").is_in(pl.Series(sorted(rows), dtype=pl.Int64).implode()))
               .then(pl.lit(name)).otherwise(out))
    return out.alias("split")


def _sources(info: dict[str, Any]) -> str:
    """The review file(s), as a problem's source."""
    names = [f["path"] for f in info.get("files", []) if f.get("role") == "reviews"]
    return ", ".join(names) or "the source"


def _count(lf: pl.LazyFrame) -> int:
    return lf.select(pl.len()).collect(engine="streaming").item()


def _split_sizes(lf: pl.LazyFrame) -> dict[str, int]:
    counts = dict(lf.group_by("split").len().collect(engine="streaming").iter_rows())
    return {s: int(counts.get(s, 0)) for s in SPLITS}


@dataclass
class _Prepared:
    parts: _Parts
    items: pl.DataFrame | None
    users: pl.DataFrame | None
    manifest: dict[str, Any]


def _prepare_parts(sources: list[Path] | list[str], fmt: str, work: Path, *, meta: Path | str | None,
                   mapping: dict[str, str] | None, split: str | None, seed: int, strict: bool,
                   config: PrepareConfig | dict | None, progress: bool, chunk_rows: int,
                   encoding: str = "auto") -> _Prepared:
    """Every step of `prepare`, one chunk in memory at a time, the table between passes in `work`.

    Steps that look at one row (cleaning, PII, lengths, rescaling, explanations) run chunk by
    chunk; those that look at many (duplicates, k-core, rating range, split, cold start, aspect
    mining) first read the few columns they need with polars' streaming engine and keep per-id
    state (or, for the random split, one byte per row), then the next pass applies the result."""
    config = validate(PrepareConfig, config, "prepare config")
    split = _default_split(fmt, split)
    _check_arguments(fmt, split, seed, config)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    problems = Problems(strict=strict)
    log = _Log(progress)

    # pass 1: load, clean_text, drop_empty
    stream = stream_tables([sources] if isinstance(sources, (str, Path)) else list(sources), fmt, meta=meta,
                           mapping=mapping, problems=problems, chunk_rows=chunk_rows, encoding=encoding)
    loaded = _Parts(work, "loaded")
    users_seen, items_seen = _Distinct("user_id"), _Distinct("item_id")
    cleaned = []
    text_rows = present_rows = rated_rows = 0
    last_row = -1
    for chunk in stream:
        chunk = chunk.sort("source_row")
        if chunk.height:
            if chunk["source_row"][0] <= last_row:
                raise DataError(f"{fmt} loader gave rows out of source order")  # a bug, not bad data
            last_row = chunk["source_row"][-1]
        if "split" in chunk.columns:  # a split given by the source (PETER index files), used by --split peter
            chunk = chunk.rename({"split": "_source_split"})
        users_seen.add(chunk["user_id"])
        items_seen.add(chunk["item_id"])
        if config.clean_text:
            texts = [c for c in ("text", "summary", "explanation") if c in chunk.columns]
            if not chunk.select(pl.any_horizontal(pl.col(texts).is_not_null().any())).item():
                # nothing to clean (a ratings-only source): skip the per-value loop, log the zero record
                record = preprocess.clean_texts(chunk.clear(), None, tokenized=fmt == "peter")[2]
                record.update(rows_in=chunk.height, rows_out=chunk.height)
            else:
                chunk, _, record = preprocess.clean_texts(chunk, None, tokenized=fmt == "peter")
            cleaned.append(record)
        # empty texts are dropped in pass 2, once it is known whether the source has any text at all
        text_rows += chunk.select(preprocess.has_text_expr().sum()).item()
        present_rows += chunk["text"].count()
        rated_rows += chunk["rating"].count()
        loaded.append(chunk)
    info, items, users = stream.info, stream.items, stream.users
    check_yielded(info)
    for f in info["files"]:  # how each file was read, when it was guessed: said, never silent
        for key in ("encoding_note", "delimiter_note"):
            if f.get(key) and progress:
                print(f"prepare: {f['name']}: {f[key]}", file=sys.stderr)
    # a source "has text" when it gives a text field at all; one whose reviews are all blank is
    # still a review source, and drop_empty leaves nothing of it (an error below, as before)
    has_text, has_ratings = present_rows > 0, rated_rows > 0
    keep_text = preprocess.has_text_expr() if has_text and config.drop_empty else pl.lit(True)
    rows_kept = text_rows if has_text and config.drop_empty else loaded.rows
    log(preprocess.step_record("load", {"format": fmt}, info["records"], info["rows"], touched=0,
                               skipped=problems.count, users=users_seen.count(), items=items_seen.count()))
    del users_seen, items_seen
    if config.clean_text:
        record = _merge(cleaned)
        if not has_text:
            record = preprocess.step_record("clean_text", record["params"], loaded.rows, loaded.rows, touched=0,
                                            skipped_because=NO_TEXT + " (item texts still cleaned)")
        items, record["items_touched"] = preprocess.clean_item_texts(items)
        log(record)
    if config.drop_empty:
        log(preprocess.step_record("drop_empty", {}, loaded.rows, rows_kept, touched=0,
                                   dropped_empty=loaded.rows - rows_kept,
                                   **({} if has_text else {"skipped_because": NO_TEXT})))

    # pass 2: drop_duplicates (found first, over the id columns), scrub_pii, length_limits
    dropped: set[int] = set()
    if config.drop_duplicates:
        # a pass groups about ten chunks' worth of pair hashes (some 100 bytes each)
        buckets = min(max(1, -(-rows_kept // (10 * chunk_rows))), MAX_DUPLICATE_PASSES)
        dropped, pairs = preprocess.duplicate_rows(
            loaded.scan(["user_id", "item_id", "timestamp", "source_row", "text"]).filter(keep_text)
            .drop("text"), buckets)
        log(preprocess.step_record("drop_duplicates", {"keep": "latest"}, rows_kept, rows_kept - len(dropped),
                                   touched=0, duplicate_pairs=pairs, dropped_duplicates=len(dropped)))
    copy_mode = config.copies if config.copies != "auto" else "report" if fmt == "peter" else "keep_one"
    remaining = loaded.scan(["user_id", "item_id", "timestamp", "source_row", "text"])
    if dropped:
        remaining = remaining.filter(~pl.col("source_row").is_in(
            pl.Series("source_row", sorted(dropped), dtype=pl.Int64).implode()))
    copies = duplicates.find_copies(remaining, copy_mode)
    rows_in = loaded.rows - len(dropped)
    dropped |= copies.dropped
    record = dict(copies.record)
    mode = record.pop("mode")
    log(preprocess.step_record("copies", {"mode": mode}, rows_in, loaded.rows - len(dropped), touched=0, **record))
    dropped_rows = pl.Series("source_row", sorted(dropped), dtype=pl.Int64).implode()
    aligned = loaded.schema()
    filtered = _Parts(work, "filtered")
    scrubbed, limited, lengths = [], [], Counter()
    for chunk in loaded:
        # every chunk gets all columns, each with the type the whole-table concat would give it
        chunk = pl.concat([aligned, chunk], how="diagonal_relaxed").filter(keep_text)
        if dropped:
            chunk = chunk.filter(~pl.col("source_row").is_in(dropped_rows))
        if config.scrub_pii and has_text:
            chunk, record = preprocess.scrub_pii(chunk)
            scrubbed.append(record)
        if (config.min_tokens or config.max_tokens) and has_text:
            chunk, record, counts = preprocess.limit_length_counted(chunk, config.min_tokens, config.max_tokens,
                                                                    config.over_max)
            limited.append(record)
            lengths.update(counts)
        filtered.append(chunk)
    loaded.remove()
    del dropped, dropped_rows
    if not has_text:
        for step, on in (("scrub_pii", config.scrub_pii), ("length_limits", config.min_tokens or config.max_tokens)):
            if on:
                log(preprocess.step_record(step, {}, filtered.rows, filtered.rows, touched=0, skipped_because=NO_TEXT))
    elif config.scrub_pii:
        record = _merge(scrubbed)
        record["replacements"] = dict(sorted(record["replacements"].items()))
        log(record)
    if (config.min_tokens or config.max_tokens) and has_text:
        record = _merge(limited)
        record["tokens_median_before"] = preprocess.median_of_counts(lengths)
        log(record)

    # k_core and the rating range, over the id and rating columns
    ids = filtered.scan()
    in_core = pl.lit(True)
    if config.k_core > 1:
        core_users, core_items, iterations = preprocess.k_core_ids(ids.select("user_id", "item_id"), config.k_core)
        in_core = pl.col("user_id").is_in(core_users.implode()) & pl.col("item_id").is_in(core_items.implode())
        n_users, n_items = core_users.len(), core_items.len()
    else:
        iterations = 0
        n_users, n_items = (ids.select(pl.col("user_id").n_unique(), pl.col("item_id").n_unique())
                            .collect(engine="streaming").row(0))
    cored = ids.filter(in_core)
    rows_cored = _count(cored)
    log(preprocess.step_record("k_core", {"k": config.k_core}, filtered.rows, rows_cored, touched=0,
                               iterations=iterations, users=n_users, items=n_items))
    observed = (cored.select(pl.col("rating").min().alias("lo"), pl.col("rating").max().alias("hi"))
                .collect(engine="streaming").row(0)
                if rows_cored and has_ratings else None)
    scale, scale_from = preprocess.source_scale(config.rating_scale, fmt)
    # a loader that knows its source's scale (movielens) keeps it: the models read the range from train
    native = info.get("rating_scale") if scale == "auto" else None
    if native:
        scale, scale_from = tuple(native), f"own scale of this {fmt} release"
    lo, hi = preprocess.rating_bounds(scale, observed)
    declared = scale != "auto" and has_ratings
    rescale = has_ratings and not native and (lo, hi) != preprocess.RATING_RANGE
    in_range = (pl.col("rating") >= lo) & (pl.col("rating") <= hi)
    keep = in_core & in_range if declared else in_core
    rows_normalized = _count(ids.filter(keep))
    if rescale and math.isclose(lo, hi):
        raise DataError(f"cannot normalise ratings: every rating is {lo}; declare rating_scale=[lo, hi]")

    # the split needs the final row count (random) or per-user order (temporal) before pass 3
    method = split
    codes, index, test_rows, valid_rows = None, None, None, None
    params: dict[str, Any] = {"method": method, "seed": seed}
    if rows_normalized and method == "random":
        params["ratios"] = list(config.split_ratios)
        codes = splits.random_split_codes(rows_normalized, seed, config.split_ratios)
    elif rows_normalized and method == "temporal":
        test_rows, valid_rows = splits.temporal_rows(ids.filter(keep).select("user_id", "timestamp", "source_row"))
    elif rows_normalized and method == "files" and "_source_split" not in aligned.columns:
        raise DataError(f"the {fmt} source gave no split")  # a loader bug, not bad data
    elif rows_normalized and method == "peter":
        if config.split_index_dir is not None:
            params["index_dir"] = config.split_index_dir
            index = splits.read_index(Path(config.split_index_dir), info["records"])
            if index is None:
                raise DataError(f"{config.split_index_dir} is not a folder of index files "
                                "(train.index, validation.index, test.index)")
        elif "_source_split" not in aligned.columns:
            raise DataError("the peter source has no index folder to split by; use --split random")

    # pass 3: k_core, normalize_ratings, split
    rated = _Parts(work, "rated")
    touched = out_of_range = unassigned = 0
    position = 0
    for chunk in filtered:
        chunk = chunk.filter(in_core)
        if declared:
            outside = chunk.filter(~in_range)
            for row, rating in zip(outside["source_row"], outside["rating"]):
                # the row's file line is not kept this far; its position among the records is
                problems.report(_sources(info), None, "rating",
                                f"outside the {scale_from} [{lo:g}, {hi:g}], got {rating:g} (record {row + 1})")
            out_of_range += outside.height
            chunk = chunk.filter(in_range)
        if rescale:
            chunk, changed = preprocess.rescale_ratings(chunk, lo, hi)
            touched += changed
        if codes is not None:
            part = codes[position:position + chunk.height]
            chunk = chunk.with_columns(pl.Series("split", [splits.SPLIT_CODES[c] for c in part], dtype=pl.Utf8))
        elif test_rows is not None:
            chunk = chunk.with_columns(
                split=pl.when(pl.col("source_row").is_in(test_rows.implode())).then(pl.lit("test"))
                .when(pl.col("source_row").is_in(valid_rows.implode())).then(pl.lit("valid"))
                .otherwise(pl.lit("train")))
        elif index is not None:
            chunk = chunk.with_columns(index.gather(chunk["source_row"].to_list()))
        elif method in ("peter", "files"):
            chunk = chunk.with_columns(pl.col("_source_split").alias("split"))
        position += chunk.height
        if method in ("peter", "files"):
            unassigned += int(chunk["split"].is_null().sum())
            chunk = chunk.filter(pl.col("split").is_not_null())
        rated.append(chunk)
    filtered.remove()
    record: dict[str, Any] = {"target_range": list(preprocess.RATING_RANGE)}
    if declared:
        record["dropped_out_of_range"] = out_of_range
    record["source_range"] = [lo, hi]
    if not has_ratings:
        record = {"skipped_because": NO_RATINGS}
    elif native:
        record["target_range"] = [lo, hi]
        record["note"] = f"the source's own scale [{lo:g}, {hi:g}] ({fmt}): kept, not rescaled"
    elif (lo, hi) == preprocess.RATING_RANGE:
        record["note"] = "already on 1-5: unchanged"
    if has_ratings:
        record["scale_from"] = scale_from
    if has_ratings and not declared and (lo, hi) != preprocess.RATING_RANGE:
        record["note"] = (f"rating scale inferred from the data as [{lo:g}, {hi:g}] and mapped onto 1-5: "
                          f"{touched:,} rating(s) changed; declare rating_scale=[lo,hi] if that is not the scale")
    log(preprocess.step_record("normalize_ratings", {"scale": config.rating_scale}, rows_cored, position,
                               touched=touched, **record))
    if position == 0:
        raise DataError(f"no rows left after preprocessing ({problems.describe()}); see the steps above")

    # cold start, over the split and id columns
    table = rated.scan()
    mode = config.cold_start or ("keep" if method in ("peter", "files") else "move_to_train")
    cold: dict[str, Any] = {"cold_start": mode, "cold_before": splits.cold_start_counts_lazy(table)}
    moved_rows: set[int] = set()
    if mode == "move_to_train":
        moved_rows, moved = splits.cold_rows_to_move(table)
        cold["moved_to_train"] = moved
    moved_list = pl.Series("source_row", sorted(moved_rows), dtype=pl.Int64).implode()
    final_split = (pl.when(pl.col("source_row").is_in(moved_list)).then(pl.lit("train"))
                   .otherwise(pl.col("split")).alias("split")) if moved_rows else pl.col("split")
    table = table.with_columns(final_split)
    regrouped = duplicates.together(table, copies.group_of) if method != "peter" else {}
    if regrouped:  # keep_all: a copy group never straddles the split
        by_split: dict[str, list[int]] = {}
        for row, name in regrouped.items():
            by_split.setdefault(name, []).append(row)
        final_split = _override(final_split, by_split)
        table = rated.scan().with_columns(final_split)
    if mode == "move_to_train":
        cold["cold_after"] = splits.cold_start_counts_lazy(table)
    extra = {"dropped_unassigned": unassigned} if method in ("peter", "files") else {}
    extra["copies_moved"] = len(regrouped)
    extra["leaks"] = duplicates.leaks(table)
    log(preprocess.step_record("split", params, position, rated.rows, touched=len(moved_rows),
                               sizes=_split_sizes(table), **extra, **cold))

    # explanations: aspects mined over the train texts (read a chunk at a time), then pass 4
    columns = aligned.columns
    has_source = "explanation" in columns and _count(table.filter(pl.col("explanation").is_not_null())) > 0
    explain_mode = config.explanations
    if explain_mode == "auto":
        explain_mode = "source" if has_source else "extract"
    text_skipped = not has_text and explain_mode == "extract"
    if text_skipped:
        explain_mode = "off"
    params = {"mode": explain_mode}
    scored: list[tuple[str, int]] = []
    if explain_mode == "source":
        if not has_source:
            raise DataError("explanations=source, but this source has no explanations; use extract")
        counts = (table.filter(pl.col("split") == "train").select(pl.col("aspect").drop_nulls().value_counts(name="n"))
                  .unnest("aspect").collect(engine="streaming"))
        scored = sorted(zip(counts["aspect"].to_list(), counts["n"].to_list()), key=lambda x: (-x[1], x[0]))
    elif explain_mode == "extract":
        params.update(n_aspects=config.n_aspects, window=config.aspect_window,
                      max_tokens=config.explanation_max_tokens, sentiment_threshold=config.sentiment_threshold)

        def train_texts():
            # Aspects come from train rows only, so nothing about valid/test leaks into the targets.
            for path in rated.paths:
                part = pl.read_parquet(path, columns=["source_row", "split", "text"]).with_columns(final_split)
                yield from part.filter(pl.col("split") == "train")["text"]

        scored = aspect_mining.mine_aspects(train_texts(), top_n=config.n_aspects, window=config.aspect_window)
    aspect_words = frozenset(w for w, _ in scored)
    done = _Parts(work, "done")
    for chunk in rated:
        chunk = chunk.with_columns(final_split).drop("_source_split", strict=False)
        if explain_mode == "off":
            chunk = chunk.drop("aspect", "explanation", "sentiment", strict=False)
        elif explain_mode == "extract":
            chunk = aspect_mining.add_explanations(chunk, aspect_words, max_tokens=config.explanation_max_tokens,
                                                   threshold=config.sentiment_threshold)
        done.append(conform(chunk, INTERACTION_SCHEMA, "interactions", EXTRA_INTERACTION_SCHEMA))
    rated.remove()
    table = done.scan()
    if explain_mode == "off":
        log(preprocess.step_record("explanations", params, done.rows, done.rows, touched=0,
                                   **({"skipped_because": NO_TEXT} if text_skipped else {})))
    else:
        with_expl = _count(table.filter(pl.col("explanation").is_not_null()))
        by_split = {s: int(n) for s, n in table.filter(pl.col("explanation").is_not_null())
                    .group_by("split").len().sort("split").collect(engine="streaming").iter_rows()}
        distinct = table.select(pl.col("aspect").drop_nulls().n_unique()).collect(engine="streaming").item()
        log(preprocess.step_record(
            "explanations", params, done.rows, done.rows, touched=with_expl if explain_mode == "extract" else 0,
            with_explanation=with_expl, without_explanation=done.rows - with_expl,
            with_explanation_by_split=by_split, distinct_aspects_used=distinct,
            aspects=[[w, int(s)] for w, s in scored]))

    referenced = {key: table.select(pl.col(key).unique()).collect(engine="streaming")
                  for key in ("item_id", "user_id")}
    items, items_dropped = preprocess.keep_referenced(items, referenced["item_id"], "item_id")
    users, users_dropped = preprocess.keep_referenced(users, referenced["user_id"], "user_id")
    log(preprocess.step_record("keep_referenced", {}, done.rows, done.rows, touched=0,
                               items_dropped=items_dropped, users_dropped=users_dropped))

    manifest = {
        "format": fmt,
        "source": info,
        "problems": problems.to_manifest(),
        "steps": log.steps,
        "config": config.model_dump(mode="json"),
        "seed": seed,
        "split": split,
        "aspects": [w for w, _ in scored],
        "has_text": has_text,
        "has_ratings": has_ratings,
        "feedback": "explicit" if has_ratings else "implicit",
    }
    if progress:
        print(f"prepare: {problems.describe()}; {done.rows:,} rows, splits {_split_sizes(table)}",
              file=sys.stderr)
    return _Prepared(done, items, users, manifest)


def prepare(sources: list[Path] | list[str], fmt: str, *, meta: Path | str | None = None,
            mapping: dict[str, str] | None = None, split: str | None = None, seed: int = 1,
            strict: bool = False, config: PrepareConfig | dict | None = None,
            progress: bool = True, chunk_rows: int = DEFAULT_CHUNK_ROWS,
            workdir: Path | str | None = None, encoding: str = "auto") -> Dataset:
    """Load `sources` in format `fmt`, clean, filter, split and add explanation targets.

    `split`: random, temporal, peter or files (the lightgcn layout's own; the default for it,
    random for every other format). Bad records are skipped and counted (`strict` stops at the
    first one). The manifest records
    the source files (names, sizes, sha256), the problems, every step with its counts, the
    config, the seed and the split. The steps run `chunk_rows` rows at a time (temporary files in
    `workdir`, default the system's); the returned `Dataset` holds them all. For inputs larger
    than memory, `prepare_to` writes the dataset folder without ever holding it.
    """
    with tempfile.TemporaryDirectory(prefix="feedbackgen-prepare-", dir=workdir) as work:
        result = _prepare_parts(sources, fmt, Path(work), meta=meta, mapping=mapping, split=split, seed=seed,
                                strict=strict, config=config, progress=progress, chunk_rows=chunk_rows,
                                encoding=encoding)
        df = pl.concat(list(result.parts)).rechunk()
    return Dataset(df, result.items, result.users, result.manifest)


def _write_parts(parts: _Parts, path: Path) -> None:
    """One Parquet file from the parts, a part (one row group) at a time."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for df in parts:
            table = df.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd", write_statistics=False)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def prepare_to(sources: list[Path] | list[str], fmt: str, out: Path | str, *, meta: Path | str | None = None,
               mapping: dict[str, str] | None = None, split: str | None = None, seed: int = 1,
               strict: bool = False, config: PrepareConfig | dict | None = None,
               progress: bool = True, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               workdir: Path | str | None = None, encoding: str = "auto") -> dict[str, Any]:
    """`prepare(...).save(out)` in bounded memory: the interactions go from the temporary parts
    to `out/interactions.parquet` by polars' streaming engine. Returns the manifest written.

    A result of one chunk or less is written exactly as `Dataset.save` writes it, so small
    inputs give the same bytes either way."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="feedbackgen-prepare-", dir=workdir) as work:
        result = _prepare_parts(sources, fmt, Path(work), meta=meta, mapping=mapping, split=split, seed=seed,
                                strict=strict, config=config, progress=progress, chunk_rows=chunk_rows,
                                encoding=encoding)
        if len(result.parts.paths) <= 1:
            dataset = Dataset(pl.concat(list(result.parts)).rechunk(), result.items, result.users, result.manifest)
            dataset.save(out)
            return dataset.manifest
        out.mkdir(parents=True, exist_ok=True)
        table = result.parts.scan()
        target = out / "interactions.parquet"
        atomic_write(target, lambda p: _write_parts(result.parts, p))
        hashes = {target.name: sha256_file(target)}
        for name, df in (("items", result.items), ("users", result.users)):
            path = out / f"{name}.parquet"
            if df is None:
                path.unlink(missing_ok=True)
                continue
            schema = ITEM_SCHEMA if name == "items" else {"user_id": pl.Utf8}
            df = conform(df, schema, name)
            atomic_write(path, lambda p, df=df: df.write_parquet(p, compression="zstd", statistics=False))
            hashes[path.name] = sha256_file(path)
        summary: dict[str, Any] = {"interactions": result.parts.rows}
        summary.update(zip(("users", "items"), table.select(pl.col("user_id").n_unique(), pl.col("item_id").n_unique())
                           .collect(engine="streaming").row(0)))
        summary["splits"] = _split_sizes(table)
        if result.items is not None:
            summary["item_metadata_rows"] = len(result.items)
        manifest = {**result.manifest, "manifest_version": MANIFEST_VERSION, "summary": summary, "hashes": hashes}
        atomic_write_json(out / "manifest.json", manifest)
        return manifest
