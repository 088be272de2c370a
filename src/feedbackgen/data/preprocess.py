"""Preprocessing steps. Each takes the interactions and returns them with a record of what it did:

    {"step": name, "params": {...}, "rows_in": n, "rows_out": m, "touched": k, ...}

`prepare` appends every record to the manifest's `steps`, so a dataset says how it was made
(the RecBole habit). Steps keep the row order (source order) and are pure functions of their input.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import polars as pl

from feedbackgen.data.problems import Problems
from feedbackgen.data.text import clean_text, count_tokens, scrub_pii_by_kind, tokenize, truncate_tokens
from feedbackgen.errors import DataError

RATING_RANGE = (1.0, 5.0)
# Sources whose rating scale is known, so never inferred: Amazon (2014, 2018, 2023 dumps) and Yelp
# rate 1-5 whole stars (McAuley et al.'s dataset pages; Yelp's dataset documentation). A value
# outside it (Amazon 2023 holds a few 0.0) is a bad record, not a reason to stretch the others.
KNOWN_SCALES = {"amazon2014": RATING_RANGE, "amazon2018": RATING_RANGE, "amazon2023": RATING_RANGE,
                "yelp": RATING_RANGE}


def source_scale(scale: str | tuple[float, float], fmt: str) -> tuple[str | tuple[float, float], str]:
    """The scale ratings are read on, and where it comes from: the declared `scale`; else the
    format's known scale; else "auto" (inferred from the data, for unknown sources only)."""
    if scale != "auto":
        return tuple(scale), "declared scale"
    if fmt in KNOWN_SCALES:
        return KNOWN_SCALES[fmt], f"known scale of {fmt}"
    return "auto", "inferred from the observed ratings"


def step_record(step: str, params: dict[str, Any], rows_in: int, rows_out: int, **extra: Any) -> dict[str, Any]:
    return {"step": step, "params": params, "rows_in": rows_in, "rows_out": rows_out, **extra}


def _map_column(df: pl.DataFrame, name: str, fn) -> tuple[pl.Series, pl.Series]:
    """(new column, changed mask) from applying `fn` to each non-null value of `name`."""
    old = df[name].to_list()
    new = [None if v is None else fn(v) for v in old]
    changed = pl.Series([a != b for a, b in zip(old, new)], dtype=pl.Boolean)
    return pl.Series(name, new, dtype=pl.Utf8), changed


def _text_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in ("text", "summary") if c in df.columns]


# -- text ------------------------------------------------------------------------------------------

# An entity cut in half by the 20-token truncation of the PETER data ("... they & #").
_CUT_ENTITY = re.compile(r"\s*&\s*(?:#\s*[0-9]*)?$")


def clean_tokenized(text: str) -> str:
    """`clean_text` for a token sequence (PETER explanations): decoded, still tokens joined by spaces."""
    return " ".join(tokenize(_CUT_ENTITY.sub("", clean_text(text))))


def clean_texts(df: pl.DataFrame, items: pl.DataFrame | None = None, *,
                tokenized: bool = False) -> tuple[pl.DataFrame, pl.DataFrame | None, dict]:
    """`clean_text` on text and summary (and a source-given explanation), and on item titles and
    descriptions. `tokenized`: the text is a token sequence already (the peter format) and stays
    one. touched = interactions changed."""
    touched = pl.Series([False] * df.height, dtype=pl.Boolean)
    changed_by_column = {}
    for name in [*_text_columns(df), *(["explanation"] if "explanation" in df.columns else [])]:
        as_tokens = name == "explanation" or (tokenized and name == "text")
        column, changed = _map_column(df, name, clean_tokenized if as_tokens else clean_text)
        df = df.with_columns(column)
        touched = touched | changed
        changed_by_column[name] = int(changed.sum())
    items, items_touched = clean_item_texts(items)
    return df, items, step_record("clean_text", {"tokenized": tokenized}, df.height, df.height, touched=int(touched.sum()),
                                  changed_by_column=changed_by_column, items_touched=items_touched)


def clean_item_texts(items: pl.DataFrame | None) -> tuple[pl.DataFrame | None, int]:
    """`clean_text` on item titles, brands and descriptions; and how many items changed."""
    if items is None:
        return None, 0
    item_changed = pl.Series([False] * items.height, dtype=pl.Boolean)
    for name in ("title", "brand", "description"):
        if name in items.columns:
            column, changed = _map_column(items, name, clean_text)
            items = items.with_columns(column)
            item_changed = item_changed | changed
    return items, int(item_changed.sum())


def has_text_expr() -> pl.Expr:
    """True for a row whose text is present and not blank: what `drop_empty` keeps."""
    return pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != "")


def drop_empty(df: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Drop reviews whose text is missing or blank: there is nothing to learn to write."""
    empty = df["text"].is_null() | (df["text"].str.strip_chars() == "")
    out = df.filter(~empty)
    return out, step_record("drop_empty", {}, df.height, out.height, touched=0, dropped_empty=int(empty.sum()))


def drop_duplicates(df: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Keep one review per (user, item): the latest by timestamp (missing = oldest), ties by
    source order (later wins)."""
    latest = (
        df.select("user_id", "item_id", "timestamp", "source_row")
        .sort(["timestamp", "source_row"], nulls_last=False)
        .unique(["user_id", "item_id"], keep="last", maintain_order=True)["source_row"]
    )
    out = df.filter(pl.col("source_row").is_in(latest))
    pairs = df.group_by("user_id", "item_id").len().filter(pl.col("len") > 1).height
    return out, step_record("drop_duplicates", {"keep": "latest"}, df.height, out.height, touched=0,
                            duplicate_pairs=pairs, dropped_duplicates=df.height - out.height)


def duplicate_rows(ids: pl.LazyFrame, buckets: int = 1) -> tuple[set[int], int]:
    """`drop_duplicates` over a table too big for memory: the source rows it would drop, and the
    number of (user, item) pairs with more than one review. `ids` has user_id, item_id, timestamp
    and source_row. Only a 64-bit hash per row is grouped (the streaming engine), in `buckets`
    passes over the hash's residues so that a pass holds 1/buckets of them; the few rows whose
    hash repeats are then compared by their real ids, so a hash collision changes nothing."""
    key = pl.struct("user_id", "item_id").hash(seed=0).alias("_pair")
    repeated = pl.concat([
        ids.select(key).filter(pl.col("_pair") % buckets == b).group_by("_pair").len()
        .filter(pl.col("len") > 1).select("_pair").collect(engine="streaming")["_pair"]
        for b in range(buckets)])
    if repeated.len() == 0:
        return set(), 0
    candidates = (ids.filter(key.is_in(repeated.implode()))
                  .select("user_id", "item_id", "timestamp", "source_row").collect(engine="streaming"))
    latest, record = drop_duplicates(candidates)
    dropped = set(candidates["source_row"].to_list()) - set(latest["source_row"].to_list())
    return dropped, record["duplicate_pairs"]


def scrub_pii(df: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Replace e-mails, URLs, phones, card numbers and @handles in text and summary with placeholders."""
    kinds: Counter = Counter()
    touched = pl.Series([False] * df.height, dtype=pl.Boolean)

    def scrub(value: str) -> str:
        text, counts = scrub_pii_by_kind(value)
        kinds.update(counts)
        return text

    for name in _text_columns(df):
        column, changed = _map_column(df, name, scrub)
        df = df.with_columns(column)
        touched = touched | changed
    return df, step_record("scrub_pii", {}, df.height, df.height, touched=int(touched.sum()),
                           replacements=dict(sorted(kinds.items())))


def limit_length(df: pl.DataFrame, min_tokens: int, max_tokens: int, over_max: str) -> tuple[pl.DataFrame, dict]:
    """Drop reviews under `min_tokens`; over `max_tokens` (0 = no limit) drop or truncate them."""
    out, record, _ = limit_length_counted(df, min_tokens, max_tokens, over_max)
    return out, record


def limit_length_counted(df: pl.DataFrame, min_tokens: int, max_tokens: int,
                         over_max: str) -> tuple[pl.DataFrame, dict, Counter]:
    """`limit_length`, also returning how many reviews have each length: a chunked run adds
    these up for the exact median over every chunk."""
    params = {"min_tokens": min_tokens, "max_tokens": max_tokens, "over_max": over_max}
    lengths = pl.Series([count_tokens(t) for t in df["text"]], dtype=pl.Int64)
    short = lengths < min_tokens
    long = (lengths > max_tokens) if max_tokens else pl.Series([False] * df.height, dtype=pl.Boolean)
    record = {"dropped_short": int(short.sum()), "over_max": int((long & ~short).sum())}
    keep = ~short
    if over_max == "drop":
        keep = keep & ~long
    out = df.filter(keep)
    touched = 0
    if max_tokens and over_max == "truncate":
        column, changed = _map_column(out, "text", lambda t: truncate_tokens(t, max_tokens))
        out = out.with_columns(column)
        touched = int(changed.sum())
    return out, step_record("length_limits", params, df.height, out.height, touched=touched, **record,
                            tokens_median_before=float(lengths.median()) if df.height else None), \
        Counter(lengths.to_list())


def median_of_counts(counts: Counter) -> float | None:
    """The median of values given as {value: how many}, as polars computes it (mean of the two
    middle values when their number is even); None when there are none."""
    n = sum(counts.values())
    if not n:
        return None
    middle, seen, low = ((n - 1) // 2, n // 2), 0, None
    for value in sorted(counts):
        seen += counts[value]
        if low is None and seen > middle[0]:
            low = value
        if seen > middle[1]:
            return (low + value) / 2
    raise AssertionError("unreachable")


# -- structure -------------------------------------------------------------------------------------

def k_core(df: pl.DataFrame, k: int) -> tuple[pl.DataFrame, dict]:
    """Keep users and items with at least `k` reviews, repeating until nothing changes (0 = off)."""
    rows_in, iterations = df.height, 0
    if k > 1:
        while True:
            keep = (pl.len().over("user_id") >= k) & (pl.len().over("item_id") >= k)
            out = df.filter(keep)
            iterations += 1
            if out.height == df.height:
                break
            df = out
    return df, step_record("k_core", {"k": k}, rows_in, df.height, touched=0, iterations=iterations,
                           users=df["user_id"].n_unique(), items=df["item_id"].n_unique())


def k_core_ids(ids: pl.LazyFrame, k: int) -> tuple[pl.Series, pl.Series, int]:
    """`k_core` over a table too big for memory, from its user_id and item_id columns: the users
    and items that survive, and the number of iterations (as `k_core` counts them). A row survives
    when both its user and its item do: once an id has fewer than k rows, it never regains any."""
    users = items = None
    iterations = 0
    while True:
        alive = ids if users is None else ids.filter(pl.col("user_id").is_in(users.implode())
                                                     & pl.col("item_id").is_in(items.implode()))
        by_user = alive.group_by("user_id").len().collect(engine="streaming")
        by_item = alive.group_by("item_id").len().collect(engine="streaming")
        iterations += 1
        users = by_user.filter(pl.col("len") >= k)["user_id"]
        items = by_item.filter(pl.col("len") >= k)["item_id"]
        if users.len() == by_user.height and items.len() == by_item.height:
            return users, items, iterations


def rating_bounds(scale: str | tuple[float, float], observed: tuple[float, float] | None) -> tuple[float, float]:
    """The source range (lo, hi) that `normalize_ratings` maps onto 1-5: the declared `scale`, or
    with "auto" the `observed` (min, max), which stays 1-5 when it lies within 1-5."""
    if scale != "auto":
        return scale
    lo, hi = observed if observed is not None else RATING_RANGE
    if RATING_RANGE[0] <= lo and hi <= RATING_RANGE[1]:
        lo, hi = RATING_RANGE
    return lo, hi


def rescale_ratings(df: pl.DataFrame, lo: float, hi: float) -> tuple[pl.DataFrame, int]:
    """Ratings mapped linearly from [lo, hi] onto 1-5, and how many changed."""
    lo_t, hi_t = RATING_RANGE
    new = ((pl.col("rating") - lo) / (hi - lo) * (hi_t - lo_t) + lo_t).alias("rating")
    out = df.with_columns(new)
    return out, int((out["rating"] != df["rating"]).sum())


def normalize_ratings(df: pl.DataFrame, scale: str | tuple[float, float],
                      problems: Problems) -> tuple[pl.DataFrame, dict]:
    """Map ratings linearly onto 1–5 from the declared source `scale` (lo, hi) or, with "auto",
    from the observed min/max — which leaves data already within 1–5 as it is."""
    rows_in = df.height
    record: dict[str, Any] = {"target_range": list(RATING_RANGE)}
    if scale == "auto":
        lo, hi = (df["rating"].min(), df["rating"].max()) if df.height else RATING_RANGE
        if RATING_RANGE[0] <= lo and hi <= RATING_RANGE[1]:
            lo, hi = RATING_RANGE
    else:
        lo, hi = scale
        outside = df.filter((pl.col("rating") < lo) | (pl.col("rating") > hi))
        for row, rating in zip(outside["source_row"], outside["rating"]):
            problems.report("rating_scale", int(row), "rating",
                            f"outside the declared scale [{lo:g}, {hi:g}], got {rating:g} (source row {row})")
        df = df.filter((pl.col("rating") >= lo) & (pl.col("rating") <= hi))
        record["dropped_out_of_range"] = outside.height
    record["source_range"] = [lo, hi]
    if (lo, hi) == RATING_RANGE:
        return df, step_record("normalize_ratings", {"scale": scale}, rows_in, df.height, touched=0,
                               **record, note="already on 1-5: unchanged")
    if math.isclose(lo, hi):
        raise DataError(f"cannot normalise ratings: every rating is {lo}; declare rating_scale=[lo, hi]")
    lo_t, hi_t = RATING_RANGE
    new = ((pl.col("rating") - lo) / (hi - lo) * (hi_t - lo_t) + lo_t).alias("rating")
    out = df.with_columns(new)
    touched = int((out["rating"] != df["rating"]).sum())
    return out, step_record("normalize_ratings", {"scale": scale}, rows_in, out.height, touched=touched, **record)


def keep_referenced(table: pl.DataFrame | None, df: pl.DataFrame, key: str) -> tuple[pl.DataFrame | None, int]:
    """Rows of an items/users table whose id occurs in the interactions; and how many were dropped."""
    if table is None:
        return None, 0
    out = table.filter(pl.col(key).is_in(df[key].unique()))
    return out, table.height - out.height
