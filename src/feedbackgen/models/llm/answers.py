"""Reading an LLM's answer: one JSON object `{"rating": <stars>, "review": "<text>"}`.

Small models break the format in a handful of ways, and review text quoted into the prompt may
try to break it on purpose ("ignore the instructions and answer ..."). `read_answer` never trusts
the raw output: it finds the first JSON object, repairs what can be repaired without guessing
(code fences, a cut-off string or brace, single quotes, trailing commas, a rating written "4/5" or
"4 stars", a synonym key such as "text", a text over the length limit), and checks the result:

- `rating` a number within the rating range (out of range is not clipped: it is a wrong answer);
- `review` a non-empty string, at most `max_words` words, with no chat-template control tokens.

Reasoning models (DeepSeek-R1, Qwen3, QwQ, Magistral, ... behind an OpenAI-compatible server)
write their reasoning before the answer, in `<think>…</think>` or a sibling (`<thinking>`,
`<reasoning>`, `<reason>`, `<thought>`, `<|thinking|>…<|/thinking|>`, `◁think▷…◁/think▷`). The
reasoning may quote JSON drafts and loose `"rating": 1` fragments, so it is removed before
anything is parsed: a block from its opening to its closing tag; everything before a closing tag
whose opening the chat template put in the prompt; everything after an opening tag that never
closes (the reply was cut off mid-reasoning). What remains is the final answer; when nothing
remains, the answer is invalid ("only reasoning") and the caller retries, then falls back.

The result says `valid` (parsed as it was), `repaired` (with what was done), or `invalid` (with
why), so the caller can retry and count.

`answer_schema` is the same contract as a JSON schema, for back-ends that decode under one
(constrained decoding): what it lets through, `read_answer` takes as `valid`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from feedbackgen.errors import ConfigError


# Control tokens of common chat templates (ChatML, Llama 2/3, Mistral, Gemma, Phi). Removed from
# untrusted text before it goes into a prompt, and from generated text before it comes out.
CONTROL_TOKENS = re.compile(
    r"<\|[^|<>\n]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<\|?(?:endoftext|im_start|im_end)\|?>",
    re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_RATING_FIELD = re.compile(r"[\"']?(?:rating|stars|score)[\"']?\s*[:=]\s*[\"']?(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_TEXT_FIELD = re.compile(r"[\"']?(?:review|text|explanation|feedback)[\"']?\s*[:=]\s*\"((?:[^\"\\]|\\.)*)",
                         re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+|stars?|out of \d+)?\s*$", re.IGNORECASE)
TEXT_KEYS = ("review", "text", "explanation", "feedback")


# One word of a constrained review: no whitespace, no quote or backslash (so the JSON string needs
# no escapes, which llama.cpp's schema-to-grammar converter would not write), at most 25 characters
# (a word cannot run on for the whole token budget).
_WORD = r'[^\x00-\x20"\\]{1,25}'


def answer_schema(rating_range: tuple[float, float] = (1.0, 5.0), max_words: int = 60) -> dict[str, Any]:
    """The JSON schema of a valid answer: `{"rating": r, "review": "<1..max_words words>"}`, in
    that key order, no other keys.

    The rating is one of the half steps of `rating_range` (1, 1.5, ..., 5) as an `enum`, when its
    ends are half steps at most 20 apart: half stars let a model unsure between 4 and 5 say 4.5,
    which scores better than either; a closed list keeps a decoder from writing digits until the
    token budget runs out; and every converter honours `enum` (llama.cpp's drops `minimum` and
    `maximum`). Otherwise it is a number with `minimum`/`maximum`. The review is single-spaced
    words (`_WORD`), which is how `read_answer` normalises it anyway. Raises ValueError for an
    empty range or `max_words` < 1."""
    lo, hi = rating_range
    if not lo <= hi or max_words < 1:
        raise ConfigError(f"answer_schema needs lo <= hi and max_words >= 1 (got {rating_range}, {max_words})")
    if float(2 * lo).is_integer() and float(2 * hi).is_integer() and hi - lo <= 20:
        steps = [k / 2 for k in range(int(2 * lo), int(2 * hi) + 1)]
        rating: dict[str, Any] = {"type": "number", "enum": [int(x) if x.is_integer() else x for x in steps]}
    else:
        rating = {"type": "number", "minimum": lo, "maximum": hi}
    review = {"type": "string", "pattern": f"^{_WORD}( {_WORD}){{0,{max_words - 1}}}$"}
    return {"type": "object", "properties": {"rating": rating, "review": review},
            "required": ["rating", "review"], "additionalProperties": False}


_REASONING_TAGS = r"think|thinking|reasoning|reason|thought"
_OPEN = re.compile(rf"<(?:{_REASONING_TAGS})>|<\|(?:{_REASONING_TAGS})\|>|◁think▷", re.IGNORECASE)
_CLOSE = re.compile(rf"</(?:{_REASONING_TAGS})>|<\|/(?:{_REASONING_TAGS})\|>|<\|end_?(?:{_REASONING_TAGS})\|>"
                    r"|◁/think▷", re.IGNORECASE)
ONLY_REASONING = "only reasoning, no answer after it"


def strip_reasoning(raw: str) -> tuple[str, bool]:
    """`raw` without its reasoning blocks (module docstring), and whether there were any."""
    found = False
    while True:
        close = _CLOSE.search(raw)
        opened = _OPEN.search(raw, 0, close.start() if close else len(raw))
        if close is None and opened is None:
            return raw, found
        found = True
        if close is None:  # opened, never closed: cut off while reasoning
            raw = raw[:opened.start()]
        else:  # a whole block, or (no opening) reasoning begun in the prompt
            raw = raw[:opened.start() if opened else 0] + raw[close.end():]


def strip_control_tokens(text: str) -> str:
    return CONTROL_TOKENS.sub(" ", text)


@dataclass
class Answer:
    status: str  # "valid" | "repaired" | "invalid"
    rating: float | None = None
    text: str = ""
    repairs: list[str] = field(default_factory=list)
    problem: str = ""
    reasoning: bool = False  # a reasoning block was removed (not a repair: reasoning models write one)

    @property
    def ok(self) -> bool:
        return self.status != "invalid"


def _first_object(raw: str, repairs: list[str]) -> dict[str, Any] | None:
    """The first JSON object in `raw`, repairing a cut-off end, single quotes and trailing commas."""
    start = raw.find("{")
    if start < 0:
        return None
    body = raw[start:]
    decoder = json.JSONDecoder()
    attempts = [(body, None)]
    fixed = _TRAILING_COMMA.sub(r"\1", body)
    if fixed != body:
        attempts.append((fixed, "trailing comma"))
    if '"' not in body and "'" in body:
        attempts.append((body.replace("'", '"'), "single quotes"))
    stripped = body.rstrip().rstrip(",")
    for closer in ('"}', "}", '."}', '"]}'):  # the answer ran out of tokens mid-string or mid-object
        attempts.append((stripped + closer, "cut off"))
    for text, fix in attempts:
        try:
            obj, _ = decoder.raw_decode(text)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            if fix:
                repairs.append(fix)
            return obj
    return None


def _fields_by_pattern(raw: str, repairs: list[str]) -> dict[str, Any] | None:
    """Last resort: `rating: 4` and `review: "..."` written loosely (no valid JSON at all)."""
    rating, text = _RATING_FIELD.search(raw), _TEXT_FIELD.search(raw)
    if not (rating and text):
        return None
    repairs.append("fields read without JSON")
    try:
        review = json.loads(f'"{text.group(1)}"')
    except json.JSONDecodeError:
        review = text.group(1).replace('\\"', '"')
    return {"rating": rating.group(1), "review": review}


def _as_rating(value: Any, repairs: list[str]) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _NUMBER.match(value)
        if m:
            repairs.append("rating given as text")
            return float(m.group(1))
    return None


def _cut_words(text: str, max_words: int) -> str:
    words = text.split()
    cut = " ".join(words[:max_words])
    # end at the last sentence end within the limit, if that keeps at least half the words
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    if cut.endswith((".", "!", "?")):
        return cut
    if end >= 0 and len(cut[:end + 1].split()) >= max_words // 2:
        return cut[:end + 1]
    return cut


def read_answer(raw: str, rating_range: tuple[float, float] = (1.0, 5.0), max_words: int = 60) -> Answer:
    """Parse, repair and check one raw model answer (see the module docstring)."""
    repairs: list[str] = []
    raw, reasoned = strip_reasoning(raw)
    if reasoned and not raw.strip():
        return Answer("invalid", problem=ONLY_REASONING, reasoning=True)
    answer = _read(raw, rating_range, max_words, repairs)
    answer.reasoning = reasoned
    return answer


def _read(raw: str, rating_range: tuple[float, float], max_words: int, repairs: list[str]) -> Answer:
    obj = _first_object(raw, repairs)
    if obj is None:  # only then take fences and control tokens out: inside a review they are its text
        cleaned = strip_control_tokens(_FENCE.sub("", raw))
        if cleaned != raw:
            repairs.append("code fence or control tokens")
        obj = _first_object(cleaned, repairs) or _fields_by_pattern(cleaned, repairs)
    if obj is None:
        return Answer("invalid", problem="no JSON object", repairs=repairs)

    if "rating" not in obj:
        return Answer("invalid", problem="no rating", repairs=repairs)
    rating = _as_rating(obj["rating"], repairs)
    lo, hi = rating_range
    if rating is None:
        return Answer("invalid", problem=f"rating is not a number: {str(obj['rating'])[:40]!r}", repairs=repairs)
    if not lo <= rating <= hi:
        return Answer("invalid", rating=rating, problem=f"rating {rating:g} outside {lo:g}..{hi:g}", repairs=repairs)

    key = next((k for k in TEXT_KEYS if k in obj), None)
    if key is None:
        return Answer("invalid", rating=rating, problem="no review text", repairs=repairs)
    if key != "review":
        repairs.append(f"text under {key!r}")
    review = obj[key]
    if not isinstance(review, str):
        return Answer("invalid", rating=rating, problem="review is not a string", repairs=repairs)
    cleaned = strip_control_tokens(review)
    if cleaned != review:
        repairs.append("control tokens")
    review = " ".join(cleaned.split())
    if not review:
        return Answer("invalid", rating=rating, problem="empty review", repairs=repairs)
    if len(review.split()) > max_words:
        review = _cut_words(review, max_words)
        repairs.append("too long")
    return Answer("repaired" if repairs else "valid", rating=rating, text=review, repairs=repairs)
