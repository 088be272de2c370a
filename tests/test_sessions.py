"""Sessions (`feedbackgen.recommend.sessions`, `simulate --session`): pages, engagement, the exit rule."""

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from feedbackgen.cli.app import app
from feedbackgen.errors import FeedbackgenError
from feedbackgen.recommend import create_choice, top_k
from feedbackgen.recommend.engage import EngageModel
from feedbackgen.recommend.ranking import pool_of
from feedbackgen.recommend.sessions import EngageRows, SessionConfig, sessions
from feedbackgen.recommend.simulated_user import SimulatedUser


def known_test_users(dataset, n=None):
    known = set(dataset.train["user_id"])
    users = sorted(u for u in set(dataset.test["user_id"]) if u in known)
    return users[:n] if n else users


@pytest.fixture(scope="module")
def ease(mi_small):
    return create_choice("ease", {"search": False}).fit(mi_small)


@pytest.fixture(scope="module")
def deep_recs(mi_small, ease):
    """ease's lists, 20 deep (2 pages of 10), for every known test user."""
    return top_k(ease, known_test_users(mi_small), 20, dataset=mi_small).select("user_id", "item_id", "rank")


@pytest.fixture(scope="module")
def never_engages(mi_small):
    """A simulated_user model whose calibration says 0 everywhere: planted, so the exit rule is all that acts."""
    model = create_choice("simulated_user", {"components": ["popularity"], "search": False}).fit(mi_small)
    e = model.engage
    model.engage = EngageModel(e.coef, e.intercept, e.x_knots, np.zeros_like(e.y_knots), e.record)
    return model


def test_p_rows_are_the_simulated_users_probabilities(mi_small, ease):
    user = SimulatedUser(None, mi_small, choice=ease)
    pool, users = pool_of(mi_small), known_test_users(mi_small, 5)
    rows = EngageRows.of(user, mi_small).rows(users)
    for n, u in enumerate(users):
        history = set(pool.items[pool.masked(u, "train+valid")])
        fresh = [i for i in pool.items if i not in history]
        cols = [pool.index[i] for i in fresh]
        assert rows[n, cols] == pytest.approx(user.probability([u] * len(fresh), fresh), abs=1e-12)
        assert (rows[n, pool.masked(u, "train+valid")] == 0).all()  # nobody takes what they already took


def test_exit_base_one_means_one_page(mi_small, ease, deep_recs):
    run = sessions(None, mi_small, {"ease": deep_recs}, choice=ease, config={"exit_base": 1.0})
    assert (run.sessions["pages_viewed"] == 1).all() and (run.sessions["exit_reason"] == "left").all()
    assert run.log["exited_after"].all() and run.summary["share_left"][0] == 1.0


def test_boredom_ends_a_session_that_finds_nothing(mi_small, never_engages, deep_recs):
    run = sessions(None, mi_small, {"ease": deep_recs}, choice=never_engages,
                   config={"exit_base": 0.0, "boredom": 1.0})
    assert not run.log["engaged"].any()
    assert (run.sessions["pages_viewed"] == 1).all() and (run.sessions["exit_page"] == 1).all()
    assert run.summary["satisfaction"][0] == 0.0
    # without boredom or a base rate nobody leaves: the list (2 pages) runs out instead
    stay = sessions(None, mi_small, {"ease": deep_recs}, choice=never_engages,
                    config={"exit_base": 0.0, "boredom": 0.0, "max_pages": 5})
    full = deep_recs.group_by("user_id").len()
    assert set(stay.sessions["exit_reason"]) <= {"end_of_list"}
    assert stay.sessions["pages_viewed"].max() == 2 and stay.sessions["exit_page"].null_count() == len(stay.sessions)
    assert stay.sessions["items_shown"].sum() == full["len"].sum()


def test_no_item_shown_twice_and_seeded(mi_small, ease, deep_recs):
    cfg = {"exit_base": 0.0, "boredom": 0.0, "max_pages": 3, "page_size": 4}
    run = sessions(None, mi_small, {"ease": deep_recs}, live={"live": ease}, choice=ease, config=cfg)
    assert run.log.group_by("recommender", "session", "item_id").len()["len"].max() == 1
    live = run.log.filter(pl.col("recommender") == "live")
    assert live["page"].max() == 3 and live.group_by("session").len()["len"].max() == 12
    pool = pool_of(mi_small)
    for u, item in run.log.select("user_id", "item_id").iter_rows():
        assert pool.index[item] not in set(pool.masked(u, "train+valid"))  # history never re-shown
    again = sessions(None, mi_small, {"ease": deep_recs}, live={"live": ease}, choice=ease, config=cfg)
    assert again.log.equals(run.log)
    other = sessions(None, mi_small, {"ease": deep_recs}, live={"live": ease}, choice=ease, config={**cfg, "seed": 2})
    assert not other.log["engaged"].equals(run.log["engaged"])


def test_decisions_are_the_simulated_users_draws(mi_small, ease, deep_recs):
    """With no exit, no satiation and full pages, a session decides exactly as `SimulatedUser.draw` does."""
    run = sessions(None, mi_small, {"ease": deep_recs}, choice=ease,
                   config={"exit_base": 0.0, "boredom": 0.0, "satiation": 1.0, "max_pages": 2})
    log = run.log.sort("session", "page", "position")
    user = SimulatedUser(None, mi_small, choice=ease)
    users, items = log["user_id"].to_list(), log["item_id"].to_list()
    p = user.probability(users, items)
    assert log["p_engage"].to_numpy() == pytest.approx(p, abs=1e-12)
    assert (log["engaged"].to_numpy() == user.draw(users, p)).all()


def test_satiation_lowers_later_probabilities(mi_small, ease, deep_recs):
    cfg = {"exit_base": 0.0, "boredom": 0.0, "max_pages": 2}
    plain = sessions(None, mi_small, {"ease": deep_recs}, choice=ease, config={**cfg, "satiation": 1.0}).log
    tired = sessions(None, mi_small, {"ease": deep_recs}, choice=ease, config={**cfg, "satiation": 0.5}).log
    taken = pl.col("engaged").cast(pl.Int64)
    before = tired.select((taken.cum_sum().over("session") - taken).alias("k"))["k"].to_numpy()
    assert plain["item_id"].equals(tired["item_id"]) and before.max() >= 1  # the same pages; some take several
    expected = plain["p_engage"].to_numpy() * 0.5 ** before
    assert tired["p_engage"].to_numpy() == pytest.approx(expected, abs=1e-12)


def test_unknown_users_and_items_are_left_out(mi_small, ease, deep_recs):
    bad = pl.DataFrame({"user_id": ["nobody", deep_recs["user_id"][0]], "item_id": [deep_recs["item_id"][0], "no-item"],
                        "rank": [1, 21]})
    run = sessions(None, mi_small, {"ease": pl.concat([deep_recs, bad], how="vertical_relaxed")}, choice=ease)
    assert "nobody" not in set(run.log["user_id"]) and "no-item" not in set(run.log["item_id"])
    check = run.checks[0]
    assert check.unknown_users == 1 and check.unknown_items == 1


def test_settings_and_inputs_are_checked(mi_small, ease, deep_recs):
    with pytest.raises(FeedbackgenError, match="page_size"):
        sessions(None, mi_small, {"ease": deep_recs}, choice=ease, config={"page_size": 0})
    with pytest.raises(FeedbackgenError, match="recommender"):
        sessions(None, mi_small, {}, choice=ease)
    with pytest.raises(FeedbackgenError, match="choice model"):
        sessions(None, mi_small, {"ease": deep_recs}, choice=None)
    assert SessionConfig().leave_probability(True) == 0.2 and SessionConfig().leave_probability(False) == pytest.approx(0.6)


def _cli(args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args}: {result.output[-2000:]} {result.exception!r}"
    return result.output


def test_cli_sessions_with_a_generator(mi_small, tmp_path):
    """Text data: engaged items get the generator's rating and review."""
    from feedbackgen.models import create

    data = tmp_path / "mi"
    mi_small.save(data)
    create("popular", {"target": "review"}).fit(mi_small).save(tmp_path / "popular")
    _cli(["train", data, "--model", "ease", "--out", tmp_path / "ease"])
    users = tmp_path / "users.txt"
    users.write_text("\n".join(known_test_users(mi_small)) + "\n")
    _cli(["recommend", tmp_path / "ease", "--dataset", data, "--users", users, "--k", 20,
          "--no-explain", "--out", tmp_path / "recs.parquet"])
    out = _cli(["simulate", tmp_path / "popular", "--choice", tmp_path / "ease", "--dataset", data, "--session",
                "--recommendations", tmp_path / "recs.parquet", "--live-recommender", tmp_path / "ease",
                "--page-size", 5, "--max-pages", 4, "--exit-base", 0.1, "--out", tmp_path / "run"])
    assert "| recs |" in out and "| ease |" in out
    log = pl.read_parquet(tmp_path / "run" / "sessions.parquet")
    engaged = log.filter(pl.col("engaged"))
    assert len(engaged) and engaged["text"].null_count() == 0 and engaged["rating"].null_count() == 0
    assert log.filter(~pl.col("engaged"))["text"].null_count() == len(log) - len(engaged)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [r["recommender"] for r in summary["summary"]] == ["recs", "ease"]
    assert summary["config"]["page_size"] == 5 and log["position"].max() <= 5 and log["page"].max() <= 4


def test_cli_sessions_on_ratings_only_data(data_root, tmp_path):
    """The Agent4Rec MovieLens split has no text: decisions and exits only, no generator."""
    a4r = tmp_path / "a4r_raw"
    a4r.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        lines = (data_root / "movielens_1m_agent4rec" / name).read_text(encoding="utf-8").splitlines()
        (a4r / name).write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    data = tmp_path / "a4r"
    _cli(["prepare", a4r, "--format", "lightgcn", "--out", data])
    _cli(["train", data, "--model", "itemknn", "--set", "search=false", "--out", tmp_path / "knn"])
    out = _cli(["simulate", "--choice", tmp_path / "knn", "--dataset", data, "--session",
                "--live-recommender", tmp_path / "knn", "--out", tmp_path / "run"])
    assert "| knn |" in out
    log = pl.read_parquet(tmp_path / "run" / "sessions.parquet")
    assert log["text"].null_count() == len(log) and log["engaged"].any()
    assert log.group_by("session", "item_id").len()["len"].max() == 1
    bad = CliRunner().invoke(app, ["simulate", "--dataset", str(data), "--session", "--live-recommender",
                                   str(tmp_path / "knn")])
    assert bad.exit_code != 0 and "choice" in bad.output + str(bad.exception)
