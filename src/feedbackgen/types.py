"""The request and response types every part of feedbackgen speaks.

They live at the bottom of the package (not in `batch`) because `decoding` and `models` take and
return them and `batch` depends on `models`: the types are shared vocabulary, not a layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from feedbackgen.errors import DataError


def _unicode(text: str) -> bool:
    """False for a string with a lone surrogate ("\\ud800" in JSON): it cannot be written out as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_finite(value: int | float) -> bool:
    """math.isfinite, but False (not OverflowError) for an int beyond float range such as 10**400."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range, such as 10**400
        return False


@dataclass(frozen=True)
class FeedbackRequest:
    """Ask for the feedback `user_id` would give `item_id`, optionally about `aspect`.

    `rating` may be given to condition the text on a known rating (generators that cannot use it
    ignore it). `seed` (0 ≤ seed < 2**63) fixes this request's sampled text, whatever it is
    batched with; None takes the decoding's seed (see `feedbackgen.config.Decoding`).
    """

    user_id: str
    item_id: str
    aspect: str | None = None
    rating: float | None = None
    seed: int | None = None

    def __post_init__(self):
        for name in ("user_id", "item_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or not _unicode(value):
                raise DataError(f"FeedbackRequest.{name} must be a non-empty string, got {value!r}")
        if self.aspect is not None and (not isinstance(self.aspect, str) or not _unicode(self.aspect)):
            raise DataError(f"FeedbackRequest.aspect must be a string or None, got {self.aspect!r}")
        if self.rating is not None and (
            isinstance(self.rating, bool)
            or not isinstance(self.rating, (int, float))
            or not is_finite(self.rating)
        ):
            raise DataError(f"FeedbackRequest.rating must be a finite number or None, got {self.rating!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise DataError(f"FeedbackRequest.seed must be an integer in [0, 2**63) or None, got {self.seed!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeedbackRequest:
        if not isinstance(d, dict):
            raise DataError(f"a request must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("user_id", "item_id") if k not in d]
        if missing:
            raise DataError(f"request is missing field(s) {', '.join(missing)}")
        uid, iid = d["user_id"], d["item_id"]
        return cls(
            user_id=str(uid) if isinstance(uid, (int, str)) and not isinstance(uid, bool) else uid,
            item_id=str(iid) if isinstance(iid, (int, str)) and not isinstance(iid, bool) else iid,
            aspect=d.get("aspect"),
            rating=d.get("rating"),
            seed=d.get("seed"),
        )


# How an LLM generator's answer was obtained (`Feedback.meta["answer"]`): valid as given, repaired
# without guessing, valid after a retry, or the fallback. Counted by generate and evaluate.
ANSWER_KINDS = ("valid", "repaired", "retried", "fallback")


@dataclass
class Feedback:
    """What a generator says `user_id` would give `item_id`: a star rating and a text.

    `meta` holds per-sample details; every generator records there where `text` came from
    (`meta["provenance"]`, one of PROVENANCE, with the copied review's `source_user` and
    `source_item`: see `provenance` below).
    """

    user_id: str
    item_id: str
    rating: float
    text: str
    aspects: list[str] = field(default_factory=list)
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



# -- provenance: where a Feedback's text came from ----------------------------------------------
# Every generator records it in `Feedback.meta`, so a table, a Parquet file or a page can say
# whether a text was written for this (user, item) or copied from somewhere else (issue 15):
#
#   meta["provenance"]    one of PROVENANCE
#   meta["source_user"]   for a copied text: the author of the training review it was copied from
#   meta["source_item"]   ... and the item that review is about. A prepared dataset keeps one
#                         review per (user, item), so the pair names the review (its id).
#   meta["fallback"]      for FALLBACK / NO_TEXT: which stand-in was used, or why there is no text
GENERATED = "generated"  # written by a model for this request
COPIED = "copied"        # a training text verbatim, chosen as the answer (retrieval, popular)
FALLBACK = "fallback"    # the generator could not answer as designed; a stand-in text instead
NO_TEXT = "none"         # nothing to say (text ""), e.g. no training sentence about this item
PROVENANCE = (GENERATED, COPIED, FALLBACK, NO_TEXT)
NO_ITEM_SENTENCE = "no sentence about this item"  # the `fallback` of an explanation with NO_TEXT


def provenance(kind: str, *, source_user: str | None = None, source_item: str | None = None,
               fallback: str | None = None) -> dict[str, Any]:
    """The provenance entries of a `Feedback.meta` (see the comment above); None fields are left out.

    Raises ValueError for a kind outside PROVENANCE.
    """
    if kind not in PROVENANCE:
        raise DataError(f"provenance must be one of {', '.join(PROVENANCE)}, got {kind!r}")
    out: dict[str, Any] = {"provenance": kind}
    for key, value in (("source_user", source_user), ("source_item", source_item), ("fallback", fallback)):
        if value is not None:
            out[key] = value
    return out


def source_label(meta: dict[str, Any] | None, item_id: str | None = None) -> str:
    """A compact one-line provenance for tables: the kind, then why (fallback, none), then the
    review copied: "generated", "copied: U's review" (of `item_id`, the item being explained),
    "copied: U's review of J" (of another item), "fallback: why (U's review of J)",
    "none: no sentence about this item"; "" when `meta` records none (older output)."""
    meta = meta or {}
    kind = meta.get("provenance")
    if kind is None:
        return ""
    label = f"{kind}: {meta['fallback']}" if meta.get("fallback") else kind
    user, item = meta.get("source_user"), meta.get("source_item")
    if user is None and item is None:
        return label
    review = f"{user or '?'}'s review" + ("" if item in (None, item_id) else f" of {item}")
    return f"{label} ({review})" if meta.get("fallback") else f"{label}: {review}"
