"""Choice models that score an item by the items a user already took: popularity, item-kNN, EASE.

All three learn from the binary train matrix X (users x items) and score a user u as a row of
X[u] @ W for an items x items weight matrix W (popularity: every user alike).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from feedbackgen.data.dataset import Dataset
from feedbackgen.recommend.choice.base import (ChoiceConfig, ChoiceModel, Interactions, read_sparse,
                                               register_choice, sparse_arrays)


@register_choice
class Popularity(ChoiceModel):
    """Scores an item by its number of training interactions, for every user alike: the floor a
    personalised ranking must clear, and every other model's answer for users it does not know.

    Items never seen in training score `UNKNOWN_ITEM_SCORE` (-inf) through `score`, 0 through `count`.
    """

    name = "popularity"
    folds_history = True

    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:
        pass  # the base class counts every item's train interactions into self.popularity

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(rows), len(self.popularity))).copy()

    def score_history(self, taken: sp.csr_matrix) -> np.ndarray:
        return self.score_rows(np.zeros(taken.shape[0], dtype=np.int64))  # the same list for everyone

    def count(self, item_ids: Sequence[str]) -> np.ndarray:
        """Train interactions per item, shape (len(item_ids),); 0 for unknown items (a tie-breaker)."""
        self.check_fitted()
        cols = self.item_cols(item_ids)
        return np.where(cols >= 0, self.popularity[np.maximum(cols, 0)], 0.0)

    def get_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass


class ItemKNNConfig(ChoiceConfig):
    neighbours: int = Field(100, ge=1, le=100_000, description="k: most similar items kept per item")
    shrink: float = Field(10.0, ge=0.0, le=1e6, description="added to the cosine's denominator: damps "
                                                             "similarities that rest on few common users")


@register_choice
class ItemKNN(ChoiceModel):
    """Item-based collaborative filtering (Sarwar, Karypis, Konstan & Riedl, "Item-Based Collaborative
    Filtering Recommendation Algorithms", WWW 2001), on binary data with a shrunk cosine:

        sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink),   sim(j, j) = 0

    where U_i is the set of train users of item i. For each target item j only its `neighbours`
    most similar items are kept (RecBole's ItemKNN does the same); score(u, j) = sum over the
    items i the user took of sim(i, j).

    Memory: the similarity is built a block of target items at a time (items x block dense), and
    kept sparse (items x neighbours), so it scales with the number of items times k.
    """

    name = "itemknn"
    folds_history = True
    Config = ItemKNNConfig
    grid = {"neighbours": (50, 100, 200, 500), "shrink": (0.0, 10.0, 100.0, 500.0)}
    BLOCK = 1024  # target items per block of the similarity

    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:
        x = data.matrix
        xc = x.tocsc()
        n_items = x.shape[1]
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        k = min(self.config.neighbours, max(n_items - 1, 1))
        rows, cols, vals = [], [], []
        for lo in range(0, n_items, self.BLOCK):
            hi = min(lo + self.BLOCK, n_items)
            co = (x.T @ xc[:, lo:hi]).toarray()  # common users, items x block
            denom = norms[:, None] * norms[None, lo:hi] + self.config.shrink
            sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
            sim[np.arange(lo, hi), np.arange(hi - lo)] = 0.0
            top = np.argpartition(-sim, k - 1, axis=0)[:k] if k < n_items else np.indices(sim.shape)[0]
            top_vals = np.take_along_axis(sim, top, axis=0)
            keep = top_vals > 0
            rows.append(top[keep])
            cols.append(np.broadcast_to(np.arange(lo, hi), top.shape)[keep])
            vals.append(top_vals[keep])
        self.similarity = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                        shape=(n_items, n_items))

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.score_history(self.seen[rows])

    def score_history(self, taken: sp.csr_matrix) -> np.ndarray:
        return np.asarray((taken @ self.similarity).toarray(), dtype=np.float64)

    def get_arrays(self) -> dict[str, np.ndarray]:
        return sparse_arrays("similarity", self.similarity)

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(self.item_ids)
        self.similarity = read_sparse(arrays, "similarity", (n, n))


class EASEConfig(ChoiceConfig):
    l2: float = Field(200.0, gt=0.0, le=1e7, description="λ: L2 penalty on the item-item weights")


@register_choice
class EASE(ChoiceModel):
    """EASE^R (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019), closed form:

        P = (XᵀX + λI)⁻¹,   B_ij = -P_ij / P_jj (i ≠ j),   B_jj = 0,   scores = X B

    Memory and time: B and P are dense items x items float64 (8·n² bytes each; 3.7k items = 110 MB,
    20k items = 3.2 GB) and the inverse costs O(n³): beyond a few tens of thousands of items use
    `itemknn` (sparse) or `als`.
    """

    name = "ease"
    folds_history = True
    Config = EASEConfig
    grid = {"l2": (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)}

    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:
        gram = (data.matrix.T @ data.matrix).toarray()
        gram[np.diag_indices_from(gram)] += self.config.l2
        p = np.linalg.inv(gram)
        weights = p / -np.diag(p)  # column j divided by -P_jj
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.score_history(self.seen[rows])

    def score_history(self, taken: sp.csr_matrix) -> np.ndarray:
        return np.asarray(taken @ self.weights, dtype=np.float64)

    def get_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights = arrays["weights"]
