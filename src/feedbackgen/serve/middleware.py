"""Plain ASGI middleware: they see every request, including the ones no route matches.

Order, outermost first: Starlette's `CORSMiddleware` (when origins are allowed: a browser's
preflight is answered before any key check), `ObserveRequests` (so refusals are counted too),
`RequestDeadline`, `RequireKey`, `LimitBody`. `RepeatFilter` keeps a log from repeating one error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedbackgen.serve import keys
from feedbackgen.serve.telemetry import Metrics


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _route_label(scope: Scope) -> str:
    """The route's path template (never the raw path: ids would make one series per user)."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    path = scope.get("path", "")
    if path.startswith("/static/"):
        return "/static"
    if "endpoint" in scope and not scope.get("path_params"):  # a plain route such as /docs
        return path
    return "other"  # no route matched, or refused before routing (401, 413)


class ObserveRequests:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # what the client gets if the app raises before answering
        t0 = time.perf_counter()

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.observe_http(_route_label(scope), scope["method"], status, time.perf_counter() - t0)


class RequireKey:
    """With keys configured, every `/v1` call needs a valid one (401 otherwise); the rest stays open."""

    def __init__(self, app: ASGIApp, key_hashes: dict[str, str] | None, prefix: str = "/v1"):
        self.app, self.key_hashes, self.prefix = app, key_hashes, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and self.key_hashes
                and (path == self.prefix or path.startswith(self.prefix + "/"))):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            key = keys.key_from_headers(headers)
            if not keys.is_valid(key, self.key_hashes):
                reason = "a valid API key is required" if key is None else "this API key is not valid"
                return await send_json(send, 401, {
                    "detail": f"{reason}: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"},
                    {"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, send)


class LimitBody:
    """413 for a body over `max_bytes`: at once when Content-Length says so, else while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        too_large = (f"the request body is larger than the limit of {self.max_bytes} bytes "
                     "(--max-body-bytes); send fewer requests per call")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, {"detail": too_large})
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large)  # answered by the app's exception handling
            return message

        await self.app(scope, counted_receive, send)


class RequestDeadline:
    """408 and a closed connection for a request whose body has not arrived in full `seconds`
    after its headers: a client that trickles a byte now and then cannot hold a connection (and
    its memory) open for ever. The wait for the body is bounded, never the work on the answer."""

    def __init__(self, app: ASGIApp, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_done = scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")
        late = (f"the request was not received in full within {self.seconds:g} s (--request-timeout); "
                "send the whole body at once")

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # only a disconnect is left to wait for: no deadline on that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise HTTPException(408, late, headers={"Connection": "close"}) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


class RepeatFilter(logging.Filter):
    """Lets the first record of a run of identical ones through (same logger, level, message
    template and exception type), drops the rest, and lets one through again, saying how many
    were dropped, once `window` seconds have passed: an error raised in a loop (the accept loop
    out of file descriptors) costs a line per window, not a disk."""

    def __init__(self, window: float = 10.0):
        super().__init__()
        self.window = window
        self.seen: dict[tuple, list[float]] = {}  # key -> [time let through, records dropped since]

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        key = (record.name, record.levelno, str(record.msg), exc)
        now = time.monotonic()
        entry = self.seen.get(key)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            record.msg = f"{record.msg} (repeated {int(entry[1])} more times in the last {now - entry[0]:.0f} s)"
        if len(self.seen) > 1000:  # many distinct messages: forget the old ones
            self.seen.clear()
        self.seen[key] = [now, 0]
        return True


def quiet_repeats(window: float = 10.0, loggers: tuple[str, ...] = ("asyncio", "uvicorn.error", "feedbackgen.serve")
                  ) -> RepeatFilter:
    """Install one `RepeatFilter` on the loggers the server writes errors to (idempotent)."""
    repeat = RepeatFilter(window)
    for name in loggers:
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, RepeatFilter)]
        logger.addFilter(repeat)
    return repeat
