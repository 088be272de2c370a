"""The simulated user's engage rule (choice model + calibration) and Agent4Rec's protocol."""

import numpy as np
import polars as pl
import pytest

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import FeedbackgenError
from feedbackgen.recommend import SimulatedUser, fidelity, fidelity_markdown
from feedbackgen.recommend.fidelity import discrimination_agent4rec
from feedbackgen.recommend.simulated_user import validation_pairs

from support import planted_rows


def planted(n_users=40, n_items=60, per_split=(6, 3, 3), seed=0):
    """Each user's items come from one of two halves of the catalogue ("kinds"), in every split."""
    pools = [(f"u{u:03d}", [f"i{j:03d}" for j in range(n_items) if j % 2 == u % 2]) for u in range(n_users)]
    rows = planted_rows(pools, per_split, seed)
    return Dataset(pl.DataFrame(rows).select("user_id", "item_id", pl.lit(4.0).alias("rating"), "split"))


class Oracle:
    """Scores 1 for the (user, item) pairs that happen in the data, 0 elsewhere (`sign=-1`: inverted)."""

    name = "oracle"

    def __init__(self, dataset, sign=1.0):
        self.real = set(dataset.interactions.select("user_id", "item_id").iter_rows())
        self.sign = sign

    def score(self, user_ids, item_ids):
        return self.sign * np.array([(u, i) in self.real for u, i in zip(user_ids, item_ids)], dtype=np.float64)


class FixedRule:
    """A decision fixed in advance, to check the protocol's arithmetic by hand."""

    def __init__(self, decide):
        self.decide_pair = decide

    def engage(self, user_ids, item_ids):
        return np.array([self.decide_pair(u, i) for u, i in zip(user_ids, item_ids)], dtype=bool)


def test_oracle_choice_model_discriminates_perfectly_through_the_calibrated_rule():
    ds = planted()
    user = SimulatedUser(None, ds, choice=Oracle(ds))
    assert user.rule == "choice" and user.calibration.split == "valid" and user.calibration.accuracy == 1.0
    result = discrimination_agent4rec(user, ds, sorted(ds.test["user_id"].unique()), np.random.default_rng(3))
    assert set(result) == {"1:1", "1:2", "1:3", "1:9"}
    for ratio in result.values():
        assert ratio["accuracy"] == 1.0 and ratio["f1"] == 1.0


def test_agent4rec_protocol_by_hand():
    ds = planted()  # every user has 6 held-out items (valid 3 + test 3) and 30 + 24 never-seen... items
    users = sorted(ds.test["user_id"].unique())
    everything = discrimination_agent4rec(FixedRule(lambda u, i: True), ds, users, np.random.default_rng(1))
    nothing = discrimination_agent4rec(FixedRule(lambda u, i: False), ds, users, np.random.default_rng(1))
    for r in (1, 2, 3, 9):
        k = min(6, 20 // (r + 1))  # positives per user: min(held-out, ⌊20 / (r + 1)⌋)
        assert everything[f"1:{r}"]["pairs"] == len(users) * k * (r + 1)
        p = 1 / (1 + r)
        assert everything[f"1:{r}"]["accuracy"] == pytest.approx(p)
        assert everything[f"1:{r}"]["precision"] == pytest.approx(p)
        assert everything[f"1:{r}"]["recall"] == 1.0
        assert everything[f"1:{r}"]["f1"] == pytest.approx(2 * p / (p + 1))
        assert nothing[f"1:{r}"]["accuracy"] == pytest.approx(r / (1 + r)) and nothing[f"1:{r}"]["f1"] == 0.0
    # an oracle decision scores 1.0 and the inverted one 0.0, at every ratio
    real = set(ds.interactions.select("user_id", "item_id").iter_rows())
    oracle = discrimination_agent4rec(FixedRule(lambda u, i: (u, i) in real), ds, users, np.random.default_rng(1))
    inverted = discrimination_agent4rec(FixedRule(lambda u, i: (u, i) not in real), ds, users,
                                        np.random.default_rng(1))
    assert all(m["accuracy"] == m["f1"] == 1.0 for m in oracle.values())
    assert all(m["accuracy"] == m["f1"] == 0.0 for m in inverted.values())
    # per-user averaging, not pooling: engaging everything for half the users and nothing for the
    # others averages their accuracies (0.5 and 0.5 at 1:1) and their precisions (0.5 and 0)
    half = discrimination_agent4rec(FixedRule(lambda u, i: int(u[1:]) % 2 == 0), ds, users, np.random.default_rng(1))
    assert half["1:1"]["accuracy"] == pytest.approx(0.5) and half["1:1"]["precision"] == pytest.approx(0.25)
    assert half["1:1"]["users"] == len(users)


def test_positives_come_from_held_out_items_and_negatives_were_never_seen():
    ds = planted()
    seen = {}
    for u, i, s in ds.interactions.select("user_id", "item_id", "split").iter_rows():
        seen.setdefault(u, {})[i] = s
    listed = []

    def record(u, i):
        listed.append((u, i))
        return True

    discrimination_agent4rec(FixedRule(record), ds, sorted(seen), np.random.default_rng(2), ratios=(1,))
    kinds = [seen[u].get(i, "never") for u, i in listed]
    assert "train" not in kinds and kinds.count("never") == kinds.count("valid") + kinds.count("test")


def test_calibration_uses_validation_pairs_only():
    ds = planted()
    users, items, actual, split = validation_pairs(ds, seed=1)
    valid = set(ds.valid.select("user_id", "item_id").iter_rows())
    assert split == "valid" and actual.sum() == len(valid) == len(actual) // 2
    assert {p for p, real in zip(zip(users, items), actual) if real} == valid
    everything = set(ds.interactions.select("user_id", "item_id").iter_rows())
    assert not {p for p, real in zip(zip(users, items), actual) if not real} & everything


def test_choice_rule_feedback_only_for_engaged_items(mi_small):
    from feedbackgen.models import create
    from feedbackgen.recommend import Popularity

    generator = create("popular", {"target": "review"}).fit(mi_small)
    user = SimulatedUser(generator, mi_small, choice=Popularity().fit(mi_small))
    users = sorted(set(mi_small.test["user_id"]) & set(mi_small.train["user_id"]))[:5]
    items = sorted(mi_small.interactions["item_id"].unique())[:8]
    pairs_u = [u for u in users for _ in items]
    pairs_i = [i for _ in users for i in items]
    frame = user.judge(pairs_u, pairs_i, feedback_for="engaged")
    engaged = frame["engage"].to_numpy()
    assert 0 < engaged.sum() < len(frame)  # popularity separates these items
    assert frame.filter(pl.col("engage"))["text"].null_count() == 0
    assert frame.filter(~pl.col("engage"))["text"].null_count() == int((~engaged).sum())
    assert frame.filter(~pl.col("engage"))["rating"].null_count() == int((~engaged).sum())
    # engage is drawn with probability p_engage, seeded per user: the same draws again
    assert (frame["engage"].to_numpy() == user.draw(pairs_u, frame["p_engage"].to_numpy())).all()
    with pytest.raises(FeedbackgenError, match="probability"):
        SimulatedUser(generator, mi_small, threshold=3.5, choice=Popularity().fit(mi_small))


def test_fidelity_with_a_choice_model_alone_reports_its_rule(mi_small):
    from feedbackgen.recommend import Popularity

    result = fidelity(None, mi_small, choice=Popularity().fit(mi_small), protocol="agent4rec", max_users=30)
    assert result["engage_rule"] == "choice" and result["rating"] is None and result["protocol"] == "agent4rec"
    assert result["discrimination"]["1:1"]["users"] <= 30
    table = fidelity_markdown([result], "mi")
    assert "P(choose)" in table and "Agent4Rec" in table and "per user" in table


@pytest.mark.slow  # make test keeps test_simulate's CLI run end to end and test_agent4rec_protocol_by_hand
def test_ratings_free_dataset_end_to_end_through_the_cli(a4r_prepared, tmp_path):
    """Agent4Rec's split (interactions only): prepare (the session's `feedbackgen prepare` run) → train
    ease → recommend → simulate → fidelity."""
    import json

    from typer.testing import CliRunner

    from feedbackgen.cli import app

    a4r = a4r_prepared[0]
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res.output

    run("train", a4r, "--model", "ease", "--set", "search=false", "--out", tmp_path / "ease")
    (tmp_path / "users.txt").write_text("0\n1\n2\n")
    run("recommend", tmp_path / "ease", "--dataset", a4r, "--users", tmp_path / "users.txt",
        "--k", "20", "--out", tmp_path / "recs.parquet")
    recs = pl.read_parquet(tmp_path / "recs.parquet")
    assert len(recs) == 60 and recs["predicted_rating"].null_count() == 60 and recs["title"].null_count() == 0
    out = run("simulate", "--choice", tmp_path / "ease", "--dataset", a4r,
              "--recommendations", tmp_path / "recs.parquet", "--out", tmp_path / "sim")
    c = json.loads((tmp_path / "sim" / "summary.json").read_text())["calibration"]
    rule = (f"engage with P(choose) from ease (stacked log-rank, isotonic), calibrated on {c['pairs']} ranked "
            f"valid candidates of {c['users']} users; in 1:1 protocols engage when P ≥ {c['threshold']:.3f} "
            f"(accuracy {c['accuracy']:.3f} on valid pairs, real vs never-seen 1:1, each user weighted once)")
    assert f"Simulated user: `ease`; {rule}." in out  # the folder is named after the model: said once
    items = pl.read_parquet(tmp_path / "sim" / "simulated_items.parquet")
    assert items["engage"].sum() > 0 and items["rating"].null_count() == len(items)  # no generator, no ratings
    out = run("fidelity", "--choice", tmp_path / "ease", "--dataset", a4r, "--protocol", "agent4rec",
              "--no-reviews", "--max-users", "200", "--out", tmp_path / "fid")
    # the same simulator, the same name and the same engage rule as `simulate` printed, digit for digit
    assert f"| ease | {rule} |" in out and "ease (ease)" not in out
    result = json.loads((tmp_path / "fid" / "fidelity.json").read_text())["results"][0]
    assert result["protocol"] == "agent4rec" and result["users"] == 200 and result["rating"] is None
    # EASE separates a user's held-out movies from never-seen ones far better than chance
    assert result["discrimination"]["1:1"]["accuracy"] > 0.7
    assert "same data (Agent4Rec's ML-1M split)" in (tmp_path / "fid" / "fidelity.md").read_text()
    res = runner.invoke(app, ["train", str(a4r), "--model", "retrieval", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "needs review text" in str(res.exception) + res.output
