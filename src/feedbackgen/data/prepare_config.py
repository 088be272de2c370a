"""The settings of `prepare`: `PrepareConfig` (one field per preprocessing choice, set with
`--set key=value`), its rendering for `feedbackgen prepare --help` (`prepare_settings_help`), and
the checks of `prepare`'s other arguments. Everything here runs before a byte is read."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from pydantic import Field, model_validator

from feedbackgen.config import StrictModel, field_range, set_value
from feedbackgen.errors import ConfigError


class PrepareConfig(StrictModel):
    """Every preprocessing choice. Set from the command line with `--set key=value`."""

    clean_text: bool = Field(True, description="NFKC, decode HTML entities, strip tags and control characters")
    drop_empty: bool = Field(True, description="drop reviews with no text")
    drop_duplicates: bool = Field(True, description="keep the latest review per (user, item)")
    copies: Literal["auto", "keep_one", "keep_all", "report"] = Field(
        "auto", description="one user's identical text on several items (data/duplicates.py): keep_one (the "
                            "most-reviewed item's), keep_all (never split apart), report (counted only); "
                            "auto = report for the peter format, else keep_one")
    scrub_pii: bool = Field(True, description="replace e-mails, URLs, phones, cards, @handles by placeholders")
    min_tokens: int = Field(0, ge=0, le=100_000, description="drop reviews shorter than this (0 = off)")
    max_tokens: int = Field(0, ge=0, le=100_000, description="longest review kept, in tokens (0 = no limit)")
    over_max: Literal["truncate", "drop"] = Field("truncate", description="what to do with longer reviews")
    k_core: int = Field(0, ge=0, le=10_000,
                        description="keep users and items with >= k reviews in the output, after every row drop "
                                    "(0 = off)")
    rating_scale: Literal["auto"] | tuple[float, float] = Field(
        "auto", description="source rating range mapped onto 1-5; auto = the format's known scale (Amazon, Yelp: "
                           "1-5; outside it = a bad record), else the loader's own (MovieLens: kept as it is), "
                           "else the observed min/max, said in the output")
    split_ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/valid/test for --split random")
    cold_start: Literal["move_to_train", "keep"] | None = Field(
        None, description="valid/test rows with a user or item unseen in train: move them to train, or keep "
                          "them (counts are always recorded); default move_to_train, keep for --split peter")
    split_index_dir: str | None = Field(
        None, description="folder of PETER index files over source positions, for --split peter "
                          "(default: the peter source's folder 1)")
    explanations: Literal["auto", "extract", "source", "off"] = Field(
        "auto", description="explanation targets: mined (extract), given by the source, auto (source if it has them)")
    n_aspects: int = Field(200, ge=1, le=100_000, description="number of aspect words mined")
    aspect_window: int = Field(3, ge=1, le=50, description="tokens between an aspect and an opinion word")
    explanation_max_tokens: int = Field(20, ge=1, le=1024, description="explanations are cut to this many tokens")
    sentiment_threshold: float = Field(0.05, ge=0.0, lt=1.0, description="|VADER compound| below this is neutral")

    @model_validator(mode="after")
    def _consistent(self) -> PrepareConfig:
        if self.max_tokens and self.min_tokens > self.max_tokens:
            raise ConfigError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.rating_scale != "auto":
            lo, hi = self.rating_scale
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"rating_scale must be [lo, hi] with lo < hi, got {list(self.rating_scale)}")
        ratios = self.split_ratios
        if min(ratios) < 0 or ratios[0] <= 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise ConfigError(f"split_ratios must be >= 0, with train > 0, summing to 1; got {list(ratios)}")
        return self


NO_TEXT = "no review text in this source"
NO_RATINGS = "no ratings in this source (implicit feedback: a row says the user chose the item)"


def default_split(fmt: str, split: str | None) -> str:
    """The lightgcn layout carries its split in its files; every other source is split randomly."""
    return split if split is not None else ("files" if fmt == "lightgcn" else "random")


def check_arguments(fmt: str, split: str, seed: Any, config: PrepareConfig) -> None:
    """Raises ConfigError naming the argument when the format, the split (for this format), the
    seed or the index folder of --split peter is not one `prepare` can use."""
    # imported here: `feedbackgen prepare --help` reads this module without loading polars
    from feedbackgen.data import splits
    from feedbackgen.data.loaders import FORMATS

    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if (fmt == "lightgcn") != (split == "files"):
        raise ConfigError("the lightgcn format takes its split from train.txt/valid.txt/test.txt: leave --split "
                          "out (or give --split files)" if fmt == "lightgcn" else
                          f"--split files reads the split from the source's files, which only --format lightgcn "
                          f"has; for {fmt} use random, temporal or peter")
    if split not in splits.SPLIT_METHODS:
        raise ConfigError(f"unknown split {split!r}; expected one of: {', '.join(splits.SPLIT_METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if split == "peter" and fmt != "peter" and config.split_index_dir is None:
        raise ConfigError("--split peter reads PETER index files: use it with --format peter, or set "
                          "split_index_dir=FOLDER")


def _kind(annotation: Any) -> str:
    """A type as a `--set` value is written: choices, JSON lists, true | false, null."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_kind(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(_kind(a) for a in args) + "]"
    if annotation is type(None):
        return "null"
    return {bool: "true | false", int: "integer", float: "number", str: "text"}.get(annotation, str(annotation))


def prepare_settings_help() -> str:
    """Every `PrepareConfig` field as one line each, for `feedbackgen prepare --help`:

        name: kind[ in range], default value. description

    kind: the Literal choices, true | false, integer, number, [a, b] for a pair, null; range: the
    field's ge/gt/le/lt bounds as an interval. Rendered from the model, so a new field appears
    without editing this function."""
    defaults = PrepareConfig().model_dump(mode="json")
    lines = []
    for name, info in PrepareConfig.model_fields.items():
        lines.append(f"{name}: {_kind(info.annotation)}{field_range(info.metadata)}, "
                     f"default {set_value(defaults[name])}. {info.description or ''}".rstrip())
    return "\n".join(lines)
