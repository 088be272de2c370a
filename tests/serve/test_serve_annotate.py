"""Human evaluation: agreement statistics, blind tasks, the SQLite store, the report, the pages."""

import json
import re
import sqlite3

import httpx
import polars as pl
import pytest

from feedbackgen.errors import FeedbackgenError
from feedbackgen.evaluation.agreement import krippendorff_alpha, wilson_interval
from feedbackgen.evaluation.human import AnnotationTask, Judgement, JudgementStore, create_task, task_report

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
# 12 units, values 1-5, missing values as None. The paper gives alpha for four metrics.
PAPER = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
         [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
# Wikipedia, "Krippendorff's alpha", computational example: 3 coders, 15 units.
WIKIPEDIA = [[None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
             [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
             [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4]]


def units(coders):
    return [[v for v in unit if v is not None] for unit in zip(*coders)]


@pytest.mark.parametrize("metric, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                              ("ratio", 0.797)])
def test_alpha_matches_krippendorffs_worked_example(metric, expected):
    assert round(krippendorff_alpha(units(PAPER), metric), 3) == expected


def test_alpha_matches_wikipedias_example_and_a_hand_computation():
    assert round(krippendorff_alpha(units(WIKIPEDIA), "nominal"), 3) == 0.691
    assert round(krippendorff_alpha(units(WIKIPEDIA), "interval"), 3) == 0.811
    # two coders, units (1,1) (2,2) (1,2): o_11 = o_22 = 2, o_12 = o_21 = 1, n_1 = n_2 = 3, n = 6
    # alpha = 1 - (n - 1) * (o_12 + o_21) / (n_1 n_2 + n_2 n_1) = 1 - 5 * 2 / 18
    assert krippendorff_alpha([[1, 1], [2, 2], [1, 2]]) == pytest.approx(1 - 10 / 18)
    assert krippendorff_alpha([["A", "A"], ["B", "B"], ["tie", "tie"]]) == 1.0
    assert krippendorff_alpha([[3], [4]]) is None  # nothing coded twice
    assert krippendorff_alpha([[3, 3], [3, 3]]) is None  # no variation to agree on


def test_wilson_interval_by_hand():
    # p = 0.8, n = 10: centre (0.8 + z^2/20) / (1 + z^2/10), half-width z/(1 + z^2/10) sqrt(0.016 + z^2/400)
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson_interval(0, 0) is None


def test_task_is_blind_balanced_and_reproducible(predictions, mi_small, tmp_path):
    files = list(predictions.values())
    a = create_task(files, mi_small, tmp_path / "a", n=30, seed=3)
    b = create_task(files, mi_small, tmp_path / "b", n=30, seed=3)
    assert (a / "items.json").read_bytes() == (b / "items.json").read_bytes()
    items = json.loads((a / "items.json").read_text())["items"]
    assert len(items) == 30
    shown = (a / "items.json").read_text()
    assert not any(name in shown for name in predictions)  # annotators never see which model wrote what
    key = json.loads((a / "key.json").read_text())
    pairs = [tuple(sorted(k.values())) for k in key["items"]]
    assert {p: pairs.count(p) for p in set(pairs)} == {p: 10 for p in set(pairs)} and len(set(pairs)) == 3
    assert {k["A"] for k in key["items"]} == set(predictions)  # each model shows up in slot A
    rows = {name: {(r["user_id"], r["item_id"]): r for r in map(json.loads, open(f))} for name, f in predictions.items()}
    for item, who in zip(items, key["items"]):
        for slot in "AB":
            assert item["outputs"][slot]["text"] == rows[who[slot]][(item["user_id"], item["item"]["item_id"])]["text"]
        past = mi_small.train.filter(user_id=item["user_id"]).filter(pl.col("item_id") != item["item"]["item_id"])
        assert [r["text"] for r in item["user_reviews"]] == past.sort(["timestamp", "item_id"], descending=True)["text"].head(5).to_list()
    other = create_task(files, mi_small, tmp_path / "c", n=30, seed=4)
    assert (other / "items.json").read_bytes() != (a / "items.json").read_bytes()
    with pytest.raises(FeedbackgenError, match="at least two"):
        create_task(files[:1], mi_small, tmp_path / "d")


def judgement(item, annotator, preference, a=3, b=3):
    return Judgement(item, annotator, preference,
                     {"A": dict.fromkeys(("relevance", "fluency", "personalisation"), a),
                      "B": dict.fromkeys(("relevance", "fluency", "personalisation"), b)})


def test_store_uses_wal_keeps_judgements_and_lets_annotators_change_their_minds(tmp_path):
    store = JudgementStore(tmp_path / "j.sqlite")
    store.save(judgement(0, "ann", "A", 5, 2))
    store.save(judgement(0, "ann", "B", 1, 4))  # changed their mind
    store.save(judgement(1, "bob", "tie"))
    reopened = JudgementStore(tmp_path / "j.sqlite")
    assert reopened.get(0, "ann").preference == "B" and reopened.get(0, "ann").ratings["B"]["fluency"] == 4
    assert len(reopened.all()) == 2 and reopened.judged_items("bob") == {1}
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself refuses an out-of-range rating
        reopened.save(judgement(2, "ann", "A", 6, 3))
    assert reopened.get(2, "ann") is None


def test_report_counts_wins_ratings_and_agreement(predictions, mi_small, tmp_path):
    files = [predictions["popular"], predictions["popular_review"]]
    task_dir = create_task(files, mi_small, tmp_path / "t", n=10, seed=1)
    key = json.loads((task_dir / "key.json").read_text())["items"]
    store = AnnotationTask(task_dir).store
    # both annotators always prefer popular_review and rate it 4 (the other 2): perfect agreement
    for k, who in enumerate(key):
        slot = "A" if who["A"] == "popular_review" else "B"
        for annotator in ("ann", "bob"):
            store.save(judgement(k, annotator, slot, *((4, 2) if slot == "A" else (2, 4))))
    store.save(judgement(0, "cy", "tie"))
    r = task_report(task_dir)
    review, plain = r["systems"]["popular_review"], r["systems"]["popular"]
    assert (review["wins"], review["losses"], review["ties"]) == (20, 0, 1)
    assert (plain["wins"], plain["losses"], plain["ties"]) == (0, 20, 1)
    assert review["win_rate"] == 1.0 and review["win_rate_95ci"] == [round(x, 4) for x in wilson_interval(20, 20)]
    assert review["ratings"]["fluency"]["mean"] == pytest.approx((20 * 4 + 3) / 21, abs=1e-4)
    assert r["annotators"] == ["ann", "bob", "cy"] and r["judgements"] == 21
    # item 0 has a dissenting tie; every other unit agrees perfectly
    expected = krippendorff_alpha([["A" if k["A"] == "popular_review" else "B"] * 2 + (["tie"] if i == 0 else [])
                                   for i, k in enumerate(key)])
    assert r["agreement"]["preference"]["alpha"] == pytest.approx(expected, abs=1e-4) and expected < 1


def test_annotate_cli_create_and_report(predictions, mi_small, tmp_path, monkeypatch, capsys):
    from feedbackgen.cli import main

    mi_small.save(tmp_path / "data")

    def cli(*args):
        monkeypatch.setattr("sys.argv", ["feedbackgen", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
            raise SystemExit(0)
        return e.value.code, capsys.readouterr().out

    code, _ = cli("annotate", "create", "--predictions", predictions["popular"], predictions["popular_review"],
                  "--dataset", tmp_path / "data", "--out", tmp_path / "task", "--n", 6)
    assert code == 0 and len(json.loads((tmp_path / "task" / "items.json").read_text())["items"]) == 6
    AnnotationTask(tmp_path / "task").store.save(judgement(0, "ann", "A", 5, 1))
    code, out = cli("annotate", "report", tmp_path / "task")
    assert code == 0 and "| popular |" in out and "| popular_review |" in out and "Krippendorff" in out
    code, out = cli("annotate", "report", tmp_path / "task", "--json")
    assert json.loads(out)["judgements"] == 1


def test_annotation_pages_save_through_plain_forms(predictions, mi_small, tmp_path, live):
    from feedbackgen.serve import create_app

    task_dir = create_task([predictions["popular"], predictions["popular_review"]], mi_small, tmp_path / "t", n=3)
    with live(create_app(annotate=task_dir)) as s, httpx.Client(base_url=s.url) as c:
        assert "Your name" in c.get("/annotate").text
        start = c.get("/annotate", params={"annotator": "ann"})
        assert start.status_code == 303 and start.headers["location"] == "/annotate/0?annotator=ann"
        page = c.get("/annotate/0", params={"annotator": "ann"}).text
        item = json.loads((task_dir / "items.json").read_text())["items"][0]
        assert item["outputs"]["A"]["text"].replace("'", "&#39;") in page
        assert "popular" not in page.split("<main>")[1]  # no model names on the page
        form = {"preference": "B", "comment": "b reads better",
                **{f"{c}_{s}": v for s, v in (("a", 2), ("b", 5)) for c in ("relevance", "fluency", "personalisation")}}
        saved = c.post("/annotate/0", params={"annotator": "ann"}, data=form)
        assert saved.status_code == 303 and saved.headers["location"].startswith("/annotate/1?annotator=ann")
        again = c.get("/annotate/0", params={"annotator": "ann"}).text
        assert re.search(r'name="preference" value="B"[^>]*checked', again)
        assert re.search(r'name="fluency_b" value="5"[^>]*checked', again)
        bad = c.post("/annotate/1", params={"annotator": "ann"}, data={**form, "fluency_a": "9"})
        assert bad.status_code == 422 and "fluency_a" in bad.text
        missing = c.post("/annotate/1", params={"annotator": "ann"}, data={"preference": "A"})
        assert missing.status_code == 422 and "relevance_a" in missing.text
        assert c.get("/annotate/7", params={"annotator": "ann"}).status_code == 404
        assert c.get("/annotate", params={"annotator": "<script>"}).status_code == 422
    judged = AnnotationTask(task_dir).store.all()
    assert [(j.item, j.annotator, j.preference, j.comment) for j in judged] == [(0, "ann", "B", "b reads better")]
