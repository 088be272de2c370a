"""Is a trained text generator answering every request alike? The check after training, and its warning.

A text generator trained on too little data, or for too few steps, often learns one safe answer
("great product" for everyone) or a loop ("i i i i ..."), while its validation loss still looks
plausible. Training therefore decodes a small seeded sample of validation requests (greedy) and
takes the collapse signal of the outputs (`feedbackgen.collapse`: USR, repetition, the most
frequent text's share, and the rules that make them "collapsed" or "looping", which the evaluation
report applies too).

A collapsed model (every request answered alike) or a looping one (more than `LOOP_MAX` of its texts
repeat a phrase) is announced three ways: one line on stderr naming the numbers and what to do, the
signal in `training_log.jsonl`, and a `collapse` block in the saved folder's `training.json`.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.collapse import LOOP_MAX, LOOP_RULE, MIN_OUTPUTS, REPETITION_MAX, TOP_SHARE, USR_MIN, signal
from feedbackgen.config import Decoding
from feedbackgen.types import FeedbackRequest

SAMPLE = 200  # validation requests decoded per check


def sample_requests(rows: pl.DataFrame, seed: int, size: int = SAMPLE) -> list[FeedbackRequest]:
    """At most `size` (user, item[, aspect]) requests drawn from `rows` without replacement, seeded."""
    pick = np.random.default_rng(seed).permutation(len(rows))[:size]
    cols = ["user_id", "item_id"] + (["aspect"] if "aspect" in rows.columns else [])
    picked = rows.select(cols)[np.sort(pick)]
    return [FeedbackRequest(r[0], r[1], r[2] if len(r) > 2 else None) for r in picked.iter_rows()]


def probe(generator, requests: list[FeedbackRequest], max_new_tokens: int) -> dict[str, Any]:
    """Greedy texts of `generator` (a fitted `Generator`) for `requests`, and their `signal`."""
    decoding = Decoding(max_new_tokens=max_new_tokens, batch_size=64)
    texts, _ = generator.generate_text(list(requests), decoding)
    return signal(texts)


def message(name: str, sig: dict[str, Any], n_train: int, epochs: int) -> str:
    """The one-line warning for a collapsed model: what happened, naming the signal(s) that fired
    with their numbers and thresholds, and what to do."""
    fired = []
    if sig["usr"] < USR_MIN:
        fired.append(f"it wrote {sig['distinct']} distinct texts (USR {sig['usr']:.3f}, below {USR_MIN})")
    if sig["repetition"] > REPETITION_MAX:
        fired.append(f"{sig['repetition']:.0%} of its texts repeat themselves ({LOOP_RULE}; above {REPETITION_MAX:.0%})")
    if sig["n"] >= MIN_OUTPUTS and sig["top_share"] >= TOP_SHARE:
        fired.append(f"{sig['top_share']:.0%} of its texts are one text (at least {TOP_SHARE:.0%})")
    if not fired:
        fired.append(f"USR {sig['usr']:.3f}, repetition {sig['repetition']:.0%}")
    return (f"warning: {name} answers every request alike: of {sig['n']} validation requests "
            + " and ".join(fired) + f", after {n_train} training reviews and {epochs} epoch(s): give it more "
            "data or more epochs (docs/generators.md: how much data the text generators need)")


def loop_message(name: str, sig: dict[str, Any], n_train: int, epochs: int) -> str:
    """The one-line warning for a looping (not collapsed) model: how many texts loop, one of them,
    and what to do."""
    example = (sig.get("loop_example") or "")[:160]
    return (f"warning: {name} loops: {sig['looping_texts']} of its {sig['n']} validation texts "
            f"({sig['repetition']:.0%}, above {LOOP_MAX:.0%}) repeat themselves ({LOOP_RULE}), e.g. {example!r}, "
            f"after {n_train} training reviews and {epochs} epoch(s): decode with no_repeat_ngram_size=3 or "
            "repetition_penalty=1.2, or give it more data or epochs (docs/metrics.md: loops)")


def announce(name: str, sig: dict[str, Any], n_train: int, epochs: int) -> dict[str, Any]:
    """Print the warning to stderr when `sig` is collapsed or looping (`feedbackgen.collapse`);
    returns `sig` with the `warning` added."""
    if sig["collapsed"]:
        text = message(name, sig, n_train, epochs)
    elif sig.get("looping"):
        text = loop_message(name, sig, n_train, epochs)
    else:
        return sig
    print(f"feedbackgen: {text}", file=sys.stderr, flush=True)
    return {**sig, "warning": text}
