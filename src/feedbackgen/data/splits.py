"""Train / valid / test splits, and the cold-start rule applied after them.

- `random`: PETER's protocol. Row positions (in source order) are shuffled with
  `random.Random(seed).shuffle`; the first int(0.8 n) are train, the next int(0.1 n) valid, the
  rest test. On the shared PETER data this reproduces its `1/*.index` files exactly.
- `temporal`: per user, in time order, the latest review is test and the second latest valid,
  for users with at least 3 reviews; everything else is train.
- `peter`: read from PETER index files (positions in the source, see `peter_format.read_index`).
- `files`: the split the source's files give (the lightgcn layout's train/valid/test.txt).

Cold start: a valid/test row whose user or item never occurs in train cannot be scored by an
ID-based model. `move_cold_to_train` moves such rows to train (as PETER's data preparation
does), one at a time in source order, so only the first row of an unseen user or item moves.
"""

from __future__ import annotations

import random
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.data.dataset import SPLITS
from feedbackgen.data.peter_format import read_index
from feedbackgen.errors import DataError

SPLIT_METHODS = ("random", "temporal", "peter", "files")  # files: the source's own (lightgcn)
TEMPORAL_MIN_REVIEWS = 3


def random_split(n: int, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[str]:
    """The split of each of `n` row positions."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train, n_valid = int(ratios[0] * n), int(ratios[1] * n)
    split = [""] * n
    for rank, position in enumerate(order):
        split[position] = "train" if rank < n_train else "valid" if rank < n_train + n_valid else "test"
    return split


def random_split_codes(n: int, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """`random_split` as one byte per position (0 train, 1 valid, 2 test), for millions of rows:
    the same shuffle (`random.shuffle`'s loop, drawing from the same generator) on a packed array
    instead of a list of Python ints."""
    order = array("l", range(n))
    randbelow = random.Random(seed)._randbelow
    for i in reversed(range(1, n)):
        j = randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    n_train, n_valid = int(ratios[0] * n), int(ratios[1] * n)
    positions = np.frombuffer(order, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    codes = np.full(n, 2, dtype=np.int8)
    codes[positions[:n_train]] = 0
    codes[positions[n_train:n_train + n_valid]] = 1
    return codes


SPLIT_CODES = ("train", "valid", "test")


def temporal_rows(ids: pl.LazyFrame) -> tuple[pl.Series, pl.Series]:
    """`temporal_split` over a table too big for memory (user_id, timestamp, source_row): the
    source rows that are test and those that are valid. Kept per user: two rows."""
    if ids.select(pl.col("timestamp").is_not_null().any()).collect(engine="streaming").item() is False:
        raise DataError("the temporal split needs timestamps, and this source has none; use --split random")
    # The latest is the largest (timestamp, source_row), a missing timestamp counting as the oldest.
    last = (ids.group_by("user_id")
            .agg(pl.len().alias("n"),
                 pl.col("source_row").sort_by(["timestamp", "source_row"], nulls_last=False).tail(2).alias("rows"))
            .filter(pl.col("n") >= TEMPORAL_MIN_REVIEWS)
            .select(pl.col("rows").list.get(1).alias("test"), pl.col("rows").list.get(0).alias("valid"))
            .collect(engine="streaming"))
    return last["test"], last["valid"]


def temporal_split(df: pl.DataFrame) -> pl.Series:
    """Per user: latest → test, second latest → valid (users with ≥ 3 reviews); ties by source order."""
    if df.height and df["timestamp"].null_count() == df.height:
        raise DataError("the temporal split needs timestamps, and this source has none; use --split random")
    ranked = (
        df.select("user_id", "timestamp", "source_row")
        .sort(["user_id", "timestamp", "source_row"], nulls_last=False)
        .with_columns(
            n=pl.len().over("user_id"),
            from_end=pl.int_range(pl.len(), 0, -1).over("user_id") - 1,
        )
        .with_columns(
            split=pl.when((pl.col("n") >= TEMPORAL_MIN_REVIEWS) & (pl.col("from_end") == 0)).then(pl.lit("test"))
            .when((pl.col("n") >= TEMPORAL_MIN_REVIEWS) & (pl.col("from_end") == 1)).then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
        )
    )
    by_row = dict(zip(ranked["source_row"], ranked["split"]))
    return pl.Series("split", [by_row[r] for r in df["source_row"]], dtype=pl.Utf8)


def index_split(df: pl.DataFrame, folder: str | Path, n_source_rows: int) -> pl.Series:
    """The split of each row from PETER index files over source positions (null: in no file)."""
    split = read_index(Path(folder), n_source_rows)
    if split is None:
        raise DataError(f"{folder} is not a folder of index files (train.index, validation.index, test.index)")
    return split.gather(df["source_row"].to_list())


def assign_split(df: pl.DataFrame, method: str, *, seed: int = 1,
                 ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> pl.DataFrame:
    """`df` (in source order) with its `split` column set by `method` ("random" or "temporal")."""
    if method == "random":
        return df.with_columns(pl.Series("split", random_split(df.height, seed, ratios), dtype=pl.Utf8))
    if method == "temporal":
        return df.with_columns(temporal_split(df))
    raise ValueError(f"unknown split {method!r}; expected one of {', '.join(SPLIT_METHODS)}")


def split_sizes(df: pl.DataFrame) -> dict[str, int]:
    return {s: int((df["split"] == s).sum()) for s in SPLITS}


def cold_start_counts_lazy(df: pl.LazyFrame) -> dict[str, dict[str, int]]:
    """`cold_start_counts` over a table too big for memory; memory holds the train ids."""
    train = df.filter(pl.col("split") == "train")
    users = train.select(pl.col("user_id").unique()).collect(engine="streaming")["user_id"].implode()
    items = train.select(pl.col("item_id").unique()).collect(engine="streaming")["item_id"].implode()
    cold_user, cold_item = ~pl.col("user_id").is_in(users), ~pl.col("item_id").is_in(items)
    counts = (df.filter(pl.col("split").is_in(["valid", "test"]))
              .group_by("split").agg(
                  rows_with_unseen_user=cold_user.sum(),
                  rows_with_unseen_item=cold_item.sum(),
                  rows_cold=(cold_user | cold_item).sum(),
                  unseen_users=pl.col("user_id").filter(cold_user).n_unique(),
                  unseen_items=pl.col("item_id").filter(cold_item).n_unique())
              .collect(engine="streaming"))
    by_split = {row.pop("split"): row for row in counts.iter_rows(named=True)}
    zero = dict.fromkeys(("rows_with_unseen_user", "rows_with_unseen_item", "rows_cold", "unseen_users",
                          "unseen_items"), 0)
    return {name: {k: int(v) for k, v in by_split.get(name, zero).items()} for name in ("valid", "test")}


def cold_rows_to_move(df: pl.LazyFrame) -> tuple[set[int], dict[str, int]]:
    """`move_cold_to_train` over a table too big for memory: the source rows it moves, and how
    many from each split. Memory holds the train ids and the cold rows (a small share)."""
    train = df.filter(pl.col("split") == "train")
    users = train.select(pl.col("user_id").unique()).collect(engine="streaming")["user_id"].implode()
    items = train.select(pl.col("item_id").unique()).collect(engine="streaming")["item_id"].implode()
    candidates = (
        df.filter(pl.col("split").is_in(["valid", "test"]))
        .with_columns(user_known=pl.col("user_id").is_in(users), item_known=pl.col("item_id").is_in(items))
        .filter(~pl.col("user_known") | ~pl.col("item_known"))
        .select("source_row", "user_id", "item_id", "split", "user_known", "item_known")
        .collect(engine="streaming").sort("source_row")
    )
    moved: dict[str, int] = {"valid": 0, "test": 0}
    rows, added_users, added_items = set(), set(), set()
    for row, user, item, split, user_known, item_known in candidates.iter_rows():
        # the same walk as move_cold_to_train: ids of rows moved before count as seen in train
        if not (user_known or user in added_users) or not (item_known or item in added_items):
            rows.add(row)
            moved[split] += 1
            added_users.add(user)
            added_items.add(item)
    return rows, moved


def cold_start_counts(df: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Per evaluation split: rows (and distinct ids) whose user or item never occurs in train."""
    train = df.filter(pl.col("split") == "train")
    users, items = train["user_id"].unique(), train["item_id"].unique()
    out = {}
    for name in ("valid", "test"):
        part = df.filter(pl.col("split") == name)
        cold_user = ~part["user_id"].is_in(users)
        cold_item = ~part["item_id"].is_in(items)
        out[name] = {
            "rows_with_unseen_user": int(cold_user.sum()),
            "rows_with_unseen_item": int(cold_item.sum()),
            "rows_cold": int((cold_user | cold_item).sum()),
            "unseen_users": part.filter(cold_user)["user_id"].n_unique(),
            "unseen_items": part.filter(cold_item)["item_id"].n_unique(),
        }
    return out


def move_cold_to_train(df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Move valid/test rows with a user or item unseen in train to train, in row order.
    Returns the new frame and how many rows moved from each split."""
    train = df.filter(pl.col("split") == "train")
    users, items = set(train["user_id"].to_list()), set(train["item_id"].to_list())
    candidates = (
        df.with_row_index("_pos")
        .filter(pl.col("split").is_in(["valid", "test"])
                & (~pl.col("user_id").is_in(list(users)) | ~pl.col("item_id").is_in(list(items))))
        .select("_pos", "user_id", "item_id", "split")
    )
    moved: dict[str, int] = {"valid": 0, "test": 0}
    positions = []
    for pos, user, item, split in candidates.iter_rows():
        if user not in users or item not in items:
            positions.append(pos)
            moved[split] += 1
            users.add(user)
            items.add(item)
    if positions:
        split = df["split"].to_list()
        for pos in positions:
            split[pos] = "train"
        df = df.with_columns(pl.Series("split", split, dtype=pl.Utf8))
    return df, moved


def apply_cold_start(df: pl.DataFrame, mode: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Apply the cold-start rule ("move_to_train" or "keep"); always report the counts."""
    before = cold_start_counts(df)
    record: dict[str, Any] = {"cold_start": mode, "cold_before": before}
    if mode == "move_to_train":
        df, moved = move_cold_to_train(df)
        record["moved_to_train"] = moved
        record["cold_after"] = cold_start_counts(df)
    elif mode != "keep":
        raise ValueError(f"unknown cold_start {mode!r}; expected move_to_train or keep")
    return df, record
