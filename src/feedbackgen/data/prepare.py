"""`prepare`: raw review files in, a clean, split `Dataset` with explanation targets out.

    load → clean_text → drop_empty → drop_duplicates → scrub_pii → length_limits → k_core
         → normalize_ratings → split (+ cold start) → explanations → keep_referenced

Every step is configured by one field of `PrepareConfig` (validated before anything is read) and
logs a record to the manifest's `steps`. The result is a pure function of the inputs, the seed
and the config: rows stay in source order, and nothing time- or machine-dependent goes into the
tables, so the same inputs give the same Parquet bytes.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from feedbackgen.config import StrictModel, validate
from feedbackgen.data import aspects as aspect_mining
from feedbackgen.data import preprocess, splits
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.loaders import FORMATS, load_tables
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError, DataError


class PrepareConfig(StrictModel):
    """Every preprocessing choice. Set from the command line with `--set key=value`."""

    clean_text: bool = Field(True, description="NFKC, decode HTML entities, strip tags and control characters")
    drop_empty: bool = Field(True, description="drop reviews with no text")
    drop_duplicates: bool = Field(True, description="keep the latest review per (user, item)")
    scrub_pii: bool = Field(True, description="replace e-mails, URLs, phones, cards, @handles by placeholders")
    min_tokens: int = Field(0, ge=0, le=100_000, description="drop reviews shorter than this (0 = off)")
    max_tokens: int = Field(0, ge=0, le=100_000, description="longest review kept, in tokens (0 = no limit)")
    over_max: Literal["truncate", "drop"] = Field("truncate", description="what to do with longer reviews")
    k_core: int = Field(0, ge=0, le=10_000, description="keep users and items with >= k reviews (0 = off)")
    rating_scale: Literal["auto"] | tuple[float, float] = Field(
        "auto", description="source rating range mapped onto 1-5; auto = observed min/max (1-5 data unchanged)")
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


def _check_arguments(fmt: str, split: str, seed: Any, config: PrepareConfig) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if split not in splits.SPLIT_METHODS:
        raise ConfigError(f"unknown split {split!r}; expected one of: {', '.join(splits.SPLIT_METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if split == "peter" and fmt != "peter" and config.split_index_dir is None:
        raise ConfigError("--split peter reads PETER index files: use it with --format peter, or set "
                          "split_index_dir=FOLDER")


def _split(df: pl.DataFrame, method: str, seed: int, config: PrepareConfig, n_records: int,
           log: _Log) -> pl.DataFrame:
    rows_in = df.height
    params: dict[str, Any] = {"method": method, "seed": seed}
    extra: dict[str, Any] = {}
    if method == "peter":
        if config.split_index_dir is not None:
            params["index_dir"] = config.split_index_dir
            df = df.with_columns(splits.index_split(df, config.split_index_dir, n_records))
        elif "_source_split" in df.columns:
            df = df.with_columns(pl.col("_source_split").alias("split"))
        else:
            raise DataError("the peter source has no index folder to split by; use --split random")
        unassigned = int(df["split"].is_null().sum())
        df = df.filter(pl.col("split").is_not_null())
        extra["dropped_unassigned"] = unassigned
    else:
        if method == "random":
            params["ratios"] = list(config.split_ratios)
        df = splits.assign_split(df, method, seed=seed, ratios=config.split_ratios)
    mode = config.cold_start or ("keep" if method == "peter" else "move_to_train")
    df, cold = splits.apply_cold_start(df, mode)
    moved = sum(cold.get("moved_to_train", {}).values())
    log(preprocess.step_record("split", params, rows_in, df.height, touched=moved,
                               sizes=splits.split_sizes(df), **extra, **cold))
    return df.drop("_source_split", strict=False)


def _explanations(df: pl.DataFrame, config: PrepareConfig, log: _Log) -> tuple[pl.DataFrame, list[str]]:
    has_source = "explanation" in df.columns and df["explanation"].null_count() < df.height
    mode = config.explanations
    if mode == "auto":
        mode = "source" if has_source else "extract"
    params: dict[str, Any] = {"mode": mode}
    if mode == "off":
        df = df.drop("aspect", "explanation", "sentiment", strict=False)
        log(preprocess.step_record("explanations", params, df.height, df.height, touched=0))
        return df, []
    if mode == "source":
        if not has_source:
            raise DataError("explanations=source, but this source has no explanations; use extract")
        train = df.filter(pl.col("split") == "train")
        counts = train["aspect"].drop_nulls().value_counts(name="n")
        scored = sorted(zip(counts["aspect"].to_list(), counts["n"].to_list()), key=lambda x: (-x[1], x[0]))
    else:
        params.update(n_aspects=config.n_aspects, window=config.aspect_window,
                      max_tokens=config.explanation_max_tokens, sentiment_threshold=config.sentiment_threshold)
        # Aspects come from train rows only, so nothing about valid/test leaks into the targets.
        scored = aspect_mining.mine_aspects(df.filter(pl.col("split") == "train")["text"],
                                            top_n=config.n_aspects, window=config.aspect_window)
        df = aspect_mining.add_explanations(df, [w for w, _ in scored], max_tokens=config.explanation_max_tokens,
                                            threshold=config.sentiment_threshold)
    with_expl = df.height - df["explanation"].null_count()
    by_split = {s: int(n) for s, n in df.filter(pl.col("explanation").is_not_null())
                .group_by("split").len().sort("split").iter_rows()}
    log(preprocess.step_record(
        "explanations", params, df.height, df.height, touched=with_expl if mode == "extract" else 0,
        with_explanation=with_expl, without_explanation=df.height - with_expl,
        with_explanation_by_split=by_split, distinct_aspects_used=df["aspect"].drop_nulls().n_unique(),
        aspects=[[w, int(s)] for w, s in scored]))
    return df, [w for w, _ in scored]


def prepare(sources: list[Path] | list[str], fmt: str, *, meta: Path | str | None = None,
            mapping: dict[str, str] | None = None, split: str = "random", seed: int = 1,
            strict: bool = False, config: PrepareConfig | dict | None = None,
            progress: bool = True) -> Dataset:
    """Load `sources` in format `fmt`, clean, filter, split and add explanation targets.

    Bad records are skipped and counted (`strict` stops at the first one). The manifest records
    the source files (names, sizes, sha256), the problems, every step with its counts, the
    config, the seed and the split.
    """
    config = validate(PrepareConfig, config, "prepare config")
    _check_arguments(fmt, split, seed, config)
    problems = Problems(strict=strict)
    log = _Log(progress)

    loaded = load_tables([sources] if isinstance(sources, (str, Path)) else list(sources), fmt, meta=meta, mapping=mapping, problems=problems)
    df = loaded.interactions.sort("source_row")
    if "split" in df.columns:  # a split given by the source (PETER index files), used by --split peter
        df = df.rename({"split": "_source_split"})
    items, users = loaded.items, loaded.users
    log(preprocess.step_record("load", {"format": fmt}, loaded.info["records"], df.height, touched=0,
                               skipped=problems.count, users=df["user_id"].n_unique(),
                               items=df["item_id"].n_unique()))

    if config.clean_text:
        df, items, record = preprocess.clean_texts(df, items, tokenized=fmt == "peter")
        log(record)
    if config.drop_empty:
        df, record = preprocess.drop_empty(df)
        log(record)
    if config.drop_duplicates:
        df, record = preprocess.drop_duplicates(df)
        log(record)
    if config.scrub_pii:
        df, record = preprocess.scrub_pii(df)
        log(record)
    if config.min_tokens or config.max_tokens:
        df, record = preprocess.limit_length(df, config.min_tokens, config.max_tokens, config.over_max)
        log(record)
    df, record = preprocess.k_core(df, config.k_core)
    log(record)
    df, record = preprocess.normalize_ratings(df, config.rating_scale, problems)
    log(record)
    if df.height == 0:
        raise DataError(f"no rows left after preprocessing ({problems.describe()}); see the steps above")

    df = _split(df, split, seed, config, loaded.info["records"], log)
    df, aspect_words = _explanations(df, config, log)

    items, items_dropped = preprocess.keep_referenced(items, df, "item_id")
    users, users_dropped = preprocess.keep_referenced(users, df, "user_id")
    log(preprocess.step_record("keep_referenced", {}, df.height, df.height, touched=0,
                               items_dropped=items_dropped, users_dropped=users_dropped))

    manifest = {
        "format": fmt,
        "source": loaded.info,
        "problems": problems.to_manifest(),
        "steps": log.steps,
        "config": config.model_dump(mode="json"),
        "seed": seed,
        "split": split,
        "aspects": aspect_words,
    }
    if progress:
        print(f"prepare: {problems.describe()}; {df.height:,} rows, splits {splits.split_sizes(df)}",
              file=sys.stderr)
    return Dataset(df.sort("source_row"), items, users, manifest)
