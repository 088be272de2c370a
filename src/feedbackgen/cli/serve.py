"""`feedbackgen serve` and `feedbackgen api-key`: the HTTP service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err
from feedbackgen.cli.options import OptionalDatasetOption, config_default, config_option
from feedbackgen.config import ServeConfig, validate
from feedbackgen.errors import FeedbackgenError


@app.command()
def serve(
    models: Annotated[Optional[list[Path]], typer.Argument(
        help="saved generator folder(s), each served under its folder name (they write the feedback); "
             "a choice-model folder here is taken as --choice")] = None,
    dataset: OptionalDatasetOption = None,
    choice: Annotated[Optional[Path], typer.Option(
        help="a choice-model folder (`feedbackgen train DATA --model ease`): ranks /v1/recommend, "
             "the generator explains the top k")] = None,
    events: Annotated[Optional[Path], typer.Option(
        help="SQLite file for POST /v1/events (created if missing): events are kept across restarts and "
             "applied to the user's next recommendation; `feedbackgen events export` reads it")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        help="a web origin whose pages may call the API from a browser, e.g. https://shop.example.com "
             "(repeat for several; none by default)")] = None,
    exclude: Annotated[str, config_option(ServeConfig, "exclude")] = config_default(ServeConfig, "exclude"),
    max_events: Annotated[int, config_option(ServeConfig, "max_events")] = config_default(ServeConfig, "max_events"),
    max_history: Annotated[int, config_option(ServeConfig, "max_history")] = config_default(ServeConfig, "max_history"),
    request_timeout: Annotated[float, config_option(ServeConfig, "request_timeout")] = config_default(ServeConfig, "request_timeout"),
    max_connections: Annotated[int, typer.Option(
        help="most open connections (lowered to fit `ulimit -n`); more get 503 at once")] = 1000,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    annotate: Annotated[Optional[Path], typer.Option(help="also serve this annotation task at /annotate")] = None,
    api_keys: Annotated[Optional[Path], typer.Option(help="file of hashed API keys (see `feedbackgen api-key`); "
                                                          "with it, every /v1 call needs a key")] = None,
    max_batch: Annotated[int, config_option(ServeConfig, "max_batch")] = config_default(ServeConfig, "max_batch"),
    max_wait_ms: Annotated[float, config_option(ServeConfig, "max_wait_ms")] = config_default(ServeConfig, "max_wait_ms"),
    max_queue: Annotated[int, config_option(ServeConfig, "max_queue")] = config_default(ServeConfig, "max_queue"),
    max_requests: Annotated[int, config_option(ServeConfig, "max_requests")] = config_default(ServeConfig, "max_requests"),
    max_body_bytes: Annotated[int, config_option(ServeConfig, "max_body_bytes")] = config_default(ServeConfig, "max_body_bytes"),
    max_new_tokens: Annotated[int, config_option(ServeConfig, "max_new_tokens")] = config_default(ServeConfig, "max_new_tokens"),
    max_beams: Annotated[int, config_option(ServeConfig, "max_beams")] = config_default(ServeConfig, "max_beams"),
    max_call_tokens: Annotated[int, config_option(ServeConfig, "max_call_tokens")] = config_default(ServeConfig, "max_call_tokens"),
    threads: Annotated[Optional[int], config_option(ServeConfig, "threads")] = config_default(ServeConfig, "threads"),
    unknown: Annotated[str, config_option(ServeConfig, "unknown")] = config_default(ServeConfig, "unknown"),
    graceful_timeout: Annotated[float, typer.Option(help="seconds to finish in-flight requests on shutdown")] = 30.0,
):
    """Serve feedback over HTTP (with micro-batching), the explorer at `/` and the API docs at `/docs`.

    Example: `feedbackgen serve models/peter --choice models/ease --dataset data/mi --events runs/events.sqlite`
    (docs/serve.md: the calls, and what to put in front of a public deployment)
    """
    from feedbackgen.models.base import read_model_config
    from feedbackgen.recommend.choice.base import is_choice_folder, read_choice_config
    from feedbackgen.serve import create_app, run
    from feedbackgen.serve.keys import read_key_file

    models = models or []
    rankers = [m for m in models if is_choice_folder(m)]
    if rankers and (choice is not None or len(rankers) > 1):
        raise FeedbackgenError(f"one choice model ranks: {', '.join(map(str, [*rankers, *([choice] if choice else [])]))}"
                               " are choice models; give one (as --choice) and generators as MODEL")
    choice = rankers[0] if rankers else choice
    models = [m for m in models if m not in rankers]
    if not models and choice is None and annotate is None:
        raise FeedbackgenError("give at least one model folder (a generator, or --choice DIR; or --annotate TASK "
                               "to serve only annotation)")
    for folder in models:
        read_model_config(folder)  # fail now, not after start-up, on a folder that holds no model
    if choice is not None:
        read_choice_config(choice)
        if dataset is None:
            raise FeedbackgenError("--choice ranks the dataset's items: give --dataset DATA too")
    if dataset is not None and not (dataset / "interactions.parquet").exists():
        raise FeedbackgenError(f"{dataset} is not a feedbackgen dataset (no interactions.parquet)")
    config = validate(ServeConfig, dict(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                        max_requests=max_requests, max_body_bytes=max_body_bytes,
                                        max_new_tokens=max_new_tokens, max_beams=max_beams,
                                        max_call_tokens=max_call_tokens, threads=threads,
                                        unknown=unknown, exclude=exclude, max_events=max_events,
                                        max_history=max_history, request_timeout=request_timeout), "serve options")
    if events is not None and events.is_dir():
        raise FeedbackgenError(f"--events {events} is a folder; give a file such as runs/events.sqlite")
    key_hashes = read_key_file(api_keys) if api_keys is not None else None
    try:
        service_app = create_app(models, dataset, config, key_hashes=key_hashes, annotate=annotate, choice=choice,
                                 events=events, cors_origins=cors_origin or ())
    except ValueError as e:
        raise FeedbackgenError(str(e)) from None
    extras = (", annotation at /annotate" if annotate else "") + (", API keys required for /v1" if key_hashes else "")
    extras += (f", {choice.name} ranks" if choice else "") + (f", events in {events}" if events else "")
    err.print(f"serving {len(models)} model(s) on http://{host}:{port} (explorer at /, API docs at /docs{extras})")
    run(service_app, host=host, port=port, graceful_timeout=graceful_timeout, max_connections=max_connections)


events_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The event store of `feedbackgen serve --events FILE`.")
app.add_typer(events_app, name="events")


@events_app.command("export")
def events_export(
    file: Annotated[Path, typer.Argument(help="the SQLite event store (`serve --events FILE`)")],
    out: Annotated[Path, typer.Option(help="JSONL file to write: user_id, item_id, rating, text, timestamp")],
):
    """Write every stored event as JSONL, for the next training: `feedbackgen prepare OUT --format jsonl`.

    Example: `feedbackgen events export runs/events.sqlite --out events.jsonl` (safe while the server runs)
    """
    from feedbackgen.serve.events import open_existing

    store = open_existing(file)
    try:
        n = store.export(out)
    finally:
        store.close()
    err.print(f"[green]wrote[/green] {n} events to {out}")


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
