"""`feedbackgen annotate create | serve | report`: blind human evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err
from feedbackgen.cli.options import DatasetOption
from feedbackgen.errors import FeedbackgenError

annotate_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Blind human evaluation: build a task, serve it, report on the judgements.")
app.add_typer(annotate_app, name="annotate")


@annotate_app.command("create")
def annotate_create(
    predictions: Annotated[list[Path], typer.Option(help="PRED.jsonl of two or more models (list them after "
                                                         "the option, or repeat it)")],
    dataset: DatasetOption,
    out: Annotated[Path, typer.Option(help="task folder to write")],
    more: Annotated[Optional[list[Path]], typer.Argument(help="more PRED.jsonl files", show_default=False)] = None,
    n: Annotated[int, typer.Option(help="number of items to judge")] = 50,
    seed: Annotated[int, typer.Option(help="seed of the sample and of the A/B order")] = 1,
):
    """Build a blind pairwise task (model names hidden) from several models' predictions.

    Example: `feedbackgen annotate create --predictions pred/peter.jsonl pred/retrieval.jsonl
    --dataset data/mi --out tasks/mi`
    """
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.evaluation.human import create_task

    # click options take one value each: `--predictions A B` leaves B as an argument, gathered here
    task = create_task([*predictions, *(more or [])], Dataset.load(dataset), out, n=n, seed=seed)
    err.print(f"[green]wrote[/green] task {task} ({n} items at most); serve it with "
              f"`feedbackgen annotate serve {task}` and send annotators to /annotate?annotator=NAME")


@annotate_app.command("serve")
def annotate_serve(
    task: Annotated[Path, typer.Argument(help="a task folder from `feedbackgen annotate create`")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
):
    """Serve only the annotation pages of TASK (no model needed).

    Example: `feedbackgen annotate serve tasks/mi --port 8001`, then open /annotate?annotator=alice
    """
    from feedbackgen.serve import create_app, run

    service = create_app(annotate=task)  # refuses a folder that is not a task before anything is announced
    err.print(f"annotation of {task} at http://{host}:{port}/annotate")
    run(service, host=host, port=port)


@annotate_app.command("report")
def annotate_report(
    task: Annotated[Path, typer.Argument(help="a task folder with judgements")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    rating_metric: Annotated[str, typer.Option(
        help="alpha metric for the 1-5 ratings: ordinal | interval")] = "ordinal",
):
    """Per-model win rates (95% Wilson intervals), mean ratings and Krippendorff's alpha.

    Example: `feedbackgen annotate report tasks/mi`
    """
    from feedbackgen.evaluation.human import report_markdown, task_report

    if rating_metric not in ("ordinal", "interval"):
        raise FeedbackgenError(f"--rating-metric must be ordinal or interval, got {rating_metric!r}")
    result = task_report(task, rating_metric=rating_metric)
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(report_markdown(result))
