"""Copies of one text: found, counted, kept once, and never on both sides of a split.

Amazon shows one review on every variant (size, colour, denomination) of a product, and the
dumps hold it once per variant: one user's identical text on several items. A random split then
puts the same sentence in train and in test, and a model that memorises looks excellent (on the
2018 Gift Cards 5-core, most test rows had their (user, text) in train). So `prepare`:

- finds groups of rows with the same user and the same *normalised* text (`normalised_text`:
  lower case, every run of characters other than letters and digits made one space, trimmed;
  empty texts are never copies);
- `copies=keep_one` (the default for review sources) keeps one row per group: the one on the
  item with the most reviews (the product's main listing, and the row least likely to be cold
  start), ties by the earliest timestamp (missing = latest), then by source order;
- `copies=keep_all` keeps them all, and the split keeps each group on one side: a group goes to
  train when any of its rows is in train after the split and the cold-start rule, else to the
  split of its first row in source order;
- `copies=report` keeps all and leaves the split as its method gives it — the default for the
  peter format, whose texts are extracted explanation sentences with a published split that
  results must stay comparable with;
- identical normalised text by different users is counted (groups, rows), not removed: short
  texts ("great product") repeat across users honestly.

Whatever the mode, the split step records how many (user, text) pairs and how many texts occur
both in train and in valid/test (`leaks`), and `evaluate` reports the share of test references
whose text occurs in train (evaluation/scoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from feedbackgen.errors import ConfigError

COPY_MODES = ("keep_one", "keep_all", "report")


def normalised_text(column: str = "text") -> pl.Expr:
    """The text as copies are compared: lower case, non-alphanumeric runs as one space, trimmed."""
    return (pl.col(column).str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ")
            .str.strip_chars())


def _keys(ids: pl.LazyFrame) -> pl.LazyFrame:
    return (ids.with_columns(_norm=normalised_text())
            .filter(pl.col("_norm").is_not_null() & (pl.col("_norm") != "")))


@dataclass
class Copies:
    mode: str
    dropped: set[int] = field(default_factory=set)
    group_of: dict[int, int] = field(default_factory=dict)  # source row -> first source row of its group
    record: dict[str, Any] = field(default_factory=dict)


def find_copies(ids: pl.LazyFrame, mode: str) -> Copies:
    """Same-user copies among `ids` (user_id, item_id, timestamp, source_row, text; the rows kept
    so far), and identical texts across users. Only a 64-bit hash per row is grouped over the
    whole table; the rows whose hash repeats are then compared by their real values."""
    if mode not in COPY_MODES:
        raise ConfigError(f"unknown copies mode {mode!r}; expected one of {', '.join(COPY_MODES)}")
    keyed = _keys(ids).with_columns(_pair=pl.struct("user_id", "_norm").hash(seed=0))
    repeated = (keyed.group_by("_pair").len().filter(pl.col("len") > 1).select("_pair")
                .collect(engine="streaming")["_pair"])
    candidates = (keyed.filter(pl.col("_pair").is_in(repeated.implode()))
                  .select("user_id", "item_id", "timestamp", "source_row", "_norm").collect(engine="streaming"))
    out = Copies(mode)
    groups = rows = 0
    if candidates.height:
        reviews = (ids.filter(pl.col("item_id").is_in(candidates["item_id"].unique().implode()))
                   .group_by("item_id").len("item_reviews").collect(engine="streaming"))
        ranked = (candidates.join(reviews, on="item_id", how="left")
                  .with_columns(n=pl.len().over("user_id", "_norm"))
                  .filter(pl.col("n") > 1)
                  .sort(["user_id", "_norm", "item_reviews", "timestamp", "source_row"],
                        descending=[False, False, True, False, False], nulls_last=True))
        groups = ranked.select("user_id", "_norm").n_unique() if ranked.height else 0
        rows = ranked.height
        kept = ranked.unique(["user_id", "_norm"], keep="first", maintain_order=True)
        if mode == "keep_one":
            out.dropped = set(ranked["source_row"].to_list()) - set(kept["source_row"].to_list())
        elif mode == "keep_all":
            first = ranked.with_columns(first=pl.col("source_row").min().over("user_id", "_norm"))
            out.group_of = dict(zip(first["source_row"].to_list(), first["first"].to_list()))
    # identical text by different users, among the rows that stay
    remaining = keyed.filter(~pl.col("source_row").is_in(pl.Series(sorted(out.dropped), dtype=pl.Int64).implode()))
    shared = (remaining.with_columns(_text=pl.col("_norm").hash(seed=0)).group_by("_text")
              .agg(pl.col("user_id").n_unique().alias("users"), pl.len().alias("rows"))
              .filter(pl.col("users") > 1).collect(engine="streaming"))
    out.record = {"mode": mode, "same_user_groups": groups, "same_user_rows": rows,
                  "dropped_copies": len(out.dropped),
                  "cross_user_groups": shared.height, "cross_user_rows": int(shared["rows"].sum())}
    return out


def together(table: pl.LazyFrame, group_of: dict[int, int]) -> dict[int, str]:
    """The split each row of a copy group must take so that no group straddles the split (see
    the module docstring): {source row: split}, for the rows whose split changes. `table` has
    source_row and the split after the cold-start rule."""
    if not group_of:
        return {}
    members = pl.DataFrame({"source_row": list(group_of), "group": list(group_of.values())},
                           schema={"source_row": pl.Int64, "group": pl.Int64})
    rows = (table.select("source_row", "split").collect(engine="streaming")
            .join(members, on="source_row").sort("source_row"))
    target = (rows.group_by("group", maintain_order=True)
              .agg(any_train=(pl.col("split") == "train").any(), first=pl.col("split").first()))
    rows = rows.join(target, on="group").with_columns(
        want=pl.when(pl.col("any_train")).then(pl.lit("train")).otherwise(pl.col("first")))
    changed = rows.filter(pl.col("want") != pl.col("split"))
    return dict(zip(changed["source_row"].to_list(), changed["want"].to_list()))


def leaks(table: pl.LazyFrame, column: str = "text") -> dict[str, int]:
    """Rows of valid/test whose normalised `column` occurs in train: for the same user, and for anyone."""
    keyed = (table.select("user_id", "split", column).with_columns(_norm=normalised_text(column))
             .filter(pl.col("_norm").is_not_null() & (pl.col("_norm") != ""))
             .with_columns(_text=pl.col("_norm").hash(seed=0), _pair=pl.struct("user_id", "_norm").hash(seed=0)))
    train = keyed.filter(pl.col("split") == "train")
    held = keyed.filter(pl.col("split").is_in(["valid", "test"]))
    pairs = train.select("_pair").unique().collect(engine="streaming")["_pair"].implode()
    texts = train.select("_text").unique().collect(engine="streaming")["_text"].implode()
    counts = held.select(same_user=pl.col("_pair").is_in(pairs).sum(), anyone=pl.col("_text").is_in(texts).sum(),
                         rows=pl.len()).collect(engine="streaming").row(0, named=True)
    return {"held_out_rows": int(counts["rows"]), "text_in_train_same_user": int(counts["same_user"] or 0),
            "text_in_train_anyone": int(counts["anyone"] or 0)}
