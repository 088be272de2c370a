"""Rating baselines: the global mean, regularised user/item biases, and biased matrix factorisation.

They produce no text; text generators reuse them for their ratings (`retrieval`, `popular`), and
they are the rating rows of every report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field

from feedbackgen.config import StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.models.base import Generator, IdIndex, register
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


class MFConfig(StrictModel):
    factors: int = Field(16, ge=1, le=1024)
    weight_decay: float = Field(0.05, ge=0.0, description="L2 penalty on factors and biases")
    lr: float = Field(0.01, gt=0.0, le=1.0)
    max_epochs: int = Field(300, ge=1, le=100_000, description="full-batch Adam steps")
    patience: int = Field(20, ge=1, description="stop after this many steps without a better valid RMSE")
    seed: int = Field(1, ge=0)


@register
class BiasedMF(RatingModel):
    """Biased matrix factorisation r = mu + b_u + b_i + p_u . q_i (Koren, Bell, Volinsky, IEEE
    Computer 2009), full-batch Adam with L2, early stopping on validation RMSE.

    The biases start from the regularised `bias` baseline, so training starts where that baseline
    ends and early stopping keeps the factors only if they help on validation data. Unknown ids
    fall back to the global mean term (their rows stay zero)."""

    name = "mf"
    Config = MFConfig

    def fit(self, dataset: Dataset) -> BiasedMF:
        u, i, r = self._index(dataset)
        c = self.config
        g = torch.Generator().manual_seed(c.seed)
        biases = BiasBaseline().fit(dataset)
        self.mean = biases.mean
        params = {
            "user_bias": torch.from_numpy(biases.user_bias).float(),
            "item_bias": torch.from_numpy(biases.item_bias).float(),
            "user_factors": torch.randn(len(self.users), c.factors, generator=g) * 0.05,
            "item_factors": torch.randn(len(self.items), c.factors, generator=g) * 0.05,
        }
        for name in ("user_factors", "item_factors"):
            params[name][IdIndex.UNKNOWN] = 0.0
        for p in params.values():
            p.requires_grad_(True)
        opt = torch.optim.Adam(params.values(), lr=c.lr)
        ut, it, rt = torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(r).float()
        valid = dataset.valid
        vreq = [FeedbackRequest(a, b) for a, b in zip(valid["user_id"], valid["item_id"])]
        vr = valid["rating"].to_numpy()
        self.params = params
        self.training_log: list[dict[str, Any]] = []
        best, misses = np.inf, 0
        best_state = {k: v.detach().clone() for k, v in params.items()}
        if len(vr):
            best = float(np.sqrt(np.mean((self.predict_rating_raw(vreq) - vr) ** 2)))
        for step in range(c.max_epochs):
            opt.zero_grad()
            pred = self._forward(ut, it)
            pu, qi = params["user_factors"][ut], params["item_factors"][it]
            penalty = (pu.pow(2).sum(1) + qi.pow(2).sum(1)
                       + params["user_bias"][ut].pow(2) + params["item_bias"][it].pow(2)).mean()
            loss = torch.nn.functional.mse_loss(pred, rt) + c.weight_decay * penalty
            loss.backward()
            opt.step()
            if len(vr):
                with torch.no_grad():
                    vrmse = float(np.sqrt(np.mean((self.predict_rating_raw(vreq) - vr) ** 2)))
                self.training_log.append({"step": step, "loss": loss.item(), "valid_rmse": vrmse})
                if vrmse < best - 1e-5:
                    best, misses = vrmse, 0
                    best_state = {k: v.detach().clone() for k, v in params.items()}
                else:
                    misses += 1
                    if misses >= c.patience:
                        break
        self.params = best_state if len(vr) else {k: v.detach() for k, v in params.items()}
        self.is_fitted = True
        return self

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
