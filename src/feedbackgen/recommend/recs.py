"""Reading and checking a recommender's output (RECS files) before anything judges it.

RECS is a CSV, Parquet or JSONL file of (user_id, item_id, rank), one row per recommended item,
from any recommender (RecBole-style `user_id:token` headers are accepted; without a `rank` column
the file order within each user is the rank). Rows that cannot be judged are reported, counted
and left out, never crashed on: users or items absent from the dataset's training split, rows with
a missing id or a rank that is not a positive integer, repeated (user, item) pairs (the best rank
is kept), and ranks beyond `k`. `feedbackgen.recommend.simulate` judges what is read here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError

__all__ = ["MAX_LISTED", "RecommendationsCheck", "read_recommendations"]

MAX_LISTED = 20  # unknown ids listed in the report (all are counted)


# -- reading a recommender's output ------------------------------------------------------------

@dataclass
class RecommendationsCheck:
    """What was read from one RECS file and what was left out, and why."""

    recommender: str
    source: str
    rows: int = 0
    kept: int = 0
    rank_from_order: bool = False
    bad_rows: int = 0
    bad_row_examples: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    beyond_k: int = 0
    unknown_user_rows: int = 0
    unknown_item_rows: int = 0
    unknown_users: int = 0
    unknown_items: int = 0
    unknown_user_ids: list[str] = field(default_factory=list)  # the first MAX_LISTED, sorted
    unknown_item_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"{self.recommender}: {self.kept} of {self.rows} rows judged"]
        if self.unknown_users:
            parts.append(f"{self.unknown_users} unknown user(s) ({self.unknown_user_rows} rows; "
                         + ", ".join(self.unknown_user_ids[:5]) + (" ..." if self.unknown_users > 5 else "") + ")")
        if self.unknown_items:
            parts.append(f"{self.unknown_items} unknown item(s) ({self.unknown_item_rows} rows; "
                         + ", ".join(self.unknown_item_ids[:5]) + (" ..." if self.unknown_items > 5 else "") + ")")
        if self.bad_rows:
            parts.append(f"{self.bad_rows} bad row(s) (missing id or rank not a positive integer): "
                         + self.bad_lines())
        if self.duplicates:
            parts.append(f"{self.duplicates} repeated (user, item) row(s)")
        if self.beyond_k:
            parts.append(f"{self.beyond_k} row(s) ranked beyond k")
        if self.rank_from_order:
            parts.append("no rank column: file order within each user used as the rank")
        return "; ".join(parts)

    def bad_lines(self, shown: int = 5) -> str:
        """The first `shown` bad rows' line numbers, "lines 4, 9 (and 3 more)"; the rest are counted
        (summary.json lists up to MAX_LISTED of them with their ids and rank)."""
        lines = [str(e["line"]) for e in self.bad_row_examples[:shown]]
        more = self.bad_rows - len(lines)
        return (f"line{'s' if len(lines) > 1 else ''} " + ", ".join(lines)
                + (f" (and {more} more)" if more > 0 else ""))


def _read_table(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    try:
        if path.suffix == ".parquet":
            df = pl.read_parquet(path)
        elif path.suffix in (".csv", ".tsv"):
            df = pl.read_csv(path, infer_schema=False, separator="\t" if path.suffix == ".tsv" else ",")
        elif path.suffix in (".jsonl", ".json"):
            df = pl.read_ndjson(path, infer_schema_length=None)
        else:
            raise DataError("expected a .csv, .tsv, .parquet or .jsonl recommendations file", source=str(path))
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"cannot read it as a table ({type(e).__name__}: {str(e).splitlines()[0]})",
                        source=str(path)) from None
    # RecBole's atomic files name columns `field:type` (`user_id:token`)
    return df.rename({c: c.split(":", 1)[0] for c in df.columns if ":" in c})


def read_recommendations(source: str | Path | pl.DataFrame, dataset: Dataset, k: int | None = None,
                         name: str | None = None) -> tuple[pl.DataFrame, RecommendationsCheck]:
    """The judgeable rows of a RECS file (user_id, item_id, rank; sorted), and what was left out."""
    if isinstance(source, pl.DataFrame):
        df, where = source, "<table>"
    else:
        df, where = _read_table(Path(source)), str(source)
    check = RecommendationsCheck(name or (Path(where).stem if where != "<table>" else "recommendations"),
                                 where, rows=len(df))
    missing = [c for c in ("user_id", "item_id") if c not in df.columns]
    if missing:
        raise DataError(f"no {', '.join(repr(c) for c in missing)} column(s) (columns: {', '.join(df.columns)}); "
                        "expected user_id, item_id[, rank]", source=where)
    df = df.with_row_index("row").with_columns(pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8))
    if "rank" in df.columns:
        df = df.with_columns(pl.col("rank").cast(pl.Float64, strict=False))
        good_rank = pl.col("rank").is_not_null() & (pl.col("rank") >= 1) & (pl.col("rank") == pl.col("rank").floor())
    else:
        check.rank_from_order = True
        df = df.with_columns(pl.lit(1.0).alias("rank"))
        good_rank = pl.lit(True)
    good_ids = (pl.col("user_id").is_not_null() & (pl.col("user_id").str.strip_chars() != "")
                & pl.col("item_id").is_not_null() & (pl.col("item_id").str.strip_chars() != ""))
    bad = df.filter(~(good_ids & good_rank))
    check.bad_rows = len(bad)
    first_line = 2 if Path(where).suffix in (".csv", ".tsv") else 1  # a CSV's first data row is line 2
    check.bad_row_examples = [{"line": int(r["row"]) + first_line, "user_id": r["user_id"], "item_id": r["item_id"],
                               "rank": r["rank"]} for r in bad.head(MAX_LISTED).iter_rows(named=True)]
    df = df.filter(good_ids & good_rank)
    if check.rank_from_order:
        df = df.with_columns(pl.col("row").rank("ordinal").over("user_id").cast(pl.Float64).alias("rank"))
    df = df.with_columns(pl.col("rank").cast(pl.Int64)).sort(["user_id", "rank", "row"])
    deduped = df.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    check.duplicates = len(df) - len(deduped)
    df = deduped
    if k is not None:
        check.beyond_k = int((df["rank"] > k).sum())
        df = df.filter(pl.col("rank") <= k)

    train = dataset.train
    unknown_user = ~pl.col("user_id").is_in(train["user_id"].unique().implode())
    unknown_item = ~pl.col("item_id").is_in(train["item_id"].unique().implode())
    users = sorted(df.filter(unknown_user)["user_id"].unique().to_list())
    items = sorted(df.filter(unknown_item)["item_id"].unique().to_list())
    check.unknown_user_rows = int(df.select(unknown_user.sum()).item())
    check.unknown_item_rows = int(df.select(unknown_item.sum()).item())
    check.unknown_users, check.unknown_items = len(users), len(items)
    check.unknown_user_ids, check.unknown_item_ids = users[:MAX_LISTED], items[:MAX_LISTED]
    df = df.filter(~unknown_user & ~unknown_item).select("user_id", "item_id", "rank")
    check.kept = len(df)
    return df, check
