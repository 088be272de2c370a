"""`feedbackgen train` and `feedbackgen models`: fit and list generators and choice models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err, out
from feedbackgen.config import set_value
from feedbackgen.errors import FeedbackgenError


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="a prepared dataset folder")],
    model: Annotated[str, typer.Option("--model", "-m", help="model name (see `feedbackgen models`)")],
    out: Annotated[Path, typer.Option(help="model folder to write")],
    config: Annotated[Optional[Path], typer.Option(help="JSON file of model settings")] = None,
    set: Annotated[list[str], typer.Option("--set", help="model setting key=value")] = [],
):
    """Fit a generator or a choice model on a dataset's training split and save it as a folder.

    Example: `feedbackgen train data/mi --model retrieval --out models/retrieval --set target=review`

    Choice models (`feedbackgen models` lists them) choose their hyper-parameters on the valid
    split first: `feedbackgen train data/mi --model ease --out models/ease`; fixed instead:
    `--set search=false --set l2=200`.

    Under `torchrun --nproc_per_node N -m feedbackgen.cli train ...` the neural generators train
    data-parallel on N processes, and rank 0 saves the model (docs/training.md).
    """
    from feedbackgen.config import load_config_file, parse_set_options
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.models import create, distributed

    settings = {**load_config_file(config), **parse_set_options(set)}
    from feedbackgen.recommend.choice import CHOICE_MODELS

    if model in CHOICE_MODELS:
        _train_choice(dataset, model, out, settings, distributed.requested())
        return
    generator = create(model, settings)
    if distributed.requested() and not getattr(generator, "data_parallel", False):
        raise FeedbackgenError(f"{model} does not train data-parallel; run it without torchrun "
                               "(data-parallel training: --model peter)")
    ds = Dataset.load(dataset)
    t0 = time.time()
    try:
        generator.fit(ds)
        if distributed.current().is_main:  # the other ranks hold the same weights
            generator.save(out)
            privacy = getattr(generator, "privacy", None)
            if privacy:
                err.print(f"privacy spent: ε = {privacy['epsilon']:.3f} (target {privacy['target_epsilon']:g}), "
                          f"δ = {privacy['delta']:.3g}")
            err.print(f"[green]trained[/green] {model} in {time.time() - t0:.1f}s → {out}")
        # the other ranks wait for rank 0's save: a rank tearing gloo down while a peer is still busy
        # aborted ("terminate called without an active exception") on a loaded machine
        distributed.barrier()
    finally:
        distributed.shutdown()


def _train_choice(dataset: Path, model: str, out: Path, settings: dict, distributed: bool) -> None:
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.recommend.choice import create_choice

    if distributed:
        raise FeedbackgenError(f"{model} is a choice model and does not train data-parallel; run it without torchrun")
    choice = create_choice(model, settings)  # settings fail here, before the data is read
    ds = Dataset.load(dataset)
    t0 = time.time()
    choice.fit(ds)
    choice.save(out)
    search = choice.search_record
    if getattr(choice, "engage", None) is not None:
        r = choice.engage.record
        err.print(f"calibrated P(engage) on {r['rows']} ranked candidates of {r['users']} {r['split']} users "
                  f"({r['positives']} taken; stacked: {', '.join(r['models'])})")
    if search is not None:
        best = max(c[search["metric"]] for c in search["candidates"])
        err.print(f"chose {search['chosen']} on the valid split ({search['metric']} {best:.4f}, "
                  f"{len(search['candidates'])} candidates, {search['users']} users; all in {out / 'config.json'})")
    err.print(f"[green]trained[/green] {model} in {time.time() - t0:.1f}s → {out}")



@app.command("models")
def list_models():
    """List the generators and the choice models this version knows, with their default settings.

    Example: `feedbackgen models`
    """
    from feedbackgen.models import ALIASES, REGISTRY, effective_defaults
    from feedbackgen.recommend.choice import CHOICE_MODELS, DEFAULT_CHOICE_MODEL

    out.print("[bold underline]generators[/bold underline] (rating and text); the values a model trains "
              "with when given none (its preset's, where it has presets)")
    for name, cls in sorted(REGISTRY.items()):
        fields = ", ".join(f"{k}={set_value(v)}" for k, v in effective_defaults(cls).items())
        out.print(f"[bold]{name}[/bold]  {fields}", highlight=False)
    out.print("null: off, or the library's own choice (each setting's meaning: docs and `--set` errors)",
              highlight=False)
    out.print("\n[bold underline]aliases[/bold underline] (a model with chosen settings; `--set` still overrides)")
    for name, alias in sorted(ALIASES.items()):
        fields = ", ".join(f"{k}={set_value(v)}" for k, v in alias.settings.items())
        out.print(f"[bold]{name}[/bold] = {alias.model} with {fields}: {alias.means}", highlight=False)
    out.print("\n[bold underline]choice models[/bold underline] (will the user take the item?); "
              "hyper-parameters marked * are chosen on the valid split unless set or search=false")
    for name, cls in sorted(CHOICE_MODELS.items()):
        defaults = cls().config.model_dump()
        fields = ", ".join(f"{k}={set_value(v)}" + (f"* in {set_value(list(cls.grid[k]))}" if k in cls.grid else "")
                           for k, v in defaults.items())
        label = f"{name} (default)" if name == DEFAULT_CHOICE_MODEL else name
        out.print(f"[bold]{label}[/bold]  {fields}", highlight=False)

