"""Rank items for a user by predicted rating, explain each with generated feedback, and evaluate rankings.

    recommend(model, dataset, ["A2IBPI20UZIR0U"], k=10)        # a DataFrame, one row per (user, rank)
    evaluate_ranking({"mf": mf, "ease": create_choice("ease").fit(ds)}, ds)   # HR@K / NDCG@K / Recall@K

A "model" here is anything that scores (user, item) pairs: a `Generator` (scored by its
`predict_rating`: PETER's rating head; the biased MF inside `retrieval` and `popular`), or an
object with `score(user_ids, item_ids)`: every choice model of `feedbackgen.recommend.choice`
(popularity, itemknn, ease, als, bpr, hybrid), which scores a whole list per user at once.

Ranking evaluation on the test split, with two protocols (`evaluate_ranking`):

- `full`: each test user's candidates are all items of the dataset except those the user has in
  train or valid (RecBole's full-sort evaluation masks the same history); the relevant items are
  the user's test items. One query per test user.
- `sampled`: each test interaction is ranked against `n_negatives` (99) items drawn uniformly,
  without replacement, from the items the user never interacted with in any split (He et al.,
  "Neural Collaborative Filtering", WWW 2017, section 4.1). One query per test interaction.
  Sampled metrics can disagree with full ones on which model is better (Krichene & Rendle,
  "On Sampled Metrics for Item Recommendation", KDD 2020): report both.

Ties: predictions are clipped to the rating range, so a generous user's best items often tie at
5 stars (on Musical Instruments, 18% of test users have ten or more). Among equal predictions
the item with more training interactions goes first, then (in `recommend`) the smaller item id,
or (in the evaluation) a random order drawn from the seed. Negatives and user subsets are drawn
once from `seed`, so every model ranks the same lists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.io import atomic_write, atomic_write_json, atomic_write_text
from feedbackgen.recommend.choice import Popularity
from feedbackgen.recommend.metrics import KS, positions, ranking_metrics
from feedbackgen.types import FeedbackRequest, source_label

SCORE_CHUNK = 200_000  # pairs scored per call: bounds the memory of the request objects
USERS_PER_BATCH = 128
PROTOCOLS = ("full", "sampled")
# `evaluate_ranking`'s candidates column is a mean list length: one decimal, not a metric's four
RANKING_FORMATS = {"candidates": ".1f"}
RECOMMENDATION_SCHEMA = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8,
                         "predicted_rating": pl.Float64, "text": pl.Utf8, "title": pl.Utf8, "model": pl.Utf8,
                         "score": pl.Float64, "provenance": pl.Utf8, "source_user": pl.Utf8,
                         "source_item": pl.Utf8, "source": pl.Utf8, "repeated": pl.Boolean}


def score_pairs(model: Any, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """One score per aligned (user, item) pair: `model.score` when it has one, else its predicted rating."""
    if hasattr(model, "score"):
        return np.asarray(model.score(user_ids, item_ids), dtype=np.float64)
    out = []
    for start in range(0, len(user_ids), SCORE_CHUNK):
        reqs = [FeedbackRequest(u, i) for u, i in zip(user_ids[start:start + SCORE_CHUNK],
                                                      item_ids[start:start + SCORE_CHUNK])]
        out.append(np.asarray(model.predict_rating(reqs), dtype=np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def model_name(model: Any) -> str:
    return getattr(model, "name", type(model).__name__)


def simulator_name(model: Any, choice: Any, model_dir: str | Path | None = None,
                   choice_dir: str | Path | None = None) -> str:
    """The one label of a generator + choice model pair, in every table and title that names it
    (a simulated user, a ranker with its explainer): `generator + choice model`, or whichever of
    the two is there, each followed by its folder's name in parentheses only when that differs
    from the model's name (`popular (popular2) + ease`)."""
    parts = []
    for m, folder in ((model, model_dir), (choice, choice_dir)):
        if m is None:
            continue
        name = model_name(m)
        folder = Path(folder).name if folder is not None else None
        parts.append(name if folder in (None, "", name) else f"{name} ({folder})")
    return " + ".join(parts)


# -- the item catalogue and what each user has seen ---------------------------------------------

def catalogue(dataset: Dataset) -> np.ndarray:
    """Every item with an interaction in any split, sorted: the items that can be recommended."""
    return np.array(sorted(dataset.interactions["item_id"].unique().to_list()), dtype=object)


def items_by_user(df: pl.DataFrame) -> dict[str, set[str]]:
    grouped = df.group_by("user_id").agg(pl.col("item_id").unique())
    return {u: set(items) for u, items in grouped.iter_rows()}


class UnseenSampler:
    """Draws, for a user, items they never interacted with in any split (uniformly, no replacement)."""

    def __init__(self, dataset: Dataset, rng: np.random.Generator):
        self.items = catalogue(dataset)
        self.index = {item: n for n, item in enumerate(self.items)}
        self.seen = items_by_user(dataset.interactions)
        self.rng = rng

    def sample(self, user: str, n: int) -> np.ndarray:
        """Up to `n` unseen items (fewer when the user has seen nearly everything)."""
        allowed = np.ones(len(self.items), dtype=bool)
        allowed[[self.index[i] for i in self.seen.get(user, ())]] = False
        pool = np.flatnonzero(allowed)
        return self.items[self.rng.choice(pool, size=min(n, len(pool)), replace=False)]


# -- recommend ---------------------------------------------------------------------------------

def recommend(model: Any, dataset: Dataset, user_ids: Sequence[str], k: int = 10,
              candidates: Sequence[str] | Mapping[str, Sequence[str]] | None = None, *,
              explain: bool = True, decoding: Decoding | dict | None = None,
              problems: Problems | None = None, choice: Any = None) -> pl.DataFrame:
    """The top `k` items for each user, each explained by generated feedback.

    Ranked by `choice`'s score when a ChoiceModel is given (what the user would take; `model`, a
    generator or None, then only explains), else by `model`'s predicted rating.

    candidates: None ranks every catalogue item the user has not interacted with (in any split);
    a list ranks those items for every user; a mapping user -> list ranks per-user lists. Given
    candidates are ranked as given, already-seen ones included.
    Users absent from the training split (the model knows nothing about them) and candidate items
    absent from the dataset raise a `FeedbackgenError`, or, when `problems` is given, are reported
    there and left out. Ties go to the item with more training interactions, then to the smaller
    item id, so the output is deterministic.

    Returns one row per (user, rank): user_id, rank (1 = best), item_id, predicted_rating (null
    without a generator), text (the generated feedback, "" when `explain` is off, the model writes
    no text or has nothing to say about the item), title (from the dataset's item table, when it
    has one), model, score (what ranked the item: the choice model's score, or the predicted
    rating), then where the text came from (`feedbackgen.types.provenance`; nulls without a text):
    provenance (generated | copied | fallback | none), source_user and source_item (the training
    review a copied text was taken from), source (the one-line label of `types.source_label`), and
    repeated (the same non-empty text appears at least twice in this user's list: it says nothing
    specific about the item).
    """
    if model is None and choice is None:
        raise FeedbackgenError("recommend needs a generator, a choice model, or both")
    ranker = choice if choice is not None else model
    if not isinstance(k, int) or k < 1:
        raise FeedbackgenError(f"k must be a positive integer, got {k!r}")
    decoding = validate(Decoding, decoding, "decoding settings")
    known_users = set(dataset.train["user_id"].unique().to_list())
    popularity = Popularity().fit(dataset)
    all_items = catalogue(dataset)
    known_items = set(all_items.tolist())
    seen = items_by_user(dataset.interactions)

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

    def candidates_of(user: str) -> np.ndarray:
        if candidates is None:
            mine = seen.get(user, set())
            return np.array([i for i in all_items if i not in mine], dtype=object)
        given = candidates.get(user, ()) if isinstance(candidates, Mapping) else candidates
        return np.array(list(dict.fromkeys(given)), dtype=object)

    if candidates is not None:
        given = ({i for items in candidates.values() for i in items} if isinstance(candidates, Mapping)
                 else set(candidates))
        refuse_or_report(sorted(given - known_items), "item", "dataset")
        candidates = ({u: [i for i in items if i in known_items] for u, items in candidates.items()}
                      if isinstance(candidates, Mapping) else [i for i in candidates if i in known_items])

    top_rows: list[tuple[str, int, str, float]] = []
    for start in range(0, len(users), USERS_PER_BATCH):
        batch = users[start:start + USERS_PER_BATCH]
        lists = [candidates_of(u) for u in batch]
        flat_users = [u for u, items in zip(batch, lists) for _ in range(len(items))]
        flat_items = [i for items in lists for i in items]
        scores = score_pairs(ranker, flat_users, flat_items)
        offset = 0
        for user, items in zip(batch, lists):
            s = scores[offset:offset + len(items)]
            offset += len(items)
            # highest score first, then the more reviewed item, then the smaller id
            order = np.lexsort((items, -popularity.count(items), -s))[:k]
            top_rows += [(user, r + 1, items[j], float(s[j])) for r, j in enumerate(order)]

    texts = [""] * len(top_rows)
    metas: list[dict[str, Any] | None] = [None] * len(top_rows)
    ratings: list[float | None] = [s for *_, s in top_rows] if choice is None else [None] * len(top_rows)
    if model is not None and top_rows:
        requests = [FeedbackRequest(u, i) for u, _, i, _ in top_rows]
        if explain and getattr(model, "produces_text", False):
            feedback = model.generate(requests, decoding)
            texts, metas = [fb.text for fb in feedback], [fb.meta for fb in feedback]
            ratings = [fb.rating for fb in feedback] if choice is not None else ratings
        elif choice is not None:
            ratings = [float(r) for r in model.predict_rating(requests)]
    titles = _titles(dataset, [i for _, _, i, _ in top_rows])
    name = simulator_name(model, choice)
    return pl.DataFrame({
        "user_id": [u for u, *_ in top_rows], "rank": [r for _, r, *_ in top_rows],
        "item_id": [i for _, _, i, _ in top_rows], "predicted_rating": ratings,
        "text": texts, "title": titles, "model": [name] * len(top_rows), "score": [s for *_, s in top_rows],
        **provenance_columns(metas, [i for _, _, i, _ in top_rows]),
        "repeated": repeated_texts([u for u, *_ in top_rows], texts),
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


def write_ranking(table: pl.DataFrame, out_dir: str | Path, dataset_label: str = "this dataset") -> Path:
    """Write an `evaluate_ranking` table as ranking.json (rows) and ranking.md (a Markdown section)."""
    from feedbackgen.recommend.tables import markdown_table

    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "ranking.json", {"dataset": dataset_label, "rows": table.to_dicts()})
    text = (f"## Ranking ({dataset_label}, test split)\n\n" + markdown_table(table, formats=RANKING_FORMATS)
            + "\n\nHigher is better. "
            "full: every item the user has not interacted with in train or valid is a candidate (RecBole's "
            "full sort); sampled: each test item against 99 never-seen items (NCF). HR@K, NDCG@K, Recall@K as "
            "defined in `feedbackgen.recommend.metrics`.\n")
    atomic_write_text(out_dir / "ranking.md", text)
    return out_dir


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


# -- ranking evaluation ------------------------------------------------------------------------

@dataclass
class RankingQueries:
    """The lists every model ranks: query q is user `users[q]` with `items[q]`, relevant where `relevant[q]`."""

    protocol: str
    users: list[str]
    items: list[np.ndarray]
    relevant: list[np.ndarray]


def ranking_queries(dataset: Dataset, protocol: str = "full", n_negatives: int = 99, seed: int = 1,
                    max_users: int | None = None, users: Sequence[str] | None = None) -> RankingQueries:
    """Build the candidate lists of `protocol` (see the module docstring) for the test split.

    users: only these test users; max_users: a seeded sample of (those) test users.
    """
    if protocol not in PROTOCOLS:
        raise FeedbackgenError(f"unknown ranking protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if n_negatives < 1:
        raise FeedbackgenError(f"n_negatives must be at least 1, got {n_negatives}")
    rng = np.random.default_rng(seed)
    test = dataset.test.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    if users is not None:
        test = test.filter(pl.col("user_id").is_in(list(users)))
    test_users = sorted(test["user_id"].unique().to_list())
    if max_users is not None and len(test_users) > max_users:
        test_users = sorted(rng.choice(test_users, size=max_users, replace=False).tolist())
        test = test.filter(pl.col("user_id").is_in(test_users))
    all_items = catalogue(dataset)
    relevant_items = items_by_user(test)
    queries = RankingQueries(protocol, [], [], [])
    if protocol == "full":
        history = items_by_user(dataset.interactions.filter(pl.col("split").is_in(["train", "valid"])))
        for user in test_users:
            mine = history.get(user, set())
            items = np.array([i for i in all_items if i not in mine], dtype=object)
            mine_relevant = relevant_items[user]
            relevant = np.array([i in mine_relevant for i in items], dtype=bool)
            if relevant.any():
                queries.users.append(user)
                queries.items.append(items)
                queries.relevant.append(relevant)
        return queries
    sampler = UnseenSampler(dataset, rng)
    for user, positive in test.select("user_id", "item_id").iter_rows():
        negatives = sampler.sample(user, n_negatives)
        queries.users.append(user)
        queries.items.append(np.concatenate([[positive], negatives]).astype(object))
        queries.relevant.append(np.arange(len(negatives) + 1) == 0)
    return queries


def relevant_ranks(model: Any, queries: RankingQueries, seed: int = 1,
                   popularity: Popularity | None = None) -> list[np.ndarray]:
    """The 1-based ranks of each query's relevant items under `model`'s scores (ties: see the module)."""
    rng = np.random.default_rng(seed)
    flat_users = [u for u, items in zip(queries.users, queries.items) for _ in range(len(items))]
    flat_items = [i for items in queries.items for i in items]
    scores = score_pairs(model, flat_users, flat_items)
    tie_break = popularity.count(flat_items) if popularity is not None else np.zeros(len(flat_items))
    out, offset = [], 0
    for items, relevant in zip(queries.items, queries.relevant):
        part = slice(offset, offset + len(items))
        out.append(positions(scores[part], rng, tie_break[part])[relevant])
        offset += len(items)
    return out


def evaluate_ranking(models: Mapping[str, Any], dataset: Dataset, ks: Sequence[int] = KS,
                     protocols: Sequence[str] = PROTOCOLS, n_negatives: int = 99, seed: int = 1,
                     max_users: int | None = None, users: Sequence[str] | None = None) -> pl.DataFrame:
    """HR@K, NDCG@K and Recall@K of each model under each protocol, one row per (model, protocol).

    Columns: model, protocol, queries (test users for `full`, test interactions for `sampled`),
    candidates (mean list length), then hr@K, ndcg@K and recall@K for each K. Higher is better.
    `users` restricts the evaluation to those test users; `max_users` evaluates a seeded sample of
    test users (for slow models).
    """
    rows = []
    popularity = Popularity().fit(dataset)
    for protocol in protocols:
        queries = ranking_queries(dataset, protocol, n_negatives, seed, max_users, users)
        for name, model in models.items():
            ranks = relevant_ranks(model, queries, seed, popularity)
            rows.append({"model": name, "protocol": protocol, "queries": len(ranks),
                         "candidates": float(np.mean([len(i) for i in queries.items])) if ranks else 0.0,
                         **ranking_metrics(ranks, ks)})
    return pl.DataFrame(rows)
