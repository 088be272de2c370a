"""Loops are caught (issue 25): the one rule (`feedbackgen.collapse`) flags the phrase loops seen in
the field, leaves real reviews alone, makes the check after training announce a model that loops
in 13 % of its texts, and is the `loops` share `evaluate` reports; and the LM generators decode
with a guard that makes such loops impossible (`feedbackgen.decoding.loops`)."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest
import torch

from support import peter_slice

from feedbackgen import collapse
from feedbackgen.config import Decoding
from feedbackgen.decoding.loops import LOOP_GUARD_NGRAM, NoRepeatGeneratedNGram, guard_loops
from feedbackgen.data.text import tokenize
from feedbackgen.evaluation.extra import EXTRA_METRICS
from feedbackgen.evaluation.report import evaluate
from feedbackgen.evaluation.scoring import collapse as report_collapse
from feedbackgen.models.collapse import announce

# the loops issue 25 found: a LoRA sft's sentence four times, and peter's phrase said twice
GUITAR = "I'm glad to see that you're enjoying your guitar. " * 4
STRAT = "I have a few months and I have a few months and I was looking for my strat."


@pytest.fixture(scope="module")
def reviews(data_root) -> list[str]:
    """The first 2,000 real Musical Instruments reviews."""
    path = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line).get("reviewText", "") for line in itertools.islice(f, 2000)]


def test_the_issue_s_loops_are_caught_naming_what_repeats():
    assert collapse.loops(GUITAR.strip()) and collapse.loops(STRAT)
    assert collapse.looping_phrase(STRAT) == "i have a few months and"  # said twice in a row
    # four times in one text, also with other words between the copies (seq-rep-4, not a tandem)
    spaced = " ".join(f"{s} Thanks for writing {i}." for i, s in enumerate([GUITAR.split(". ")[0]] * 4))
    assert collapse.tandem_phrase(collapse.words(spaced)) is None
    assert collapse.seq_rep(collapse.words(spaced)) >= collapse.SEQ_REP_MAX and collapse.loops(spaced)
    assert collapse.looping_phrase("the sound is great great great") == "great"  # a word 3+ times in a row


def test_punctuation_and_emphasis_are_no_loop():
    for text in ("Great strings!!!!!!!", "works well......... for the price", "good , good good strings",
                 "I know, I know, it is cheap", "great sound"):
        assert not collapse.loops(text), text


def test_real_reviews_are_not_flagged(reviews):
    # the field's texts loop in 0.28 % of the whole 5-core file (module docstring); far under 1 % here
    looping = [t for t in reviews if collapse.loops(t)]
    assert len(looping) / len(reviews) < 0.01, looping[:5]
    # the words are the PETER tokenisation's, punctuation left out
    for text in reviews[:200]:
        assert collapse.words(text) == [t for t in tokenize(text) if t[0].isalnum() or t[0] == "'"]


def test_a_model_looping_in_13_percent_of_its_texts_is_announced_not_called_collapsed(reviews, capsys):
    # the issue's sft: 15 of 112 texts loop, the others are varied real-looking texts
    healthy = [t for t in reviews if not collapse.loops(t)][:97]
    texts = healthy + [f"{GUITAR}{i}" for i in range(8)] + [f"{STRAT} {i}" for i in range(7)]
    sig = collapse.signal(texts)
    assert (sig["n"], sig["looping_texts"], sig["repetition"]) == (112, 15, round(15 / 112, 4))
    assert sig["looping"] and not sig["collapsed"]  # it answers requests differently: not one answer for all
    out = announce("sft", sig, n_train=600, epochs=1)
    err = capsys.readouterr().err
    assert "sft loops: 15 of its 112 validation texts (13%" in err and "no_repeat_ngram_size" in err
    assert out["warning"] in err
    # the real reviews' own share is far below the threshold: not announced
    quiet = collapse.signal(healthy + [STRAT])
    assert not quiet["looping"] and quiet["looping_texts"] == 1
    assert announce("sft", quiet, 600, 1) == quiet and capsys.readouterr().err == ""
    # the report applies the same rule
    assert report_collapse(texts, None)["looping"] and not report_collapse(texts, None)["collapsed"]


def test_evaluate_reports_the_loops_share_and_sentiment_agreement_in_its_main_table(data_root, tmp_path):
    ds = peter_slice(data_root, n_train=200, n_valid=10, n_test=40)
    test = ds.test.to_dicts()
    rows = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": r["rating"],
             "text": GUITAR if k < 4 else (STRAT if k < 6 else r["explanation"]), "model": "loopy"}
            for k, r in enumerate(test)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate([path], ds, tmp_path / "out", embeddings=False)
    metrics = result["models"]["loopy"]["metrics"]
    expected = sum(collapse.loops(r["explanation"]) for r in test[6:]) + 6
    assert metrics["loops"] == pytest.approx(expected / len(test))
    assert result["models"]["loopy"]["collapse"]["repetition"] == round(metrics["loops"], 4)
    assert "sentiment_pred_rating_rho" in metrics and "sentiment_rating_rho" in metrics
    # what `feedbackgen evaluate` prints: report.md up to "Other metrics"
    main = (tmp_path / "out" / "report.md").read_text(encoding="utf-8").split("## Other metrics")[0]
    for key in ("loops", "sentiment_rating_rho", "sentiment_pred_rating_rho"):
        assert EXTRA_METRICS[key].name in main, key
    assert "Welleck" in EXTRA_METRICS["loops"].source


def test_signal_keeps_its_keys_for_no_loop():
    sig = collapse.signal(["great sound", "fine tuner", "great sound"])
    assert (sig["looping_texts"], sig["loop_example"], sig["looping"], sig["repetition"]) == (0, None, False, 0.0)


# -- decoding that does not loop (feedbackgen.decoding.loops) -----------------------------------------

def test_the_ngram_block_counts_generated_tokens_only_as_hugging_face_does_on_them():
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    gen = torch.randint(0, 50, (3, 30), generator=torch.Generator().manual_seed(1))
    gen[0, 10:14] = gen[0, 26:30] = torch.tensor([1, 2, 3, 4])  # row 0 ends on a 4-gram it wrote before
    prompt = torch.tensor([[7, 1, 2, 3, 4, 9]] * 3)
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    for n in (1, 2, 3, 4):
        ours = NoRepeatGeneratedNGram(n, prompt.shape[1])(torch.cat([prompt, gen], 1), scores.clone())
        assert torch.equal(ours, NoRepeatNGramLogitsProcessor(n)(gen, scores.clone())), n
    # a phrase of the prompt (1 2 3 4, as an item description or a JSON key) may be written once
    wrote = torch.cat([prompt, torch.tensor([[5, 1, 2, 3]] * 3)], 1)
    assert NoRepeatGeneratedNGram(4, prompt.shape[1])(wrote, scores.clone())[0, 4] == scores[0, 4]
    assert NoRepeatNGramLogitsProcessor(4)(wrote, scores.clone())[0, 4] == -float("inf")


def test_the_lm_generators_default_guard_yields_to_the_callers_setting():
    guarded, defaults = guard_loops(Decoding(max_new_tokens=30))
    assert guarded.no_repeat_ngram_size == LOOP_GUARD_NGRAM == 4 and defaults == {"no_repeat_ngram_size": 4}
    assert guard_loops(guarded) == (guarded, {})  # applied once
    for asked in (0, 3):  # 0 is a choice too: the caller turned it off
        d = Decoding.model_validate({"no_repeat_ngram_size": asked})
        assert guard_loops(d) == (d, {})


@pytest.mark.slow
def test_a_real_lm_that_loops_greedily_does_not_with_the_guard():
    # SmolLM2-135M-Instruct, greedy, says "I'm so glad to hear that you're looking for a new guitar." twice
    # in a row for this request (measured 2026-12-06); with the default guard it goes on instead
    from feedbackgen.models.llm.backends import TransformersBackend

    backend = TransformersBackend()
    chat = [[{"role": "user", "content": "Write a customer review of guitar strings in which you say how glad "
                                         "you are, again and again."}]]
    plain = Decoding(max_new_tokens=40)
    looped = backend.chat(chat, plain)[0].text
    assert collapse.loops(looped), looped
    guarded = backend.chat(chat, guard_loops(plain)[0])[0].text
    assert not collapse.loops(guarded) and len(guarded.split()) >= 20, guarded
