import numpy as np
import pytest

from feedbackgen.errors import ConfigError, NotFittedError
from feedbackgen.batch import requests_from_split
from feedbackgen.models import create, load
from feedbackgen.types import FeedbackRequest


def rmse(model, dataset, split="test"):
    df = dataset.split(split)
    pred = model.predict_rating(requests_from_split(dataset, split))
    return float(np.sqrt(np.mean((pred - df["rating"].to_numpy()) ** 2)))


def test_rating_baselines_learn_something(mi_dataset):
    mean = rmse(create("global_mean").fit(mi_dataset), mi_dataset)
    bias = rmse(create("bias").fit(mi_dataset), mi_dataset)
    mf = rmse(create("mf").fit(mi_dataset), mi_dataset)
    # the global mean on this skewed data is hard to beat by much, but biases must not be worse
    assert 0.6 < mean < 1.2
    assert bias < mean and mf < mean


def test_bias_baseline_recovers_planted_biases():
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    rng = np.random.default_rng(0)
    users, items = [f"u{k}" for k in range(30)], [f"i{k}" for k in range(20)]
    bu, bi = rng.normal(0, 0.5, 30), rng.normal(0, 0.5, 20)
    rows = [(users[u], items[i], 3.0 + bu[u] + bi[i]) for u in range(30) for i in range(20)]
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "rating"], orient="row").with_columns(
        split=pl.lit("train"))
    model = create("bias", {"reg_user": 0.0, "reg_item": 0.0, "iterations": 50}).fit(Dataset(df))
    pred = model.predict_rating([FeedbackRequest(u, i) for u, i, _ in rows])
    assert np.allclose(pred, np.clip([r for *_, r in rows], *model.rating_range), atol=1e-6)


def test_mf_learns_planted_factors_through_the_trainer():
    """Ratings of rank-2 tastes: the factors must beat the biases on test, and training is the
    shared Trainer's (a log entry per epoch with the validation RMSE, early stopping on it)."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset
    from support import planted_rows

    rng = np.random.default_rng(1)
    items = [f"i{k}" for k in range(40)]
    rows = planted_rows([(f"u{k}", items) for k in range(80)], per_split=(20, 5, 5), seed=1)
    p, q = rng.normal(0, 0.8, (80, 2)), rng.normal(0, 0.8, (40, 2))
    for r in rows:
        u, i = int(r["user_id"][1:]), int(r["item_id"][1:])
        r["rating"] = float(3.0 + p[u] @ q[i] + rng.normal(0, 0.1))
    ds = Dataset(pl.DataFrame(rows).drop("k"))
    bias = rmse(create("bias").fit(ds), ds)
    mf = create("mf", {"lr": 0.05, "training.max_epochs": 200})
    assert (mf.config.training.lr, mf.config.training.max_epochs) == (0.05, 200)  # flat and dotted names
    mf.fit(ds)
    assert rmse(mf, ds) < 0.5 * bias
    log = mf.training_log
    assert [e["epoch"] for e in log] == list(range(1, len(log) + 1)) and len(log) <= 200
    assert log[-1]["valid"]["rmse"] < log[0]["valid"]["rmse"]
    assert all(e["valid"]["rmse"] == pytest.approx(e["valid"]["mse"] ** 0.5) for e in log)


def test_unfitted_model_says_what_to_call():
    with pytest.raises(NotFittedError, match="call fit"):
        create("popular").generate([FeedbackRequest("u", "i")])


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="factors"):
        create("mf", {"factors": 0})
    with pytest.raises(ConfigError, match="unknown model"):
        create("nope")


def test_a_misspelt_setting_is_named_with_what_was_meant():
    with pytest.raises(ConfigError, match=r"max_epoch: unknown setting \(did you mean 'max_epochs'\?\)"):
        create("peter", {"max_epoch": 2})
    with pytest.raises(ConfigError, match=r"zzzq: unknown setting \(known: preset, target"):
        create("peter", {"zzzq": 2})


def test_popular_returns_the_items_most_frequent_sentence(mi_small):
    model = create("popular").fit(mi_small)
    train = mi_small.train.drop_nulls("explanation")
    item = train["item_id"][0]
    texts = train.filter(train["item_id"] == item)["explanation"].to_list()
    counts = {t: texts.count(t) for t in texts}
    fb = model.generate([FeedbackRequest("someone", item)])[0]
    assert counts[fb.text] == max(counts.values())
    assert fb.model == "popular" and 1.0 <= fb.rating <= 5.0
    # copied from the earliest training review of the item with that sentence
    first = train.filter((train["item_id"] == item) & (train["explanation"] == fb.text)).row(0, named=True)
    assert (fb.meta["provenance"], fb.meta["source_user"], fb.meta["source_item"]) == ("copied", first["user_id"], item)
    # an unknown item has no sentence about it
    fb = model.generate([FeedbackRequest("someone", "never-seen")])[0]
    assert fb.text == "" and fb.meta["provenance"] == "none"


@pytest.fixture(scope="module")
def retrieval(mi_small):
    return create("retrieval").fit(mi_small)


def test_retrieval_picks_another_users_training_text_and_roundtrips(mi_small, retrieval, tmp_path):
    reqs = requests_from_split(mi_small, "test")[:50]
    out = retrieval.generate(reqs)
    pool = set(mi_small.train["explanation"].drop_nulls().to_list())
    assert all(fb.text in pool for fb in out)
    # asked about pairs it was trained on, it never hands back the pair's own review: test pairs are
    # absent from train by construction, so only training pairs can catch a copy of the answer
    train = mi_small.train.drop_nulls("explanation").head(200)
    asked = retrieval.generate([FeedbackRequest(u, i) for u, i in train.select("user_id", "item_id").iter_rows()])
    own = train["explanation"].to_list()
    assert not any(fb.text == text for fb, text in zip(asked, own))
    assert not any((fb.meta.get("source_user"), fb.meta.get("source_item")) == (fb.user_id, fb.item_id)
                   for fb in asked)
    # an explanation is the item's own sentence, by another user, and names the review it copied
    sentences = {(u, i): t for u, i, t in mi_small.train.select("user_id", "item_id", "explanation").iter_rows()}
    for fb in out:
        assert fb.meta["provenance"] == "copied" and fb.meta["source_item"] == fb.item_id
        assert fb.meta["source_user"] != fb.user_id and sentences[(fb.meta["source_user"], fb.item_id)] == fb.text
    retrieval.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "state.json"}
    again = load(tmp_path / "m").generate(reqs)
    assert [f.text for f in again] == [f.text for f in out]
    assert np.allclose([f.rating for f in again], [f.rating for f in out])


def test_retrieval_of_whole_reviews(mi_small):
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    items = mi_small.interactions["item_id"].unique().sort().head(3).implode()  # whole reviews embed slowly
    tiny = Dataset(mi_small.interactions.filter(pl.col("item_id").is_in(items)))
    model = create("retrieval", {"target": "review"}).fit(tiny)
    out = model.generate(requests_from_split(tiny, "test"))
    assert out and all(fb.text in set(tiny.train["text"].to_list()) for fb in out)
    # a whole review may come from the user's review of another item: the source says which
    reviews = {(u, i): t for u, i, t in tiny.train.select("user_id", "item_id", "text").iter_rows()}
    for fb in out:
        assert fb.meta["provenance"] == "copied" and reviews[(fb.meta["source_user"], fb.meta["source_item"])] == fb.text
    # nothing about the item nor by the user: the best of all texts, marked as a fallback
    fb = model.generate([FeedbackRequest("never-seen", "never-seen")], {"unknown_item": "generate"})[0]
    assert fb.meta["provenance"] == "fallback" and reviews[(fb.meta["source_user"], fb.meta["source_item"])] == fb.text


def test_retrieval_prefers_the_requested_aspect(mi_small, retrieval):
    train = mi_small.train.drop_nulls("aspect")
    user, item, aspect = train.select("user_id", "item_id", "aspect").row(0)
    fb = retrieval.generate([FeedbackRequest(user, item, aspect=aspect)])[0]
    assert fb.text in set(train.filter(train["aspect"] == aspect)["explanation"].to_list())


def test_unknown_users_and_items_fall_back(mi_small, retrieval):
    item = mi_small.train["item_id"][0]
    user = mi_small.train["user_id"][0]
    out = retrieval.generate([FeedbackRequest("never-seen", item), FeedbackRequest(user, "never-seen"),
                              FeedbackRequest("never-seen", "never-seen")])
    # a new user still gets the item's sentence; a new item has no sentence about it: an empty
    # explanation that says so, never the user's sentence about something else
    assert out[0].text and out[0].meta["provenance"] == "copied" and out[0].meta["source_item"] == item
    for fb in out[1:]:
        assert fb.text == "" and fb.meta == {"provenance": "none", "fallback": "no sentence about this item",
                                             "unknown_item": True}
    assert all(1.0 <= fb.rating <= 5.0 for fb in out)
