"""The `Generator` interface, its registry, and its side of the one model folder.

A generator is configured at construction (a pydantic config, validated up front), learns in
`fit(dataset)`, and answers `generate(requests, decoding)` with one `Feedback` per request.
Saved as a model folder of kind "generator" (`feedbackgen.models.folder`: config.json,
model.safetensors, ids.json, state.json, training_log.jsonl, and training.json for text
generators: what each logged loss adds up, and the collapse signal of the final model,
`feedbackgen.models.collapse`). `IdIndex` (0 = unknown) is re-exported from there.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from feedbackgen.config import Decoding, StrictModel, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.decoding.seeds import with_seeds
from feedbackgen.errors import CollapseWarning, ConfigError, NotFittedError
from feedbackgen.models.folder import IdIndex, SavedModel, read_config, register_kind  # noqa: F401  (IdIndex: re-exported)
from feedbackgen.models.trainer import flat_settings
from feedbackgen.models.unknown import apply_policy
from feedbackgen.types import Feedback, FeedbackRequest


class Generator(SavedModel, ABC):
    """Base class. Subclasses set `name`, `Config`, and implement fit / generate / state."""

    kind: ClassVar[str] = "generator"
    required_files: ClassVar[tuple[str, ...]] = ("state.json",)  # rating-only models may hold no arrays
    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]] = StrictModel
    produces_text: ClassVar[bool] = True

    def __init__(self, config: BaseModel | dict[str, Any] | None = None, **overrides: Any):
        base = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
        self.config = validate(self.Config, {**base, **overrides}, f"{self.name} config")
        self.is_fitted = False
        self.rating_range: tuple[float, float] = (1.0, 5.0)

    # -- the interface -----------------------------------------------------------------------
    @abstractmethod
    def fit(self, dataset: Dataset) -> Generator:
        """Learn from `dataset.train` (and `dataset.valid` for early stopping). Returns self."""

    @abstractmethod
    def predict_rating(self, requests: Sequence[FeedbackRequest]) -> np.ndarray:
        """Predicted star rating per request, clipped to the rating range."""

    def generate(self, requests: Sequence[FeedbackRequest],
                 decoding: Decoding | dict | None = None) -> list[Feedback]:
        """One `Feedback` per request, in order. Sampled text records its request's seed in
        `meta["seed"]` (drawn when neither the request nor `decoding` gives one). An item the model
        knows nothing about gets the text `decoding.unknown_item` says (`feedbackgen.models.unknown`)."""
        self.check_fitted()
        decoding = validate(Decoding, decoding, "decoding settings")
        requests = with_seeds(requests, decoding)
        ratings = self.predict_rating(requests)
        texts, metas = self.generate_text(requests, decoding)
        texts, metas = apply_policy(self, requests, decoding, texts, metas)  # unknown items
        if decoding.do_sample and self.produces_text:
            for r, meta in zip(requests, metas):
                meta["seed"] = r.seed
        return [
            Feedback(r.user_id, r.item_id, float(rt), txt, [r.aspect] if r.aspect else [], self.name, meta)
            for r, rt, txt, meta in zip(requests, ratings, texts, metas)
        ]

    def decoding_warnings(self, decoding: Decoding) -> list[str]:
        """The messages of the `DecodingWarning`s that `generate(..., decoding)` draws: options beyond
        what this model can honour. Depends on `decoding` alone (never on the requests), so a server
        can tell each call its warnings without catching them from a model thread. None by default."""
        return []

    def collapse_signal(self) -> dict[str, Any] | None:
        """The collapse signal recorded when this model was trained (`training.json`'s `collapse`
        block: usr, repetition, collapsed, thresholds and, when collapsed, the `warning` text; see
        `feedbackgen.models.collapse`), or None when none was recorded (rating-only models, models
        that were never checked)."""
        return (getattr(self, "training_summary", None) or {}).get("collapse")

    def generate_text(self, requests: list[FeedbackRequest],
                      decoding: Decoding) -> tuple[list[str], list[dict[str, Any]]]:
        """Texts (and per-sample metadata) for `requests`, each from its own seed (`FeedbackRequest.seed`,
        set by `generate`). Rating-only models return empty texts."""
        return [""] * len(requests), [{} for _ in requests]

    # -- state -------------------------------------------------------------------------------
    @abstractmethod
    def get_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for model.safetensors, plain JSON data for state.json: id maps as `IdIndex`
        values, which the folder keeps in ids.json)."""

    @abstractmethod
    def set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Inverse of `get_state` (the id maps come back as `IdIndex`)."""

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {self.name} generator is not fitted yet; call fit(dataset) "
                                 "or load it with feedbackgen.models.load(path)")

    def clip(self, ratings: np.ndarray) -> np.ndarray:
        lo, hi = self.rating_range
        return np.clip(np.asarray(ratings, dtype=np.float64), lo, hi)

    # -- the model folder (`feedbackgen.models.folder`): the rating range rides with the state --
    def folder_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, state = self.get_state()
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        return tensors, {**state, "rating_range": list(self.rating_range)}

    def restore_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.rating_range = tuple(state.pop("rating_range", (1.0, 5.0)))
        self.set_state(tensors, state)

    @classmethod
    def load(cls, path: str | Path) -> Generator:
        """The generator saved in `path` (`SavedModel.load`); its collapse warning, if it had one at
        training, is said again (a `CollapseWarning`) to whoever loads it (generate, serve)."""
        model = super().load(path)
        warning = ((getattr(model, "training_summary", None) or {}).get("collapse") or {}).get("warning")
        if warning:
            warnings.warn(f"{path}: {warning}", CollapseWarning, stacklevel=2)
        return model


# -- registry --------------------------------------------------------------------------------
REGISTRY: dict[str, type[Generator]] = {}
register_kind("generator", REGISTRY)


def register(cls: type[Generator]) -> type[Generator]:
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Alias:
    """A name for one model with chosen settings (`feedbackgen train --model explainer`): `create`
    builds `model` with `settings`, which the caller's own settings override. The folder it saves is
    an ordinary `model` folder."""

    model: str
    settings: dict[str, Any]
    means: str  # one line for `feedbackgen models`


ALIASES: dict[str, Alias] = {}


def create(name: str, config: dict[str, Any] | None = None) -> Generator:
    if name in ALIASES:
        alias = ALIASES[name]
        return create(alias.model, {**alias.settings, **(config or {})})
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted([*REGISTRY, *ALIASES]))}")
    return REGISTRY[name](config)


# fields whose None is resolved by a property of the config (the target decides the length)
RESOLVED_BY = {"max_words": ("words", "review_words")}


def effective_defaults(cls: type[Generator]) -> dict[str, Any]:
    """The settings a generator of class `cls` trains with when given none: its config built from
    nothing, so presets and targets have filled in what they decide (peter's `emsize=256` of the
    `default` preset, not the field's declared None). A None left means the setting is off or the
    library's choice (`checkpoint_dir`, `dp_epsilon`, `num_threads`). The training settings come by
    their flat names (`lr`, not `training.lr`), as `--set` takes them."""
    config = validate(cls.Config, {}, f"{cls.name} config")
    values = flat_settings(config)
    for key, properties in RESOLVED_BY.items():
        if values.get(key) is None:
            for prop in properties:
                if isinstance(getattr(type(config), prop, None), property):
                    values[key] = getattr(config, prop)
                    break
    return values


def read_model_config(path: Path) -> dict[str, Any]:
    """A generator folder's config.json; FeedbackgenError when `path` holds no generator."""
    return read_config(path, "generator")


def load(path: str | Path) -> Generator:
    """Load any saved generator folder (`feedbackgen.load` loads any model folder)."""
    return Generator.load(path)
