"""The request and response types every part of feedbackgen speaks.

They live at the top of the package (not in `generation`) because `models` returns them and
`generation` depends on `models`: the types are shared vocabulary, not a layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _unicode(text: str) -> bool:
    """False for a string with a lone surrogate ("\\ud800" in JSON): it cannot be written out as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: int | float) -> bool:
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
                raise ValueError(f"FeedbackRequest.{name} must be a non-empty string, got {value!r}")
        if self.aspect is not None and (not isinstance(self.aspect, str) or not _unicode(self.aspect)):
            raise ValueError(f"FeedbackRequest.aspect must be a string or None, got {self.aspect!r}")
        if self.rating is not None and (
            isinstance(self.rating, bool)
            or not isinstance(self.rating, (int, float))
            or not _finite(self.rating)
        ):
            raise ValueError(f"FeedbackRequest.rating must be a finite number or None, got {self.rating!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise ValueError(f"FeedbackRequest.seed must be an integer in [0, 2**63) or None, got {self.seed!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeedbackRequest:
        if not isinstance(d, dict):
            raise ValueError(f"a request must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("user_id", "item_id") if k not in d]
        if missing:
            raise ValueError(f"request is missing field(s) {', '.join(missing)}")
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
    """What a generator says `user_id` would give `item_id`: a star rating and a text."""

    user_id: str
    item_id: str
    rating: float
    text: str
    aspects: list[str] = field(default_factory=list)
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

