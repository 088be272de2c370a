"""A content plan: the words this user would say about this item, from the training sentences.

What an explanation of item i should mention is what other buyers wrote about i: its aspects and
the opinions on them. `ContentPlan.fit` reads the training split's sentences (the generator's
target column) and keeps, per item, its distinctive words — TF-IDF over one document per item
(all its training sentences; scikit-learn `TfidfVectorizer`, English stop words removed, words of
three or more letters, sub-linear term frequency), so words every product gets ("great", "price")
weigh little and the item's own ("capo", "tuner", "strap") much — and, per user, the words the user
has written before. `words(user, item, k)` ranks the item's words for that user: the item's weight,
raised by `user_boost` for words the user uses (personalised aspect ranking in the spirit of
Li et al.'s PETER+ feature selection and the user-aware aspect ranking of explainable
recommendation, e.g. He et al., "TriRank", CIKM 2015), and returns the top `k` with weights
scaled to a maximum of 1.

The plan is one input of plan-then-write decoding (`feedbackgen.decoding.plan.PlanBias` raises
the planned words until the text has said them) and the sentences are the pool that candidate
texts are scored against (`feedbackgen.features.sentences.SentencePool`, `models.rerank`). It
is kept in the model folder as the training triples (user, item, sentence) and rebuilt
deterministically on load.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from feedbackgen.errors import DataError
from feedbackgen.features.sentences import SentencePool, vader_compound

ITEM_WORDS = 24  # words kept per item: more than any plan asks for
USER_BOOST = 0.5  # a word the user has written before weighs (1 + USER_BOOST) times more


class ContentPlan:
    """Per item its distinctive training words, per user the words they use, and the sentence pool.

    Build with `ContentPlan.fit(users, items, sentences)`: three aligned sequences, the training rows
    (one user id, item id and target sentence each). Raises DataError when no sentence has a word."""

    def __init__(self, users: Sequence[str], items: Sequence[str], sentences: Sequence[str],
                 ratings: Sequence[float | None] | None = None, user_boost: float = USER_BOOST):
        self.users, self.items, self.sentences = list(users), list(items), list(sentences)
        self.ratings = list(ratings) if ratings is not None else [None] * len(self.sentences)
        self.user_boost = user_boost
        self.pool = SentencePool(self.sentences, self.items)
        by_item: dict[str, list[str]] = {}
        by_user: dict[str, list[str]] = {}
        stars: dict[tuple[str, str], float | None] = {}  # (item, sentence) -> the rating it came with
        for u, i, s, r in zip(self.users, self.items, self.sentences, self.ratings):
            if s:
                by_item.setdefault(i, []).append(s)
                by_user.setdefault(u, []).append(s)
                stars.setdefault((i, s), r)
        vectorizer = TfidfVectorizer(lowercase=True, stop_words="english", sublinear_tf=True,
                                     token_pattern=r"(?u)\b[a-z][a-z']{2,}\b")
        names = list(by_item)
        try:
            weights = vectorizer.fit_transform([" ".join(by_item[i]) for i in names]).tocsr()
        except ValueError as e:  # scikit-learn: "empty vocabulary"
            raise DataError(f"content plan: the training sentences have no word to plan with ({e})") from None
        vocab = vectorizer.get_feature_names_out()
        self.item_words: dict[str, list[tuple[str, float]]] = {}
        for n, item in enumerate(names):
            row = weights.getrow(n)
            order = np.argsort(-row.data, kind="stable")[:ITEM_WORDS]
            self.item_words[item] = [(str(vocab[row.indices[j]]), float(row.data[j])) for j in order]
        self.analyzer = vectorizer.build_analyzer()
        self.idf = dict(zip(vocab, vectorizer.idf_))
        self.user_words = {u: set(self.analyzer(" ".join(texts))) for u, texts in by_user.items()}
        self.item_sentences = {i: [(t, stars[i, t]) for t in dict.fromkeys(texts)] for i, texts in by_item.items()}

    @classmethod
    def fit(cls, users: Sequence[str], items: Sequence[str], sentences: Sequence[str],
            ratings: Sequence[float | None] | None = None) -> ContentPlan:
        """ratings: the star rating each sentence's review gave (None where unknown), so that a plan
        can say what buyers who rated the item alike said."""
        if not (len(users) == len(items) == len(sentences)) or (ratings is not None and len(ratings) != len(users)):
            raise DataError(f"content plan: {len(users)} users, {len(items)} items, {len(sentences)} sentences"
                            f"{'' if ratings is None else f' and {len(ratings)} ratings'}; expected one of each "
                            "per training row")
        return cls(users, items, sentences, ratings)

    def knows(self, item_id: str) -> bool:
        """Whether the item has a training sentence (so a plan and a grounding score)."""
        return item_id in self.item_words

    def words(self, user_id: str, item_id: str, k: int) -> list[tuple[str, float]]:
        """The `k` words this user would most likely say about this item, best first, with weights
        in (0, 1] (the best is 1); [] for an item without training sentences."""
        own = self.user_words.get(user_id, set())
        scored = [(w, x * (1.0 + self.user_boost * (w in own))) for w, x in self.item_words.get(item_id, [])]
        scored.sort(key=lambda p: -p[1])
        top = scored[:k]
        if not top:
            return []
        best = top[0][1]
        return [(w, x / best) for w, x in top]

    def sentence_plans(self, user_id: str, item_id: str, n: int, k: int,
                       rating: float | None = None) -> list[list[tuple[str, float]]]:
        """Up to `n` plans, one per training sentence of the item: that sentence's `k` rarest content
        words (by idf over items; weights scaled to a maximum of 1). The sentences come ordered by
        how far their review's stars are from `rating` (the rating this text goes with: what buyers
        who liked the item as much said), then by the share of their words this user has written
        before, then by training order. Each says one thing other buyers said about the item, for a
        candidate text to be written from."""
        own = self.user_words.get(user_id, set())
        scored = []
        for order, (sentence, stars) in enumerate(self.item_sentences.get(item_id, [])):
            words = list(dict.fromkeys(w for w in self.analyzer(sentence) if w in self.idf))
            if words:
                gap = abs(round(rating) - stars) if rating is not None and stars is not None else 0
                scored.append((gap, -sum(w in own for w in words) / len(words), order, words))
        plans = []
        for *_, words in sorted(scored)[:n]:
            top = sorted(words, key=lambda w: -self.idf[w])[:k]
            best = self.idf[top[0]]
            plans.append([(w, self.idf[w] / best) for w in top])
        return plans

    @functools.cached_property
    def tones(self) -> np.ndarray:
        """VADER compound of each training sentence, shape (rows,) (`features.sentences.vader_compound`)."""
        return vader_compound(self.sentences)

    def get_state(self) -> dict[str, Any]:
        return {"plan.users": self.users, "plan.items": self.items, "plan.sentences": self.sentences,
                "plan.ratings": self.ratings}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ContentPlan:
        return cls(state["plan.users"], state["plan.items"], state["plan.sentences"], state.get("plan.ratings"))


__all__ = ["ContentPlan"]
