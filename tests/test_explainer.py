"""The explainer's parts: the content plan, the plan's logits bias, the sentence pool's grounding
margin, the choice among candidates, and `peter` writing from a plan with several candidates
(reproducible, independent of batching, saved and loaded), and the `explainer` alias."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from support import TINY, peter_slice, requests_of
from typer.testing import CliRunner

from feedbackgen.cli import app
from feedbackgen.collapse import loops
from feedbackgen.decoding.plan import PlanBias
from feedbackgen.features.sentences import SentencePool
from feedbackgen.models import ALIASES, create, load
from feedbackgen.models.plan import ContentPlan
from feedbackgen.features.sentences import vader_compound
from feedbackgen.models.rerank import ToneScale, choose, sentiment_agreement


@pytest.fixture(scope="module")
def ds(data_root):
    return peter_slice(data_root, n_train=600, n_valid=60, n_test=24)


@pytest.fixture(scope="module")
def plan(ds):
    train = ds.train
    return ContentPlan.fit(train["user_id"].to_list(), train["item_id"].to_list(), train["explanation"].to_list())


def _top_item(ds) -> str:
    return ds.train.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])["item_id"][0]


def test_plan_ranks_the_items_own_words_and_raises_the_users(ds, plan):
    item = _top_item(ds)
    rows = ds.train.filter(pl.col("item_id") == item)
    words = plan.words("nobody", item, 8)
    assert len(words) == 8 and words[0][1] == 1.0
    assert all(0 < w <= 1 for _, w in words)
    own_text = " ".join(rows["explanation"].to_list()).lower()
    assert all(w in own_text for w, _ in words)  # every planned word was written about this item
    # a word this item shares with every item weighs less than its own: "great" is nowhere near the top
    assert "great" not in [w for w, _ in words[:3]]
    # a user who wrote one of the item's lower-ranked words gets it ranked higher
    low = plan.words("nobody", item, 24)[-1][0]
    author = ds.train.filter(pl.col("explanation").str.to_lowercase().str.contains(rf"\b{low}\b"))["user_id"][0]
    assert [w for w, _ in plan.words(author, item, 24)].index(low) < 23
    assert plan.words("nobody", "an item never seen", 5) == []
    assert not plan.knows("an item never seen") and plan.knows(item)


def test_plan_survives_its_state(plan):
    again = ContentPlan.from_state(plan.get_state())
    assert again.item_words == plan.item_words and again.user_words == plan.user_words


def test_plan_bias_raises_planned_tokens_until_written():
    bias = PlanBias([{3: 2.0, 5: 1.0}, {}])
    scores = torch.zeros(2, 8)
    first = bias(torch.zeros(2, 0, dtype=torch.long), scores)
    assert first[0, 3] == 2.0 and first[0, 5] == 1.0 and first[1].abs().sum() == 0
    after = bias(torch.tensor([[3], [3]]), scores)  # row 0 wrote token 3: its bonus is gone
    assert after[0, 3] == 0.0 and after[0, 5] == 1.0
    beams = bias.repeat(2)(torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, 8))
    assert beams[1, 3] == 2.0 and beams[2].abs().sum() == 0
    assert bias.rows_slice(slice(1, 2))(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 8)).abs().sum() == 0


def test_margin_is_positive_for_the_items_own_words_and_negative_for_anothers(ds, plan):
    pool = plan.pool
    item = _top_item(ds)
    own = ds.train.filter(pl.col("item_id") == item)["explanation"][0]
    other = ds.train.filter(pl.col("item_id") != item)["explanation"][0]
    margin = pool.item_margin([own, other, "great"], [item, item, "never seen"])
    assert margin[0] > 0 > margin[1]
    assert np.isnan(margin[2])
    nearest, has_words = pool.nearest([own, "zzzz qqqq"])
    assert item in pool.items_of[nearest[0]] and list(has_words) == [True, False]


def test_choice_weighs_grounding_fluency_and_tone(ds, plan):
    item = _top_item(ds)
    own = ds.train.filter(pl.col("item_id") == item)["explanation"][0]
    other = ds.train.filter(pl.col("item_id") != item)["explanation"][0]
    texts = [other, own]
    args = dict(items=[item, item], ratings=np.array([5.0, 5.0]), k=2, pool=plan.pool, tone=ToneScale.linear((1.0, 5.0)))
    chosen, u = choose(texts, logprobs=np.array([-1.0, -1.0]), weights=(1.0, 0.2, 0.0), **args)
    assert chosen[0] == 1 and u.shape == (1, 2)
    # a much likelier text wins when fluency weighs more than grounding
    chosen, _ = choose(texts, logprobs=np.array([-1.0, -30.0]), weights=(1.0, 0.2, 0.0), **args)
    assert chosen[0] == 0
    # tone: a 1-star rating prefers the negative text
    agree = sentiment_agreement(["this is terrible and broke", "this is great and works"], np.array([1.0, 1.0]),
                                ToneScale.linear((1.0, 5.0)))
    assert agree[0] > agree[1]


def test_tone_scale_spreads_crowded_predicted_ratings_over_the_tones_buyers_wrote(ds):
    # predicted ratings crowd between 4 and 5 stars; the real training sentences' tones spread wide
    tones = vader_compound(ds.train["explanation"].to_list())
    predicted = np.random.default_rng(0).uniform(4.0, 4.8, size=len(tones))
    scale = ToneScale(predicted, tones)
    low, mid, high = scale(np.array([4.0, np.median(predicted), 4.8]))
    assert (low, high) == pytest.approx((tones.min(), tones.max()))
    assert mid == pytest.approx(np.median(tones), abs=0.05)
    assert np.all(np.diff(scale(np.linspace(3.0, 5.5, 50))) >= 0)  # monotone; clipped outside the seen ratings
    # a model that predicts one rating (or two) for every row: one tone per rating, never nonsense
    constant = ToneScale(np.full(len(tones), 4.2), tones)
    assert constant(np.array([1.0, 4.2, 5.0])) == pytest.approx([np.mean(np.quantile(tones, np.linspace(0, 1, 101)))] * 3)
    two = ToneScale(np.repeat([4.0, 4.5], [len(tones) - len(tones) // 2, len(tones) // 2]), tones)
    assert np.all(np.diff(two(np.linspace(3.9, 4.6, 30))) >= 0) and two(np.array([4.0]))[0] < two(np.array([4.5]))[0]
    # the linear map asks nearly one tone of both ratings; the quantile map a plain text of the lower one
    texts = ["the strings arrived on time", "these strings are great"]  # VADER 0.0 and 0.62
    for rating, linear_pick, scaled_pick in ((4.05, 1, 0), (4.75, 1, 1)):
        args = dict(texts=texts, items=["a", "a"], ratings=np.array([rating, rating]), logprobs=np.zeros(2), k=2,
                    pool=None, weights=(0.0, 0.0, 1.0))
        assert choose(**args, tone=ToneScale.linear((1.0, 5.0)))[0][0] == linear_pick
        assert choose(**args, tone=scale)[0][0] == scaled_pick


@pytest.fixture(scope="module")
def planned(ds):
    return create("peter", {**TINY, "max_epochs": 2, "plan_words": 5, "plan_strength": 3.0,
                            "candidates": 4}).fit(ds)


def test_peter_writes_from_the_plan_and_keeps_the_best_candidate(ds, planned, tmp_path):
    reqs = requests_of(ds.test)
    fb = planned.generate(reqs, {"max_new_tokens": 12})
    assert all(f.meta["plan"] and 0 <= f.meta["candidate"] < 4 for f in fb)
    # one candidate (the request's own greedy decoding) per call: nothing to choose
    single = planned.generate(reqs, {"max_new_tokens": 12, "num_candidates": 1})
    assert all("candidate" not in f.meta for f in single)
    own = {f.text for f in single}
    assert all(f.text in own for f in fb if f.meta["candidate"] == 0)  # candidate 0 is the own decoding
    # with every weight at 0 the utilities tie, and a tie keeps candidate 0: the request's own decoding
    weights = {"utility_grounding": planned.config.utility_grounding, "utility_fluency": planned.config.utility_fluency,
               "utility_sentiment": planned.config.utility_sentiment}
    planned.config = planned.config.model_copy(update={k: 0.0 for k in weights})
    try:
        # two words: too short to loop (this tiny model's longer greedy texts all do, and lose)
        tied = planned.generate(reqs, {"max_new_tokens": 2})
    finally:
        planned.config = planned.config.model_copy(update=weights)
    short = planned.generate(reqs, {"max_new_tokens": 2, "num_candidates": 1})
    assert not any(loops(f.text) for f in short)
    assert [(f.meta["candidate"], f.text) for f in tied] == [(0, f.text) for f in short]
    # the choice depends on the request and its seed, not on the batch
    again = planned.generate(reqs, {"max_new_tokens": 12, "batch_size": 5})
    assert [f.text for f in again] == [f.text for f in fb]
    planned.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert [f.text for f in loaded.generate(reqs, {"max_new_tokens": 12})] == [f.text for f in fb]


def test_plan_bias_makes_the_items_words_appear(ds, planned):
    reqs = requests_of(ds.test)
    dec = {"max_new_tokens": 12, "num_candidates": 1}
    with_plan = planned.generate(reqs, dec)
    planned.config = planned.config.model_copy(update={"plan_words": 0})
    try:
        without = planned.generate(reqs, dec)
    finally:
        planned.config = planned.config.model_copy(update={"plan_words": 5})

    def mentions(fb):  # texts that say at least one planned word
        return sum(any(w in f.text.split() for w, _ in planned.plan.words(r.user_id, r.item_id, 5))
                   for f, r in zip(fb, reqs))

    assert mentions(with_plan) > mentions(without)


def test_explainer_alias_trains_peter_with_its_settings_and_is_listed():
    alias = ALIASES["explainer"]
    m = create("explainer", {"max_epochs": 1})
    assert m.name == alias.model == "peter"
    assert all(getattr(m.config, k) == v for k, v in alias.settings.items())
    assert m.config.training.max_epochs == 1  # the caller's settings still override
    out = CliRunner().invoke(app, ["models"])
    assert out.exit_code == 0 and "explainer = peter" in out.output


def test_the_explainer_bench_replays_the_choice_and_bounds_it(ds, planned, tmp_path):
    """bench/explainer.py on a tiny planned model: the valid grid and the test bounds, where the
    ROUGE-L oracle beats the folder's own choice on ROUGE-L and its grounded twin on grounding."""
    ds.save(tmp_path / "data")
    planned.save(tmp_path / "m")
    bench = Path(__file__).resolve().parents[1] / "bench" / "explainer.py"
    out = subprocess.run([sys.executable, str(bench), "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "data")],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    assert "1 / 0.2 / 0.2, linear tone" in rows and len([r for r in rows if r[0].isdigit()]) == 14
    own = next(v for k, v in rows.items() if k.endswith("(the folder's weights)"))
    grounded = rows["oracle: best ROUGE-L among the grounded"]
    oracle = rows["oracle: best ROUGE-L against the reference"]
    assert float(oracle[1]) >= float(own[1]) and float(oracle[1]) >= float(grounded[1])  # ROUGE-L
    assert float(grounded[2]) >= float(own[2]) and float(grounded[2]) >= float(oracle[2])  # grounding
