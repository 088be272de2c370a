"""Rating baselines: the global mean, regularised user/item biases, and biased matrix factorisation.

They produce no text; text generators reuse them for their ratings (`retrieval` and `popular`
through `DelegatedRating`), and they are the rating rows of every report.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from feedbackgen.config import StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.models.base import Generator, IdIndex, register
from feedbackgen.models.trainer import TRAINING_FIELDS, Trainer, TrainingArguments, flat_settings, nest_training
from feedbackgen.types import FeedbackRequest


def _indices(users: IdIndex, items: IdIndex, requests: Sequence[FeedbackRequest]):
    return users.lookup([r.user_id for r in requests]), items.lookup([r.item_id for r in requests])


class RatingModel(Generator):
    """Shared plumbing: id indices over the training split, and the rating range seen in training."""

    produces_text = False

    def _index(self, dataset: Dataset):
        dataset.require(self.name, ratings=True)
        train = dataset.train
        self.users = IdIndex(train["user_id"].to_list())
        self.items = IdIndex(train["item_id"].to_list())
        ratings = train["rating"].to_numpy().astype(np.float64)
        self.rating_range = (float(ratings.min()), float(ratings.max()))
        u = self.users.lookup(train["user_id"].to_list())
        i = self.items.lookup(train["item_id"].to_list())
        return u, i, ratings

    def _id_state(self) -> dict[str, Any]:
        return {"users": self.users, "items": self.items}

    def _set_ids(self, state: dict[str, Any]) -> None:
        self.users, self.items = IdIndex.of(state["users"]), IdIndex.of(state["items"])


class GlobalMeanConfig(StrictModel):
    pass


@register
class GlobalMean(RatingModel):
    """Predicts the mean training rating for everyone: the floor every rating model must beat."""

    name = "global_mean"
    Config = GlobalMeanConfig

    def fit(self, dataset: Dataset) -> GlobalMean:
        _, _, r = self._index(dataset)
        self.mean = float(r.mean())
        self.is_fitted = True
        return self

    def predict_rating(self, requests):
        self.check_fitted()
        return self.clip(np.full(len(requests), self.mean))

    def get_state(self):
        return {}, {"mean": self.mean, **self._id_state()}

    def set_state(self, tensors, state):
        self.mean = state["mean"]
        self._set_ids(state)


class BiasConfig(StrictModel):
    reg_user: float = Field(5.0, ge=0.0, description="shrinkage of user biases towards 0")
    reg_item: float = Field(5.0, ge=0.0, description="shrinkage of item biases towards 0")
    iterations: int = Field(10, ge=1, le=1000)


@register
class BiasBaseline(RatingModel):
    """mean + user bias + item bias, fitted by alternating regularised least squares
    (Koren, "Factor in the neighbors", TKDD 2010, section 2.1). Unknown ids get bias 0."""

    name = "bias"
    Config = BiasConfig

    def fit(self, dataset: Dataset) -> BiasBaseline:
        u, i, r = self._index(dataset)
        c = self.config
        self.mean = float(r.mean())
        bu, bi = np.zeros(len(self.users)), np.zeros(len(self.items))
        nu = np.bincount(u, minlength=len(self.users))
        ni = np.bincount(i, minlength=len(self.items))
        # the unknown id (index 0) has no rows; a denominator of 1 keeps its bias at exactly 0
        di, du = np.maximum(c.reg_item + ni, 1e-12), np.maximum(c.reg_user + nu, 1e-12)
        for _ in range(c.iterations):
            bi = np.bincount(i, r - self.mean - bu[u], minlength=len(self.items)) / di
            bu = np.bincount(u, r - self.mean - bi[i], minlength=len(self.users)) / du
        self.user_bias, self.item_bias = bu, bi
        self.is_fitted = True
        return self

    def predict_rating(self, requests):
        self.check_fitted()
        u, i = _indices(self.users, self.items, requests)
        return self.clip(self.mean + self.user_bias[u] + self.item_bias[i])

    def get_state(self):
        return ({"user_bias": torch.from_numpy(self.user_bias), "item_bias": torch.from_numpy(self.item_bias)},
                {"mean": self.mean, **self._id_state()})

    def set_state(self, tensors, state):
        self.mean = state["mean"]
        self.user_bias, self.item_bias = tensors["user_bias"].numpy(), tensors["item_bias"].numpy()
        self._set_ids(state)


# full batches (as many rows as a batch may hold), Adam at a constant rate, no clipping; quiet, as
# it is fitted inside other generators (`popular`, `retrieval`, the LLMs' ratings)
MF_TRAINING = {"lr": 0.01, "schedule": "plateau", "lr_decay": 1.0, "clip": 0.0, "batch_size": 65536,
               "max_epochs": 300, "patience": 20, "progress": False}
# the flat name `weight_decay` is mf's L2 penalty in the loss (Koren et al.); AdamW's decoupled decay
# stays at 0, reachable as `training.weight_decay` only
MF_FLAT = tuple(f for f in TRAINING_FIELDS if f != "weight_decay")


class MFConfig(StrictModel):
    factors: int = Field(16, ge=1, le=1024)
    weight_decay: float = Field(0.05, ge=0.0, description="L2 penalty on the batch's factors and biases, in the loss")
    training: TrainingArguments = Field(default_factory=lambda: TrainingArguments(**MF_TRAINING))
    phased_training: ClassVar[tuple[str, ...]] = ("weight_decay",)  # listed by its flat name: the penalty

    @model_validator(mode="before")
    @classmethod
    def _nest_training(cls, values: Any) -> Any:
        return nest_training(values, MF_TRAINING, MF_FLAT)


@register
class BiasedMF(RatingModel):
    """Biased matrix factorisation r = mu + b_u + b_i + p_u . q_i (Koren, Bell, Volinsky, IEEE
    Computer 2009), trained by the shared `Trainer` (full batches of Adam, L2 in the loss, early
    stopping on validation RMSE; `MF_TRAINING`).

    The biases start from the regularised `bias` baseline, and the start is kept when no epoch
    beats its validation RMSE: the factors stay only if they help on validation data. Unknown ids
    fall back to the global mean term (their rows stay zero). With no validation split, the
    training rows stand in for it (training then runs until their RMSE stops falling)."""

    name = "mf"
    Config = MFConfig

    def fit(self, dataset: Dataset) -> BiasedMF:
        u, i, r = self._index(dataset)
        c = self.config
        g = torch.Generator().manual_seed(c.training.seed)
        biases = BiasBaseline().fit(dataset)
        self.mean = biases.mean
        start = {"user_bias": torch.from_numpy(biases.user_bias).float(),
                 "item_bias": torch.from_numpy(biases.item_bias).float(),
                 "user_factors": torch.randn(len(self.users), c.factors, generator=g) * 0.05,
                 "item_factors": torch.randn(len(self.items), c.factors, generator=g) * 0.05}
        for name in ("user_factors", "item_factors"):
            start[name][IdIndex.UNKNOWN] = 0.0
        module = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in start.items()})
        self.params = module
        train = (torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(r).float())
        valid = dataset.valid
        if len(valid):
            valid = (torch.from_numpy(self.users.lookup(valid["user_id"].to_list())),
                     torch.from_numpy(self.items.lookup(valid["item_id"].to_list())),
                     torch.from_numpy(valid["rating"].to_numpy().astype(np.float32)))
        else:
            valid = train
        start_rmse = self._rmse(*valid)
        trainer = Trainer(module, c.training, n_train=len(r), n_valid=len(valid[0]),
                          make_batch=lambda idx, is_train: tuple(t[idx] for t in (train if is_train else valid)),
                          loss_fn=self._loss, valid_loss_fn=lambda b: {"mse": self._squared_error(*b).mean()},
                          valid_extra=lambda out: {**out, "rmse": math.sqrt(out["mse"])}, criterion="rmse",
                          terms={"loss": f"mse + {c.weight_decay:g}·(|p_u|² + |q_i|² + b_u² + b_i²), "
                                         "each the mean over the batch's rows"},
                          fingerprint=self._fingerprint(train, valid), desc="mf")
        result = trainer.fit()
        self.training_log = result.log
        kept = start if start_rmse <= result.best_valid else dict(module.items())
        self.params = {k: v.detach().clone() for k, v in kept.items()}
        self.is_fitted = True
        return self

    def _squared_error(self, u: torch.Tensor, i: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return (self._forward(u, i) - r) ** 2

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        u, i, r = batch
        p = self.params
        mse = self._squared_error(u, i, r).mean()
        penalty = (p["user_factors"][u].pow(2).sum(1) + p["item_factors"][i].pow(2).sum(1)
                   + p["user_bias"][u].pow(2) + p["item_bias"][i].pow(2)).mean()
        return {"loss": mse + self.config.weight_decay * penalty, "mse": mse}

    def _rmse(self, u: torch.Tensor, i: torch.Tensor, r: torch.Tensor) -> float:
        with torch.no_grad():
            return math.sqrt(float(self._squared_error(u, i, r).mean()))

    def _fingerprint(self, train: tuple[torch.Tensor, ...], valid: tuple[torch.Tensor, ...]) -> str:
        """What a checkpoint must match to be resumed: the settings and the rows."""
        skip = {"checkpoint_dir", "progress"}
        h = hashlib.sha256(json.dumps({k: v for k, v in flat_settings(self.config).items() if k not in skip},
                                      sort_keys=True).encode())
        for t in (*train, *valid):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def _forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        p = self.params
        return (self.mean + p["user_bias"][u] + p["item_bias"][i]
                + (p["user_factors"][u] * p["item_factors"][i]).sum(1))

    def predict_rating_raw(self, requests) -> np.ndarray:
        u, i = _indices(self.users, self.items, requests)
        with torch.no_grad():
            return self._forward(torch.from_numpy(u), torch.from_numpy(i)).double().numpy()

    def predict_rating(self, requests):
        self.check_fitted()
        return self.clip(self.predict_rating_raw(requests))

    def get_state(self):
        return dict(self.params), {"mean": self.mean, **self._id_state()}

    def set_state(self, tensors, state):
        self.mean = state["mean"]
        self.params = tensors
        self._set_ids(state)


RATING_MODELS = {"global_mean": GlobalMean, "bias": BiasBaseline, "mf": BiasedMF}


def fit_rating_model(name: str, dataset: Dataset) -> RatingModel:
    """The rating model a text generator delegates its ratings to."""
    return RATING_MODELS[name]().fit(dataset)


class DelegatedRating:
    """Mixin for a text generator whose ratings are a rating model's, named by its config's
    `rating_model` (`popular`, `retrieval`): `fit_rating` fits it on the dataset and takes its
    rating range; `predict_rating` asks it. Put it before `Generator` among the bases."""

    rating: RatingModel

    def fit_rating(self, dataset: Dataset) -> None:
        self.rating = fit_rating_model(self.config.rating_model, dataset)
        self.rating_range = self.rating.rating_range

    def predict_rating(self, requests: Sequence[FeedbackRequest]) -> np.ndarray:
        self.check_fitted()
        return self.rating.predict_rating(requests)


def rating_model_state(model: RatingModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, state = model.get_state()
    return ({f"rating.{k}": v for k, v in tensors.items()},
            {"rating_model": model.name, "rating_state": state, "rating_model_range": list(model.rating_range)})


def rating_model_from_state(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> RatingModel:
    model = RATING_MODELS[state["rating_model"]]()
    model.set_state({k[len("rating."):]: v for k, v in tensors.items() if k.startswith("rating.")},
                    state["rating_state"])
    model.rating_range = tuple(state["rating_model_range"])
    model.is_fitted = True
    return model
