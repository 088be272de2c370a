import json

import numpy as np
import polars as pl
import pytest

from feedbackgen.errors import DataError
from feedbackgen.errors import FeedbackgenError
from feedbackgen.recommend import (Popularity, calibrate_threshold, fidelity, fidelity_markdown,
                                   read_recommendations, recommend, simulate, write_fidelity)
from feedbackgen.recommend.simulated_user import validation_pairs
from feedbackgen.types import FeedbackRequest


def known_test_users(dataset, n):
    known = set(dataset.train["user_id"])
    return sorted(u for u in set(dataset.test["user_id"]) if u in known)[:n]


@pytest.fixture(scope="module")
def popular(mi_small):
    from feedbackgen.models import create

    return create("popular", {"target": "review"}).fit(mi_small)


@pytest.fixture(scope="module")
def two_recommenders(mi_small, popular):
    users = known_test_users(mi_small, 12)
    by_rating = recommend(popular, mi_small, users, k=5, explain=False).select("user_id", "item_id", "rank")
    by_count = recommend(Popularity().fit(mi_small), mi_small, users, k=5, explain=False)
    return {"by_rating": by_rating, "by_count": by_count.select("user_id", "item_id", "rank")}


def test_simulation_on_a_small_real_slice(mi_small, popular, two_recommenders, tmp_path):
    sim = simulate(popular, mi_small, two_recommenders, k=5)
    assert sim.summary["recommender"].to_list() == ["by_rating", "by_count"]
    assert sim.summary["users"].to_list() == [12, 12] and sim.summary["items"].to_list() == [60, 60]
    items = sim.items
    assert items.columns == ["recommender", "user_id", "rank", "item_id", "rating", "stars", "text", "provenance",
                             "source_item", "source", "engage", "p_engage", "repeated"]
    # popular copies each item's most frequent review: named, and about the judged item
    assert set(items["provenance"]) == {"copied"} and (items["source_item"] == items["item_id"]).all()
    expected = [texts.count(t) > 1 for _, _, texts in items.group_by("recommender", "user_id", maintain_order=True)
                .agg("text").iter_rows() for t in texts]
    assert items["repeated"].to_list() == expected
    assert items["p_engage"].null_count() == len(items)  # the rating rule has no probability
    assert all(items["text"])  # every recommended item gets a review
    # the decision rule: engage exactly when the predicted rating reaches the calibrated threshold
    assert (items["engage"] == (items["rating"] >= sim.calibration.threshold)).all()
    # the calibration, recomputed: the validation pairs (each real one beside one unseen item)
    # classified by "rating >= threshold"; no threshold on the grid classifies them better
    users, pair_items, actual, split = validation_pairs(mi_small, seed=1)
    ratings = np.asarray(popular.predict_rating([FeedbackRequest(u, i) for u, i in zip(users, pair_items)]))
    assert split == sim.calibration.split == "valid" and sim.calibration.pairs == len(actual)
    assert actual.sum() == len(mi_small.valid.unique(["user_id", "item_id"])) and sim.calibration.users == len(set(users))
    assert sim.calibration.accuracy == pytest.approx(np.mean((ratings >= sim.calibration.threshold) == actual))
    assert sim.calibration.accuracy >= max(np.mean((ratings >= t) == actual) for t in np.arange(1, 5.01, 0.05))
    assert sim.calibration.accuracy > 0.5  # the rating tells real from unseen items better than chance
    assert (items["stars"] == np.clip(np.floor(items["rating"].to_numpy() + 0.5), 1, 5)).all()
    for row in sim.summary.iter_rows(named=True):
        mine = items.filter(pl.col("recommender") == row["recommender"])
        per_user = sim.users.filter(pl.col("recommender") == row["recommender"])
        assert row["mean_rating"] == pytest.approx(mine["rating"].mean())
        assert row["share_rated_4_plus"] == pytest.approx((mine["stars"] >= 4).mean())
        assert row["engagement_at_k"] == pytest.approx(per_user["engaged"].mean() / sim.k)  # engaged / k
        assert row["unknown_users"] == row["unknown_items"] == row["rows_left_out"] == 0
    # the ranking by the simulator's own rating looks at least as good to it as the popularity one
    means = dict(zip(sim.summary["recommender"], sim.summary["mean_rating"]))
    assert means["by_rating"] >= means["by_count"]
    first = sim.users.row(0, named=True)
    assert first["satisfied"] == (first["engaged"] > 0) and first["items"] == 5
    sim.save(tmp_path / "sim")
    saved = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert saved["calibration"]["rule"].startswith("engage when") and len(saved["summary"]) == 2
    assert pl.read_parquet(tmp_path / "sim" / "simulated_items.parquet").shape == items.shape
    assert "| by_rating |" in (tmp_path / "sim" / "summary.md").read_text()


def test_bad_recommendations_are_reported_not_crashed_on(mi_small, popular, tmp_path):
    user, other = known_test_users(mi_small, 2)
    item = mi_small.train["item_id"][0]
    path = tmp_path / "recs.csv"
    path.write_text("user_id:token,item_id:token,rank:float\n"  # RecBole-style headers
                    f"{user},{item},1\n"
                    f"ghost-user,{item},1\n"
                    f"ghost-user,{item}x,2\n"
                    f"{other},ghost-item,1\n"
                    f"{other},{item},zero\n"
                    f"{other},{item},1.5\n"
                    f",{item},3\n"
                    f"{user},{item},2\n"          # repeated pair: the better rank (1) is kept
                    f"{other},{item},12\n")      # beyond k
    with pytest.raises(DataError, match="3 of its 4 rows name a user or item"):  # mostly unknown: refused
        read_recommendations(path, mi_small, k=10)
    recs, check = read_recommendations(path, mi_small, k=10, check_ids=False)
    assert recs.to_dicts() == [{"user_id": user, "item_id": item, "rank": 1}]
    assert (check.rows, check.kept, check.bad_rows, check.duplicates, check.beyond_k) == (9, 1, 3, 1, 1)
    assert (check.unknown_users, check.unknown_user_rows, check.unknown_user_ids) == (1, 2, ["ghost-user"])
    assert check.unknown_items == 2 and check.unknown_item_ids == sorted(["ghost-item", f"{item}x"])
    assert [e["line"] for e in check.bad_row_examples] == [6, 7, 8]
    assert "ghost-user" in check.describe() and "ghost-item" in check.describe()
    # the line numbers the README promises, in the terminal too, not only in summary.json
    assert "3 bad row(s) (missing id or rank not a positive integer): lines 6, 7, 8;" in check.describe()

    sim = simulate(popular, mi_small, [path], k=10, check_ids=False)
    row = sim.summary.row(0, named=True)
    counts = (row["users"], row["items"], row["unknown_users"], row["unknown_items"], row["rows_left_out"])
    assert counts == (1, 1, 1, 2, 8)
    assert "ghost-user" in sim.markdown() and "lines 6, 7, 8" in sim.markdown()
    # many bad rows: the first five lines, and how many more (a table's first row is line 1)
    bad = pl.DataFrame({"user_id": [user] * 9, "item_id": [item] * 9, "rank": [1, 0, 2, -1, 0, 0, 0, 0, 0]})
    _, check = read_recommendations(bad, mi_small, check_ids=False)
    assert ("7 bad row(s) (missing id or rank not a positive integer): lines 2, 4, 5, 6, 7 (and 2 more)"
            in check.describe())

    # nothing judgeable at all: a row of zeros and blanks, not an exception
    only_ghosts = pl.DataFrame({"user_id": ["ghost"], "item_id": ["ghost"], "rank": [1]})
    with pytest.raises(DataError, match="1 of its 1 rows name a user or item"):
        simulate(popular, mi_small, {"ghosts": only_ghosts}, write=False)
    sim = simulate(popular, mi_small, {"ghosts": only_ghosts}, write=False, check_ids=False)
    row = sim.summary.row(0, named=True)
    assert row["users"] == 0 and row["mean_rating"] is None and row["unknown_users"] == 1


def test_recommendations_without_ids_or_file_are_refused(mi_small, tmp_path):
    (tmp_path / "r.csv").write_text("user,item\na,b\n")
    with pytest.raises(DataError, match="user_id"):
        read_recommendations(tmp_path / "r.csv", mi_small)
    with pytest.raises(DataError, match="does not exist"):
        read_recommendations(tmp_path / "missing.parquet", mi_small)
    (tmp_path / "r.txt").write_text("a b\n")
    with pytest.raises(DataError, match="expected a"):
        read_recommendations(tmp_path / "r.txt", mi_small)


def test_rank_defaults_to_file_order(mi_small):
    user = known_test_users(mi_small, 1)[0]
    items = mi_small.train["item_id"].unique().sort().to_list()[:3]
    recs, check = read_recommendations(pl.DataFrame({"user_id": [user] * 3, "item_id": items[::-1]}), mi_small)
    assert check.rank_from_order and recs["item_id"].to_list() == items[::-1] and recs["rank"].to_list() == [1, 2, 3]


class Planted:
    """A simulated user that rates the real (user, item) pairs of valid and test 5 and all else 1."""

    name = "planted"
    rating_range = (1.0, 5.0)

    def __init__(self, dataset):
        held_out = dataset.interactions.filter(pl.col("split") != "train")
        self.real = set(held_out.select("user_id", "item_id").iter_rows())

    def predict_rating(self, requests):
        return np.array([5.0 if (r.user_id, r.item_id) in self.real else 1.0 for r in requests])


def test_calibration_and_discrimination_on_a_planted_simulator(mi_small):
    planted = Planted(mi_small)
    calibration = calibrate_threshold(planted, mi_small)
    assert calibration.accuracy == 1.0 and 1.0 < calibration.threshold <= 5.0
    result = fidelity(planted, mi_small, review=False)
    for ratio, scores in result["discrimination"].items():
        assert scores["accuracy"] == scores["precision"] == scores["recall"] == scores["f1"] == 1.0
    # mi_small has 40 items, so a user cannot always be given 9 unseen items per real one
    assert result["discrimination"]["1:1"]["negatives_per_positive"] == pytest.approx(1.0)
    assert 1.0 < result["discrimination"]["1:9"]["negatives_per_positive"] <= 9.0
    test = mi_small.test["rating"].to_numpy()
    assert result["rating"]["rmse"] == pytest.approx(np.sqrt(np.mean((5.0 - test) ** 2)))
    # a sample of the validation pairs (for generators that pay a generation per rating)
    asked = []
    planted.predict_rating = lambda reqs: (asked.extend(reqs), Planted.predict_rating(planted, reqs))[1]
    sampled = calibrate_threshold(planted, mi_small, max_pairs=5)
    assert sampled.pairs == len(asked) == 10 and sampled.accuracy == 1.0
    assert calibrate_threshold(planted, mi_small, max_pairs=5) == sampled  # seeded
    with pytest.raises(FeedbackgenError, match="calibration pairs"):
        calibrate_threshold(planted, mi_small, max_pairs=0)


def test_fidelity_of_a_real_generator(mi_small, popular, tmp_path):
    result = fidelity(popular, mi_small, max_users=25)
    assert result["users"] == 25 and set(result["discrimination"]) == {"1:1", "1:3", "1:9"}
    assert 0 < result["rating"]["rmse"] < 2 and sum(result["rating"]["real_distribution"]) == pytest.approx(1)
    a = result["agentsociety"]
    assert a["reference"] == "text" and a["review_pairs"] > 0
    assert 0 <= a["sentiment_error"] <= 1 and 0 <= a["topic_error"] <= 1
    assert a["review_score_without_emotion"] == pytest.approx(1 - (0.25 * a["sentiment_error"]
                                                                   + 0.5 * a["topic_error"]) / 0.75)
    table = fidelity_markdown([result], "MI slice")
    assert "Agent4Rec" in table and "other data" in table and "emotion term left out" in table
    write_fidelity([result], tmp_path / "fid", "MI slice")
    assert {p.name for p in (tmp_path / "fid").iterdir()} == {"fidelity.json", "fidelity.md", "rating_distribution.png"}


def test_cli_recommend_simulate_fidelity(mi_small, popular, two_recommenders, tmp_path):
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    mi_small.save(tmp_path / "ds")
    popular.save(tmp_path / "model")
    user = known_test_users(mi_small, 1)[0]
    runner = CliRunner()
    res = runner.invoke(app, ["recommend", str(tmp_path / "model"), "--dataset", str(tmp_path / "ds"),
                              "--user", user, "--k", "3"])
    assert res.exit_code == 0, res.output
    assert user in res.output
    (tmp_path / "users.txt").write_text(f"{user}\nghost\n")
    res = runner.invoke(app, ["recommend", str(tmp_path / "model"), "--dataset", str(tmp_path / "ds"),
                              "--users", str(tmp_path / "users.txt"), "--out", str(tmp_path / "recs.parquet")])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "recs.parquet")["user_id"].unique().to_list() == [user]
    two_recommenders["by_count"].write_csv(tmp_path / "by_count.csv")
    res = runner.invoke(app, ["simulate", str(tmp_path / "model"), "--dataset", str(tmp_path / "ds"),
                              "--recommendations", str(tmp_path / "recs.parquet"), str(tmp_path / "by_count.csv"),
                              "--out", str(tmp_path / "sim")])
    assert res.exit_code == 0, res.output
    assert "| recs |" in res.output and "| by_count |" in res.output
    # the basis of the table, in the terminal as in summary.md: rule, pairs, users, accuracy
    c = json.loads((tmp_path / "sim" / "summary.json").read_text())["calibration"]
    rule = (f"engage when the predicted rating ≥ {c['threshold']:.2f}, fitted on {c['pairs']} valid pairs of "
            f"{c['users']} users (real and unseen items 1:1); calibration accuracy {c['accuracy']:.3f}")
    assert rule in res.output and rule in (tmp_path / "sim" / "summary.md").read_text()
    # one name for the simulator: the model's, and its folder's where that differs ("model" here)
    assert "Simulated user: `popular (model)`;" in res.output
    items = pl.read_parquet(tmp_path / "sim" / "simulated_items.parquet").filter(pl.col("recommender") == "recs")
    assert f"recs: {len(items)} texts: {len(items)} copied; 0 copied from another item's review" in res.output
    res = runner.invoke(app, ["fidelity", str(tmp_path / "model"), "--dataset", str(tmp_path / "ds"),
                              "--no-reviews", "--max-users", "10", "--out", str(tmp_path / "fid")])
    assert res.exit_code == 0, res.output
    assert "acc 1:9" in res.output
    result = json.loads((tmp_path / "fid" / "fidelity.json").read_text())["results"][0]
    d = result["discrimination"]
    test = mi_small.test.filter(pl.col("rating").is_not_null())
    assert d["1:1"]["pairs"] == 2 * result["rating"]["pairs"] and result["users"] == 10
    # the same simulator (same seed, same valid pairs) under the same name and the same rule, word
    # for word and digit for digit, as `simulate` printed above
    assert result["model"] == "popular (model)" and result["calibration"] == c
    basis = (f"popular (model): 10 test users; discrimination pairs 1:1: {d['1:1']['pairs']} (10 users), "
             f"1:3: {d['1:3']['pairs']} (10 users), 1:9: {d['1:9']['pairs']} (10 users); RMSE/MAE/stars over "
             f"{result['rating']['pairs']} rated test pairs; {rule}")
    assert basis in res.output and basis in (tmp_path / "fid" / "fidelity.md").read_text()
    # the P / R table's sizes column shows what its header says: pairs / users, per ratio
    sizes = ", ".join(f"{d[r]['pairs']} / 10" for r in ("1:1", "1:3", "1:9"))
    assert f"| popular (model) | {rule} | {sizes} |" in res.output
    assert result["rating"]["pairs"] < len(test)  # 10 users' pairs, not the whole split


def test_cli_simulated_user_judges_a_panel_and_lists_with_expected_engagement(mi_small, popular,
                                                                                two_recommenders, tmp_path):
    """`train --model simulated_user`, `fidelity --protocol recommenders` with a RECS file beside the
    built-in panel, and `simulate` with the same user and a generator: expected engagement everywhere."""
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    mi_small.save(tmp_path / "ds")
    popular.save(tmp_path / "writer")
    two_recommenders["by_count"].write_csv(tmp_path / "by_count.csv")
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res.output

    out = run("train", tmp_path / "ds", "--model", "simulated_user", "--set", "search=false", "--out", tmp_path / "user")
    assert "calibrated P(engage)" in out
    out = run("fidelity", "--choice", tmp_path / "user", "--dataset", tmp_path / "ds", "--protocol", "recommenders",
              "--recommendations", tmp_path / "by_count.csv", "--k", "5", "--out", tmp_path / "panel")
    result = json.loads((tmp_path / "panel" / "fidelity.json").read_text())["results"][0]
    rows = {r["recommender"]: r for r in result["panel"]["rows"]}
    assert {"random", "popularity", "ease-200", "als-2", "bpr", "by_count"} <= set(rows)
    assert (tmp_path / "panel" / "panel.png").stat().st_size > 0 and "Kendall τ" in out
    # the simulated user takes about as many listed items as real users did (a slice of 25 items:
    # top-5 lists; the full data's figures are in docs/benchmarks.md)
    for r in rows.values():
        assert 0.5 < r["expected_engagement_at_k"] / r["precision@5"] < 2.0, r
    out = run("simulate", tmp_path / "writer", "--choice", tmp_path / "user", "--dataset", tmp_path / "ds",
              "--recommendations", tmp_path / "by_count.csv", "--out", tmp_path / "sim")
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())["summary"][0]
    low, high = summary["expected_engagement_ci"]
    assert 0 < low <= summary["expected_engagement_at_k"] <= high < 1 and "expected engagement@10" in out
    items = pl.read_parquet(tmp_path / "sim" / "simulated_items.parquet")
    per_user = items.group_by("user_id").agg(pl.col("p_engage").sum() / 10)
    assert per_user["p_engage"].mean() == pytest.approx(summary["expected_engagement_at_k"])
    # the engaged items, and only they, got the generator's rating and text
    assert items.filter(pl.col("engage"))["text"].null_count() == 0
    assert items.filter(~pl.col("engage"))["rating"].null_count() == int((~items["engage"]).sum())
