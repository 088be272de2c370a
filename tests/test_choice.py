"""Choice models: planted preferences, save/load, unknown ids, the validation search, Recall@K, the CLI."""

import json

import numpy as np
import polars as pl
import pytest

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError, FeedbackgenError, NotFittedError
from feedbackgen.recommend import Popularity, evaluate_ranking, is_choice_folder, load_choice
from feedbackgen.recommend.choice import CHOICE_MODELS, UNKNOWN_ITEM_SCORE, create_choice
from feedbackgen.recommend.choice import base as choice_base
from feedbackgen.recommend.choice.base import validation_ranks
from feedbackgen.recommend.metrics import ndcg, ranking_metrics, recall

from support import planted_rows

PERSONAL = ["itemknn", "ease", "als", "bpr", "hybrid"]
TEXT = {"a": ("guitar strings", "bright nickel strings for an acoustic guitar, easy to tune"),
        "b": ("drum sticks", "hickory drum sticks with nylon tips for rock drummers")}


def planted(seed=0, n_a=20, n_b=30):
    """Users of kind a take only a-items, users of kind b only b-items; b has more users, so
    popularity alone would push b-items to everyone. Each user takes 6 of their kind's 10 items:
    4 in train, 1 in valid, 1 in test. Item `a-cold` has metadata and no interaction."""
    pools = [(f"{kind}-user{u:02d}", [f"{kind}{i}" for i in range(10)]) for kind, n in (("a", n_a), ("b", n_b))
             for u in range(n)]
    rows = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 5.0, "text": f"{TEXT[kind][1]} ({r['k']})",
             "summary": f"good {TEXT[kind][0]}", "timestamp": r["k"], "split": r["split"]}
            for r in planted_rows(pools, (4, 1, 1), seed) for kind in [r["user_id"][0]]]
    items = pl.DataFrame({"item_id": [f"{k}{i}" for k in "ab" for i in range(10)] + ["a-cold"],
                          "title": [TEXT[k][0] for k in "ab" for _ in range(10)] + ["guitar strings, new"],
                          "description": [TEXT[k][1] for k in "ab" for _ in range(10)] + [TEXT["a"][1]]})
    return Dataset(pl.DataFrame(rows), items)


@pytest.fixture(scope="module")
def plant():
    return planted()


@pytest.fixture(scope="module")
def fitted(plant):
    return {name: create_choice(name).fit(plant) for name in CHOICE_MODELS}


@pytest.mark.parametrize("name", PERSONAL)
def test_each_model_recommends_the_kind_a_user_takes(fitted, plant, name):
    model = fitted[name]
    users = sorted(plant.train["user_id"].unique().to_list())
    recs = model.recommend(users, k=3)  # of the 6 items of their kind each user has not taken in train
    kinds = recs.with_columns(pl.col("user_id").str.slice(0, 1).alias("u"),
                              pl.col("item_id").str.slice(0, 1).alias("i"))
    assert recs.height == 3 * len(users)
    assert (kinds["u"] == kinds["i"]).all(), kinds.filter(pl.col("u") != pl.col("i"))
    seen = set(plant.train.select("user_id", "item_id").iter_rows())
    assert not any((u, i) in seen for u, i in recs.select("user_id", "item_id").iter_rows())
    assert recs.filter(pl.col("user_id") == users[0])["rank"].to_list() == [1, 2, 3]
    assert (recs.group_by("user_id").agg(pl.col("score").diff().max())["score"].fill_null(0) <= 0).all()


def test_popularity_is_one_implementation_and_ranks_by_count(plant, fitted):
    from feedbackgen.recommend.ranking import Popularity as RankingPopularity

    assert Popularity is RankingPopularity is CHOICE_MODELS["popularity"]
    pop = fitted["popularity"]
    counts = plant.train.group_by("item_id").len()
    top = counts.sort(["len", "item_id"], descending=[True, False])["item_id"][0]
    assert pop.recommend(["a-user00", "nobody"], k=1, exclude_seen=False)["item_id"].to_list() == [top, top]
    assert pop.count(["b1", "no-such-item"]).tolist() == [counts.filter(item_id="b1")["len"][0], 0.0]


def test_hybrid_scores_a_cold_item_by_its_text(fitted):
    hybrid, ease = fitted["hybrid"], fitted["ease"]
    assert "a-cold" in hybrid.item_ids and "a-cold" not in ease.item_ids
    assert ease.score(["a-user00"], ["a-cold"])[0] == UNKNOWN_ITEM_SCORE
    cold = create_choice("hybrid", {"search": False, "weight": 0.5}).fit(planted())
    scores = cold.score_items(["a-user00", "b-user00"], ["a-cold"] + [f"b{i}" for i in range(10)])
    assert (scores[0, 0] > scores[0, 1:]).all()  # an a-user: the cold a-item above every b-item
    assert (scores[1, 0] < scores[1, 1:]).all()  # a b-user: below them


@pytest.mark.parametrize("name", sorted(CHOICE_MODELS))
def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path, name):
    model = fitted[name]
    users = ["a-user00", "b-user03", "nobody", "a-user00"]
    items = ["a1", "b2", "no-such-item", "a-cold"]
    folder = model.save(tmp_path / name)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "ids.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["kind"] == "choice" and meta["model"] == name and is_choice_folder(folder)
    loaded = load_choice(folder)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.search_record == model.search_record
    np.testing.assert_array_equal(loaded.score(users, items), model.score(users, items))
    np.testing.assert_array_equal(loaded.score_items(users), model.score_items(users))
    assert loaded.recommend(users, k=3).equals(model.recommend(users, k=3))


def test_generator_and_choice_folders_are_told_apart(fitted, tmp_path):
    from feedbackgen.models import create, load

    fitted["ease"].save(tmp_path / "ease")
    with pytest.raises(FeedbackgenError, match="choice model .*load_choice"):
        load(tmp_path / "ease")
    generator = create("global_mean").fit(planted())
    generator.save(tmp_path / "gm")
    assert not is_choice_folder(tmp_path / "gm") and not is_choice_folder(tmp_path / "nothing")
    with pytest.raises(FeedbackgenError, match="generator"):
        load_choice(tmp_path / "gm")


def test_unknown_users_get_popularity_and_unknown_items_score_lowest(fitted):
    pop = fitted["popularity"]
    for name in PERSONAL:
        model = fitted[name]
        items = ["a1", "b1", "b2", "no-such-item"]
        s = model.score(["nobody"] * 4, items)
        np.testing.assert_array_equal(s[:3], pop.score(["x"] * 3, items[:3]))
        assert s[3] == UNKNOWN_ITEM_SCORE == -np.inf
        known = model.score(["a-user00"] * 2, ["a1", "no-such-item"])
        assert known[1] < known[0]
        assert model.recommend(["nobody"], k=4)["item_id"].equals(pop.recommend(["nobody"], k=4)["item_id"])


def test_score_gathers_the_dense_rows_in_batches(fitted, monkeypatch):
    model = fitted["ease"]
    rng = np.random.default_rng(3)
    users = rng.choice(model.user_ids + ["nobody"], size=300).tolist()
    items = rng.choice(model.item_ids + ["no-such-item"], size=300).tolist()
    whole = model.score(users, items)
    monkeypatch.setattr(choice_base, "DENSE_CELLS", 50)  # room for 2 users' rows of the 21 items per batch
    assert len(model.item_ids) * 3 > 50
    np.testing.assert_array_equal(model.score(users, items), whole)
    dense = model.score_items(users, items)
    np.testing.assert_array_equal(whole, dense[np.arange(300), np.arange(300)])
    with pytest.raises(ValueError, match="differ in length"):
        model.score(users, items[:-1])


def test_an_unfitted_model_is_refused():
    for name in CHOICE_MODELS:
        with pytest.raises(NotFittedError, match=r"call fit\(dataset\)"):
            create_choice(name).score(["u"], ["i"])
    with pytest.raises(NotFittedError):
        create_choice("ease").save("/tmp/never-written")


def test_bad_settings_name_the_field_and_range():
    with pytest.raises(ConfigError, match=r"l2: Input should be greater than 0 \(got -1\)"):
        create_choice("ease", {"l2": -1})
    with pytest.raises(ConfigError, match="weight: Input should be less than or equal to 1"):
        create_choice("hybrid", {"weight": 2})
    with pytest.raises(ConfigError, match=r"lr: unknown setting \(known: .*learning_rate"):
        create_choice("bpr", {"lr": 0.1})
    with pytest.raises(ConfigError, match="unknown choice model 'svd'; available: als, bpr, ease"):
        create_choice("svd")
    from feedbackgen.models import REGISTRY

    assert not set(REGISTRY) & set(CHOICE_MODELS)  # one name space for `feedbackgen train --model`


def test_validation_search_records_its_grid_and_picks_the_best(plant, fitted):
    model = fitted["ease"]
    record = model.search_record
    assert record["grid"] == {"l2": [10.0, 50.0, 100.0, 200.0, 500.0, 1000.0]} and record["split"] == "valid"
    scores = [c["ndcg@10"] for c in record["candidates"]]
    assert [c["params"]["l2"] for c in record["candidates"]] == record["grid"]["l2"]
    assert record["chosen"] == record["candidates"][int(np.argmax(scores))]["params"]
    assert model.config.l2 == record["chosen"]["l2"]
    # the recorded score is the chosen model's, measured again from scratch
    again = create_choice("ease", {"search": False, "l2": model.config.l2}).fit(plant)
    users = sorted(set(plant.valid["user_id"]) & set(plant.train["user_id"]))
    assert ndcg(validation_ranks(again, plant, users, seed=1), 10) == pytest.approx(max(scores))
    # a value set explicitly is held fixed; search=false keeps every value as given
    knn = create_choice("itemknn", {"shrink": 5.0}).fit(plant)
    assert list(knn.search_record["grid"]) == ["neighbours"] and knn.search_record["fixed"] == {"shrink": 5.0}
    assert knn.config.shrink == 5.0
    fixed = create_choice("ease", {"search": False, "l2": 123.0}).fit(plant)
    assert fixed.search_record is None and fixed.config.l2 == 123.0


def test_the_search_needs_a_valid_split(plant):
    no_valid = Dataset(plant.interactions.with_columns(
        pl.when(pl.col("split") == "valid").then(pl.lit("train")).otherwise(pl.col("split")).alias("split")))
    with pytest.raises(FeedbackgenError, match="search=false"):
        create_choice("ease").fit(no_valid)
    assert create_choice("ease", {"search": False}).fit(no_valid).is_fitted


def test_recall_at_k_by_hand():
    ranks = [[1, 4, 12], [3], [], [25, 2]]
    assert recall(ranks, 5) == pytest.approx((2 / 3 + 1 + 0 + 1 / 2) / 4)
    assert recall(ranks, 20) == pytest.approx((1 + 1 + 0 + 1 / 2) / 4)
    assert recall(ranks, 1) == pytest.approx((1 / 3) / 4)
    assert recall([], 10) == 0.0
    single = [[1], [7], [30]]  # one relevant item per query: recall is the hit ratio
    m = ranking_metrics(single, ks=(5, 10))
    assert m["recall@5"] == m["hr@5"] == pytest.approx(1 / 3) and m["recall@10"] == pytest.approx(2 / 3)


def test_evaluate_ranking_ranks_with_a_choice_model(plant, fitted):
    table = evaluate_ranking({"popularity": fitted["popularity"], "ease": fitted["ease"]}, plant,
                             protocols=("full",))
    pop, ease = table.row(0, named=True), table.row(1, named=True)
    assert ease["hr@5"] > pop["hr@5"] and ease["recall@10"] > pop["recall@10"]
    assert ease["ndcg@10"] > 0.3


def test_train_and_evaluate_through_the_cli(mi_small, tmp_path):
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    mi_small.save(tmp_path / "ds")
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "ds"), "--model", "ease", "--out", str(tmp_path / "ease")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "ease" / "config.json").read_text())
    assert meta["kind"] == "choice" and meta["config"]["l2"] == meta["search"]["chosen"]["l2"]
    res = runner.invoke(app, ["recommend", str(tmp_path / "ease"), "--dataset", str(tmp_path / "ds"),
                              "--evaluate", "--max-users", "50"])
    assert res.exit_code == 0, res.output
    assert "| ease | full |" in res.output and "| mf | sampled |" in res.output and "recall@10" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "ds"), "--model", "ease", "--out", str(tmp_path / "bad"),
                              "--set", "l2=0"])
    assert res.exit_code != 0 and "l2" in str(res.exception) and not (tmp_path / "bad").exists()
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "choice models" in res.output and "ease (default)" in res.output
