import math

import numpy as np
import polars as pl
import pytest

from feedbackgen.data.dataset import Dataset
from feedbackgen.data.problems import Problems
from feedbackgen.errors import FeedbackgenError
from feedbackgen.recommend import Popularity, evaluate_ranking, read_id_list, recommend, write_recommendations
from feedbackgen.recommend.metrics import (classification_metrics, hit_rate, ndcg, positions,
                                           preference_estimation, ranking_metrics,
                                           review_score_without_emotion, sentiment_error, star_histogram,
                                           topic_error)
from feedbackgen.recommend.ranking import ranking_queries, score_pairs

from support import planted_rows


# -- metrics on hand-computed cases ------------------------------------------------------------

def test_hit_rate_and_ndcg_single_relevant_item():
    # NCF's definitions: one relevant item at rank r -> HR@k = [r <= k], NDCG@k = 1/log2(r + 1)
    assert hit_rate([[1]], 5) == 1.0 and ndcg([[1]], 5) == 1.0
    assert hit_rate([[3]], 2) == 0.0 and ndcg([[3]], 2) == 0.0
    assert ndcg([[3]], 5) == pytest.approx(0.5)                       # 1 / log2(4)
    assert ndcg([[2]], 10) == pytest.approx(1 / math.log2(3))
    # averaged over queries: ranks 1, 3 and 7 at k = 5
    assert hit_rate([[1], [3], [7]], 5) == pytest.approx(2 / 3)
    assert ndcg([[1], [3], [7]], 5) == pytest.approx((1 + 0.5 + 0) / 3)


def test_ndcg_with_several_relevant_items():
    # relevant at ranks 1 and 4: DCG@5 = 1 + 1/log2(5); ideal has them at 1 and 2: 1 + 1/log2(3)
    expected = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg([[1, 4]], 5) == pytest.approx(expected)
    assert ndcg([[4, 1]], 5) == pytest.approx(expected)               # order of the list does not matter
    # at k = 3 only rank 1 counts, but the ideal still holds two items
    assert ndcg([[1, 4]], 3) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # three relevant items, k = 2: the ideal is capped at k items
    assert ndcg([[1, 2, 9]], 2) == pytest.approx(1.0)
    assert hit_rate([[6, 4]], 5) == 1.0
    # a query with no relevant item ranked is a miss, never a division by zero
    assert hit_rate([[]], 5) == 0.0 and ndcg([[]], 5) == 0.0


def test_ranking_metrics_keys_and_monotone_hit_rate():
    m = ranking_metrics([[1], [6], [15], [30]], ks=(5, 10, 20))
    assert list(m) == ["hr@5", "ndcg@5", "recall@5", "hr@10", "ndcg@10", "recall@10", "hr@20", "ndcg@20",
                       "recall@20"]
    assert (m["hr@5"], m["hr@10"], m["hr@20"]) == (0.25, 0.5, 0.75)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(7) + 1 / math.log2(16)) / 4)


def test_positions_sort_descending_and_break_ties_reproducibly():
    assert positions(np.array([0.1, 0.9, 0.5]), np.random.default_rng(0)).tolist() == [3, 1, 2]
    tied = np.array([1.0, 1.0, 1.0, 1.0, 2.0])
    a = positions(tied, np.random.default_rng(7))
    assert a[4] == 1 and sorted(a[:4].tolist()) == [2, 3, 4, 5]
    assert a.tolist() == positions(tied, np.random.default_rng(7)).tolist()
    # over many seeds each tied item takes each place: no order bias
    firsts = {int(np.argmin(positions(tied[:4], np.random.default_rng(s)))) for s in range(50)}
    assert firsts == {0, 1, 2, 3}
    # with a tie-breaker, equal scores follow it (highest first); only full ties stay random
    assert positions(tied, np.random.default_rng(7), tie_break=np.array([3, 9, 1, 5, 0])).tolist() == [4, 2, 5, 3, 1]


def test_classification_metrics_by_hand():
    # tp = 2, fp = 1, fn = 1, tn = 1
    m = classification_metrics([True, True, False, False, True], [True, False, True, False, True])
    assert m == pytest.approx({"accuracy": 3 / 5, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    never = classification_metrics([False, False], [True, False])
    assert never == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_agentsociety_scores_by_hand():
    # simulated 6 is clipped to 5 before the error, as the challenge's evaluator does
    assert preference_estimation([5, 6, 2], [4, 5, 2]) == pytest.approx(1 - (1 / 5) / 3)
    assert sentiment_error([1.0, -1.0], [-1.0, -1.0]) == pytest.approx((1.0 + 0.0) / 2)
    same, orthogonal, opposite = np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]), np.array([[-3.0, 0.0]])
    assert topic_error(same, same) == pytest.approx(0.0)
    assert topic_error(same, orthogonal) == pytest.approx(0.5)        # cosine distance 1, halved
    assert topic_error(same, opposite) == pytest.approx(1.0)
    assert review_score_without_emotion(0.0, 0.0) == 1.0
    assert review_score_without_emotion(1.0, 1.0) == pytest.approx(0.0)
    assert review_score_without_emotion(0.3, 0.0) == pytest.approx(1 - 0.075 / 0.75)
    assert star_histogram([1.2, 3.5, 4.49, 4.5, 7]).tolist() == [0.2, 0.0, 0.0, 0.4, 0.4]


# -- ranking protocols on a planted dataset ------------------------------------------------------

@pytest.fixture(scope="module")
def planted():
    """40 users; each has 6 train, 1 valid and 2 test items drawn at random from 300."""
    rows = planted_rows([(f"u{u}", [f"i{i:03d}" for i in range(300)]) for u in range(40)], (6, 1, 2), seed=3)
    rating = (1 + (pl.col("user_id").str.slice(1).cast(pl.Int64) + pl.col("item_id").str.slice(1).cast(pl.Int64)) % 5)
    return Dataset(pl.DataFrame(rows).select("user_id", "item_id", rating.cast(pl.Float64).alias("rating"), "split"))


class Oracle:
    """Scores a user's test items 1 and everything else 0 (or the reverse)."""

    def __init__(self, dataset, invert=False):
        self.test = set(dataset.test.select("user_id", "item_id").iter_rows())
        self.invert = invert

    def score(self, users, items):
        hit = np.array([(u, i) in self.test for u, i in zip(users, items)], dtype=np.float64)
        return 1 - hit if self.invert else hit


def test_full_protocol_masks_history_and_ranks_test_items(planted):
    q = ranking_queries(planted, "full")
    catalogue = set(planted.interactions["item_id"])
    assert len(q.users) == 40
    for user, items, relevant in zip(q.users, q.items, q.relevant):
        history = set(planted.interactions.filter((pl.col("user_id") == user) & (pl.col("split") != "test"))["item_id"])
        assert set(items) == catalogue - history
        assert relevant.sum() == 2
    table = evaluate_ranking({"oracle": Oracle(planted), "worst": Oracle(planted, invert=True)}, planted,
                             protocols=("full",))
    best, worst = table.row(0, named=True), table.row(1, named=True)
    assert best["hr@5"] == 1.0 and best["ndcg@5"] == pytest.approx(1.0)
    assert worst["hr@20"] == 0.0 and worst["ndcg@20"] == 0.0


def test_sampled_protocol_draws_99_unseen_negatives_per_test_row(planted):
    q = ranking_queries(planted, "sampled", n_negatives=99, seed=5)
    assert len(q.users) == len(planted.test)
    for user, items, relevant in zip(q.users, q.items, q.relevant):
        seen = set(planted.interactions.filter(pl.col("user_id") == user)["item_id"])
        assert len(items) == 100 and relevant.tolist() == [True] + [False] * 99
        assert not seen & set(items[1:]) and len(set(items)) == 100
    again = ranking_queries(planted, "sampled", n_negatives=99, seed=5)
    assert all((a == b).all() for a, b in zip(q.items, again.items))
    table = evaluate_ranking({"oracle": Oracle(planted)}, planted, protocols=("sampled",))
    assert table["hr@5"][0] == 1.0 and table["queries"][0] == 80


def test_max_users_takes_a_seeded_sample(planted):
    a = ranking_queries(planted, "full", max_users=4, seed=2)
    b = ranking_queries(planted, "full", max_users=4, seed=2)
    assert len(a.users) == 4 and a.users == b.users


def test_bad_protocol_is_refused(planted):
    with pytest.raises(FeedbackgenError, match="protocol"):
        ranking_queries(planted, "leave-one-out")


# -- recommend on a real slice -----------------------------------------------------------------

def known_test_users(dataset, n):
    """Test users who also have training rows (in a slice, some have none)."""
    known = set(dataset.train["user_id"])
    return sorted(u for u in set(dataset.test["user_id"]) if u in known)[:n]


@pytest.fixture(scope="module")
def popular(mi_small):
    from feedbackgen.models import create

    return create("popular", {"target": "review"}).fit(mi_small)


def test_recommend_ranks_unseen_items_by_predicted_rating(mi_small, popular):
    users = known_test_users(mi_small, 5)
    recs = recommend(popular, mi_small, users, k=7)
    assert recs.columns == ["user_id", "rank", "item_id", "predicted_rating", "text", "title", "model", "score",
                            "exclude", "provenance", "source_user", "source_item", "source", "repeated"]
    assert recs["exclude"].unique().to_list() == ["train+valid"]  # the default, named in every row
    assert recs["score"].to_list() == recs["predicted_rating"].to_list()  # the rating ranked them
    assert len(recs) == 35 and recs["model"].unique().to_list() == ["popular"]
    for user in users:
        mine = recs.filter(pl.col("user_id") == user)
        assert mine["rank"].to_list() == list(range(1, 8))
        assert mine["predicted_rating"].to_list() == sorted(mine["predicted_rating"].to_list(), reverse=True)
        seen = set(mi_small.interactions.filter(pl.col("user_id") == user, pl.col("split") != "test")["item_id"])
        assert not seen & set(mine["item_id"])
    assert all(t for t in recs["text"])  # every item explained
    # the explanation is the generator's feedback for that very pair
    first = recs.row(0, named=True)
    from feedbackgen.types import FeedbackRequest

    fb = popular.generate([FeedbackRequest(first["user_id"], first["item_id"])])[0]
    assert fb.text == first["text"] and fb.rating == pytest.approx(first["predicted_rating"])


def test_a_choice_model_ranks_and_the_generator_explains(mi_small, popular):
    from feedbackgen.recommend import create_choice
    from feedbackgen.types import FeedbackRequest

    ease = create_choice("ease", {"search": False, "l2": 50.0}).fit(mi_small)
    users = known_test_users(mi_small, 4)
    recs = recommend(popular, mi_small, users, k=5, choice=ease)
    assert recs["model"].unique().to_list() == ["popular + ease"]
    for user in users:
        mine = recs.filter(pl.col("user_id") == user)
        # the order is the choice model's own top 5 among the items the user has not in train or valid
        seen = set(mi_small.interactions.filter(pl.col("user_id") == user, pl.col("split") != "test")["item_id"])
        unseen = sorted(set(mi_small.interactions["item_id"]) - seen)
        best = np.sort(ease.score([user] * len(unseen), unseen))[::-1][:5]
        assert mine["score"].to_list() == pytest.approx(best.tolist())
        assert mine["score"].to_list() == pytest.approx(ease.score([user] * 5, mine["item_id"].to_list()).tolist())
    first = recs.row(0, named=True)
    fb = popular.generate([FeedbackRequest(first["user_id"], first["item_id"])])[0]
    assert fb.text == first["text"] and fb.rating == pytest.approx(first["predicted_rating"])
    alone = recommend(None, mi_small, users, k=5, choice=ease)  # no generator: ranks, nothing to say
    assert alone["item_id"].to_list() == recs["item_id"].to_list() and alone["predicted_rating"].null_count() == 20


def test_recommend_breaks_rating_ties_by_popularity(mi_small):
    class Flat:
        """Rates everything 5: the ranking is then the tie-break alone."""

        name = "flat"

        def predict_rating(self, requests):
            return np.full(len(requests), 5.0)

    user = known_test_users(mi_small, 1)[0]
    recs = recommend(Flat(), mi_small, [user], k=5, exclude="all")
    counts = Popularity().fit(mi_small).count(recs["item_id"].to_list())
    seen = set(mi_small.interactions.filter(pl.col("user_id") == user)["item_id"])
    unseen_counts = sorted(Popularity().fit(mi_small).count(
        [i for i in mi_small.interactions["item_id"].unique() if i not in seen]), reverse=True)
    assert counts.tolist() == unseen_counts[:5]


def test_recommend_candidates_and_unknown_ids(mi_small, popular, tmp_path):
    user = known_test_users(mi_small, 1)[0]
    items = sorted(mi_small.train["item_id"].unique().to_list())[:4]
    recs = recommend(popular, mi_small, [user], k=10, candidates=items, explain=False, exclude="none")
    assert sorted(recs["item_id"]) == items and set(recs["text"]) == {""}
    # given candidates are masked like the default ones
    train = set(mi_small.train.filter(pl.col("user_id") == user)["item_id"])
    masked = recommend(popular, mi_small, [user], k=10, candidates=items, explain=False, exclude="train")
    assert sorted(masked["item_id"]) == sorted(set(items) - train)
    with pytest.raises(FeedbackgenError, match="not in the dataset's training split"):
        recommend(popular, mi_small, ["nobody"])
    problems = Problems()
    recs = recommend(popular, mi_small, [user, "nobody"], k=3, candidates=[*items, "no-such-item"],
                     problems=problems)
    assert recs["user_id"].unique().to_list() == [user]
    assert problems.count == 2 and "nobody" in str(problems.examples) and "no-such-item" in str(problems.examples)
    path = write_recommendations(recs, tmp_path / "recs.parquet")
    assert pl.read_parquet(path).equals(recs)
    (tmp_path / "users.txt").write_text(f"# users\n{user}\n\nnobody\n")
    assert read_id_list(tmp_path / "users.txt", "user_id") == [user, "nobody"]
    pl.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]}).write_csv(tmp_path / "c.csv")
    assert read_id_list(tmp_path / "c.csv", "item_id") == {"a": ["x", "y"], "b": ["x"]}


def test_evaluate_ranking_on_a_real_slice(mi_small, popular):
    models = {"popularity": Popularity().fit(mi_small), "popular": popular}
    table = evaluate_ranking(models, mi_small, max_users=60)
    assert table.shape[0] == 4 and set(table["protocol"]) == {"full", "sampled"}
    # full protocol, recomputed here from the scores alone: a test item's rank lies between
    # 1 + (candidates scoring higher) and (candidates scoring at least as high), whatever the
    # tie-break, so HR@K lies between the shares of users with a hit in the worst and best case
    test = mi_small.test.unique(["user_id", "item_id"])
    users = sorted(set(ranking_queries(mi_small, "full", max_users=60).users))
    history = mi_small.interactions.filter(pl.col("split") != "test")
    catalogue = sorted(mi_small.interactions["item_id"].unique().to_list())
    for name, model in models.items():
        best_hits, worst_hits = {5: 0, 10: 0}, {5: 0, 10: 0}
        for user in users:
            seen = set(history.filter(pl.col("user_id") == user)["item_id"])
            items = [i for i in catalogue if i not in seen]
            scores = score_pairs(model, [user] * len(items), items)
            mine = set(test.filter(pl.col("user_id") == user)["item_id"])
            relevant = np.array([i in mine for i in items])
            best = [1 + int((scores > s).sum()) for s in scores[relevant]]
            worst = [int((scores >= s).sum()) for s in scores[relevant]]
            for k in (5, 10):
                best_hits[k] += min(best) <= k
                worst_hits[k] += min(worst) <= k
        row = table.filter((pl.col("model") == name) & (pl.col("protocol") == "full")).row(0, named=True)
        assert row["queries"] == len(users)
        for k in (5, 10):
            assert worst_hits[k] / len(users) <= row[f"hr@{k}"] <= best_hits[k] / len(users), (name, k)


# -- where each explanation came from (issue 15) -------------------------------------------------

@pytest.fixture(scope="module")
def no_sentence_item(mi_small):
    """The least reviewed item of the slice: its training explanations are blanked below."""
    counts = mi_small.train.group_by("item_id").len().sort(["len", "item_id"])
    return counts["item_id"][0]


@pytest.fixture(scope="module")
def explained(mi_small, no_sentence_item):
    """mi_small with no explanation sentence about `no_sentence_item` in training (its reviews and
    ratings stay), and `retrieval` fitted on it."""
    from feedbackgen.models import create

    blank = (pl.col("item_id") == no_sentence_item) & (pl.col("split") == "train")
    df = mi_small.interactions.with_columns(pl.when(blank).then(None).otherwise(pl.col("explanation"))
                                            .alias("explanation"))
    ds = Dataset(df, mi_small.items, manifest=mi_small.manifest)
    return ds, create("retrieval").fit(ds)


def test_retrieval_explanations_are_about_the_recommended_item(explained, no_sentence_item):
    ds, retrieval = explained
    users = known_test_users(ds, 12)
    recs = recommend(retrieval, ds, users, k=10, candidates=sorted(ds.interactions["item_id"].unique()),
                     exclude="none")
    assert set(recs["provenance"]) == {"copied", "none"}
    copied = recs.filter(pl.col("provenance") == "copied")
    # each copied text is the training explanation of the recommended item, by another user
    train = {(u, i): t for u, i, t in ds.train.select("user_id", "item_id", "explanation").iter_rows()}
    for r in copied.iter_rows(named=True):
        assert r["source_item"] == r["item_id"] and r["source_user"] != r["user_id"]
        assert train[(r["source_user"], r["source_item"])] == r["text"]
        assert r["source"] == f"copied: {r['source_user']}'s review"
    # the item with no sentence about it is said to have none, never explained by another item's
    none = recs.filter(pl.col("provenance") == "none")
    assert none["item_id"].unique().to_list() == [no_sentence_item] and len(none) == len(users)
    assert set(none["text"]) == {""} and set(none["source"]) == {"none: no sentence about this item"}


class Generic:
    """A real-shaped generator that says the same generic sentence about every third item."""

    name = "generic"
    produces_text = True

    def predict_rating(self, requests):
        return np.array([float(1 + sum(map(ord, r.item_id)) % 5) for r in requests])

    def generate(self, requests, decoding=None):
        from feedbackgen.types import GENERATED, Feedback, provenance

        ratings = self.predict_rating(requests)
        return [Feedback(r.user_id, r.item_id, float(rt),
                         "great product" if sum(map(ord, r.item_id)) % 3 == 0 else f"about {r.item_id}",
                         model=self.name, meta=provenance(GENERATED)) for r, rt in zip(requests, ratings)]


def test_repeated_texts_within_a_users_list_are_flagged(mi_small):
    users = known_test_users(mi_small, 6)
    recs = recommend(Generic(), mi_small, users, k=10)
    expected = []
    for user in users:
        texts = recs.filter(pl.col("user_id") == user)["text"].to_list()
        expected += [texts.count(t) > 1 for t in texts]
    assert recs["repeated"].to_list() == expected and any(expected) and not all(expected)
    assert set(recs.filter(pl.col("repeated"))["text"]) == {"great product"}
    assert set(recs["source"]) == {"generated"}


def test_cli_recommend_shows_where_each_text_came_from(explained, no_sentence_item, tmp_path):
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    ds, retrieval = explained
    ds.save(tmp_path / "ds")
    retrieval.save(tmp_path / "model")
    user = known_test_users(ds, 1)[0]
    candidates = sorted(ds.interactions["item_id"].unique())[:6]
    candidates = sorted(set(candidates) | {no_sentence_item})
    (tmp_path / "items.txt").write_text("\n".join(candidates) + "\n")
    args = ["recommend", str(tmp_path / "model"), "--dataset", str(tmp_path / "ds"), "--candidates",
            str(tmp_path / "items.txt"), "--k", "7"]
    res = CliRunner().invoke(app, [*args, "--user", user], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "source" in res.output and "(none: no sentence about this item)" in res.output
    recs = recommend(retrieval, ds, [user], k=7, candidates=candidates)
    for r in recs.filter(pl.col("provenance") == "copied").iter_rows(named=True):
        assert f"copied: {r['source_user']}'s review" in res.output
    (tmp_path / "users.txt").write_text(f"{user}\n")
    res = CliRunner().invoke(app, [*args, "--users", str(tmp_path / "users.txt"), "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "r.parquet").select(recs.columns).equals(recs)


# -- a new user's trial of the command line (issue 15) ---------------------------------------------

@pytest.fixture(scope="module")
def cli_folders(mi_small, popular, tmp_path_factory):
    """The slice, `popular` in a folder of its own name, and a popularity choice model in `pop`."""
    root = tmp_path_factory.mktemp("cli")
    mi_small.save(root / "ds")
    popular.save(root / "popular")
    Popularity().fit(mi_small).save(root / "pop")
    return root


def test_cli_unknown_user_fails_alike_with_or_without_candidates(mi_small, cli_folders, tmp_path):
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    root = cli_folders
    args = ["recommend", str(root / "popular"), "--dataset", str(root / "ds"), "--k", "3"]
    (tmp_path / "cands.txt").write_text("\n".join(sorted(mi_small.train["item_id"].unique())[:5]) + "\n")
    for extra in ([], ["--candidates", str(tmp_path / "cands.txt")]):
        res = CliRunner().invoke(app, [*args, *extra, "--user", "NOSUCH"])
        assert res.exit_code == 1 and isinstance(res.exception, FeedbackgenError), (extra, res.output)
        message = str(res.exception)
        assert "unknown user 'NOSUCH'" in message and "\n" not in message and "top 0" not in res.output
    # through `main`, as a shell runs it: exit 1 and one line on stderr, even at 80 columns
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "feedbackgen.cli", *args, "--candidates", str(tmp_path / "cands.txt"),
                           "--user", "NOSUCH"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert done.stderr.startswith("error: unknown user 'NOSUCH'") and done.stderr.count("\n") == 1, done.stderr
    # a batch reports and skips unknown users, but a batch of nobody the model knows fails
    (tmp_path / "ghosts.txt").write_text("NOSUCH\nNOBODY\n")
    res = CliRunner().invoke(app, [*args, "--users", str(tmp_path / "ghosts.txt"),
                                   "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 1 and "none of its 2 user(s)" in str(res.exception) and "'NOBODY'" in str(res.exception)
    assert not (tmp_path / "r.parquet").exists()


def test_cli_names_the_ranker_once_and_the_candidates_with_one_decimal(mi_small, cli_folders):
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    root = cli_folders
    user = known_test_users(mi_small, 1)[0]
    # a choice model ranks, the generator explains: both named, the folder only where it differs
    res = CliRunner().invoke(app, ["recommend", str(root / "popular"), "--choice", str(root / "pop"), "--dataset",
                                   str(root / "ds"), "--user", user, "--k", "3", "--no-explain"],
                             env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert f"top 3 for {user} (popular + popularity (pop); exclude=train+valid)" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["recommend", str(root / "popular"), "--dataset", str(root / "ds"),
                                   "--evaluate", "--max-users", "20"])
    assert res.exit_code == 0, res.output
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line.strip("|").split("|")
            for line in res.output.splitlines() if line.startswith("| ")}
    assert ("popular", "full") in rows and not any("(popular)" in model for model, _ in rows)
    table = evaluate_ranking({"popular": Popularity().fit(mi_small)}, mi_small, max_users=20)
    for protocol in ("full", "sampled"):
        mean_length = table.filter(pl.col("protocol") == protocol)["candidates"][0]
        assert rows[("popular", protocol)][3].strip() == f"{mean_length:.1f}"


# -- the one top-k ranking ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def rankers(mi_small):
    from feedbackgen.recommend import create_choice

    return {name: create_choice(name, {"search": False}).fit(mi_small) for name in ("ease", "itemknn", "als")}


def test_top_k_masks_by_split_and_names_the_mask(mi_small, rankers):
    from feedbackgen.recommend import top_k

    ease, user = rankers["ease"], known_test_users(mi_small, 1)[0]
    mine = mi_small.interactions.filter(pl.col("user_id") == user)
    for exclude, splits in (("none", ()), ("train", ("train",)), ("train+valid", ("train", "valid")),
                            ("all", ("train", "valid", "test"))):
        recs = top_k(ease, [user], 25, exclude=exclude, dataset=mi_small)
        masked = set(mine.filter(pl.col("split").is_in(list(splits)))["item_id"])
        assert recs["exclude"].unique().to_list() == [exclude]
        assert not masked & set(recs["item_id"]) and len(recs) == len(set(ease.item_ids) - masked)
    with pytest.raises(FeedbackgenError, match="exclude='valid' is not one of"):
        top_k(ease, [user], 5, exclude="valid", dataset=mi_small)
    # ChoiceModel.recommend is the same ranking on the model's own items
    assert ease.recommend([user], 5).drop("exclude").equals(
        top_k(ease, [user], 5, exclude="train", dataset=mi_small).drop("exclude"))


def test_a_visitors_history_is_scored_from_and_never_recommended_back(mi_small, rankers):
    from feedbackgen.recommend import top_k

    user = known_test_users(mi_small, 1)[0]
    train_items = sorted(mi_small.train.filter(pl.col("user_id") == user)["item_id"])
    popular_list = top_k(rankers["ease"], ["visitor"], 5, dataset=mi_small)
    counts = Popularity().fit(mi_small).count(popular_list["item_id"].to_list())
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)  # nobody known, no history: popularity
    for name, model in rankers.items():
        visitor = top_k(model, ["visitor"], 5, dataset=mi_small, history={"visitor": train_items})
        assert not set(train_items) & set(visitor["item_id"]), name
        assert visitor["item_id"].to_list() != popular_list["item_id"].to_list(), name
        # a visitor with the known user's train items gets that user's list (factor models: nearly)
        known = top_k(model, [user], 5, exclude="train", dataset=mi_small)
        same = len(set(visitor["item_id"]) & set(known["item_id"]))
        assert same == 5 if name != "als" else same >= 4, (name, visitor, known)


def test_factor_fold_in_recovers_a_users_trained_scores(mi_small, rankers):
    als = rankers["als"]
    users = known_test_users(mi_small, 5)
    rows = als.user_rows(users)
    folded, trained = als.score_history(als.seen[rows]), als.dense(rows)
    assert all(np.corrcoef(f, t)[0, 1] > 0.99 for f, t in zip(folded, trained))


def test_hybrid_scores_a_visitor_through_its_collaborative_part(mi_small):
    from feedbackgen.recommend import create_choice, top_k

    hybrid = create_choice("hybrid", {"search": False, "base": "ease", "base_config": {"search": False}}).fit(mi_small)
    assert hybrid.folds_history
    user = known_test_users(mi_small, 1)[0]
    train_items = sorted(mi_small.train.filter(pl.col("user_id") == user)["item_id"])
    visitor = top_k(hybrid, ["visitor"], 5, dataset=mi_small, history={"visitor": train_items})
    known = top_k(hybrid, [user], 5, exclude="train", dataset=mi_small)
    assert visitor["item_id"].to_list() == known["item_id"].to_list()
    assert visitor["score"].to_list() == pytest.approx(known["score"].to_list())
