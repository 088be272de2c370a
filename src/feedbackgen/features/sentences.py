"""What a text says, scored against the training sentences: the nearest one and its items, and tone.

Two measures shared by the generators (which choose among candidate texts with them,
`feedbackgen.models.rerank`) and by evaluation (which reports them, `feedbackgen.evaluation`), so
that the text a generator picks as "about this item" is judged by the same rule:

- `SentencePool`: the training sentences, identical ones merged with the set of items they were
  written about, as TF-IDF vectors (scikit-learn `TfidfVectorizer` fitted on the pool:
  lower-cased, words of two or more characters, smoothed idf, l2-normalised). A text's nearest
  sentence is the one of highest cosine similarity (ties: the first in pool order). Item grounding
  (`feedbackgen.evaluation.grounding`) asks whether that sentence was written about the text's item;
  `item_margin` is its smooth version for ranking candidates: the best cosine with one of the item's
  sentences minus the best with any other item's.
- `vader_compound`: VADER's compound sentiment score in [-1, 1] (Hutto & Gilbert, ICWSM 2014;
  the `vaderSentiment` package).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from feedbackgen.errors import DataError

_CHUNK = 2048  # texts scored at once: the dense (texts, pool) similarity block stays small


class SentencePool:
    """The training sentences of one text column, identical ones merged, as TF-IDF vectors.

    `SentencePool(sentences, items)`: one item id per sentence (in training order). Raises DataError
    when there is no non-empty sentence."""

    def __init__(self, sentences: Sequence[str], items: Sequence[str]):
        merged: dict[str, set[str]] = {}
        for text, item in zip(sentences, items):
            if text and text.strip():
                merged.setdefault(text, set()).add(item)
        if not merged:
            raise DataError("the training split has no text to ground in")
        self.sentences = list(merged)
        self.items_of = [merged[s] for s in self.sentences]
        self.known_items = set().union(*self.items_of)
        self.vectorizer = TfidfVectorizer(lowercase=True)
        self.vectors = self.vectorizer.fit_transform(self.sentences).tocsr()
        # each item's sentences, to take the best similarity inside and outside the item
        rows_of: dict[str, list[int]] = {}
        for r, items in enumerate(self.items_of):
            for item in items:
                rows_of.setdefault(item, []).append(r)
        self.rows_of = {item: np.array(rows) for item, rows in rows_of.items()}

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """TF-IDF vectors (texts, vocabulary) of `texts` in the pool's vocabulary."""
        return self.vectorizer.transform(list(texts)).tocsr()

    def nearest(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(index of each text's nearest pool sentence, whether the text has any pool word); the
        index is meaningless (0) for a text without one."""
        q = self.transform(texts)
        nearest = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), _CHUNK):
            sims = (q[start:start + _CHUNK] @ self.vectors.T).toarray()
            nearest[start:start + _CHUNK] = sims.argmax(axis=1)
        return nearest, np.asarray(q.getnnz(axis=1) > 0)

    def item_margin(self, texts: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Per text: best cosine with a sentence about its item − best cosine with any other item's
        sentence, in [-1, 1] (> 0: its nearest sentence is about its item). NaN for an item without
        a training sentence."""
        q = self.transform(texts)
        out = np.full(len(texts), np.nan)
        for start in range(0, len(texts), _CHUNK):
            sims = (q[start:start + _CHUNK] @ self.vectors.T).toarray()
            for r, item in enumerate(items[start:start + _CHUNK]):
                about = self.rows_of.get(item)
                if about is None:
                    continue
                own = sims[r, about].max()
                sims[r, about] = -1.0
                out[start + r] = own - max(0.0, sims[r].max())
        return out


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score in [-1, 1] per text (negative to positive); shape (len(texts),)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # 0.2 s to build its lexicon

    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


__all__ = ["SentencePool", "vader_compound"]
