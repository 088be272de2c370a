"""The canonical `Dataset`: a folder of Parquet tables plus a manifest of how it was made.

    DATASET/
      interactions.parquet   user_id, item_id, rating, text, summary, timestamp, split, [extras]
      items.parquet          item_id, title, brand, categories, price, description   (optional)
      users.parquet          user_id, ...                                             (optional)
      manifest.json          source, row counts, every preprocessing step with its counts, hashes

Extra interaction columns written by `prepare`: `aspect`, `explanation`, `sentiment` (the
PETER-style explanation target, see `feedbackgen.data.aspects`).

Not every dataset has text or ratings: MovieLens has ratings and no text, the lightgcn layout only
says who chose what (`rating` null). `has_text` / `has_ratings` say which; `require` is how a model
refuses, in one line, a dataset without what it learns from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.errors import ConfigError, DataError
from feedbackgen.io import atomic_write, atomic_write_json, sha256_file

SPLITS = ("train", "valid", "test")

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "rating": pl.Float64,
    "text": pl.Utf8,
    "summary": pl.Utf8,
    "timestamp": pl.Int64,
    "split": pl.Utf8,
}
EXTRA_INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "aspect": pl.Utf8,
    "explanation": pl.Utf8,
    "sentiment": pl.Int8,
}
ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "brand": pl.Utf8,
    "categories": pl.List(pl.Utf8),
    "price": pl.Float64,
    "description": pl.Utf8,
}
MANIFEST_VERSION = 1


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType], table: str,
            optional: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Cast `df` to `schema` (adding missing nullable columns), keeping extra columns after them."""
    required = {"interactions": ("user_id", "item_id"), "items": ("item_id",), "users": ("user_id",)}
    for name in required.get(table, ()):
        if name not in df.columns:
            raise DataError(f"{table} table has no {name!r} column (columns: {', '.join(df.columns)})")
    cols = []
    known = {**schema, **(optional or {})}
    for name, dtype in schema.items():
        cols.append(pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype).alias(name))
    for name in df.columns:
        if name not in schema:
            cols.append(pl.col(name).cast(known[name]) if name in known else pl.col(name))
    return df.select(cols)


@dataclass
class Dataset:
    interactions: pl.DataFrame
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)  # the folder it was loaded from

    def __post_init__(self):
        self.interactions = conform(self.interactions, INTERACTION_SCHEMA, "interactions",
                                    EXTRA_INTERACTION_SCHEMA)
        if self.items is not None:
            self.items = conform(self.items, ITEM_SCHEMA, "items")
        if self.users is not None:
            self.users = conform(self.users, {"user_id": pl.Utf8}, "users")

    # -- views -------------------------------------------------------------------------------
    def split(self, name: str) -> pl.DataFrame:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        if self.interactions["split"].null_count() == len(self.interactions):
            raise DataError("this dataset has no split column yet; run `feedbackgen prepare` with --split")
        return self.interactions.filter(pl.col("split") == name)

    @property
    def train(self) -> pl.DataFrame:
        return self.split("train")

    @property
    def valid(self) -> pl.DataFrame:
        return self.split("valid")

    @property
    def test(self) -> pl.DataFrame:
        return self.split("test")

    @property
    def has_explanations(self) -> bool:
        return "explanation" in self.interactions.columns

    @property
    def has_text(self) -> bool:
        """Whether any interaction has review text (not blank)."""
        text = self.interactions["text"]
        return bool((text.str.strip_chars().str.len_chars() > 0).any())

    @property
    def has_ratings(self) -> bool:
        """Whether any interaction has a rating (lightgcn data has none: implicit feedback)."""
        return self.interactions["rating"].count() > 0

    def require(self, model: str, *, text: bool = False, ratings: bool = False) -> None:
        """Raise `DataError` (one line) when `model` needs text or ratings that this dataset lacks."""
        name = str(self.path) if self.path is not None else "this dataset"
        if text and not self.has_text:
            kind = "ratings-only" if self.has_ratings else "interactions only, no ratings"
            alternatives = "a choice model such as `--model ease`" + (", or `--model mf`" if self.has_ratings else "")
            raise DataError(f"{model} needs review text; {name} has none ({kind}: try {alternatives})")
        if ratings and not self.has_ratings:
            raise DataError(f"{model} needs ratings; {name} has none (implicit feedback: each row only says the "
                            "user chose the item; try a choice model such as `--model ease`)")

    def summary(self) -> dict[str, Any]:
        df = self.interactions
        out: dict[str, Any] = {
            "interactions": len(df),
            "users": df["user_id"].n_unique(),
            "items": df["item_id"].n_unique(),
        }
        if df["split"].null_count() < len(df):
            out["splits"] = {s: int((df["split"] == s).sum()) for s in SPLITS}
        if self.items is not None:
            out["item_metadata_rows"] = len(self.items)
        return out

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the folder. Tables first (each atomically), the manifest last with their hashes."""
        self.manifest = write_dataset(
            Path(path), lambda p: self.interactions.write_parquet(p, compression="zstd", statistics=False),
            self.items, self.users, self.manifest, self.summary())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        path = Path(path)
        manifest_path = path / "manifest.json"
        inter_path = path / "interactions.parquet"
        if not inter_path.exists():
            raise DataError(f"{path} is not a feedbackgen dataset (no interactions.parquet); "
                            "make one with `feedbackgen prepare`")
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        opt = {n: pl.read_parquet(path / f"{n}.parquet") if (path / f"{n}.parquet").exists() else None
               for n in ("items", "users")}
        return cls(pl.read_parquet(inter_path), opt["items"], opt["users"], manifest, path=path)


def write_dataset(path: Path, write_interactions: Callable[[Path], None], items: pl.DataFrame | None,
                  users: pl.DataFrame | None, manifest: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The one writer of a dataset folder (`Dataset.save`, and `prepare_to` for tables larger than
    memory): interactions.parquet by `write_interactions(path)`, the item and user tables (a
    missing one removed), each atomically, then manifest.json with `summary` and the tables'
    hashes. Returns the manifest written."""
    path.mkdir(parents=True, exist_ok=True)
    target = path / "interactions.parquet"
    atomic_write(target, write_interactions)
    hashes = {target.name: sha256_file(target)}
    for name, df in (("items", items), ("users", users)):
        target = path / f"{name}.parquet"
        if df is None:
            target.unlink(missing_ok=True)
            continue
        df = conform(df, ITEM_SCHEMA if name == "items" else {"user_id": pl.Utf8}, name)
        atomic_write(target, lambda p, df=df: df.write_parquet(p, compression="zstd", statistics=False))
        hashes[target.name] = sha256_file(target)
    manifest = {**manifest, "manifest_version": MANIFEST_VERSION, "summary": summary, "hashes": hashes}
    atomic_write_json(path / "manifest.json", manifest)
    return manifest
