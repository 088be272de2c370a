"""The simulated user: an engage rule (will this user take this item?) and a feedback generator.

    user = SimulatedUser(generator, dataset, choice=ease)   # engage from the choice model, calibrated
    user.engage(["u1", "u1"], ["i3", "i9"])                 # array([ True, False])
    user.judge(user_ids, item_ids)                          # rating, stars, text, engage (and p_engage)

A simulated user is two models. The **choice model** (`feedbackgen.recommend.choice`) says which
items a user takes; the **generator** says the rating and the words they give an item they took.
Either may be absent: without a generator (ratings-only data) the user only chooses; without a
choice model the decision falls back to a threshold on the generator's predicted rating, the rule
this package had first (a rating model has seen only items people chose, so it rates the items
they skip as highly as the ones they take: that rule is near chance at telling them apart).

Both rules are fitted on the **validation** split, never on test: each real validation pair
(user, item) is mixed 1:1 with an item the user never interacted with in any split (uniform,
seeded), so "real" vs "unseen" is the label.

- `choice` rule. Raw choice scores are not comparable across users (an item-item model scores a
  user with a long history higher everywhere), so the feature is the score's **percentile** among
  a fixed seeded reference sample of catalogue items (`reference_items`, 1,000) scored for the same
  user, the user's training items left out: 1.0 = above every reference item. It becomes a
  probability by isotonic regression (scikit-learn's `IsotonicRegression`, the non-parametric
  calibration of Zadrozny & Elkan, KDD 2002; monotone by construction), or with `method="logistic"`
  by a logistic regression over (percentile, log training popularity, predicted rating when a
  generator is given) (Platt-style scaling, Platt 1999). The user engages when the probability
  reaches the threshold that classifies the validation pairs most accurately (the middle one when
  several tie). The decision is made item by item: it never knows how many listed items are real.
- `rating` rule (no choice model): engage when the predicted rating reaches the threshold on a
  0.05 grid that classifies the validation pairs most accurately.

Without validation rows both fall back to the training split (and say so): training pairs were
fitted, so their scores are optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.recommend.metrics import to_stars
from feedbackgen.recommend.ranking import UnseenSampler, catalogue, score_pairs
from feedbackgen.types import FeedbackRequest, source_label

THRESHOLD_STEP = 0.05
REFERENCE_ITEMS = 1000
METHODS = ("isotonic", "logistic")
FEEDBACK_FOR = ("all", "engaged")
USERS_PER_CHUNK = 256  # reference rows scored at a time: bounds memory at users × reference items


@dataclass
class Calibration:
    """How the engage rule was fitted, kept beside every result that uses it."""

    threshold: float
    accuracy: float
    pairs: int
    split: str
    rule: str = "engage when the predicted rating ≥ threshold"  # its form; `describe` gives the value
    method: str = "grid"
    choice_model: str | None = None
    features: list[str] = field(default_factory=list)
    users: int = 0  # distinct users among the pairs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The engage rule in one line, word for word the same wherever it is shown (`simulate`'s
        caption, `fidelity`'s tables): the rule with its threshold (a probability to 3 places, a
        rating on its 0.05 grid to 2), then the evidence behind it (pairs, users, accuracy)."""
        if self.choice_model:
            rule = (f"engage when P(choose) from {self.choice_model} ≥ {self.threshold:.3f} "
                    f"({self.method} calibration)")
        else:
            rule = f"engage when the predicted rating ≥ {self.threshold:.2f}"
        if self.split == "given":
            return f"{rule}, threshold given (not fitted: no calibration accuracy)"
        weighted = ", each user weighted once" if self.choice_model else ""
        return (f"{rule}, fitted on {self.pairs} {self.split} pairs of {self.users} users "
                f"(real and unseen items 1:1{weighted}); calibration accuracy {self.accuracy:.3f}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """The inverse of `to_dict` (a result read back from JSON); unknown keys are ignored."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def validation_pairs(dataset: Dataset, seed: int = 1, max_pairs: int | None = None
                     ) -> tuple[list[str], list[str], np.ndarray, str]:
    """(users, items, is_real, split): each real validation pair and one unseen item for its user.

    max_pairs: a seeded sample of that many real pairs. Raises DataError when the split is empty.
    """
    if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 1):
        raise FeedbackgenError(f"calibration pairs must be a positive integer, got {max_pairs!r}")
    split = "valid" if len(dataset.valid) else "train"
    real = dataset.split(split).unique(["user_id", "item_id"], keep="first", maintain_order=True)
    if not len(real):
        raise DataError(f"cannot calibrate the engage rule: the {split} split is empty")
    if max_pairs is not None and len(real) > max_pairs:
        real = real.sample(max_pairs, seed=seed)
    sampler = UnseenSampler(dataset, np.random.default_rng(seed))
    users, items, actual = [], [], []
    for user, item in real.select("user_id", "item_id").iter_rows():
        negative = sampler.sample(user, 1)
        users += [user] * (1 + len(negative))
        items += [item, *negative]
        actual += [True] + [False] * len(negative)
    return users, items, np.array(actual, dtype=bool), split


def best_threshold(scores: np.ndarray, actual: np.ndarray, grid: np.ndarray,
                   weight: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, accuracy): the grid value whose `scores >= t` matches `actual` best (weighted
    accuracy when `weight` is given); the middle one when several tie."""
    accuracy = np.array([np.average((scores >= t) == actual, weights=weight) for t in grid])
    best = grid[np.flatnonzero(accuracy == accuracy.max())]
    return float(best[len(best) // 2]), float(accuracy.max())


def calibrate_threshold(model: Any, dataset: Dataset, seed: int = 1, max_pairs: int | None = None) -> Calibration:
    """The rating threshold that best separates real validation pairs from unseen items (1:1)."""
    users, items, actual, split = validation_pairs(dataset, seed, max_pairs)
    scores = score_pairs(model, users, items)
    lo, hi = getattr(model, "rating_range", (1.0, 5.0))
    grid = np.round(np.arange(lo, hi + THRESHOLD_STEP / 2, THRESHOLD_STEP), 4)
    threshold, accuracy = best_threshold(scores, actual, grid)
    return Calibration(threshold, accuracy, len(actual), split, users=len(set(users)))


class ChoiceEngage:
    """P(engage | user, item) from a choice model's score, calibrated on validation (module docstring)."""

    def __init__(self, choice: Any, dataset: Dataset, *, seed: int = 1, method: str = "isotonic",
                 generator: Any = None, reference_items: int = REFERENCE_ITEMS):
        if method not in METHODS:
            raise FeedbackgenError(f"engage calibration method must be one of {', '.join(METHODS)}, got {method!r}")
        self.choice, self.method, self.generator = choice, method, generator
        items = catalogue(dataset)
        rng = np.random.default_rng(seed)
        self.reference = np.sort(rng.choice(items, size=min(reference_items, len(items)), replace=False))
        train = dataset.train
        self.seen = {u: set(i) for u, i in train.group_by("user_id").agg(pl.col("item_id").unique()).iter_rows()}
        counts = train.group_by("item_id").len()
        self.popularity = dict(zip(counts["item_id"].to_list(), counts["len"].to_list()))
        self.model: Any = None

    @property
    def feature_names(self) -> list[str]:
        if self.method == "isotonic":
            return ["percentile"]
        return ["percentile", "log_popularity"] + (["predicted_rating"] if self.generator is not None else [])

    def percentile(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Share of the reference items (the user's training items left out) scoring below each pair,
        ties counted half; shape (n,), in [0, 1]."""
        user_ids, item_ids = np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object)
        scores = np.asarray(self.choice.score(list(user_ids), list(item_ids)), dtype=np.float64)
        out = np.empty(len(user_ids))
        unique, inverse = np.unique(user_ids, return_inverse=True)
        ref = self.reference
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
        for start in range(0, len(unique), USERS_PER_CHUNK):
            chunk = unique[start:start + USERS_PER_CHUNK]
            rows = self._reference_scores(chunk)
            for offset, user in enumerate(chunk):
                seen = self.seen.get(user, ())
                row = rows[offset][[i not in seen for i in ref]] if seen else rows[offset]
                row = np.sort(row)
                mine = order[bounds[start + offset]:bounds[start + offset + 1]]
                s = scores[mine]
                below = np.searchsorted(row, s, "left") + np.searchsorted(row, s, "right")
                out[mine] = below / (2 * len(row)) if len(row) else 0.5
        return out

    def _reference_scores(self, users: np.ndarray) -> np.ndarray:
        """Scores of the reference items for each user, shape (len(users), len(reference))."""
        ref = self.reference
        if hasattr(self.choice, "score_items"):  # choice models score a dense block at once
            return np.asarray(self.choice.score_items(list(users), list(ref)), dtype=np.float64)
        flat = self.choice.score(np.repeat(users, len(ref)).tolist(), np.tile(ref, len(users)).tolist())
        return np.asarray(flat, dtype=np.float64).reshape(len(users), len(ref))

    def features(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """The calibration's inputs, shape (n, len(feature_names))."""
        columns = [self.percentile(user_ids, item_ids)]
        if self.method == "logistic":
            columns.append(np.log1p([self.popularity.get(i, 0) for i in item_ids]))
            if self.generator is not None:
                columns.append(score_pairs(self.generator, list(user_ids), list(item_ids)))
        return np.column_stack(columns)

    def fit(self, x: np.ndarray, actual: np.ndarray, weight: np.ndarray | None = None) -> ChoiceEngage:
        """Fit P(real | features) on `x` (from `features`), shape (n, d), labels `actual`, shape (n,)."""
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            self.model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            self.model.fit(x[:, 0], actual.astype(np.float64), sample_weight=weight)
        else:
            from sklearn.linear_model import LogisticRegression

            self.model = LogisticRegression(max_iter=1000).fit(x, actual, sample_weight=weight)
        return self

    def probability(self, user_ids: Sequence[str], item_ids: Sequence[str], x: np.ndarray | None = None) -> np.ndarray:
        """Calibrated P(engage), shape (n,)."""
        if not len(user_ids):
            return np.zeros(0)
        x = self.features(user_ids, item_ids) if x is None else x
        if self.method == "isotonic":
            return np.asarray(self.model.predict(x[:, 0]), dtype=np.float64)
        return self.model.predict_proba(x)[:, 1]


def calibrate_choice(choice: Any, dataset: Dataset, *, seed: int = 1, max_pairs: int | None = None,
                     method: str = "isotonic", generator: Any = None) -> tuple[ChoiceEngage, Calibration]:
    """Fit the choice rule's probability and threshold on validation pairs (module docstring)."""
    users, items, actual, split = validation_pairs(dataset, seed, max_pairs)
    engage = ChoiceEngage(choice, dataset, seed=seed, method=method, generator=generator)
    x = engage.features(users, items)
    # each user counts once, whatever their number of validation items: a simulated user is a
    # user, and a heavy user's items would otherwise set everyone's threshold
    _, inverse, counts = np.unique(np.asarray(users, dtype=object), return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse]
    engage.fit(x, actual, weight)
    p = engage.probability(users, items, x)
    threshold, accuracy = best_threshold(p, actual, np.unique(np.round(p, 6)), weight)
    name = getattr(choice, "name", type(choice).__name__)
    return engage, Calibration(threshold, accuracy, len(actual), split,
                               rule=f"engage when P(choose) from {name} ≥ threshold", method=method,
                               choice_model=name, features=engage.feature_names, users=len(counts))


class SimulatedUser:
    """The users of a dataset, simulated: each decides, rates and reviews item by item.

    model: a Generator (rating and text), or None with a choice model (decisions only).
    choice: a ChoiceModel; with it the engage rule is the calibrated choice probability, without
    it a threshold on the generator's predicted rating. threshold: a fixed threshold instead of the
    fitted one (a probability with `choice`, a rating without). method: `isotonic` or `logistic`.
    """

    def __init__(self, model: Any, dataset: Dataset, threshold: float | None = None, seed: int = 1,
                 calibration_pairs: int | None = None, *, choice: Any = None, method: str = "isotonic"):
        if model is None and choice is None:
            raise FeedbackgenError("a simulated user needs a generator, a choice model, or both")
        self.model, self.choice, self.engage_rule = model, choice, None
        if choice is not None:
            self.engage_rule, self.calibration = calibrate_choice(
                choice, dataset, seed=seed, max_pairs=calibration_pairs, method=method, generator=model)
            if threshold is not None:
                if not 0.0 <= threshold <= 1.0:
                    raise FeedbackgenError(f"with a choice model the threshold is a probability in [0, 1], "
                                           f"got {threshold}")
                self.calibration.threshold, self.calibration.split = float(threshold), "given"
        elif threshold is None:
            self.calibration = calibrate_threshold(model, dataset, seed, calibration_pairs)
        else:
            self.calibration = Calibration(float(threshold), float("nan"), 0, "given")
        self.threshold = self.calibration.threshold

    @property
    def rule(self) -> str:
        return "choice" if self.choice is not None else "rating"

    def decide(self, ratings: np.ndarray) -> np.ndarray:
        """The rating rule's decision for predicted ratings (no choice model)."""
        return np.asarray(ratings, dtype=np.float64) >= self.threshold

    def engage(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Engage (True) or skip for each aligned (user, item) pair, shape (n,)."""
        if self.engage_rule is not None:
            return self.engage_rule.probability(user_ids, item_ids) >= self.threshold
        return self.decide(score_pairs(self.model, list(user_ids), list(item_ids)))

    def judge(self, user_ids: Sequence[str], item_ids: Sequence[str], decoding: Decoding | dict | None = None,
              write: bool = True, feedback_for: str = "all") -> pl.DataFrame:
        """rating, stars, text, provenance, source_item, source, engage and p_engage for each aligned
        (user, item) pair (provenance, the item of a copied review and a one-line source: where the
        text came from, `feedbackgen.types`).

        write: generate texts (off: ratings and decisions only). feedback_for: `all` gives every
        pair a rating (and text), `engaged` only the pairs the user engages with (the others get
        nulls), which is what an LLM generator's cost asks for. The rating rule needs every rating
        to decide, so there `engaged` limits only the texts.
        """
        if feedback_for not in FEEDBACK_FOR:
            raise FeedbackgenError(f"feedback_for must be one of {', '.join(FEEDBACK_FOR)}, got {feedback_for!r}")
        user_ids, item_ids = list(user_ids), list(item_ids)
        n = len(user_ids)
        writes = write and self.model is not None and getattr(self.model, "produces_text", False)
        ratings, p = np.full(n, np.nan), np.full(n, np.nan)
        texts: list[str | None] = [None if writes else ""] * n
        kinds: list[str | None] = [None] * n
        sources: list[str | None] = [None] * n
        source_items: list[str | None] = [None] * n
        if self.engage_rule is not None:
            p = self.engage_rule.probability(user_ids, item_ids)
            engage = p >= self.threshold
            rows = np.flatnonzero(engage) if feedback_for == "engaged" else np.arange(n)
        elif writes and feedback_for == "all":  # one generation gives the rating and the text
            engage, rows = None, np.arange(n)
        else:
            ratings = score_pairs(self.model, user_ids, item_ids)
            engage = self.decide(ratings)
            rows = np.flatnonzero(engage) if writes and feedback_for == "engaged" else np.zeros(0, dtype=int)
        if writes and len(rows):
            feedback = self.model.generate([FeedbackRequest(user_ids[r], item_ids[r]) for r in rows],
                                           validate(Decoding, decoding, "decoding settings"))
            for r, fb in zip(rows, feedback):
                texts[r] = fb.text
                kinds[r], source_items[r] = fb.meta.get("provenance"), fb.meta.get("source_item")
                sources[r] = source_label(fb.meta, item_ids[r]) or None
                if np.isnan(ratings[r]):
                    ratings[r] = fb.rating
        elif self.model is not None and self.engage_rule is not None and len(rows):
            ratings[rows] = score_pairs(self.model, [user_ids[r] for r in rows], [item_ids[r] for r in rows])
        if engage is None:
            engage = self.decide(ratings)
        rated = ~np.isnan(ratings)
        stars = np.zeros(n, dtype=np.int64)
        stars[rated] = to_stars(ratings[rated])
        stars = [int(s) if r else None for s, r in zip(stars, rated)]
        return pl.DataFrame({
            "rating": pl.Series(ratings, dtype=pl.Float64, nan_to_null=True),
            "stars": pl.Series(stars, dtype=pl.Int64),
            "text": pl.Series(texts, dtype=pl.Utf8),
            "provenance": pl.Series(kinds, dtype=pl.Utf8),
            "source_item": pl.Series(source_items, dtype=pl.Utf8),
            "source": pl.Series(sources, dtype=pl.Utf8),
            "engage": pl.Series(engage, dtype=pl.Boolean),
            "p_engage": pl.Series(p, dtype=pl.Float64, nan_to_null=True),
        })


__all__ = ["Calibration", "ChoiceEngage", "FEEDBACK_FOR", "METHODS", "SimulatedUser", "best_threshold",
           "calibrate_choice", "calibrate_threshold", "validation_pairs"]
