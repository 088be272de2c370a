"""What "collapsed" means: generated texts (one per request) that are nearly one text, or that loop.

One rule for the check after training (`feedbackgen.models.collapse`, on a sample of validation
requests) and for the evaluation report (`feedbackgen.evaluation.scoring`, on a whole file). It
sits at the bottom of the layers because both use it and evaluation never imports models.

Three numbers of the texts:

- **USR**, the unique sentence ratio: distinct texts / texts, as PETER's
  `utils.unique_sentence_percent` (Li, Zhang & Chen 2021) defines it; 1 = every text differs
  (the report passes PETER's USR of the tokenised texts);
- **repetition**: the share of texts in which one token occurs `RUN` (3) or more times in a row
  ("i i i"); 0 = none loops;
- **top share**: the share of the most frequent text.

The texts are collapsed when USR < `USR_MIN` (0.05), or repetition > `REPETITION_MAX` (0.5), or
the most frequent text is at least `TOP_SHARE` (0.5) of them, this last from `MIN_OUTPUTS` (10)
texts on (one or two texts are alike by chance). The thresholds sit far from healthy models: the
default `peter` preset trained on the whole Musical Instruments data reaches USR 0.4-0.7 with no
repeated runs (docs/generators.md, "How much data the text generators need").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from feedbackgen.errors import DataError

USR_MIN = 0.05
REPETITION_MAX = 0.5
TOP_SHARE = 0.5
MIN_OUTPUTS = 10
RUN = 3  # a token this many times in a row is a repetition
RULE = (f"USR < {USR_MIN}, or over {REPETITION_MAX:.0%} of the texts repeat a word {RUN}+ times in a row, or "
        f"one text ≥ {TOP_SHARE:.0%} of the outputs from {MIN_OUTPUTS} outputs on")


def has_run(text: str, run: int = RUN) -> bool:
    """True when one whitespace-separated token occurs `run` or more times in a row in `text`."""
    tokens, count = text.split(), 1
    for prev, cur in zip(tokens, tokens[1:]):
        count = count + 1 if cur == prev else 1
        if count >= run:
            return True
    return False


def signal(texts: Sequence[str], usr: float | None = None) -> dict[str, Any]:
    """The collapse signal of `texts` (one output per request).

    `usr`: the caller's own USR (the report's, of the tokenised texts); default distinct / all.
    Returns {"n", "distinct", "usr", "repetition", "top_share", "top_text", "collapsed",
    "thresholds"}; the shares are in [0, 1], rounded to 4 places. Raises DataError (a ValueError)
    for no texts."""
    if not texts:
        raise DataError("the collapse signal needs at least one generated text")
    n, distinct = len(texts), len(set(texts))
    usr = distinct / n if usr is None else usr
    repetition = sum(has_run(t) for t in texts) / n
    top_text, top_count = Counter(texts).most_common(1)[0]
    top_share = top_count / n
    return {"n": n, "distinct": distinct, "usr": round(usr, 4), "repetition": round(repetition, 4),
            "top_share": round(top_share, 4), "top_text": top_text,
            "collapsed": usr < USR_MIN or repetition > REPETITION_MAX or (n >= MIN_OUTPUTS and top_share >= TOP_SHARE),
            "thresholds": {"usr_min": USR_MIN, "repetition_max": REPETITION_MAX, "run": RUN,
                           "top_share": TOP_SHARE, "min_outputs": MIN_OUTPUTS}}
