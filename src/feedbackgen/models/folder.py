"""The one model folder: how every trained thing is saved and loaded (generators, choice models, ...).

Hugging Face's `save_pretrained` / `from_pretrained` is the model: a folder of JSON and
safetensors that says what it holds, and one `load(path)` that returns it.

    MODEL/
      config.json         {"kind": KIND, "model": NAME, "config": {...}, "format": 2,
                           "feedbackgen_version": ..., plus the kind's own record (choice: "search")}
      model.safetensors   every array the model needs (never pickles)
      ids.json            every id map, by where it sits in the state: {"users": [...], "items": [...],
                          "rating_state.users": [...], ...}; each a sorted list of external ids
      state.json          the other learned plain data (rating range, vocabulary size, texts...), if any
      training_log.jsonl  one JSON object per logged epoch (models that train)
      training.json       what each logged loss adds up, and the collapse signal (text generators)
      ...                 what a model's `save_extra` writes beside (peter: vocab; sft: adapter/)

One id map, one unknown-id convention: `IdIndex` gives the known ids 1..n in sorted order and 0 to
an unknown id, so a table with a row per id has row 0 for "unknown" (the generators' embeddings);
a table with rows for the known ids only (the choice models' user rows) is indexed by
`index - 1`, where -1 is "unknown" (`IdIndex.rows`).

A model keeps its id maps as `IdIndex` values anywhere in the plain state its `get_state` returns;
`save` moves them into ids.json (keyed by their dotted path) and `load` puts them back before
`set_state`, so state.json never holds an id list. `config.json` is written last: a folder that
has one is complete.

Folders written before this format (format 1) still load: a generator's `config.json` had no
`kind` and its id maps sat in `state.json` as lists (each `set_state` takes them through
`IdIndex.of`); a choice model's folder is read as it was written (its `ids.json` is this one's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from feedbackgen.errors import FeedbackgenError
from feedbackgen.io import atomic_write, atomic_write_json, atomic_write_jsonl

FOLDER_FORMAT = 2


class IdIndex:
    """Maps external ids to contiguous integers: the known ids get 1..n in sorted order, an
    unknown id `UNKNOWN` (0)."""

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
        """int64 index per id, shape (len(xs),); 0 for an unknown id."""
        return np.fromiter((self._index.get(x, 0) for x in xs), dtype=np.int64, count=len(xs))

    @classmethod
    def of(cls, value: IdIndex | Iterable[str] | None) -> IdIndex | None:
        """`value` as an `IdIndex`: itself, or built from a list of ids (as a format-1 folder's
        state.json kept them); None stays None."""
        return value if value is None or isinstance(value, IdIndex) else cls(value)

    def rows(self, xs: Sequence[str]) -> np.ndarray:
        """int64 row per id in a table of the known ids only (`lookup - 1`); -1 for an unknown id."""
        return self.lookup(xs) - 1


# -- the kinds a folder can hold -------------------------------------------------------------------
# kind -> {model name -> class}: each package registers its own table (`feedbackgen.models` the
# generators, `feedbackgen.recommend` the choice models), so this layer needs none of them
KINDS: dict[str, dict[str, type]] = {}
KIND_PACKAGES = {"generator": "feedbackgen.models", "choice": "feedbackgen.recommend"}
KIND_NOUNS = {"generator": "generator", "choice": "choice model"}
KIND_LOADERS = {"generator": "feedbackgen.models.load", "choice": "feedbackgen.recommend.load_choice"}


def register_kind(kind: str, registry: dict[str, type]) -> None:
    """Let `load` build the models of `kind` from `registry` (model name -> class)."""
    KINDS[kind] = registry


@dataclass
class Contents:
    """What a folder holds, read back: its config.json, arrays, id maps (already inside `state`)."""

    meta: dict[str, Any]
    arrays: dict[str, Any]
    state: dict[str, Any]


def read_config(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The folder's config.json, with `kind` filled in for a format-1 generator folder.

    Raises FeedbackgenError when `path` holds no model, a model of another kind than `kind`
    (when given), or a model this version does not know."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FeedbackgenError(f"{path} is not a saved feedbackgen model (no config.json); "
                               "train one with `feedbackgen train DATASET --model NAME --out MODEL`")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FeedbackgenError(f"{cfg} is not valid JSON ({e}); retrain the model") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise FeedbackgenError(f"{cfg} names no model; it was not written by feedbackgen: retrain the model")
    meta.setdefault("kind", "generator")  # format 1 marked only choice folders
    if kind is not None and meta["kind"] != kind:
        noun = KIND_NOUNS.get(meta["kind"], meta["kind"])
        loader = KIND_LOADERS.get(meta["kind"])
        raise FeedbackgenError(f"{path} holds a {noun} ({meta['model']!r}), not a {KIND_NOUNS.get(kind, kind)}; "
                               f"load it with {loader + ' or ' if loader else ''}feedbackgen.load "
                               "(it returns whatever a folder holds)")
    registry = KINDS.get(meta["kind"])
    if registry is None:
        package = KIND_PACKAGES.get(meta["kind"])
        raise FeedbackgenError(f"{cfg} holds a model of kind {meta['kind']!r}, which "
                               + (f"needs {package} imported (or use feedbackgen.load)" if package
                                  else "this version does not know"))
    if meta["model"] not in registry:
        raise FeedbackgenError(f"{cfg} names {meta['kind']} model {meta['model']!r}, which this version does not "
                               f"know (known: {', '.join(sorted(registry))})")
    return meta


def model_class(meta: dict[str, Any]) -> type:
    return KINDS[meta["kind"]][meta["model"]]


def load(path: str | Path) -> Any:
    """Whatever model the folder holds (a generator, a choice model, ...), ready to use."""
    meta = read_config(path)
    return model_class(meta).load(path)


# -- writing and reading ---------------------------------------------------------------------------

def split_ids(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(`state` less its `IdIndex` values, {dotted path: sorted ids}), looking into nested dicts."""
    plain, ids = {}, {}
    for key, value in state.items():
        if isinstance(value, IdIndex):
            if "." in key:  # the dot separates the path's parts in ids.json
                raise FeedbackgenError(f"an id map's key may not hold a dot: {prefix + key!r}")
            ids[prefix + key] = value.ids
        elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
            plain[key], inner = split_ids(value, f"{prefix}{key}.")
            ids.update(inner)
        else:
            plain[key] = value
    return plain, ids


def join_ids(state: dict[str, Any], ids: dict[str, list[str]]) -> dict[str, Any]:
    """Inverse of `split_ids`: each id list back in `state` as an `IdIndex` at its dotted path."""
    for dotted, values in ids.items():
        *parents, key = dotted.split(".")
        node = state
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = IdIndex(values) if values is not None else None
    return state


def write_folder(path: Path, arrays: dict[str, Any], state: dict[str, Any], framework: str) -> None:
    """The folder's files (each atomically), config.json last."""
    plain, ids = split_ids(state)
    save = save_torch if framework == "pt" else save_numpy
    atomic_write(path / "model.safetensors", lambda p: save(arrays, str(p)))
    for name, data in (("ids.json", ids), ("state.json", plain)):
        if data:
            atomic_write_json(path / name, data)
        else:
            (path / name).unlink(missing_ok=True)


def read_folder(path: Path, meta: dict[str, Any], framework: str) -> Contents:
    """The arrays and state of a folder whose config.json is `meta`, id maps back in the state."""
    weights = path / "model.safetensors"
    arrays = (load_torch if framework == "pt" else load_numpy)(str(weights)) if weights.exists() else {}
    state_file, ids_file = path / "state.json", path / "ids.json"
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else {}
    # format 1: a choice folder's ids.json was this one; a generator's id lists sat in state.json,
    # where `IdIndex.of` in its `set_state` takes them as they are
    ids = json.loads(ids_file.read_text(encoding="utf-8")) if ids_file.exists() else {}
    return Contents(meta, arrays, join_ids(state, ids))


class SavedModel:
    """`save(path)` / `load(path)` for every trained thing, as one folder (the module docstring).

    A subclass sets `kind`, `name`, `Config` and `framework` (how the arrays come back: torch
    tensors, "pt", or numpy arrays, "np"), and implements `get_state` / `set_state` and
    `check_fitted`; `save_extra` / `load_extra` write and read what goes beside (a vocabulary, an
    adapter), `folder_record` / `read_record` the kind's own keys of config.json."""

    kind: ClassVar[str]
    name: ClassVar[str]
    framework: ClassVar[str] = "pt"
    required_files: ClassVar[tuple[str, ...]] = ("model.safetensors",)  # a folder without one is incomplete

    def get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(arrays for model.safetensors, plain JSON data with `IdIndex` values for the id maps)."""
        raise NotImplementedError

    def set_state(self, arrays: dict[str, Any], state: dict[str, Any]) -> None:
        """Inverse of `get_state` (the id maps come back as `IdIndex`)."""
        raise NotImplementedError

    def check_fitted(self) -> None:
        raise NotImplementedError

    def folder_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What `save` writes: `get_state()`, plus what the kind's base class keeps for all its models."""
        return self.get_state()

    def restore_state(self, arrays: dict[str, Any], state: dict[str, Any]) -> None:
        """Inverse of `folder_state`."""
        self.set_state(arrays, state)

    def save_extra(self, path: Path) -> None:
        """Files beside the arrays (none by default)."""

    def load_extra(self, path: Path, arrays: dict[str, Any]) -> None:
        """Read what `save_extra` wrote, after `set_state`; `arrays` are model.safetensors' (for a
        part kept beside whose arrays sit there). Nothing by default."""

    def folder_record(self) -> dict[str, Any]:
        """The kind's own keys of config.json (none by default)."""
        return {}

    def read_record(self, meta: dict[str, Any]) -> None:
        """Take back what `folder_record` wrote."""

    def save(self, path: str | Path) -> Path:
        """Write the model folder; each file atomically, config.json last. Returns `path`."""
        from feedbackgen import __version__  # the package's __init__ is above this layer's imports

        self.check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays, state = self.folder_state()
        write_folder(path, arrays, state, self.framework)
        if getattr(self, "training_log", None) is not None:
            atomic_write_jsonl(path / "training_log.jsonl", self.training_log)
        if getattr(self, "training_summary", None):
            atomic_write_json(path / "training.json", self.training_summary)
        self.save_extra(path)
        atomic_write_json(path / "config.json", {"kind": self.kind, "model": self.name,
                                                 "config": self.config.model_dump(), **self.folder_record(),
                                                 "format": FOLDER_FORMAT, "feedbackgen_version": __version__})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """The model saved in `path`. Raises FeedbackgenError when the folder holds no model, or
        one of another kind or (called on a subclass) another model."""
        path = Path(path)
        meta = read_config(path, cls.kind)
        if getattr(cls, "name", None) is not None and meta["model"] != cls.name:
            raise FeedbackgenError(f"{path} holds a {meta['model']!r} {cls.kind}, not {cls.name!r}")
        model = model_class(meta)(meta["config"])
        missing = [name for name in model.required_files if not (path / name).is_file()]
        if missing:
            raise FeedbackgenError(f"{path} has a config.json but no {' or '.join(missing)}: the folder is "
                                   "incomplete (an interrupted copy?); copy it again or retrain the model")
        contents = read_folder(path, meta, model.framework)
        model.read_record(meta)
        model.restore_state(contents.arrays, contents.state)
        log = path / "training_log.jsonl"
        if log.exists():
            model.training_log = [json.loads(line) for line in log.read_text(encoding="utf-8").split("\n")
                                  if line.strip()]
        summary = path / "training.json"
        if summary.exists():
            model.training_summary = json.loads(summary.read_text(encoding="utf-8"))
        model.load_extra(path, contents.arrays)
        model.is_fitted = True
        return model
