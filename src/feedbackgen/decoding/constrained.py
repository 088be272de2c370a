"""Constrained decoding: the next token is only ever one that keeps the text inside a JSON schema.

    constraint = SchemaConstraint(tokenizer, schema, prompt_length=width, max_new_tokens=n)
    logits_processors(decoding, eos, ..., constraint=constraint)   # masks before any warper samples

The grammar engine is `llguidance` (guidance-ai; the one llama.cpp and vLLM use): it compiles a
JSON schema against the tokenizer once and, per step, gives the set of tokens that can continue
the text (a bitmask over the vocabulary, under a millisecond for a 49k vocabulary). Tokens outside
the set get -inf before temperature, top-k, top-p and `search.RowSampler`, so greedy decoding
takes the best allowed token and sampling draws among the allowed ones, from the row's own stream.

State per row. A row's grammar state is found from its own generated tokens (the columns after
`prompt_length`), never from its position in the batch: beam search reorders rows, and finished
rows keep receiving padding. So a row's constrained text depends only on its prompt, its seed and
the decoding settings, as in `feedbackgen.decoding`.

The token budget. A free model can run out of `max_new_tokens` inside the review string, and the
answer would be cut off. When the tokens left equal the length of a closing sequence (`"}` or `}`)
the grammar accepts from the current state, that sequence is forced, so every answer ends as valid
JSON within the budget (its last words may be cut, as any length limit cuts them). For the
closing to be possible then: an escape sequence (`\u00e9`) takes up to six tokens to finish, so
none may start in the last `ESCAPE_WINDOW` tokens; and the review's words are single-spaced, so a
token that ends in a space (SmolLM2 writes " 4" as " " then "4") may not be the last but one.
Greedy decoding and sampling keep this promise; beam search, which ranks whole hypotheses, may
still return one that ran out of tokens.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from feedbackgen.errors import ConfigError

_tokenizers: dict[int, Any] = {}  # id(hf tokenizer) -> (tokenizer, llguidance tokenizer): ~1 s to build
_lock = threading.Lock()
CLOSERS = ('"}', "}")  # texts that can end an object whose last value is a string (or was)
ESCAPE_WINDOW = 6  # a backslash, "u" and four hex digits, one token each at worst
_masks: dict[tuple[int, str], Any] = {}  # (id(llguidance tokenizer), what) -> bitmask of tokens


def ll_tokenizer(tokenizer):
    """llguidance's view of a Hugging Face fast tokenizer, built once per tokenizer object.
    Raises ConfigError (with the install line) when llguidance is missing, as the other optional
    back-ends do."""
    try:
        import llguidance.hf
    except ImportError:
        raise ConfigError("constrained decoding needs llguidance: pip install llguidance==1.9.1 "
                          "(or set constrained=false)") from None
    with _lock:
        hit = _tokenizers.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:  # an id can be reused after garbage collection
            hit = (tokenizer, llguidance.hf.from_tokenizer(tokenizer))
            _tokenizers[id(tokenizer)] = hit
        return hit[1]


def _tokens_without(tokenizer, tok, what: str):
    """A bitmask (as llguidance's) of the tokens whose text does not contain ("backslash") or end
    in ("trailing space") the thing, built once per tokenizer. Byte-level BPE spells a space "Ġ"."""
    import llguidance.torch as lt

    test = {"backslash": lambda t: "\\" in t, "trailing space": lambda t: t.endswith(("Ġ", " ", "▁"))}[what]
    with _lock:
        if (id(tok), what) not in _masks:
            mask = lt.allocate_token_bitmask(1, tok.vocab_size)[0]
            texts = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            for t, text in enumerate(texts):
                if text is not None and test(text) and t < 32 * mask.numel():
                    bit = t % 32
                    mask[t // 32] &= ~(1 << bit) if bit < 31 else (1 << 31) - 1  # clear the bit
            _masks[(id(tok), what)] = mask
        return _masks[(id(tok), what)]


class SchemaConstraint:
    """A Hugging Face logits processor that keeps each row's generated text inside `schema`.

    `tokenizer`: the model's (fast) Hugging Face tokenizer; `schema`: a JSON schema (dict);
    `prompt_length`: input_ids columns that are prompt (left-padded batch width); `max_new_tokens`:
    the row's token budget, for closing in time (module docstring). Called with input_ids
    (rows, prompt_length + t) and scores (rows, vocabulary), returns the scores with disallowed
    tokens at -inf. A row whose grammar has stopped (its answer and end-of-sequence are written) is
    left as it is. Raises ValueError when the schema does not compile."""

    def __init__(self, tokenizer, schema: dict[str, Any], *, prompt_length: int, max_new_tokens: int):
        import llguidance

        self.tok = ll_tokenizer(tokenizer)
        # the separators `json.dumps` writes, as in the prompts' example answers (`prompts.answer_json`)
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        problem = llguidance.LLMatcher.validate_grammar(self.grammar, self.tok)
        if problem:
            raise ConfigError(f"the JSON schema does not compile to a grammar: {problem}")
        self.prompt_length, self.max_new_tokens = prompt_length, max_new_tokens
        self.closers = [tokenizer(c, add_special_tokens=False).input_ids for c in CLOSERS]
        self.no_backslash = _tokens_without(tokenizer, self.tok, "backslash")
        self.no_trailing_space = _tokens_without(tokenizer, self.tok, "trailing space")
        self.states: dict[tuple[int, ...], Any] = {}  # generated tokens -> matcher (None: stopped)

    def _state(self, generated: tuple[int, ...]):
        import llguidance

        if not generated:
            return llguidance.LLMatcher(self.tok, self.grammar)
        parent = self.states.get(generated[:-1], False)
        if parent is False:  # not seen at the last step (a caller skipped one): replay from the start
            parent = self._state(generated[:-1])
        if parent is None or parent.is_stopped():
            return None
        m = parent.deep_copy()
        return m if m.consume_token(generated[-1]) else None

    def _forced(self, m, left: int) -> int | None:
        """The first token of a closing sequence that is exactly `left` tokens long and that the
        grammar accepts from `m`, ending the answer; None when there is none."""
        if m.is_accepting():
            return None
        for ids in self.closers:
            if len(ids) == left:
                trial = m.deep_copy()
                if trial.try_consume_tokens(ids) == len(ids) and trial.is_accepting():
                    return ids[0]
        return None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import llguidance.torch as lt

        rows = scores.size(0)
        generated = [tuple(r) for r in input_ids[:, self.prompt_length:].tolist()]
        left = self.max_new_tokens - (input_ids.size(1) - self.prompt_length)
        states = {g: self.states[g] if g in self.states else self._state(g) for g in generated}
        self.states = states  # only this step's rows are parents of the next step's
        mask = lt.allocate_token_bitmask(rows, self.tok.vocab_size)
        free = []
        for r, g in enumerate(generated):
            m = states[g]
            if m is None or m.is_stopped():
                free.append(r)
                continue
            lt.fill_next_token_bitmask(m, mask, r)
            for narrower, applies in ((self.no_backslash, left <= ESCAPE_WINDOW),
                                      (self.no_trailing_space, left == 2)):
                if applies and (narrowed := mask[r] & narrower).any():  # never to nothing (too small a budget)
                    mask[r] = narrowed
            forced = self._forced(m, left)
            if forced is not None:
                bit = forced % 32
                mask[r] = 0
                mask[r, forced // 32] = 1 << bit if bit < 31 else -(1 << 31)  # int32: bit 31 is the sign
        if free:  # finished rows: leave them be (their tokens are padding from here on)
            mask[free] = -1
        out = scores.clone()
        lt.apply_token_bitmask_inplace(out, mask.to(out.device))
        return out
