import polars as pl
import pytest

from feedbackgen.errors import DataError
from feedbackgen.evaluation.grounding import item_grounding
from feedbackgen.types import Feedback


def test_item_grounding_separates_the_right_item_from_another(mi_small):
    """A model that copies a training sentence of the asked item scores 1; one that copies a
    sentence of another item scores about 0 (only sentences also written about the asked item
    could count)."""
    train = mi_small.train.drop_nulls("explanation").filter(pl.col("explanation") != "")
    # each item's first training sentence
    own = dict(train.group_by("item_id", maintain_order=True).agg(pl.col("explanation").first()).iter_rows())
    items = sorted(own)
    test = mi_small.test.filter(pl.col("item_id").is_in(items)).head(200)
    right = [Feedback(u, i, 4.0, own[i]) for u, i in test.select("user_id", "item_id").iter_rows()]
    # the next item's sentence: always another item
    shifted = {i: own[items[(n + 1) % len(items)]] for n, i in enumerate(items)}
    wrong = [{"item_id": f.item_id, "text": shifted[f.item_id]} for f in right]

    good = item_grounding(right, mi_small)
    assert good["item_grounding"] == 1.0 and good["scored"] == len(right) > 100
    bad = item_grounding(pl.DataFrame(wrong), mi_small)
    # a copied sentence may also have been written, word for word, about the asked item: count those
    sentences_of = train.group_by("explanation").agg(pl.col("item_id").unique())
    also_about = {(s, i) for s, items_ in sentences_of.iter_rows() for i in items_}
    expected = sum((w["text"], w["item_id"]) in also_about for w in wrong) / len(wrong)
    assert bad["item_grounding"] == pytest.approx(expected) and bad["item_grounding"] < 0.1


def test_item_grounding_leaves_out_and_counts_what_it_cannot_score(mi_small):
    item = mi_small.train["item_id"][0]
    out = item_grounding([{"item_id": item, "text": ""}, {"item_id": "no-such-item", "text": "great strings"},
                          {"item_id": item, "text": "? !"}], mi_small)
    assert out == {"item_grounding": None, "grounded": 0, "scored": 0, "empty": 1, "unknown_item": 1,
                   "out_of_vocabulary": 1, "column": "explanation"}
    with pytest.raises(DataError, match="'summary_text'"):
        item_grounding([], mi_small, column="summary_text")
    with pytest.raises(DataError, match="prediction 0 has no item_id"):
        item_grounding([{"text": "x"}], mi_small)


def test_evaluate_reports_item_grounding_in_the_main_table(mi_small, tmp_path):
    """`evaluate` shows item grounding per model: a file copying each item's own sentence scores 1,
    one copying the next item's sentence close to 0."""
    import json

    from feedbackgen.evaluation.report import evaluate

    train = mi_small.train.drop_nulls("explanation").filter(pl.col("explanation") != "")
    own = dict(train.group_by("item_id", maintain_order=True).agg(pl.col("explanation").first()).iter_rows())
    items = sorted(own)
    nxt = {i: own[items[(n + 1) % len(items)]] for n, i in enumerate(items)}
    test = mi_small.test.filter(pl.col("item_id").is_in(items))
    for name, text_of in (("right", own), ("other", nxt)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for u, i in test.select("user_id", "item_id").iter_rows():
                f.write(json.dumps({"user_id": u, "item_id": i, "rating": 4.0, "text": text_of[i],
                                    "model": name}) + "\n")
    report = evaluate([tmp_path / "right.jsonl", tmp_path / "other.jsonl"], mi_small, tmp_path / "r",
                      embeddings=False, allow_partial=True)
    assert report["models"]["right"]["metrics"]["item_grounding"] == 1.0
    assert report["models"]["other"]["metrics"]["item_grounding"] < 0.1
    assert "Item grounding" in (tmp_path / "r" / "report.md").read_text().split("## Other metrics")[0]
