"""User, item and interaction features, and the profile texts later prompts are built from.

Everything is computed from the training split only, so nothing about a held-out review leaks into
a feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from feedbackgen.data.dataset import Dataset

TOP_ASPECTS = 5
RECENT_REVIEWS = 3


def _aspect_counts(train: pl.DataFrame, key: str) -> pl.DataFrame:
    if "aspect" not in train.columns:
        return pl.DataFrame({key: [], "top_aspects": []},
                            schema={key: pl.Utf8, "top_aspects": pl.List(pl.Utf8)})
    return (
        train.filter(pl.col("aspect").is_not_null())
        .group_by(key, "aspect").len()
        .sort([key, "len", "aspect"], descending=[False, True, False])
        .group_by(key, maintain_order=True)
        .agg(pl.col("aspect").head(TOP_ASPECTS).alias("top_aspects"))
    )


def _length_tokens() -> pl.Expr:
    return pl.col("text").fill_null("").str.count_matches(r"\S+")


def user_features(train: pl.DataFrame) -> pl.DataFrame:
    """One row per training user: review count, rating mean/spread, typical length, aspects, recent reviews."""
    stats = (
        train.sort("timestamp", nulls_last=False)
        .group_by("user_id", maintain_order=True)
        .agg(
            pl.len().alias("n_reviews"),
            pl.col("rating").mean().alias("rating_mean"),
            pl.col("rating").std().fill_null(0.0).alias("rating_std"),
            _length_tokens().median().alias("median_length"),
            pl.col("text").tail(RECENT_REVIEWS).reverse().alias("recent_reviews"),
        )
    )
    return stats.join(_aspect_counts(train, "user_id"), on="user_id", how="left").sort("user_id")


def item_features(train: pl.DataFrame, items: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per training item: popularity, rating mean, aspects, plus metadata when present."""
    stats = train.group_by("item_id").agg(
        pl.len().alias("n_reviews"),
        pl.col("rating").mean().alias("rating_mean"),
        pl.col("rating").std().fill_null(0.0).alias("rating_std"),
    )
    stats = stats.join(_aspect_counts(train, "item_id"), on="item_id", how="left")
    if items is not None:
        stats = stats.join(items, on="item_id", how="left")
    return stats.sort("item_id")


def interaction_features(interactions: pl.DataFrame) -> pl.DataFrame:
    """Adds time features and the position of each review in its user's history (0 = first)."""
    ts = pl.col("timestamp")
    return interactions.with_columns(
        pl.from_epoch(ts, time_unit="s").dt.year().alias("year"),
        ts.rank("ordinal").over("user_id").sub(1).cast(pl.Int32).alias("user_position"),
        ((ts - ts.min().over("user_id")) / 86400).alias("days_since_user_first"),
    )


def _join(values) -> str:
    return ", ".join(str(v) for v in values if v)


@dataclass
class Profiles:
    """Feature tables for a dataset's training split, and the text forms used in prompts."""

    users: pl.DataFrame
    items: pl.DataFrame

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Profiles:
        train = dataset.train
        return cls(user_features(train), item_features(train, dataset.items))

    def _row(self, table: pl.DataFrame, key: str, value: str) -> dict | None:
        rows = table.filter(pl.col(key) == value)
        return rows.row(0, named=True) if len(rows) else None

    def profile_text(self, user_id: str) -> str:
        """A short plain-English description of how `user_id` rates and writes."""
        u = self._row(self.users, "user_id", user_id)
        if u is None:
            return f"User {user_id}: no reviews in the training data."
        lines = [
            f"User {user_id} wrote {u['n_reviews']} reviews, rating {u['rating_mean']:.1f} stars on average "
            f"(spread {u['rating_std']:.1f}), typically {int(u['median_length'] or 0)} words long."
        ]
        if u.get("top_aspects"):
            lines.append(f"They mostly talk about: {_join(u['top_aspects'])}.")
        for text in u["recent_reviews"] or []:
            if text:
                lines.append(f"Recent review: {text}")
        return "\n".join(lines)

    def item_text(self, item_id: str) -> str:
        """A short description of `item_id`: metadata when present, rating and what reviewers mention."""
        it = self._row(self.items, "item_id", item_id)
        if it is None:
            return f"Item {item_id}: no reviews in the training data."
        head = it.get("title") or f"Item {item_id}"
        lines = [head]
        if it.get("brand"):
            lines.append(f"Brand: {it['brand']}")
        if it.get("categories"):
            lines.append(f"Categories: {_join(it['categories'])}")
        if it.get("price") is not None:
            lines.append(f"Price: ${it['price']:.2f}")
        if it.get("description"):
            lines.append(f"Description: {it['description'][:500]}")
        lines.append(f"{it['n_reviews']} reviews, {it['rating_mean']:.1f} stars on average.")
        if it.get("top_aspects"):
            lines.append(f"Reviewers mention: {_join(it['top_aspects'])}.")
        return "\n".join(lines)
