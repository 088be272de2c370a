"""PETER metrics against the reference implementation's own numbers, plus small hand-computed cases."""

import json
import math
import random

import numpy as np
import pytest

from feedbackgen.errors import DataError
from feedbackgen.evaluation import extra
from feedbackgen.evaluation.extra import EXTRA_METRICS
from feedbackgen.evaluation.metrics import (
    METRICS,
    bleu_score,
    feature_coverage_ratio,
    feature_detect,
    feature_diversity,
    feature_matching_ratio,
    lcs_length,
    mean_absolute_error,
    metrics_from_files,
    peter_metrics,
    peter_rouge,
    root_mean_square_error,
    unique_sentence_percent,
)

FIXTURE_FILES = dict(generated="generated.txt", references="references.txt", feature_set="feature_set.txt",
                     reference_features="reference_features.txt", ratings="ratings.txt",
                     reference_ratings="reference_ratings.txt")


@pytest.fixture(scope="module")
def peter_fixture(fixtures_root):
    folder = fixtures_root / "peter_metrics"
    expected = json.loads((folder / "expected.json").read_text())
    return {k: folder / v for k, v in FIXTURE_FILES.items()}, expected


# -- the reference's numbers -------------------------------------------------------------------

def test_matches_reference_peter_numbers(peter_fixture):
    paths, expected = peter_fixture
    got = metrics_from_files(**paths)
    assert got["usn"] == expected["usn"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_output_keys_are_exactly_documented(peter_fixture):
    paths, _ = peter_fixture
    got = metrics_from_files(**paths)
    peter_keys = {"bleu1", "bleu4", "usr", "usn", "fmr", "fcr", "div", "rmse", "mae"} | {
        f"rouge{n}_{k}" for n in "12L" for k in "prf"}
    official = {f"rouge{n}_{k}_official" for n in "12L" for k in "prf"}
    assert set(got) == peter_keys | official
    assert set(got) <= set(METRICS)
    for meta in {**METRICS, **EXTRA_METRICS}.values():
        assert meta.direction in ("higher", "lower", "none") and meta.source and meta.description


def test_optional_groups_only_when_given(peter_fixture):
    paths, _ = peter_fixture
    text_only = metrics_from_files(paths["generated"], paths["references"])
    assert not {"fmr", "fcr", "div", "rmse", "mae"} & set(text_only)
    with_features = metrics_from_files(paths["generated"], paths["references"], paths["feature_set"])
    assert {"fcr", "div"} <= set(with_features) and "fmr" not in with_features


# -- hand-computed cases -----------------------------------------------------------------------

def test_bleu_identical_disjoint_and_partial():
    same = [["the", "strings", "sound", "great", "."]] * 3
    assert bleu_score(same, same, 1) == pytest.approx(100)
    assert bleu_score(same, same, 4) == pytest.approx(100)
    assert bleu_score([["a", "b", "c", "d"]], [["w", "x", "y", "z"]], 1) == 0
    # 2 of 4 unigrams match; same length so no brevity penalty: BLEU-1 = 50
    assert bleu_score([["a", "b", "c", "d"]], [["a", "b", "y", "z"]], 1) == pytest.approx(50)
    # only 1 generated token of 2 reference tokens, matching: precision 1, BP = exp(1 - 2/1)
    assert bleu_score([["a", "b"]], [["a"]], 1) == pytest.approx(100 * math.exp(-1))
    # no 4-gram at all in a 3-token text: BLEU-4 is 0 without smoothing
    assert bleu_score([["a", "b", "c"]], [["a", "b", "c"]], 4) == 0


def test_bleu_clips_repeated_words():
    # "the the the the" against "the cat": only one "the" counts, precision 1/4
    assert bleu_score([["the", "cat", "x", "y"]], [["the", "the", "the", "the"]], 1) == pytest.approx(25)


def test_peter_rouge_is_set_based():
    # repeated n-grams count once: gen {a}, ref {a, b} -> P 1, R 0.5
    r = peter_rouge([["a", "b"]], [["a", "a", "a"]])
    assert r["rouge1_p"] == pytest.approx(100)
    assert r["rouge1_r"] == pytest.approx(50)
    assert r["rouge1_f"] == pytest.approx(100 * 2 * 0.5 / (1.5 + 1e-8))
    # LCS("a b c d", "a c d") = 3
    r = peter_rouge([["a", "b", "c", "d"]], [["a", "c", "d"]])
    assert r["rougeL_p"] == pytest.approx(100) and r["rougeL_r"] == pytest.approx(75)
    assert peter_rouge([["x"]], [["x"]])["rouge2_p"] == 0  # no bigram on either side
    assert peter_rouge([[]], [[]])["rougeL_f"] == pytest.approx(100)  # two empty texts agree


def test_lcs_matches_dynamic_programming():
    def table_lcs(a, b):
        t = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                t[i, j] = t[i - 1, j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1, j], t[i, j - 1])
        return t[-1, -1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == table_lcs(a, b)


def test_unique_sentences():
    usr, usn = unique_sentence_percent([["a", "b"], ["a", "b"], ["b", "a"], []])
    assert (usr, usn) == (0.75, 3)


def test_feature_metrics_by_hand():
    features = {"sound", "price", "strings", "tone"}
    generated = [["great", "sound", "and", "price"], ["nice", "sound"], ["ok"]]
    detected = feature_detect(generated, features)
    assert detected == [{"sound", "price"}, {"sound"}, set()]
    assert feature_matching_ratio(detected, ["price", "tone", "strings"]) == pytest.approx(1 / 3)
    assert feature_matching_ratio(detected, ["price", None, None]) == 1.0  # no ground truth: left out
    assert feature_coverage_ratio(detected, features) == 0.5
    # pairs: (0,1) share {sound}, (0,2) nothing, (1,2) nothing -> 1 / 3
    assert feature_diversity(detected) == pytest.approx(1 / 3)
    assert feature_diversity([{"sound", "tone"}] * 5) == pytest.approx(2)
    assert feature_diversity([{"sound"}, {"tone"}, set()]) == 0


def test_feature_diversity_equals_pairwise_definition():
    rng = random.Random(1)
    words = [f"f{i}" for i in range(12)]
    batch = [set(rng.sample(words, rng.randint(0, 4))) for _ in range(80)]
    pairs = sum(len(batch[i] & batch[j]) for i in range(len(batch)) for j in range(i + 1, len(batch)))
    assert feature_diversity(batch) == pytest.approx(pairs / (80 * 79 / 2), rel=1e-12)


def test_feature_diversity_scales_to_32k_samples():
    rng = np.random.default_rng(0)
    words = np.array([f"f{i}" for i in range(300)])
    batch = [set(words[rng.integers(0, 300, size=rng.integers(0, 4))]) for _ in range(32_000)]
    div = feature_diversity(batch)
    assert 0 < div < 1


def test_rating_errors_clip_to_one_five():
    # 7 -> 5 and -2 -> 1 before the error is taken
    assert root_mean_square_error([7, -2, 3], [5, 1, 4]) == pytest.approx(math.sqrt(1 / 3))
    assert mean_absolute_error([7, -2, 3], [5, 1, 4]) == pytest.approx(1 / 3)
    assert mean_absolute_error([4.5], [3.0]) == pytest.approx(1.5)


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError, match="references has 1"):
        peter_metrics([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError, match="together"):
        peter_metrics([["a"]], [["a"]], ratings=[3.0])


# -- files ---------------------------------------------------------------------------------------

def test_file_errors_name_file_and_line(tmp_path):
    gen, ref = tmp_path / "g.txt", tmp_path / "r.txt"
    gen.write_text("a b\nc d\n")
    ref.write_text("a b\n")
    with pytest.raises(DataError, match=r"r\.txt: has 1 line but .*g\.txt has 2 lines"):
        metrics_from_files(gen, ref)
    ref.write_text("a b\nc d\n")
    p, t = tmp_path / "p.txt", tmp_path / "t.txt"
    p.write_text("4.5\nfive\n")
    t.write_text("4\n5\n")
    with pytest.raises(DataError, match=r"p\.txt, line 2: expected a number, got 'five'"):
        metrics_from_files(gen, ref, ratings=p, reference_ratings=t)
    with pytest.raises(DataError, match="does not exist"):
        metrics_from_files(tmp_path / "missing.txt", ref)
    with pytest.raises(DataError, match="together"):
        metrics_from_files(gen, ref, ratings=p)


def test_file_tokens_are_used_as_they_are(tmp_path):
    gen, ref = tmp_path / "g.txt", tmp_path / "r.txt"
    gen.write_text("Great , sound\n\n")  # case and punctuation kept; an empty line is an empty sample
    ref.write_text("great , sound\nx\n")
    got = metrics_from_files(gen, ref)
    assert got["usn"] == 2
    assert got["bleu1"] == pytest.approx(100 * 2 / 3 * math.exp(1 - 4 / 3))


# -- beyond PETER (cheap ones; embeddings are exercised in test_report) -------------------------

def test_distinct_n():
    texts = [["a", "b", "a"], ["a", "b"]]
    assert extra.distinct_n(texts, 1) == pytest.approx(2 / 5)
    assert extra.distinct_n(texts, 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert extra.distinct_n([[]], 2) == 0


def test_self_bleu_matches_nltk_texygen():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rng = random.Random(2)
    vocab = "the strings sound great and cheap cable works fine .".split()
    texts = [[rng.choice(vocab) for _ in range(rng.randint(0, 14))] for _ in range(30)]
    smooth = SmoothingFunction().method1
    expected = np.mean([sentence_bleu(texts[:i] + texts[i + 1:], t, smoothing_function=smooth)
                        for i, t in enumerate(texts)]) * 100
    assert extra.self_bleu(texts) == pytest.approx(expected, rel=1e-9)
    assert extra.self_bleu([["same", "four", "word", "text"]] * 4) == pytest.approx(100)


def test_memorisation_finds_copied_spans():
    train = [[f"w{i}" for i in range(20)], ["a"] * 3]
    index = extra.NgramIndex(train, n=8)
    generated = [
        ["new"] + [f"w{i}" for i in range(2, 12)] + ["end"],  # copies w2..w11: 10 tokens
        [f"w{i}" for i in range(7)],  # 7 tokens: shorter than an 8-gram
        ["w0", "w1", "w2", "w3", "zz", "w5", "w6", "w7", "w8"],  # broken by an unknown word
    ]
    got = extra.memorisation(generated, index)
    assert got == {"memorisation": pytest.approx(1 / 3), "longest_copied_span": 10}
    assert extra.memorisation([["x"] * 9], index)["memorisation"] == 0


def test_personalisation_and_chance_level():
    rng = np.random.default_rng(0)
    users = [f"u{i % 150}" for i in range(600)]
    references = rng.normal(size=(600, 16))
    perfect = extra.personalisation(references + 0.01 * rng.normal(size=(600, 16)), references, users)
    assert perfect["personalisation_mrr"] == pytest.approx(1)
    assert perfect["personalisation_candidates"] == 100
    chance = extra.personalisation(rng.normal(size=(600, 16)), references, users)
    assert chance["personalisation_chance_mean_rank"] == 50.5
    assert abs(chance["personalisation_mean_rank"] - 50.5) < 6
    assert extra.personalisation(references, references, ["same"] * 600) == {}


def test_length_stats_and_spearman():
    stats = extra.length_stats([["a"] * n for n in range(1, 11)], "gen")
    assert stats == {"length_gen_mean": 5.5, "length_gen_median": 5.5, "length_gen_p90": pytest.approx(9.1)}
    assert extra.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1)
    assert extra.spearman([1, 1, 1], [1, 2, 3]) is None
    rho = extra.sentiment_rating_agreement(["I love it, wonderful!", "It is okay.", "Terrible, broke, awful."],
                                           [5, 3, 1])
    assert rho == pytest.approx(1)
