"""Choose among candidate texts: several decodings per request, one kept by a utility.

A request's first candidate is its own decoding (greedy, beam or sampled, as asked); the others
are sampled (nucleus, `CANDIDATE_TOP_P`) from streams derived from the request's seed and the
candidate's number (`candidate_salt`), so the choice is reproducible and does not depend on batching. The kept text maximises

    utility = w_g · grounding + w_f · fluency + w_s · sentiment agreement

- grounding: `SentencePool.item_margin` — the best TF-IDF cosine with one of the item's training
  sentences minus the best with any other item's (> 0 when the text's nearest training sentence is
  about its item; the rule `evaluation.grounding.item_grounding` counts);
- fluency: the generator's mean log-probability per token of the text (nats, ≤ 0), scored without
  the plan's bias, so a text the model finds unnatural loses;
- sentiment agreement: −|VADER compound − the tone a text with this rating should have|, so the
  tone follows the stars the model gives. The expected tone is `ToneScale`'s: the rating's
  quantile among the generator's own predicted ratings of its training rows, read off the same
  quantile of its training sentences' tone (quantile mapping, as in equipercentile equating:
  Kolen & Brennan, "Test Equating, Scaling, and Linking", ch. 2). Predicted ratings crowd
  near the mean (on Musical Instruments most fall between 4 and 5 stars), so a linear map of the
  rating range gave nearly one target to every request; the quantile map spreads them over the
  tones buyers actually wrote (on the PETER-format Musical Instruments valid split, same weights,
  the kept texts' tone–rating Spearman ρ rose from 0.17 to 0.35; bench/explainer.py). Without a
  scale (no training sentences), the rating range maps linearly onto [-1, 1];

and a candidate that loops (`feedbackgen.collapse.loops`: a word three times in a row, a phrase
said twice in a row) loses `LOOP_PENALTY`, so it is kept only when every candidate loops.

This is reranking of an n-best list (Shen, Sarkar & Och, NAACL 2004; for text generation with a
utility rather than the model's score alone, e.g. Lee et al., "Discriminative Reranking for Neural
Machine Translation", ACL 2021, and the minimum-Bayes-risk family, Kumar & Byrne, NAACL 2004).
Ties keep the earlier candidate (the request's own decoding first).
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np

from feedbackgen.collapse import loops
from feedbackgen.config import Decoding
from feedbackgen.errors import DataError
from feedbackgen.features.sentences import SentencePool, vader_compound

CANDIDATE_TOP_P = 0.9
LOOP_PENALTY = 100.0  # a looping candidate (`feedbackgen.collapse.loops`) is kept only when all loop


def candidate_decoding(decoding: Decoding) -> Decoding:
    """How candidates 1..k-1 are decoded: sampled with `CANDIDATE_TOP_P` unless `decoding` samples
    already (then with its own warpers)."""
    if decoding.do_sample:
        return decoding
    return decoding.model_copy(update={"do_sample": True, "num_beams": 1, "top_p": CANDIDATE_TOP_P})


def candidate_salt(j: int) -> int:
    """The `stream_seed` salt of candidate j ≥ 1: negative, so it never meets a retry's (positive)."""
    return -j


class ToneScale:
    """The tone (VADER compound, [-1, 1]) a text going with a given rating should have.

    `ToneScale(ratings, tones)`: the generator's predicted ratings of its training rows and the
    VADER compound of its training sentences (any lengths ≥ 1). A rating r maps to
    Q_tone(F_rating(r)), both read from `QUANTILES` evenly spaced quantiles and interpolated
    linearly; monotone, so a higher rating never asks for a worse tone. Tied rating quantiles (the
    top ones when predictions clip at the highest rating; all of them for a model that predicts one
    rating) keep one point with the mean of their tones. Raises DataError when either sequence is
    empty."""

    QUANTILES = 101

    def __init__(self, ratings: Sequence[float], tones: Sequence[float]):
        ratings, tones = np.asarray(ratings, dtype=np.float64), np.asarray(tones, dtype=np.float64)
        if not len(ratings) or not len(tones):
            raise DataError(f"a tone scale needs ratings and tones (got {len(ratings)} and {len(tones)})")
        q = np.linspace(0.0, 1.0, self.QUANTILES)
        # np.interp needs strictly increasing x (ties give undefined results)
        x, tied = np.unique(np.quantile(ratings, q), return_inverse=True)
        self.rating_quantiles = x
        self.tone_quantiles = np.bincount(tied, weights=np.quantile(tones, q)) / np.bincount(tied)

    @classmethod
    def linear(cls, rating_range: tuple[float, float]) -> ToneScale:
        """The rating range mapped linearly onto [-1, 1] (its midpoint to 0): the scale without data."""
        return cls(list(rating_range), [-1.0, 1.0])

    def __call__(self, ratings: np.ndarray) -> np.ndarray:
        """Expected tone per rating, shape of `ratings`; ratings outside the seen ones clip to the ends."""
        return np.interp(np.asarray(ratings, dtype=np.float64), self.rating_quantiles, self.tone_quantiles)


def sentiment_agreement(texts: Sequence[str], ratings: np.ndarray, scale: ToneScale) -> np.ndarray:
    """−|VADER compound − `scale`(rating)| per text, in [-2, 0]; shape (len(texts),)."""
    return -np.abs(vader_compound(texts) - scale(ratings))


def choose(texts: Sequence[str], items: Sequence[str], ratings: np.ndarray, logprobs: np.ndarray, k: int,
           pool: SentencePool | None, tone: ToneScale | None,
           weights: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pick one of each request's `k` candidates.

    texts, items, ratings (the predicted rating, repeated), logprobs: one per candidate, request-major
    (request r's candidates at r·k … r·k + k − 1). weights: (grounding, fluency, sentiment). A term
    is left out when its input is missing (no pool, no tone scale) or for an item without training
    sentences. Returns (the kept candidate's index within its request (requests,), the utilities
    (requests, k))."""
    wg, wf, ws = weights
    u = wf * np.nan_to_num(np.asarray(logprobs, dtype=np.float64), nan=-1e9)
    u = u - LOOP_PENALTY * np.array([loops(t) for t in texts], dtype=np.float64)
    if pool is not None and wg:
        u = u + wg * np.nan_to_num(pool.item_margin(texts, items), nan=0.0)
    if tone is not None and ws:
        u = u + ws * sentiment_agreement(texts, ratings, tone)
    u = u.reshape(-1, k)
    return u.argmax(axis=1), u  # argmax keeps the first of equal utilities


__all__ = ["CANDIDATE_TOP_P", "ToneScale", "candidate_decoding", "candidate_salt", "choose", "sentiment_agreement"]
