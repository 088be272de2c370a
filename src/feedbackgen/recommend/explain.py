"""Top-k recommendations explained: each ranked item with the feedback the user would give it.

    recommend(peter, ds, ["A2IBPI20UZIR0U"], k=10, choice=ease)   # one row per (user, rank)
    write_recommendations(recs, "recs.parquet")                      # the RECS file `simulate` reads

The ranking is `feedbackgen.recommend.ranking.top_k`'s, the one the service and the simulator use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.io import atomic_write
from feedbackgen.recommend.ranking import DEFAULT_EXCLUDE, catalogue, simulator_name, top_k
from feedbackgen.types import FeedbackRequest, source_label

RECOMMENDATION_SCHEMA = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8,
                         "predicted_rating": pl.Float64, "text": pl.Utf8, "title": pl.Utf8, "model": pl.Utf8,
                         "score": pl.Float64, "exclude": pl.Utf8, "provenance": pl.Utf8, "source_user": pl.Utf8,
                         "source_item": pl.Utf8, "source": pl.Utf8, "repeated": pl.Boolean}


def recommend(model: Any, dataset: Dataset, user_ids: Sequence[str], k: int = 10,
              candidates: Sequence[str] | Mapping[str, Sequence[str]] | None = None, *,
              explain: bool = True, decoding: Decoding | dict | None = None,
              problems: Problems | None = None, choice: Any = None, exclude: str = DEFAULT_EXCLUDE,
              history: Mapping[str, Sequence[str]] | None = None) -> pl.DataFrame:
    """The top `k` items for each user (`top_k`), each explained by generated feedback.

    Ranked by `choice`'s score when a ChoiceModel is given (what the user would take; `model`, a
    generator or None, then only explains), else by `model`'s predicted rating. `exclude`
    (none | train | train+valid | all), `history` and `candidates` are `top_k`'s: a user's own
    items in the named splits are never recommended, given candidates included.

    Users absent from the training split and candidate items absent from the dataset raise a
    `FeedbackgenError`, or, when `problems` is given, are reported there and left out.

    Returns one row per (user, rank): user_id, rank (1 = best), item_id, predicted_rating (null
    without a generator), text (the generated feedback, "" when `explain` is off, the model writes
    no text or has nothing to say about the item), title (from the dataset's item table), model,
    score (what ranked the item), exclude, then where the text came from
    (`feedbackgen.types.provenance`; nulls without a text): provenance, source_user, source_item,
    source (`types.source_label`), and repeated (the same non-empty text appears at least twice in
    this user's list: it says nothing specific about the item).
    """
    if model is None and choice is None:
        raise FeedbackgenError("recommend needs a generator, a choice model, or both")
    ranker = choice if choice is not None else model
    decoding = validate(Decoding, decoding, "decoding settings")
    known_users = set(dataset.train["user_id"].unique().to_list())
    known_items = set(catalogue(dataset).tolist())

    def refuse_or_report(unknown: list[str], what: str, where: str) -> None:
        if not unknown:
            return
        if problems is None:
            shown = ", ".join(repr(x) for x in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise FeedbackgenError(f"{len(unknown)} {what}(s) not in the {where}: {shown}")
        for x in unknown:
            problems.report(f"{what}s", None, f"{what}_id", f"unknown {what} {x!r} (not in the {where})")

    users = list(dict.fromkeys(user_ids))
    refuse_or_report([u for u in users if u not in known_users], "user", "dataset's training split")
    users = [u for u in users if u in known_users]
    if candidates is not None:
        given = ({i for items in candidates.values() for i in items} if isinstance(candidates, Mapping)
                 else set(candidates))
        refuse_or_report(sorted(given - known_items), "item", "dataset")
        candidates = ({u: [i for i in items if i in known_items] for u, items in candidates.items()}
                      if isinstance(candidates, Mapping) else [i for i in candidates if i in known_items])
    ranked = top_k(ranker, users, k, exclude=exclude, dataset=dataset, history=history, candidates=candidates)
    return explain_ranked(ranked, model, choice, dataset, explain=explain, decoding=decoding)


def explain_ranked(ranked: pl.DataFrame, model: Any, choice: Any, dataset: Dataset, *, explain: bool = True,
                   decoding: Decoding | None = None) -> pl.DataFrame:
    """`top_k`'s rows with the generator's rating and text for each (the RECOMMENDATION_SCHEMA)."""
    pairs = list(zip(ranked["user_id"].to_list(), ranked["item_id"].to_list()))
    scores = ranked["score"].to_list()
    texts = [""] * len(pairs)
    metas: list[dict[str, Any] | None] = [None] * len(pairs)
    ratings: list[float | None] = list(scores) if choice is None else [None] * len(pairs)
    if model is not None and pairs:
        requests = [FeedbackRequest(u, i) for u, i in pairs]
        if explain and getattr(model, "produces_text", False):
            feedback = model.generate(requests, decoding or Decoding())
            texts, metas = [fb.text for fb in feedback], [fb.meta for fb in feedback]
            ratings = [fb.rating for fb in feedback] if choice is not None else ratings
        elif choice is not None:
            ratings = [float(r) for r in model.predict_rating(requests)]
    items = [i for _, i in pairs]
    return pl.DataFrame({
        "user_id": [u for u, _ in pairs], "rank": ranked["rank"], "item_id": items, "predicted_rating": ratings,
        "text": texts, "title": _titles(dataset, items), "model": [simulator_name(model, choice)] * len(pairs),
        "score": scores, "exclude": ranked["exclude"], **provenance_columns(metas, items),
        "repeated": repeated_texts([u for u, _ in pairs], texts),
    }, schema=RECOMMENDATION_SCHEMA)


def provenance_columns(metas: Sequence[dict[str, Any] | None], item_ids: Sequence[str]) -> dict[str, list]:
    """provenance, source_user, source_item and source (label) per row, from each Feedback's meta
    (None: no feedback, so nulls)."""
    return {
        "provenance": [m.get("provenance") if m else None for m in metas],
        "source_user": [m.get("source_user") if m else None for m in metas],
        "source_item": [m.get("source_item") if m else None for m in metas],
        "source": [source_label(m, i) or None if m else None for m, i in zip(metas, item_ids)],
    }


def repeated_texts(user_ids: Sequence[str], texts: Sequence[str | None]) -> list[bool]:
    """Per row: its non-empty text appears at least twice among the rows of the same user."""
    counts = Counter((u, t) for u, t in zip(user_ids, texts) if t)
    return [bool(t) and counts[(u, t)] > 1 for u, t in zip(user_ids, texts)]


def _titles(dataset: Dataset, item_ids: list[str]) -> list[str | None]:
    if dataset.items is None or not item_ids:
        return [None] * len(item_ids)
    titles = dict(dataset.items.select("item_id", "title").iter_rows())
    return [titles.get(i) for i in item_ids]


def write_recommendations(recommendations: pl.DataFrame, path: str | Path) -> Path:
    """Write recommendations as Parquet, atomically (the RECS format `simulate` reads)."""
    return atomic_write(Path(path), lambda p: recommendations.write_parquet(p, compression="zstd",
                                                                            statistics=False))


def read_id_list(path: str | Path, column: str) -> list[str] | dict[str, list[str]]:
    """Ids from a text file (one a line), or a CSV/Parquet file with a `column` column.

    A CSV/Parquet file that also has a `user_id` column (and `column` is not `user_id`) gives a
    mapping user -> ids, in file order: per-user candidate lists.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    if path.suffix in (".csv", ".parquet"):
        df = pl.read_csv(path, infer_schema=False) if path.suffix == ".csv" else pl.read_parquet(path)
        if column not in df.columns:
            raise DataError(f"no {column!r} column (columns: {', '.join(df.columns)})", source=str(path))
        df = df.with_columns(pl.col(column).cast(pl.Utf8)).drop_nulls(column)
        if column != "user_id" and "user_id" in df.columns:
            df = df.with_columns(pl.col("user_id").cast(pl.Utf8)).drop_nulls("user_id")
            return {u: items for u, items in
                    df.group_by("user_id", maintain_order=True).agg(pl.col(column)).iter_rows()}
        return df[column].to_list()
    # split on "\n" only: str.splitlines also breaks at \x1c, \x85, U+2028, ... inside an id
    lines = [line.strip() for line in path.read_bytes().decode("utf-8").split("\n")]
    return [line for line in lines if line and not line.startswith("#")]


