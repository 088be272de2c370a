"""The `explanations` step of `prepare`: explanation targets (aspect, explanation sentence,
sentiment) for every row, mined from the train texts (`extract`), taken from the source
(`source`), or none (`off`; forced on a source without text, and said in the manifest).

Aspects are mined over train rows only, so nothing about valid/test leaks into the targets
(PETER's explanation extraction, `data/aspects.py`).
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

import polars as pl

from feedbackgen.data import aspects as aspect_mining
from feedbackgen.data import preprocess
from feedbackgen.data.dataset import EXTRA_INTERACTION_SCHEMA, INTERACTION_SCHEMA, conform
from feedbackgen.data.parts import Parts, count_rows
from feedbackgen.data.prepare_config import NO_TEXT, PrepareConfig
from feedbackgen.errors import DataError


def add_targets(rated: Parts, final_split: pl.Expr, columns: list[str], config: PrepareConfig, *, has_text: bool,
                work: Path, log: Callable[[dict[str, Any]], None]) -> tuple[Parts, list[tuple[str, int]]]:
    """The last pass: `rated`'s rows with their final split (`final_split`, an expression over
    split and source_row) and explanation targets, conformed to the interaction schema, as a new
    table in `work` (`rated` is removed). Logs the step's record; returns the table and the
    aspects with their counts (most frequent first). Raises DataError for explanations=source on
    a source without explanations."""
    table = rated.scan().with_columns(final_split)
    has_source = "explanation" in columns and count_rows(table.filter(pl.col("explanation").is_not_null())) > 0
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
    done = Parts(work, "done")
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
        with_expl = count_rows(table.filter(pl.col("explanation").is_not_null()))
        by_split = {s: int(n) for s, n in table.filter(pl.col("explanation").is_not_null())
                    .group_by("split").len().sort("split").collect(engine="streaming").iter_rows()}
        distinct = table.select(pl.col("aspect").drop_nulls().n_unique()).collect(engine="streaming").item()
        log(preprocess.step_record(
            "explanations", params, done.rows, done.rows, touched=with_expl if explain_mode == "extract" else 0,
            with_explanation=with_expl, without_explanation=done.rows - with_expl,
            with_explanation_by_split=by_split, distinct_aspects_used=distinct,
            aspects=[[w, int(s)] for w, s in scored]))
    return done, scored
