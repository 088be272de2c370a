"""`feedbackgen generate`: a model folder and requests in, resumable PRED.jsonl out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err
from feedbackgen.cli.options import OptionalDatasetOption
from feedbackgen.config import Decoding, field_help
from feedbackgen.errors import FeedbackgenError


# decoding options come from the Decoding model: its defaults, descriptions and ranges
_D = Decoding.model_fields


def _help(name: str) -> str:
    return field_help(Decoding, name)


@app.command()
def generate(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="a saved model folder")],
    out: Annotated[Path, typer.Option(help="PRED.jsonl to write")],
    dataset: OptionalDatasetOption = None,
    split: Annotated[str, typer.Option(help="train | valid | test")] = "test",
    requests: Annotated[Optional[Path], typer.Option(
        help="JSONL/CSV/Parquet of user_id, item_id[, aspect, rating, seed]")] = None,
    with_aspect: Annotated[bool, typer.Option(help="condition on each row's aspect (PETER+)")] = False,
    max_new_tokens: Annotated[int, typer.Option(help=_help("max_new_tokens"))] = _D["max_new_tokens"].default,
    min_new_tokens: Annotated[int, typer.Option(help=_help("min_new_tokens"))] = _D["min_new_tokens"].default,
    do_sample: Annotated[bool, typer.Option(help=_help("do_sample"))] = _D["do_sample"].default,
    temperature: Annotated[float, typer.Option(help=_help("temperature"))] = _D["temperature"].default,
    top_k: Annotated[int, typer.Option(help=_help("top_k"))] = _D["top_k"].default,
    top_p: Annotated[float, typer.Option(help=_help("top_p"))] = _D["top_p"].default,
    num_beams: Annotated[int, typer.Option(help=_help("num_beams"))] = _D["num_beams"].default,
    repetition_penalty: Annotated[float, typer.Option(
        help=_help("repetition_penalty"))] = _D["repetition_penalty"].default,
    no_repeat_ngram_size: Annotated[int, typer.Option(
        help=_help("no_repeat_ngram_size"))] = _D["no_repeat_ngram_size"].default,
    batch_size: Annotated[int, typer.Option(help=_help("batch_size"))] = _D["batch_size"].default,
    seed: Annotated[Optional[int], typer.Option(
        help="seed of requests without their own (default: drawn per request, written in meta.seed)")] = None,
    unknown_item: Annotated[str, typer.Option(
        help=_help("unknown_item") + ": none | fallback | generate")] = _D["unknown_item"].default,
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="torch CPU threads (default: torch's; never the model's training setting)")] = None,
    engine: Annotated[str, typer.Option(help="local | ray: a pool of Ray actors (docs/distributed.md)")] = "local",
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster HOST:PORT, ray://HOST:PORT or auto (default: start Ray here)")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Ray actors, one CPU and one model copy each (default: every CPU of the cluster)")] = None,
    shard_size: Annotated[int, typer.Option(help="requests per output shard, the unit a rerun resumes from")] = 1024,
    constrained: Annotated[Optional[bool], typer.Option(
        "--constrained/--no-constrained",
        help="llm/sft: decode each answer under its JSON schema, or free (pre-filled, repaired, retried); "
             "default: the model's `constrained` setting")] = None,
):
    """Generate feedback for a dataset split or a requests file (resumable: rerun after a kill).

    Example: `feedbackgen generate models/retrieval --dataset data/mi --split test --out pred/retrieval.jsonl`

    On a Ray cluster: `feedbackgen generate models/peter --dataset data/mi --out pred/peter.jsonl
    --engine ray --address auto` (the same output as the local engine; docs/distributed.md).
    """
    from feedbackgen.config import validate
    from feedbackgen.data.problems import Problems
    from feedbackgen.batch import requests_file, requests_from_dataset, run_generation
    from feedbackgen.models import load

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    # only what the command line gave: a model can tell an asked-for setting from a default
    # (peter warns when asked for more tokens than it learnt to write, not at the default)
    given = {name: value for name, value in locals().items() if name in _D
             and ctx.get_parameter_source(name).name != "DEFAULT"}  # typer's own click: compare names
    decoding = validate(Decoding, given, "decoding options")
    _check_options(dataset, requests, engine, address, workers, shard_size, constrained)
    problems = Problems()
    if engine == "ray":
        from feedbackgen.batch.ray_engine import run_generation_ray

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
    if constrained is not None:
        if "constrained" not in type(generator.config).model_fields:
            raise FeedbackgenError(f"--constrained/--no-constrained apply to llm and sft models, not {generator.name}")
        generator.config = generator.config.model_copy(update={"constrained": constrained})
    t0 = time.time()
    run_generation(generator, reqs, out, decoding, model_id=str(model.resolve()), shard_size=shard_size)
    _report_generation(out, reqs.count, time.time() - t0, problems, requests)
    _report_answers(generator, out)


def _check_options(dataset: Optional[Path], requests: Optional[Path], engine: str, address: Optional[str],
                   workers: Optional[int], shard_size: int, constrained: Optional[bool]) -> None:
    """Options that do not go together, refused before any work (FeedbackgenError)."""
    if (dataset is None) == (requests is None):
        raise FeedbackgenError("give exactly one of --dataset (with --split) or --requests")
    if engine not in ("local", "ray"):
        raise FeedbackgenError(f"unknown --engine {engine!r}; choose local or ray")
    if engine == "local" and (address is not None or workers is not None):
        raise FeedbackgenError("--address and --workers go with --engine ray")
    if shard_size < 1:
        raise FeedbackgenError(f"--shard-size must be at least 1 (got {shard_size})")
    if constrained is not None and engine == "ray":
        raise FeedbackgenError("--constrained/--no-constrained go with --engine local; on Ray, train the model "
                               "with --set constrained=true|false")


def _report_answers(generator, out: Path) -> None:
    """LLM generators: how their JSON answers went, on stderr; FeedbackgenError when not one was usable."""
    answers = getattr(generator, "answer_counts", None)
    if answers:
        err.print("answers: " + ", ".join(f"{k} {v}" for k, v in sorted(answers.items()))
                  + " (fallback = still invalid after every retry, or refused by the server; each row's meta "
                    "says which)")
        if answers.get("fallback", 0) and not any(v for k, v in answers.items() if k not in ("fallback", "refused")):
            raise FeedbackgenError(f"not one answer of the model was usable: all {answers['fallback']} rows of {out} "
                                   "are fallbacks (each row's meta.problem says why)")
    reasoning = getattr(generator, "reasoning_counts", None)
    if reasoning:
        err.print(f"reasoning: {reasoning.get('with_reasoning', 0)} repl(ies) had a reasoning block, removed before "
                  f"parsing; {reasoning.get('only_reasoning', 0)} held nothing else (retried, then the fallback)")


def _report_generation(out: Path, count: int, dt: float, problems, requests: Optional[Path]) -> None:
    if problems.count:
        err.print(f"[yellow]{requests}: {problems.describe()}[/yellow]")
    err.print(f"[green]wrote[/green] {count} feedback rows to {out} in {dt:.1f}s "
              f"({count / max(dt, 1e-9):.1f} samples/s)")

