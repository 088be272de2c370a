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

from feedbackgen import __version__
from feedbackgen.config import validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.models.base import Generator
from feedbackgen.serve.api import health, v1
from feedbackgen.serve.middleware import LimitBody, ObserveRequests, RequireKey
from feedbackgen.serve.pages import STATIC_DIR, pages
from feedbackgen.serve.service import FieldError, ServeConfig, Service, model_names

log = logging.getLogger("feedbackgen.serve")

DESCRIPTION = """Generates the feedback (star rating + review text) a user would give an item.

* `POST /v1/feedback` answers 1..N requests; concurrent calls are micro-batched for the model.
* Errors: 401 (API keys configured and none valid), 404 (unknown user/item with `unknown=reject`,
  or no such user/item page), 413 (body or call too large), 422 (invalid field, named in `field` /
  `errors`), 503 + `Retry-After` (queue full, shutting down, or models still loading).
* Keys, when configured, go in `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""


def _field(loc: Sequence) -> str:
    """('body', 'requests', 0, 'user_id') -> 'requests[0].user_id'."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
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
               *, key_hashes: dict[str, str] | None = None, annotate: str | Path | None = None) -> FastAPI:
    """The service for `models` ({name: generator or saved folder}, or folders named after themselves).

    `dataset` backs the user/item endpoints, candidate items and the unknown-id policy;
    `key_hashes` ({"sha256:...": label}) turns on API keys for `/v1`; `annotate` serves that
    annotation task at `/annotate`.
    """
    config = validate(ServeConfig, config, "serve settings")
    if not isinstance(models, Mapping):
        models = model_names(models)
    task = None
    if annotate is not None:
        from feedbackgen.evaluation.human import AnnotationTask

        task = AnnotationTask(annotate)
    service = Service(models, dataset, config, key_hashes, task)

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
    app.include_router(pages)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # added innermost first: requests pass ObserveRequests, then RequireKey, then LimitBody
    app.add_middleware(LimitBody, max_bytes=config.max_body_bytes)
    app.add_middleware(RequireKey, key_hashes=key_hashes)
    app.add_middleware(ObserveRequests, metrics=service.metrics)
    return app


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: float = 30.0,
        log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, finish in-flight requests (at most
    `graceful_timeout` seconds), drain the batch queues and exit."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                access_log=False)
