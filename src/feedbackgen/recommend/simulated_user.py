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

- `choice` rule. P(engage | user, item) is the calibrated probability of
  `feedbackgen.recommend.engage`: a choice model's log rank of the item among the user's
  candidates, mapped to the share of such items users really took in the valid split (fitted on
  ranked candidates, not only on 1:1 random negatives, so it holds at the top of a list where it
  matters). A `simulated_user` model carries its own, fitted when it was trained. In `simulate` the
  user engages with each item with that probability (a draw seeded per user: reproducible); the 1:1
  protocols of `fidelity` engage when it reaches the threshold that best tells real valid items from
  uniformly drawn ones (fitted on the same calibration rows).
- `rating` rule (no choice model): engage when the predicted rating reaches the threshold on a
  0.05 grid that classifies the validation pairs most accurately.

Without validation rows both fall back to the training split (and say so): training pairs were
fitted, so their scores are optimistic.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.recommend.metrics import to_stars
from feedbackgen.recommend.engage import EngageModel
from feedbackgen.recommend.ranking import UnseenSampler, pool_of, score_pairs
from feedbackgen.types import FeedbackRequest, source_label

THRESHOLD_STEP = 0.05
FEEDBACK_FOR = ("all", "engaged")


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
            if self.split == "given":
                return (f"engage when P(choose) from {self.choice_model} ≥ {self.threshold:.3f}, "
                        "threshold given (not fitted: no calibration accuracy)")
            return (f"engage with P(choose) from {self.choice_model} ({self.method}), calibrated on "
                    f"{self.pairs} ranked {self.split} candidates of {self.users} users; in 1:1 protocols "
                    f"engage when P ≥ {self.threshold:.3f} (accuracy {self.accuracy:.3f} on {self.split} "
                    "pairs, real vs never-seen 1:1, each user weighted once)")
        rule = f"engage when the predicted rating ≥ {self.threshold:.2f}"
        if self.split == "given":
            return f"{rule}, threshold given (not fitted: no calibration accuracy)"
        return (f"{rule}, fitted on {self.pairs} {self.split} pairs of {self.users} users "
                f"(real and unseen items 1:1); calibration accuracy {self.accuracy:.3f}")

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
    scores, actual = np.asarray(scores, dtype=np.float64), np.asarray(actual, dtype=bool)
    weight = np.ones(len(scores)) if weight is None else np.asarray(weight, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    below = np.searchsorted(scores[order], grid, "left")  # rows scoring below t: predicted "skip"
    pos = np.concatenate([[0.0], np.cumsum(weight[order] * actual[order])])
    neg = np.concatenate([[0.0], np.cumsum(weight[order] * ~actual[order])])
    accuracy = np.clip((neg[below] + pos[-1] - pos[below]) / weight.sum(), 0.0, 1.0)  # cumsum rounding
    best = grid[np.flatnonzero(accuracy >= accuracy.max() - 1e-12)]
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
    """P(engage | user, item) from a choice model (module docstring): the model's own calibrated
    probability when it has one (`simulated_user`), otherwise an `EngageModel` fitted now on valid."""

    def __init__(self, choice: Any, dataset: Dataset, *, seed: int = 1):
        self.choice, self.dataset = choice, dataset
        self.own = hasattr(choice, "engage_probability")
        self.model = choice.engage if self.own else EngageModel.fit([choice], dataset, seed=seed)

    def probability(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Calibrated P(engage) after the valid period, shape (n,) (`feedbackgen.recommend.engage`)."""
        if self.own:
            return self.choice.engage_probability(self.dataset, list(user_ids), list(item_ids))
        return self.model.probability([self.choice], pool_of(self.dataset), list(user_ids), list(item_ids))


def calibrate_choice(choice: Any, dataset: Dataset, *, seed: int = 1, max_pairs: int | None = None
                     ) -> tuple[ChoiceEngage, Calibration]:
    """The choice rule's probability and its 1:1 threshold (module docstring): the probability that
    best tells each real validation pair from an item the user never touched (1:1, each user
    weighing once, as Agent4Rec's per-user protocol does). max_pairs: a seeded sample of that many
    validation pairs for the threshold."""
    users, items, actual, split = validation_pairs(dataset, seed, max_pairs)
    engage = ChoiceEngage(choice, dataset, seed=seed)
    p = engage.probability(users, items)
    _, inverse, counts = np.unique(np.asarray(users, dtype=object), return_inverse=True, return_counts=True)
    threshold, accuracy = best_threshold(p, actual, np.unique(np.round(p, 6)), 1.0 / counts[inverse])
    r = engage.model.record
    name = getattr(choice, "name", type(choice).__name__)
    return engage, Calibration(threshold, accuracy, r["rows"], r["split"],
                               rule=f"engage with P(choose) from {name}", method="stacked log-rank, isotonic",
                               choice_model=name, features=[f"log_rank_{m}" for m in r["models"]],
                               users=r["users"])


class SimulatedUser:
    """The users of a dataset, simulated: each decides, rates and reviews item by item.

    model: a Generator (rating and text), or None with a choice model (decisions only).
    choice: a ChoiceModel; with it the engage rule is the calibrated choice probability, without
    it a threshold on the generator's predicted rating. threshold: a fixed threshold instead of the
    fitted one (a probability with `choice`, a rating without); with a choice model, given, it also
    replaces the seeded draws of `judge`. seed: the calibration's and the per-user draws' seed.
    """

    def __init__(self, model: Any, dataset: Dataset, threshold: float | None = None, seed: int = 1,
                 calibration_pairs: int | None = None, *, choice: Any = None):
        if model is None and choice is None:
            raise FeedbackgenError("a simulated user needs a generator, a choice model, or both")
        self.model, self.choice, self.engage_rule, self.seed = model, choice, None, seed
        if choice is not None:
            self.engage_rule, self.calibration = calibrate_choice(
                choice, dataset, seed=seed, max_pairs=calibration_pairs)
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

    def probability(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Calibrated P(engage) for aligned pairs, shape (n,) (a choice model is needed)."""
        if self.engage_rule is None:
            raise FeedbackgenError("P(engage) needs a choice model (--choice); the rating rule only decides")
        return self.engage_rule.probability(user_ids, item_ids)

    def draw(self, user_ids: Sequence[str], p: np.ndarray) -> np.ndarray:
        """Sampled decisions, engage with probability p: one uniform draw per row, from a stream
        seeded by (seed, user), taken in row order; reproducible whatever else is judged beside."""
        out = np.zeros(len(p), dtype=bool)
        rows: dict[str, list[int]] = {}
        for n, u in enumerate(user_ids):
            rows.setdefault(u, []).append(n)
        for u, idx in rows.items():
            rng = np.random.default_rng([self.seed, zlib.crc32(str(u).encode())])
            out[idx] = rng.random(len(idx)) < p[idx]
        return out

    def engage(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """The 1:1 protocols' decision: engage (True) or skip for each aligned (user, item) pair,
        shape (n,): P(engage) ≥ the fitted threshold, or the rating rule."""
        if self.engage_rule is not None:
            return self.engage_rule.probability(user_ids, item_ids) >= self.threshold
        return self.decide(score_pairs(self.model, list(user_ids), list(item_ids)))

    def judge(self, user_ids: Sequence[str], item_ids: Sequence[str], decoding: Decoding | dict | None = None,
              write: bool = True, feedback_for: str = "all") -> pl.DataFrame:
        """rating, stars, text, provenance, source_item, source, engage and p_engage for each aligned
        (user, item) pair (provenance, the item of a copied review and a one-line source: where the
        text came from, `feedbackgen.types`).

        With a choice model, engage is drawn with probability p_engage (seeded per user, `draw`), or
        p_engage ≥ a threshold given to the constructor. write: generate texts (off: ratings and decisions only). feedback_for: `all` gives every
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
            engage = p >= self.threshold if self.calibration.split == "given" else self.draw(user_ids, p)
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


__all__ = ["Calibration", "ChoiceEngage", "FEEDBACK_FOR", "SimulatedUser", "best_threshold",
           "calibrate_choice", "calibrate_threshold", "validation_pairs"]
