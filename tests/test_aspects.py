import polars as pl
import pytest

from feedbackgen.data import aspects as A
from feedbackgen.data.loaders import load_source
from feedbackgen.data.problems import Problems
from feedbackgen.data.splits import SPLIT_CODES, random_split_codes
from feedbackgen.data.text import clean_text, tokenize


@pytest.fixture(scope="module")
def mi(data_root):
    path = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    df, _, _ = load_source([path], "amazon2014", problems=Problems())
    df = df.with_columns(pl.Series("text", [clean_text(t) for t in df["text"]]))
    return df.with_columns(pl.Series("split", [SPLIT_CODES[c] for c in random_split_codes(df.height, seed=1)]))


@pytest.fixture(scope="module")
def mined(mi):
    return A.mine_aspects(mi.filter(pl.col("split") == "train")["text"])


def test_aspects_on_musical_instruments_look_like_nouns(mined):
    words = [w for w, _ in mined]
    assert len(words) == 200
    for expected in ("guitar", "strings", "sound", "price", "pedal", "tone", "amp", "cable", "tuner"):
        assert expected in words[:50], expected
    # adjectives, verbs and function words are filtered out
    for unwanted in ("great", "good", "small", "cheap", "heavy", "works", "just", "really", "the", "get"):
        assert unwanted not in words, unwanted
    scores = [s for _, s in mined]
    assert scores == sorted(scores, reverse=True)


def test_aspect_candidates_follow_the_rules(mined):
    opinion = A.opinion_words()
    assert {"great", "good", "love"} <= opinion
    for word, _ in mined:
        assert len(word) >= 3 and word.isalpha() and not word.endswith("ly")
        assert word not in A.STOP_WORDS and word not in opinion


def test_mining_is_deterministic_and_uses_only_given_texts():
    texts = ["The tuner is great. The tuner is great.", "My strap is great and the strap is nice.",
             "A tuner works. The zither is bad."] * 3
    first = A.mine_aspects(texts, top_n=5, min_count=1)
    assert first == A.mine_aspects(list(texts), top_n=5, min_count=1)
    assert {w for w, _ in first[:2]} == {"strap", "tuner"}
    assert "zither" in [w for w, _ in first]
    assert "zither" not in [w for w, _ in A.mine_aspects(texts[:2], top_n=5, min_count=1)]


def test_explain_picks_the_first_sentence_with_an_aspect():
    text = ("I bought this last week. The strap is comfortable and looks great! "
            "The buckle broke though.")
    e = A.explain(text, {"strap", "buckle"})
    assert e == A.Explanation("strap", "the strap is comfortable and looks great !", 1)
    assert A.explain("The buckle broke and I hate it.", {"buckle"}).sentiment == -1
    assert A.explain("The buckle is metal.", {"buckle"}).sentiment == 0
    assert A.explain("Nothing to see here.", {"strap"}) is None
    assert A.explain(None, {"strap"}) is None


def test_explanations_are_truncated_and_mention_their_aspect():
    long = "word " * 30 + "strap. Then the strap is fine."
    e = A.explain(long, {"strap"}, max_tokens=20)
    assert e.explanation == "then the strap is fine ."  # the aspect must be within the first 20 tokens
    e = A.explain("The strap " + "is very " * 20 + "good.", {"strap"}, max_tokens=20)
    assert len(e.explanation.split()) == 20 and e.aspect == "strap"


def test_add_explanations_on_real_data_is_fast_and_mostly_covered(mi, mined):
    out = A.add_explanations(mi, [w for w, _ in mined])
    assert out.height == mi.height
    assert out.schema["sentiment"] == pl.Int8
    covered = out.filter(pl.col("explanation").is_not_null())
    assert covered.height > 0.9 * out.height
    aspects = set(w for w, _ in mined)
    for aspect, expl in zip(covered["aspect"][:500], covered["explanation"][:500]):
        tokens = expl.split()
        assert aspect in aspects and aspect in tokens and len(tokens) <= 20
        assert tokens == tokenize(expl)
    assert set(covered["sentiment"].unique()) == {-1, 0, 1}
    # positive sentences dominate 5-star reviews
    five = covered.filter(pl.col("rating") == 5)
    assert (five["sentiment"] == 1).mean() > (five["sentiment"] == -1).mean() * 3
