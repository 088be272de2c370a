"""`prepare`: raw review files in, a clean, split `Dataset` with explanation targets out.

    load → clean_text → drop_empty → drop_duplicates → copies → scrub_pii → length_limits
         → normalize_ratings → [drop_unassigned] → k_core → split (+ cold start) → explanations
         → keep_referenced

k_core is the last step that drops interactions: the rows that normalize_ratings drops (outside
a declared scale) and, for a split given by the source (--split peter, files), the rows in no
split file (drop_unassigned) go first, so every user and item of the output has at least k rows
in the output, and the k_core record's users and items are the output's. The split, the
cold-start rule and explanations move rows between splits or add columns, never drop rows.

The steps are a list of small functions run in order (`feedbackgen.data.prepare_steps`: what
each needs, does and records); every record step is configured by one field of `PrepareConfig`
(validated before anything is read) and logs a record to the manifest's `steps`. The result is a pure function of the inputs, the seed
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.config import validate
from feedbackgen.data import splits
from feedbackgen.data.dataset import Dataset, write_dataset
from feedbackgen.data.parts import Parts, StepLog
# PrepareConfig is imported from here by callers too
from feedbackgen.data.prepare_config import PrepareConfig, check_arguments, default_split
from feedbackgen.data.prepare_steps import Run, manifest_of, run_steps
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError

DEFAULT_CHUNK_ROWS = 100_000


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
    """Every step of `prepare` (`feedbackgen.data.prepare_steps.STEPS`), one chunk in memory at a
    time, the table between passes in `work`; the arguments checked before anything is read."""
    config = validate(PrepareConfig, config, "prepare config")
    split = default_split(fmt, split)
    check_arguments(fmt, split, seed, config)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    run = run_steps(Run(sources, fmt, work, config, split, seed, Problems(strict=strict), StepLog(progress),
                        progress, chunk_rows, meta=meta, mapping=mapping, encoding=encoding))
    if progress:
        print(f"prepare: {run.problems.describe()}; {run.done.rows:,} rows, splits {splits.split_sizes(run.table)}",
              file=sys.stderr)
    return _Prepared(run.done, run.items, run.users, manifest_of(run))


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
        table = result.parts.scan()
        summary: dict[str, Any] = {"interactions": result.parts.rows}
        summary.update(zip(("users", "items"), table.select(pl.col("user_id").n_unique(), pl.col("item_id").n_unique())
                           .collect(engine="streaming").row(0)))
        summary["splits"] = splits.split_sizes(table)
        if result.items is not None:
            summary["item_metadata_rows"] = len(result.items)
        return write_dataset(out, result.parts.write_parquet, result.items, result.users, result.manifest, summary)
