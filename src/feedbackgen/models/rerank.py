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
- sentiment agreement: −|VADER compound − the predicted rating mapped to [-1, 1]| (the rating
  range's midpoint maps to 0), so the tone follows the stars the model gives;

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


def sentiment_agreement(texts: Sequence[str], ratings: np.ndarray, rating_range: tuple[float, float]) -> np.ndarray:
    """−|VADER compound − rating mapped to [-1, 1]| per text, in [-2, 0]; shape (len(texts),)."""
    lo, hi = rating_range
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-9)
    target = np.clip((np.asarray(ratings, dtype=np.float64) - mid) / half, -1.0, 1.0)
    return -np.abs(vader_compound(texts) - target)


def choose(texts: Sequence[str], items: Sequence[str], ratings: np.ndarray, logprobs: np.ndarray, k: int,
           pool: SentencePool | None, rating_range: tuple[float, float] | None,
           weights: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pick one of each request's `k` candidates.

    texts, items, ratings (the predicted rating, repeated), logprobs: one per candidate, request-major
    (request r's candidates at r·k … r·k + k − 1). weights: (grounding, fluency, sentiment). A term
    is left out when its input is missing (no pool, no rating range) or for an item without training
    sentences. Returns (the kept candidate's index within its request (requests,), the utilities
    (requests, k))."""
    wg, wf, ws = weights
    u = wf * np.nan_to_num(np.asarray(logprobs, dtype=np.float64), nan=-1e9)
    u = u - LOOP_PENALTY * np.array([loops(t) for t in texts], dtype=np.float64)
    if pool is not None and wg:
        u = u + wg * np.nan_to_num(pool.item_margin(texts, items), nan=0.0)
    if rating_range is not None and ws:
        u = u + ws * sentiment_agreement(texts, ratings, rating_range)
    u = u.reshape(-1, k)
    return u.argmax(axis=1), u  # argmax keeps the first of equal utilities


__all__ = ["CANDIDATE_TOP_P", "candidate_decoding", "candidate_salt", "choose", "sentiment_agreement"]
