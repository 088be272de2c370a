"""The `ChoiceModel` interface, the train interaction matrix, the validation search, save/load and the registry.

A choice model answers "will this user take this item?" with a score (higher = more likely chosen).
It learns from the train split only, each (user, item) row counting as one "chosen" (the rating is
ignored: an interaction means the user chose the item). Saved as a model folder of kind "choice"
(`feedbackgen.models.folder`): config.json (with the validation search's record under "search"),
model.safetensors (the model's arrays under "model.", the train matrix under "seen."), and ids.json
({"users": [...], "items": [...]}: the `IdIndex` maps; row i of every user array is users[i], the
user of index i + 1).

Why train only, also after the search: the simulated user calibrates the engage probability on the
valid split, which the model must not have seen; and test evaluation masks train + valid history,
as RecBole's full-sort evaluation does, so a model fitted on train is ranked the same way as the
rating models of `feedbackgen.recommend.ranking`.

Unknown users (no train interaction) are scored by the popularity fallback: every item's number of
train interactions, the same list for everyone. Unknown items (none of the model's items) score
`UNKNOWN_ITEM_SCORE` (-inf), below every known item.
"""

from __future__ import annotations

import itertools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, Field

from feedbackgen.config import StrictModel, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError, DataError, FeedbackgenError, NotFittedError
from feedbackgen.models.folder import IdIndex, SavedModel, read_config, register_kind
from feedbackgen.recommend.metrics import hit_rate, ndcg, positions

UNKNOWN_ITEM_SCORE = -np.inf
SEARCH_K = 10  # the search maximises NDCG@10 on valid
DENSE_CELLS = 1 << 23  # users x items scored at once (64 MB of float64): bounds the memory of scoring


class ChoiceConfig(StrictModel):
    """Settings every choice model has. Hyper-parameters are added by each model's `Config`."""

    search: bool = Field(True, description="choose the hyper-parameters on the valid split (NDCG@10); "
                                           "values set explicitly are held fixed")
    search_users: int = Field(2000, ge=1, description="most valid users the search ranks for (seeded sample)")
    seed: int = Field(1, ge=0, description="seed of the fit and of the search's user sample")


@dataclass
class Interactions:
    """A binary users x items matrix (CSR, float64) with the ids of its rows and columns, both sorted."""

    users: list[str]
    items: list[str]
    matrix: sp.csr_matrix

    @classmethod
    def from_frame(cls, df: pl.DataFrame, items: Sequence[str] | None = None) -> Interactions:
        """Every (user, item) row of `df` counts once. `items`: the columns (default: the items of `df`);
        rows of `df` whose item is not among them are left out."""
        users = sorted(df["user_id"].unique().to_list())
        items = sorted(set(df["item_id"].unique().to_list()) if items is None else set(items))
        pairs = df.select("user_id", "item_id").unique()
        u_index, i_index = {u: n for n, u in enumerate(users)}, {i: n for n, i in enumerate(items)}
        cols = np.fromiter((i_index.get(i, -1) for i in pairs["item_id"]), dtype=np.int64, count=len(pairs))
        rows = np.fromiter((u_index[u] for u in pairs["user_id"]), dtype=np.int64, count=len(pairs))
        keep = cols >= 0
        matrix = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])),
                               shape=(len(users), len(items)), dtype=np.float64)
        matrix.sort_indices()
        return cls(users, items, matrix)


class ChoiceModel(SavedModel, ABC):
    """Base class. Subclasses set `name`, `Config` and `grid`, and implement `fit_matrix`,
    `score_rows`, `get_arrays` and `set_arrays`."""

    kind: ClassVar[str] = "choice"
    framework: ClassVar[str] = "np"
    name: ClassVar[str]
    Config: ClassVar[type[ChoiceConfig]] = ChoiceConfig
    grid: ClassVar[dict[str, tuple]] = {}  # the validation search's candidate values per hyper-parameter
    folds_history: ClassVar[bool] = False  # `score_history` scores users from their items alone

    def __init__(self, config: BaseModel | dict[str, Any] | None = None, **overrides: Any):
        base = config.model_dump(exclude_unset=True) if isinstance(config, BaseModel) else dict(config or {})
        self.config = validate(self.Config, {**base, **overrides}, f"{self.name} config")
        self.fixed = set(self.config.model_fields_set)  # set explicitly: the search leaves them alone
        self.is_fitted = False
        self.search_record: dict[str, Any] | None = None

    # -- what each model implements ------------------------------------------------------------
    @abstractmethod
    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:
        """Learn from `data.matrix` (train users x the model's items); `dataset` is there for content."""

    @abstractmethod
    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """Dense float64 scores, shape (len(rows), n_items), for known user rows."""

    @abstractmethod
    def get_arrays(self) -> dict[str, np.ndarray]:
        """The learned arrays, for model.safetensors."""

    @abstractmethod
    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of `get_arrays`."""

    def model_items(self, dataset: Dataset) -> list[str] | None:
        """The items the model can score; None = the items of the train split."""
        return None

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, dataset: Dataset) -> ChoiceModel:
        """Learn from `dataset.train`, after choosing the hyper-parameters on `dataset.valid` when
        `search` is on and the model has a grid. Returns self.

        Raises FeedbackgenError when the train split is empty, or when searching without a valid split.
        """
        if dataset.train.is_empty():
            raise FeedbackgenError(f"cannot fit {self.name}: the dataset has no train interactions")
        data = Interactions.from_frame(dataset.train, self.model_items(dataset))
        if self.config.search and self.search_grid():
            self.search_record = validation_search(self, dataset, data)
            self.config = validate(self.Config, {**self.config.model_dump(exclude_unset=True),
                                                 **self.search_record["chosen"]}, f"{self.name} config")
        self._fit_data(data, dataset)
        return self

    def _fit_data(self, data: Interactions, dataset: Dataset) -> None:
        self.user_ids, self.item_ids = data.users, data.items
        self._index()
        self.seen = data.matrix
        self.popularity = np.asarray(data.matrix.sum(axis=0), dtype=np.float64).ravel()
        self.fit_matrix(data, dataset)
        self.is_fitted = True

    def _index(self) -> None:
        # the one id map (`IdIndex`): a user's row is its index - 1, -1 for an unknown user
        self.users, self.items = IdIndex(self.user_ids), IdIndex(self.item_ids)

    def fit_candidate(self, params: dict[str, Any], data: Interactions, dataset: Dataset) -> ChoiceModel:
        """A copy of this model with `params`, fitted on `data` without searching (one search candidate)."""
        candidate = type(self)({**self.config.model_dump(exclude_unset=True), **params, "search": False})
        candidate._fit_data(data, dataset)
        return candidate

    def search_grid(self) -> dict[str, tuple]:
        """The grid less the hyper-parameters set explicitly (those are held fixed)."""
        return {k: v for k, v in self.grid.items() if k not in self.fixed}

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {self.name} choice model is not fitted yet; call fit(dataset) "
                                 "or load it with feedbackgen.recommend.load_choice(path)")

    # -- scoring ---------------------------------------------------------------------------------
    @property
    def user_index(self) -> dict[str, int]:
        """{user id: row} of the known users: the id map as a dict."""
        return {u: n for n, u in enumerate(self.user_ids)}

    def user_rows(self, user_ids: Sequence[str]) -> np.ndarray:
        """Row of each user in the model's user arrays; -1 for an unknown user."""
        return self.users.rows(user_ids)

    def item_cols(self, item_ids: Sequence[str]) -> np.ndarray:
        """Column of each item among the model's items; -1 for an unknown item."""
        return self.items.rows(item_ids)

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """Scores of user rows (-1 = unknown user: the popularity fallback), shape (len(rows), n_items)."""
        out = np.empty((len(rows), len(self.item_ids)), dtype=np.float64)
        known = rows >= 0
        if known.any():
            out[known] = self.score_rows(rows[known])
        out[~known] = self.popularity
        return out

    def _batch(self) -> int:
        return max(1, DENSE_CELLS // max(1, len(self.item_ids)))

    def dense_batches(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(start, scores of rows[start:start + batch]) for consecutive batches: bounded memory."""
        batch = self._batch()
        for start in range(0, len(rows), batch):
            yield start, self.dense(rows[start:start + batch])

    def taken(self, row: int) -> np.ndarray:
        """Columns of the items user row `row` took in train (none for an unknown user, -1)."""
        return self.seen.indices[self.seen.indptr[row]:self.seen.indptr[row + 1]] if row >= 0 else np.zeros(0, int)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """One float64 score per aligned (user, item) pair; higher = more likely chosen.

        Shape (len(user_ids),). Unknown users get the popularity fallback, unknown items
        `UNKNOWN_ITEM_SCORE`. Raises ValueError when the two lists differ in length.
        """
        self.check_fitted()
        if len(user_ids) != len(item_ids):
            raise DataError(f"user_ids and item_ids differ in length ({len(user_ids)} vs {len(item_ids)})")
        rows, cols = self.user_rows(user_ids), self.item_cols(item_ids)
        out = np.full(len(rows), UNKNOWN_ITEM_SCORE, dtype=np.float64)
        pairs = np.flatnonzero(cols >= 0)
        # one dense row per distinct user, scored a batch of users at a time, then gathered
        uniq, inverse = np.unique(rows[pairs], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        sorted_inverse, batch = inverse[order], self._batch()
        for lo in range(0, len(uniq), batch):
            block = self.dense(uniq[lo:lo + batch])
            a, b = np.searchsorted(sorted_inverse, [lo, lo + batch])
            sel = pairs[order[a:b]]
            out[sel] = block[inverse[order[a:b]] - lo, cols[sel]]
        return out

    def score_items(self, user_ids: Sequence[str], item_ids: Sequence[str] | None = None) -> np.ndarray:
        """Dense scores, shape (len(user_ids), len(item_ids)), columns in the order of `item_ids`
        (default: the model's items, `self.item_ids`). Same fallbacks as `score`."""
        self.check_fitted()
        rows = self.user_rows(user_ids)
        if item_ids is None:
            return self.dense(rows)
        cols = self.item_cols(item_ids)
        out = np.full((len(rows), len(cols)), UNKNOWN_ITEM_SCORE, dtype=np.float64)
        known = cols >= 0
        for start, block in self.dense_batches(rows):
            out[start:start + len(block), known] = block[:, cols[known]]
        return out

    def recommend(self, user_ids: Sequence[str], k: int = 10, exclude_seen: bool = True) -> pl.DataFrame:
        """The top `k` of the model's items per user: columns user_id, rank (1 = best), item_id, score,
        exclude. `feedbackgen.recommend.ranking.top_k` on the model's own items, so ties and unknown
        users go as everywhere else: the more popular item, then the smaller id; unknown users get
        the popularity list. exclude_seen leaves out the user's train items (exclude="train").
        Raises FeedbackgenError for k < 1."""
        from feedbackgen.recommend.ranking import top_k  # ranking imports this module

        return top_k(self, user_ids, k, exclude="train" if exclude_seen else "none")

    def score_history(self, taken: sp.csr_matrix) -> np.ndarray:
        """Dense scores, shape (rows, n_items), of users described only by the items they took
        (`taken`: binary rows x the model's items): a visitor's session, a user's events since
        training. Models that can (`folds_history`) override it; the others are never asked."""
        raise NotImplementedError(f"{self.name} cannot score a history it was not trained on")

    # -- the model folder (`feedbackgen.models.folder`) --------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {**{f"model.{k}": np.ascontiguousarray(v) for k, v in self.get_arrays().items()},
                  **sparse_arrays("seen", self.seen)}
        return arrays, {"users": self.users, "items": self.items}

    def set_state(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.user_ids, self.item_ids = state["users"].ids, state["items"].ids
        self._index()
        self.seen = read_sparse(arrays, "seen", (len(self.user_ids), len(self.item_ids)))
        self.popularity = np.asarray(self.seen.sum(axis=0), dtype=np.float64).ravel()
        self.set_arrays({k.removeprefix("model."): v for k, v in arrays.items() if k.startswith("model.")})

    def folder_record(self) -> dict[str, Any]:
        return {"search": self.search_record}

    def read_record(self, meta: dict[str, Any]) -> None:
        self.search_record = meta.get("search")


def sparse_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    m = sp.csr_matrix(m)
    return {f"{prefix}.indptr": m.indptr.astype(np.int64), f"{prefix}.indices": m.indices.astype(np.int64),
            f"{prefix}.data": m.data.astype(np.float64)}


def read_sparse(arrays: dict[str, np.ndarray], prefix: str, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((arrays[f"{prefix}.data"], arrays[f"{prefix}.indices"], arrays[f"{prefix}.indptr"]),
                         shape=shape)


# -- the validation search -------------------------------------------------------------------------

def validation_ranks(model: ChoiceModel, dataset: Dataset, users: Sequence[str], seed: int) -> list[np.ndarray]:
    """1-based ranks of each user's valid items among the model's items less the user's train items."""
    rng = np.random.default_rng(seed)
    valid = dataset.valid.filter(pl.col("user_id").is_in(list(users)))
    relevant = {u: items for u, items in valid.group_by("user_id").agg(pl.col("item_id").unique()).iter_rows()}
    rows = model.user_rows(users)
    out = []
    for start, block in model.dense_batches(rows):
        for user, row, s in zip(users[start:], rows[start:], block):
            seen = model.taken(row)
            cols = model.item_cols(relevant.get(user, []))
            cols = np.setdiff1d(cols[cols >= 0], seen)
            if not len(cols):
                continue
            s[seen] = -np.inf  # the user's train items are not candidates
            out.append(positions(s, rng, model.popularity)[cols])
    return out


def validation_search(model: ChoiceModel, dataset: Dataset, data: Interactions) -> dict[str, Any]:
    """Fit every candidate of `model.search_grid()` on train, rank each sampled valid user's valid
    items among the items they have not taken in train, keep the best NDCG@10 (ties: the first
    candidate in grid order). Returns the record kept in config.json."""
    grid = model.search_grid()
    cfg = model.config
    users = sorted(set(dataset.valid["user_id"].unique().to_list()) & set(data.users))
    if not users:
        raise FeedbackgenError(f"cannot search {model.name}'s hyper-parameters: no valid-split user has train "
                               "interactions; give a dataset with a valid split, or --set search=false")
    rng = np.random.default_rng(cfg.seed)
    if len(users) > cfg.search_users:
        users = sorted(rng.choice(users, size=cfg.search_users, replace=False).tolist())
    candidates = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        t0 = time.perf_counter()
        candidate = model.fit_candidate(params, data, dataset)
        fit_s = time.perf_counter() - t0
        ranks = validation_ranks(candidate, dataset, users, cfg.seed)
        candidates.append({"params": params, f"ndcg@{SEARCH_K}": ndcg(ranks, SEARCH_K),
                           f"hr@{SEARCH_K}": hit_rate(ranks, SEARCH_K), "fit_s": round(fit_s, 3)})
    best = max(range(len(candidates)), key=lambda n: (candidates[n][f"ndcg@{SEARCH_K}"], -n))
    return {"metric": f"ndcg@{SEARCH_K}", "split": "valid", "users": len(users), "seed": cfg.seed,
            "grid": {k: list(v) for k, v in grid.items()},
            "fixed": {k: getattr(cfg, k) for k in model.grid if k not in grid},
            "candidates": candidates, "chosen": candidates[best]["params"]}


# -- registry --------------------------------------------------------------------------------------
CHOICE_MODELS: dict[str, type[ChoiceModel]] = {}
register_kind("choice", CHOICE_MODELS)


def register_choice(cls: type[ChoiceModel]) -> type[ChoiceModel]:
    CHOICE_MODELS[cls.name] = cls
    return cls


def create_choice(name: str, config: dict[str, Any] | None = None) -> ChoiceModel:
    """An unfitted choice model by name; a bad setting raises ConfigError naming the field and range."""
    if name not in CHOICE_MODELS:
        raise ConfigError(f"unknown choice model {name!r}; available: {', '.join(sorted(CHOICE_MODELS))}")
    return CHOICE_MODELS[name](config)


def is_choice_folder(path: str | Path) -> bool:
    """True when `path/config.json` says `"kind": "choice"`."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("kind") == "choice"
    except (json.JSONDecodeError, AttributeError):
        return False


def read_choice_config(path: Path) -> dict[str, Any]:
    """A choice-model folder's config.json; FeedbackgenError when `path` holds no choice model."""
    return read_config(path, "choice")


def load_choice(path: str | Path) -> ChoiceModel:
    """Load any saved choice-model folder (`feedbackgen.load` loads any model folder)."""
    return ChoiceModel.load(Path(path))
