import polars as pl
import pytest

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError
from feedbackgen.io import sha256_file


def test_save_load_roundtrip_is_byte_stable(mi_small, tmp_path):
    a = mi_small.save(tmp_path / "a")
    b = Dataset.load(a).save(tmp_path / "b")
    assert sha256_file(a / "interactions.parquet") == sha256_file(b / "interactions.parquet")
    again = Dataset.load(b)
    assert again.interactions.equals(mi_small.interactions)
    manifest = again.manifest
    assert manifest["hashes"]["interactions.parquet"] == sha256_file(b / "interactions.parquet")
    assert manifest["summary"]["interactions"] == len(mi_small.interactions)


def test_schema_is_enforced():
    with pytest.raises(DataError, match="no 'item_id' column"):
        Dataset(pl.DataFrame({"user_id": ["u"]}))
    ds = Dataset(pl.DataFrame({"user_id": ["u"], "item_id": [1], "rating": [5]}))
    assert ds.interactions.schema["item_id"] == pl.Utf8
    assert ds.interactions.schema["rating"] == pl.Float64
    with pytest.raises(DataError, match="no split column"):
        ds.train


def test_loading_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="feedbackgen prepare"):
        Dataset.load(tmp_path)
