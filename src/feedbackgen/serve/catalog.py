"""Read-only views of the dataset for the service: who a user is, what an item is, what was written.

"Known" means "has training reviews": that is what the models learned from. A user or item that
only appears in the held-out splits is shown by `/v1/users/{id}` but is a cold start to the models.
"""

from __future__ import annotations

import bisect
from typing import Any

import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.features.profiles import Profiles

REVIEW_COLUMNS = ("user_id", "item_id", "rating", "text", "summary", "timestamp", "split")


def _slices(df: pl.DataFrame, key: str) -> dict[str, tuple[int, int]]:
    """{key value: (offset, length)} of the runs of a table sorted by `key`."""
    runs = df.group_by(key, maintain_order=True).agg(pl.len().alias("n"))
    offsets = runs["n"].cum_sum() - runs["n"]
    return {k: (int(o), int(n)) for k, o, n in zip(runs[key], offsets, runs["n"])}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A polars row as JSON-ready values (floats rounded for display, NaN as None)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float):
            v = None if v != v else round(v, 4)
        out[k] = v
    return out


class Catalog:
    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.profiles = Profiles.from_dataset(dataset)
        columns = [c for c in (*REVIEW_COLUMNS, "aspect", "explanation") if c in dataset.interactions.columns]
        reviews = dataset.interactions.select(columns)
        # newest first within each user and each item; slices instead of per-id filters keep a
        # lookup O(its own rows) on big datasets
        self.by_user = reviews.sort(["user_id", "timestamp", "item_id"], descending=[False, True, False],
                                    nulls_last=True)
        self.by_item = reviews.sort(["item_id", "timestamp", "user_id"], descending=[False, True, False],
                                    nulls_last=True)
        self.user_rows, self.item_rows = _slices(self.by_user, "user_id"), _slices(self.by_item, "item_id")
        train = dataset.train
        self.train_users = set(train["user_id"].unique().to_list())
        self.train_items = sorted(set(train["item_id"].unique().to_list()))
        self._train_item_set = set(self.train_items)
        self.titles: dict[str, str] = {}
        if dataset.items is not None:
            self.titles = {i: t for i, t in dataset.items.select("item_id", "title").iter_rows() if t}
        # for prefix search: ids by lower-cased id (bisect finds a prefix's range), and by activity
        self._users_by_lower = sorted((u.lower(), u) for u in self.user_rows)
        self._users_by_activity = sorted(self.user_rows, key=lambda u: (-self.user_rows[u][1], u))

    # -- what the models know ----------------------------------------------------------------
    def knows_user(self, user_id: str) -> bool:
        return user_id in self.train_users

    def knows_item(self, item_id: str) -> bool:
        return item_id in self._train_item_set

    def candidate_items(self, user_id: str) -> list[str]:
        """Items with training reviews that `user_id` has not reviewed in training, sorted by id.

        Held-out (valid/test) items of the user stay candidates, so a recommendation can be
        compared with the review the user really wrote."""
        seen = set(self.reviews_of_user(user_id, split="train")["item_id"].to_list())
        return [i for i in self.train_items if i not in seen]

    # -- lookups -----------------------------------------------------------------------------
    def reviews_of_user(self, user_id: str, split: str | None = None) -> pl.DataFrame:
        start, n = self.user_rows.get(user_id, (0, 0))
        df = self.by_user.slice(start, n)
        return df.filter(pl.col("split") == split) if split else df

    def reviews_of_item(self, item_id: str) -> pl.DataFrame:
        start, n = self.item_rows.get(item_id, (0, 0))
        return self.by_item.slice(start, n)

    def real_review(self, user_id: str, item_id: str) -> dict[str, Any] | None:
        rows = self.reviews_of_user(user_id).filter(pl.col("item_id") == item_id)
        return _plain(rows.row(0, named=True)) if len(rows) else None

    def search_users(self, prefix: str, limit: int) -> list[dict[str, Any]]:
        """Users whose id starts with `prefix` (case-insensitive), most reviews first."""
        p = prefix.lower()
        if p:
            lo = bisect.bisect_left(self._users_by_lower, (p,))
            hi = bisect.bisect_left(self._users_by_lower, (p + "\U0010ffff",))
            hits = sorted((u for _, u in self._users_by_lower[lo:hi]), key=lambda u: (-self.user_rows[u][1], u))
        else:
            hits = self._users_by_activity
        return [{"user_id": u, "reviews": self.user_rows[u][1]} for u in hits[:limit]]

    def user(self, user_id: str, limit: int = 50) -> dict[str, Any] | None:
        if user_id not in self.user_rows:
            return None
        history = self.reviews_of_user(user_id)
        features = self.profiles.users.filter(pl.col("user_id") == user_id)
        profile = _plain(features.row(0, named=True)) if len(features) else None
        if profile is not None:
            profile.pop("recent_reviews", None)  # the history below holds them
        return {
            "user_id": user_id,
            "known_to_models": self.knows_user(user_id),
            "reviews": len(history),
            "profile": profile,
            "profile_text": self.profiles.profile_text(user_id),
            "history": [self._with_title(_plain(r)) for r in history.head(limit).iter_rows(named=True)],
        }

    def item(self, item_id: str, limit: int = 50) -> dict[str, Any] | None:
        meta = None
        if self.dataset.items is not None:
            rows = self.dataset.items.filter(pl.col("item_id") == item_id)
            meta = _plain(rows.row(0, named=True)) if len(rows) else None
        if item_id not in self.item_rows and meta is None:
            return None
        reviews = self.reviews_of_item(item_id)
        features = self.profiles.items.filter(pl.col("item_id") == item_id)
        stats = None
        if len(features):
            stats = {k: v for k, v in _plain(features.row(0, named=True)).items()
                     if k in ("n_reviews", "rating_mean", "rating_std", "top_aspects")}
        return {
            "item_id": item_id,
            "title": self.titles.get(item_id),
            "known_to_models": self.knows_item(item_id),
            "reviews": len(reviews),
            "metadata": meta,
            "stats": stats,
            "description": self.profiles.item_text(item_id),
            "history": [_plain(r) for r in reviews.head(limit).iter_rows(named=True)],
        }

    def _with_title(self, row: dict[str, Any]) -> dict[str, Any]:
        row["title"] = self.titles.get(row["item_id"])
        return row
