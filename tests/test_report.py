"""`evaluate` on a small real dataset (Musical Instruments) with hand-made prediction files."""

import gzip
import itertools
import json
import os
import subprocess
import sys

import polars as pl
import pytest

from feedbackgen.data.dataset import Dataset
from feedbackgen.data.text import split_sentences, tokenize
from feedbackgen.errors import DataError
from feedbackgen.evaluation.extra import MEMORISATION_N
from feedbackgen.evaluation.report import MAIN_COLUMNS, evaluate, read_predictions
from feedbackgen.evaluation.scoring import feature_set

ASPECTS = ("cable", "cables", "mic", "sound", "quality", "price", "guitar", "strings", "pedal", "filter")
N_ROWS = 300


def _explanation(review: str) -> tuple[str, str | None]:
    """The first sentence that mentions an aspect (and that aspect), else the first sentence."""
    sentences = split_sentences(review) or [review]
    for sentence in sentences:
        for token in tokenize(sentence):
            if token in ASPECTS:
                return sentence, token
    return sentences[0], None


@pytest.fixture(scope="module")
def dataset(data_root):
    path = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(itertools.islice(f, N_ROWS)):
            r = json.loads(line)
            explanation, aspect = _explanation(r["reviewText"])
            rows.append({"user_id": r["reviewerID"], "item_id": r["asin"], "rating": r["overall"],
                         "text": r["reviewText"], "summary": r["summary"], "timestamp": r["unixReviewTime"],
                         "explanation": explanation, "aspect": aspect,
                         "split": ("test", "valid", "train", "train", "train")[i % 5]})
    return Dataset(pl.DataFrame(rows), manifest={"source": "test: first 300 Musical Instruments reviews"})


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def prediction_files(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pred")
    test, train = dataset.test.to_dicts(), dataset.train
    first_train_text = {i: t for i, t in train.group_by("item_id", maintain_order=True)
                        .agg(pl.col("explanation").first()).rows()}
    decoding = {"max_new_tokens": 25, "do_sample": False}
    copy = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": r["rating"], "text": r["explanation"],
             "model": "copy", "target": "explanation", "decoding": decoding} for r in test]
    copy.append({"user_id": "nobody", "item_id": "nothing", "rating": 3, "text": "x", "model": "copy"})
    item = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 4.0,
             "text": first_train_text.get(r["item_id"], "good"), "model": "item-first-train"} for r in test]
    mean = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 7.5, "text": "", "model": "mean"}
            for r in test[:-5]]  # a rating-only baseline that also skips five rows
    return (_write_jsonl(folder / "copy.jsonl", copy),
            _write_jsonl(folder / "baselines.jsonl", item + mean))


@pytest.fixture(scope="module")
def report(dataset, prediction_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = evaluate(list(prediction_files), dataset, out, embeddings=False, dataset_path="mem://mi300")
    return out, result


def _memorised(texts, dataset):
    """Memorisation by hand: the share of `texts` holding an n-gram of a training explanation, and
    the longest run of such n-grams in tokens (0 when none)."""
    n = MEMORISATION_N

    def windows(tokens):
        return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]

    train = {w for t in dataset.train["explanation"].drop_nulls() for w in windows(tokenize(t))}
    copied, longest = 0, 0
    for text in texts:
        hits = [w in train for w in windows(tokenize(text))]
        copied += any(hits)
        runs = "".join("1" if h else "0" for h in hits).split("0")
        longest = max(longest, max(map(len, runs)) + n - 1 if any(hits) else 0)
    return copied / len(texts), longest


def test_copying_the_reference_scores_perfectly(report, dataset):
    _, result = report
    copy = result["models"]["copy"]
    m = copy["metrics"]
    assert copy["target"] == "explanation" and copy["reference_column"] == "explanation"
    for key in ("bleu1", "bleu4", "rouge1_f", "rougeL_p", "rouge1_f_official"):
        assert m[key] == pytest.approx(100, abs=1e-4), key
    assert m["rmse"] == 0 and m["mae"] == 0
    share, longest = _memorised(dataset.test["explanation"].to_list(), dataset)
    assert m["memorisation"] == pytest.approx(share) and m["longest_copied_span"] == longest
    assert m["length_gen_mean"] == m["length_ref_mean"]
    n_test = len(dataset.test)
    assert copy["counts"] == {"predictions": n_test + 1, "duplicate_predictions": 0, "matched": n_test,
                              "predictions_without_reference": 1, "references_without_prediction": 0,
                              "matched_without_reference_text": 0, "matched_with_rating": n_test}
    assert copy["decoding"] == [{"do_sample": False, "max_new_tokens": 25}]
    confusion = copy["rating_confusion"]["matrix"]
    assert sum(map(sum, confusion)) == n_test
    assert sum(confusion[i][i] for i in range(5)) == n_test  # all on the diagonal


def test_baselines(report, dataset):
    _, result = report
    item = result["models"]["item-first-train"]["metrics"]
    copy = result["models"]["copy"]["metrics"]
    assert 0 < item["bleu1"] < 100 and item["bleu4"] < copy["bleu4"]
    true = dataset.test["rating"].to_numpy()
    assert item["mae"] == pytest.approx(float(abs(4.0 - true).mean()))
    # copying training texts verbatim is what memorisation is for
    test = dataset.test.to_dicts()
    first = {i: t for i, t in dataset.train.group_by("item_id", maintain_order=True)
             .agg(pl.col("explanation").first()).rows()}
    share, longest = _memorised([first.get(r["item_id"], "good") for r in test], dataset)
    assert item["memorisation"] == pytest.approx(share) and item["longest_copied_span"] == longest
    assert share > 0.5 and longest >= MEMORISATION_N
    assert {"fmr", "fcr", "div", "usr", "distinct2", "self_bleu4", "sentiment_rating_rho"} <= set(item)
    assert "embedding_sim" not in item  # embeddings=False

    mean = result["models"]["mean"]
    assert not mean["has_text"] and set(mean["metrics"]) == {"rmse", "mae"}
    # 7.5 is clipped to 5 before the error
    assert mean["metrics"]["mae"] == pytest.approx(float((5 - true[:-5]).mean()))
    assert mean["counts"]["references_without_prediction"] == 5
    assert mean["rating_confusion"]["matrix"][4][4] == int((true[:-5] == 5).sum())


def test_report_files(report):
    out, result = report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["models"]["copy"]["metrics"]["bleu4"] == pytest.approx(result["models"]["copy"]["metrics"]["bleu4"])
    assert on_disk["dataset"]["path"] == "mem://mi300"
    assert on_disk["split"] == "test" and on_disk["feature_set_size"] > 3
    for key in MAIN_COLUMNS:
        assert on_disk["metric_definitions"][key]["direction"] in ("higher", "lower")
    md = (out / "report.md").read_text()
    n_test = result["references"]
    assert f"| copy | explanation | {n_test}/{n_test} (100.0 %) | — | 100.00 | 100.00 |" in md
    mean_row = next(line for line in md.splitlines() if line.startswith("| mean |"))
    assert mean_row.count("—") == len(MAIN_COLUMNS) - 2 + 1  # only RMSE and MAE; no provenance either
    assert "Self-BLEU-4" in md and "Metric definitions" in md
    assert set(on_disk["plots"]) == {"metrics.png", "confusion.png", "lengths.png"}
    for name in on_disk["plots"]:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
    assert not list(out.glob("*.tmp"))


def test_embedding_metrics_on_a_tiny_slice(dataset, tmp_path):
    test = dataset.test.head(12).to_dicts()
    rows = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": r["rating"], "text": r["explanation"],
             "model": "copy"} for r in test]
    rows += [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 3, "text": "the weather is nice today",
              "model": "off-topic"} for r in test]
    pred = _write_jsonl(tmp_path / "p.jsonl", rows)
    result = evaluate([pred], dataset, tmp_path / "out", embeddings=True, allow_partial=True)
    copy, off = result["models"]["copy"]["metrics"], result["models"]["off-topic"]["metrics"]
    assert copy["embedding_sim"] == pytest.approx(1, abs=1e-4)
    assert off["embedding_sim"] < 0.5
    assert copy["personalisation_mrr"] == pytest.approx(1)  # its own reference is always first
    assert copy["personalisation_candidates"] == 12  # 12 users: 11 distractors
    assert off["personalisation_mean_rank"] == pytest.approx(6.5)  # one text for all: every candidate ties


def test_bad_prediction_rows_name_file_line_and_field(tmp_path, dataset):
    good = {"user_id": "u", "item_id": "i", "rating": 4, "text": "ok", "model": "m"}
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON"):
        read_predictions(p)
    p.write_text(json.dumps(good) + "\n\n" + json.dumps({k: v for k, v in good.items() if k != "text"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3, field 'text': missing field"):
        read_predictions(p)
    p.write_text(json.dumps({**good, "rating": "five"}) + "\n")
    with pytest.raises(DataError, match=r"line 1, field 'rating'"):
        evaluate([p], dataset, tmp_path / "out", embeddings=False)
    p.write_text(json.dumps({**good, "target": "summary"}) + "\n")
    with pytest.raises(DataError, match=r"field 'target'"):
        read_predictions(p)


def test_review_target_uses_the_text_column(tmp_path, dataset):
    test = dataset.test.head(20).to_dicts()
    pred = _write_jsonl(tmp_path / "p.jsonl", [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": None,
                                                "text": r["text"], "model": "copy-review"} for r in test])
    result = evaluate([pred], dataset, tmp_path / "out", target="review", embeddings=False, allow_partial=True)
    model = result["models"]["copy-review"]
    assert model["reference_column"] == "text" and model["metrics"]["bleu4"] == pytest.approx(100)
    assert "rmse" not in model["metrics"] and model["rating_confusion"] is None


def test_sections_from_other_commands_sit_beside_the_text_metrics(tmp_path, dataset):
    from feedbackgen.recommend import Popularity, evaluate_ranking
    from feedbackgen.recommend.ranking import write_ranking

    table = evaluate_ranking({"popularity": Popularity().fit(dataset)}, dataset)
    write_ranking(table, tmp_path / "ranking", "mi300")
    rows = dataset.test.select("user_id", "item_id", "rating").with_columns(
        text=pl.lit("good"), model=pl.lit("constant"))
    rows.write_ndjson(tmp_path / "pred.jsonl")
    report = evaluate([tmp_path / "pred.jsonl"], dataset, tmp_path / "out", embeddings=False,
                      sections=[tmp_path / "ranking" / "ranking.md"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## Main metrics") < md.index("## Ranking (mi300") < md.index("## Counts")
    hr = f"{table.filter(pl.col('protocol') == 'full')['hr@10'][0]:.4f}"
    assert hr in md and report["sections"][0]["title"] == "Ranking"
    with pytest.raises(Exception, match="no such Markdown file"):
        evaluate([tmp_path / "pred.jsonl"], dataset, tmp_path / "out2", embeddings=False,
                 sections=[tmp_path / "missing.md"])


# -- issue 15: evaluation that misleads quietly ----------------------------------------------------------

def _rows(frame, model, text=None):
    return [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": r["rating"],
             "text": r["explanation"] if text is None else text, "model": model} for r in frame.to_dicts()]


def test_the_same_model_name_in_two_files_keeps_both_rows(dataset, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = _write_jsonl(tmp_path / "a" / "a.jsonl", _rows(dataset.test, "peter"))
    b = _write_jsonl(tmp_path / "b" / "b.jsonl", _rows(dataset.test, "peter", text="good sound quality"))
    result = evaluate([a, b], dataset, tmp_path / "out", embeddings=False)
    assert list(result["models"]) == ["peter (a.jsonl)", "peter (b.jsonl)"]
    first, second = result["models"].values()
    assert (first["file"], second["file"]) == (str(a), str(b))
    assert first["metrics"]["bleu4"] == pytest.approx(100) and second["metrics"]["bleu4"] < 50
    # same file name in two folders: the path tells them apart
    c = _write_jsonl(tmp_path / "b" / "a.jsonl", _rows(dataset.test, "peter", text="nice"))
    labels = list(evaluate([a, c], dataset, tmp_path / "out2", embeddings=False)["models"])
    assert labels == [f"peter ({a})", f"peter ({c})"]


def _mostly_unmatched(dataset, path):
    """One row answering a test reference, the rest answering pairs the split does not hold
    (as predictions made for another dataset or split are)."""
    rows = _rows(dataset.test.head(1), "peter") + _rows(dataset.train, "peter")
    return _write_jsonl(path, rows)


def test_a_mostly_unmatched_file_fails_unless_partial_is_allowed(dataset, tmp_path):
    pred = _mostly_unmatched(dataset, tmp_path / "other.jsonl")
    n_test = len(dataset.test)
    reason = rf"other\.jsonl: model 'peter' answers 1 of {n_test} references of split 'test' \(1\.\d %\), below the 90 %"
    with pytest.raises(DataError, match=reason):
        evaluate([pred], dataset, tmp_path / "out", embeddings=False)
    assert not (tmp_path / "out" / "report.json").exists()
    result = evaluate([pred], dataset, tmp_path / "out", embeddings=False, allow_partial=True)
    row = result["models"]["peter"]
    assert row["partial"] and row["coverage"] == {"matched": 1, "expected": n_test, "share": 1 / n_test}
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| peter (partial†) | explanation | 1/{n_test} (" in md and "† partial" in md


def test_coverage_through_the_command_line(dataset, tmp_path):
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    dataset.save(tmp_path / "data")
    pred = _mostly_unmatched(dataset, tmp_path / "other.jsonl")
    args = ["evaluate", str(pred), "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--no-embeddings", "--no-naturalness"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "1000"}  # rich wraps at the width
    failed = subprocess.run([sys.executable, "-m", "feedbackgen.cli", *args], env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    reason = failed.stderr.strip()
    assert "\n" not in reason and "other.jsonl: model 'peter' answers 1 of" in reason and "--allow-partial" in reason
    passed = CliRunner().invoke(app, args + ["--allow-partial"])
    assert passed.exit_code == 0, passed.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["models"]["peter"]["partial"]


def test_one_text_for_every_request_is_marked_collapsed(dataset, tmp_path):
    same = _rows(dataset.test, "stuck", text="i love it .")  # no aspect word: the best DIV
    copy = _rows(dataset.test, "copy")
    result = evaluate([_write_jsonl(tmp_path / "p.jsonl", same + copy)], dataset, tmp_path / "out", embeddings=False)
    stuck = result["models"]["stuck"]
    assert stuck["collapse"]["collapsed"] and stuck["collapse"]["top_share"] == 1.0
    assert stuck["metrics"]["div"] == 0  # the best DIV there is: why the row must be marked
    assert not result["models"]["copy"]["collapse"]["collapsed"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| stuck (collapsed*) |" in md and "\\* collapsed" in md and "| copy |" in md


def test_training_and_the_report_call_the_same_texts_collapsed():
    from feedbackgen.evaluation.scoring import collapse as report_collapse
    from feedbackgen.models.collapse import signal as training_signal

    one_text = ["great strings"] * 6 + [f"fine tuner {i}" for i in range(4)]  # USR 0.5, no loop, one text 60 %
    loops = ["i i i love it"] * 3 + ["ok"]  # 4 texts: too few for the top share, but 75 % loop
    healthy = [f"good {i}" for i in range(12)]
    for texts, collapsed in ((one_text, True), (loops, True), (healthy, False)):
        assert training_signal(texts)["collapsed"] is collapsed
        assert report_collapse(texts, None)["collapsed"] is collapsed
    assert not report_collapse(one_text[:9], None)["collapsed"]  # under 10 texts the top share is not judged


def test_report_at_80_columns_shows_every_number_whole(report):
    out, _ = report
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": os.pathsep.join(sys.path)}
    shown = subprocess.run([sys.executable, "-m", "feedbackgen.cli", "report", str(out)], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert max(map(len, shown.splitlines())) <= 80
    assert "…" not in shown
    cells = set(shown.split())
    on_disk = json.loads((out / "report.json").read_text())
    for name, m in on_disk["models"].items():
        for key in MAIN_COLUMNS:
            value = m["metrics"].get(key)
            if value is not None:  # report.md's places: ×100 scores (BLEU, ROUGE) to 2, the rest to 4
                places = 2 if key.startswith(("bleu", "rouge")) else 4
                whole = str(value) if isinstance(value, int) else f"{value:.{places}f}"
                assert whole in cells, (name, key, whole)


def test_examples_are_shown_detokenised(report):
    out, result = report
    md = (out / "report.md").read_text()
    example = result["examples"][0]
    from feedbackgen.data.text import detokenize

    assert f"- *reference*: {detokenize(example['reference'])}" in md
    assert example["outputs"]["copy"] == example["reference"]


def test_the_feature_set_is_every_split_s_aspects_lower_cased(dataset):
    # PETER's DataLoader adds every review's feature, whatever its split: a test-only aspect counts
    first_test = pl.col("split").eq("test").cum_sum().eq(1) & pl.col("split").eq("test")
    rows = dataset.interactions.with_columns(aspect=pl.when(first_test).then(pl.lit("Zither")).otherwise("aspect"))
    aspects = set(rows["aspect"].drop_nulls().str.to_lowercase())
    assert "zither" in aspects and feature_set(Dataset(rows)) == aspects


def test_importing_the_report_loads_neither_torch_nor_models():
    code = ("import sys, feedbackgen.evaluation.report, feedbackgen.evaluation.human; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
            "or m.startswith('feedbackgen.models')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
