"""The `feedbackgen` command: one sub-command per arrow of the flow in DESIGN.md."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console

from feedbackgen.errors import FeedbackgenError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Learn how users write and rate; generate the feedback they would give.")
err = Console(stderr=True)
out = Console()

FORMATS = "amazon2014 | amazon2018 | amazon2023 | yelp | peter | recbole | csv | jsonl | parquet"


def _mapping(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise FeedbackgenError(f"--map expects ours=theirs (e.g. user_id=reviewer), got {pair!r}")
        ours, theirs = pair.split("=", 1)
        mapping[ours.strip()] = theirs.strip()
    return mapping


@app.command()
def prepare(
    sources: Annotated[list[Path], typer.Argument(help="review file(s) or folder (peter format)")],
    format: Annotated[str, typer.Option("--format", "-f", help=FORMATS)],
    out: Annotated[Path, typer.Option(help="dataset folder to write")],
    meta: Annotated[Optional[Path], typer.Option(help="item metadata file (amazon2018/2023, yelp business.json)")] = None,
    split: Annotated[str, typer.Option(help="random | temporal | peter")] = "random",
    seed: Annotated[int, typer.Option(help="seed of the random split")] = 1,
    strict: Annotated[bool, typer.Option(help="stop at the first bad record instead of skipping it")] = False,
    map: Annotated[list[str], typer.Option("--map", help="column mapping ours=theirs (csv/jsonl/parquet)")] = [],
    config: Annotated[Optional[Path], typer.Option(help="JSON file of preprocessing settings")] = None,
    set: Annotated[list[str], typer.Option("--set", help="preprocessing setting key=value")] = [],
):
    """Load a public review file, clean it, extract explanations, split it, and save a Dataset.

    Example: `feedbackgen prepare reviews_Musical_Instruments_5.json.gz --format amazon2014 --out data/mi`
    """
    from feedbackgen.config import load_config_file, parse_set_options
    from feedbackgen.data.prepare import prepare as run_prepare

    settings = {**load_config_file(config), **parse_set_options(set)}
    t0 = time.time()
    dataset = run_prepare(sources, format, meta=meta, mapping=_mapping(map), split=split, seed=seed,
                          strict=strict, config=settings)
    dataset.save(out)
    summary = dataset.summary()
    skipped = dataset.manifest.get("problems", {}).get("skipped", 0)
    err.print(f"[green]wrote[/green] {out}: {summary} — skipped {skipped} bad record(s) "
              f"(details in {out / 'manifest.json'}) in {time.time() - t0:.1f}s")


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="a prepared dataset folder")],
    model: Annotated[str, typer.Option("--model", "-m", help="model name (see `feedbackgen models`)")],
    out: Annotated[Path, typer.Option(help="model folder to write")],
    config: Annotated[Optional[Path], typer.Option(help="JSON file of model settings")] = None,
    set: Annotated[list[str], typer.Option("--set", help="model setting key=value")] = [],
):
    """Fit a generator on a dataset's training split and save it as a folder.

    Example: `feedbackgen train data/mi --model retrieval --out models/retrieval --set target=review`
    """
    from feedbackgen.config import load_config_file, parse_set_options
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.models import create

    settings = {**load_config_file(config), **parse_set_options(set)}
    generator = create(model, settings)
    ds = Dataset.load(dataset)
    t0 = time.time()
    generator.fit(ds)
    generator.save(out)
    err.print(f"[green]trained[/green] {model} in {time.time() - t0:.1f}s → {out}")


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="a saved model folder")],
    out: Annotated[Path, typer.Option(help="PRED.jsonl to write")],
    dataset: Annotated[Optional[Path], typer.Option(help="dataset whose split to generate for")] = None,
    split: Annotated[str, typer.Option(help="train | valid | test")] = "test",
    requests: Annotated[Optional[Path], typer.Option(help="JSONL/CSV/Parquet of user_id, item_id[, aspect]")] = None,
    with_aspect: Annotated[bool, typer.Option(help="condition on each row's aspect (PETER+)")] = False,
    max_new_tokens: int = 25,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    batch_size: int = 128,
    seed: int = 1,
):
    """Generate feedback for a dataset split or a requests file (resumable: rerun after a kill).

    Example: `feedbackgen generate models/retrieval --dataset data/mi --split test --out pred/retrieval.jsonl`
    """
    from feedbackgen.config import Decoding, validate
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.data.problems import Problems
    from feedbackgen.generation import read_requests, requests_from_split, run_generation
    from feedbackgen.models import load

    decoding = validate(Decoding, dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
        top_p=top_p, num_beams=num_beams, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, batch_size=batch_size, seed=seed), "decoding options")
    if (dataset is None) == (requests is None):
        raise FeedbackgenError("give exactly one of --dataset (with --split) or --requests")
    problems = Problems()
    if requests is not None:
        reqs = read_requests(requests, problems)
        if problems.count:
            err.print(f"[yellow]{requests}: {problems.describe()}[/yellow]")
    else:
        reqs = requests_from_split(Dataset.load(dataset), split, with_aspect=with_aspect)
    generator = load(model)
    t0 = time.time()
    run_generation(generator, reqs, out, decoding, model_id=str(model.resolve()))
    dt = time.time() - t0
    err.print(f"[green]wrote[/green] {len(reqs)} feedback rows to {out} in {dt:.1f}s "
              f"({len(reqs) / max(dt, 1e-9):.1f} samples/s)")


@app.command()
def evaluate(
    predictions: Annotated[list[Path], typer.Argument(help="PRED.jsonl file(s), one or more models")],
    dataset: Annotated[Path, typer.Option(help="the dataset the predictions are for")],
    out: Annotated[Path, typer.Option(help="report folder to write")],
    split: Annotated[str, typer.Option(help="the split the predictions answer")] = "test",
    target: Annotated[Optional[str], typer.Option(help="explanation | review (default: from the rows)")] = None,
    embeddings: Annotated[bool, typer.Option(help="compute MiniLM-based metrics")] = True,
):
    """Score predictions against the dataset's references; write report.json, report.md and plots.

    Example: `feedbackgen evaluate pred/*.jsonl --dataset data/mi --out reports/mi`
    """
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.evaluation.report import evaluate as run_evaluate

    run_evaluate(predictions, Dataset.load(dataset), out, split=split, target=target, embeddings=embeddings,
                 dataset_path=dataset)
    out_md = (out / "report.md").read_text()
    print(out_md)
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


@app.command("models")
def list_models():
    """List the generators this version knows, with their settings.

    Example: `feedbackgen models`
    """
    from feedbackgen.models import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        fields = ", ".join(f"{k}={v.default!r}" for k, v in cls.Config.model_fields.items())
        out.print(f"[bold]{name}[/bold]  {fields}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except FeedbackgenError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume where a resumable step stopped")
        sys.exit(130)
