"""`popular`: the item's most frequent training sentence. A floor every generator must clear."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from feedbackgen.config import StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.models.base import Generator, register
from feedbackgen.models.rating import DelegatedRating, rating_model_from_state, rating_model_state
from feedbackgen.models.text_units import Target, target_column, target_rows
from feedbackgen.types import COPIED, FALLBACK, NO_ITEM_SENTENCE, NO_TEXT, provenance


class PopularConfig(StrictModel):
    target: Target = "explanation"
    rating_model: Literal["global_mean", "bias", "mf"] = Field("mf", description="who predicts the rating")


@register
class Popular(DelegatedRating, Generator):
    """For (user, item[, aspect]): the most frequent training text of the item (with that aspect,
    when one is asked for and the item has it); ties go to the earliest. Unknown items get the most
    frequent text of the whole training split, marked as a fallback, for `target="review"`; for
    `target="explanation"` an empty text with provenance "none: no sentence about this item" (an
    explanation of an item is about that item). Each answer names the review it
    copied (the earliest training review with that text; `feedbackgen.types.provenance`)."""

    name = "popular"
    Config = PopularConfig

    def fit(self, dataset: Dataset) -> Popular:
        dataset.require(self.name, text=True)
        col = target_column(self.config.target)
        rows = target_rows(dataset, "train", self.config.target).with_row_index("order")
        has_aspect = "aspect" in rows.columns

        def most_frequent(keys: list[str]) -> pl.DataFrame:
            # the earliest review with the text is the one it is copied from
            first = pl.col("order").arg_min()
            return (rows.group_by([*keys, col]).agg(pl.len().alias("n"), pl.col("order").min(),
                                                    pl.col("user_id").get(first).alias("source_user"),
                                                    pl.col("item_id").get(first).alias("source_item"))
                    .sort(["n", "order"], descending=[True, False])
                    .group_by(keys, maintain_order=True).first())

        top = most_frequent(["item_id"])
        self.by_item = dict(top.select("item_id", col).iter_rows())
        self.sources = {i: [u, i] for i, u in top.select("item_id", "source_user").iter_rows()}
        self.by_item_aspect = {}
        if has_aspect:
            top = most_frequent(["item_id", "aspect"]).filter(pl.col("aspect").is_not_null())
            self.by_item_aspect = {f"{i}\t{a}": t for i, a, t in top.select("item_id", "aspect", col).iter_rows()}
            self.sources.update({f"{i}\t{a}": [u, i] for i, a, u in
                                 top.select("item_id", "aspect", "source_user").iter_rows()})
        self.fallback, self.fallback_source = "", [None, None]
        if len(rows):
            overall = most_frequent([]).row(0, named=True)
            self.fallback, self.fallback_source = overall[col], [overall["source_user"], overall["source_item"]]
        self.fit_rating(dataset)
        self.is_fitted = True
        return self

    def generate_text(self, requests, decoding):
        texts, metas = [], []
        for r in requests:
            key = f"{r.item_id}\t{r.aspect}"
            text = self.by_item_aspect.get(key) if r.aspect else None
            source = "item+aspect"
            if text is None:
                key, text, source = r.item_id, self.by_item.get(r.item_id), "item"
            if text is None and self.config.target == "explanation":  # an explanation of i is about i
                texts.append("")
                metas.append({"source": "none", **provenance(NO_TEXT, fallback=NO_ITEM_SENTENCE)})
                continue
            if text is None:  # an unknown item: a review of some other item, said as much
                texts.append(self.fallback)
                user, item = self.fallback_source
                metas.append({"source": "global (unknown item)",
                              **provenance(FALLBACK, source_user=user, source_item=item,
                                           fallback="unknown item: most frequent training text")})
                continue
            user, item = self.sources.get(key, (None, None))  # None: saved by a version without sources
            texts.append(text)
            metas.append({"source": source, **provenance(COPIED, source_user=user, source_item=item)})
        return texts, metas

    def get_state(self):
        tensors, rating = rating_model_state(self.rating)
        return tensors, {"by_item": self.by_item, "by_item_aspect": self.by_item_aspect,
                         "fallback": self.fallback, "sources": self.sources,
                         "fallback_source": self.fallback_source, **rating}

    def set_state(self, tensors, state):
        self.by_item, self.by_item_aspect = state["by_item"], state["by_item_aspect"]
        self.fallback = state["fallback"]
        self.sources = state.get("sources", {})
        self.fallback_source = state.get("fallback_source", [None, None])
        self.rating = rating_model_from_state(tensors, state)
