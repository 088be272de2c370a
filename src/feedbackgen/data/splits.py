"""Train / valid / test splits, and the cold-start rule applied after them.

docs/preparation.md ("Step order, splits and cold start") defines each split for users; the definitions here are those.

- `random`: PETER's protocol. Row positions (in source order) are shuffled with
  `random.Random(seed).shuffle`; the first int(0.8 n) are train, the next int(0.1 n) valid, the
  rest test. On the shared PETER data this reproduces its `1/*.index` files exactly.
- `temporal`: per user, in time order, the latest review is test and the second latest valid,
  for users with at least 3 reviews; everything else is train.
- `peter`: read from PETER index files (positions in the source, see `peter_format.read_index`).
- `files`: the split the source's files give (the lightgcn layout's train/valid/test.txt).

Cold start: a valid/test row whose user or item never occurs in train cannot be scored by an
ID-based model. `cold_rows_to_move` finds the rows `move_to_train` moves (as PETER's data
preparation does): one at a time in source order, so only the first row of an unseen user or
item moves.

Each function takes a polars LazyFrame (a DataFrame works too: it is made lazy), reads only the
columns it needs with the streaming engine, and keeps per-id state, so the same function serves
a ten-row test table and a table larger than memory.
"""

from __future__ import annotations

import random
from array import array

import numpy as np
import polars as pl

from feedbackgen.data.dataset import SPLITS
from feedbackgen.errors import DataError

SPLIT_METHODS = ("random", "temporal", "peter", "files")  # files: the source's own (lightgcn)
SPLIT_CODES = ("train", "valid", "test")  # the meaning of `random_split_codes`' bytes
TEMPORAL_MIN_REVIEWS = 3


def random_split_codes(n: int, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """The split of each of `n` row positions as one byte each (0 train, 1 valid, 2 test; see
    `SPLIT_CODES`), shape (n,), dtype int8.

    The positions are shuffled by `random.Random(seed).shuffle` (Python's documented Fisher-Yates
    over Mersenne Twister); the first int(ratios[0] n) are train, the next int(ratios[1] n) valid,
    the rest test. This is PETER's `data.py` split, kept bit-exact rather than replaced by a numpy
    permutation because the published PETER index files (`1/*.index` of its datasets) are
    reproduced by it and tested against. The shuffle runs on a packed `array` of positions
    (8 bytes a row) rather than a list of Python ints (some 36 bytes a row), for millions of rows."""
    order = array("q", range(n))
    random.Random(seed).shuffle(order)
    n_train, n_valid = int(ratios[0] * n), int(ratios[1] * n)
    positions = np.frombuffer(order, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    codes = np.full(n, 2, dtype=np.int8)
    codes[positions[:n_train]] = 0
    codes[positions[n_train:n_train + n_valid]] = 1
    return codes


def temporal_rows(ids: pl.LazyFrame | pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """The temporal split of `ids` (user_id, timestamp, source_row): the source rows that are
    test and those that are valid; every other row is train. Per user with at least
    `TEMPORAL_MIN_REVIEWS` rows, the latest (largest (timestamp, source_row), a missing timestamp
    counting as the oldest) is test and the one before it valid. Memory: two rows per user.
    Raises DataError when no row has a timestamp."""
    ids = ids.lazy()
    if ids.select(pl.col("timestamp").is_not_null().any()).collect(engine="streaming").item() is False:
        raise DataError("the temporal split needs timestamps, and this source has none; use --split random")
    last = (ids.group_by("user_id")
            .agg(pl.len().alias("n"),
                 pl.col("source_row").sort_by(["timestamp", "source_row"], nulls_last=False).tail(2).alias("rows"))
            .filter(pl.col("n") >= TEMPORAL_MIN_REVIEWS)
            .select(pl.col("rows").list.get(1).alias("test"), pl.col("rows").list.get(0).alias("valid"))
            .collect(engine="streaming"))
    return last["test"], last["valid"]


def split_sizes(table: pl.LazyFrame | pl.DataFrame) -> dict[str, int]:
    """Rows per split, {"train": n, "valid": n, "test": n} (0 for an absent split)."""
    counts = dict(table.lazy().group_by("split").len().collect(engine="streaming").iter_rows())
    return {s: int(counts.get(s, 0)) for s in SPLITS}


def _train_ids(table: pl.LazyFrame) -> tuple[pl.Series, pl.Series]:
    train = table.filter(pl.col("split") == "train")
    users = train.select(pl.col("user_id").unique()).collect(engine="streaming")["user_id"]
    items = train.select(pl.col("item_id").unique()).collect(engine="streaming")["item_id"]
    return users, items


def cold_start_counts(table: pl.LazyFrame | pl.DataFrame) -> dict[str, dict[str, int]]:
    """Per evaluation split ("valid", "test"): rows whose user (item) never occurs in train,
    rows with either, and the distinct unseen users and items. Memory holds the train ids."""
    table = table.lazy()
    users, items = _train_ids(table)
    cold_user, cold_item = ~pl.col("user_id").is_in(users.implode()), ~pl.col("item_id").is_in(items.implode())
    counts = (table.filter(pl.col("split").is_in(["valid", "test"]))
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


def cold_rows_to_move(table: pl.LazyFrame | pl.DataFrame) -> tuple[set[int], dict[str, int]]:
    """The cold-start rule `move_to_train`: the source rows it moves from valid/test to train, and
    how many from each split ({"valid": n, "test": n}). Walks the cold rows in source order; a row
    moves when its user or its item is unseen in train *or in the rows moved before it*, so only
    the first row of an unseen user or item moves. Memory holds the train ids and the cold rows."""
    table = table.lazy()
    users, items = _train_ids(table)
    candidates = (
        table.filter(pl.col("split").is_in(["valid", "test"]))
        .with_columns(user_known=pl.col("user_id").is_in(users.implode()),
                      item_known=pl.col("item_id").is_in(items.implode()))
        .filter(~pl.col("user_known") | ~pl.col("item_known"))
        .select("source_row", "user_id", "item_id", "split", "user_known", "item_known")
        .collect(engine="streaming").sort("source_row")
    )
    moved: dict[str, int] = {"valid": 0, "test": 0}
    rows, added_users, added_items = set(), set(), set()
    for row, user, item, split, user_known, item_known in candidates.iter_rows():
        if not (user_known or user in added_users) or not (item_known or item in added_items):
            rows.add(row)
            moved[split] += 1
            added_users.add(user)
            added_items.add(item)
    return rows, moved
