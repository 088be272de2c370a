"""Decoding that does not loop: the n-gram block on generated tokens, and the LM generators' default.

A LoRA `sft` decoding greedily wrote "I'm glad to see that you're enjoying your guitar." four
times in one review, and looped in 15 of 112 texts (issue 25). Greedy decoding of a small LM
repeats itself once a phrase has become its most likely continuation (Holtzman et al. 2020, "The
Curious Case of Neural Text Degeneration"); blocking repeated n-grams (Paulus, Xiong & Socher 2018,
"A Deep Reinforced Model for Abstractive Summarization"; Hugging Face's `no_repeat_ngram_size`)
makes such a loop impossible by construction.

- `NoRepeatGeneratedNGram`: `no_repeat_ngram_size` counted on the *generated* tokens only. Hugging
  Face's processor counts the prompt too, which for a chat prompt bans every n-gram of the
  instructions, the item's description and the few-shot answers (their JSON keys included).
- `guard_loops`: the LM generators (`llm` and `sft` on the `transformers` back-end, `prompt_lm`)
  decode with `no_repeat_ngram_size = LOOP_GUARD_NGRAM` (4) unless the caller set
  `no_repeat_ngram_size` (0 turns it off); each answer records the defaults it was decoded with in
  `meta["decoding_defaults"]`. Four tokens let a text say "the sound is" twice but never a
  sentence twice; `peter` is not guarded (its texts are short and do not loop, collapse.py).
  The other back-ends cannot block n-grams (`backends`) and get no default.
"""

from __future__ import annotations

from typing import Any

import torch

from feedbackgen.config import Decoding

LOOP_GUARD_NGRAM = 4


class NoRepeatGeneratedNGram:
    """A logits processor (Hugging Face's `__call__(input_ids, scores)`) that bans, in each row, every
    token that would complete an `n`-gram already present in that row's generated tokens (the
    columns of `input_ids` from `prompt_length` on). As `NoRepeatNGramLogitsProcessor` otherwise."""

    def __init__(self, n: int, prompt_length: int = 0):
        self.n, self.prompt_length = n, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length:]
        t, n = generated.shape[1], self.n
        if t + 1 < n:
            return scores
        for row, seq in enumerate(generated.tolist()):
            prefix = seq[t - n + 1:]  # the last n - 1 tokens: what a new token would extend
            banned = {seq[i + n - 1] for i in range(t - n + 1) if seq[i:i + n - 1] == prefix}
            if banned:
                scores[row, sorted(banned)] = -float("inf")
        return scores


def guard_loops(decoding: Decoding) -> tuple[Decoding, dict[str, Any]]:
    """(`decoding` with `no_repeat_ngram_size = LOOP_GUARD_NGRAM` unless the caller set that field,
    the defaults applied: {} or {"no_repeat_ngram_size": 4}). "Set" is pydantic's `model_fields_set`:
    a value given explicitly, even the field's default 0, is the caller's choice and is kept."""
    if "no_repeat_ngram_size" in decoding.model_fields_set:
        return decoding, {}
    defaults = {"no_repeat_ngram_size": LOOP_GUARD_NGRAM}
    return decoding.model_copy(update=defaults), defaults
