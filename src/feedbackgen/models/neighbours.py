"""The training texts nearest to a (user, item) request: the neighbour search shared by the
`retrieval` generator (which answers with the best one) and retrieval-augmented generation (RAG:
`peter`, `prompt_lm` and `sft` read the best k as extra input).

Candidates for a request (u, i) are the training texts about item i by other users ("item"
source) and u's own training texts about other items ("user" source); when u or i is unknown only
the known side has candidates. A candidate written by v about j scores

    sim(u, v) + sim(i, j) + 1e-3 · (text · (u + i))

where a user's (item's) vector is the normalised sum of the all-MiniLM-L6-v2 embeddings of their
training texts, and the small last term (the text's closeness to the request's centroid) breaks
ties, e.g. between the item's texts when u is unknown (similarity 0 to everyone). This is a
content-based k-nearest-neighbour choice in the spirit of the retrieval baselines of Li et al.'s
PETER/PEPLER papers; the candidate sets are theirs ("the item's reviews, the user's reviews").

Leave-one-out (`leave_out=row`, for a training row): the row itself, every other training text
by the same user about the same item (a candidate never has author u *and* item i), and every
exact copy of its text (whitespace and case folded) are excluded, and the row's own embedding is
taken out of u's and i's vectors before scoring, so a model trained on its neighbours learns to
use them rather than to find its own target among them. Only texts given at construction (the
training split) can ever be returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from feedbackgen.embeddings import embed
from feedbackgen.errors import DataError
from feedbackgen.models.base import IdIndex

Sources = Literal["both", "item", "user"]
TIE_BREAK = 1e-3


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def _group(keys: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    return {int(keys[g[0]]): g for g in np.split(order, bounds) if len(g)}


class NeighbourIndex:
    """Training texts with their author and item, answering "which k texts best fit (u, i)".

    texts: the n training texts; author, about: (n,) int64 indices into `users` / `items`
    (`IdIndex`, 0 = unknown); vectors: (n, d) float32 L2-normalised text embeddings."""

    def __init__(self, texts: Sequence[str], author: np.ndarray, about: np.ndarray,
                 vectors: np.ndarray, users: IdIndex, items: IdIndex):
        if not (len(texts) == len(author) == len(about) == len(vectors)):
            raise DataError(f"texts, author, about and vectors differ in length: {len(texts)}, "
                            f"{len(author)}, {len(about)}, {len(vectors)}")
        self.texts, self.users, self.items = list(texts), users, items
        self.author, self.about = np.asarray(author, np.int64), np.asarray(about, np.int64)
        self.vectors = np.asarray(vectors, np.float32)
        dim = self.vectors.shape[1]
        self.user_sum = np.zeros((len(users), dim), np.float32)
        self.item_sum = np.zeros((len(items), dim), np.float32)
        np.add.at(self.user_sum, self.author, self.vectors)
        np.add.at(self.item_sum, self.about, self.vectors)
        self.user_sum[IdIndex.UNKNOWN] = self.item_sum[IdIndex.UNKNOWN] = 0.0
        self.rows_of_user, self.rows_of_item = _group(self.author), _group(self.about)
        folded = [_fold(t) for t in self.texts]
        first: dict[str, int] = {}
        self.text_key = np.array([first.setdefault(f, len(first)) for f in folded], np.int64)

    @classmethod
    def build(cls, texts: Sequence[str], user_ids: Sequence[str], item_ids: Sequence[str],
              users: IdIndex, items: IdIndex, embedding_model: str) -> NeighbourIndex:
        """Embed `texts` (one per training row, written by `user_ids` about `item_ids`)."""

        return cls(texts, users.lookup(list(user_ids)), items.lookup(list(item_ids)),
                   embed(list(texts), embedding_model), users, items)

    def __len__(self) -> int:
        return len(self.texts)

    def row_of(self, user_id: str, item_id: str) -> int | None:
        """A training row of (user_id, item_id), the one to leave out for that pair; None if none."""
        if not hasattr(self, "_pairs"):
            self._pairs: dict[tuple[int, int], int] = {}
            for r, key in enumerate(zip(self.author.tolist(), self.about.tolist())):
                self._pairs.setdefault(key, r)
        return self._pairs.get((self.users.get(user_id), self.items.get(item_id)))

    # -- search ----------------------------------------------------------------------------------
    def candidates(self, u: int, i: int, sources: Sources = "both") -> np.ndarray:
        """Rows about i by others and rows by u about other items (empty when both are unknown)."""
        parts = [np.zeros(0, np.int64)]
        if sources in ("both", "item") and i in self.rows_of_item:
            rows = self.rows_of_item[i]
            parts.append(rows[self.author[rows] != u])
        if sources in ("both", "user") and u in self.rows_of_user:
            rows = self.rows_of_user[u]
            parts.append(rows[self.about[rows] != i])
        return np.concatenate(parts)

    def _vector(self, sums: np.ndarray, k: int, leave_out: int | None, owner: np.ndarray) -> np.ndarray:
        v = sums[k].copy()
        if leave_out is not None and k != IdIndex.UNKNOWN and owner[leave_out] == k:
            v -= self.vectors[leave_out]
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 1e-6 else np.zeros_like(v)

    def score(self, u: int, i: int, rows: np.ndarray, leave_out: int | None = None) -> np.ndarray:
        """The module docstring's score of each of `rows` for the request (u, i)."""
        uv = self._vector(self.user_sum, u, leave_out, self.author)
        iv = self._vector(self.item_sum, i, leave_out, self.about)

        def unit(sums: np.ndarray, keys: np.ndarray, own: int, own_vector: np.ndarray) -> np.ndarray:
            m = sums[keys]
            m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-6)
            m[keys == own] = own_vector  # u's (i's) own vector, without the left-out text
            return m

        return (unit(self.user_sum, self.author[rows], u, uv) @ uv
                + unit(self.item_sum, self.about[rows], i, iv) @ iv
                + TIE_BREAK * (self.vectors[rows] @ (uv + iv)))

    def nearest(self, u: int, i: int, k: int, sources: Sources = "both",
                leave_out: int | None = None) -> np.ndarray:
        """Up to k rows, best first (ties to the lower row); `leave_out`: a training row answering
        for itself (see the module docstring)."""
        rows = self.candidates(u, i, sources)
        if leave_out is not None:
            rows = rows[(rows != leave_out) & (self.text_key[rows] != self.text_key[leave_out])]
        if len(rows) == 0 or k <= 0:
            return rows[:0]
        order = np.lexsort((rows, -self.score(u, i, rows, leave_out)))
        return rows[order[:k]]

    def neighbour_texts(self, user_ids: Sequence[str], item_ids: Sequence[str], k: int,
                        sources: Sources = "both",
                        leave_out: Sequence[int | None] | None = None) -> list[list[str]]:
        """The texts of `nearest` for each (user, item) (ids as strings; unknown ones allowed)."""
        us, its = self.users.lookup(list(user_ids)), self.items.lookup(list(item_ids))
        outs = leave_out if leave_out is not None else [None] * len(us)
        return [[self.texts[r] for r in self.nearest(int(u), int(i), k, sources, lo)]
                for u, i, lo in zip(us, its, outs)]

    # -- state -----------------------------------------------------------------------------------
    def get_state(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors for model.safetensors, plain data for state.json), keys starting with `prefix`."""
        tensors = {f"{prefix}vectors": torch.from_numpy(self.vectors),
                   f"{prefix}author": torch.from_numpy(self.author),
                   f"{prefix}about": torch.from_numpy(self.about)}
        return tensors, {f"{prefix}texts": self.texts}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], state: dict, users: IdIndex, items: IdIndex,
                   prefix: str = "") -> NeighbourIndex:
        return cls(state[f"{prefix}texts"], tensors[f"{prefix}author"].numpy(),
                   tensors[f"{prefix}about"].numpy(), tensors[f"{prefix}vectors"].numpy(), users, items)
