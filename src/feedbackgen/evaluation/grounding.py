"""Item grounding: is an explanation of item i about item i?

A text that explains item i should say something that is true of i. PETER's feature-level
measures ask this of one aspect word: FMR (feature matching ratio, whether the generated text
contains the ground-truth feature) and FCR (feature coverage ratio, how many distinct features
the texts mention) (Li, Zhang & Chen, "Personalized Transformer for Explainable
Recommendation", ACL 2021, section 5.2; `feedbackgen.evaluation.metrics` `fmr`/`fcr`). Item
grounding is an item-level analogue, in the spirit of grounding / faithfulness measures: it asks
whether the training sentence a text is closest to was written about the same item.

    item_grounding(predictions, dataset)   # {"item_grounding": 0.91, "scored": 500, ...}

Definition (feedbackgen). The reference pool is the training split's sentences of `column`
(the PETER-style `explanation` by default), identical sentences merged with the set of items
they were written about. Each prediction's text and each pool sentence becomes a TF-IDF vector
(scikit-learn `TfidfVectorizer` fitted on the pool: lower-cased, words of two or more
characters, smoothed idf, l2-normalised); the prediction's nearest pool sentence is the one of
highest cosine similarity (exact ties: the first in pool order). The pool and the rule are
`feedbackgen.features.sentences.SentencePool`, which the generators' candidate choice uses too
(`feedbackgen.models.rerank`). A prediction is *grounded* when its item is among that sentence's
items. `item_grounding` is the share of scored predictions that are grounded;
higher is better. A text copied from the item's own training sentences scores 1 by construction;
one copied from another item's scores 0 unless that very sentence was also written about the
item.

Left out of the share, and counted: empty texts (a generator that says it has nothing about the
item), items without a training sentence (nothing to be grounded in), and texts with no word in
the pool's vocabulary (their nearest sentence would be arbitrary).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError
from feedbackgen.features.sentences import SentencePool

GROUNDING_SOURCE = ("feedbackgen: item-level analogue of PETER's FMR/FCR (Li et al., ACL 2021); nearest "
                    "training sentence by TF-IDF cosine (scikit-learn)")


def _prediction_frame(predictions: pl.DataFrame | Iterable[Any]) -> pl.DataFrame:
    """(item_id, text) per prediction from a DataFrame, dicts or `Feedback` objects."""
    if isinstance(predictions, pl.DataFrame):
        df = predictions
    else:
        rows = []
        for n, p in enumerate(predictions):
            row = p if isinstance(p, Mapping) else getattr(p, "__dict__", None)
            if row is None or "item_id" not in row or "text" not in row:
                raise DataError(f"prediction {n} has no item_id and text (expected a dict or a Feedback)")
            rows.append({"item_id": row["item_id"], "text": row["text"]})
        df = pl.DataFrame(rows, schema={"item_id": pl.Utf8, "text": pl.Utf8})
    missing = [c for c in ("item_id", "text") if c not in df.columns]
    if missing:
        raise DataError(f"predictions lack column(s) {', '.join(missing)} (columns: {', '.join(df.columns)})")
    return df.select(pl.col("item_id").cast(pl.Utf8), pl.col("text").cast(pl.Utf8))


def item_grounding(predictions: pl.DataFrame | Iterable[Any], dataset: Dataset,
                   column: str = "explanation") -> dict[str, Any]:
    """Item grounding of `predictions` against `dataset`'s training sentences (module docstring).

    predictions: a DataFrame with item_id and text (PRED.jsonl read by the report, or
    `recommend`'s output), or an iterable of dicts / `Feedback`. column: the training text column
    (`explanation`, or `text` for whole reviews).

    Returns {"item_grounding": share in [0, 1] or None when nothing was scored, "grounded": count,
    "scored": count, "empty": count, "unknown_item": count, "out_of_vocabulary": count,
    "column": column}. Raises DataError when the dataset lacks `column` or has no training text
    in it, or when a prediction has no item_id / text.
    """
    if column not in dataset.interactions.columns:
        raise DataError(f"item grounding needs the {column!r} column, which this dataset lacks "
                        f"(columns: {', '.join(dataset.interactions.columns)})")
    train = dataset.train.filter(pl.col(column).is_not_null() & (pl.col(column).str.strip_chars() != ""))
    if not len(train):
        raise DataError(f"item grounding: the training split has no {column!r} text to ground in")
    pool = SentencePool(train[column].to_list(), train["item_id"].to_list())

    df = _prediction_frame(predictions)
    texts, items = df["text"].to_list(), df["item_id"].to_list()
    empty = [not t or not t.strip() for t in texts]
    unknown = [not e and i not in pool.known_items for e, i in zip(empty, items)]
    candidates = [n for n in range(len(df)) if not empty[n] and not unknown[n]]
    grounded = scored = out_of_vocabulary = 0
    if candidates:
        nearest, has_words = pool.nearest([texts[n] for n in candidates])
        out_of_vocabulary = int((~has_words).sum())
        kept = [(n, j) for n, j, ok in zip(candidates, nearest, has_words) if ok]
        grounded = sum(items[n] in pool.items_of[j] for n, j in kept)
        scored = len(kept)
    return {"item_grounding": grounded / scored if scored else None, "grounded": int(grounded),
            "scored": scored, "empty": int(sum(empty)), "unknown_item": int(sum(unknown)),
            "out_of_vocabulary": out_of_vocabulary, "column": column}


__all__ = ["GROUNDING_SOURCE", "item_grounding"]
