"""Is a trained text generator answering every request alike? The collapse signal, and its warning.

A text generator trained on too little data, or for too few steps, often learns one safe answer
("great product" for everyone) or a loop ("i i i i ..."), while its validation loss still looks
plausible. Training therefore decodes a small seeded sample of validation requests (greedy) and
measures two numbers on the outputs:

- **USR**, the unique sentence ratio: distinct outputs / outputs, as PETER's
  `utils.unique_sentence_percent` (Li, Zhang & Chen 2021) defines it; 1 = every answer differs.
- **repetition**: the share of outputs in which one token occurs `RUN` (3) or more times in a
  row ("i i i"); 0 = none loops.

The model is flagged `collapsed` when USR < `USR_MIN` (0.05: on the default 200-request sample,
fewer than 10 distinct answers) or repetition > `REPETITION_MAX` (0.5). Both thresholds sit far
from healthy models: the default `peter` preset trained on the whole Musical Instruments data
reaches USR 0.4-0.7 with no repeated runs (README, "How much data the text generators need").

A collapsed model is announced three ways: one line on stderr naming the numbers and what to do,
the signal in `training_log.jsonl`, and a `collapse` block in the saved folder's `training.json`.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.config import Decoding
from feedbackgen.errors import DataError
from feedbackgen.types import FeedbackRequest

USR_MIN = 0.05
REPETITION_MAX = 0.5
RUN = 3  # a token this many times in a row is a repetition
SAMPLE = 200  # validation requests decoded per check


def has_run(text: str, run: int = RUN) -> bool:
    """True when one whitespace-separated token occurs `run` or more times in a row in `text`."""
    tokens, count = text.split(), 1
    for prev, cur in zip(tokens, tokens[1:]):
        count = count + 1 if cur == prev else 1
        if count >= run:
            return True
    return False


def signal(texts: list[str]) -> dict[str, Any]:
    """The collapse signal of `texts` (one output per request).

    Returns {"n", "distinct", "usr", "repetition", "collapsed", "thresholds"}; USR and repetition
    are in [0, 1], rounded to 4 places. Raises ValueError for an empty list."""
    if not texts:
        raise DataError("the collapse signal needs at least one generated text")
    distinct = len(set(texts))
    usr = distinct / len(texts)
    repetition = sum(has_run(t) for t in texts) / len(texts)
    return {"n": len(texts), "distinct": distinct, "usr": round(usr, 4), "repetition": round(repetition, 4),
            "collapsed": usr < USR_MIN or repetition > REPETITION_MAX,
            "thresholds": {"usr_min": USR_MIN, "repetition_max": REPETITION_MAX, "run": RUN}}


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
        fired.append(f"{sig['repetition']:.0%} of its texts repeat a word {RUN}+ times in a row (it loops; "
                     f"above {REPETITION_MAX:.0%})")
    if not fired:
        fired.append(f"USR {sig['usr']:.3f}, repetition {sig['repetition']:.0%}")
    return (f"warning: {name} answers every request alike: of {sig['n']} validation requests "
            + " and ".join(fired) + f", after {n_train} training reviews and {epochs} epoch(s): give it more "
            "data or more epochs (README: how much data the text generators need)")


def announce(name: str, sig: dict[str, Any], n_train: int, epochs: int) -> dict[str, Any]:
    """Print the warning to stderr when `sig` is collapsed; returns `sig` with the `warning` added."""
    if not sig["collapsed"]:
        return sig
    text = message(name, sig, n_train, epochs)
    print(f"feedbackgen: {text}", file=sys.stderr, flush=True)
    return {**sig, "warning": text}
