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

FORMATS = ("amazon2014 | amazon2018 | amazon2023 | yelp | peter | recbole | movielens (ML-100K/1M/10M/20M+ folder "
           "or files; ratings only) | lightgcn (train.txt/valid.txt/test.txt, one line per user; interactions "
           "only) | csv | jsonl | parquet")


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
    meta: Annotated[Optional[Path], typer.Option(
        help="item metadata file (amazon2018/2023, yelp business.json, lightgcn: any CSV/JSONL, see --map)")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="random | temporal | peter | files (default: files for lightgcn, whose files hold the split; "
             "random otherwise)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random split")] = 1,
    strict: Annotated[bool, typer.Option(help="stop at the first bad record instead of skipping it")] = False,
    map: Annotated[list[str], typer.Option(
        "--map", help="column mapping ours=theirs (csv/jsonl/parquet/recbole; lightgcn: the --meta file's "
                      "columns, e.g. item_id=movie_id)")] = [],
    config: Annotated[Optional[Path], typer.Option(help="JSON file of preprocessing settings")] = None,
    set: Annotated[list[str], typer.Option("--set", help="preprocessing setting key=value")] = [],
    chunk_rows: Annotated[int, typer.Option(help="rows held in memory at a time (peak memory, not the result)")] = 100_000,
    workdir: Annotated[Optional[Path], typer.Option(help="folder for temporary parts (default: the system's temp)")] = None,
    encoding: Annotated[str, typer.Option(help="text encoding of the files (utf-8, cp1252, latin-1, utf-16, ...); "
                                          "auto: a BOM, else UTF-8, else windows-1252 for CSV/RecBole")] = "auto",
):
    """Load a public review file, clean it, extract explanations, split it, and save a Dataset.

    Example: `feedbackgen prepare reviews_Musical_Instruments_5.json.gz --format amazon2014 --out data/mi`

    Ratings only: `feedbackgen prepare path/to/ml-100k --format movielens --out data/ml100k`;
    interactions only: `feedbackgen prepare agent4rec/ --format lightgcn --meta agent4rec/movie_detail.csv
    --map item_id=movie_id --out data/a4r`. Text-only steps skip such data and say so.
    """
    from feedbackgen.config import load_config_file, parse_set_options
    from feedbackgen.data.prepare import prepare_to

    settings = {**load_config_file(config), **parse_set_options(set)}
    t0 = time.time()
    manifest = prepare_to(sources, format, out, meta=meta, mapping=_mapping(map), split=split, seed=seed,
                          strict=strict, config=settings, chunk_rows=chunk_rows, workdir=workdir,
                          encoding=encoding)
    summary = manifest["summary"]
    skipped = manifest.get("problems", {}).get("skipped", 0)
    err.print(f"[green]wrote[/green] {out}: {summary} — skipped {skipped} bad record(s) "
              f"(details in {out / 'manifest.json'}) in {time.time() - t0:.1f}s")
    skipped_steps = [s["step"] for s in manifest["steps"] if "skipped_because" in s]
    if skipped_steps:
        kind = " and ".join(k for k, missing in (("no review text", not manifest.get("has_text", True)),
                                                 ("no ratings (implicit feedback)",
                                                  not manifest.get("has_ratings", True))) if missing)
        err.print(f"{kind}: skipped {', '.join(skipped_steps)}; text generators will refuse this "
                  "dataset, choice models" + (" and rating models" if manifest.get("has_ratings", True) else "")
                  + " train on it", highlight=False)


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
    if search is not None:
        best = max(c[search["metric"]] for c in search["candidates"])
        err.print(f"chose {search['chosen']} on the valid split ({search['metric']} {best:.4f}, "
                  f"{len(search['candidates'])} candidates, {search['users']} users; all in {out / 'config.json'})")
    err.print(f"[green]trained[/green] {model} in {time.time() - t0:.1f}s → {out}")


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="a saved model folder")],
    out: Annotated[Path, typer.Option(help="PRED.jsonl to write")],
    dataset: Annotated[Optional[Path], typer.Option(help="dataset whose split to generate for")] = None,
    split: Annotated[str, typer.Option(help="train | valid | test")] = "test",
    requests: Annotated[Optional[Path], typer.Option(
        help="JSONL/CSV/Parquet of user_id, item_id[, aspect, rating, seed]")] = None,
    with_aspect: Annotated[bool, typer.Option(help="condition on each row's aspect (PETER+)")] = False,
    max_new_tokens: int = 25,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    batch_size: int = 128,
    seed: Annotated[Optional[int], typer.Option(
        help="seed of requests without their own (default: drawn per request, written in meta.seed)")] = None,
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="torch CPU threads (default: torch's; never the model's training setting)")] = None,
    engine: Annotated[str, typer.Option(help="local | ray: a pool of Ray actors (docs/distributed.md)")] = "local",
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster HOST:PORT, ray://HOST:PORT or auto (default: start Ray here)")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Ray actors, one CPU and one model copy each (default: every CPU of the cluster)")] = None,
    shard_size: Annotated[int, typer.Option(help="requests per output shard, the unit a rerun resumes from")] = 1024,
):
    """Generate feedback for a dataset split or a requests file (resumable: rerun after a kill).

    Example: `feedbackgen generate models/retrieval --dataset data/mi --split test --out pred/retrieval.jsonl`

    On a Ray cluster: `feedbackgen generate models/peter --dataset data/mi --out pred/peter.jsonl
    --engine ray --address auto` (the same output as the local engine; docs/distributed.md).
    """
    from feedbackgen.config import Decoding, validate
    from feedbackgen.data.problems import Problems
    from feedbackgen.generation import requests_file, requests_from_dataset, run_generation
    from feedbackgen.models import load

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    decoding = validate(Decoding, dict(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
        temperature=temperature, top_k=top_k,
        top_p=top_p, num_beams=num_beams, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, batch_size=batch_size, seed=seed), "decoding options")
    if (dataset is None) == (requests is None):
        raise FeedbackgenError("give exactly one of --dataset (with --split) or --requests")
    if engine not in ("local", "ray"):
        raise FeedbackgenError(f"unknown --engine {engine!r}; choose local or ray")
    if engine == "local" and (address is not None or workers is not None):
        raise FeedbackgenError("--address and --workers go with --engine ray")
    if shard_size < 1:
        raise FeedbackgenError(f"--shard-size must be at least 1 (got {shard_size})")
    problems = Problems()
    if engine == "ray":
        from feedbackgen.generation.ray_engine import run_generation_ray

        t0 = time.time()
        _, count = run_generation_ray(model, out, decoding, requests=requests, dataset=dataset, split=split,
                                      with_aspect=with_aspect, problems=problems, address=address,
                                      workers=workers, shard_size=shard_size)
        _report_generation(out, count, time.time() - t0, problems, requests)
        return
    # read in batches, never all at once: millions of requests fit in the memory of one shard
    if requests is not None:
        reqs = requests_file(requests, problems)
    else:
        try:
            reqs = requests_from_dataset(dataset, split, with_aspect=with_aspect)
        except ValueError as e:
            raise FeedbackgenError(str(e)) from None
    generator = load(model)
    t0 = time.time()
    run_generation(generator, reqs, out, decoding, model_id=str(model.resolve()), shard_size=shard_size)
    _report_generation(out, reqs.count, time.time() - t0, problems, requests)
    answers = getattr(generator, "answer_counts", None)  # LLM generators: how the JSON answers went
    if answers:
        err.print("answers: " + ", ".join(f"{k} {v}" for k, v in sorted(answers.items()))
                  + " (fallback = still invalid after every retry; each row's meta says which)")
    reasoning = getattr(generator, "reasoning_counts", None)
    if reasoning:
        err.print(f"reasoning: {reasoning.get('with_reasoning', 0)} repl(ies) had a reasoning block, removed before "
                  f"parsing; {reasoning.get('only_reasoning', 0)} held nothing else (retried, then the fallback)")


def _report_generation(out: Path, count: int, dt: float, problems, requests: Optional[Path]) -> None:
    if problems.count:
        err.print(f"[yellow]{requests}: {problems.describe()}[/yellow]")
    err.print(f"[green]wrote[/green] {count} feedback rows to {out} in {dt:.1f}s "
              f"({count / max(dt, 1e-9):.1f} samples/s)")


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


@app.command("models")
def list_models():
    """List the generators and the choice models this version knows, with their default settings.

    Example: `feedbackgen models`
    """
    from feedbackgen.models import REGISTRY
    from feedbackgen.recommend.choice import CHOICE_MODELS, DEFAULT_CHOICE_MODEL

    out.print("[bold underline]generators[/bold underline] (rating and text)")
    for name, cls in sorted(REGISTRY.items()):
        fields = ", ".join(f"{k}={v.default!r}" for k, v in cls.Config.model_fields.items())
        out.print(f"[bold]{name}[/bold]  {fields}", highlight=False)
    out.print("\n[bold underline]choice models[/bold underline] (will the user take the item?); "
              "hyper-parameters marked * are chosen on the valid split unless set or search=false")
    for name, cls in sorted(CHOICE_MODELS.items()):
        defaults = cls().config.model_dump()
        fields = ", ".join(f"{k}={v!r}" + (f"* in {list(cls.grid[k])}" if k in cls.grid else "")
                           for k, v in defaults.items())
        label = f"{name} (default)" if name == DEFAULT_CHOICE_MODEL else name
        out.print(f"[bold]{label}[/bold]  {fields}", highlight=False)


def _load_model_and_dataset(model: Path, dataset: Path):
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.models import load

    return load(model), Dataset.load(dataset)


@app.command()
def recommend(
    model: Annotated[Path, typer.Argument(help="a saved model folder: a generator or a choice model")],
    dataset: Annotated[Path, typer.Option(help="the prepared dataset the model was trained on")],
    choice: Annotated[Optional[Path], typer.Option(
        help="a choice-model folder that ranks, while MODEL (a generator) explains each item")] = None,
    user: Annotated[Optional[str], typer.Option(help="recommend for this user")] = None,
    k: Annotated[int, typer.Option(help="items per user")] = 10,
    candidates: Annotated[Optional[Path], typer.Option(
        help="items to rank (default: all the user has not interacted with): one id a line, or "
             "CSV/Parquet with item_id [and user_id for per-user lists]")] = None,
    users: Annotated[Optional[Path], typer.Option(
        help="batch mode: users to recommend for, one id a line or CSV/Parquet with user_id")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Parquet file to write (needed with --users); with --evaluate, a folder for ranking.md/json")] = None,
    explain: Annotated[bool, typer.Option(help="attach the generated feedback to each item")] = True,
    evaluate: Annotated[bool, typer.Option(
        help="instead: HR@K / NDCG@K / Recall@K on the test split (full and sampled protocols) beside "
             "popularity and MF baselines")] = False,
    max_users: Annotated[Optional[int], typer.Option(help="--evaluate on a seeded sample of test users")] = None,
):
    """Rank items for a user, each with the feedback the user would give: by a choice model's score
    (MODEL a choice folder, or `--choice`), else by the generator's predicted rating.

    Example: `feedbackgen recommend models/peter --choice models/ease --dataset data/mi --user A2IBPI20UZIR0U --k 5`

    Batch: `feedbackgen recommend models/retrieval --dataset data/mi --users users.txt --out recs.parquet`
    (the terminal shows the first 240 characters of each text; `--out` keeps them whole).
    Evaluate: `feedbackgen recommend models/ease --dataset data/mi --evaluate --out runs/ranking`
    """
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.data.problems import Problems
    from feedbackgen.models import load
    from feedbackgen.recommend import read_id_list, write_recommendations
    from feedbackgen.recommend import recommend as rank_for_users
    from feedbackgen.recommend.choice import is_choice_folder, load_choice

    if is_choice_folder(model):
        if choice is not None:
            raise FeedbackgenError(f"{model} is a choice model; with --choice, MODEL is the generator that explains")
        generator, ranker, ranker_path = None, load_choice(model), model
    else:
        generator = load(model)
        ranker, ranker_path = (load_choice(choice), choice) if choice is not None else (generator, model)
    ds = Dataset.load(dataset)
    if evaluate:
        from feedbackgen.models import create
        from feedbackgen.recommend import Popularity, evaluate_ranking, markdown_table
        from feedbackgen.recommend.ranking import write_ranking

        t0 = time.time()
        baselines = {"popularity": Popularity().fit(ds)}
        if ds.has_ratings:  # MF learns ratings: without any there is nothing for it to rank by
            baselines["mf"] = create("mf").fit(ds)
        table = evaluate_ranking({**baselines, f"{ranker.name} ({ranker_path.name})": ranker}, ds,
                                 max_users=max_users)
        print(markdown_table(table))
        if out is not None:
            write_ranking(table, out, dataset.name)
            err.print(f"[green]wrote[/green] {out}/ranking.md and ranking.json")
        err.print(f"[green]evaluated[/green] ranking in {time.time() - t0:.1f}s (higher is better; "
                  "full: all unseen items, sampled: 1 positive + 99 negatives)")
        return
    if (user is None) == (users is None):
        raise FeedbackgenError("give exactly one of --user (one user) or --users FILE (batch, with --out)")
    if users is not None and out is None:
        raise FeedbackgenError("--users writes a Parquet file: give --out recs.parquet")
    user_ids = [user] if user is not None else read_id_list(users, "user_id")
    if isinstance(user_ids, dict):
        user_ids = list(user_ids)
    candidate_ids = read_id_list(candidates, "item_id") if candidates is not None else None
    problems = Problems() if users is not None or candidates is not None else None
    t0 = time.time()
    recs = rank_for_users(generator, ds, user_ids, k=k, candidates=candidate_ids, explain=explain,
                          problems=problems, choice=ranker if ranker is not generator else None)
    if problems is not None and problems.count:
        err.print(f"[yellow]{problems.describe()}[/yellow]")
    if out is not None:
        write_recommendations(recs, out)
        err.print(f"[green]wrote[/green] {len(recs)} recommendations for {recs['user_id'].n_unique()} user(s) "
                  f"to {out} in {time.time() - t0:.1f}s")
    if user is not None:
        from rich.table import Table

        table = Table(title=f"top {len(recs)} for {user} ({recs['model'][0] if len(recs) else ranker.name})",
                      show_lines=False)
        for name, justify in (("rank", "right"), ("item", "left"), ("predicted", "right"), ("feedback", "left")):
            table.add_column(name, justify=justify)
        for r in recs.iter_rows(named=True):
            item = r["item_id"] + (f"\n{r['title'][:40]}" if r["title"] else "")
            text = r["text"] if len(r["text"]) <= 240 else r["text"][:240].rsplit(" ", 1)[0] + " …"
            rating = "–" if r["predicted_rating"] is None else f"{r['predicted_rating']:.2f}"
            table.add_row(str(r["rank"]), item, rating, text)
        Console().print(table)


def _simulator(model: Optional[Path], dataset: Path, choice: Optional[Path]):
    """(generator or None, choice model or None, dataset) for `simulate` and `fidelity`."""
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.models import load

    if model is None and choice is None:
        raise FeedbackgenError("give a generator folder (MODEL), a choice model (--choice DIR), or both")
    choice_model = None
    if choice is not None:
        from feedbackgen.recommend.choice import load_choice

        choice_model = load_choice(choice)
    return load(model) if model is not None else None, choice_model, Dataset.load(dataset)


ENGAGE_HELP = ("engage threshold (default: fitted on valid): a rating without --choice, "
               "a probability in [0, 1] with it")


@app.command()
def simulate(
    recommendations: Annotated[list[Path], typer.Option(
        help="RECS file(s): CSV/Parquet/JSONL of user_id, item_id[, rank] from any recommender")],
    dataset: Annotated[Path, typer.Option(help="the prepared dataset the models were trained on")],
    model: Annotated[Optional[Path], typer.Argument(
        help="a saved generator folder: the simulated user's ratings and reviews (optional with --choice)")] = None,
    more_recommendations: Annotated[Optional[list[Path]], typer.Argument(
        hidden=True, help="further RECS files (`--recommendations A B` is read as A and B)")] = None,
    choice: Annotated[Optional[Path], typer.Option(
        help="a choice-model folder (`feedbackgen train D --model ease`): decides engage/skip")] = None,
    k: Annotated[int, typer.Option(help="judge each user's top k")] = 10,
    threshold: Annotated[Optional[float], typer.Option(help=ENGAGE_HELP)] = None,
    calibration: Annotated[str, typer.Option(help="with --choice: isotonic | logistic")] = "isotonic",
    reviews: Annotated[bool, typer.Option(help="also write each review (off: ratings and decisions only)")] = True,
    feedback_for: Annotated[Optional[str], typer.Option(
        help="engaged | all: which items get a rating and review (default: engaged with --choice, else all)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder for simulated items/users Parquet and the summary")] = None,
    calibration_pairs: Annotated[Optional[int], typer.Option(
        help="fit the engage rule on a seeded sample of this many validation pairs")] = None,
):
    """A simulated user engages with or skips each recommended item, and rates and reviews it.

    Example: `feedbackgen simulate models/peter --choice models/ease --dataset data/mi --recommendations recs/a.parquet recs/b.csv --out runs/sim`
    """
    from feedbackgen.recommend import simulate as run_simulation

    # `MODEL --recommendations A B`: click gives B to MODEL's slot when MODEL comes last; put it back
    files = [*recommendations, *(more_recommendations or [])]
    if model is not None and model.suffix in (".csv", ".tsv", ".parquet", ".jsonl", ".json"):
        files, model = [*files, model], None
    generator, choice_model, ds = _simulator(model, dataset, choice)
    names = [p.stem for p in files]
    if len(set(names)) < len(names):
        named = {f"{p.parent.name}/{p.stem}": p for p in files}
        if len(named) < len(files):
            raise FeedbackgenError("two RECS files have the same name; rename one")
    else:
        named = dict(zip(names, files))
    t0 = time.time()
    result = run_simulation(generator, ds, named, k=k, threshold=threshold, write=reviews,
                            calibration_pairs=calibration_pairs, choice=choice_model, method=calibration,
                            feedback_for=feedback_for)
    print(result.markdown())
    if out is not None:
        result.save(out)
        err.print(f"[green]wrote[/green] {out}/summary.md, summary.json, simulated_items.parquet, "
                  f"simulated_users.parquet in {time.time() - t0:.1f}s")


@app.command()
def fidelity(
    dataset: Annotated[Path, typer.Option(help="the prepared dataset the models were trained on")],
    model: Annotated[Optional[Path], typer.Argument(
        help="a saved generator folder: ratings and reviews (optional with --choice)")] = None,
    choice: Annotated[Optional[Path], typer.Option(help="a choice-model folder: decides engage/skip")] = None,
    protocol: Annotated[str, typer.Option(
        help="pooled (test pairs vs 1, 3, 9x never-seen items) | agent4rec (Agent4Rec's per-user lists, "
             "ratios 1, 2, 3, 9)")] = "pooled",
    out: Annotated[Optional[Path], typer.Option(help="folder for fidelity.json, fidelity.md and the plot")] = None,
    max_users: Annotated[Optional[int], typer.Option(help="a seeded sample of test users (faster)")] = None,
    threshold: Annotated[Optional[float], typer.Option(help=ENGAGE_HELP)] = None,
    calibration: Annotated[str, typer.Option(help="with --choice: isotonic | logistic")] = "isotonic",
    review: Annotated[bool, typer.Option(help="generate texts and score them (AgentSociety review score)")] = True,
    seed: Annotated[int, typer.Option(help="seed of the negative items and user sample")] = 1,
    calibration_pairs: Annotated[Optional[int], typer.Option(
        help="fit the engage rule on a seeded sample of this many validation pairs")] = None,
):
    """How far the simulated user matches real held-out behaviour: discrimination, ratings, reviews.

    Example: `feedbackgen fidelity --choice models/ease --dataset data/a4r --protocol agent4rec --no-review --out runs/fid`
    """
    from feedbackgen.recommend import fidelity as measure, fidelity_markdown, write_fidelity
    from feedbackgen.recommend.fidelity import is_agent4rec_ml1m

    generator, choice_model, ds = _simulator(model, dataset, choice)
    label = " + ".join(f"{m.name} ({p.name})" for m, p in ((generator, model), (choice_model, choice)) if m is not None)
    t0 = time.time()
    result = measure(generator, ds, max_users=max_users, threshold=threshold, review=review, seed=seed,
                     name=label, calibration_pairs=calibration_pairs, choice=choice_model, method=calibration,
                     protocol=protocol)
    same = is_agent4rec_ml1m(ds)
    print(fidelity_markdown([result], dataset.name, same_data=same))
    if out is not None:
        write_fidelity([result], out, dataset.name, same_data=same)
        err.print(f"[green]wrote[/green] {out}/fidelity.md, fidelity.json"
                  + (", rating_distribution.png" if result.get("rating") else "") + f" in {time.time() - t0:.1f}s")


@app.command()
def serve(
    models: Annotated[Optional[list[Path]], typer.Argument(
        help="saved model folder(s); each is served under its folder name")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        help="dataset for users, items, candidates and the explorer")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    annotate: Annotated[Optional[Path], typer.Option(help="also serve this annotation task at /annotate")] = None,
    api_keys: Annotated[Optional[Path], typer.Option(help="file of hashed API keys (see `feedbackgen api-key`); "
                                                          "with it, every /v1 call needs a key")] = None,
    max_batch: Annotated[int, typer.Option(help="most requests per model batch (1 = no micro-batching)")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="longest a request waits for a batch to fill")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="requests waiting per model before 503")] = 1024,
    max_requests: Annotated[int, typer.Option(help="most requests in one /v1/feedback call (more: 413)")] = 64,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body (more: 413)")] = 1 << 20,
    max_new_tokens: Annotated[int, typer.Option(help="largest decoding.max_new_tokens of a call (more: 422)")] = 128,
    max_beams: Annotated[int, typer.Option(help="largest decoding.num_beams of a call (more: 422)")] = 4,
    max_call_tokens: Annotated[int, typer.Option(
        help="largest requests × num_beams × max_new_tokens of a call (more: 422)")] = 8192,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads of the server (default: torch's)")] = None,
    unknown: Annotated[str, typer.Option(
        help="users/items without training reviews: fallback | reject (404)")] = "fallback",
    graceful_timeout: Annotated[float, typer.Option(help="seconds to finish in-flight requests on shutdown")] = 30.0,
):
    """Serve feedback over HTTP (with micro-batching), the explorer at `/` and the API docs at `/docs`.

    Example: `feedbackgen serve models/peter models/retrieval --dataset data/mi --port 8000`
    """
    from feedbackgen.config import validate
    from feedbackgen.models.base import read_model_config
    from feedbackgen.serve import ServeConfig, create_app, run
    from feedbackgen.serve.keys import read_key_file

    models = models or []
    if not models and annotate is None:
        raise FeedbackgenError("give at least one model folder (or --annotate TASK to serve only annotation)")
    for folder in models:
        read_model_config(folder)  # fail now, not after start-up, on a folder that holds no model
    if dataset is not None and not (dataset / "interactions.parquet").exists():
        raise FeedbackgenError(f"{dataset} is not a feedbackgen dataset (no interactions.parquet)")
    config = validate(ServeConfig, dict(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                        max_requests=max_requests, max_body_bytes=max_body_bytes,
                                        max_new_tokens=max_new_tokens, max_beams=max_beams,
                                        max_call_tokens=max_call_tokens, threads=threads,
                                        unknown=unknown), "serve options")
    key_hashes = read_key_file(api_keys) if api_keys is not None else None
    try:
        service_app = create_app(models, dataset, config, key_hashes=key_hashes, annotate=annotate)
    except ValueError as e:
        raise FeedbackgenError(str(e)) from None
    extras = (", annotation at /annotate" if annotate else "") + (", API keys required for /v1" if key_hashes else "")
    err.print(f"serving {len(models)} model(s) on http://{host}:{port} (explorer at /, API docs at /docs{extras})")
    run(service_app, host=host, port=port, graceful_timeout=graceful_timeout)


@app.command("api-key")
def api_key(
    file: Annotated[Path, typer.Argument(help="keys file to append the new key's hash to (created if missing)")],
    label: Annotated[str, typer.Option(help="who the key is for (kept beside the hash)")] = "",
):
    """Make a new API key: its hash goes into FILE, the key itself is printed once.

    Example: `feedbackgen api-key keys.txt --label alice` then `feedbackgen serve ... --api-keys keys.txt`
    """
    from feedbackgen.serve.keys import add_key

    print(add_key(file, label))
    err.print(f"[green]added[/green] its hash to {file}; the key is not stored anywhere, keep it now")


annotate_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                           help="Blind human evaluation: build a task, serve it, report on the judgements.")
app.add_typer(annotate_app, name="annotate")


@annotate_app.command("create")
def annotate_create(
    predictions: Annotated[list[Path], typer.Option(help="PRED.jsonl of two or more models (list them after "
                                                         "the option, or repeat it)")],
    dataset: Annotated[Path, typer.Option(help="the dataset the predictions are for (for the users' past reviews)")],
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

    err.print(f"annotation of {task} at http://{host}:{port}/annotate")
    run(create_app(annotate=task), host=host, port=port)


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
    except Exception as e:  # anything unforeseen still ends in one line, unless asked for more
        if os.environ.get("FEEDBACKGEN_DEBUG"):
            raise
        err.print(f"[red]error:[/red] {type(e).__name__}: {e} (set FEEDBACKGEN_DEBUG=1 for the traceback)",
                  highlight=False)
        sys.exit(1)


if __name__ == "__main__":  # `python -m feedbackgen.cli`, which is how torchrun starts it (-m)
    main()
