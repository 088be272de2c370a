"""`prepare`: raw review files in, a clean, split `Dataset` with explanation targets out.

    load → clean_text → drop_empty → drop_duplicates → copies → scrub_pii → length_limits
         → normalize_ratings → [drop_unassigned] → k_core → split (+ cold start) → explanations
         → keep_referenced

k_core is the last step that drops interactions: the rows that normalize_ratings drops (outside
a declared scale) and, for a split given by the source (--split peter, files), the rows in no
split file (drop_unassigned) go first, so every user and item of the output has at least k rows
in the output, and the k_core record's users and items are the output's. The split, the
cold-start rule and explanations move rows between splits or add columns, never drop rows.

Every step is configured by one field of `PrepareConfig` (validated before anything is read) and
logs a record to the manifest's `steps`. The result is a pure function of the inputs, the seed
and the config: rows stay in source order, and nothing time- or machine-dependent goes into the
tables, so the same inputs give the same Parquet bytes.

A source without review text (MovieLens, the lightgcn layout, a ratings-only CSV) prepares too:
the text-only steps (clean_text on reviews, drop_empty, copies, scrub_pii, length_limits, explanations)
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

import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.config import validate
from feedbackgen.data import duplicates, explanations, preprocess, splits
from feedbackgen.data.dataset import ITEM_SCHEMA, MANIFEST_VERSION, Dataset, conform
from feedbackgen.data.loaders import check_yielded, stream_tables
from feedbackgen.data.parts import Distinct, Parts, StepLog, count_rows, merge_records
from feedbackgen.data.peter_format import read_index
# PrepareConfig is imported from here by callers too
from feedbackgen.data.prepare_config import NO_RATINGS, NO_TEXT, PrepareConfig, check_arguments, default_split
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.io import atomic_write, atomic_write_json, sha256_file


DEFAULT_CHUNK_ROWS = 100_000
MAX_DUPLICATE_PASSES = 64  # each reads the id columns once: past this, time beats memory


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


@dataclass
class _Prepared:
    parts: Parts
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
    split = default_split(fmt, split)
    check_arguments(fmt, split, seed, config)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    problems = Problems(strict=strict)
    log = StepLog(progress)

    # pass 1: load, clean_text, drop_empty
    stream = stream_tables([sources] if isinstance(sources, (str, Path)) else list(sources), fmt, meta=meta,
                           mapping=mapping, problems=problems, chunk_rows=chunk_rows, encoding=encoding)
    loaded = Parts(work, "loaded")
    users_seen, items_seen = Distinct("user_id"), Distinct("item_id")
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
        record = merge_records(cleaned)
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
    rows_in = rows_kept - len(dropped)
    if has_text:
        copies = duplicates.find_copies(remaining, copy_mode)
        dropped |= copies.dropped
        record = dict(copies.record)
        record.pop("mode")
    else:  # no text, no copies of one: said, like the other text-only steps
        copies, record = duplicates.Copies(copy_mode), {"skipped_because": NO_TEXT}
    log(preprocess.step_record("copies", {"mode": copy_mode}, rows_in, rows_kept - len(dropped), touched=0,
                               **record))
    dropped_rows = pl.Series("source_row", sorted(dropped), dtype=pl.Int64).implode()
    aligned = loaded.schema()
    # a split given per source row (PETER index files, the lightgcn files) is known before any
    # step that needs the final rows: read it now, so its rows without a split drop before k_core
    given = split in ("peter", "files")
    index = None
    if split == "peter" and config.split_index_dir is not None:
        index = read_index(Path(config.split_index_dir), info["records"])
        if index is None:
            raise DataError(f"{config.split_index_dir} is not a folder of index files "
                            "(train.index, validation.index, test.index)")
    elif given and "_source_split" not in aligned.columns:
        raise DataError("the peter source has no index folder to split by; use --split random" if split == "peter"
                        else f"the {fmt} source gave no split")  # files: a loader bug, not bad data
    filtered = Parts(work, "filtered")
    scrubbed, limited, lengths = [], [], Counter()
    for chunk in loaded:
        # every chunk gets all columns, each with the type the whole-table concat would give it
        chunk = pl.concat([aligned, chunk], how="diagonal_relaxed").filter(keep_text)
        if dropped:
            chunk = chunk.filter(~pl.col("source_row").is_in(dropped_rows))
        if index is not None:
            chunk = chunk.with_columns(index.gather(chunk["source_row"].to_list()).alias("_source_split"))
        if config.scrub_pii and has_text:
            chunk, record = preprocess.scrub_pii(chunk)
            scrubbed.append(record)
        if (config.min_tokens or config.max_tokens) and has_text:
            chunk, record, counts = preprocess.limit_length(chunk, config.min_tokens, config.max_tokens,
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
        record = merge_records(scrubbed)
        record["replacements"] = dict(sorted(record["replacements"].items()))
        log(record)
    if (config.min_tokens or config.max_tokens) and has_text:
        record = merge_records(limited)
        record["tokens_median_before"] = preprocess.median_of_counts(lengths)
        log(record)

    # normalize_ratings' range, drop_unassigned, k_core: over the id and rating columns, in this
    # order, so that the core is taken over the very rows that reach the output
    ids = filtered.scan()
    scale = None
    if has_ratings:
        observed = (ids.select(pl.col("rating").min().alias("lo"), pl.col("rating").max().alias("hi"))
                    .collect(engine="streaming").row(0)
                    if filtered.rows else None)
        scale = preprocess.rating_scale(config.rating_scale, fmt, info.get("rating_scale"), observed)
    in_range = scale.in_range() if scale is not None else pl.lit(True)
    rows_in_range = count_rows(ids.filter(in_range)) if scale is not None and scale.declared else filtered.rows
    keep = in_range & pl.col("_source_split").is_not_null() if given else in_range
    rows_assigned = count_rows(ids.filter(keep)) if given else rows_in_range
    core_users, core_items, iterations = preprocess.k_core(ids.filter(keep), config.k_core)
    if config.k_core > 1:
        keep = keep & pl.col("user_id").is_in(core_users.implode()) & pl.col("item_id").is_in(core_items.implode())
    rows_cored = count_rows(ids.filter(keep))

    # the split needs the final row count (random) or per-user order (temporal) before pass 3
    codes, test_rows, valid_rows = None, None, None
    params: dict[str, Any] = {"method": split, "seed": seed}
    if rows_cored and split == "random":
        params["ratios"] = list(config.split_ratios)
        codes = splits.random_split_codes(rows_cored, seed, config.split_ratios)
    elif rows_cored and split == "temporal":
        test_rows, valid_rows = splits.temporal_rows(ids.filter(keep).select("user_id", "timestamp", "source_row"))
    elif split == "peter" and config.split_index_dir is not None:
        params["index_dir"] = config.split_index_dir

    # pass 3: the rows kept, rescaled and split
    rated = Parts(work, "rated")
    touched = out_of_range = 0
    for chunk in filtered:
        if scale is not None and scale.declared:
            outside = chunk.filter(~in_range)
            for row, rating in zip(outside["source_row"], outside["rating"]):
                # the row's file line is not kept this far; its position among the records is
                problems.report(_sources(info), None, "rating", f"outside the {scale.scale_from} "
                                f"[{scale.lo:g}, {scale.hi:g}], got {rating:g} (record {row + 1})")
            out_of_range += outside.height
        chunk = chunk.filter(keep)
        if scale is not None:
            chunk, changed = scale.rescaled(chunk)
            touched += changed
        if codes is not None:
            part = codes[rated.rows:rated.rows + chunk.height]
            chunk = chunk.with_columns(pl.Series("split", [splits.SPLIT_CODES[c] for c in part], dtype=pl.Utf8))
        elif test_rows is not None:
            chunk = chunk.with_columns(
                split=pl.when(pl.col("source_row").is_in(test_rows.implode())).then(pl.lit("test"))
                .when(pl.col("source_row").is_in(valid_rows.implode())).then(pl.lit("valid"))
                .otherwise(pl.lit("train")))
        elif given:
            chunk = chunk.with_columns(pl.col("_source_split").alias("split"))
        rated.append(chunk)
    filtered.remove()
    rating_params = {"scale": config.rating_scale}
    if scale is None:
        log(preprocess.step_record("normalize_ratings", rating_params, filtered.rows, filtered.rows, touched=0,
                                   skipped_because=NO_RATINGS))
    else:
        log(preprocess.step_record("normalize_ratings", rating_params, filtered.rows, rows_in_range,
                                   **scale.record(fmt, touched=touched, dropped=out_of_range)))
    if given:
        log(preprocess.step_record("drop_unassigned", {"method": split}, rows_in_range, rows_assigned, touched=0,
                                   dropped_unassigned=rows_in_range - rows_assigned))
    log(preprocess.step_record("k_core", {"k": config.k_core}, rows_assigned, rows_cored, touched=0,
                               iterations=iterations, users=core_users.len(), items=core_items.len()))
    if rated.rows == 0:
        raise DataError(f"no rows left after preprocessing ({problems.describe()}); see the steps above")

    # cold start, over the split and id columns
    table = rated.scan()
    mode = config.cold_start or ("keep" if given else "move_to_train")
    cold: dict[str, Any] = {"cold_start": mode, "cold_before": splits.cold_start_counts(table)}
    moved_rows: set[int] = set()
    if mode == "move_to_train":
        moved_rows, moved = splits.cold_rows_to_move(table)
        cold["moved_to_train"] = moved
    moved_list = pl.Series("source_row", sorted(moved_rows), dtype=pl.Int64).implode()
    final_split = (pl.when(pl.col("source_row").is_in(moved_list)).then(pl.lit("train"))
                   .otherwise(pl.col("split")).alias("split")) if moved_rows else pl.col("split")
    table = table.with_columns(final_split)
    regrouped = duplicates.together(table, copies.group_of) if split != "peter" else {}
    if regrouped:  # keep_all: a copy group never straddles the split
        by_split: dict[str, list[int]] = {}
        for row, name in regrouped.items():
            by_split.setdefault(name, []).append(row)
        final_split = _override(final_split, by_split)
        table = rated.scan().with_columns(final_split)
    if mode == "move_to_train":
        cold["cold_after"] = splits.cold_start_counts(table)
    log(preprocess.step_record("split", params, rated.rows, rated.rows, touched=len(moved_rows),
                               sizes=splits.split_sizes(table), copies_moved=len(regrouped),
                               leaks=duplicates.leaks(table), **cold))

    # explanations: aspects mined over the train texts (read a chunk at a time), then pass 4
    done, scored = explanations.add_targets(rated, final_split, aligned.columns, config, has_text=has_text,
                                            work=work, log=log)
    table = done.scan()

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
        print(f"prepare: {problems.describe()}; {done.rows:,} rows, splits {splits.split_sizes(table)}",
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
        atomic_write(target, result.parts.write_parquet)
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
        summary["splits"] = splits.split_sizes(table)
        if result.items is not None:
            summary["item_metadata_rows"] = len(result.items)
        manifest = {**result.manifest, "manifest_version": MANIFEST_VERSION, "summary": summary, "hashes": hashes}
        atomic_write_json(out / "manifest.json", manifest)
        return manifest
