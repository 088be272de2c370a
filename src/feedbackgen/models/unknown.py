"""What a generator says about an item it knows nothing about: the per-call `Decoding.unknown_item` policy.

A text generator asked about an item it never saw in training still writes fluent text (peter
gives a confident sentence, an LM invents one), and nothing in that text tells a reader it is
made up (issue 25). `Decoding.unknown_item` decides, per call, for every text generator
(`Generator.generate` and the LLM generators' own `generate` call `apply_policy`):

- `"none"` (the default): no text, `meta.provenance = "none"` with `meta.fallback` saying why, as
  `retrieval` and `popular` already answer an explanation of an item without a training sentence;
- `"fallback"`: `UNKNOWN_ITEM_TEXT` ("No reviews of this item yet."), `meta.provenance = "fallback"`;
- `"generate"`: the model's own text (the behaviour before the policy).

The rating is the generator's either way (a rating model answers a new item with its baseline).
Every answer says whether its item was unknown (`meta.unknown_item`, rating-only models too), so a
table or the report can count them whatever the policy.

"Unknown" is the generator's own knowledge (`known_items`): a generator that defines
`knows_items(item_ids)` says it itself (`llm` and `sft`: an item with neither a training review
nor a catalogue entry, since they can describe a catalogued item from its metadata); otherwise an
item is known when its `items` id map (`IdIndex`: peter, prompt_lm, the rating models) or its
rating model's (`retrieval`, `popular`) holds it, i.e. when it has a training interaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from feedbackgen.config import Decoding
from feedbackgen.models.folder import IdIndex
from feedbackgen.types import FALLBACK, NO_TEXT, FeedbackRequest, provenance

UNKNOWN_ITEM_TEXT = "No reviews of this item yet."
UNKNOWN_ITEM = "unknown item: nothing about it in the training data"
KEPT = ("unknown_user", "shots", "answer")  # entries about the request and the rating, not the replaced text


def known_items(generator: Any, item_ids: Sequence[str]) -> np.ndarray | None:
    """Whether `generator` knows each item (bool array, one per id), or None when it cannot say
    (no `knows_items`, no `items` id map, no rating model with one)."""
    knows = getattr(generator, "knows_items", None)
    if callable(knows):
        return np.asarray(knows(list(item_ids)), dtype=bool)
    for owner in (generator, getattr(generator, "rating", None)):
        items = getattr(owner, "items", None)
        if isinstance(items, IdIndex):
            return items.lookup(list(item_ids)) != IdIndex.UNKNOWN
    return None


def unknown_answer(policy: str, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(text, meta) for an unknown item under `policy` ("none" or "fallback"), from the generator's
    `meta` for it: its request entries (`KEPT`) stay; an answer that already had no text keeps its
    own reason under "none"."""
    kept = {k: meta[k] for k in KEPT if k in meta}
    if policy == "none":
        if meta.get("provenance") == NO_TEXT:
            return "", {**meta, "unknown_item": True}
        return "", {**provenance(NO_TEXT, fallback=UNKNOWN_ITEM), **kept, "unknown_item": True}
    return UNKNOWN_ITEM_TEXT, {**provenance(FALLBACK, fallback=UNKNOWN_ITEM), **kept, "unknown_item": True}


def apply_policy(generator: Any, requests: Sequence[FeedbackRequest], decoding: Decoding, texts: list[str],
                 metas: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """`texts` and `metas` (one per request, as `generate_text` returns them) with
    `meta["unknown_item"]` set on each, and the text of every unknown item replaced as
    `decoding.unknown_item` says (module docstring); a rating-only generator's empty texts stay
    empty. A generator that cannot tell a known item (`known_items` None) is left as it is."""
    known = known_items(generator, [r.item_id for r in requests])
    if known is None:
        return texts, metas
    writes = getattr(generator, "produces_text", True)
    texts, metas = list(texts), list(metas)
    for k, is_known in enumerate(known.tolist()):
        metas[k]["unknown_item"] = not is_known
        if writes and not is_known and decoding.unknown_item != "generate":
            texts[k], metas[k] = unknown_answer(decoding.unknown_item, metas[k])
    return texts, metas
