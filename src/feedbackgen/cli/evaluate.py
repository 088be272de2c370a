"""`feedbackgen evaluate`, `metrics` and `report`: score predictions and show the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err, out
from feedbackgen.cli.options import DatasetOption
from feedbackgen.errors import FeedbackgenError


@app.command()
def evaluate(
    predictions: Annotated[list[Path], typer.Argument(help="PRED.jsonl file(s), one or more models")],
    dataset: DatasetOption,
    out: Annotated[Path, typer.Option(help="report folder to write")],
    split: Annotated[str, typer.Option(help="the split the predictions answer")] = "test",
    target: Annotated[Optional[str], typer.Option(help="explanation | review (default: from the rows)")] = None,
    embeddings: Annotated[bool, typer.Option(help="compute MiniLM-based metrics")] = True,
    include: Annotated[list[Path], typer.Option(
        help="a Markdown section to show beside the text metrics: ranking.md from `recommend --evaluate "
             "--out`, fidelity.md from `fidelity --out` (repeatable)")] = [],
    min_coverage: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="share of the split's references each model must answer")] = 0.9,
    allow_partial: Annotated[bool, typer.Option(
        "--allow-partial", help="score a model below --min-coverage anyway, its row marked partial")] = False,
    naturalness: Annotated[bool, typer.Option(
        help="perplexity of each model's texts (and the references') under a fixed pretrained LM")] = True,
    naturalness_model: Annotated[str, typer.Option(
        help="the LM for --naturalness: smollm2-135m-instruct (bundled), a model folder or a hub name")]
        = "smollm2-135m-instruct",
    naturalness_sample: Annotated[int, typer.Option(
        min=1, help="reference rows (drawn with --seed) whose texts --naturalness scores; bounds its CPU time")]
        = 200,
    seed: Annotated[int, typer.Option(help="seed of every sampled metric and of the naturalness sample")] = 1,
):
    """Score predictions against the dataset's references; write report.json, report.md and plots.

    Each file's models are rows of their own (the file's name is added where two files share a model
    name). A model answering fewer than --min-coverage of the references fails the command, naming
    the file, unless --allow-partial. Example: `feedbackgen evaluate pred/*.jsonl --dataset data/mi --out reports/mi`
    """
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.evaluation.report import evaluate as run_evaluate

    run_evaluate(predictions, Dataset.load(dataset), out, split=split, target=target, embeddings=embeddings,
                 dataset_path=dataset, sections=include, min_coverage=min_coverage, allow_partial=allow_partial,
                 naturalness=naturalness, naturalness_model=naturalness_model,
                 naturalness_sample=naturalness_sample, seed=seed)
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
    naturalness: Annotated[bool, typer.Option(
        "--naturalness", help="add the median and mean perplexity of the generated texts and of the references "
                              "under a fixed pretrained LM (naturalness_model)")] = False,
    naturalness_model: Annotated[str, typer.Option(help="the LM for --naturalness")] = "smollm2-135m-instruct",
):
    """PETER/PEPLER metrics on plain aligned files (BLEU and ROUGE ×100, as in the papers).

    Example: `feedbackgen metrics --generated G.txt --references R.txt --json`
    """
    from feedbackgen.evaluation.metrics import metrics_from_files
    from feedbackgen.io import json_ready

    result = metrics_from_files(generated, references, feature_set=feature_set,
                                reference_features=reference_features, ratings=ratings,
                                reference_ratings=reference_ratings)
    if naturalness:
        from feedbackgen.evaluation.metrics import read_token_file
        from feedbackgen.evaluation.naturalness import PerplexityScorer, summary

        scorer = PerplexityScorer(naturalness_model)  # texts detokenised before scoring (naturalness.py)
        for name, path in (("gen", generated), ("ref", references)):
            values = summary(scorer.perplexities([" ".join(t) for t in read_token_file(path)]))
            result[f"ppl_{name}_median"], result[f"ppl_{name}_mean"] = values["median"], values["mean"]
    result = json_ready(result)  # an undefined value (DIV of one sample) is null, never NaN
    if as_json:
        print(json.dumps(result, sort_keys=True, allow_nan=False))
    else:
        for key, value in result.items():
            print(f"{key:>20}  {value:.4f}" if isinstance(value, float) else
                  f"{key:>20}  {'undefined' if value is None else value}")


@app.command()
def report(report_dir: Annotated[Path, typer.Argument(help="a folder written by `feedbackgen evaluate`")]):
    """Show a written report in the terminal; tables too wide for it are cut into several, so every
    number is shown whole.

    Example: `feedbackgen report reports/mi`
    """
    from feedbackgen.tables import print_markdown

    md = report_dir / "report.md"
    if not md.exists():
        raise FeedbackgenError(f"{report_dir} has no report.md; write one with `feedbackgen evaluate`")
    print_markdown(md.read_text(encoding="utf-8"), out)

