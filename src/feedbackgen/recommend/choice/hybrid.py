"""A collaborative choice model blended with a content model of the items' text.

Content: each item is one MiniLM embedding (`feedbackgen.embeddings`, all-MiniLM-L6-v2) of its
metadata (title, brand, categories, description) and its train reviews (the summaries, then the
first review's text; MiniLM reads the first 128 tokens). A user's profile is the mean of the
embeddings of the items they took in train; content score = cosine(profile, item).

Blend, per user: score = (1 - weight) · z(collaborative) + weight · z(content), where z
standardises a user's scores over all the model's items (mean 0, standard deviation 1), so the
two scales meet. Items with metadata but no train interaction (cold items) are scored by content
alone (their collaborative z is 0): the collaborative model cannot score them at all. The weight
is chosen on the valid split like any hyper-parameter (0 = collaborative only is a candidate).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field

from feedbackgen.data.dataset import Dataset
from feedbackgen.embeddings import embed
from feedbackgen.recommend.choice.base import (CHOICE_MODELS, ChoiceConfig, ChoiceModel, Interactions,
                                               register_choice)

TEXT_CHARS = 1000  # characters of text per item: MiniLM reads at most 128 tokens (~500 characters) anyway


class HybridConfig(ChoiceConfig):
    base: Literal["ease", "itemknn", "als", "bpr", "popularity"] = Field(
        "ease", description="the collaborative model (it runs its own validation search)")
    base_config: dict[str, Any] = Field(default_factory=dict, description="settings of the collaborative model")
    weight: float = Field(0.2, ge=0.0, le=1.0, description="share of the content score in the blend")


def item_texts(dataset: Dataset, items: list[str]) -> list[str]:
    """One text per item: its metadata, then the summaries of its train reviews, then its first
    train review; "" for an item with neither."""
    meta: dict[str, str] = {}
    if dataset.items is not None:
        for row in dataset.items.iter_rows(named=True):
            parts = [row.get("title"), row.get("brand"), ", ".join(row.get("categories") or []),
                     row.get("description")]
            meta[row["item_id"]] = ". ".join(p for p in parts if p)
    reviews = (dataset.train.sort(["item_id", "user_id"])
               .group_by("item_id", maintain_order=True)
               .agg(pl.col("summary").drop_nulls(), pl.col("text").drop_nulls().first()))
    review_text = {i: "; ".join(s) + (" | " + t if t else "") for i, s, t in reviews.iter_rows()}
    return [" | ".join(p for p in (meta.get(i, ""), review_text.get(i, "")) if p)[:TEXT_CHARS] for i in items]


def zscore(scores: np.ndarray) -> np.ndarray:
    std = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


@register_choice
class Hybrid(ChoiceModel):
    """`base` (collaborative) blended with MiniLM content embeddings; see the module docstring.

    Memory: the base model's, plus items x 384 float32 embeddings. Fit time: the base model's,
    plus one MiniLM pass over the items' texts (about 10 ms per item on one CPU core).
    """

    name = "hybrid"
    Config = HybridConfig
    grid = {"weight": (0.0, 0.2, 0.4, 0.6, 0.8)}

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self._parts: tuple[Interactions, ChoiceModel, np.ndarray] | None = None

    def model_items(self, dataset: Dataset) -> list[str] | None:
        known = set(dataset.train["item_id"].unique().to_list())
        if dataset.items is not None:
            known |= set(dataset.items["item_id"].to_list())
        return sorted(known)

    def parts(self, data: Interactions, dataset: Dataset) -> tuple[Interactions, ChoiceModel, np.ndarray]:
        """The collaborative model and the item embeddings, computed once per fit and shared by
        every weight the search tries."""
        if self._parts is None or self._parts[0] is not data:

            cf = CHOICE_MODELS[self.config.base]({"search": self.config.search, "seed": self.config.seed,
                                                  **self.config.base_config}).fit(dataset)
            texts = item_texts(dataset, data.items)
            vectors = embed(texts)
            vectors[[n for n, t in enumerate(texts) if not t]] = 0.0  # no text: no content, not the embedding of " "
            self._parts = (data, cf, vectors)
        return self._parts

    def fit_candidate(self, params: dict[str, Any], data: Interactions, dataset: Dataset) -> ChoiceModel:
        candidate = type(self)({**self.config.model_dump(exclude_unset=True), **params, "search": False})
        candidate._parts = self.parts(data, dataset)
        candidate._fit_data(data, dataset)
        return candidate

    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:
        _, cf, self.item_embeddings = self.parts(data, dataset)
        self._parts = None  # the fitted model keeps what it needs below, not the training data
        self.set_base(cf)
        self.config.base_config = cf.config.model_dump()
        if cf.search_record is not None:
            self.base_search = cf.search_record

    def set_base(self, cf: ChoiceModel) -> None:
        self.base = cf
        self.base_cols = self.item_cols(cf.item_ids)  # column of each collaborative item among ours

    def fit(self, dataset: Dataset) -> Hybrid:
        super().fit(dataset)
        if self.search_record is not None and getattr(self, "base_search", None) is not None:
            self.search_record["base_search"] = self.base_search
        return self

    @property
    def folds_history(self) -> bool:  # a history is scored when the collaborative part can score one
        return self.base.folds_history

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.blend(self.base.score_rows(rows), self.seen[rows])

    def score_history(self, taken: sp.csr_matrix) -> np.ndarray:
        return self.blend(self.base.score_history(taken[:, self.base_cols].tocsr()), taken)

    def blend(self, cf_scores: np.ndarray, taken: sp.csr_matrix) -> np.ndarray:
        """The collaborative scores (of the base's items) blended with the content score of the
        mean embedding of the `taken` items (rows x our items)."""
        collaborative = np.repeat(cf_scores.mean(axis=1, keepdims=True), len(self.item_ids), axis=1)
        collaborative[:, self.base_cols] = cf_scores
        counts = np.asarray(taken.sum(axis=1)).ravel()
        profiles = (taken @ self.item_embeddings) / np.maximum(counts, 1.0)[:, None]
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        content = (profiles / np.where(norms > 0, norms, 1.0)) @ self.item_embeddings.T
        w = self.config.weight
        return ((1.0 - w) * zscore(collaborative) + w * zscore(content.astype(np.float64))).astype(np.float64)

    def get_arrays(self) -> dict[str, np.ndarray]:
        return {"item_embeddings": self.item_embeddings, "base_cols": self.base_cols,
                **{f"base.{k}": v for k, v in self.base.get_arrays().items()}}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_embeddings = arrays["item_embeddings"]
        cols = arrays["base_cols"]
        cf = CHOICE_MODELS[self.config.base](self.config.base_config)
        cf.user_ids, cf.item_ids = self.user_ids, [self.item_ids[c] for c in cols]
        cf._index()
        cf.seen = self.seen[:, cols].tocsr()
        cf.popularity = self.popularity[cols]
        cf.set_arrays({k.removeprefix("base."): v for k, v in arrays.items() if k.startswith("base.")})
        cf.is_fitted = True
        self.set_base(cf)
