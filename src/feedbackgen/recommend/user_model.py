"""`simulated_user`: the recommended engage model of a simulated user, a stacked ensemble of choice models.

    feedbackgen train data/mi --model simulated_user --out models/user
    feedbackgen fidelity --choice models/user --dataset data/mi --protocol recommenders --out runs/panel

Why an ensemble: a simulated user judges a recommender by how likely each listed item is to be
taken, and its favourite list is always its own top k. It can therefore only judge fairly the
recommenders it predicts better than, and a simulator that is one model favours that model's family
(a simulator that is EASE gives EASE's lists the top marks, whatever EASE's real accuracy). Stacking
diverse families (item-item, linear autoencoder, factors, popularity) makes it better than each,
and its weights are learned on labels none of them saw:

1. each component (`components`) is fitted on **train** (with its own validation search where it
   has one);
2. P(engage) (`feedbackgen.recommend.engage`) is fitted on the **valid** split from the components'
   log ranks: the stacking weights and the calibration, cross-fitted.

Never the test split. It judges test-time lists with the same train-fitted components and carries
the probability past the valid period (`engage` module): refitting the components on train + valid
would make them stronger than the calibration knew, and was measured to under-state engagement by
a fifth to two fifths. A recommender stronger than this ensemble can still outscore the
simulated user's own taste; the README says what this means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError
from feedbackgen.recommend.choice import (CHOICE_MODELS, ChoiceConfig, ChoiceModel, Interactions, create_choice,
                                          register_choice)
from feedbackgen.recommend.engage import EngageModel, pool_scores, ranks_in
from feedbackgen.recommend.ranking import pool_of


class SimulatedUserConfig(ChoiceConfig):
    search: bool = Field(True, description="each component chooses its hyper-parameters on the valid split")
    components: list[str] = Field(["ease", "itemknn", "als", "bpr", "popularity"], min_length=1,
                                  description="the choice models stacked (diverse families)")
    component_settings: dict[str, dict[str, Any]] = Field(
        {"als": {"search": False, "factors": 32}, "bpr": {"search": False}},
        description="settings per component (as --set gives them); filled with each one's chosen settings")
    future_ratio: float = Field(1.0, gt=0.0, le=100.0, description="ρ: the judged period's length relative "
                                                                     "to the valid one's (engage module)")
    calibration_users: int = Field(3000, ge=10, description="most valid users the calibration samples")
    depth: int = Field(50, ge=1, le=10_000, description="each component's top items kept whole per user")
    random_items: int = Field(100, ge=1, le=100_000, description="other candidates sampled per user (weighted)")


@register_choice
class SimulatedUserModel(ChoiceModel):
    """The stacked ensemble (module docstring). `score` ranks by the stacked score; `engage_probability`
    is the calibrated P(engage) of listed items."""

    name = "simulated_user"
    Config = SimulatedUserConfig
    def fit(self, dataset: Dataset) -> SimulatedUserModel:
        cfg = self.config
        unknown = [c for c in cfg.components if c not in CHOICE_MODELS or c == self.name]
        if unknown:
            raise ConfigError(f"unknown component(s) {unknown}; choose among "
                              f"{', '.join(sorted(set(CHOICE_MODELS) - {self.name}))}")
        self.components = []
        for name in cfg.components:
            settings = {"seed": cfg.seed, "search": cfg.search, **cfg.component_settings.get(name, {})}
            self.components.append(create_choice(name, settings).fit(dataset))
        self.engage = EngageModel.fit(self.components, dataset, users=cfg.calibration_users, depth=cfg.depth,
                                      random_items=cfg.random_items, seed=cfg.seed)
        self.engage.future_ratio = cfg.future_ratio
        chosen = {m.name: {**m.config.model_dump(), "search": False} for m in self.components}
        self.config = self.config.model_copy(update={"component_settings": chosen})
        first = self.components[0]
        self.user_ids, self.item_ids, self.seen, self.popularity = (first.user_ids, first.item_ids, first.seen,
                                                                    first.popularity)
        self._index()
        self.is_fitted = True
        return self

    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:  # `fit` is overridden whole
        raise NotImplementedError("SimulatedUserModel fits through fit(dataset)")

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """The stacked score of every item (log ranks among all items, weighted), shape (len(rows), n_items)."""
        every = np.ones(len(self.item_ids), dtype=bool)
        cols = np.arange(len(self.item_ids))
        blocks = [m.score_rows(rows) for m in self.components]
        out = np.empty((len(rows), len(self.item_ids)))
        for n in range(len(rows)):
            x = np.column_stack([np.log(ranks_in(b[n], every, cols)) for b in blocks])
            out[n] = self.engage.stacked(x)
        return out

    def engage_probability(self, dataset: Dataset, user_ids: list[str], item_ids: list[str]) -> np.ndarray:
        """Calibrated P(engage) after the valid period of aligned (user, item) pairs, shape (n,)."""
        self.check_fitted()
        return self.engage.probability(self.components, pool_of(dataset), user_ids, item_ids)

    def component_scores(self, dataset: Dataset, users: list[str]) -> list[np.ndarray]:
        """Each component's dense scores over the dataset's catalogue, for the environment's per-user cache."""
        pool = pool_of(dataset)
        return [pool_scores(m, pool, users) for m in self.components]

    # -- the folder: every component's arrays under its name, the engage model under `engage.`
    def get_arrays(self) -> dict[str, np.ndarray]:
        out = dict(self.engage.arrays())
        for m in self.components:
            out.update({f"{m.name}.{k}": np.ascontiguousarray(v) for k, v in m.get_arrays().items()})
        return out

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.engage = EngageModel.from_arrays(arrays, getattr(self, "_engage_record", {}))
        self.engage.future_ratio = self.config.future_ratio
        self.components = []
        for name in self.config.components:
            model = create_choice(name, self.config.component_settings.get(name, {}))
            model.user_ids, model.item_ids, model.seen, model.popularity = (self.user_ids, self.item_ids, self.seen,
                                                                            self.popularity)
            model._index()
            model.set_arrays({k.removeprefix(f"{name}."): v for k, v in arrays.items() if k.startswith(f"{name}.")})
            model.is_fitted = True
            self.components.append(model)

    def folder_record(self) -> dict[str, Any]:
        return {"search": None, "engage": self.engage.record}

    def read_record(self, meta: dict[str, Any]) -> None:
        self._engage_record = meta.get("engage") or {}
        if hasattr(self, "engage"):
            self.engage.record = self._engage_record


__all__ = ["SimulatedUserConfig", "SimulatedUserModel"]
