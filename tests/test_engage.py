"""P(engage) calibrated on ranked candidates, and the recommender panel, on planted data whose truth is known.

The planted world: every user has a true order of the catalogue; the item at true rank r is in the
user's future with probability phi(r), and each future item falls into valid or test with
probability 1/2 (the exchangeability `engage` assumes). So P(valid | r) = phi(r) / 2, and the
probability of a test item among the candidates that are not valid items is
(phi / 2) / (1 - phi / 2): what `EngageModel.probability` must recover.
"""

import numpy as np
import polars as pl
import pytest

from feedbackgen.data.dataset import Dataset
from feedbackgen.recommend import SimulatedUser
from feedbackgen.recommend.engage import EngageModel, after_valid_probability, ranks_in
from feedbackgen.recommend.panel import judge_panel, summarise
from feedbackgen.recommend.ranking import pool_of

N_USERS, N_ITEMS, TRAIN = 800, 120, 8


def phi(rank):
    return 0.6 / np.asarray(rank, dtype=np.float64) ** 0.8


def planted_world(seed=0):
    """(dataset, true order per user): train = TRAIN items drawn from each user's top 40."""
    rng = np.random.default_rng(seed)
    items = np.array([f"i{j:03d}" for j in range(N_ITEMS)])
    rows, order = [], {}
    for u in range(N_USERS):
        user = f"u{u:03d}"
        perm = rng.permutation(N_ITEMS)
        train = set(rng.choice(perm[:40], size=TRAIN, replace=False).tolist())
        rest = [j for j in perm if j not in train]
        order[user] = items[rest]  # the true order of the user's candidates
        rows += [{"user_id": user, "item_id": items[j], "split": "train"} for j in train]
        future = rng.random(len(rest)) < phi(np.arange(1, len(rest) + 1))
        half = rng.random(len(rest)) < 0.5
        rows += [{"user_id": user, "item_id": items[j], "split": "valid" if h else "test"}
                 for j, f, h in zip(rest, future, half) if f]
    return Dataset(pl.DataFrame(rows).with_columns(pl.lit(4.0).alias("rating"))), order


class TrueOrder:
    """A scorer that knows each user's true order (an oracle simulator)."""

    name = "oracle"

    def __init__(self, order):
        self.score_of = {(u, i): -r for u, items in order.items() for r, i in enumerate(items)}

    def score(self, user_ids, item_ids):
        return np.array([self.score_of.get((u, i), -1e9) for u, i in zip(user_ids, item_ids)], dtype=np.float64)


@pytest.fixture(scope="module")
def world():
    ds, order = planted_world()
    return ds, order, EngageModel.fit([TrueOrder(order)], ds, random_items=60)


def test_calibration_recovers_the_planted_take_rate_per_rank(world):
    ds, order, engage = world
    users = sorted(order)
    for r in (1, 2, 5, 20):
        items = [order[u][r - 1] for u in users]
        q = engage.probability([TrueOrder(order)], pool_of(ds), users, items)
        p = phi(r) / 2
        assert q.mean() == pytest.approx(p / (1 - p), abs=0.06), r
    # and the expected number taken from a top-10 list (valid items masked, as every list is judged)
    # matches the test items users really have there
    valid = set(ds.valid.select("user_id", "item_id").iter_rows())
    tops = {u: [i for i in order[u] if (u, i) not in valid][:10] for u in users}
    users_lists = [u for u in users for _ in tops[u]]
    items = [i for u in users for i in tops[u]]
    q = engage.probability([TrueOrder(order)], pool_of(ds), users_lists, items)
    test = set(ds.test.select("user_id", "item_id").iter_rows())
    real = np.mean([(u, i) in test for u, i in zip(users_lists, items)])
    assert q.mean() == pytest.approx(real, rel=0.15)


def test_after_valid_probability_is_the_exchangeable_conversion():
    assert after_valid_probability(np.array([0.0, 0.2, 0.5, 0.9])).tolist() == pytest.approx([0.0, 0.25, 1.0, 1.0])
    assert after_valid_probability(np.array([0.2]), future_ratio=2.0)[0] == pytest.approx(0.5)


def test_ranks_count_ties_half_and_only_candidates():
    scores = np.array([5.0, 3.0, 3.0, 1.0, 9.0])
    candidates = np.array([True, True, True, True, False])  # item 4 is history: never outranks anyone
    assert ranks_in(scores, candidates, np.array([0, 1, 3, 4])).tolist() == [1.0, 2.5, 4.0, 1.0]


def test_an_oracle_orders_a_planted_panel_perfectly_and_a_shuffled_one_does_not(world):
    ds, order, _ = world
    users = sorted(set(ds.test["user_id"]))
    # recommenders of known quality: windows further and further down the true order
    lists = {f"window-{start}": pl.DataFrame({"user_id": [u for u in users for _ in range(10)],
                                              "rank": list(range(1, 11)) * len(users),
                                              "item_id": [i for u in users for i in order[u][start:start + 10]]})
             for start in (0, 5, 15, 40, 80)}
    oracle = SimulatedUser(None, ds, choice=TrueOrder(order))
    result = judge_panel(oracle, ds, extra=lists, builtin=False)
    assert result["share_ordered_right"] == 1.0 and result["kendall_tau"] == pytest.approx(1.0)
    assert result["significant_pairs"] >= 8
    for row in result["rows"]:
        low, high = row["expected_ci"]
        assert low - 1e-12 <= row["expected_engagement_at_k"] <= high + 1e-12
    rng = np.random.default_rng(1)
    shuffled = {u: rng.permutation(order[u]) for u in order}
    noise = SimulatedUser(None, ds, choice=TrueOrder(shuffled))
    result = judge_panel(noise, ds, extra=lists, builtin=False)
    assert result["kendall_tau"] < 0.8 and result["share_ordered_right"] < 1.0


def test_self_preference_is_measured_against_the_real_places():
    # three recommenders over 200 users: a is really best, then b, then c; the simulator (family "c")
    # rates its own family's list highest: it moves c up two places
    real = np.stack([np.arange(200) < n for n in (100, 60, 20)]).astype(float)
    simulated = np.stack([np.full(200, p) for p in (0.20, 0.15, 0.40)])
    scores = np.stack([real, real, real, simulated], axis=2)
    result = summarise(["a", "b", "c"], ["x", "y", "c"], scores, k=10, seed=1, own=["c"], n_users=200)
    assert result["self_preference"] == [{"recommender": "c", "real_place": 3, "simulated_place": 1, "moved_up": 2,
                                          "passed_better": 2}]
    assert result["ordered_right"] == 1 and result["significant_pairs"] == 3  # only a > b kept its order


def test_expected_engagement_interval_covers_the_truth_on_synthetic_users(world):
    ds, order, _ = world
    oracle = SimulatedUser(None, ds, choice=TrueOrder(order))
    users = sorted(order)
    truth = np.mean([phi(r) / 2 / (1 - phi(r) / 2) for r in range(1, 11)])
    lists = {"top": pl.DataFrame({"user_id": [u for u in users for _ in range(10)],
                                  "rank": list(range(1, 11)) * len(users),
                                  "item_id": [i for u in users for i in order[u][:10]]})}
    row = judge_panel(oracle, ds, extra=lists, builtin=False)["rows"][0]
    low, high = row["expected_ci"]
    assert low - 0.01 <= truth <= high + 0.01
