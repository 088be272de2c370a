"""Preprocessing steps. Each takes the interactions and returns them with a record of what it did:

    {"step": name, "params": {...}, "rows_in": n, "rows_out": m, "touched": k, ...}

`prepare` appends every record to the manifest's `steps`, so a dataset says how it was made
(the RecBole habit). Steps keep the row order (source order) and are pure functions of their input.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import polars as pl

from feedbackgen.data.text import clean_text, count_tokens, scrub_pii_by_kind, tokenize, truncate_tokens
from feedbackgen.errors import DataError

RATING_RANGE = (1.0, 5.0)
# Sources whose rating scale is known, so never inferred: Amazon (2014, 2018, 2023 dumps) and Yelp
# rate 1-5 whole stars (McAuley et al.'s dataset pages; Yelp's dataset documentation). A value
# outside it (Amazon 2023 holds a few 0.0) is a bad record, not a reason to stretch the others.
KNOWN_SCALES = {"amazon2014": RATING_RANGE, "amazon2018": RATING_RANGE, "amazon2023": RATING_RANGE,
                "yelp": RATING_RANGE}


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


def _keep_latest(df: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """One review per (user, item) of `df` (in memory): the latest by timestamp (missing = oldest),
    ties by source order (later wins)."""
    latest = (
        df.select("user_id", "item_id", "timestamp", "source_row")
        .sort(["timestamp", "source_row"], nulls_last=False)
        .unique(["user_id", "item_id"], keep="last", maintain_order=True)["source_row"]
    )
    out = df.filter(pl.col("source_row").is_in(latest))
    pairs = df.group_by("user_id", "item_id").len().filter(pl.col("len") > 1).height
    return out, step_record("drop_duplicates", {"keep": "latest"}, df.height, out.height, touched=0,
                            duplicate_pairs=pairs, dropped_duplicates=df.height - out.height)


def duplicate_rows(ids: pl.LazyFrame | pl.DataFrame, buckets: int = 1) -> tuple[set[int], int]:
    """The step `drop_duplicates`, which keeps one review per (user, item): the latest by
    timestamp (missing = oldest), ties by source order (later wins). Returns the source rows it
    drops, and the number of (user, item) pairs with more than one review. `ids` has user_id, item_id, timestamp
    and source_row. Only a 64-bit hash per row is grouped (the streaming engine), in `buckets`
    passes over the hash's residues so that a pass holds 1/buckets of them; the few rows whose
    hash repeats are then compared by their real ids, so a hash collision changes nothing."""
    ids = ids.lazy()
    key = pl.struct("user_id", "item_id").hash(seed=0).alias("_pair")
    repeated = pl.concat([
        ids.select(key).filter(pl.col("_pair") % buckets == b).group_by("_pair").len()
        .filter(pl.col("len") > 1).select("_pair").collect(engine="streaming")["_pair"]
        for b in range(buckets)])
    if repeated.len() == 0:
        return set(), 0
    candidates = (ids.filter(key.is_in(repeated.implode()))
                  .select("user_id", "item_id", "timestamp", "source_row").collect(engine="streaming"))
    latest, record = _keep_latest(candidates)
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


def limit_length(df: pl.DataFrame, min_tokens: int, max_tokens: int,
                 over_max: str) -> tuple[pl.DataFrame, dict, Counter]:
    """The step `length_limits` on one chunk: drop reviews under `min_tokens` tokens; those over
    `max_tokens` (0 = no limit) are dropped or truncated (`over_max`). Returns the chunk, its step
    record, and how many reviews have each length (a chunked run adds these up for the exact
    median over every chunk, `median_of_counts`)."""
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

def k_core(ids: pl.LazyFrame | pl.DataFrame, k: int) -> tuple[pl.Series, pl.Series, int]:
    """The k-core of the user-item graph (as in RecBole's `user_inter_num_interval` filtering,
    iterated): the users and the items with at least `k` rows among the rows whose user and item
    both survive, found by dropping the ids under `k` until nothing changes. `ids` has user_id
    and item_id. Returns (users, items, iterations); a row is in the core when both its user and
    its item are. k <= 1 keeps every id (0 iterations). Memory: the per-id counts; once an id has
    fewer than k rows it never regains any, so only the surviving ids are carried."""
    ids = ids.lazy().select("user_id", "item_id")
    if k <= 1:
        users = ids.select(pl.col("user_id").unique()).collect(engine="streaming")["user_id"]
        items = ids.select(pl.col("item_id").unique()).collect(engine="streaming")["item_id"]
        return users, items, 0
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


@dataclass(frozen=True)
class RatingScale:
    """How the step `normalize_ratings` reads the ratings: the source range [lo, hi] and where it
    comes from. `declared` (given by the user, known for the format, or the loader's own): a
    rating outside it is a bad record, dropped. `native` (a loader's own scale, MovieLens: 1-5 or
    0.5-5): kept as it is. Otherwise the range is mapped linearly onto `RATING_RANGE` (1-5)."""

    lo: float
    hi: float
    scale_from: str
    declared: bool
    native: bool

    @property
    def rescale(self) -> bool:
        return not self.native and (self.lo, self.hi) != RATING_RANGE

    def in_range(self) -> pl.Expr:
        """True for a row kept: every row unless the scale is declared."""
        if not self.declared:
            return pl.lit(True)
        return (pl.col("rating") >= self.lo) & (pl.col("rating") <= self.hi)

    def rescaled(self, df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        """`df` with its ratings mapped from [lo, hi] onto 1-5 (unchanged unless `rescale`), and
        how many changed."""
        if not self.rescale:
            return df, 0
        lo_t, hi_t = RATING_RANGE
        new = ((pl.col("rating") - self.lo) / (self.hi - self.lo) * (hi_t - lo_t) + lo_t).alias("rating")
        out = df.with_columns(new)
        return out, int((out["rating"] != df["rating"]).sum())

    def record(self, fmt: str, *, touched: int, dropped: int) -> dict[str, Any]:
        """The extra fields of the step's manifest record."""
        lo, hi = self.lo, self.hi
        out: dict[str, Any] = {"touched": touched, "target_range": [lo, hi] if self.native else list(RATING_RANGE)}
        if self.declared:
            out["dropped_out_of_range"] = dropped
        out["source_range"] = [lo, hi]
        if self.native:
            out["note"] = f"the source's own scale [{lo:g}, {hi:g}] ({fmt}): kept, not rescaled"
        elif (lo, hi) == RATING_RANGE:
            out["note"] = "already on 1-5: unchanged"
        elif not self.declared:
            out["note"] = (f"rating scale inferred from the data as [{lo:g}, {hi:g}] and mapped onto 1-5: "
                           f"{touched:,} rating(s) changed; declare rating_scale=[lo,hi] if that is not the scale")
        out["scale_from"] = self.scale_from
        return out


def rating_scale(scale: str | tuple[float, float], fmt: str, native: tuple[float, float] | None,
                 observed: tuple[float, float] | None) -> RatingScale:
    """The scale of a source's ratings: the declared `scale` ([lo, hi]); with "auto", the format's
    known scale (`KNOWN_SCALES`), else the loader's own (`native`, kept as it is), else the
    `observed` (min, max), taken as 1-5 when it lies within 1-5. Raises DataError when an
    inferred scale is a single value (nothing to map from)."""
    if scale != "auto":
        lo, hi = scale
        return RatingScale(float(lo), float(hi), "declared scale", declared=True, native=False)
    if fmt in KNOWN_SCALES:
        return RatingScale(*KNOWN_SCALES[fmt], f"known scale of {fmt}", declared=True, native=False)
    if native:
        return RatingScale(*native, f"own scale of this {fmt} release", declared=True, native=True)
    lo, hi = observed if observed is not None else RATING_RANGE
    if RATING_RANGE[0] <= lo and hi <= RATING_RANGE[1]:
        lo, hi = RATING_RANGE
    if math.isclose(lo, hi):
        raise DataError(f"cannot normalise ratings: every rating is {lo}; declare rating_scale=[lo, hi]")
    return RatingScale(lo, hi, "inferred from the observed ratings", declared=False, native=False)


def keep_referenced(table: pl.DataFrame | None, df: pl.DataFrame, key: str) -> tuple[pl.DataFrame | None, int]:
    """Rows of an items/users table whose id occurs in the interactions; and how many were dropped."""
    if table is None:
        return None, 0
    out = table.filter(pl.col(key).is_in(df[key].unique()))
    return out, table.height - out.height
