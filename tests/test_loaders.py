import gzip
import json
import math
import os
import pickle

import polars as pl
import pytest

from feedbackgen.data.loaders import FORMATS, load_source, load_tables
from feedbackgen.data.peter_format import load_plain_pickle, read_peter
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError
from feedbackgen.io import sha256_file

CANONICAL = ["user_id", "item_id", "rating", "text", "summary", "timestamp"]


@pytest.fixture(scope="module")
def mi_path(data_root):
    return data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"


@pytest.fixture(scope="module")
def mi_rows(mi_path):
    """The first 30 real Musical Instruments reviews, to derive small files in other formats."""
    with gzip.open(mi_path, "rt") as f:
        return [json.loads(next(f)) for _ in range(30)]


def write_jsonl(path, rows, compress=None):
    compress = path.suffix == ".gz" if compress is None else compress
    data = "".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def load(paths, fmt, **kw):
    problems = kw.pop("problems", Problems())
    df, items, info = load_source(paths if isinstance(paths, list) else [paths], fmt, problems=problems, **kw)
    return df, items, info, problems


# -- real data -------------------------------------------------------------------------------------

def test_amazon2014_musical_instruments(mi_path):
    df, items, info, problems = load(mi_path, "amazon2014")
    assert df.columns[:6] == CANONICAL
    assert (df.height, df["user_id"].n_unique(), df["item_id"].n_unique()) == (10_261, 1_429, 900)
    assert df.schema["rating"] == pl.Float64 and df.schema["timestamp"] == pl.Int64
    assert df["rating"].min() == 1.0 and df["rating"].max() == 5.0
    assert df["timestamp"].null_count() == 0
    assert df["source_row"].to_list() == list(range(10_261))
    assert (df["text"] == "").sum() == 7
    assert {"helpful_votes", "total_votes"} <= set(df.columns)
    assert items is None and problems.count == 0
    (file,) = info["files"]
    assert file["name"] == mi_path.name and file["bytes"] == mi_path.stat().st_size
    assert file["sha256"] == sha256_file(mi_path) and file["records"] == file["rows"] == 10_261
    assert info["format"] == "amazon2014" and info["rows"] == 10_261


def test_amazon2018_gift_cards_with_metadata(data_root):
    folder = data_root / "amazon_gift_cards_5core_2018"
    df, items, info, problems = load(folder / "Gift_Cards_5.json.gz", "amazon2018",
                                     meta=folder / "meta_Gift_Cards.json.gz")
    assert problems.count == 0
    assert (df.height, df["user_id"].n_unique(), df["item_id"].n_unique()) == (2_972, 458, 148)
    pairs = df.group_by("user_id", "item_id").len()
    assert df.height - pairs.height == 7  # SOURCE.md's "7 duplicate pairs": 7 repeated rows, in 6 pairs
    assert pairs.filter(pl.col("len") > 1).height == 6
    assert df["rating"].value_counts().sort("rating")["count"].to_list() == [22, 11, 33, 154, 2_752]
    assert df.schema["verified"] == pl.Boolean
    # the metadata is a superset; only reviewed items are kept, all with titles
    assert items.height == 148 and set(items["item_id"]) == set(df["item_id"])
    assert info["items_without_reviews"] == 1_547 - 148
    assert items["title"].null_count() == 0
    assert items.schema["categories"] == pl.List(pl.Utf8) and items.schema["price"] == pl.Float64
    assert items["price"].drop_nulls().min() > 0
    roles = {f["role"]: f for f in info["files"]}
    assert roles["items"]["records"] == 1_547


def test_amazon2018_meta_meta_prefixed_path_is_items(data_root):
    folder = data_root / "amazon_gift_cards_5core_2018"
    df, items, _, _ = load([folder / "Gift_Cards_5.json.gz", folder / "meta_Gift_Cards.json.gz"], "amazon2018")
    assert df.height == 2_972 and items.height == 148


def test_peter_format(data_root):
    df, items, info, problems = load(data_root / "peter_format_musical_instruments", "peter")
    assert df.height == 9_846 and problems.count == 0 and items is None
    assert df["split"].value_counts().sort("split").rows() == [("test", 986), ("train", 7_876), ("valid", 984)]
    assert (df["text"] == df["explanation"]).all()
    assert df["aspect"].null_count() == 0
    assert set(df["sentiment"].unique()) == {-1, 0, 1}
    assert {f["name"] for f in info["files"]} == {"reviews.pickle", "train.index", "validation.index", "test.index"}


def test_csv_zip_with_mapping_matches_json(data_root, mi_path):
    mapping = {"user_id": "reviewerID", "item_id": "asin", "rating": "overall", "text": "reviewText",
               "timestamp": "unixReviewTime", "reviewer_name": "reviewerName"}
    zipped = data_root / "amazon_musical_instruments_5core" / "Musical_instruments_reviews.csv.zip"
    csv_df, _, _, problems = load(zipped, "csv", mapping=mapping)
    json_df, _, _, _ = load(mi_path, "amazon2014")
    assert problems.count == 0
    cols = ["user_id", "item_id", "rating", "summary", "timestamp"]
    assert csv_df.select(cols).equals(json_df.select(cols))
    assert "reviewer_name" in csv_df.columns


# -- small files in other formats, derived from real rows ------------------------------------------

def test_amazon2023(tmp_path, mi_rows):
    reviews = [{"rating": r["overall"], "title": r["summary"], "text": r["reviewText"], "images": [],
                "asin": r["asin"] + "-v", "parent_asin": r["asin"], "user_id": r["reviewerID"],
                "timestamp": r["unixReviewTime"] * 1000 + 123, "helpful_vote": 2, "verified_purchase": True}
               for r in mi_rows]
    meta = [{"main_category": "Musical Instruments", "title": "Pop filter", "average_rating": 4.5,
             "rating_number": 10, "features": [], "description": ["Double screen.", "Gooseneck."],
             "price": 9.99, "images": [], "store": "Dragonpad", "categories": ["Musical Instruments", "Pop Filters"],
             "details": {}, "parent_asin": mi_rows[0]["asin"]}]
    df, items, _, problems = load(write_jsonl(tmp_path / "Musical_Instruments.jsonl", reviews), "amazon2023",
                                  meta=write_jsonl(tmp_path / "meta_Musical_Instruments.jsonl.gz", meta))
    assert problems.count == 0 and df.height == 30
    assert df["timestamp"].to_list() == [r["unixReviewTime"] for r in mi_rows]  # ms -> s
    assert df["summary"][0] == mi_rows[0]["summary"] and df["item_id"][0] == mi_rows[0]["asin"]
    assert df["variant_asin"][0] == mi_rows[0]["asin"] + "-v" and df["helpful_votes"][0] == 2
    row = items.row(0, named=True)
    assert row["brand"] == "Dragonpad" and row["price"] == 9.99
    assert row["categories"] == ["Musical Instruments", "Pop Filters"]
    assert row["description"] == "Double screen.\nGooseneck."


def test_yelp_academic_json(tmp_path, mi_rows):
    reviews = [{"review_id": f"r{i}", "user_id": r["reviewerID"], "business_id": r["asin"],
                "stars": r["overall"], "useful": 1, "funny": 0, "cool": 0, "text": r["reviewText"],
                "date": "2016-03-09 00:00:00" if i % 2 else "2011-01-26"} for i, r in enumerate(mi_rows)]
    businesses = [{"business_id": mi_rows[0]["asin"], "name": "Garcia's Guitars", "city": "Tempe",
                   "state": "AZ", "stars": 4.5, "categories": "Music & Video, Musical Instruments & Teachers"},
                  {"business_id": "no-reviews", "name": "Elsewhere", "categories": None}]
    df, items, _, problems = load([write_jsonl(tmp_path / "yelp_academic_dataset_review.json", reviews)], "yelp",
                                  meta=write_jsonl(tmp_path / "yelp_academic_dataset_business.json", businesses))
    assert problems.count == 0 and df.height == 30
    assert df["timestamp"][0] == 1296000000 and df["timestamp"][1] == 1457481600
    assert df["review_id"][0] == "r0" and df["useful"][0] == 1 and df["summary"].null_count() == 30
    assert items.height == 1
    assert items.row(0, named=True)["categories"] == ["Music & Video", "Musical Instruments & Teachers"]
    assert items["title"][0] == "Garcia's Guitars" and items["city"][0] == "Tempe"


def test_yelp_flat_csv(tmp_path, mi_rows):
    import csv

    path = tmp_path / "yelp.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["business_id", "date", "review_id", "stars", "text", "type", "user_id", "cool", "useful", "funny"])
        for i, r in enumerate(mi_rows):
            w.writerow([r["asin"], "2011-01-26", f"r{i}", int(r["overall"]), r["reviewText"], "review",
                        r["reviewerID"], 2, 5, 0])
    df, items, _, problems = load(path, "yelp")
    assert problems.count == 0 and df.height == 30 and items is None
    assert df["rating"].to_list() == [float(int(r["overall"])) for r in mi_rows]
    assert df["text"].to_list() == [r["reviewText"] for r in mi_rows]
    assert df["cool"][0] == 2 and df["timestamp"][0] == 1296000000


def test_recbole_atomic_files(tmp_path, mi_rows):
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n"
    lines = [f"{r['reviewerID']}\t{r['asin']}\t{r['overall']}\t{float(r['unixReviewTime'])}\t"
             f"{r['reviewText'].replace(chr(9), ' ')}\n" for r in mi_rows]
    (tmp_path / "mi.inter").write_text(header + "".join(lines))
    (tmp_path / "mi.item").write_text("item_id:token\ttitle:token_seq\tcategories:token_seq\tprice:float\n"
                                      f"{mi_rows[0]['asin']}\tPop filter\tMusical Instruments, Accessories\t9.5\n")
    (tmp_path / "mi.user").write_text("user_id:token\tage:float\n" f"{mi_rows[0]['reviewerID']}\t33\n")
    loaded = load_tables([tmp_path / "mi.inter"], "recbole", problems=Problems())
    df = loaded.interactions
    assert df.height == 30 and df["text"][0] == mi_rows[0]["reviewText"]
    assert df["timestamp"][0] == mi_rows[0]["unixReviewTime"] and df.schema["rating"] == pl.Float64
    assert loaded.items.row(0, named=True)["categories"] == ["Musical Instruments", "Accessories"]
    assert loaded.items["price"][0] == 9.5
    assert loaded.users["age"][0] == 33.0
    # a folder works too
    assert load_tables([tmp_path], "recbole", problems=Problems()).interactions.equals(df)


def test_jsonl_and_parquet_with_mapping(tmp_path, mi_rows):
    rows = [{"who": r["reviewerID"], "what": r["asin"], "stars": r["overall"], "body": r["reviewText"],
             "when": f"2014-02-{(i % 28) + 1:02d}T10:00:00Z", "votes": r["helpful"][0]} for i, r in enumerate(mi_rows)]
    mapping = {"user_id": "who", "item_id": "what", "rating": "stars", "text": "body", "timestamp": "when",
               "votes": "votes"}
    jdf, _, _, problems = load(write_jsonl(tmp_path / "r.jsonl.gz", rows), "jsonl", mapping=mapping)
    assert problems.count == 0 and jdf.height == 30
    assert jdf["timestamp"][0] == 1391248800 and jdf["votes"].to_list() == [r["helpful"][0] for r in mi_rows]
    pl.DataFrame(rows).write_parquet(tmp_path / "r.parquet")
    pdf, _, _, problems = load(tmp_path / "r.parquet", "parquet", mapping=mapping)
    assert problems.count == 0 and pdf.equals(jdf)


def test_timestamps_in_milliseconds_are_detected(tmp_path):
    rows = [{"user_id": "u", "item_id": "i", "rating": 4, "timestamp": 1_393_545_600_000}]
    df, *_ = load(write_jsonl(tmp_path / "r.jsonl", rows), "jsonl")
    assert df["timestamp"][0] == 1_393_545_600


# -- bad input -------------------------------------------------------------------------------------

def mi_json_lines(mi_rows, n=5):
    return [json.dumps(r) + "\n" for r in mi_rows[:n]]


@pytest.mark.parametrize("bad_line, field, reason", [
    ('{"reviewerID": "A1", "asin": "B1", "overall": 5.0, \n', None, "not valid JSON"),
    ('["a", "list"]\n', None, "expected a JSON object"),
    ('{"asin": "B1", "overall": 5.0, "reviewText": "x"}\n', "reviewerID", "missing"),
    ('{"reviewerID": "A1", "asin": "B1", "overall": NaN, "reviewText": "x"}\n', "overall", "not a finite number"),
    ('{"reviewerID": "A1", "asin": "B1", "overall": "five", "reviewText": "x"}\n', "overall", "expected a number"),
    ('{"reviewerID": "A1", "asin": "B1", "overall": "5.0", "reviewText": "x"}\n', "overall", "expected a number"),
    ('{"reviewerID": "A1", "asin": "B1", "overall": true, "reviewText": "x"}\n', "overall", "expected a number"),
    ('{"reviewerID": "A1", "asin": "B1", "overall": 4, "reviewText": ["x"]}\n', "reviewText", "expected a string"),
    ('{"reviewerID": ["A1"], "asin": "B1", "overall": 4}\n', "reviewerID", "expected a string id"),
    ('{"reviewerID": "A1", "asin": "B1", "overall": 4, "unixReviewTime": "soon"}\n', "unixReviewTime",
     "expected a number"),
])
def test_bad_records_are_reported_with_file_line_field(tmp_path, mi_rows, bad_line, field, reason):
    lines = mi_json_lines(mi_rows)
    lines.insert(2, bad_line)
    path = write_jsonl(tmp_path / "reviews.json.gz", lines)
    df, _, _, problems = load(path, "amazon2014")
    assert df.height == 5 and problems.count == 1
    (example,) = problems.to_manifest()["examples"]
    assert example["source"] == str(path) and example["line"] == 3 and example["field"] == field
    assert reason in example["reason"]
    assert sum(problems.to_manifest()["by_reason"].values()) == 1
    with pytest.raises(DataError) as err:
        load(path, "amazon2014", problems=Problems(strict=True))
    assert err.value.source == str(path) and err.value.line == 3 and err.value.field == field
    assert "reviews.json.gz, line 3" in str(err.value)


def test_truncated_gzip_names_file_and_line(tmp_path, mi_rows):
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in mi_rows).encode())
    path = tmp_path / "reviews_cut.json.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    df, _, info, problems = load(path, "amazon2014")
    assert 0 < df.height < 30
    assert problems.count >= 1
    last = problems.to_manifest()["examples"][-1]
    assert last["source"] == str(path) and "truncated" in last["reason"]
    assert last["line"] > df.height
    with pytest.raises(DataError, match=r"reviews_cut\.json\.gz, line \d+: .*truncated"):
        load(path, "amazon2014", problems=Problems(strict=True))


def test_bad_csv_rating_is_reported(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,score\nu1,i1,4.5\nu2,i2,great\nu3,i3,nan\nu4,,3\n")
    df, _, _, problems = load(path, "csv", mapping={"user_id": "user", "item_id": "item", "rating": "score"})
    assert df["user_id"].to_list() == ["u1"]
    assert [(e["line"], e["field"]) for e in problems.examples] == [(3, "score"), (4, "score"), (5, "item")]


def test_unknown_format_lists_the_formats(tmp_path):
    with pytest.raises(DataError) as err:
        load(tmp_path, "amazon2099")
    for fmt in FORMATS:
        assert fmt in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope.json.gz", "amazon2014")


def test_python_literal_meta_is_parsed_without_eval(tmp_path, mi_rows):
    marker = tmp_path / "executed"
    a, b, c = list(dict.fromkeys(r["asin"] for r in mi_rows))[:3]
    meta = [
        "{'asin': '%s', 'title': 'Pop filter', 'categories': [['Musical Instruments', 'Pop Filters']], "
        "'price': 12.5}\n" % a,  # 2014 style: a Python dict literal
        json.dumps({"asin": b, "category": "['Musical Instruments', 'Stands']", "price": "$1,250.00",
                    "description": "['Sturdy.', 'Black.']", "title": "Stand"}) + "\n",
        json.dumps({"asin": c, "category": f"__import__('os').system('touch {marker}')",
                    "price": "$5.00 - $9.00", "title": ""}) + "\n",
        f"__import__('os').system('touch {marker}')\n",
    ]
    df, items, _, problems = load(write_jsonl(tmp_path / "reviews.json", mi_json_lines(mi_rows, 30)), "amazon2018",
                                  meta=write_jsonl(tmp_path / "meta.json", meta))
    assert not marker.exists()
    assert problems.count == 1  # the last line is neither JSON nor a dict literal
    by_id = {r["item_id"]: r for r in items.iter_rows(named=True)}
    assert by_id[a]["categories"] == ["Musical Instruments", "Pop Filters"] and by_id[a]["price"] == 12.5
    assert by_id[b]["categories"] == ["Musical Instruments", "Stands"] and by_id[b]["price"] == 1250.0
    assert by_id[b]["description"] == "Sturdy.\nBlack."
    assert by_id[c]["price"] is None and by_id[c]["title"] is None
    assert by_id[c]["categories"] == [f"__import__('os').system('touch {marker}')"]  # kept as plain text


# -- the PETER pickle ------------------------------------------------------------------------------

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "peter"
    folder.mkdir()
    rows = [{"user": "u", "item": "i", "rating": 5.0, "template": ("amp", "", "great amp", 1)}, _Exploit(marker)]
    (folder / "reviews.pickle").write_bytes(pickle.dumps(rows, protocol=4))
    with pytest.raises(DataError, match="refusing to load"):
        read_peter(folder)
    with pytest.raises(DataError):
        load_source([folder], "peter", problems=Problems())
    assert not marker.exists()


def test_plain_pickle_loads_and_bad_records_are_reported(tmp_path):
    folder = tmp_path / "peter"
    folder.mkdir()
    rows = [{"user": "u1", "item": "i1", "rating": 5.0, "template": ("amp", "", "great amp .", 1)},
            {"user": "u2", "item": "i2", "rating": math.nan, "template": ("amp", "", "x", 1)},
            {"user": "u3", "item": "i3", "rating": 2, "template": ("tone", "", "bad tone", -1)},
            {"user": "u4", "rating": 2, "template": ("tone", "", "bad tone", -1)}]
    (folder / "reviews.pickle").write_bytes(pickle.dumps(rows, protocol=4))
    assert load_plain_pickle(folder / "reviews.pickle")[0]["user"] == "u1"
    problems = Problems()
    df, split = read_peter(folder, problems=problems)
    assert split is None
    assert df["user_id"].to_list() == ["u1", "u3"] and df["source_row"].to_list() == [0, 2]
    assert [(e["line"], e["field"]) for e in problems.examples] == [(1, "rating"), (3, "item")]
    with pytest.raises(DataError, match="record 1"):
        read_peter(folder)  # strict by default


def test_bad_index_files(tmp_path):
    folder = tmp_path / "peter"
    (folder / "1").mkdir(parents=True)
    rows = [{"user": f"u{i}", "item": "i", "rating": 4.0, "template": ("amp", "", "amp", 1)} for i in range(4)]
    (folder / "reviews.pickle").write_bytes(pickle.dumps(rows, protocol=4))
    (folder / "1" / "train.index").write_text("0 1")
    (folder / "1" / "validation.index").write_text("2")
    (folder / "1" / "test.index").write_text("7")
    with pytest.raises(DataError, match="out of range"):
        read_peter(folder)
    (folder / "1" / "test.index").write_text("1")
    with pytest.raises(DataError, match="row 1 is in both"):
        read_peter(folder)
    (folder / "1" / "test.index").write_text("3")
    _, split = read_peter(folder)
    assert split.to_list() == ["train", "train", "valid", "test"]


# -- download ----------------------------------------------------------------------------------------

def test_ensure_musical_instruments_uses_the_local_copy(data_root, mi_path, monkeypatch):
    from feedbackgen.data import download

    def no_network(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    assert download.ensure_musical_instruments(data_root) == mi_path


def test_ensure_musical_instruments_uses_the_cache(tmp_path, monkeypatch):
    from feedbackgen.data import download

    cached = tmp_path / "cache" / "data" / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.setenv("FEEDBACKGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(download.urllib.request, "urlopen", None)  # any network use would fail
    assert download.ensure_musical_instruments(tmp_path / "no-data-here") == cached


def test_verify_reviews_file_on_the_real_file(mi_path, tmp_path, mi_rows):
    from feedbackgen.data.download import verify_reviews_file

    result = verify_reviews_file(mi_path)
    assert result == {"records": 10_261, "sha256": sha256_file(mi_path)}
    with pytest.raises(DataError, match="expected 10,261 records, found 30"):
        verify_reviews_file(write_jsonl(tmp_path / "short.json.gz", mi_rows))
    with pytest.raises(DataError, match="line 2.*missing field"):
        verify_reviews_file(write_jsonl(tmp_path / "bad.json.gz", [mi_rows[0], {"asin": "x"}]))
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in mi_rows).encode())
    (tmp_path / "cut.json.gz").write_bytes(data[:-40])
    with pytest.raises(DataError, match="truncated"):
        verify_reviews_file(tmp_path / "cut.json.gz")


def test_yelp_side_files_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "yelp_academic_dataset_tip.json", [{"user_id": "u", "business_id": "b"}])
    with pytest.raises(DataError, match="not a Yelp review or business file"):
        load(path, "yelp")


# -- a wrong --map fails before the records are read, naming the mapping and the file's columns ------

MAP_COLUMNS = ["reviewer", "product", "stars", "body", "when"]
GOOD_MAP = {"user_id": "reviewer", "item_id": "product", "rating": "stars", "text": "body", "timestamp": "when"}


@pytest.fixture(scope="module")
def mi_renamed(mi_path):
    """The first 120 real Musical Instruments reviews under other column names (more than the 100
    records a JSON-lines file's keys are judged on)."""
    with gzip.open(mi_path, "rt") as f:
        rows = [json.loads(next(f)) for _ in range(120)]
    return [dict(zip(MAP_COLUMNS, (r["reviewerID"], r["asin"], r["overall"], r["reviewText"], r["unixReviewTime"])))
            for r in rows]


def write_renamed(tmp_path, fmt, rows):
    if fmt == "csv":
        path = tmp_path / "reviews.csv"
        pl.DataFrame(rows).write_csv(path)
    elif fmt == "parquet":
        path = tmp_path / "reviews.parquet"
        pl.DataFrame(rows).write_parquet(path)
    elif fmt == "recbole":
        path = tmp_path / "reviews.inter"
        header = "\t".join(f"{c}:{'float' if c in ('stars', 'when') else 'token'}" for c in MAP_COLUMNS)
        path.write_text(header + "\n" + "".join(
            "\t".join(str(r[c]).replace("\t", " ").replace("\n", " ") for c in MAP_COLUMNS) + "\n" for r in rows))
    else:
        path = write_jsonl(tmp_path / "reviews.jsonl", rows)
    return path


WHERE = {"csv": "column {!r} is not in the header of {}", "parquet": "column {!r} is not in the schema of {}",
         "recbole": "column {!r} is not in the header of {}",
         "jsonl": "key {!r} is not in any of the first 100 records of {}"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "recbole"])
def test_map_to_a_column_the_file_lacks_names_the_columns(tmp_path, mi_renamed, fmt):
    path = write_renamed(tmp_path, fmt, mi_renamed)
    assert load(path, fmt, mapping=GOOD_MAP)[0].height == 120  # the file is fine with the right map
    problems = Problems()
    with pytest.raises(DataError) as err:
        load(path, fmt, mapping={**GOOD_MAP, "user_id": "reviewr"}, problems=problems)
    what = "keys" if fmt == "jsonl" else "columns"
    assert str(err.value) == (f"--map user_id=reviewr: {WHERE[fmt].format('reviewr', path)} "
                              f"({what}: {', '.join(MAP_COLUMNS)}); did you mean 'reviewer'?")
    assert problems.count == 0  # refused up front, not as every record skipped


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "recbole"])
def test_map_with_a_field_name_not_ours_is_refused_with_a_suggestion(tmp_path, mi_renamed, fmt):
    path = write_renamed(tmp_path, fmt, mi_renamed)
    mapping = {"user": "reviewer", **{k: v for k, v in GOOD_MAP.items() if k != "user_id"}}
    with pytest.raises(DataError) as err:
        load(path, fmt, mapping=mapping)
    assert str(err.value).startswith("--map user=reviewer: unknown field 'user'; known: user_id, item_id, rating, "
                                     "text, summary, timestamp")
    assert str(err.value).endswith("did you mean 'user_id'?")
    # a name of no field of ours, close to none, is an extra column, as before
    df = load(path, fmt, mapping={**GOOD_MAP, "reviewer_copy": "reviewer"})[0]
    assert df["reviewer_copy"].to_list() == df["user_id"].to_list()


def test_map_that_leaves_a_required_field_unfound_says_which(tmp_path, mi_renamed):
    path = write_renamed(tmp_path, "csv", mi_renamed)
    with pytest.raises(DataError, match=r"^no rating column in the header of .*reviews\.csv \(columns: reviewer, "
                                        r"product, stars, body, when\); name the column holding it with "
                                        r"--map rating=COLUMN$"):
        load(path, "csv", mapping={k: v for k, v in GOOD_MAP.items() if k != "rating"})


def test_prepare_reports_a_wrong_map_not_every_record_skipped(tmp_path, mi_renamed):
    from feedbackgen.data.prepare import prepare

    path = write_renamed(tmp_path, "jsonl", mi_renamed)
    with pytest.raises(DataError, match=r"^--map user_id=reviewr: key 'reviewr' is not in any of the first 100"):
        prepare([path], "jsonl", mapping={**GOOD_MAP, "user_id": "reviewr"}, progress=False)
