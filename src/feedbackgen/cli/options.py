"""Options several commands share, declared once: a typed option set.

A command takes one as the type of its parameter (`dataset: DatasetOption`, or
`dataset: OptionalDatasetOption = None` where the dataset may be left out), so the flag, its type
and its help are written once. A setting that a config model holds takes its help, range and
default from the model (`config_option`, `config_default`), as `generate` does for `Decoding` and
`serve` for `ServeConfig`, so `--help`, the defaults and validation cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args, get_origin

import typer
from pydantic import BaseModel

from feedbackgen.config import field_help

DATASET_HELP = ("a prepared dataset folder (`feedbackgen prepare`): the one the models were trained on, "
                "or the predictions are for")
RECS_MAP_HELP = ("RECS column mapping ours=theirs: user_id, item_id, rank, score (e.g. user_id=uid; a "
                 "header-less file's columns by position from 1: item_id=2)")
ENGAGE_CHOICE_HELP = "a choice-model folder (`feedbackgen train D --model ease`): decides engage/skip"

DatasetOption = Annotated[Path, typer.Option("--dataset", help=DATASET_HELP)]
OptionalDatasetOption = Annotated[Optional[Path], typer.Option("--dataset", help=DATASET_HELP)]
RecsMapOption = Annotated[list[str], typer.Option("--map", help=RECS_MAP_HELP)]
EngageChoiceOption = Annotated[Optional[Path], typer.Option("--choice", help=ENGAGE_CHOICE_HELP)]


def config_option(model: type[BaseModel], name: str, **kwargs: Any) -> Any:
    """A `typer.Option` for the field `name` of `model`: its description and range as the help,
    and its choices when the field takes one of a few words."""
    annotation = model.model_fields[name].annotation
    choices = f": {' | '.join(get_args(annotation))}" if get_origin(annotation) is Literal else ""
    return typer.Option(help=field_help(model, name) + choices, **kwargs)


def config_default(model: type[BaseModel], name: str) -> Any:
    """The default of the field `name` of `model`."""
    return model.model_fields[name].default
