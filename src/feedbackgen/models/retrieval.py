"""`retrieval`: answer (user, item) with the training text that fits best.

Candidates and their score are `feedbackgen.models.neighbours`' (shared with retrieval-augmented
generation): the item's texts written by other users and the user's texts about other items, each
(author v, item j) scoring sim(user u, author v) + sim(item i, item j) over mean all-MiniLM-L6-v2
embeddings. An item candidate has j = i and a user candidate has v = u, so this picks "the item's
review by the most similar user" or "the user's review of the most similar item", whichever is
closer. Unknown ids have no vector (similarity 0); ties go to the text closest to the user's and
item's centroid; with both ids unknown every training text is a candidate. With an aspect in the
request, candidates mentioning that aspect are preferred when there are any.

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
from pydantic import Field

from feedbackgen.config import StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.embeddings import DEFAULT_MODEL
from feedbackgen.models.base import Generator, IdIndex, register
from feedbackgen.models.neighbours import NeighbourIndex
from feedbackgen.models.rating import DelegatedRating, rating_model_from_state, rating_model_state
from feedbackgen.models.text_units import Target, target_column, target_rows
from feedbackgen.types import COPIED, FALLBACK, NO_ITEM_SENTENCE, NO_TEXT, provenance


class RetrievalConfig(StrictModel):
    target: Target = "explanation"
    candidates: Literal["both", "item", "user"] = Field(
        "both", description="where candidate texts come from (target=review; an explanation always comes from the item)")
    embedding_model: str = Field(DEFAULT_MODEL, description="sentence-transformers folder or name")
    rating_model: Literal["global_mean", "bias", "mf"] = "mf"


@register
class Retrieval(DelegatedRating, Generator):
    name = "retrieval"
    Config = RetrievalConfig

    def fit(self, dataset: Dataset) -> Retrieval:
        dataset.require(self.name, text=True)
        rows = target_rows(dataset, "train", self.config.target)
        self.aspects = rows["aspect"].to_list() if "aspect" in rows.columns else [None] * len(rows)
        users, items = IdIndex(rows["user_id"].to_list()), IdIndex(rows["item_id"].to_list())
        self.index = NeighbourIndex.build(rows[target_column(self.config.target)].to_list(),
                                          rows["user_id"].to_list(), rows["item_id"].to_list(),
                                          users, items, self.config.embedding_model)
        self.fit_rating(dataset)
        self.is_fitted = True
        return self

    def generate_text(self, requests, decoding):
        ix = self.index
        texts, metas = [], []
        for r in requests:
            u, i = ix.users.get(r.user_id), ix.items.get(r.item_id)
            about_item = self.config.target == "explanation"  # an explanation of i is about i
            rows = ix.candidates(u, i, "item" if about_item else self.config.candidates)
            kind = COPIED
            if not len(rows) and about_item:
                texts.append("")
                metas.append(provenance(NO_TEXT, fallback=NO_ITEM_SENTENCE))
                continue
            if not len(rows):
                rows, kind = np.arange(len(ix)), FALLBACK
            if r.aspect:
                with_aspect = rows[[self.aspects[k] == r.aspect for k in rows]]
                rows = with_aspect if len(with_aspect) else rows
            score = ix.score(u, i, rows)
            best = int(rows[int(np.argmax(score))])
            texts.append(ix.texts[best])
            metas.append({**provenance(kind, source_user=ix.users.ids[ix.author[best] - 1],
                                       source_item=ix.items.ids[ix.about[best] - 1],
                                       fallback="no candidate: best of all training texts" if kind == FALLBACK
                                       else None),
                          "score": round(float(score.max()), 4)})
        return texts, metas

    def get_state(self):
        tensors, rating = rating_model_state(self.rating)
        index_tensors, index_state = self.index.get_state()
        tensors.update(index_tensors)
        return tensors, {**index_state, "aspects": self.aspects, "users": self.index.users,
                         "items": self.index.items, **rating}

    def set_state(self, tensors, state):
        self.aspects = state["aspects"]
        self.index = NeighbourIndex.from_state(tensors, state, IdIndex.of(state["users"]),
                                               IdIndex.of(state["items"]))
        self.rating = rating_model_from_state(tensors, state)
