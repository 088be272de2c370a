import json

import polars as pl
import pytest

from feedbackgen.data import preprocess, splits
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.loaders import load_source
from feedbackgen.data.peter_format import export_peter, read_peter
from feedbackgen.data.prepare import PrepareConfig, prepare
from feedbackgen.data.prepare_config import prepare_settings_help
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.io import sha256_file

STEPS = ["load", "clean_text", "drop_empty", "drop_duplicates", "copies", "scrub_pii", "normalize_ratings", "k_core",
         "split", "explanations", "keep_referenced"]


@pytest.fixture(scope="module")
def mi_path(data_root):
    return data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"


def steps_by_name(ds):
    return {s["step"]: s for s in ds.manifest["steps"]}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def synthetic_rows(n_users=12, n_items=6, rating=lambda u, i: 1 + (u + i) % 5):
    """Every user reviews every item: dense enough for any split to keep users and items warm."""
    return [{"user_id": f"u{u}", "item_id": f"i{i}", "rating": rating(u, i), "timestamp": 1_000 + 10 * i + u,
             "text": f"The strap of item {i} is great. The buckle is fine."}
            for u in range(n_users) for i in range(n_items)]


# -- Musical Instruments end to end ----------------------------------------------------------------

def test_prepare_musical_instruments(mi_dataset, mi_path):
    steps = steps_by_name(mi_dataset)
    assert [s["step"] for s in mi_dataset.manifest["steps"]] == STEPS
    for s in mi_dataset.manifest["steps"]:
        assert {"step", "params", "rows_in", "rows_out", "touched"} <= set(s)
    assert steps["load"]["rows_in"] == steps["load"]["rows_out"] == 10_261
    assert steps["drop_empty"]["dropped_empty"] == 7
    assert steps["drop_duplicates"]["dropped_duplicates"] == 0
    assert steps["clean_text"]["touched"] > 1_000  # &#34; and friends, double spaces
    assert steps["normalize_ratings"]["touched"] == 0
    # five users posted one text on two items each: one copy of each is kept
    assert (steps["copies"]["same_user_groups"], steps["copies"]["dropped_copies"]) == (5, 5)
    assert mi_dataset.interactions.height == 10_249
    sizes = steps["split"]["sizes"]
    assert sizes == splits.split_sizes(mi_dataset.interactions) and sum(sizes.values()) == 10_249
    assert abs(sizes["train"] - 0.8 * 10_249) < 10 and abs(sizes["test"] - 0.1 * 10_249) < 10
    assert steps["split"]["leaks"]["text_in_train_same_user"] == 0
    # move_to_train leaves no cold user or item in valid/test
    assert steps["split"]["cold_start"] == "move_to_train"
    assert all(v["rows_cold"] == 0 for v in splits.cold_start_counts(mi_dataset.interactions).values())
    assert steps["split"]["cold_after"]["test"]["rows_cold"] == 0
    expl = steps["explanations"]
    assert expl["with_explanation"] + expl["without_explanation"] == 10_249
    assert expl["with_explanation"] > 9_500
    assert mi_dataset.interactions["explanation"].null_count() == expl["without_explanation"]
    assert "guitar" in mi_dataset.manifest["aspects"] and len(mi_dataset.manifest["aspects"]) == 200
    # the manifest says where the data came from and how it was made
    assert mi_dataset.manifest["source"]["files"][0]["sha256"] == sha256_file(mi_path)
    assert mi_dataset.manifest["problems"]["skipped"] == 0
    assert mi_dataset.manifest["config"] == PrepareConfig().model_dump(mode="json")
    manifest = mi_dataset.manifest
    assert (manifest["seed"], manifest["split"], manifest["format"]) == (1, "random", "amazon2014")
    # rows in source order; text decoded
    assert mi_dataset.interactions["source_row"].is_sorted()
    assert not mi_dataset.interactions["text"].str.contains("&#34;").any()
    assert mi_dataset.interactions["text"].str.contains('"', literal=True).any()


def test_prepare_is_deterministic(tmp_path, mi_dataset, mi_path):
    again = prepare([mi_path], "amazon2014", progress=False)
    mi_dataset.save(tmp_path / "a")
    again.save(tmp_path / "b")
    assert sha256_file(tmp_path / "a" / "interactions.parquet") == sha256_file(tmp_path / "b" / "interactions.parquet")
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == \
        json.loads((tmp_path / "b" / "manifest.json").read_text())
    loaded = Dataset.load(tmp_path / "a")
    assert loaded.interactions.equals(mi_dataset.interactions)
    assert loaded.summary() == mi_dataset.summary()


def test_another_seed_gives_another_split(mi_dataset, mi_path):
    other = prepare([mi_path], "amazon2014", seed=2, progress=False, config={"explanations": "off"})
    assert other.manifest["seed"] == 2
    assert not other.interactions["split"].equals(mi_dataset.interactions["split"])
    assert "explanation" not in other.interactions.columns


def test_gift_cards_duplicates_and_items(data_root):
    folder = data_root / "amazon_gift_cards_5core_2018"
    raw = pl.read_ndjson(folder / "Gift_Cards_5.json.gz")
    ds = prepare([folder / "Gift_Cards_5.json.gz"], "amazon2018", meta=folder / "meta_Gift_Cards.json.gz",
                 progress=False)
    steps = steps_by_name(ds)
    assert steps["drop_duplicates"]["dropped_duplicates"] == 7
    assert steps["drop_duplicates"]["duplicate_pairs"] == 6
    df = ds.interactions
    assert df.select("user_id", "item_id").is_unique().all()
    # the kept review of each duplicated pair is the latest one
    latest = raw.group_by("reviewerID", "asin").agg(pl.col("unixReviewTime").max(), pl.len()).filter(pl.col("len") > 1)
    for user, item, ts, _ in latest.iter_rows():
        assert df.filter((pl.col("user_id") == user) & (pl.col("item_id") == item))["timestamp"].to_list() == [ts]
    assert ds.items.height == df["item_id"].n_unique()
    assert ds.items["title"].null_count() == 0
    assert not ds.items["description"].drop_nulls().str.contains("<br").any()
    assert steps["clean_text"]["items_touched"] > 0


# -- the PETER data --------------------------------------------------------------------------------

def test_peter_split_is_the_shared_one(data_root):
    folder = data_root / "peter_format_musical_instruments"
    ds = prepare([folder], "peter", split="peter", progress=False)
    assert splits.split_sizes(ds.interactions) == {"train": 7_876, "valid": 984, "test": 986}
    split_step = steps_by_name(ds)["split"]
    assert split_step["cold_start"] == "keep"  # the published split, as published
    assert split_step["cold_before"]["test"]["unseen_users"] == 1
    assert steps_by_name(ds)["explanations"]["params"]["mode"] == "source"
    assert not ds.interactions["explanation"].str.contains("& #", literal=True).any()  # entities decoded
    assert ds.interactions["text"].equals(ds.interactions["explanation"].alias("text"))
    moved = prepare([folder], "peter", split="peter", progress=False, config={"cold_start": "move_to_train"})
    # the user unseen in train also has a valid row, earlier in source order: that one moves
    assert steps_by_name(moved)["split"]["moved_to_train"] == {"valid": 1, "test": 0}
    assert splits.split_sizes(moved.interactions) == {"train": 7_877, "valid": 983, "test": 986}
    assert all(v["rows_cold"] == 0 for v in splits.cold_start_counts(moved.interactions).values())


def split_names(codes):
    return [splits.SPLIT_CODES[c] for c in codes]


def test_random_split_reproduces_the_peter_index_files(data_root):
    _, shared = read_peter(data_root / "peter_format_musical_instruments")
    assert split_names(splits.random_split_codes(len(shared), seed=1)) == shared.to_list()


def test_export_peter_round_trip(tmp_path, mi_dataset):
    out = export_peter(mi_dataset, tmp_path / "peter")
    df, split = read_peter(out)
    kept = mi_dataset.interactions.filter(pl.col("explanation").is_not_null())
    assert df.height == kept.height
    for ours, theirs in (("user_id", "user_id"), ("item_id", "item_id"), ("rating", "rating"),
                         ("explanation", "explanation"), ("aspect", "aspect"), ("sentiment", "sentiment")):
        assert df[theirs].to_list() == kept[ours].to_list(), ours
    assert split.to_list() == kept["split"].to_list()
    assert (out / "1" / "validation.index").read_text().split()[0].isdigit()
    # and it prepares again like the shared PETER data
    again = prepare([out], "peter", split="peter", progress=False)
    assert splits.split_sizes(again.interactions) == splits.split_sizes(kept)


# -- splits ----------------------------------------------------------------------------------------

def test_random_split_sizes_and_seeds():
    a = split_names(splits.random_split_codes(1_000, seed=1))
    assert [a.count(s) for s in ("train", "valid", "test")] == [800, 100, 100]
    assert a == split_names(splits.random_split_codes(1_000, seed=1))
    assert a != split_names(splits.random_split_codes(1_000, seed=2))
    b = split_names(splits.random_split_codes(1_000, seed=1, ratios=(0.7, 0.0, 0.3)))
    assert [b.count(s) for s in ("train", "valid", "test")] == [700, 0, 300]
    assert splits.random_split_codes(0, seed=1).shape == (0,)


def temporal_split(df):
    test, valid = splits.temporal_rows(df.lazy())
    return df.with_columns(split=pl.when(pl.col("source_row").is_in(test.implode())).then(pl.lit("test"))
                           .when(pl.col("source_row").is_in(valid.implode())).then(pl.lit("valid"))
                           .otherwise(pl.lit("train")))


def test_temporal_split(mi_path):
    df, _, _ = load_source([mi_path], "amazon2014", problems=Problems())
    out = temporal_split(df)
    per_user = out.group_by("user_id").agg(
        n=pl.len(), n_test=(pl.col("split") == "test").sum(), n_valid=(pl.col("split") == "valid").sum(),
        latest=pl.col("timestamp").max(), test_ts=pl.col("timestamp").filter(pl.col("split") == "test").first(),
        max_train=pl.col("timestamp").filter(pl.col("split") == "train").max(),
        valid_ts=pl.col("timestamp").filter(pl.col("split") == "valid").first())
    assert (per_user["n_test"] == 1).all() and (per_user["n_valid"] == 1).all()  # 5-core: all users have >= 3
    assert (per_user["test_ts"] == per_user["latest"]).all()
    assert (per_user["valid_ts"] <= per_user["test_ts"]).all() and (per_user["max_train"] <= per_user["valid_ts"]).all()
    few = pl.DataFrame({"user_id": ["a", "a", "b", "b", "b"], "item_id": list("xyxyz"), "timestamp": [1, 2, 3, 1, 2],
                        "source_row": range(5)})
    assert temporal_split(few)["split"].to_list() == ["train", "train", "test", "train", "valid"]
    with pytest.raises(DataError, match="timestamps"):
        splits.temporal_rows(few.with_columns(pl.lit(None, pl.Int64).alias("timestamp")))


def test_cold_start_counts_and_rows_to_move():
    df = pl.DataFrame({
        "user_id": ["u1", "u1", "u2", "u3", "u3", "u4"],
        "item_id": ["i1", "i2", "i1", "i1", "i9", "i2"],
        "split": ["train", "train", "train", "valid", "test", "test"],
        "source_row": range(6),
    })
    counts = splits.cold_start_counts(df.lazy())
    assert counts["valid"] == {"rows_with_unseen_user": 1, "rows_with_unseen_item": 0, "rows_cold": 1,
                               "unseen_users": 1, "unseen_items": 0}
    assert counts["test"]["rows_cold"] == 2 and counts["test"]["unseen_items"] == 1
    rows, moved = splits.cold_rows_to_move(df.lazy())
    # u3's first row moves (valid); then u3 is known, but its test row still has the unseen item i9
    assert rows == {3, 4, 5} and moved == {"valid": 1, "test": 2}
    after = df.with_columns(split=pl.when(pl.col("source_row").is_in(sorted(rows))).then(pl.lit("train"))
                            .otherwise(pl.col("split")))
    assert all(v["rows_cold"] == 0 for v in splits.cold_start_counts(after).values())
    # only the first row of an unseen user moves, whatever the order rows are stored in
    df2 = pl.DataFrame({"user_id": ["u2", "u1", "u2"], "item_id": ["i1", "i1", "i1"],
                        "split": ["test", "train", "valid"], "source_row": [2, 0, 1]})
    assert splits.cold_rows_to_move(df2.lazy()) == ({1}, {"valid": 1, "test": 0})


def test_prepare_keep_records_cold_rows(tmp_path):
    rows = synthetic_rows() + [{"user_id": "lonely", "item_id": "i0", "rating": 3, "text": "The strap is ok."}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    lonely = pl.col("user_id") == "lonely"
    keep = prepare([path], "jsonl", seed=3, progress=False, config={"cold_start": "keep"})
    assert keep.interactions.filter(lonely)["split"][0] == "valid"  # seed 3 puts the one-review user there
    assert steps_by_name(keep)["split"]["cold_before"]["valid"]["unseen_users"] == 1
    assert splits.cold_start_counts(keep.interactions)["valid"]["rows_cold"] == 1
    move = prepare([path], "jsonl", seed=3, progress=False)
    assert move.interactions.filter(lonely)["split"][0] == "train"
    assert steps_by_name(move)["split"]["moved_to_train"] == {"valid": 1, "test": 0}


def test_split_from_an_index_folder(tmp_path):
    rows = synthetic_rows(n_users=2, n_items=3)  # 6 rows
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    index = tmp_path / "index"
    index.mkdir()
    (index / "train.index").write_text("0 1 2 3")
    (index / "validation.index").write_text("4")
    (index / "test.index").write_text("5")
    ds = prepare([path], "jsonl", split="peter", progress=False,
                 config={"split_index_dir": str(index), "explanations": "off"})
    assert ds.interactions["split"].to_list() == ["train"] * 4 + ["valid", "test"]


# -- steps and configuration -----------------------------------------------------------------------

@pytest.mark.parametrize("config, field", [
    ({"k_core": -1}, "k_core"),
    ({"over_max": "cut"}, "over_max"),
    ({"split_ratios": [0.5, 0.2, 0.2]}, "split_ratios"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
    ({"rating_scale": [5, 1]}, "rating_scale"),
    ({"n_aspects": 0}, "n_aspects"),
    ({"sentiment_threshold": 1.5}, "sentiment_threshold"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_config_is_validated_up_front(tmp_path, config, field):
    with pytest.raises(ConfigError, match=field):
        prepare([tmp_path / "never-read.json"], "jsonl", config=config, progress=False)


def test_arguments_are_validated_up_front(tmp_path, mi_path):
    with pytest.raises(ConfigError, match="split_index_dir"):
        prepare([mi_path], "amazon2014", split="peter", progress=False)
    with pytest.raises(ConfigError, match="random, temporal, peter"):
        prepare([mi_path], "amazon2014", split="sideways", progress=False)
    with pytest.raises(ConfigError, match="seed"):
        prepare([mi_path], "amazon2014", seed=-1, progress=False)
    with pytest.raises(ConfigError, match="amazon2014"):
        prepare([mi_path], "amazon", progress=False)


def test_rating_normalisation(tmp_path):
    rows = synthetic_rows(rating=lambda u, i: (u + i) % 11)  # 0..10
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    ds = prepare([path], "jsonl", progress=False, config={"rating_scale": [0, 10]})
    step = steps_by_name(ds)["normalize_ratings"]
    assert step["source_range"] == [0, 10] and step["touched"] > 0
    assert ds.interactions["rating"].min() == 1.0 and ds.interactions["rating"].max() == 5.0
    assert ds.interactions.filter(pl.col("source_row") == 5)["rating"][0] == 1 + 4 * 5 / 10
    auto = prepare([path], "jsonl", progress=False)
    assert steps_by_name(auto)["normalize_ratings"]["source_range"] == [0, 10]
    # ratings outside the declared scale are reported and dropped
    out = prepare([path], "jsonl", progress=False, config={"rating_scale": [0, 8]})
    assert out.manifest["problems"]["skipped"] == steps_by_name(out)["normalize_ratings"]["dropped_out_of_range"] > 0
    assert out.interactions["rating"].max() == 5.0
    with pytest.raises(DataError, match="outside the declared scale"):
        prepare([path], "jsonl", progress=False, strict=True, config={"rating_scale": [0, 8]})


def test_length_limits(tmp_path):
    rows = synthetic_rows()
    rows[0]["text"] = "Short."
    rows[1]["text"] = "The strap " + "is very long " * 50 + "indeed."
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    cut = prepare([path], "jsonl", progress=False, config={"min_tokens": 3, "max_tokens": 40})
    step = steps_by_name(cut)["length_limits"]
    assert step["dropped_short"] == 1 and step["over_max"] == 1 and step["touched"] == 1
    text = cut.interactions.filter(pl.col("source_row") == 1)["text"][0]
    assert len(text.split()) <= 40 and text.startswith("The strap is very long")
    drop = prepare([path], "jsonl", progress=False, config={"min_tokens": 3, "max_tokens": 40, "over_max": "drop"})
    assert drop.interactions.height == len(rows) - 2


def test_k_core_iterates_to_a_fixed_point():
    # item d has 1 review: dropping it leaves u3 with 1, which drops c to 1, then u2, a, u1, b
    df = pl.DataFrame({"user_id": ["u1", "u1", "u2", "u2", "u3", "u3"],
                       "item_id": ["a", "b", "a", "c", "c", "d"], "source_row": range(6)})
    users, items, iterations = preprocess.k_core(df.lazy(), 2)
    assert users.len() == items.len() == 0 and iterations >= 2
    users, items, iterations = preprocess.k_core(df.lazy(), 0)
    assert sorted(users) == ["u1", "u2", "u3"] and sorted(items) == list("abcd") and iterations == 0
    # a 2-core that survives: the square u1, u2 x a, b; u3 and c, d go
    square = pl.concat([df, pl.DataFrame({"user_id": ["u2"], "item_id": ["b"], "source_row": [6]})])
    users, items, _ = preprocess.k_core(square.lazy(), 2)
    assert sorted(users) == ["u1", "u2"] and sorted(items) == ["a", "b"]


def assert_core_and_counts(ds, k):
    """Every user and item of the output has >= k rows in it, and the manifest counts are the output's."""
    df, steps = ds.interactions, steps_by_name(ds)
    assert df.group_by("user_id").len()["len"].min() >= k
    assert df.group_by("item_id").len()["len"].min() >= k
    core = steps["k_core"]
    assert (core["rows_out"], core["users"], core["items"]) == (df.height, df["user_id"].n_unique(),
                                                                df["item_id"].n_unique())
    assert steps["split"]["rows_out"] == df.height == sum(steps["split"]["sizes"].values())
    assert steps["split"]["sizes"] == splits.split_sizes(df)


def test_k_core_holds_after_a_rating_outside_the_declared_scale(tmp_path):
    # x reviews 3 items, one rated 9: outside [1, 5], that row goes, and x is left with 2 rows
    rows = synthetic_rows(n_users=4, n_items=4, rating=lambda u, i: 4)
    rows += [{"user_id": "x", "item_id": f"i{i}", "rating": 9 if i == 0 else 3, "timestamp": 5_000 + i,
              "text": f"Item {i} has a strap."} for i in range(3)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    config = {"k_core": 3, "rating_scale": [1, 5], "explanations": "off"}
    ds = prepare([path], "jsonl", progress=False, config=config)
    assert "x" not in ds.interactions["user_id"].to_list()
    assert_core_and_counts(ds, 3)
    assert steps_by_name(ds)["normalize_ratings"]["dropped_out_of_range"] == 1
    assert steps_by_name(ds)["k_core"]["rows_in"] == len(rows) - 1 == steps_by_name(ds)["k_core"]["rows_out"] + 2
    # 3 users x 3 items with one rating of 9: no 3-core is left, and prepare says so
    small = write_jsonl(tmp_path / "small.jsonl",
                        synthetic_rows(n_users=3, n_items=3, rating=lambda u, i: 9 if u == i == 0 else 4))
    with pytest.raises(DataError, match="no rows left"):
        prepare([small], "jsonl", progress=False, config=config)


def test_k_core_holds_after_rows_without_a_given_split(tmp_path):
    rows = synthetic_rows(n_users=4, n_items=4) + [
        {"user_id": "x", "item_id": f"i{i}", "rating": 3, "text": f"Item {i} has a strap."} for i in range(3)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)  # rows 0-15 the square, 16-18 x
    index = tmp_path / "index"
    index.mkdir()
    (index / "train.index").write_text(" ".join(str(i) for i in range(12)) + " 16 17")
    (index / "validation.index").write_text("12 13")
    (index / "test.index").write_text("14 15")  # x's row 18 is in no file
    ds = prepare([path], "jsonl", split="peter", progress=False,
                 config={"split_index_dir": str(index), "explanations": "off", "k_core": 3})
    assert "x" not in ds.interactions["user_id"].to_list()
    assert_core_and_counts(ds, 3)
    assert steps_by_name(ds)["drop_unassigned"]["dropped_unassigned"] == 1


def test_pii_and_problems_are_counted(tmp_path):
    rows = synthetic_rows()
    rows[0]["text"] = "Mail me at joe@example.com or call 555-123-4567."
    rows[1]["text"] = "See https://example.com/strap for the strap."
    lines = [json.dumps(r) for r in rows] + ['{"user_id": "u1", "item_id": "i1", "rating": NaN}', "{oops"]
    path = write_jsonl(tmp_path / "r.jsonl", lines)
    ds = prepare([path], "jsonl", progress=False)
    assert steps_by_name(ds)["scrub_pii"]["replacements"] == {"email": 1, "phone": 1, "url": 1}
    assert steps_by_name(ds)["scrub_pii"]["touched"] == 2
    assert ds.manifest["problems"]["skipped"] == 2
    assert {e["line"] for e in ds.manifest["problems"]["examples"]} == {len(rows) + 1, len(rows) + 2}
    with pytest.raises(DataError, match=r"r\.jsonl, line 73, field 'rating'"):
        prepare([path], "jsonl", progress=False, strict=True)


def test_empty_texts_and_no_rows_left(tmp_path):
    rows = synthetic_rows(n_users=2, n_items=2)
    for r in rows:
        r["text"] = "   "
    with pytest.raises(DataError, match="no rows left"):
        prepare([write_jsonl(tmp_path / "r.jsonl", rows)], "jsonl", progress=False)


def test_settings_help_lists_every_setting_with_its_default_and_range():
    text = prepare_settings_help()
    lines = {line.split(":", 1)[0]: line for line in text.splitlines()}
    defaults = PrepareConfig().model_dump(mode="json")
    assert list(lines) == list(PrepareConfig.model_fields)
    for name, default in defaults.items():
        shown = default if isinstance(default, str) else json.dumps(default)
        assert f", default {shown}." in lines[name], lines[name]
    assert lines["k_core"].startswith("k_core: integer in [0, 10000], default 0.")
    assert lines["sentiment_threshold"].startswith("sentiment_threshold: number in [0.0, 1.0), default 0.05.")
    assert lines["over_max"].startswith("over_max: truncate | drop, default truncate.")
    assert lines["rating_scale"].startswith("rating_scale: auto | [number, number], default auto.")
    assert lines["cold_start"].startswith("cold_start: move_to_train | keep | null, default null.")


def test_prepare_help_lists_the_settings():
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    result = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    starts = {line.strip().split(":")[0] for line in result.output.splitlines()}
    for name in PrepareConfig.model_fields:  # each on a line of its own, even at 80 columns
        assert name in starts, name
    assert max(len(line) for line in result.output.splitlines()) <= 80
