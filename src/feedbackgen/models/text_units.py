"""Which text a generator learns to write: the aspect sentence (PETER's target) or the whole review."""

from __future__ import annotations

from typing import Literal

import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError

Target = Literal["explanation", "review"]


def target_column(target: Target) -> str:
    return "explanation" if target == "explanation" else "text"


def target_rows(dataset: Dataset, split: str, target: Target) -> pl.DataFrame:
    """Rows of `split` that have a non-empty text for `target`."""
    col = target_column(target)
    if col not in dataset.interactions.columns:
        raise ConfigError(f"target {target!r} needs the {col!r} column, which this dataset lacks; "
                          "prepare it with explanation extraction on, or use target=review")
    df = dataset.split(split)
    return df.filter(pl.col(col).is_not_null() & (pl.col(col).str.strip_chars() != ""))
