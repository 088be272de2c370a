"""Retrieval-augmented PETER: the retrieved training sentences of each row, as context token ids.

For a row (u, i), `feedbackgen.models.neighbours.NeighbourIndex` picks the `rag_k` training
sentences that best fit it (the item's sentences by the users most like u, u's sentences about the
items most like i; the known side alone for an unknown user or item). Each is cut like a target
(`max_words` words, then `rag_max_tokens // rag_k - 1` vocabulary tokens), ended by `<eos>`, and
the k are concatenated and padded with `<pad>` to `rag_max_tokens` (`model.py` masks the pads).

Training rows are encoded leave-one-out (`leave_out=True`): a training row never reads its own
sentence, another sentence by its user about its item, or an exact copy of its text, so the model
learns to borrow from neighbours rather than to copy its target. Validation, test and served
requests read the training index as it is.

The index (the training sentences, their author and item, their embeddings) is saved in the
model folder: tensors `rag.vectors`, `rag.author`, `rag.about` in `model.safetensors`, the
sentences as `rag.texts` in `state.json`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from feedbackgen.data.text import tokenize
from feedbackgen.errors import DataError
from feedbackgen.models.base import IdIndex
from feedbackgen.models.neighbours import NeighbourIndex
from feedbackgen.models.vocab import EOS, PAD, Vocab

PREFIX = "rag."


class RagContext:
    """A `NeighbourIndex` over the training sentences and the settings of one PETER config."""

    def __init__(self, index: NeighbourIndex, k: int, max_tokens: int, sources: str, max_words: int):
        self.index, self.k, self.max_tokens, self.sources = index, k, max_tokens, sources
        self.max_words = max_words
        self._ids: list[list[int]] | None = None  # each index sentence's token ids, cut to its share

    @classmethod
    def fit(cls, train: pl.DataFrame, texts: Sequence[str], users: IdIndex, items: IdIndex, config) -> RagContext:
        """Index the training rows `train` (whose target texts are `texts`, in order)."""
        index = NeighbourIndex.build(texts, train["user_id"].to_list(), train["item_id"].to_list(),
                                     users, items, config.rag_embedding_model)
        return cls(index, config.rag_k, config.rag_max_tokens, config.rag_sources, config.max_words)

    @property
    def share(self) -> int:
        """Tokens per retrieved sentence, its `<eos>` included."""
        return max(2, self.max_tokens // self.k)

    def encode(self, vocab: Vocab, user_ids: Sequence[str], item_ids: Sequence[str],
               leave_out: bool = False) -> torch.Tensor:
        """(rows, max_tokens) int64 context ids. leave_out: the rows are the index's own training
        rows, in order (see the module docstring)."""
        if self._ids is None:
            words = [tokenize(t)[:self.max_words] for t in self.index.texts]
            self._ids = [ids[:self.share - 1] + [EOS] for ids in vocab.encode_batch(words)]
        if leave_out and len(user_ids) != len(self.index):
            raise DataError(f"leave-one-out encoding needs the {len(self.index)} indexed training rows, "
                            f"got {len(user_ids)}")
        users, items = self.index.users.lookup(list(user_ids)), self.index.items.lookup(list(item_ids))
        out = np.full((len(users), self.max_tokens), PAD, dtype=np.int64)
        for r, (u, i) in enumerate(zip(users, items)):
            rows = self.index.nearest(int(u), int(i), self.k, self.sources, r if leave_out else None)
            ids = [t for row in rows for t in self._ids[row]][:self.max_tokens]
            out[r, :len(ids)] = ids
        return torch.from_numpy(out)

    def neighbours(self, user_id: str, item_id: str) -> list[str]:
        """The retrieved sentences of one request, best first (for `Feedback.meta`)."""
        return self.index.neighbour_texts([user_id], [item_id], self.k, self.sources)[0]

    def get_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return self.index.get_state(PREFIX)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], state: dict, users: IdIndex, items: IdIndex,
                   config) -> RagContext:
        index = NeighbourIndex.from_state(tensors, state, users, items, PREFIX)
        return cls(index, config.rag_k, config.rag_max_tokens, config.rag_sources, config.max_words)
