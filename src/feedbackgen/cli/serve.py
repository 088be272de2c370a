"""`feedbackgen serve` and `feedbackgen api-key`: the HTTP service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err
from feedbackgen.errors import FeedbackgenError


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
