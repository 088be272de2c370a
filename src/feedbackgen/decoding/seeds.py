"""Each request's seed and random stream (no torch, so a generator can draw seeds without loading it).
See the package docstring for how seeds make a request's text reproducible."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Sequence

from feedbackgen.config import Decoding
from feedbackgen.errors import DataError
from feedbackgen.types import FeedbackRequest

DRAWN_SEED_BITS = 32  # drawn seeds stay short enough to read and type back


def with_seeds(requests: Sequence[FeedbackRequest], decoding: Decoding,
               draw: bool | None = None) -> list[FeedbackRequest]:
    """`requests`, each carrying the seed it decodes with: its own, else `decoding.seed`, else a
    fresh draw from the OS when `draw` (default: `decoding.do_sample`), else 0."""
    draw = decoding.do_sample if draw is None else draw
    out = []
    for r in requests:
        if r.seed is None:
            seed = decoding.seed if decoding.seed is not None else (
                secrets.randbits(DRAWN_SEED_BITS) if draw else 0)
            r = dataclasses.replace(r, seed=seed)
        out.append(r)
    return out


def stream_seed(request: FeedbackRequest, salt: int = 0) -> int:
    """The 63-bit seed of `request`'s random stream: a hash of its seed, its fields and `salt`
    (a retry's number), so requests that share a seed still draw independently. Needs
    `request.seed` set (`with_seeds`)."""
    if request.seed is None:
        raise DataError("stream_seed needs a request with its seed set (use with_seeds)")
    key = "\x1f".join(str(x) for x in (request.seed, request.user_id, request.item_id, request.aspect,
                                        request.rating, salt))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
