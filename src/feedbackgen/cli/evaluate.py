"""`feedbackgen evaluate`, `metrics` and `report`: score predictions and show the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err, out
from feedbackgen.errors import FeedbackgenError


@app.command()
def evaluate(
    predictions: Annotated[list[Path], typer.Argument(help="PRED.jsonl file(s), one or more models")],
    dataset: Annotated[Path, typer.Option(help="the dataset the predictions are for")],
    out: Annotated[Path, typer.Option(help="report folder to write")],
    split: Annotated[str, typer.Option(help="the split the predictions answer")] = "test",
    target: Annotated[Optional[str], typer.Option(help="explanation | review (default: from the rows)")] = None,
    embeddings: Annotated[bool, typer.Option(help="compute MiniLM-based metrics")] = True,
    include: Annotated[list[Path], typer.Option(
        help="a Markdown section to show beside the text metrics: ranking.md from `recommend --evaluate "
             "--out`, fidelity.md from `fidelity --out` (repeatable)")] = [],
):
    """Score predictions against the dataset's references; write report.json, report.md and plots.

    Example: `feedbackgen evaluate pred/*.jsonl --dataset data/mi --out reports/mi`
    """
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.evaluation.report import evaluate as run_evaluate

    run_evaluate(predictions, Dataset.load(dataset), out, split=split, target=target, embeddings=embeddings,
                 dataset_path=dataset, sections=include)
    main_table = (out / "report.md").read_text().split("## Other metrics")[0]
    print(main_table.rstrip())
    err.print(f"[green]report[/green] written to {out / 'report.md'} (and report.json, plots)")


@app.command()
def metrics(
    generated: Annotated[Path, typer.Option(help="one tokenised generated sample a line")],
    references: Annotated[Path, typer.Option(help="one tokenised reference a line, aligned")],
    feature_set: Annotated[Optional[Path], typer.Option(help="aspect vocabulary, one word a line")] = None,
    reference_features: Annotated[Optional[Path], typer.Option(help="each sample's true aspect, one a line")] = None,
    ratings: Annotated[Optional[Path], typer.Option(help="predicted ratings, one a line")] = None,
    reference_ratings: Annotated[Optional[Path], typer.Option(help="true ratings, one a line")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
):
    """PETER/PEPLER metrics on plain aligned files (BLEU and ROUGE ×100, as in the papers).

    Example: `feedbackgen metrics --generated G.txt --references R.txt --json`
    """
    from feedbackgen.evaluation.metrics import metrics_from_files

    result = metrics_from_files(generated, references, feature_set=feature_set,
                                reference_features=reference_features, ratings=ratings,
                                reference_ratings=reference_ratings)
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:>20}  {value}")


@app.command()
def report(report_dir: Annotated[Path, typer.Argument(help="a folder written by `feedbackgen evaluate`")]):
    """Show a written report in the terminal.

    Example: `feedbackgen report reports/mi`
    """
    from rich.markdown import Markdown

    md = report_dir / "report.md"
    if not md.exists():
        raise FeedbackgenError(f"{report_dir} has no report.md; write one with `feedbackgen evaluate`")
    out.print(Markdown(md.read_text()))

