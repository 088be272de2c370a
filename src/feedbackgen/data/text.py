"""Text helpers shared by loading, preprocessing and explanation extraction.

`tokenize` and `split_sentences` reproduce the tokenisation of the PETER-format data in
`shared/data/peter_format_musical_instruments` (see its README), so targets we extract and targets
the reference code was trained on are comparable token for token. `detokenize` is its inverse for
display only: metrics keep the tokenised form.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter

# -- tokens and sentences ------------------------------------------------------------------------

# A word is a run of [a-z0-9']; every other non-space character is a token on its own.
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
# Split after a run of . ! ? unless another of them or a digit follows ("3.5", "?!"), and at newlines.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?![.!?0-9])|\n")


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens: `[a-z0-9']+` words, and every other non-space character alone."""
    return _TOKEN.findall(text.lower())


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text.lower()))


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, stripped, empty ones dropped."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def truncate_tokens(text: str, max_tokens: int) -> str:
    """`text` cut after its `max_tokens`-th token, keeping the original spelling and case."""
    for i, m in enumerate(_TOKEN.finditer(text.lower()), 1):
        if i == max_tokens:
            return text[: m.end()]
    return text


# -- display -------------------------------------------------------------------------------------

_NO_SPACE_BEFORE = set(".,!?;:%)]}")
_NO_SPACE_AFTER = set("([{$#")
_JOINERS = set("-/")  # "m - audio" -> "m-audio", "1 / 4" -> "1/4"
_FIRST_PERSON = {"i": "I", "i'm": "I'm", "i've": "I've", "i'll": "I'll", "i'd": "I'd"}
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")


def _word(token: str) -> bool:
    return token[:1].isalnum() and token[-1:].isalnum()


def detokenize(text: str) -> str:
    """Text tokenised by `tokenize` (or by the PETER data) made readable: punctuation attached,
    spaced HTML entities decoded ("& # 34 ;" -> '"'), sentences and the pronoun "I" capitalised.

        detokenize("i bought 2 , and the m - audio ( 1 / 4 \" ) sounds great . love it !")
        -> 'I bought 2, and the m-audio (1/4") sounds great. Love it!'

    Rules, applied to whitespace-separated tokens: no space before . , ! ? ; : % ) ] }, none after
    ( [ { $ #; a "-" or "/" between two words joins them (tokenisation lost whether a hyphen was a
    compound's or a dash, and compounds are the common case in reviews); "." or "," between digits
    joins them ("3 . 5" -> "3.5", "1 , 000" -> "1,000"); a '"' after a number is an inch mark,
    other double quotes alternate opening / closing. Letters already upper-case are never lowered,
    so readable text passes through unchanged (except spaced hyphens). For display only: metrics
    score the tokenised form.
    """
    text = _SPACED_ENTITY.sub(lambda m: html.unescape(re.sub(r"\s+", "", m.group(0))), text)
    tokens = text.split()
    out = ""
    glue_next = False  # the previous token wants no space after it
    quote_open = False
    for i, token in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        token = _FIRST_PERSON.get(token, token)
        glue = not out or glue_next
        glue_next = False
        if token == '"':
            if prev[-1:].isdigit():  # an inch mark: 6 " cables
                glue = True
            elif quote_open:
                glue, quote_open = True, False
            else:
                glue_next, quote_open = True, True
        elif token in _JOINERS and _word(prev) and _word(nxt):
            glue = glue_next = True
        elif token in ".," and prev.isdigit() and nxt.isdigit() and (token == "." or len(nxt) == 3):
            glue = glue_next = True
        elif token[0] in _NO_SPACE_BEFORE and len(set(token)) == 1:
            glue = True
        if token in _NO_SPACE_AFTER:
            glue_next = True
        out += token if glue else " " + token
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), out)


# -- cleaning ------------------------------------------------------------------------------------

# Entities that were tokenised before being decoded, as in the PETER data: "& # 8217 ;", "& amp ;".
_SPACED_ENTITY = re.compile(
    r"&\s+(?:#\s*(?:[0-9]{1,7}|[xX][0-9a-fA-F]{1,6})"
    r"|amp|quot|lt|gt|apos|nbsp|[lr]squo|[lr]dquo|[mn]dash|hellip|eacute)\s*;"
)
# Line-breaking tags become newlines (sentence boundaries); every other tag just goes.
_BREAK_TAG = re.compile(r"<\s*(?:br|/p|p|/div|/li|li)\b[^<>]{0,200}>", re.IGNORECASE)
_TAG = re.compile(r"<!--.*?-->|</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]{0,1000}>", re.DOTALL)
# C0/C1 controls (except tab and newlines, handled as whitespace) and invisible format characters.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_LINE_BREAKS = re.compile(r"\s*[\r\n\u2028\u2029\x85]+\s*")
_SPACES = re.compile(r"[^\S\n]+")


def clean_text(text: str) -> str:
    """NFKC-normalised text with HTML entities decoded, tags and control characters removed,
    and whitespace collapsed. Line breaks survive as single newlines: they end sentences."""
    text = _SPACED_ENTITY.sub(lambda m: re.sub(r"\s+", "", m.group(0)), text)
    text = _BREAK_TAG.sub("\n", text)
    text = _TAG.sub(" ", text)
    # Decode twice: review dumps often hold doubly escaped entities ("&amp;#39;").
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _SPACES.sub(" ", text)
    return text.strip()


# -- personal data -------------------------------------------------------------------------------

PII_KINDS = ("email", "url", "phone", "card", "handle")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
# Cards: an unbroken 13-19 digit run, or 4-digit groups (Amex 4-6-5) joined by one space or dash.
_CARD = re.compile(
    r"(?<![\w.,$-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5})(?![\w-]|[.,]\d)"
)
# Phones need separators, so bare numbers (ASINs, ISBNs, model numbers, prices) are never touched:
# North American 555-123-4567 / (555) 123-4567 / 1-800-555-1212, or international +44 20 7946 0958.
_PHONE = re.compile(
    r"(?<![\w.,$/+-])(?:"
    r"(?:\+?1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"|\+\d{1,3}(?:[ .-]\d{1,4}){2,5}"
    r")(?![\w/-]|[.,]\d)"
)
_HANDLE = re.compile(r"(?<![\w@.])@(?=[A-Za-z0-9_]*[A-Za-z])[A-Za-z0-9_]{2,30}\b")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_or_keep(m: re.Match) -> str:
    raw = m.group(0)
    digits = re.sub(r"\D", "", raw)
    if not 13 <= len(digits) <= 19:
        return raw
    # Grouped digits may be an ordinary list ("1998 1999 2000 2001"): a card must pass the Luhn check.
    if raw != digits and not _luhn_ok(digits):
        return raw
    return "<card>"


def _phone_or_keep(m: re.Match) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return "<phone>" if 8 <= len(digits) <= 15 else m.group(0)


def _url_sub(m: re.Match) -> str:
    # Text glued after a URL belongs to the sentence: anything from an unopened ")" on
    # ("(see http://x.com/a)which"), and trailing sentence punctuation.
    url = m.group(0)
    cut = url.index(")") if ")" in url and "(" not in url else len(url)
    cut = len(url[:cut].rstrip(".,;:!?)]}'\""))
    return "<url>" + url[cut:]


# Order matters: e-mails before handles ("@example" inside an address), URLs before cards/phones
# (digits inside URLs), cards before phones (a card holds phone-like groups).
_SCRUBBERS = (
    ("email", _EMAIL, "<email>"),
    ("url", _URL, _url_sub),
    ("card", _CARD, _card_or_keep),
    ("phone", _PHONE, _phone_or_keep),
    ("handle", _HANDLE, "<handle>"),
)


def scrub_pii_by_kind(text: str) -> tuple[str, Counter]:
    """`text` with personal data replaced by placeholders, and how many of each kind were replaced."""
    counts: Counter = Counter()
    for kind, pattern, replacement in _SCRUBBERS:
        if kind == "email" and "@" not in text or kind == "handle" and "@" not in text:
            continue
        placeholder = f"<{kind}>"
        before = text.count(placeholder)
        text = pattern.sub(replacement, text)
        n = text.count(placeholder) - before
        if n:
            counts[kind] += n
    return text, counts


def scrub_pii(text: str) -> tuple[str, int]:
    """Replace e-mails, URLs, phone numbers, card numbers and @handles with `<email>`, `<url>`,
    `<phone>`, `<card>`, `<handle>`. Returns the text and the number of replacements."""
    text, counts = scrub_pii_by_kind(text)
    return text, sum(counts.values())
