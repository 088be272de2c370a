"""The field cases (`$FEEDBACKGEN_FIELD_CASES`, ../shared/field-cases): each input gives the outcome
its README says a user expects, through the command line. The inputs are read where they lie;
only inputs built for a test (a variant of a case) are written, to tmp_path."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict, deque
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from feedbackgen.cli import app
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.duplicates import normalised_text


@pytest.fixture(scope="module")
def cases(field_cases_root) -> Path:
    return field_cases_root


def cli(*args) -> tuple[int, str]:
    """Exit code and everything the command said (its error included)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    said = res.output + (str(res.exception) if res.exception and not isinstance(res.exception, SystemExit) else "")
    return res.exit_code, " ".join(said.split())  # rich wraps long lines


def prepared(tmp_path: Path, *args, name: str = "ds") -> tuple[Dataset, str]:
    code, said = cli("prepare", *args, "--out", tmp_path / name)
    assert code == 0, said
    return Dataset.load(tmp_path / name), said


def steps(ds: Dataset) -> dict:
    return {s["step"]: s for s in ds.manifest["steps"]}


def pairs_on_both_sides(ds: Dataset) -> int:
    """(user, normalised text) pairs with rows in train and in valid/test."""
    df = ds.interactions.select("user_id", "split", normalised_text().alias("norm")).filter(pl.col("norm") != "")
    train = df.filter(pl.col("split") == "train").select("user_id", "norm").unique()
    held = df.filter(pl.col("split") != "train").select("user_id", "norm").unique()
    return train.join(held, on=["user_id", "norm"]).height


# -- 01: a rating outside the source's known scale ---------------------------------------------------

def test_01_rating_outside_the_known_scale_is_a_bad_record_and_nothing_is_stretched(cases, tmp_path):
    source = cases / "01-rating-scale" / "reviews.jsonl"
    ds, said = prepared(tmp_path, source, "--format", "amazon2023")
    problems = ds.manifest["problems"]
    assert problems["skipped"] == 1 and list(problems["by_reason"]) == ["rating: outside the known scale of amazon2023 [1, 5]"]
    assert steps(ds)["drop_duplicates"]["dropped_duplicates"] == 1
    assert steps(ds)["normalize_ratings"]["touched"] == 0 and "skipped 1 bad record" in said
    given = {(r["user_id"], r["parent_asin"]): r["rating"] for r in map(json.loads, source.read_text().splitlines())}
    assert all(given[(u, i)] == r for u, i, r in ds.interactions.select("user_id", "item_id", "rating").iter_rows())
    assert ds.interactions.height == 11


def test_01_auto_scale_of_an_unknown_source_says_what_it_inferred(cases, tmp_path):
    source = cases / "01-rating-scale" / "reviews.jsonl"
    ds, said = prepared(tmp_path, source, "--format", "jsonl", "--map", "item_id=parent_asin")
    record = steps(ds)["normalize_ratings"]
    assert record["scale_from"] == "inferred from the observed ratings" and record["source_range"] == [0.0, 5.0]
    assert f"rating scale inferred from the data as [0, 5] and mapped onto 1-5: {record['touched']} rating(s)" in said
    assert record["touched"] > 0


# -- 04 and the Gift Cards: copies across variants ---------------------------------------------------

def test_04_variant_copies_are_kept_once_and_never_on_both_sides(cases, tmp_path):
    source = cases / "04-variant-copies" / "variants_5.json.gz"
    ds, _ = prepared(tmp_path, source, "--format", "amazon2018")
    copies = steps(ds)["copies"]
    assert (copies["same_user_groups"], copies["same_user_rows"], copies["dropped_copies"]) == (6, 24, 18)
    assert ds.interactions.height == 12 and pairs_on_both_sides(ds) == 0
    # the copy kept is the one on the most-reviewed variant: here all tie (3 reviews, one time), so
    # the first in source order
    kept = ds.interactions.filter(pl.col("item_id").str.starts_with("B00VAR")).sort("user_id")
    assert kept["item_id"].to_list() == ["B00VAR00", "B00VAR10"] * 3 and kept["user_id"].n_unique() == 6

    keep_all, _ = prepared(tmp_path, source, "--format", "amazon2018", "--set", "copies=keep_all", name="all")
    assert keep_all.interactions.height == 30 and pairs_on_both_sides(keep_all) == 0

    # counted only: the split as the method gives it, and evaluate says how much of test is in train
    counted, _ = prepared(tmp_path, source, "--format", "amazon2018", "--set", "copies=report", name="counted")
    leaks = steps(counted)["split"]["leaks"]
    held = counted.interactions.filter(pl.col("split") != "train")
    in_train = set(zip(counted.split("train")["user_id"], counted.split("train").select(normalised_text())["text"]))
    same_rows = sum(p in in_train for p in zip(held["user_id"], held.select(normalised_text())["text"]))
    assert leaks["text_in_train_same_user"] == same_rows > 0 and pairs_on_both_sides(counted) > 0
    test = counted.split("test")
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"user_id": u, "item_id": i, "rating": 5.0, "text": t, "model": "copy"}) + "\n"
                            for u, i, t in test.select("user_id", "item_id", "text").iter_rows()))
    code, said = cli("evaluate", pred, "--dataset", tmp_path / "counted", "--out", tmp_path / "report",
                     "--no-embeddings", "--no-naturalness")
    assert code == 0, said
    check = json.loads((tmp_path / "report" / "report.json").read_text())["leak_check"]["review"]
    norm = test.select(normalised_text().alias("n"))["n"]
    train = counted.split("train")
    same = sum((u, n) in set(zip(train["user_id"], train.select(normalised_text())["text"]))
               for u, n in zip(test["user_id"], norm))
    assert check["references"] == test.height and check["in_train_same_user"] == same > 0
    assert check["share_same_user"] == pytest.approx(same / test.height)
    assert "## Leak check" in (tmp_path / "report" / "report.md").read_text()


def test_gift_cards_copies_are_reported_and_none_straddles_the_split(data_root, tmp_path):
    source = data_root / "amazon_gift_cards_5core_2018" / "Gift_Cards_5.json.gz"
    ds, _ = prepared(tmp_path, source, "--format", "amazon2018")
    copies = steps(ds)["copies"]
    assert (copies["same_user_groups"], copies["same_user_rows"], copies["dropped_copies"]) == (339, 1_273, 934)
    assert copies["cross_user_groups"] > 0 and copies["cross_user_rows"] > copies["cross_user_groups"]
    assert pairs_on_both_sides(ds) == 0 and steps(ds)["split"]["leaks"]["text_in_train_same_user"] == 0


# -- 05: a delimited file with another separator ------------------------------------------------------

def test_05_a_space_separated_recbole_file_is_named_as_such(cases):
    code, said = cli("prepare", cases / "05-delimiter" / "shop.inter", "--format", "recbole", "--out", "/nonexistent")
    assert code == 1
    assert "line 1" in said and "the header is one column" in said and "separated by tab" in said
    assert "space-separated" in said and "missing" not in said


def test_05_a_semicolon_csv_is_read_with_its_separator_and_says_so(tmp_path):
    source = tmp_path / "shop.csv"
    source.write_text("user_id;item_id;rating;text\n" + "".join(f"u{i % 3};i{i};{i % 5 + 1};nice, works {i}\n"
                                                               for i in range(12)))
    ds, said = prepared(tmp_path, source, "--format", "csv")
    assert ds.interactions.height == 12 and ds.interactions["text"][0] == "nice, works 0"
    assert ds.manifest["source"]["files"][0]["delimiter"] == ";" and "read as ';'-separated" in said


# -- 08: the Sentires layout; reasons grouped --------------------------------------------------------

def test_08_sentires_output_loads_as_peter(cases, tmp_path):
    ds, _ = prepared(tmp_path, cases / "08-sentires" / "sentires_out", "--format", "peter")
    assert ds.interactions.height == 30 and ds.manifest["problems"]["skipped"] == 0
    assert ds.manifest["source"]["files"][0]["without_explanation"] == 7
    expl = steps(ds)["explanations"]
    assert (expl["with_explanation"], expl["without_explanation"]) == (23, 7)
    first = ds.interactions.row(0, named=True)
    assert (first["explanation"], first["aspect"]) == ("the sound is clear", "sound")
    assert first["text"].startswith("bought this last month")


def test_08_identical_reasons_are_grouped_and_their_records_listed_apart(tmp_path):
    import pickle

    folder = tmp_path / "peter"
    folder.mkdir()
    (folder / "reviews.pickle").write_bytes(pickle.dumps([{"user": f"u{i}", "item": "i", "rating": 4}
                                                          for i in range(30)]))
    code, said = cli("prepare", folder, "--format", "peter", "--out", tmp_path / "out")
    assert code == 1 and "30× template: missing (line 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 20 more)" in said


# -- 09: metric files split on \n only ---------------------------------------------------------------

def test_09_metric_files_split_on_newline_only(cases, tmp_path):
    from feedbackgen.evaluation.metrics import peter_metrics

    folder = cases / "09-line-endings"
    code, said = cli("metrics", "--generated", folder / "generated.txt", "--references", folder / "references.txt",
                     "--json")
    assert code == 0, said  # 4 lines each, as wc -l counts them
    code, said = cli("metrics", "--generated", folder / "gen_cr.txt", "--references", folder / "ref_cr.txt", "--json")
    assert code == 0, said

    def samples(name):  # lines end at "\n" only; inside one, "\r" separates tokens as a space does
        return [line.split(" ") for line in (folder / name).read_bytes().decode().split("\n")[:-1]]

    expected = peter_metrics(samples("gen_cr_as_space.txt"), samples("ref_cr_as_space.txt"))
    got = json.loads(said[said.index("{"):])
    assert got["bleu4"] == pytest.approx(expected["bleu4"]) and got["bleu1"] == pytest.approx(expected["bleu1"])
    assert got["bleu1"] == pytest.approx(100) == got["rouge1_f_official"]  # BLEU and the official ROUGE agree
    short = tmp_path / "short.txt"
    short.write_bytes(b"one line\nand one without a newline")
    code, said = cli("metrics", "--generated", folder / "generated.txt", "--references", short)
    assert code == 1 and "has 2 lines (wc -l: 1, the last line has no newline)" in said and "has 4 lines" in said


# -- 11: encodings ------------------------------------------------------------------------------------

def test_11_cp1252_csv_loses_nothing(cases, tmp_path):
    source = cases / "11-encodings-ratings-only" / "reviews_cp1252.csv"
    ds, said = prepared(tmp_path, source, "--format", "csv")
    assert ds.interactions.height == 2_000 and ds.manifest["problems"]["skipped"] == 0
    assert ds.interactions.filter(pl.col("text").str.contains("café")).height == 1
    assert "decoded as windows-1252" in said and ds.manifest["source"]["files"][0]["encoding"] == "windows-1252"

    ds, said = prepared(tmp_path, source, "--format", "csv", "--encoding", "cp1252", name="declared")
    assert ds.interactions.height == 2_000 and ds.manifest["source"]["files"][0]["encoding_from"] == "declared"

    # declared wrongly: the one line that is not UTF-8 costs its own record, at its line
    ds, _ = prepared(tmp_path, source, "--format", "csv", "--encoding", "utf-8", name="utf8")
    problems = ds.manifest["problems"]
    assert ds.interactions.height == 1_999 and problems["skipped"] == 1
    assert problems["examples"][0]["line"] == 1_502 and "not valid utf-8 text: byte 0xe9" in \
        problems["examples"][0]["reason"]


def test_11_latin1_titles_read_as_the_utf8_ones(cases):
    from feedbackgen.data.loaders import load_tables
    from feedbackgen.data.problems import Problems

    folder = cases / "11-encodings-ratings-only"
    # every movie is referenced, so every item row is kept
    ratings = "user_id,item_id,rating\n" + "".join(
        f"1,{line.split(',')[0]},4\n" for line in (folder / "movies_utf8.csv").read_text().splitlines()[1:])
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ratings.csv"
        path.write_text(ratings)
        items = {name: load_tables([path], "csv", meta=folder / name, problems=Problems(strict=True)).items
                 for name in ("movies_latin1.csv", "movies_utf8.csv")}
    assert items["movies_latin1.csv"].height == 3_883
    assert items["movies_latin1.csv"].equals(items["movies_utf8.csv"])
    assert items["movies_latin1.csv"].filter(pl.col("title").str.contains("é")).height > 0


def test_11_a_file_that_yields_nothing_exits_non_zero(cases, tmp_path):
    source = cases / "11-encodings-ratings-only" / "reviews_cp1252.csv"
    code, said = cli("prepare", source, "--format", "jsonl", "--out", tmp_path / "out")
    assert code == 1 and "reviews_cp1252.csv: yielded no rows" in said and "not valid JSON" in said
    meta = tmp_path / "items.csv"
    meta.write_text("item_id,title\n,a\n,b\n")
    code, said = cli("prepare", source, "--format", "csv", "--meta", meta, "--out", tmp_path / "out")
    assert code == 1 and "items.csv: yielded no rows" in said and "2× item_id: missing" in said


# -- 14: reasoning-model answers, replayed by an OpenAI-compatible server ---------------------------

class Replay:
    """Answers each chat request with the next logged answer for the user whose prompt it is."""

    def __init__(self, log: list[dict]):
        self.answers = defaultdict(deque)
        for entry in log:
            self.answers[entry["user"]].append(entry["answer"])
        self.user_of_prompt: dict[str, str] = {}
        self.calls: list[str | None] = []

    def __call__(self, body: dict) -> tuple[int, dict, str]:
        user = self.user_of_prompt.get(body["messages"][-1]["content"])
        self.calls.append(user)
        if user is None or not self.answers[user]:
            return 400, {}, ""
        return 200, {}, self.answers[user].popleft()


def test_14_reasoning_is_never_parsed_as_the_answer(cases, data_root, tmp_path, chat_server):
    from feedbackgen.models import load
    from feedbackgen.models.llm.answers import ONLY_REASONING
    from feedbackgen.types import FeedbackRequest

    folder = cases / "14-reasoning-answers"
    requests = [json.loads(line) for line in (folder / "requests.jsonl").read_text().splitlines()]
    log = [json.loads(line) for line in (folder / "server_log.jsonl").read_text().splitlines()]
    users = {r["user_id"] for r in requests}
    # the requesting users' Musical Instruments reviews, as the training data
    mi = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    with gzip.open(mi, "rt", encoding="utf-8") as f:
        rows = [line for line in f if json.loads(line)["reviewerID"] in users]
    source = tmp_path / "reviews_MI_subset.json.gz"
    source.write_bytes(gzip.compress("".join(rows).encode()))
    prepared(tmp_path, source, "--format", "amazon2014")

    server = Replay(log)
    url = chat_server(server)
    code, said = cli("train", tmp_path / "ds", "--model", "llm", "--out", tmp_path / "m",
                     "--set", "backend=openai", "--set", f"base_url={url}", "--set", "shots=1",
                     "--set", "response_cache=false", "--set", "concurrency=1")
    assert code == 0, said
    model = load(tmp_path / "m")
    for r in requests:
        request = FeedbackRequest(r["user_id"], r["item_id"])
        for retry in (False, True):
            server.user_of_prompt[model.messages(request, retry=retry)[0][-1]["content"]] = r["user_id"]
    # the case's items have no review in this training subset: the LM is asked about them anyway
    code, said = cli("generate", tmp_path / "m", "--requests", folder / "requests.jsonl",
                     "--out", tmp_path / "pred.jsonl", "--unknown-item", "generate")
    assert code == 0, said
    out = {r["user_id"]: r for r in map(json.loads, (tmp_path / "pred.jsonl").read_text().splitlines())}
    assert [out[u]["rating"] for u in ("A2EZWZ8MBEDOLN", "A1GMWTGXW682GB", "A1UPZM995ZAH90")] == [5.0, 4.0, 3.0]
    assert out["A2EZWZ8MBEDOLN"]["text"] == "Solid stand, holds my guitar securely."
    assert out["A2EZWZ8MBEDOLN"]["meta"]["answer"] == "valid"
    cut = out["A1L7M2JXN4EZCR"]["meta"]
    assert (cut["answer"], cut["attempts"], cut["problem"]) == ("fallback", 3, ONLY_REASONING)
    assert server.calls.count("A1L7M2JXN4EZCR") == 3 and None not in server.calls
    assert "reasoning: 6 repl(ies) had a reasoning block" in said and "3 held nothing else" in said
