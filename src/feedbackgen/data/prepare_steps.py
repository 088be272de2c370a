"""`prepare`'s steps, each a small function over one `Run`, and the runner that takes them in order.

RecBole's data module and scikit-learn's `Pipeline` are the examples: a list of named steps, each
saying what it needs (the fields of `Run` it reads), what it does, and what it records (the
manifest `steps` entries it logs). `run_steps` runs them in order; `prepare` builds the manifest
from the finished `Run`. The steps are passes over the table kept on disk (`feedbackgen.data.parts`):
one chunk in memory at a time, so a step that looks at many rows (duplicates, k-core, the split)
first reads the few columns it needs, keeps per-id state, and the next pass applies it.

    load           load, clean_text, drop_empty                  (pass 1, chunk by chunk)
    find_drops     drop_duplicates, copies                       (over the id columns)
    filter_rows    scrub_pii, length_limits                      (pass 2, chunk by chunk)
    plan_core      the rating scale, drop_unassigned and k_core's kept rows, the split's plan
    rate_and_split normalize_ratings, drop_unassigned, k_core    (pass 3, chunk by chunk)
    cold_start     split (cold start, copy groups kept together)
    explain        explanations                                  (pass 4)
    keep_referenced keep_referenced
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data import duplicates, explanations, preprocess, splits
from feedbackgen.data.loaders import check_yielded, stream_tables
from feedbackgen.data.parts import Distinct, Parts, StepLog, count_rows, merge_records
from feedbackgen.data.peter_format import read_index
from feedbackgen.data.prepare_config import NO_RATINGS, NO_TEXT, PrepareConfig
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError

MAX_DUPLICATE_PASSES = 64  # each reads the id columns once: past this, time beats memory


@dataclass
class Run:
    """Everything the steps share: the arguments of `prepare` (first block), then what each step
    leaves for the later ones (each field says which step sets it)."""

    sources: list[Path] | list[str]
    fmt: str
    work: Path
    config: PrepareConfig
    split: str
    seed: int
    problems: Problems
    log: StepLog
    progress: bool
    chunk_rows: int
    meta: Path | str | None = None
    mapping: dict[str, str] | None = None
    encoding: str = "auto"
    # load
    loaded: Parts | None = None
    info: dict[str, Any] = field(default_factory=dict)
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    has_text: bool = False
    has_ratings: bool = False
    keep_text: pl.Expr | None = None
    rows_kept: int = 0
    # find_drops
    dropped: set[int] = field(default_factory=set)
    copies: duplicates.Copies | None = None
    # filter_rows
    aligned: pl.DataFrame | None = None
    filtered: Parts | None = None
    # plan_core
    scale: Any = None
    in_range: pl.Expr | None = None
    rows_in_range: int = 0
    keep: pl.Expr | None = None
    rows_assigned: int = 0
    core: tuple[pl.Series, pl.Series, int] | None = None
    rows_cored: int = 0
    codes: Any = None
    test_rows: pl.Series | None = None
    valid_rows: pl.Series | None = None
    split_params: dict[str, Any] = field(default_factory=dict)
    # rate_and_split
    rated: Parts | None = None
    # cold_start
    final_split: pl.Expr | None = None
    table: pl.LazyFrame | None = None
    # explain
    done: Parts | None = None
    aspects: list[str] = field(default_factory=list)

    @property
    def given(self) -> bool:
        """The split is given per source row (PETER index files, the lightgcn files)."""
        return self.split in ("peter", "files")


@dataclass(frozen=True)
class Step:
    """One step: its name, the manifest records it logs, and the function that does it."""

    name: str
    records: tuple[str, ...]
    run: Callable[[Run], None]


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


# -- load: pass 1 ----------------------------------------------------------------------------------

def _clean_chunk(chunk: pl.DataFrame, fmt: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """clean_text on one chunk, and its record."""
    texts = [c for c in ("text", "summary", "explanation") if c in chunk.columns]
    if not chunk.select(pl.any_horizontal(pl.col(texts).is_not_null().any())).item():
        # nothing to clean (a ratings-only source): skip the per-value loop, log the zero record
        record = preprocess.clean_texts(chunk.clear(), None, tokenized=fmt == "peter")[2]
        record.update(rows_in=chunk.height, rows_out=chunk.height)
        return chunk, record
    chunk, _, record = preprocess.clean_texts(chunk, None, tokenized=fmt == "peter")
    return chunk, record


def load(r: Run) -> None:
    """Needs the arguments. Reads every source a chunk at a time into `loaded` (source order),
    cleaning texts (clean_text) and counting the rows with text (drop_empty drops them in pass 2,
    once it is known whether the source has text at all); sets `info`, `items`, `users`,
    `has_text`, `has_ratings`, `keep_text`, `rows_kept`. Records load, clean_text, drop_empty."""
    config = r.config
    stream = stream_tables([r.sources] if isinstance(r.sources, (str, Path)) else list(r.sources), r.fmt,
                           meta=r.meta, mapping=r.mapping, problems=r.problems, chunk_rows=r.chunk_rows,
                           encoding=r.encoding)
    loaded = r.loaded = Parts(r.work, "loaded")
    users_seen, items_seen = Distinct("user_id"), Distinct("item_id")
    cleaned = []
    text_rows = present_rows = rated_rows = 0
    last_row = -1
    for chunk in stream:
        chunk = chunk.sort("source_row")
        if chunk.height:
            if chunk["source_row"][0] <= last_row:
                raise DataError(f"{r.fmt} loader gave rows out of source order")  # a bug, not bad data
            last_row = chunk["source_row"][-1]
        if "split" in chunk.columns:  # a split given by the source (PETER index files), used by --split peter
            chunk = chunk.rename({"split": "_source_split"})
        users_seen.add(chunk["user_id"])
        items_seen.add(chunk["item_id"])
        if config.clean_text:
            chunk, record = _clean_chunk(chunk, r.fmt)
            cleaned.append(record)
        text_rows += chunk.select(preprocess.has_text_expr().sum()).item()
        present_rows += chunk["text"].count()
        rated_rows += chunk["rating"].count()
        loaded.append(chunk)
    r.info, r.items, r.users = stream.info, stream.items, stream.users
    check_yielded(r.info)
    for f in r.info["files"]:  # how each file was read, when it was guessed: said, never silent
        for key in ("encoding_note", "delimiter_note"):
            if f.get(key) and r.progress:
                print(f"prepare: {f['name']}: {f[key]}", file=sys.stderr)
    # a source "has text" when it gives a text field at all; one whose reviews are all blank is
    # still a review source, and drop_empty leaves nothing of it (an error later, as before)
    r.has_text, r.has_ratings = present_rows > 0, rated_rows > 0
    r.keep_text = preprocess.has_text_expr() if r.has_text and config.drop_empty else pl.lit(True)
    r.rows_kept = text_rows if r.has_text and config.drop_empty else loaded.rows
    r.log(preprocess.step_record("load", {"format": r.fmt}, r.info["records"], r.info["rows"], touched=0,
                                 skipped=r.problems.count, users=users_seen.count(), items=items_seen.count()))
    if config.clean_text:
        record = merge_records(cleaned)
        if not r.has_text:
            record = preprocess.step_record("clean_text", record["params"], loaded.rows, loaded.rows, touched=0,
                                            skipped_because=NO_TEXT + " (item texts still cleaned)")
        r.items, record["items_touched"] = preprocess.clean_item_texts(r.items)
        r.log(record)
    if config.drop_empty:
        r.log(preprocess.step_record("drop_empty", {}, loaded.rows, r.rows_kept, touched=0,
                                     dropped_empty=loaded.rows - r.rows_kept,
                                     **({} if r.has_text else {"skipped_because": NO_TEXT})))


# -- find_drops: duplicates and copies, over the id columns ----------------------------------------

def find_drops(r: Run) -> None:
    """Needs `loaded`, `keep_text`, `rows_kept`. Finds the rows drop_duplicates drops (the latest
    of each (user, item) is kept) and the copies (the same text by several reviews) into
    `dropped` and `copies`. Records drop_duplicates, copies."""
    config, loaded = r.config, r.loaded
    if config.drop_duplicates:
        # a pass groups about ten chunks' worth of pair hashes (some 100 bytes each)
        buckets = min(max(1, -(-r.rows_kept // (10 * r.chunk_rows))), MAX_DUPLICATE_PASSES)
        r.dropped, pairs = preprocess.duplicate_rows(
            loaded.scan(["user_id", "item_id", "timestamp", "source_row", "text"]).filter(r.keep_text)
            .drop("text"), buckets)
        r.log(preprocess.step_record("drop_duplicates", {"keep": "latest"}, r.rows_kept,
                                     r.rows_kept - len(r.dropped), touched=0, duplicate_pairs=pairs,
                                     dropped_duplicates=len(r.dropped)))
    copy_mode = config.copies if config.copies != "auto" else "report" if r.fmt == "peter" else "keep_one"
    remaining = loaded.scan(["user_id", "item_id", "timestamp", "source_row", "text"])
    if r.dropped:
        remaining = remaining.filter(~pl.col("source_row").is_in(
            pl.Series("source_row", sorted(r.dropped), dtype=pl.Int64).implode()))
    rows_in = r.rows_kept - len(r.dropped)
    if r.has_text:
        r.copies = duplicates.find_copies(remaining, copy_mode)
        r.dropped |= r.copies.dropped
        record = dict(r.copies.record)
        record.pop("mode")
    else:  # no text, no copies of one: said, like the other text-only steps
        r.copies, record = duplicates.Copies(copy_mode), {"skipped_because": NO_TEXT}
    r.log(preprocess.step_record("copies", {"mode": copy_mode}, rows_in, r.rows_kept - len(r.dropped), touched=0,
                                 **record))


# -- filter_rows: pass 2 ---------------------------------------------------------------------------

def _source_index(r: Run) -> pl.Series | None:
    """The split per source row read from PETER index files (--split peter with an index folder)."""
    config = r.config
    if r.split == "peter" and config.split_index_dir is not None:
        index = read_index(Path(config.split_index_dir), r.info["records"])
        if index is None:
            raise DataError(f"{config.split_index_dir} is not a folder of index files "
                            "(train.index, validation.index, test.index)")
        return index
    if r.given and "_source_split" not in r.aligned.columns:
        raise DataError("the peter source has no index folder to split by; use --split random" if r.split == "peter"
                        else f"the {r.fmt} source gave no split")  # files: a loader bug, not bad data
    return None


def filter_rows(r: Run) -> None:
    """Needs `loaded`, `dropped`, `keep_text`. Pass 2: every chunk with all columns (`aligned`),
    less the empty and dropped rows, with the given split read now (so its rows without a split
    drop before k_core), PII scrubbed and lengths limited, into `filtered`. Records scrub_pii,
    length_limits."""
    config = r.config
    dropped_rows = pl.Series("source_row", sorted(r.dropped), dtype=pl.Int64).implode()
    r.aligned = r.loaded.schema()
    index = _source_index(r)
    limits = bool(config.min_tokens or config.max_tokens)
    filtered = r.filtered = Parts(r.work, "filtered")
    scrubbed, limited, lengths = [], [], Counter()
    for chunk in r.loaded:
        # every chunk gets all columns, each with the type the whole-table concat would give it
        chunk = pl.concat([r.aligned, chunk], how="diagonal_relaxed").filter(r.keep_text)
        if r.dropped:
            chunk = chunk.filter(~pl.col("source_row").is_in(dropped_rows))
        if index is not None:
            chunk = chunk.with_columns(index.gather(chunk["source_row"].to_list()).alias("_source_split"))
        if config.scrub_pii and r.has_text:
            chunk, record = preprocess.scrub_pii(chunk)
            scrubbed.append(record)
        if limits and r.has_text:
            chunk, record, counts = preprocess.limit_length(chunk, config.min_tokens, config.max_tokens,
                                                            config.over_max)
            limited.append(record)
            lengths.update(counts)
        filtered.append(chunk)
    r.loaded.remove()
    r.dropped = set()
    if not r.has_text:
        for step, on in (("scrub_pii", config.scrub_pii), ("length_limits", limits)):
            if on:
                r.log(preprocess.step_record(step, {}, filtered.rows, filtered.rows, touched=0,
                                             skipped_because=NO_TEXT))
        return
    if config.scrub_pii:
        record = merge_records(scrubbed)
        record["replacements"] = dict(sorted(record["replacements"].items()))
        r.log(record)
    if limits:
        record = merge_records(limited)
        record["tokens_median_before"] = preprocess.median_of_counts(lengths)
        r.log(record)


# -- plan_core: the rows that reach the output, and the split's plan --------------------------------

def plan_core(r: Run) -> None:
    """Needs `filtered`. normalize_ratings' range, drop_unassigned and k_core over the id and
    rating columns, in this order, so that the core is taken over the very rows that reach the
    output; then what the split needs before pass 3 (the final row count, random; per-user order,
    temporal). Sets `scale`, `in_range`, `keep`, the row counts, `core`, `codes` or
    `test_rows`/`valid_rows`, `split_params`. Records nothing (pass 3 does)."""
    config, filtered = r.config, r.filtered
    ids = filtered.scan()
    if r.has_ratings:
        observed = (ids.select(pl.col("rating").min().alias("lo"), pl.col("rating").max().alias("hi"))
                    .collect(engine="streaming").row(0)
                    if filtered.rows else None)
        r.scale = preprocess.rating_scale(config.rating_scale, r.fmt, r.info.get("rating_scale"), observed)
    scale = r.scale
    r.in_range = scale.in_range() if scale is not None else pl.lit(True)
    r.rows_in_range = count_rows(ids.filter(r.in_range)) if scale is not None and scale.declared else filtered.rows
    keep = r.in_range & pl.col("_source_split").is_not_null() if r.given else r.in_range
    r.rows_assigned = count_rows(ids.filter(keep)) if r.given else r.rows_in_range
    core_users, core_items, iterations = preprocess.k_core(ids.filter(keep), config.k_core)
    if config.k_core > 1:
        keep = keep & pl.col("user_id").is_in(core_users.implode()) & pl.col("item_id").is_in(core_items.implode())
    r.keep, r.core = keep, (core_users, core_items, iterations)
    r.rows_cored = count_rows(ids.filter(keep))
    r.split_params = {"method": r.split, "seed": r.seed}
    if r.rows_cored and r.split == "random":
        r.split_params["ratios"] = list(config.split_ratios)
        r.codes = splits.random_split_codes(r.rows_cored, r.seed, config.split_ratios)
    elif r.rows_cored and r.split == "temporal":
        r.test_rows, r.valid_rows = splits.temporal_rows(ids.filter(keep).select("user_id", "timestamp",
                                                                                  "source_row"))
    elif r.split == "peter" and config.split_index_dir is not None:
        r.split_params["index_dir"] = config.split_index_dir


# -- rate_and_split: pass 3 ------------------------------------------------------------------------

def _with_split(r: Run, chunk: pl.DataFrame, offset: int) -> pl.DataFrame:
    """`chunk` (rows `offset`.. of the kept rows) with its split column, as planned by plan_core."""
    if r.codes is not None:
        part = r.codes[offset:offset + chunk.height]
        return chunk.with_columns(pl.Series("split", [splits.SPLIT_CODES[c] for c in part], dtype=pl.Utf8))
    if r.test_rows is not None:
        return chunk.with_columns(
            split=pl.when(pl.col("source_row").is_in(r.test_rows.implode())).then(pl.lit("test"))
            .when(pl.col("source_row").is_in(r.valid_rows.implode())).then(pl.lit("valid"))
            .otherwise(pl.lit("train")))
    if r.given:
        return chunk.with_columns(pl.col("_source_split").alias("split"))
    return chunk


def rate_and_split(r: Run) -> None:
    """Needs what plan_core set. Pass 3: the kept rows, rescaled to the rating scale, each with its
    split, into `rated`; each rating outside a declared scale is reported as a problem. Records
    normalize_ratings, drop_unassigned (a given split), k_core. Raises DataError when no row is left."""
    scale, filtered = r.scale, r.filtered
    rated = r.rated = Parts(r.work, "rated")
    touched = out_of_range = 0
    for chunk in filtered:
        if scale is not None and scale.declared:
            outside = chunk.filter(~r.in_range)
            for row, rating in zip(outside["source_row"], outside["rating"]):
                # the row's file line is not kept this far; its position among the records is
                r.problems.report(_sources(r.info), None, "rating", f"outside the {scale.scale_from} "
                                  f"[{scale.lo:g}, {scale.hi:g}], got {rating:g} (record {row + 1})")
            out_of_range += outside.height
        chunk = chunk.filter(r.keep)
        if scale is not None:
            chunk, changed = scale.rescaled(chunk)
            touched += changed
        rated.append(_with_split(r, chunk, rated.rows))
    filtered.remove()
    rating_params = {"scale": r.config.rating_scale}
    if scale is None:
        r.log(preprocess.step_record("normalize_ratings", rating_params, filtered.rows, filtered.rows, touched=0,
                                     skipped_because=NO_RATINGS))
    else:
        r.log(preprocess.step_record("normalize_ratings", rating_params, filtered.rows, r.rows_in_range,
                                     **scale.record(r.fmt, touched=touched, dropped=out_of_range)))
    if r.given:
        r.log(preprocess.step_record("drop_unassigned", {"method": r.split}, r.rows_in_range, r.rows_assigned,
                                     touched=0, dropped_unassigned=r.rows_in_range - r.rows_assigned))
    core_users, core_items, iterations = r.core
    r.log(preprocess.step_record("k_core", {"k": r.config.k_core}, r.rows_assigned, r.rows_cored, touched=0,
                                 iterations=iterations, users=core_users.len(), items=core_items.len()))
    if rated.rows == 0:
        raise DataError(f"no rows left after preprocessing ({r.problems.describe()}); see the steps above")


# -- cold_start: the split's last moves ------------------------------------------------------------

def cold_start(r: Run) -> None:
    """Needs `rated`, `copies`. Over the split and id columns: valid/test rows of users or items
    unseen in train move to train (`cold_start`, default move_to_train; keep for a given split),
    and a copy group never straddles the split (keep_all). Sets `final_split`, `table`. Records split."""
    rated = r.rated
    table = rated.scan()
    mode = r.config.cold_start or ("keep" if r.given else "move_to_train")
    cold: dict[str, Any] = {"cold_start": mode, "cold_before": splits.cold_start_counts(table)}
    moved_rows: set[int] = set()
    if mode == "move_to_train":
        moved_rows, moved = splits.cold_rows_to_move(table)
        cold["moved_to_train"] = moved
    moved_list = pl.Series("source_row", sorted(moved_rows), dtype=pl.Int64).implode()
    final_split = (pl.when(pl.col("source_row").is_in(moved_list)).then(pl.lit("train"))
                   .otherwise(pl.col("split")).alias("split")) if moved_rows else pl.col("split")
    table = table.with_columns(final_split)
    regrouped = duplicates.together(table, r.copies.group_of) if r.split != "peter" else {}
    if regrouped:  # keep_all: a copy group never straddles the split
        by_split: dict[str, list[int]] = {}
        for row, name in regrouped.items():
            by_split.setdefault(name, []).append(row)
        final_split = _override(final_split, by_split)
        table = rated.scan().with_columns(final_split)
    if mode == "move_to_train":
        cold["cold_after"] = splits.cold_start_counts(table)
    r.log(preprocess.step_record("split", r.split_params, rated.rows, rated.rows, touched=len(moved_rows),
                                 sizes=splits.split_sizes(table), copies_moved=len(regrouped),
                                 leaks=duplicates.leaks(table), **cold))
    r.final_split, r.table = final_split, table


# -- explain, keep_referenced ----------------------------------------------------------------------

def explain(r: Run) -> None:
    """Needs `rated`, `final_split`, `aligned`. Aspects mined over the train texts (read a chunk at
    a time), then pass 4 adds the explanation targets into `done`; sets `aspects`, `table`.
    Records explanations (`feedbackgen.data.explanations`)."""
    r.done, scored = explanations.add_targets(r.rated, r.final_split, r.aligned.columns, r.config,
                                              has_text=r.has_text, work=r.work, log=r.log)
    r.aspects = [w for w, _ in scored]
    r.table = r.done.scan()


def keep_referenced(r: Run) -> None:
    """Needs `done`, `items`, `users`. The item and user tables keep only the ids the interactions
    name. Records keep_referenced."""
    referenced = {key: r.table.select(pl.col(key).unique()).collect(engine="streaming")
                  for key in ("item_id", "user_id")}
    r.items, items_dropped = preprocess.keep_referenced(r.items, referenced["item_id"], "item_id")
    r.users, users_dropped = preprocess.keep_referenced(r.users, referenced["user_id"], "user_id")
    r.log(preprocess.step_record("keep_referenced", {}, r.done.rows, r.done.rows, touched=0,
                                 items_dropped=items_dropped, users_dropped=users_dropped))


STEPS: tuple[Step, ...] = (
    Step("load", ("load", "clean_text", "drop_empty"), load),
    Step("find_drops", ("drop_duplicates", "copies"), find_drops),
    Step("filter_rows", ("scrub_pii", "length_limits"), filter_rows),
    Step("plan_core", (), plan_core),
    Step("rate_and_split", ("normalize_ratings", "drop_unassigned", "k_core"), rate_and_split),
    Step("cold_start", ("split",), cold_start),
    Step("explain", ("explanations",), explain),
    Step("keep_referenced", ("keep_referenced",), keep_referenced),
)


def run_steps(run: Run, steps: tuple[Step, ...] = STEPS) -> Run:
    """Run `steps` in order over `run` (each logs its records into `run.log`). Returns `run`."""
    for step in steps:
        step.run(run)
    return run


def manifest_of(run: Run) -> dict[str, Any]:
    """The manifest of a finished run (before `Dataset.save` adds the summary and hashes)."""
    return {
        "format": run.fmt,
        "source": run.info,
        "problems": run.problems.to_manifest(),
        "steps": run.log.steps,
        "config": run.config.model_dump(mode="json"),
        "seed": run.seed,
        "split": run.split,
        "aspects": run.aspects,
        "has_text": run.has_text,
        "has_ratings": run.has_ratings,
        "feedback": "explicit" if run.has_ratings else "implicit",
    }
