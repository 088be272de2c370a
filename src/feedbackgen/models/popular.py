"""`popular`: the item's most frequent training sentence. A floor every generator must clear."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from feedbackgen.config import StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.models.base import Generator, register
from feedbackgen.models.rating import fit_rating_model, rating_model_from_state, rating_model_state
from feedbackgen.models.text_units import Target, target_column, target_rows


class PopularConfig(StrictModel):
    target: Target = "explanation"
    rating_model: Literal["global_mean", "bias", "mf"] = Field("mf", description="who predicts the rating")


@register
class Popular(Generator):
    """For (user, item[, aspect]): the most frequent training text of the item (with that aspect,
    when one is asked for and the item has it); ties go to the earliest. Unknown items get the most
    frequent text of the whole training split."""

    name = "popular"
    Config = PopularConfig

    def fit(self, dataset: Dataset) -> Popular:
        dataset.require(self.name, text=True)
        col = target_column(self.config.target)
        rows = target_rows(dataset, "train", self.config.target).with_row_index("order")
        has_aspect = "aspect" in rows.columns

        def most_frequent(keys: list[str]) -> pl.DataFrame:
            return (rows.group_by([*keys, col]).agg(pl.len().alias("n"), pl.col("order").min())
                    .sort(["n", "order"], descending=[True, False])
                    .group_by(keys, maintain_order=True).first())

        self.by_item = dict(most_frequent(["item_id"]).select("item_id", col).iter_rows())
        self.by_item_aspect = {}
        if has_aspect:
            top = most_frequent(["item_id", "aspect"]).filter(pl.col("aspect").is_not_null())
            self.by_item_aspect = {f"{i}\t{a}": t for i, a, t in top.select("item_id", "aspect", col).iter_rows()}
        self.fallback = most_frequent([]).get_column(col)[0] if len(rows) else ""
        self.rating = fit_rating_model(self.config.rating_model, dataset)
        self.rating_range = self.rating.rating_range
        self.is_fitted = True
        return self

    def predict_rating(self, requests):
        self.check_fitted()
        return self.rating.predict_rating(requests)

    def generate_text(self, requests, decoding):
        texts, metas = [], []
        for r in requests:
            text = self.by_item_aspect.get(f"{r.item_id}\t{r.aspect}") if r.aspect else None
            source = "item+aspect"
            if text is None:
                text, source = self.by_item.get(r.item_id), "item"
            if text is None:
                text, source = self.fallback, "global (unknown item)"
            texts.append(text)
            metas.append({"source": source})
        return texts, metas

    def get_state(self):
        tensors, rating = rating_model_state(self.rating)
        return tensors, {"by_item": self.by_item, "by_item_aspect": self.by_item_aspect,
                         "fallback": self.fallback, **rating}

    def set_state(self, tensors, state):
        self.by_item, self.by_item_aspect = state["by_item"], state["by_item_aspect"]
        self.fallback = state["fallback"]
        self.rating = rating_model_from_state(tensors, state)
