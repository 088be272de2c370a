"""The one top-k ranking (`top_k`), and the evaluation of rankings on the test split.

    top_k(ease, ["A2IBPI20UZIR0U"], k=10, dataset=ds)          # user_id, rank, item_id, score, exclude
    evaluate_ranking({"mf": mf, "ease": create_choice("ease").fit(ds)}, ds)   # HR@K / NDCG@K / Recall@K

`top_k` is what the CLI (`recommend`), the Python API (`feedbackgen.recommend.recommend`, which
explains its rows), `ChoiceModel.recommend`, the service and the simulator rank with: one mask
(`exclude`), one tie-break, one answer for unknown users. A "model" is anything that scores
(user, item) pairs: a `Generator` (its `predict_rating`) or a choice model (`score`).

Ranking evaluation (`evaluate_ranking`): `full` ranks, per test user, every item less their train
and valid ones (RecBole's full sort; `top_k`'s default `exclude="train+valid"`) with their test
items relevant; `sampled` ranks each test interaction against 99 never-seen items drawn uniformly
(He et al., NCF, WWW 2017). They can disagree (Krichene & Rendle, KDD 2020): report both.

Ties: among equal scores the item with more training interactions goes first, then (in `top_k`)
the smaller item id, or (in the evaluation) a random order drawn from the seed.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import FeedbackgenError
from feedbackgen.io import atomic_write_json, atomic_write_text
from feedbackgen.recommend.choice import UNKNOWN_ITEM_SCORE, ChoiceModel, Popularity
from feedbackgen.recommend.metrics import KS, positions, ranking_metrics
from feedbackgen.tables import markdown_table
from feedbackgen.types import FeedbackRequest

SCORE_CHUNK = 200_000  # pairs scored per call: bounds the memory of the request objects
USERS_PER_BATCH = 128
PROTOCOLS = ("full", "sampled")
RANKING_FORMATS = {"candidates": ".1f"}  # evaluate_ranking's mean list length: one decimal


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


# -- the one top-k ranking ---------------------------------------------------------------------

# which of a user's own items are never recommended back, by the splits they are in (the items of
# `history`, a visitor's session or the events since training, are always masked)
EXCLUDE: dict[str, tuple[str, ...]] = {"none": (), "train": ("train",), "train+valid": ("train", "valid"),
                                       "all": ("train", "valid", "test")}
DEFAULT_EXCLUDE = "train+valid"  # what the offline evaluation masks (RecBole's full sort), so lists score
TOP_K_SCHEMA = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8, "score": pl.Float64,
                "exclude": pl.Utf8}


class Pool:
    """The default candidates of `top_k` with what ranking them needs, computed once per dataset
    (or per model, without a dataset): the items (sorted by id), their train interaction counts
    (the tie-break), the users who have train interactions, and each user's items per split."""

    def __init__(self, items: Sequence[str], popularity: np.ndarray, train_users: set[str] | None,
                 by_split: dict[str, dict[str, np.ndarray]]):
        self.items = np.array(items, dtype=object)
        self.index = {item: n for n, item in enumerate(self.items)}
        self.popularity, self.train_users, self.by_split = popularity, train_users, by_split
        self.model_cols: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its columns of items

    @classmethod
    def of_dataset(cls, dataset: Dataset) -> Pool:
        items = catalogue(dataset)
        index = {item: n for n, item in enumerate(items)}
        counts = dict(dataset.train.group_by("item_id").len().iter_rows())
        by_split: dict[str, dict[str, np.ndarray]] = {}
        for split, df in dataset.interactions.group_by("split"):
            by_split[split[0]] = {u: np.fromiter((index[i] for i in set(its)), dtype=np.int64)
                                  for u, its in df.group_by("user_id").agg(pl.col("item_id")).iter_rows()}
        train_users = set(by_split.get("train", {}))
        return cls(items, np.array([counts.get(i, 0) for i in items], dtype=np.float64), train_users, by_split)

    @classmethod
    def of_model(cls, model: Any) -> Pool:
        """A choice model's own items and train matrix (it knows no valid or test split)."""
        train = {u: model.taken(row) for u, row in model.user_index.items()}
        return cls(model.item_ids, np.asarray(model.popularity, dtype=np.float64), set(model.user_ids),
                   {"train": train})

    def masked(self, user: str, exclude: str) -> np.ndarray:
        """Positions in `items` of the user's items in the splits `exclude` names."""
        parts = [self.by_split.get(split, {}).get(user) for split in EXCLUDE[exclude]]
        parts = [p for p in parts if p is not None]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def count(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.array([self.popularity[self.index[i]] if i in self.index else 0.0 for i in item_ids])


_POOLS: dict[int, tuple[weakref.ref, Pool]] = {}


def pool_of(dataset: Dataset) -> Pool:
    """`Pool.of_dataset`, kept while the dataset lives: a service ranks for many users of one dataset."""
    key = id(dataset)
    hit = _POOLS.get(key)
    if hit is not None and hit[0]() is dataset:
        return hit[1]
    pool = Pool.of_dataset(dataset)
    _POOLS[key] = (weakref.ref(dataset, lambda _, key=key: _POOLS.pop(key, None)), pool)
    return pool


def check_exclude(exclude: str) -> str:
    if exclude not in EXCLUDE:
        raise FeedbackgenError(f"exclude={exclude!r} is not one of {', '.join(EXCLUDE)} (which of a user's own "
                               "items, by split, are never recommended back)")
    return exclude


def top_k(model: Any, user_ids: Sequence[str], k: int = 10, *, exclude: str = DEFAULT_EXCLUDE,
          dataset: Dataset | None = None, history: Mapping[str, Sequence[str]] | None = None,
          candidates: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> pl.DataFrame:
    """The `k` best items per user: the one ranking of the CLI, the Python API, the service and the simulator.

    model: a `ChoiceModel` (ranks by its score) or a `Generator` (by its predicted rating).
    exclude: which of the user's own items are masked, by split: none | train | train+valid (the
    default: what the offline evaluation masks) | all. Named in the `exclude` column of every row.
    dataset: the splits `exclude` reads and the default candidates (every item of the dataset);
    optional for a choice model with exclude none or train (its own items and train matrix).
    history: user -> items the user took beyond the dataset (a visitor's session, events since
    training): always masked, and folded into the scoring by choice models that can
    (`folds_history`: item-item models from the items, factor models by solving the user's factors).
    candidates: None (the whole pool), one list for every user, or a list per user; masked alike.
    Unknown users (no train interaction, no history) get the popularity order; items a choice
    model cannot score (-inf) are left out. Ties: the item with more train interactions, then the
    smaller item id. Users are deduplicated in order.

    Returns columns user_id, rank (1 = best), item_id, score, exclude; fewer than k rows for a
    user when fewer candidates are left. Raises FeedbackgenError for k < 1 or an unknown exclude.
    """
    rows = ranked_rows(model, user_ids, k, exclude=exclude, dataset=dataset, history=history, candidates=candidates)
    return pl.DataFrame({"user_id": [r[0] for r in rows], "rank": [r[1] for r in rows],
                         "item_id": [r[2] for r in rows], "score": [r[3] for r in rows],
                         "exclude": [exclude] * len(rows)}, schema=TOP_K_SCHEMA)


def ranked_rows(model: Any, user_ids: Sequence[str], k: int = 10, *, exclude: str = DEFAULT_EXCLUDE,
                dataset: Dataset | None = None, history: Mapping[str, Sequence[str]] | None = None,
                candidates: Sequence[str] | Mapping[str, Sequence[str]] | None = None
                ) -> list[tuple[str, int, str, float]]:
    """`top_k`'s rows as (user_id, rank, item_id, score) tuples, without building a frame (the
    service ranks one user per call, where the frame would cost more than the ranking)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise FeedbackgenError(f"k must be a positive integer, got {k!r}")
    check_exclude(exclude)
    history = history or {}
    is_choice = isinstance(model, ChoiceModel)
    if is_choice:
        model.check_fitted()
    if dataset is None:  # a choice model knows its train matrix; a generator, only the given candidates
        if exclude not in (("none", "train") if is_choice else ("none",)) or not (is_choice or candidates):
            raise FeedbackgenError(f"ranking with exclude={exclude!r}" + ("" if is_choice else " by a generator")
                                   + " needs the dataset (dataset=...)")
        pool = Pool.of_model(model) if is_choice else Pool([], np.zeros(0), None, {})
    else:
        pool = pool_of(dataset)
    rows: list[tuple[str, int, str, float]] = []
    users = list(dict.fromkeys(user_ids))
    for start in range(0, len(users), USERS_PER_BATCH):
        batch = users[start:start + USERS_PER_BATCH]
        lists = [_candidates(pool, u, candidates, exclude, history.get(u, ())) for u in batch]
        scores = (_choice_scores if is_choice else _rating_scores)(model, pool, batch, lists, history)
        for user, (items, pop, id_rank, keep), s in zip(batch, lists, scores):
            cand = np.flatnonzero(keep & np.isfinite(s))
            if len(cand) > 4 * k:  # only items scoring at least the k-th best can make the list (ties kept)
                cand = cand[s[cand] >= np.partition(s[cand], len(cand) - k)[len(cand) - k]]
            # highest score first, then the more popular item, then the smaller id (last key sorts first)
            order = cand[np.lexsort((id_rank[cand], -pop[cand], -s[cand]))[:k]]
            rows += [(user, r + 1, items[j], float(s[j])) for r, j in enumerate(order)]
    return rows


def _candidates(pool: Pool, user: str, candidates: Any, exclude: str, history: Sequence[str]) -> tuple:
    """(items, their popularity, their order by id, the allowed ones) of one user's candidates:
    the user's items in the `exclude` splits and in `history` are not allowed."""
    if candidates is None:
        keep = np.ones(len(pool.items), dtype=bool)
        keep[pool.masked(user, exclude)] = False
        keep[[pool.index[i] for i in history if i in pool.index]] = False
        return pool.items, pool.popularity, np.arange(len(pool.items)), keep
    given = candidates.get(user, ()) if isinstance(candidates, Mapping) else candidates
    items = np.array(list(dict.fromkeys(given)), dtype=object)
    masked = set(pool.items[pool.masked(user, exclude)].tolist()) | set(history)
    keep = np.array([i not in masked for i in items], dtype=bool)
    return items, pool.count(items), np.argsort(np.argsort(items.astype(str))), keep


def _choice_scores(model: Any, pool: Pool, users: list[str], lists: list[tuple],
                   history: Mapping[str, Sequence[str]]) -> list[np.ndarray]:
    """One score array per user, aligned with its candidates: a row of the model's dense scores,
    from its own matrix, or from the user's train items plus `history` when the model folds one in."""
    rows = model.user_rows(users)
    fold = [n for n, u in enumerate(users) if history.get(u) and getattr(model, "folds_history", False)]
    dense = model.dense(rows)
    if fold:
        extra = [model.item_cols(list(history[users[n]])) for n in fold]
        taken = [np.union1d(model.taken(rows[n]), c[c >= 0]) for n, c in zip(fold, extra)]
        x = sp.csr_matrix((np.ones(sum(map(len, taken))), np.concatenate(taken).astype(np.int64),
                           np.concatenate([[0], np.cumsum([len(t) for t in taken])])),
                          shape=(len(fold), len(model.item_ids)))
        dense[fold] = model.score_history(x)
    out = []
    for n, (items, *_rest) in enumerate(lists):
        if items is pool.items:  # the model's columns of the pool, looked up once per model
            cols = pool.model_cols.get(model)
            if cols is None:
                cols = pool.model_cols[model] = model.item_cols(pool.items)
        else:
            cols = model.item_cols(items)
        out.append(np.where(cols >= 0, dense[n, np.maximum(cols, 0)], UNKNOWN_ITEM_SCORE))
    return out


def _rating_scores(model: Any, pool: Pool, users: list[str], lists: list[tuple],
                   history: Mapping[str, Sequence[str]]) -> list[np.ndarray]:
    """Predicted ratings of a generator for its known users; an unknown user's candidates are
    scored by their popularity (the generator's rating for someone it never saw says nothing)."""
    known = [n for n, u in enumerate(users) if pool.train_users is None or u in pool.train_users]
    flat_users = [users[n] for n in known for _ in range(len(lists[n][0]))]
    flat_items = [i for n in known for i in lists[n][0]]
    scores = score_pairs(model, flat_users, flat_items)
    out, offset = [np.asarray(pop, dtype=np.float64) for _, pop, *_ in lists], 0
    for n in known:
        out[n] = scores[offset:offset + len(lists[n][0])]
        offset += len(lists[n][0])
    return out

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


def write_ranking(table: pl.DataFrame, out_dir: str | Path, dataset_label: str = "this dataset") -> Path:
    """Write an `evaluate_ranking` table as ranking.json (rows) and ranking.md (a Markdown section)."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "ranking.json", {"dataset": dataset_label, "rows": table.to_dicts()})
    text = (f"## Ranking ({dataset_label}, test split)\n\n" + markdown_table(table, formats=RANKING_FORMATS)
            + "\n\nHigher is better. "
            "full: every item the user has not interacted with in train or valid is a candidate (RecBole's "
            "full sort); sampled: each test item against 99 never-seen items (NCF). HR@K, NDCG@K, Recall@K as "
            "defined in `feedbackgen.recommend.metrics`.\n")
    atomic_write_text(out_dir / "ranking.md", text)
    return out_dir
