import polars as pl

from feedbackgen.features import Profiles, interaction_features


def test_user_features_match_the_training_rows(mi_dataset):
    profiles = Profiles.from_dataset(mi_dataset)
    train = mi_dataset.train
    user = train.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][0]
    mine = train.filter(pl.col("user_id") == user)
    row = profiles.users.filter(pl.col("user_id") == user).row(0, named=True)
    assert row["n_reviews"] == len(mine)
    assert abs(row["rating_mean"] - mine["rating"].mean()) < 1e-9
    latest = mine.sort("timestamp")["text"][-1]
    assert row["recent_reviews"][0] == latest
    text = profiles.profile_text(user)
    assert f"wrote {len(mine)} reviews" in text and latest[:40] in text


def test_item_text_uses_metadata_when_present(data_root):
    from feedbackgen.data.prepare import prepare

    d = data_root / "amazon_gift_cards_5core_2018"
    ds = prepare([d / "Gift_Cards_5.json.gz"], "amazon2018", meta=d / "meta_Gift_Cards.json.gz", progress=False)
    profiles = Profiles.from_dataset(ds)
    item = ds.train["item_id"][0]
    title = ds.items.filter(pl.col("item_id") == item)["title"][0]
    assert title and profiles.item_text(item).startswith(title)
    assert "no reviews" in profiles.profile_text("nobody")


def test_interaction_positions_follow_time(mi_dataset):
    df = interaction_features(mi_dataset.interactions)
    user = df["user_id"][0]
    mine = df.filter(pl.col("user_id") == user).sort("timestamp")
    assert mine["user_position"].to_list() == sorted(mine["user_position"].to_list())
    assert mine["user_position"][0] == 0
