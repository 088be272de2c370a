"""Ranking metrics and simulator-fidelity scores, each with its published definition.

Pure functions of numbers (no model, no dataset), so each can be checked by hand.

Ranking (both protocols in `feedbackgen.recommend.ranking` reduce to these):

- a *query* is one ranked list with its relevant items; `relevant_ranks[q]` holds the 1-based
  positions of query q's relevant items in its full ranked list (all of them, also those beyond K);
- HR@K (hit ratio) = share of queries with at least one relevant item in the top K
  (He et al., "Neural Collaborative Filtering", WWW 2017, section 4.1);
- NDCG@K = DCG@K / IDCG@K with binary relevance, DCG@K = sum over relevant items at rank r <= K of
  1 / log2(r + 1), IDCG@K the same for the ideal list (min(#relevant, K) items on top)
  (Järvelin & Kekäläinen, TOIS 2002; with one relevant item it is NCF's 1 / log2(rank + 1));
- Recall@K = (relevant items in the top K) / (relevant items), averaged over queries (RecBole's
  `Recall`: the denominator is every relevant item, so a query with more than K of them cannot
  reach 1). With one relevant item per query it equals HR@K.

Simulator fidelity:

- discrimination (Agent4Rec, Zhang et al., SIGIR 2024, section 4.1): accuracy, precision, recall and
  F1 of the engage decision, the positive class being "the user really interacted with the item";
- preference estimation (AgentSociety Challenge, WWW 2025, Track 1; tsinghua-fib-lab/
  AgentSocietyChallenge `evaluation_tool.py`) = 1 - mean(|clip(simulated, 0, 5) - real| / 5);
- review score (same source) = 1 - (0.25 sentiment error + 0.25 emotion error + 0.5 topic error),
  sentiment error = |VADER compound(simulated) - compound(real)| / 2, topic error = cosine distance of
  the two sentence embeddings / 2. No emotion classifier is available offline, so
  `review_score_without_emotion` leaves that term out and re-weights the other two:
  1 - (0.25 sentiment error + 0.5 topic error) / 0.75.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from feedbackgen.errors import DataError
from feedbackgen.evaluation.metrics import to_stars

KS = (5, 10, 20)


def hit_rate(relevant_ranks: Sequence[Sequence[int]], k: int) -> float:
    """HR@k: share of queries with a relevant item ranked k or better. Higher is better."""
    if not len(relevant_ranks):
        return 0.0
    return float(np.mean([len(r) > 0 and min(r) <= k for r in relevant_ranks]))


def ndcg(relevant_ranks: Sequence[Sequence[int]], k: int) -> float:
    """NDCG@k with binary relevance, averaged over queries. Higher is better."""
    if not len(relevant_ranks):
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # position r (1-based) -> 1 / log2(r + 1)
    scores = []
    for ranks in relevant_ranks:
        ranks = np.asarray(ranks, dtype=np.int64)
        ideal = discounts[:min(len(ranks), k)].sum()
        dcg = discounts[ranks[ranks <= k] - 1].sum()
        scores.append(dcg / ideal if ideal > 0 else 0.0)
    return float(np.mean(scores))


def recall(relevant_ranks: Sequence[Sequence[int]], k: int) -> float:
    """Recall@k: share of each query's relevant items ranked k or better, averaged over queries
    (a query without relevant items counts 0). Higher is better."""
    if not len(relevant_ranks):
        return 0.0
    return float(np.mean([np.mean(np.asarray(r) <= k) if len(r) else 0.0 for r in relevant_ranks]))


def ranking_metrics(relevant_ranks: Sequence[Sequence[int]], ks: Sequence[int] = KS) -> dict[str, float]:
    """{"hr@k": ..., "ndcg@k": ..., "recall@k": ...} for every k in `ks`."""
    out = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(relevant_ranks, k)
        out[f"ndcg@{k}"] = ndcg(relevant_ranks, k)
        out[f"recall@{k}"] = recall(relevant_ranks, k)
    return out


def positions(scores: np.ndarray, rng: np.random.Generator, tie_break: np.ndarray | None = None) -> np.ndarray:
    """1-based position of each candidate sorted by score, highest first.

    Equal scores are ordered by `tie_break` (highest first) when given, then in random (seeded)
    order, so a model that scores many candidates the same is neither flattered nor punished by
    the order the candidates came in.
    """
    scores = np.asarray(scores, dtype=np.float64)
    secondary = np.zeros(len(scores)) if tie_break is None else np.asarray(tie_break, dtype=np.float64)
    order = np.lexsort((rng.permutation(len(scores)), -secondary, -scores))  # last key sorts first
    pos = np.empty(len(scores), dtype=np.int64)
    pos[order] = np.arange(1, len(scores) + 1)
    return pos


# -- discrimination ----------------------------------------------------------------------------

def classification_metrics(predicted: Sequence[bool], actual: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of `predicted` (engage) against `actual` (real item).

    Precision is 0 when nothing is predicted positive, F1 is 0 when precision + recall is 0
    (scikit-learn's `zero_division=0`).
    """
    p = np.asarray(predicted, dtype=bool)
    a = np.asarray(actual, dtype=bool)
    if p.shape != a.shape:
        raise DataError(f"predicted and actual differ in length ({len(p)} vs {len(a)})")
    tp = int(np.sum(p & a))
    fp = int(np.sum(p & ~a))
    fn = int(np.sum(~p & a))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(p == a)) if len(a) else 0.0, "precision": precision,
            "recall": recall, "f1": f1}


# -- AgentSociety Track 1 ----------------------------------------------------------------------

def preference_estimation(simulated: Sequence[float], real: Sequence[float]) -> float:
    """1 - mean(|clip(simulated, 0, 5) - real| / 5). Higher is better; 1 is perfect."""
    s = np.clip(np.asarray(simulated, dtype=np.float64), 0.0, 5.0)
    r = np.asarray(real, dtype=np.float64)
    return float(1.0 - np.mean(np.abs(s - r) / 5.0)) if len(r) else 0.0


def sentiment_error(simulated_compound: Sequence[float], real_compound: Sequence[float]) -> float:
    """mean(|compound(simulated) - compound(real)| / 2), VADER compound scores in [-1, 1]. Lower is better."""
    s, r = np.asarray(simulated_compound, dtype=np.float64), np.asarray(real_compound, dtype=np.float64)
    return float(np.mean(np.abs(s - r) / 2.0)) if len(r) else 0.0


def topic_error(simulated_vectors: np.ndarray, real_vectors: np.ndarray) -> float:
    """mean(cosine distance / 2) of aligned embedding rows, as scipy's `distance.cosine` / 2. Lower is better."""
    s, r = np.asarray(simulated_vectors, dtype=np.float64), np.asarray(real_vectors, dtype=np.float64)
    if not len(r):
        return 0.0
    norms = np.linalg.norm(s, axis=1) * np.linalg.norm(r, axis=1)
    cosine = np.sum(s * r, axis=1) / np.where(norms > 0, norms, 1.0)
    return float(np.mean((1.0 - cosine) / 2.0))


def review_score_without_emotion(sentiment_err: float, topic_err: float) -> float:
    """AgentSociety's review score with the emotion term left out and the rest re-weighted. Higher is better."""
    return 1.0 - (0.25 * sentiment_err + 0.5 * topic_err) / 0.75


def star_histogram(ratings: Sequence[float], stars: Sequence[int] = (1, 2, 3, 4, 5)) -> np.ndarray:
    """Share of ratings at each star (`to_stars`)."""
    r = to_stars(ratings, min(stars), max(stars))
    counts = np.array([np.sum(r == s) for s in stars], dtype=np.float64)
    return counts / counts.sum() if counts.sum() else counts


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two discrete distributions: half the L1 distance. Lower is better."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())

