"""`retrieval`: answer (user, item) with the training text that fits best.

Candidates are the item's texts written by other users and the user's texts about other items.
Each candidate (author v, item j) scores

    sim(user u, author v) + sim(item i, item j)

where a user's (item's) vector is the normalised mean embedding of their training texts
(all-MiniLM-L6-v2). An item candidate has j = i and a user candidate has v = u, so this picks
"the item's review by the most similar user" or "the user's review of the most similar item",
whichever is closer. Unknown ids have no vector (similarity 0); ties go to the text closest to
the user's and item's centroid. With an aspect in the request, candidates mentioning that aspect
are preferred when there are any.

An explanation of item i must be about item i (issue 15: a banjo "explained" by the user's
sentence about a tuner). So with `target="explanation"` only the item's own sentences (by other
users) are candidates, whatever `candidates` says, and an item without any gets an empty text
with provenance "none: no sentence about this item". With `target="review"` the user's reviews of
other items stay candidates (they carry the user's way of writing), and a request with no
candidate at all takes the best text of the whole training split, marked as a fallback. Every
answer records the review it copied (`meta["source_user"]`, `meta["source_item"]`; see
`feedbackgen.types.provenance`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
import torch
from pydantic import Field

from feedbackgen.config import StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.embeddings import DEFAULT_MODEL, embed
from feedbackgen.models.base import Generator, IdIndex, register
from feedbackgen.models.rating import fit_rating_model, rating_model_from_state, rating_model_state
from feedbackgen.models.text_units import Target, target_column, target_rows
from feedbackgen.types import COPIED, FALLBACK, NO_ITEM_SENTENCE, NO_TEXT, provenance


class RetrievalConfig(StrictModel):
    target: Target = "explanation"
    candidates: Literal["both", "item", "user"] = Field(
        "both", description="where candidate texts come from (target=review; an explanation always comes from the item)")
    embedding_model: str = Field(DEFAULT_MODEL, description="sentence-transformers folder or name")
    rating_model: Literal["global_mean", "bias", "mf"] = "mf"


def _mean_vectors(index: np.ndarray, vecs: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, vecs.shape[1]), dtype=np.float32)
    np.add.at(out, index, vecs)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.where(norms > 0, norms, 1.0)
    out[IdIndex.UNKNOWN] = 0.0
    return out


@register
class Retrieval(Generator):
    name = "retrieval"
    Config = RetrievalConfig

    def fit(self, dataset: Dataset) -> Retrieval:
        dataset.require(self.name, text=True)
        rows = target_rows(dataset, "train", self.config.target)
        self.texts = rows[target_column(self.config.target)].to_list()
        self.aspects = rows["aspect"].to_list() if "aspect" in rows.columns else [None] * len(rows)
        self.users = IdIndex(rows["user_id"].to_list())
        self.items = IdIndex(rows["item_id"].to_list())
        self.author = self.users.lookup(rows["user_id"].to_list())
        self.about = self.items.lookup(rows["item_id"].to_list())
        self.vectors = embed(self.texts, self.config.embedding_model, show_progress=True)
        self._index_vectors()
        self.rating = fit_rating_model(self.config.rating_model, dataset)
        self.rating_range = self.rating.rating_range
        self.is_fitted = True
        return self

    def _index_vectors(self) -> None:
        self.user_vectors = _mean_vectors(self.author, self.vectors, len(self.users))
        self.item_vectors = _mean_vectors(self.about, self.vectors, len(self.items))
        by_item = pl.DataFrame({"k": self.about, "row": np.arange(len(self.about))}).group_by("k").agg("row")
        by_user = pl.DataFrame({"k": self.author, "row": np.arange(len(self.author))}).group_by("k").agg("row")
        self.rows_of_item = {k: np.asarray(v) for k, v in by_item.iter_rows()}
        self.rows_of_user = {k: np.asarray(v) for k, v in by_user.iter_rows()}

    def predict_rating(self, requests):
        self.check_fitted()
        return self.rating.predict_rating(requests)

    def _candidates(self, u: int, i: int) -> np.ndarray:
        """Training rows that may answer (u, i); empty when none may (see the module docstring)."""
        about_item = self.config.target == "explanation"  # an explanation of i is about i
        parts = []
        if (about_item or self.config.candidates in ("both", "item")) and i in self.rows_of_item:
            parts.append(self.rows_of_item[i][self.author[self.rows_of_item[i]] != u])
        if not about_item and self.config.candidates in ("both", "user") and u in self.rows_of_user:
            parts.append(self.rows_of_user[u][self.about[self.rows_of_user[u]] != i])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def generate_text(self, requests, decoding):
        texts, metas = [], []
        for r in requests:
            u, i = self.users.get(r.user_id), self.items.get(r.item_id)
            rows = self._candidates(u, i)
            kind = COPIED
            if not len(rows) and self.config.target == "explanation":
                texts.append("")
                metas.append(provenance(NO_TEXT, fallback=NO_ITEM_SENTENCE))
                continue
            if not len(rows):
                rows, kind = np.arange(len(self.texts)), FALLBACK
            if r.aspect:
                with_aspect = rows[[self.aspects[k] == r.aspect for k in rows]]
                rows = with_aspect if len(with_aspect) else rows
            centre = self.user_vectors[u] + self.item_vectors[i]
            score = (self.user_vectors[self.author[rows]] @ self.user_vectors[u]
                     + self.item_vectors[self.about[rows]] @ self.item_vectors[i]
                     + 1e-3 * (self.vectors[rows] @ centre))
            best = int(rows[int(np.argmax(score))])
            texts.append(self.texts[best])
            metas.append({**provenance(kind, source_user=self.users.ids[self.author[best] - 1],
                                       source_item=self.items.ids[self.about[best] - 1],
                                       fallback="no candidate: best of all training texts" if kind == FALLBACK
                                       else None),
                          "score": round(float(score.max()), 4)})
        return texts, metas

    def get_state(self):
        tensors, rating = rating_model_state(self.rating)
        tensors.update(vectors=torch.from_numpy(self.vectors), author=torch.from_numpy(self.author),
                       about=torch.from_numpy(self.about))
        return tensors, {"texts": self.texts, "aspects": self.aspects, "users": self.users.ids,
                         "items": self.items.ids, **rating}

    def set_state(self, tensors, state):
        self.texts, self.aspects = state["texts"], state["aspects"]
        self.users, self.items = IdIndex(state["users"]), IdIndex(state["items"])
        self.vectors = tensors["vectors"].numpy()
        self.author, self.about = tensors["author"].numpy(), tensors["about"].numpy()
        self._index_vectors()
        self.rating = rating_model_from_state(tensors, state)
