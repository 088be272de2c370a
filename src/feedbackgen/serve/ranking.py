"""Ranking candidates for `/v1/recommend` by the model's predicted rating.

Kept to one small function so that it can give way to `feedbackgen.recommend` once that package
ranks with predicted feedback: the service only needs "the k best (item, score) for this user".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from feedbackgen.models.base import Generator
from feedbackgen.types import FeedbackRequest


def rank_items(model: Generator, user_id: str, candidates: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The `k` candidates with the highest predicted rating for `user_id`, best first.

    Ties keep the order of `candidates` (the service passes them sorted by id), so the answer is
    the same on every call."""
    if not candidates:
        return []
    scores = np.asarray(model.predict_rating([FeedbackRequest(user_id, i) for i in candidates]), dtype=np.float64)
    order = np.lexsort((np.arange(len(candidates)), -scores))[:k]
    return [(candidates[j], float(scores[j])) for j in order]
