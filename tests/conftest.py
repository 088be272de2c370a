import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from feedbackgen.data.paths import data_dir, fixtures_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_root():
    root = data_dir()
    if not root.is_dir():
        pytest.fail(f"shared data not found at {root}; set FEEDBACKGEN_DATA")
    return root


@pytest.fixture(scope="session")
def fixtures_root():
    root = fixtures_dir()
    if not root.is_dir():
        pytest.fail(f"shared fixtures not found at {root}; set FEEDBACKGEN_FIXTURES")
    return root


@pytest.fixture(scope="session")
def mi_dataset(data_root):
    """Musical Instruments 2014 5-core, prepared with the default pipeline (random 8:1:1, seed 1)."""
    from feedbackgen.data.prepare import prepare

    path = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    return prepare([path], "amazon2014", split="random", seed=1, progress=False)


@pytest.fixture(scope="session")
def mi_small(mi_dataset):
    """The rows of the 25 most-reviewed items: big enough to learn from, small enough to be quick."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    top = (mi_dataset.interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
           .head(25)["item_id"])
    return Dataset(mi_dataset.interactions.filter(pl.col("item_id").is_in(top.implode())), mi_dataset.items,
                   manifest=mi_dataset.manifest)
