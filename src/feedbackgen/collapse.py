"""What "collapsed" and "looping" mean: generated texts (one per request) that are nearly one text, or that loop.

One rule for the check after training (`feedbackgen.models.collapse`, on a sample of validation
requests) and for the evaluation report (`feedbackgen.evaluation.scoring`, on a whole file; its
`loops` metric is `loop_share`). It sits at the bottom of the layers because both use it and
evaluation never imports models.

**A text loops** (`looping_phrase` says what repeats) when, in its words (the PETER tokenisation's
`[a-z0-9']+` tokens, lower-cased, as `feedbackgen.data.text.tokenize`; punctuation is left out, so
"!!!!" and "......" are no loop):

1. one word occurs `RUN` (3) or more times in a row ("i i i"; punctuation between two words breaks
   the run, so "good, good good" is emphasis, not a run);
2. a phrase of `PHRASE` (3) or more words is said twice in a row ("I have a few months and I have a
   few months and I was looking for my strat"): a tandem repeat;
3. or its seq-rep-4 is at least `SEQ_REP_MAX` (0.2): a fifth or more of its 4-grams repeat an
   earlier one of the same text, as in a sentence written four times with other words between.
   seq-rep-n = 1 − |distinct n-grams| / |n-grams| of one text (Welleck et al., "Neural Text
   Degeneration with Unlikelihood Training", arXiv:1908.04319, 2019, ICLR 2020; there on the
   4-grams of 100-token continuations).

Measured on real texts (docs/metrics.md, "Loops and tone", gives the command): 29 of the 10,261
Musical Instruments 5-core reviews loop by this rule (0.28 %: "a cable is a cable is a cable",
"love love love") and 3 of the 9,846 PETER-format explanations (0.03 %); both loops of issue 25 do.

Three numbers of a set of texts:

- **USR**, the unique sentence ratio: distinct texts / texts, as PETER's
  `utils.unique_sentence_percent` (Li, Zhang & Chen 2021) defines it; 1 = every text differs
  (the report passes PETER's USR of the tokenised texts);
- **repetition**: the share of texts that loop (above); 0 = none loops;
- **top share**: the share of the most frequent text.

The texts are **collapsed** (nearly one answer for every request) when USR < `USR_MIN` (0.05), or
repetition > `REPETITION_MAX` (0.5), or the most frequent text is at least `TOP_SHARE` (0.5) of them,
this last from `MIN_OUTPUTS` (10) texts on (one or two texts are alike by chance). The thresholds
sit far from healthy models: the default `peter` preset trained on the whole Musical Instruments
data reaches USR 0.4-0.7 with no loops (docs/generators.md, "How much data the text generators need").

They are **looping** (a model that works but loops too often to be shown) when repetition >
`LOOP_MAX` (0.05, one text in twenty), from `MIN_OUTPUTS` texts on: over fifteen times the real
reviews' share and five times the 1 % issue 25 sets as the target, well below the 13 % (15 of 112)
a LoRA `sft` looped in there. Training announces either (`feedbackgen.models.collapse`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from feedbackgen.errors import DataError

USR_MIN = 0.05
REPETITION_MAX = 0.5
TOP_SHARE = 0.5
MIN_OUTPUTS = 10
RUN = 3  # a word this many times in a row is a loop
PHRASE = 3  # a phrase of this many words or more said twice in a row is a loop
SEQ_REP_N = 4  # seq-rep-4 (Welleck et al.)
SEQ_REP_MAX = 0.2  # ... at or above this is a loop
LOOP_MAX = 0.05  # more looping texts than this share: the model is announced as looping
LOOP_RULE = (f"a word {RUN}+ times in a row, a phrase of {PHRASE}+ words twice in a row, or seq-rep-{SEQ_REP_N} "
             f"≥ {SEQ_REP_MAX} (Welleck et al. 2019)")
RULE = (f"USR < {USR_MIN}, or over {REPETITION_MAX:.0%} of the texts loop ({LOOP_RULE}), or "
        f"one text ≥ {TOP_SHARE:.0%} of the outputs from {MIN_OUTPUTS} outputs on")

_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")  # feedbackgen.data.text's tokenisation (a lower layer)
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """The lower-cased word tokens of `text` (the PETER tokenisation without its punctuation)."""
    return _WORD.findall(text.lower())


def has_run(text: str, run: int = RUN) -> bool:
    """True when one word occurs `run` or more times in a row in `text` (punctuation breaks a run)."""
    return _run_word(text, run) is not None


def _run_word(text: str, run: int) -> str | None:
    tokens, count = _TOKEN.findall(text.lower()), 1
    for prev, cur in zip(tokens, tokens[1:]):
        count = count + 1 if cur == prev else 1
        if count >= run and _WORD.fullmatch(cur):
            return cur
    return None


def seq_rep(tokens: Sequence[str], n: int = SEQ_REP_N) -> float:
    """seq-rep-n of one text (Welleck et al. 2019): 1 − distinct n-grams / n-grams; 0 without an n-gram."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def tandem_phrase(tokens: Sequence[str], shortest: int = PHRASE) -> str | None:
    """The shortest phrase of at least `shortest` tokens said twice in a row in `tokens`, or None.

    A span of k tokens repeats at once where k consecutive positions j have tokens[j] ==
    tokens[j + k]; one vectorised comparison per k."""
    if len(tokens) < 2 * shortest:
        return None
    vocab: dict[str, int] = {}
    ids = np.array([vocab.setdefault(t, len(vocab)) for t in tokens])
    for k in range(shortest, len(ids) // 2 + 1):
        same = np.concatenate(([0], (ids[k:] == ids[:-k]).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(same))  # starts and ends of the runs of equal positions
        starts, ends = edges[::2], edges[1::2]
        hit = np.flatnonzero(ends - starts >= k)
        if len(hit):
            start = int(starts[hit[0]])
            return " ".join(tokens[start:start + k])
    return None


def looping_phrase(text: str) -> str | None:
    """What repeats in `text` when it loops (module docstring): the word of a run, the phrase said
    twice in a row, or the most frequent 4-gram of a text whose seq-rep-4 ≥ `SEQ_REP_MAX`; None when
    it does not loop."""
    word = _run_word(text, RUN)
    if word is not None:
        return word
    tokens = words(text)
    phrase = tandem_phrase(tokens)
    if phrase is not None:
        return phrase
    if seq_rep(tokens) >= SEQ_REP_MAX:
        grams = Counter(tuple(tokens[i:i + SEQ_REP_N]) for i in range(len(tokens) - SEQ_REP_N + 1))
        return " ".join(grams.most_common(1)[0][0])
    return None


def loops(text: str) -> bool:
    """True when `text` loops (module docstring)."""
    return looping_phrase(text) is not None


def loop_share(texts: Sequence[str]) -> float:
    """The share of `texts` that loop, in [0, 1]; 0.0 for no texts."""
    return sum(loops(t) for t in texts) / len(texts) if texts else 0.0


def signal(texts: Sequence[str], usr: float | None = None) -> dict[str, Any]:
    """The collapse signal of `texts` (one output per request).

    `usr`: the caller's own USR (the report's, of the tokenised texts); default distinct / all.
    Returns {"n", "distinct", "usr", "repetition", "looping_texts", "loop_example", "top_share",
    "top_text", "collapsed", "looping", "thresholds"}: the shares in [0, 1], rounded to 4 places;
    `looping_texts` how many texts loop and `loop_example` the first of them (None when none does).
    Raises DataError (a ValueError) for no texts."""
    if not texts:
        raise DataError("the collapse signal needs at least one generated text")
    n, distinct = len(texts), len(set(texts))
    usr = distinct / n if usr is None else usr
    looping = [t for t in texts if loops(t)]
    repetition = len(looping) / n
    top_text, top_count = Counter(texts).most_common(1)[0]
    top_share = top_count / n
    return {"n": n, "distinct": distinct, "usr": round(usr, 4), "repetition": round(repetition, 4),
            "looping_texts": len(looping), "loop_example": looping[0] if looping else None,
            "top_share": round(top_share, 4), "top_text": top_text,
            "collapsed": usr < USR_MIN or repetition > REPETITION_MAX or (n >= MIN_OUTPUTS and top_share >= TOP_SHARE),
            "looping": n >= MIN_OUTPUTS and repetition > LOOP_MAX,
            "thresholds": {"usr_min": USR_MIN, "repetition_max": REPETITION_MAX, "run": RUN, "phrase": PHRASE,
                           "seq_rep_n": SEQ_REP_N, "seq_rep_max": SEQ_REP_MAX, "loop_max": LOOP_MAX,
                           "top_share": TOP_SHARE, "min_outputs": MIN_OUTPUTS}}
