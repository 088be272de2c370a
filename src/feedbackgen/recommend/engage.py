"""P(engage): the probability that a user takes an item shown in a list, calibrated on what users took.

    engage = EngageModel.fit([ease, itemknn], dataset)        # fitted on the valid split
    engage.probability(pool, ["u1", "u1"], ["i3", "i9"])      # array([0.041, 0.002])

What the probability means: of the items a user is shown, the expected share they take in the
held-out period. The sum over a list is the expected number of listed items the user takes, which on
the calibration data equals the number they really took (a logistic model with an intercept matches
the label total; the isotonic step keeps it).

The features are **log ranks**: for each scoring model m, the item's rank among the user's
candidates (every item of the catalogue less the user's own items, `exclude`) under m's scores,
ties counted half. A rank is comparable across users and models where raw scores are not (an item-item
model scores heavy users higher everywhere), and it is what a list position means.

Fitting (`EngageModel.fit`), on the **validation** split, never on test: for each sampled valid user
(models fitted on train, candidates = catalogue less the user's train items), the rows are the union
of each model's top `depth` items (where recommenders' lists live, kept whole) and a uniform sample of
`random_items` other candidates, each weighted by the number of candidates it stands for (so the
weighted rows stand for every candidate, Horvitz-Thompson style); the label is "the user took it in
valid". Two steps: a logistic regression over the log ranks stacks the models (scikit-learn's
`LogisticRegression`; Wolpert's stacked generalisation, 1992), then an isotonic regression of the label on
the stacked score calibrates it (Zadrozny & Elkan, KDD 2002): monotone, and exact in the large.

Judging after the valid period (`probability`): a list judged on the test split is shown to a user
whose valid items are now history. The features are computed exactly as in the calibration (ranks
among the catalogue less the user's train items, models fitted on train), and the valid-period
probability p becomes the probability of an item that is not among the valid items being taken in
the next period, q = p·ρ / (1 - p) (clipped to 1), where ρ (`future_ratio`, default 1) is the
length of the judged period relative to the valid one. This assumes the user's future items fall
into the valid and the judged period exchangeably (true of random splits; for temporal ones an
approximation). Measured on the Agent4Rec MovieLens-1M split, where a user's valid items are
many (55 of 3,292), judging with models refitted on train + valid instead, or without the
conversion, put the simulated engagement at 0.6-0.8 of the real one.

Assumptions, stated because the logs cannot support more: review and rating logs record what users
took, not what they were shown, so no position effect is fitted (an item's probability does not
depend on its place in the list), and items are judged independently (no redundancy effect within a
list). Sessions (`feedbackgen.recommend.sessions`) add an examination and exit rule on top, with their
parameters stated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError
from feedbackgen.recommend.choice import UNKNOWN_ITEM_SCORE
from feedbackgen.recommend.ranking import Pool, check_exclude, pool_of

KNOTS = np.log([3.0, 10.0, 30.0, 100.0, 300.0, 1000.0])  # of the piecewise-linear logit in each log rank
USERS_PER_BATCH = 256  # dense score rows per model at a time: bounds memory at users x catalogue


def pool_scores(model: Any, pool: Pool, users: Sequence[str]) -> np.ndarray:
    """A choice model's dense scores over the pool's items, shape (len(users), len(pool.items));
    items the model does not know score `UNKNOWN_ITEM_SCORE`, unknown users its popularity fallback.
    Anything with `score(user_ids, item_ids)` will do; a `ChoiceModel` scores a dense block at once."""
    if not hasattr(model, "dense"):
        flat = model.score(np.repeat(np.asarray(users, dtype=object), len(pool.items)).tolist(),
                           np.tile(pool.items, len(users)).tolist())
        return np.asarray(flat, dtype=np.float64).reshape(len(users), len(pool.items))
    cols = model.item_cols(list(pool.items))
    dense = model.dense(model.user_rows(list(users)))
    return np.where(cols >= 0, dense[:, np.maximum(cols, 0)], UNKNOWN_ITEM_SCORE)


def ranks_in(scores: np.ndarray, candidates: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """1-based ranks of the items at `cols` among the `candidates` (a boolean mask over the same
    columns) by `scores` (higher first): 1 + candidates scoring higher + half the other candidates
    that tie. An item that is not itself a candidate is ranked as if it were one."""
    ordered = np.sort(scores[candidates])
    s = scores[cols]
    lo, hi = np.searchsorted(ordered, s, "left"), np.searchsorted(ordered, s, "right")
    ties = hi - lo - candidates[cols]
    return 1.0 + (len(ordered) - hi) + 0.5 * np.maximum(ties, 0)


def log_ranks(models: Sequence[Any], pool: Pool, users: Sequence[str], items: Sequence[Sequence[str]],
              exclude: str) -> list[np.ndarray]:
    """For each user, the log ranks of their `items` under each model, shape (len(items[n]), len(models)).

    Candidates: the pool's items less the user's own items in the splits `exclude` names."""
    check_exclude(exclude)
    out: list[np.ndarray] = []
    for start in range(0, len(users), USERS_PER_BATCH):
        batch = list(users[start:start + USERS_PER_BATCH])
        blocks = [pool_scores(m, pool, batch) for m in models]
        for n, user in enumerate(batch):
            cand = np.ones(len(pool.items), dtype=bool)
            cand[pool.masked(user, exclude)] = False
            cols = np.fromiter((pool.index.get(i, -1) for i in items[start + n]), dtype=np.int64)
            feats = np.empty((len(cols), len(models)))
            known = cols >= 0
            for m, block in enumerate(blocks):
                feats[known, m] = np.log(ranks_in(block[n], cand, cols[known]))
                feats[~known, m] = np.log(max(int(cand.sum()), 1))  # an item outside the catalogue: last
            out.append(feats)
    return out


@dataclass
class EngageModel:
    """A fitted P(engage | log ranks): stacking weights and an isotonic map (module docstring).

    coef: shape (n_models * (1 + len(KNOTS)),), over `basis`; intercept: float; x_knots, y_knots: the isotonic map's breakpoints
    (stacked score -> probability, linear between them, clipped outside)."""

    coef: np.ndarray
    intercept: float
    x_knots: np.ndarray
    y_knots: np.ndarray
    record: dict[str, Any]
    future_ratio: float = 1.0

    def stacked(self, x: np.ndarray) -> np.ndarray:
        """The stacked score (a logit before calibration) of rows of log ranks, shape (n,)."""
        return basis(x) @ self.coef + self.intercept

    def from_features(self, x: np.ndarray, after_valid: bool = True) -> np.ndarray:
        """P(engage) for rows of log ranks, shape (n, n_models) -> (n,), in [0, 1]: in the period
        after valid (q, module docstring), or with after_valid=False in the valid period (p)."""
        p = np.interp(self.stacked(x), self.x_knots, self.y_knots)
        return after_valid_probability(p, self.future_ratio) if after_valid else p

    def probability(self, models: Sequence[Any], pool: Pool, user_ids: Sequence[str], item_ids: Sequence[str],
                    after_valid: bool = True) -> np.ndarray:
        """P(engage) for aligned (user, item) pairs, shape (n,), from `models` fitted on train
        (features as in the calibration: ranks among the catalogue less the user's train items)."""
        if not len(user_ids):
            return np.zeros(0)
        users = np.asarray(user_ids, dtype=object)
        uniq, inverse = np.unique(users, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        items = np.asarray(item_ids, dtype=object)
        groups = [order[bounds[n]:bounds[n + 1]] for n in range(len(uniq))]
        feats = log_ranks(models, pool, list(uniq), [items[g].tolist() for g in groups], "train")
        out = np.empty(len(users))
        for g, f in zip(groups, feats):
            out[g] = self.from_features(f, after_valid)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"engage.coef": self.coef, "engage.intercept": np.array([self.intercept]),
                "engage.x_knots": self.x_knots, "engage.y_knots": self.y_knots}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> EngageModel:
        return cls(arrays["engage.coef"], float(arrays["engage.intercept"][0]), arrays["engage.x_knots"],
                   arrays["engage.y_knots"], record)

    @classmethod
    def fit(cls, models: Sequence[Any], dataset: Dataset, *, users: int = 3000, depth: int = 50,
            random_items: int = 100, seed: int = 1, labels: str = "valid") -> EngageModel:
        """Fit on the `labels` split's users, with `models` fitted on train (module docstring).

        users: most users sampled (seeded). Raises DataError when no user of that split has train items.
        """
        pool = pool_of(dataset)
        held = dataset.split(labels)
        truth = {u: set(i) for u, i in held.group_by("user_id").agg(pl.col("item_id")).iter_rows()}
        chosen = sorted(u for u in truth if u in pool.train_users)
        if not chosen:
            raise DataError(f"cannot calibrate P(engage): no user of the {labels} split has train interactions")
        rng = np.random.default_rng(seed)
        if len(chosen) > users:
            chosen = sorted(rng.choice(chosen, size=users, replace=False).tolist())
        x, y, w = _calibration_rows(models, pool, chosen, truth, depth, random_items, rng)
        stack = LogisticRegression(C=1.0, max_iter=2000).fit(basis(x), y, sample_weight=w)
        z = stack.decision_function(basis(x))
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y, sample_weight=w)
        record = {"split": labels, "users": len(chosen), "rows": int(len(y)), "positives": int(y.sum()),
                  "depth": depth, "random_items": random_items, "seed": seed,
                  "models": [getattr(m, "name", type(m).__name__) for m in models],
                  "expected_positives": float(np.dot(w, iso.predict(z))), "weighted_positives": float(np.dot(w, y))}
        return cls(stack.coef_.ravel().astype(np.float64), float(stack.intercept_[0]),
                   np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64),
                   record)


def basis(x: np.ndarray) -> np.ndarray:
    """Each log rank and its hinges at `KNOTS`, shape (n, n_models * (1 + len(KNOTS))): a logit that is
    piecewise linear in each model's log rank, so the top of a list is not bound to the tail's slope."""
    return np.hstack([x, *(np.maximum(x - k, 0.0) for k in KNOTS)])


def after_valid_probability(p: np.ndarray, future_ratio: float = 1.0) -> np.ndarray:
    """q = p·ρ / (1 - p), clipped to [0, 1]: the valid-period probability carried to the next period."""
    p = np.asarray(p, dtype=np.float64)
    return np.clip(p * future_ratio / np.maximum(1.0 - p, 1e-12), 0.0, 1.0)


def _calibration_rows(models: Sequence[Any], pool: Pool, users: list[str], truth: dict[str, set[str]],
                      depth: int, random_items: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log ranks, labels, weights) of the calibration rows: per user, each model's top `depth`
    candidates, plus a uniform sample of the other candidates weighted by how many each stands for."""
    feats, labels, weights = [], [], []
    for start in range(0, len(users), USERS_PER_BATCH):
        batch = users[start:start + USERS_PER_BATCH]
        blocks = [pool_scores(m, pool, batch) for m in models]
        for n, user in enumerate(batch):
            cand = np.ones(len(pool.items), dtype=bool)
            cand[pool.masked(user, "train")] = False
            idx = np.flatnonzero(cand)
            top = np.unique(np.concatenate([idx[np.argsort(-b[n, idx], kind="stable")[:depth]] for b in blocks]))
            rest = np.setdiff1d(idx, top)
            sample = np.sort(rng.choice(rest, size=min(random_items, len(rest)), replace=False))
            cols = np.concatenate([top, sample])
            feats.append(np.column_stack([np.log(ranks_in(b[n], cand, cols)) for b in blocks]))
            weights.append(np.concatenate([np.ones(len(top)), np.full(len(sample), len(rest) / max(len(sample), 1))]))
            labels.append(np.array([i in truth[user] for i in pool.items[cols]], dtype=np.float64))
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(weights)


__all__ = ["EngageModel", "after_valid_probability", "log_ranks", "pool_scores", "ranks_in"]
