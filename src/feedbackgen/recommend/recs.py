"""Reading and checking a recommender's output (RECS files) before anything judges it.

RECS is a CSV, TSV, Parquet or JSONL file of (user_id, item_id[, rank][, score]), one row per
recommended item, from any recommender. What is read, and how:

- columns: `user_id`, `item_id`, `rank`, `score`; RecBole's `user_id:token` headers, Microsoft
  Recommenders' `userID,itemID,prediction` and LensKit's `user,item,score,rank` are recognised;
  any other names are mapped with `mapping` (`--map user_id=uid`, as `prepare --map`). A CSV/TSV
  whose first row holds no column name is read as header-less (Elliot writes `user<TAB>item<TAB>score`):
  its columns are numbered from 1 (`--map user_id=2`), and 2 or 3 columns default to user, item[, score].
- the order of a user's list: the `rank` column (1-based; a file whose ranks start at 0 is shifted
  by one and says so; a `rank` column of non-integer numbers holds scores, highest first); else
  the `score` column, highest first (ties in file order); else the file order.

Cheap checks run here, before any model work or LLM call (`simulate` reads every file first):
rows with a missing id or a bad rank, repeated (user, item) pairs (the best rank is kept), ranks
beyond `k`, and users and items absent from the training split are counted and left out; items
already in the user's own train or valid history are counted and judged as already owned, a skip
(`already_owned`): a list cannot win by handing users back what they had; users whose list is
shorter than `k` are counted. A file is refused (DataError naming the likely cause)
when most of its rows name unknown ids, when nothing in it can be judged, or when its items look
like random draws from the catalogue (their popularity sits at the catalogue's median, where any
recommender's sits far above it): the mark of ids from another tool's id space, e.g. RecBole's
internal ids from `full_sort_topk` without `dataset.id2token`. `check_ids=False` judges it anyway
(a random baseline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError

__all__ = ["MAX_LISTED", "RecommendationsCheck", "already_owned", "read_recommendations"]

MAX_LISTED = 20  # unknown ids listed in the report (all are counted)
COLUMNS = ("user_id", "item_id", "rank", "score")
# other tools' names for our columns: MS Recommenders, LensKit, Cornac, RecBole (`:token` stripped)
ALIASES = {"user_id": ("userID", "user", "userId", "uid", "user_id"), "item_id": ("itemID", "item", "itemId", "iid"),
           "rank": ("rank",), "score": ("prediction", "score", "pred", "rating_pred")}
MOSTLY_UNKNOWN = 0.5  # refused when more than this share of the rows names an unknown user or item
RANDOM_LOOKING = 0.6  # refused when the listed items' mean popularity percentile is below this (random: 0.5)
MIN_ROWS_TO_JUDGE_PLAUSIBILITY = 100  # rows, and as many catalogue items, for the popularity test to mean much


@dataclass
class RecommendationsCheck:
    """What was read from one RECS file and what was left out, and why."""

    recommender: str
    source: str
    rows: int = 0
    kept: int = 0
    rank_from_order: bool = False
    rank_from: str = "rank"   # rank | rank, 0-based (shifted by one) | score | score in the rank column | file order
    columns: dict[str, str] = field(default_factory=dict)  # ours -> the file's, where they differ
    header: bool = True
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
    in_history_rows: int = 0     # items the user already had in train or valid: judged as skips
    in_history_users: int = 0
    history: list[tuple[str, str, int]] = field(default_factory=list, repr=False)  # those (user, item, rank)
    short_lists: int = 0         # users whose judged list is shorter than k
    users: int = 0
    popularity_percentile: float | None = None  # mean over judged rows; random items give 0.5

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "history"}

    def worth_noting(self) -> bool:
        """Anything left out, or read in a way the user did not spell out."""
        return (self.kept != self.rows or self.rank_from != "rank" or self.short_lists > 0 or self.in_history_rows > 0
                or bool(self.columns) or not self.header)

    def describe(self) -> str:
        parts = [f"{self.recommender}: {self.kept} of {self.rows} rows judged"]
        if self.unknown_users:
            parts.append(f"{self.unknown_users} unknown user(s) ({self.unknown_user_rows} rows; "
                         + ", ".join(self.unknown_user_ids[:5]) + (" ..." if self.unknown_users > 5 else "") + ")")
        if self.unknown_items:
            parts.append(f"{self.unknown_items} unknown item(s) ({self.unknown_item_rows} rows; "
                         + ", ".join(self.unknown_item_ids[:5]) + (" ..." if self.unknown_items > 5 else "") + ")")
        if self.in_history_rows:
            parts.append(f"{self.in_history_rows} row(s) already in the user's train/valid history "
                         f"({self.in_history_users} user(s)): judged as already owned (skipped), never as new finds")
        if self.bad_rows:
            parts.append(f"{self.bad_rows} bad row(s) (missing id or rank not a positive integer): "
                         + self.bad_lines())
        if self.duplicates:
            parts.append(f"{self.duplicates} repeated (user, item) row(s)")
        if self.beyond_k:
            parts.append(f"{self.beyond_k} row(s) ranked beyond k")
        if self.short_lists:
            parts.append(f"{self.short_lists} of {self.users} user(s) with a list shorter than k")
        if self.rank_from_order:
            parts.append("no rank column: file order within each user used as the rank")
        elif self.rank_from != "rank":
            parts.append({"score": "no rank column: each user's rows ordered by score, highest first",
                          "score in the rank column": "the rank column holds scores (not integers): "
                                                      "each user's rows ordered by it, highest first",
                          }.get(self.rank_from, f"ranks read as {self.rank_from}"))
        if not self.header:
            parts.append("no header row: columns read as " + ", ".join(f"{k} = column {v}" for k, v in
                                                                        self.columns.items()))
        elif self.columns:
            parts.append("columns read as " + ", ".join(f"{k} = {v}" for k, v in self.columns.items()))
        return "; ".join(parts)

    def bad_lines(self, shown: int = 5) -> str:
        """The first `shown` bad rows' line numbers, "lines 4, 9 (and 3 more)"; the rest are counted
        (summary.json lists up to MAX_LISTED of them with their ids and rank)."""
        lines = [str(e["line"]) for e in self.bad_row_examples[:shown]]
        more = self.bad_rows - len(lines)
        return (f"line{'s' if len(lines) > 1 else ''} " + ", ".join(lines)
                + (f" (and {more} more)" if more > 0 else ""))


# -- the table and its columns -----------------------------------------------------------------

def _looks_numeric(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _read_table(path: Path, names: set[str]) -> tuple[pl.DataFrame, bool]:
    """The file as a table of strings (ids stay text), and whether it had a header row: a CSV/TSV
    whose first row names none of `names` and holds a number is data, not a header."""
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    header = True
    try:
        if path.suffix == ".parquet":
            df = pl.read_parquet(path)
        elif path.suffix in (".csv", ".tsv"):
            sep = "\t" if path.suffix == ".tsv" else ","
            with path.open(encoding="utf-8", errors="replace") as f:
                first = [c.strip().split(":", 1)[0] for c in f.readline().rstrip("\r\n").split(sep)]
            header = bool(set(first) & names) or not any(_looks_numeric(c) for c in first)
            df = pl.read_csv(path, infer_schema=False, separator=sep, has_header=header,
                             new_columns=None if header else [str(n + 1) for n in range(len(first))])
        elif path.suffix in (".jsonl", ".json"):
            df = pl.read_ndjson(path, infer_schema_length=None)
        else:
            raise DataError("expected a .csv, .tsv, .parquet or .jsonl recommendations file", source=str(path))
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"cannot read it as a table ({type(e).__name__}: {str(e).splitlines()[0]})",
                        source=str(path)) from None
    # RecBole's atomic files name columns `field:type` (`user_id:token`)
    return df.rename({c: c.split(":", 1)[0] for c in df.columns if ":" in c}), header


def _name_columns(df: pl.DataFrame, mapping: dict[str, str], header: bool, where: str
                  ) -> tuple[pl.DataFrame, dict[str, str]]:
    """Rename the file's columns to ours: `mapping` (ours -> theirs) first, then the aliases other
    tools write; a header-less file of 2 or 3 columns is user, item[, score] (Elliot's layout)."""
    bad = sorted(set(mapping) - set(COLUMNS))
    if bad:
        raise DataError(f"--map names {', '.join(bad)}: a recommendations file's columns are "
                        f"{', '.join(COLUMNS)}", source=where)
    chosen = dict(mapping)
    if not header and not mapping:
        if df.width not in (2, 3):
            raise DataError(f"no header row and {df.width} columns: name them by position, e.g. "
                            "--map user_id=1 --map item_id=2 --map rank=3", source=where)
        chosen = dict(zip(COLUMNS[:2] + ("score",), df.columns))
    for ours, names in ALIASES.items():
        if ours not in chosen and ours not in df.columns:
            found = [n for n in names if n in df.columns]
            if found:
                chosen[ours] = found[0]
    missing = [theirs for theirs in chosen.values() if theirs not in df.columns]
    if missing:
        raise DataError(f"--map names column(s) {', '.join(map(repr, missing))}, which the file does not have "
                        f"(columns: {', '.join(df.columns)})", source=where)
    renamed = df.select([pl.col(theirs).alias(ours) for ours, theirs in chosen.items()]
                        + [c for c in df.columns if c not in chosen.values() and c not in chosen])
    absent = [c for c in ("user_id", "item_id") if c not in renamed.columns]
    if absent:
        raise DataError(f"no {', '.join(repr(c) for c in absent)} column(s) (columns: {', '.join(df.columns)}); "
                        "expected user_id, item_id[, rank][, score], or name them with --map user_id=COLUMN",
                        source=where)
    return renamed, {ours: theirs for ours, theirs in chosen.items() if ours != theirs}


# -- the order of each list ----------------------------------------------------------------------

def _ranks(df: pl.DataFrame, check: RecommendationsCheck) -> tuple[pl.DataFrame, pl.Expr]:
    """`df` with a float `rank` (1 = best; null where unusable) and the test of a usable row's rank,
    read from the rank column, the score column or the file order (see the module docstring)."""
    if "rank" in df.columns:
        df = df.with_columns(pl.col("rank").cast(pl.Float64, strict=False))
        given = df["rank"].drop_nulls()
        integral = (given == given.floor()).mean() if len(given) else 1.0
        if len(given) and integral < 0.5:  # scores in the rank column: not ranks
            check.rank_from = "score in the rank column"
            df = df.with_columns(pl.col("rank").alias("score"))
        elif len(given) and given.min() == 0 and (given >= 0).all() and integral == 1.0:
            check.rank_from = "rank, 0-based (shifted by one)"
            return df.with_columns(pl.col("rank") + 1), pl.col("rank").is_not_null()
        else:
            good = pl.col("rank").is_not_null() & (pl.col("rank") >= 1) & (pl.col("rank") == pl.col("rank").floor())
            return df, good
    if "score" in df.columns:
        df = df.with_columns(pl.col("score").cast(pl.Float64, strict=False))
        if check.rank_from != "score in the rank column":
            check.rank_from = "score"
        rank = pl.struct(-pl.col("score"), "row").rank("ordinal").over("user_id").cast(pl.Float64)
        return df.with_columns(pl.when(pl.col("score").is_not_null()).then(rank).alias("rank")), \
            pl.col("score").is_not_null()
    check.rank_from, check.rank_from_order = "file order", True
    return df.with_columns(pl.col("row").rank("ordinal").over("user_id").cast(pl.Float64).alias("rank")), pl.lit(True)


# -- reading and checking ------------------------------------------------------------------------

def read_recommendations(source: str | Path | pl.DataFrame, dataset: Dataset, k: int | None = None,
                         name: str | None = None, *, mapping: dict[str, str] | None = None,
                         check_ids: bool = True) -> tuple[pl.DataFrame, RecommendationsCheck]:
    """The judgeable rows of a RECS file (user_id, item_id, rank; sorted), and what was left out.

    mapping: ours -> the file's column name (or 1-based position in a header-less file).
    check_ids: refuse a file whose ids mostly miss, or look like another id space (see the module
    docstring); off, such a file is judged for what it is. Raises DataError naming the file."""
    mapping = dict(mapping or {})
    if isinstance(source, pl.DataFrame):
        df, where, header = source, "<table>", True
    else:
        names = (set(COLUMNS) | {n for names in ALIASES.values() for n in names}
                 | {v for v in mapping.values() if not _looks_numeric(v)})
        (df, header), where = _read_table(Path(source), names), str(source)
    check = RecommendationsCheck(name or (Path(where).stem if where != "<table>" else "recommendations"),
                                 where, rows=len(df), header=header)
    df, check.columns = _name_columns(df, mapping, header, where)
    # ids are text; a float column of whole numbers (pandas writes ints beside a NaN as 1.0) is read as ints
    df = df.with_columns([pl.col(c).cast(pl.Int64) for c in ("user_id", "item_id")
                          if df.schema[c].is_float() and df[c].drop_nulls().eq(df[c].drop_nulls().floor()).all()])
    df = df.with_row_index("row").with_columns(pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8))
    df, good_rank = _ranks(df, check)
    good_ids = (pl.col("user_id").is_not_null() & (pl.col("user_id").str.strip_chars() != "")
                & pl.col("item_id").is_not_null() & (pl.col("item_id").str.strip_chars() != ""))
    bad = df.filter(~(good_ids & good_rank))
    check.bad_rows = len(bad)
    first_line = 2 if Path(where).suffix in (".csv", ".tsv") and header else 1  # a CSV's first data row is line 2
    check.bad_row_examples = [{"line": int(r["row"]) + first_line, "user_id": r["user_id"], "item_id": r["item_id"],
                               "rank": r["rank"]} for r in bad.head(MAX_LISTED).iter_rows(named=True)]
    df = df.filter(good_ids & good_rank)
    df = df.with_columns(pl.col("rank").cast(pl.Int64)).sort(["user_id", "rank", "row"])
    deduped = df.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    check.duplicates = len(df) - len(deduped)
    df = deduped
    if k is not None:
        top = min(k, 2**31 - 1)  # a k beyond every list (10**20) keeps them whole, as `recommend` does
        check.beyond_k = int((df["rank"] > top).sum())
        df = df.filter(pl.col("rank") <= top)
    df = _known_and_new(df, dataset, check, check_ids)
    if k is not None:
        lengths = df.group_by("user_id").len()
        check.users, check.short_lists = len(lengths), int((lengths["len"] < min(k, 2**31 - 1)).sum())
    else:
        check.users = df["user_id"].n_unique()
    check.kept = len(df)
    check.popularity_percentile = _popularity_percentile(df, dataset)
    if check_ids:
        _refuse_implausible(df, check)
    return df.select("user_id", "item_id", "rank"), check


def _known_and_new(df: pl.DataFrame, dataset: Dataset, check: RecommendationsCheck, check_ids: bool) -> pl.DataFrame:
    """The rows whose user and item the training split knows and whose item is not already the
    user's (train or valid); the others counted in `check`. Refuses a file that mostly misses."""
    train = dataset.train
    unknown_user = ~pl.col("user_id").is_in(train["user_id"].unique().implode())
    unknown_item = ~pl.col("item_id").is_in(train["item_id"].unique().implode())
    users = sorted(df.filter(unknown_user)["user_id"].unique().to_list())
    items = sorted(df.filter(unknown_item)["item_id"].unique().to_list())
    check.unknown_user_rows = int(df.select(unknown_user.sum()).item())
    check.unknown_item_rows = int(df.select(unknown_item.sum()).item())
    check.unknown_users, check.unknown_items = len(users), len(items)
    check.unknown_user_ids, check.unknown_item_ids = users[:MAX_LISTED], items[:MAX_LISTED]
    unknown_rows = int(df.select((unknown_user | unknown_item).sum()).item())
    if check_ids and len(df) and unknown_rows > MOSTLY_UNKNOWN * len(df):
        raise DataError(f"{unknown_rows} of its {len(df)} rows name a user or item the training split of the "
                        f"dataset does not have ({check.describe()}); {_likely_cause(df, dataset)}",
                        source=check.source)
    df = df.filter(~unknown_user & ~unknown_item)
    history = (dataset.interactions.filter(pl.col("split").is_in(["train", "valid"]))
               .select("user_id", "item_id").unique().with_columns(pl.lit(True).alias("had")))
    df = df.join(history, on=["user_id", "item_id"], how="left", maintain_order="left")
    had = df.filter(pl.col("had").is_not_null())
    check.in_history_rows, check.in_history_users = len(had), had["user_id"].n_unique()
    check.history = list(had.select("user_id", "item_id", pl.col("rank").cast(pl.Int64)).iter_rows())
    return df.filter(pl.col("had").is_null()).drop("had")


def _likely_cause(df: pl.DataFrame, dataset: Dataset) -> str:
    """A guess at why a file's ids miss: swapped columns, another tool's integer ids, or another dataset."""
    train = dataset.train
    users, items = set(train["user_id"].unique().to_list()), set(train["item_id"].unique().to_list())
    file_users, file_items = set(df["user_id"].to_list()), set(df["item_id"].to_list())
    if len(file_users & items) > len(file_users & users) and len(file_items & users) > len(file_items & items):
        return "the user and item columns look swapped (name them with --map user_id=COLUMN --map item_id=COLUMN)"
    if any(i.endswith(".0") for i in list(file_items)[:1000]) and {i.removesuffix(".0") for i in file_items} & items:
        return "its ids are written as decimals (1.0): write them as the dataset does (1)"
    if all(i.isdigit() for i in list(file_items)[:1000]) and not all(i.isdigit() for i in list(items)[:1000]):
        return ("its ids are integers where the dataset's are not: probably another tool's internal ids "
                "(RecBole: convert with dataset.id2token; LightGCN: user_list.txt/item_list.txt)")
    return "is it a list for another dataset, or in another id space (a tool's internal, remapped ids)?"


def already_owned(check: RecommendationsCheck, probability: bool = False) -> pl.DataFrame:
    """The verdict on the rows naming an item the user already had (train or valid): a re-consumption,
    not a new find: no engagement (probability 0 where the simulated user gives probabilities), no
    rating, no review; `source` says why. Columns as `SimulatedUser.judge` gives them, with user_id,
    item_id and rank."""
    users, items, ranks = (list(c) for c in zip(*check.history)) if check.history else ([], [], [])
    n = len(users)
    return pl.DataFrame({
        "user_id": pl.Series(users, dtype=pl.Utf8), "item_id": pl.Series(items, dtype=pl.Utf8),
        "rank": pl.Series(ranks, dtype=pl.Int64), "rating": pl.Series([None] * n, dtype=pl.Float64),
        "stars": pl.Series([None] * n, dtype=pl.Int64), "text": pl.Series([None] * n, dtype=pl.Utf8),
        "provenance": pl.Series([None] * n, dtype=pl.Utf8), "source_item": pl.Series([None] * n, dtype=pl.Utf8),
        "source": pl.Series(["already in the user's history: not a new find"] * n, dtype=pl.Utf8),
        "engage": pl.Series([False] * n, dtype=pl.Boolean),
        "p_engage": pl.Series([0.0 if probability else None] * n, dtype=pl.Float64)})


def _popularity_percentile(df: pl.DataFrame, dataset: Dataset) -> float | None:
    """The mean, over the rows, of the item's percentile in the catalogue by training count (ties
    averaged): 0.5 for items drawn at random, near 1 for any recommender's lists; None where too
    few rows or items make it mean little."""
    counts = dataset.train.group_by("item_id").len()
    if len(df) < MIN_ROWS_TO_JUDGE_PLAUSIBILITY or len(counts) < MIN_ROWS_TO_JUDGE_PLAUSIBILITY:
        return None
    pct = counts.select("item_id", (pl.col("len").rank("average") / pl.len()).alias("pct"))
    return float(df.join(pct, on="item_id", how="left")["pct"].mean())


def _refuse_implausible(df: pl.DataFrame, check: RecommendationsCheck) -> None:
    """Refuse a file with nothing to judge, or whose items are as popular as random draws from the
    catalogue: what a list in another id space looks like (it names valid but meaningless ids)."""
    if not len(df) and not check.in_history_rows:
        raise DataError(f"nothing in it can be judged ({check.describe()})", source=check.source)
    if check.popularity_percentile is not None and check.popularity_percentile < RANDOM_LOOKING:
        raise DataError(
            f"its items look like random draws from the catalogue: their mean popularity percentile is "
            f"{check.popularity_percentile:.2f} (random items: 0.50; a recommender's lists sit far above); "
            f"{check.in_history_rows} row(s) name items the user already had. Probably ids in another id "
            "space, e.g. RecBole's internal ids (full_sort_topk without dataset.id2token), or ids shifted "
            "by one. If the list really is random (a baseline), judge it with --no-id-check", source=check.source)
