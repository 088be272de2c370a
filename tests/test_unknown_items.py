"""An item the model never saw gets no invented text (issue 25): `Decoding.unknown_item` = none (the
default) | fallback | generate, for every generator, on real PETER-format Musical Instruments rows
whose item is in the test split but not in training."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from support import TINY, peter_slice

from feedbackgen.cli import app
from feedbackgen.errors import ConfigError
from feedbackgen.models import create
from feedbackgen.models.unknown import UNKNOWN_ITEM, UNKNOWN_ITEM_TEXT, known_items
from feedbackgen.types import FeedbackRequest


@pytest.fixture(scope="module")
def ds(data_root):
    return peter_slice(data_root, n_train=300, n_valid=20, n_test=60)


@pytest.fixture(scope="module")
def requests(ds):
    """[a known user with a known item, the same user with a test item that has no training row]."""
    train_items = set(ds.train["item_id"])
    unseen = next(i for i in ds.test["item_id"] if i not in train_items)
    user, item = ds.train.row(0, named=True)["user_id"], ds.train.row(0, named=True)["item_id"]
    return [FeedbackRequest(user, item), FeedbackRequest(user, unseen)]


@pytest.fixture(scope="module")
def fitted(ds):
    """Every generator that trains in seconds: peter (tiny, one epoch), retrieval and popular (both
    targets), and a rating-only model."""
    return {"peter": create("peter", {**TINY, "max_epochs": 1}).fit(ds),
            "retrieval": create("retrieval").fit(ds),
            "retrieval-review": create("retrieval", {"target": "review"}).fit(ds),
            "popular": create("popular").fit(ds),
            "popular-review": create("popular", {"target": "review"}).fit(ds),
            "bias": create("bias").fit(ds)}


@pytest.mark.parametrize("name", ["peter", "retrieval", "retrieval-review", "popular", "popular-review"])
def test_an_unknown_item_gets_no_invented_text_unless_asked(fitted, requests, name):
    model = fitted[name]
    assert known_items(model, [r.item_id for r in requests]).tolist() == [True, False]
    generated = model.generate(requests, {"unknown_item": "generate"})
    default, fallback = model.generate(requests), model.generate(requests, {"unknown_item": "fallback"})
    for out in (generated, default, fallback):
        assert [fb.meta["unknown_item"] for fb in out] == [False, True]
        assert out[0].text == generated[0].text and out[0].meta == generated[0].meta  # a known item: untouched
        assert [fb.rating for fb in out] == [fb.rating for fb in generated]  # the rating is the model's
    # none (the default): no text, and why; an answer that had none already keeps its own reason
    assert default[1].text == "" and default[1].meta["provenance"] == "none"
    if generated[1].meta["provenance"] != "none":
        assert default[1].meta["fallback"] == UNKNOWN_ITEM
    # fallback: a text that says so
    assert fallback[1].text == UNKNOWN_ITEM_TEXT
    assert (fallback[1].meta["provenance"], fallback[1].meta["fallback"]) == ("fallback", UNKNOWN_ITEM)


def test_what_the_generators_wrote_for_the_unknown_item_before_the_policy(fitted, requests):
    # the failure the policy prevents: peter writes a sentence about an item it never saw, and a
    # review retrieval copies the user's sentence about another item
    peter = fitted["peter"].generate(requests, {"unknown_item": "generate"})[1]
    assert peter.text and peter.meta["provenance"] == "generated"
    copied = fitted["retrieval-review"].generate(requests, {"unknown_item": "generate"})[1]
    assert copied.text and copied.meta["source_item"] != requests[1].item_id


def test_rating_only_models_say_so_too(fitted, requests):
    out = fitted["bias"].generate(requests, {"unknown_item": "fallback"})
    assert [fb.text for fb in out] == ["", ""] and [fb.meta["unknown_item"] for fb in out] == [False, True]


def test_a_bad_policy_is_refused_naming_the_field(fitted, requests):
    with pytest.raises(ConfigError, match="unknown_item"):
        fitted["popular"].generate(requests, {"unknown_item": "invent"})


def test_the_command_line_takes_the_policy(fitted, requests, tmp_path):
    fitted["popular-review"].save(tmp_path / "m")
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"user_id": r.user_id, "item_id": r.item_id}) + "\n" for r in requests))
    runner = CliRunner()
    for policy, text in (("fallback", UNKNOWN_ITEM_TEXT), (None, "")):
        out = tmp_path / f"{policy}.jsonl"
        args = ["generate", str(tmp_path / "m"), "--requests", str(path), "--out", str(out)]
        res = runner.invoke(app, args + (["--unknown-item", policy] if policy else []))
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert rows[1]["text"] == text and rows[1]["meta"]["unknown_item"] and not rows[0]["meta"]["unknown_item"]
    res = runner.invoke(app, ["generate", str(tmp_path / "m"), "--requests", str(path), "--out",
                              str(tmp_path / "bad.jsonl"), "--unknown-item", "invent"])
    assert res.exit_code != 0 and "unknown_item" in res.output + str(res.exception)


def test_the_llm_generators_apply_the_policy_without_asking_the_model(ds, requests):
    # llm (and sft, which answers through it): an item it has a catalogue entry for is not unknown;
    # an unknown one is not sent to the model unless the policy is "generate" (test_llm covers that path)
    model = create("llm", {"num_threads": 1, "shots": 0}).fit(ds)
    assert model.knows_items([r.item_id for r in requests]) == [True, False]
    for policy, text in (("fallback", UNKNOWN_ITEM_TEXT), ("none", "")):
        fb = model.generate(requests[1:], {"max_new_tokens": 8, "unknown_item": policy})[0]
        assert fb.text == text and fb.meta["unknown_item"] and fb.meta["answer"] == "fallback"
        assert fb.rating == pytest.approx(float(model.rating.predict_rating(requests[1:])[0]))
    assert model.backend_stats == {}  # the model was never asked
