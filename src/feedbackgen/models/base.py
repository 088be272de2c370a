"""The `Generator` interface, id indexing, save/load as a Hugging-Face-style folder, and the registry.

A generator is configured at construction (a pydantic config, validated up front), learns in
`fit(dataset)`, and answers `generate(requests, decoding)` with one `Feedback` per request.
Saved as a folder:

    MODEL/
      config.json          {"model": NAME, "config": {...}, "feedbackgen_version": ...}
      model.safetensors    every tensor the model needs (never pickles)
      state.json           id maps, vocabularies and other plain data
      training_log.jsonl   one JSON object per logged step/epoch (when the model trains)
      training.json        text generators: what each logged loss adds up, and the collapse signal
                           of the final model (`feedbackgen.models.collapse`)
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from feedbackgen.config import Decoding, StrictModel, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import CollapseWarning, ConfigError, FeedbackgenError, NotFittedError
from feedbackgen.io import atomic_write, atomic_write_json, atomic_write_jsonl
from feedbackgen.types import Feedback, FeedbackRequest


class IdIndex:
    """Maps external ids to contiguous integers. Index 0 is reserved for "unknown"."""

    UNKNOWN = 0

    def __init__(self, ids: Iterable[str]):
        self.ids: list[str] = sorted(set(ids))
        self._index = {x: i + 1 for i, x in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids) + 1

    def __contains__(self, x: str) -> bool:
        return x in self._index

    def get(self, x: str) -> int:
        return self._index.get(x, self.UNKNOWN)

    def lookup(self, xs: Sequence[str]) -> np.ndarray:
        return np.fromiter((self._index.get(x, 0) for x in xs), dtype=np.int64, count=len(xs))


class Generator(ABC):
    """Base class. Subclasses set `name`, `Config`, and implement fit / generate / state."""

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
        `meta["seed"]` (drawn when neither the request nor `decoding` gives one)."""
        # imported here: the `generation` package's __init__ imports this module
        from feedbackgen.generation.decoding import with_seeds

        self.check_fitted()
        decoding = validate(Decoding, decoding, "decoding settings")
        requests = with_seeds(requests, decoding)
        ratings = self.predict_rating(requests)
        texts, metas = self.generate_text(requests, decoding)
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
        """(tensors for model.safetensors, plain JSON data for state.json)."""

    @abstractmethod
    def set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Inverse of `get_state`."""

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {self.name} generator is not fitted yet; call fit(dataset) "
                                 "or load it with feedbackgen.models.load(path)")

    def clip(self, ratings: np.ndarray) -> np.ndarray:
        lo, hi = self.rating_range
        return np.clip(np.asarray(ratings, dtype=np.float64), lo, hi)

    def save(self, path: str | Path) -> Path:
        self.check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors, state = self.get_state()
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        state = {**state, "rating_range": list(self.rating_range)}
        atomic_write(path / "model.safetensors", lambda p: save_file(tensors, str(p)))
        atomic_write_json(path / "state.json", state)
        if hasattr(self, "training_log"):
            atomic_write_jsonl(path / "training_log.jsonl", self.training_log)
        if getattr(self, "training_summary", None):
            atomic_write_json(path / "training.json", self.training_summary)
        from feedbackgen import __version__

        atomic_write_json(path / "config.json", {"model": self.name, "config": self.config.model_dump(),
                                                 "feedbackgen_version": __version__})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Generator:
        path = Path(path)
        meta = read_model_config(path)
        if meta["model"] != cls.name and cls is not Generator:
            raise FeedbackgenError(f"{path} holds a {meta['model']!r} model, not {cls.name!r}")
        model = cls(meta["config"])
        tensors = load_file(str(path / "model.safetensors")) if (path / "model.safetensors").exists() else {}
        state = json.loads((path / "state.json").read_text())
        model.rating_range = tuple(state.pop("rating_range", (1.0, 5.0)))
        model.set_state(tensors, state)
        log = path / "training_log.jsonl"
        if log.exists():
            model.training_log = [json.loads(line) for line in log.read_text(encoding="utf-8").split("\n") if line.strip()]
        summary = path / "training.json"
        if summary.exists():
            model.training_summary = json.loads(summary.read_text(encoding="utf-8"))
            warning = (model.training_summary.get("collapse") or {}).get("warning")
            if warning:  # said at training; said again to whoever loads it (generate, serve)
                warnings.warn(f"{path}: {warning}", CollapseWarning, stacklevel=2)
        model.is_fitted = True
        return model


# -- registry --------------------------------------------------------------------------------
REGISTRY: dict[str, type[Generator]] = {}


def register(cls: type[Generator]) -> type[Generator]:
    REGISTRY[cls.name] = cls
    return cls


def create(name: str, config: dict[str, Any] | None = None) -> Generator:
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](config)


# fields whose None is resolved by a property of the config (the target decides the length)
RESOLVED_BY = {"max_words": ("words", "review_words")}


def effective_defaults(cls: type[Generator]) -> dict[str, Any]:
    """The settings a generator of class `cls` trains with when given none: its config built from
    nothing, so presets and targets have filled in what they decide (peter's `emsize=256` of the
    `default` preset, not the field's declared None). A None left means the setting is off or the
    library's choice (`checkpoint_dir`, `dp_epsilon`, `num_threads`)."""
    config = validate(cls.Config, {}, f"{cls.name} config")
    values = config.model_dump()
    for key, properties in RESOLVED_BY.items():
        if values.get(key) is None:
            for prop in properties:
                if isinstance(getattr(type(config), prop, None), property):
                    values[key] = getattr(config, prop)
                    break
    return values


def read_model_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.exists():
        raise FeedbackgenError(f"{path} is not a saved feedbackgen model (no config.json); "
                               "train one with `feedbackgen train`")
    meta = json.loads(cfg.read_text())
    if meta.get("kind") == "choice":
        raise FeedbackgenError(f"{path} holds a choice model ({meta.get('model')!r}), not a generator; "
                               "load it with feedbackgen.recommend.load_choice")
    if meta.get("model") not in REGISTRY:
        raise FeedbackgenError(f"{cfg} names model {meta.get('model')!r}, which this version does not know")
    return meta


def load(path: str | Path) -> Generator:
    """Load any saved generator folder."""
    path = Path(path)
    return REGISTRY[read_model_config(path)["model"]].load(path)
