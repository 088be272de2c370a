"""`create_app`: the FastAPI application (API + pages), and `run`: serve it with uvicorn."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from feedbackgen import __version__
from feedbackgen.config import validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.evaluation.human import AnnotationTask
from feedbackgen.models.base import Generator
from feedbackgen.recommend.choice import ChoiceModel
from feedbackgen.serve import recommend
from feedbackgen.serve.api import health, v1
from feedbackgen.serve.middleware import LimitBody, ObserveRequests, RequestDeadline, RequireKey, quiet_repeats
from feedbackgen.serve.pages import STATIC_DIR, pages
from feedbackgen.serve.service import FieldError, ServeConfig, Service, model_names

log = logging.getLogger("feedbackgen.serve")

DESCRIPTION = """Generates the feedback (star rating + review text) a user would give an item.

* `POST /v1/feedback` answers 1..N requests; concurrent calls are micro-batched for the model.
* `POST /v1/recommend` ranks items for a user or a session visitor (`history`) with the choice model
  (`GET /v1/models`: roles) and explains the top k with a generator; `POST /v1/events` records what
  users did, applied to their next recommendation at once.
* Errors: 401 (API keys configured and none valid), 404 (unknown user/item with `unknown=reject`,
  or no such user/item page), 408 (request body not received in time), 413 (body or call too
  large), 415 (not JSON), 422 (invalid field, named in `field` / `errors`), 503 + `Retry-After`
  (queue full, shutting down, models still loading, or too many open connections).
* Keys, when configured, go in `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""


def _field(loc: Sequence) -> str:
    """('body', 'requests', 0, 'user_id') -> 'requests[0].user_id'."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _is_json(content_type: str) -> bool:
    """application/json, or a +json type (application/merge-patch+json), parameters aside."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        sent_as = request.headers.get("content-type", "")
        if request.method == "POST" and not _is_json(sent_as):
            message = (f"the body was sent as {sent_as or 'no content type'!r}; send JSON with "
                       "'Content-Type: application/json'")
            return JSONResponse({"detail": f"unsupported media type: {message}", "field": "body",
                                 "errors": [{"field": "body", "message": message, "type": "content_type"}]},
                                status_code=415)
        errors = [{"field": "body" if e["type"] == "json_invalid" else _field(e["loc"]),
                   "message": e["msg"], "type": e["type"]} for e in exc.errors()]
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": f"invalid request: {text}", "field": errors[0]["field"] if errors else None,
                             "errors": errors}, status_code=422)

    @app.exception_handler(FieldError)
    async def bad_field(request: Request, exc: FieldError):
        return JSONResponse({"detail": f"invalid request: {exc}", "field": exc.field,
                             "errors": [{"field": exc.field, "message": exc.message, "type": "value_error"}]},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's "error parsing the body": bytes that are no text, a client's to fix (422)
            bad = exc.__cause__
            message = (f"the request body is not UTF-8 text (undecodable byte at offset {bad.start}): "
                       "send JSON encoded as UTF-8")
            return JSONResponse({"detail": f"invalid request: body: {message}", "field": "body",
                                 "errors": [{"field": "body", "message": message, "type": "body_not_utf8"}]},
                                status_code=422)
        body = {"detail": exc.detail}
        if isinstance(exc.detail, dict):  # {"message": ..., "field": ...}
            body = {"detail": exc.detail["message"], "field": exc.detail.get("field")}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the service is still running"},
                            status_code=500)


def create_app(models: Mapping[str, Generator | str | Path] | Sequence[str | Path] = (),
               dataset: Dataset | str | Path | None = None, config: ServeConfig | dict | None = None,
               *, key_hashes: dict[str, str] | None = None, annotate: str | Path | None = None,
               choice: ChoiceModel | str | Path | None = None, events: str | Path | None = None,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """The service for `models` ({name: generator or saved folder}, or folders named after themselves).

    `dataset` backs the user/item endpoints, candidate items and the unknown-id policy;
    `choice` (a choice model or its folder) ranks `/v1/recommend`; `events` (an SQLite file,
    created if missing) keeps `POST /v1/events`; `key_hashes` ({"sha256:...": label}) turns on API
    keys for `/v1`; `annotate` serves that annotation task at `/annotate`; `cors_origins` are the
    web origins whose pages may call the API from a browser (none by default).
    """
    config = validate(ServeConfig, config, "serve settings")
    if not isinstance(models, Mapping):
        models = model_names(models)
    task = None
    if annotate is not None:

        task = AnnotationTask(annotate)
    service = Service(models, dataset, config, key_hashes, task, choice=choice, events=events)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await service.stop()

    # /docs and /redoc load Swagger UI and ReDoc from files the fastapi-offline package ships (under
    # /static-offline-docs), not from a CDN: the pages work on machines without internet access
    app = FastAPIOffline(title="feedbackgen", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    _install_error_handlers(app)
    app.include_router(health)
    app.include_router(v1)
    app.include_router(recommend.router)
    app.include_router(pages)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # added innermost first: requests pass CORS, ObserveRequests, RequestDeadline, RequireKey, LimitBody
    app.add_middleware(LimitBody, max_bytes=config.max_body_bytes)
    app.add_middleware(RequireKey, key_hashes=key_hashes)
    app.add_middleware(RequestDeadline, seconds=config.request_timeout)
    app.add_middleware(ObserveRequests, metrics=service.metrics)
    if cors_origins:  # outermost: a preflight carries no key, and must be answered before the key check
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-api-key"], max_age=600)
    return app


RESERVED_FILES = 128  # file descriptors kept for models, the dataset, the event store and logs


def connection_limit(wanted: int) -> int:
    """`wanted` open connections, lowered to what the process's file limit leaves after
    `RESERVED_FILES`: past the limit uvicorn answers 503 and closes, so accepting never runs out
    of descriptors and a new client always gets an answer."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - RESERVED_FILES if soft != resource.RLIM_INFINITY else wanted
    if room < wanted:
        log.warning("--max-connections %d lowered to %d: the file limit (ulimit -n) is %d", wanted, room, soft)
    return max(1, min(wanted, room))


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: float = 30.0,
                  log_level: str = "info", max_connections: int = 1000, keep_alive: float = 5.0):
    """uvicorn's settings for `app`: at most `max_connections` connections served
    (`connection_limit`; more get 503 and are closed), idle keep-alive connections closed after
    `keep_alive` seconds, a request's headers limited to 64 KiB."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=graceful_timeout, limit_concurrency=connection_limit(max_connections),
                          timeout_keep_alive=keep_alive, h11_max_incomplete_event_size=64 * 1024)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: float = 30.0,
        log_level: str = "info", max_connections: int = 1000, keep_alive: float = 5.0) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, finish in-flight requests (at most
    `graceful_timeout` seconds), drain the batch queues and exit. `server_config` has the limits;
    an error repeated in a loop is logged once per 10 s with a count (`RepeatFilter`)."""
    import uvicorn

    config = server_config(app, host, port, graceful_timeout, log_level, max_connections, keep_alive)
    quiet_repeats()  # after uvicorn.Config, which configures uvicorn's loggers
    uvicorn.Server(config).run()
