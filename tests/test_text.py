import gzip
import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedbackgen.data.peter_format import read_peter
from feedbackgen.data.text import (
    clean_text,
    count_tokens,
    detokenize,
    scrub_pii,
    scrub_pii_by_kind,
    split_sentences,
    tokenize,
    truncate_tokens,
)


# -- tokens and sentences --------------------------------------------------------------------------

def test_tokenize_words_and_symbols():
    assert tokenize("Great AMP, it's 3.5\" wide :D") == [
        "great", "amp", ",", "it's", "3", ".", "5", '"', "wide", ":", "d"]
    assert tokenize("") == []
    assert tokenize("  \n ") == []
    assert tokenize("café") == ["caf", "é"]  # non-ASCII letters are symbols, as in the PETER data


def test_split_sentences_rules():
    assert split_sentences("Great amp.It works!! Really?! 3.5 lbs... ok\nnext line") == [
        "Great amp.", "It works!!", "Really?!", "3.5 lbs...", "ok", "next line"]
    assert split_sentences("version 2.0 is out") == ["version 2.0 is out"]
    assert split_sentences("") == []
    assert split_sentences("...") == ["..."]


def test_truncate_tokens_keeps_original_spelling():
    assert truncate_tokens("Hello, World! It is", 3) == "Hello, World"
    assert truncate_tokens("short", 10) == "short"
    assert count_tokens("Hello, World!") == 4


def test_tokenisation_matches_the_shared_peter_data(data_root):
    """Every PETER explanation is the first 20 tokens of a sentence of its lower-cased review."""
    source = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    with gzip.open(source, "rt") as f:
        reviews = {(r["reviewerID"], r["asin"]): r["reviewText"] for r in map(json.loads, f)}
    df, _ = read_peter(data_root / "peter_format_musical_instruments")
    sample = df.gather(range(0, df.height, 7))
    for user, item, explanation in zip(sample["user_id"], sample["item_id"], sample["explanation"]):
        sentences = split_sentences(reviews[(user, item)].lower())
        assert explanation in [" ".join(tokenize(s)[:20]) for s in sentences]


# -- display ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens, shown", [
    ("i bought 2 , and the m - audio ( 1 / 4 \" ) sounds great . love it !",
     'I bought 2, and the m-audio (1/4") sounds great. Love it!'),
    ("if you need some 6 \" cables , look no farther .", 'If you need some 6" cables, look no farther.'),
    ("xlr to 1 / 4 & # 34 ; adapters", 'Xlr to 1/4" adapters'),
    ('he said , " no mic is perfect " and left', 'He said, "no mic is perfect" and left'),
    ("it costs $ 3 . 50 for 1 , 000 ... wow !! i'm in", "It costs $3.50 for 1,000... Wow!! I'm in"),
    ("Great sound, nice price. Love it!", "Great sound, nice price. Love it!"),  # readable text kept
    ("", ""),
])
def test_detokenize(tokens, shown):
    assert detokenize(tokens) == shown


def test_detokenize_keeps_every_token_of_the_shared_peter_data(data_root):
    """Display changes spacing and case only: re-tokenising gives the explanation back, token for token."""
    df, _ = read_peter(data_root / "peter_format_musical_instruments")
    explanations = [e for e in df["explanation"].to_list() if "&" not in e]  # entities are decoded
    assert len(explanations) > 9000
    for explanation in explanations:
        assert tokenize(detokenize(explanation)) == explanation.split(), explanation


# -- cleaning --------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("it&#39;s &quot;great&quot; &amp; cheap", "it's \"great\" & cheap"),
    ("the pots & # 34 ;scratchy& # 34 ; now", "the pots \"scratchy\" now"),
    ("don & # 8217 ; t", "don \u2019 t"),
    ("rock & roll ; and R&D", "rock & roll ; and R&D"),  # a bare ampersand is not an entity
    ("<p>Nice <b>strap</b></p><br/>Works", "Nice strap\nWorks"),
    ("a < b and c > d, I <3 it", "a < b and c > d, I <3 it"),
    ("bell\x07 zero\u200bwidth", "bell zerowidth"),
    ("ＡＢＣ ﬁne ½", "ABC fine 1\u20442"),
    ("  lots   of \t space \n\n\n and lines  ", "lots of space\nand lines"),
    ("&amp;#39;double&amp;#39;", "'double'"),
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_clean_text_output_is_normalised(text):
    out = clean_text(text)
    assert out == out.strip()
    assert "  " not in out and "\n\n" not in out
    assert not any(unicodedata.category(c) == "Cc" and c != "\n" for c in out)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="&<>")))
def test_clean_text_is_idempotent_without_markup(text):
    assert clean_text(clean_text(text)) == clean_text(text)


# -- personal data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, scrubbed, kind", [
    ("write to john.doe+x@mail.example.com today", "write to <email> today", "email"),
    ("see https://example.com/a?b=1. Then", "see <url>. Then", "url"),
    ("(at www.example.org/page)which", "(at <url>)which", "url"),
    ("call 555-123-4567 now", "call <phone> now", "phone"),
    ("call (555) 123-4567", "call <phone>", "phone"),
    ("call 1-800-555-1212.", "call <phone>.", "phone"),
    ("ring +44 20 7946 0958", "ring <phone>", "phone"),
    ("card 4111 1111 1111 1111 ok", "card <card> ok", "card"),
    ("card 4111-1111-1111-1111", "card <card>", "card"),
    ("number 4012888888881881", "number <card>", "card"),
    ("follow @guitar_guy for tips", "follow <handle> for tips", "handle"),
])
def test_scrub_pii_replaces(raw, scrubbed, kind):
    text, counts = scrub_pii_by_kind(raw)
    assert text == scrubbed
    assert counts == {kind: 1}
    assert scrub_pii(raw) == (scrubbed, 1)


@pytest.mark.parametrize("text", [
    "It cost $1,299.99 in 2014, down from $1500.",
    "Model SM-57, ASIN B000068NW5, ISBN 1384719342, part 300-500.",
    "Bought it 10-12-2013, version 2.0.1, a 9.6V adapter, 1/4\" jack, 1,000,000 units.",
    "Years 1998 1999 2000 2001 were great.",          # grouped digits failing the Luhn check
    "Rated 5 5 5 5 by everyone, 3.14159265358979.",
    "email me @ home, or at the shop",
    "I ordered 2 x 12 inch speakers for 120 dollars",
])
def test_scrub_pii_leaves_ordinary_numbers(text):
    assert scrub_pii(text) == (text, 0)


def test_scrub_pii_counts_several_kinds():
    text, counts = scrub_pii_by_kind("a@b.com, a@b.com and http://x.io or 555-123-4567")
    assert text == "<email>, <email> and <url> or <phone>"
    assert counts == {"email": 2, "url": 1, "phone": 1}
