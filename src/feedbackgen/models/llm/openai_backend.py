"""The `openai` back-end: any OpenAI-compatible server over HTTP (vLLM, Ollama, llama.cpp's
servers, OpenAI), one `POST {base_url}/chat/completions` per conversation.

It reads its base URL, model and key from the configuration or the environment
(`FEEDBACKGEN_LLM_BASE_URL` / `OPENAI_BASE_URL`, `FEEDBACKGEN_LLM_MODEL`, the variable named by
`api_key_env`, then `OPENAI_API_KEY`; the key is never written to a model folder). It sends at most
`concurrency` requests at once, gives each `timeout_s`, retries on 429, 5xx and network errors
with exponential back-off (honouring `Retry-After`), and keeps every answer in an on-disk cache
keyed by the model, the messages and the decoding settings, so a rerun costs nothing. With a
schema it sends `response_format` `{"type": "json_schema", ...}` (OpenAI, vLLM, llama.cpp's
`llama-server`, Ollama); a server that answers 400/422 (or 500) about it gets the next form down —
`{"type": "json_object", "schema": ...}` (llama-cpp-python's server, which refuses `json_schema`),
then plain JSON mode (`json_mode`), then nothing — and keeps that form for later requests. Each
refusal is counted (`stats["response_format_refused"]`); an answer decoded without its schema is
marked `Completion.constrained` False and goes through the usual repair and retries.

A server that misbehaves costs one row, not the run: a 400/413/422 about one conversation (vLLM's
"maximum context length") comes back as a Completion with `refused` set (counted in
`stats["refused"]`; the generator gives that row its fallback without asking again); a 200 holding
`{"error": ...}` is retried like a 503 and, at the end, reported with the server's message and the
URL; a `text/event-stream` answer (a streaming-only proxy) is read chunk by chunk into one; an
answer in `tool_calls[0].function.arguments` (content null) is read; anything else that is not a
chat completion is one error naming the URL and what came back. `Retry-After` is honoured as
seconds or as an HTTP date, and `timeout_s` bounds each request in all, however slowly a server
trickles its answer. The cache key holds the base URL, an empty answer is never cached, and
`uncache` drops an answer the generator found invalid, so a rerun after the server is fixed asks again.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from feedbackgen.config import Decoding
from feedbackgen.errors import ConfigError, FeedbackgenError
from feedbackgen.io import atomic_write_json
from feedbackgen.models.llm.backends import Backend, Completion, Messages, sampling_options
from feedbackgen.pretrained import DEFAULT_MODEL, cache_root

log = logging.getLogger(__name__)


class ResponseCache:
    """Answers on disk, one JSON file each, named by the SHA-256 of the request that produced them."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @staticmethod
    def key(payload: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), value)

    def forget(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# How an answer's schema is asked for, most to least exact; a server that refuses one gets the next.
RESPONSE_FORMATS = ("json_schema", "json_object+schema", "json_object", "none")
_ABOUT_FORMAT = re.compile(r"response_format|json_schema|guided|grammar", re.IGNORECASE)


class RequestRefused(FeedbackgenError):
    """The server answered a status that retrying cannot change (400, 401, 404, 422, ...)."""

    def __init__(self, message: str, status: int, body: str):
        super().__init__(message)
        self.status, self.body = status, body


class OpenAIBackend(Backend):
    """POST {base_url}/chat/completions, `concurrency` at a time, with retries and a response cache."""

    name = "openai"
    prefills = False
    constrains = True  # asks; a server that refuses is answered without the schema (module docstring)

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 1.0, concurrency: int = 4,
                 cache_dir: str | Path | None = None, response_cache: bool = True, json_mode: bool = True):
        super().__init__()
        import httpx

        self.base_url = (base_url or os.environ.get("FEEDBACKGEN_LLM_BASE_URL")
                         or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        if not self.base_url:
            raise ConfigError("the openai back-end needs a base URL: set base_url (e.g. http://127.0.0.1:8080/v1) "
                              "or FEEDBACKGEN_LLM_BASE_URL")
        self.model = model or os.environ.get("FEEDBACKGEN_LLM_MODEL") or DEFAULT_MODEL
        self.max_retries, self.backoff_s, self.concurrency = max_retries, backoff_s, concurrency
        self.timeout_s = timeout_s
        self.json_mode = json_mode
        self.response_format = RESPONSE_FORMATS[0]  # lowered, for good, by the first refusal of it
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.cache = ResponseCache(cache_dir or cache_root() / "responses") if response_cache else None
        self._lock = threading.Lock()

    def payload(self, messages: Messages, d: Decoding, seed: int = 0, schema: dict[str, Any] | None = None,
                form: str | None = None) -> dict[str, Any]:
        """The request body; `form`: how `schema` is asked for (`RESPONSE_FORMATS`, default the
        current one). Without a schema, JSON mode (`json_mode`) is the most asked for."""
        self._refuse(d)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": d.max_new_tokens,
                                **sampling_options(d, seed)}
        form = (form or self.response_format) if schema else "json_object"
        if form == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "strict": True, "schema": schema}}
        elif form == "json_object+schema":
            body["response_format"] = {"type": "json_object", "schema": schema}
        elif form == "json_object" and self.json_mode:  # the chat API cannot pre-fill; JSON mode helps
            body["response_format"] = {"type": "json_object"}
        # not part of OpenAI's own API, but understood by vLLM and llama.cpp; sent only when used
        if d.do_sample and d.top_k:
            body["top_k"] = d.top_k
        if d.repetition_penalty != 1.0:
            body["repetition_penalty"] = body["repeat_penalty"] = d.repetition_penalty
        return body

    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None, schema: dict[str, Any] | None = None) -> list[Completion]:
        seeds = seeds or [0] * len(conversations)
        self.payload(conversations[0] if conversations else [], decoding)  # refuses bad settings up front
        jobs = [(m, decoding, seed, schema) for m, seed in zip(conversations, seeds)]
        if self.concurrency == 1 or len(jobs) == 1:
            return [self._one(*j) for j in jobs]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda j: self._one(*j), jobs))

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def _one(self, messages: Messages, decoding: Decoding, seed: int, schema: dict[str, Any] | None) -> Completion:
        while True:
            form = self.response_format
            payload = self.payload(messages, decoding, seed, schema, form)
            # the server is part of the key: the same request to another server is another answer
            key = ResponseCache.key({**payload, "base_url": self.base_url}) if self.cache else ""
            if self.cache and (hit := self.cache.get(key)) is not None:
                self._count("cache_hits")
                return Completion(**{**hit, "cached": True, "cache_key": key})
            try:
                body = self._post(payload)
                break
            except RequestRefused as e:
                if schema and e.status in (400, 422, 500) and form != "none" and _ABOUT_FORMAT.search(e.body):
                    self._lower_response_format(form, e)
                elif e.status in ROW_REFUSALS:  # this conversation only (too long, ...): its row's fallback
                    self._count("refused")
                    return Completion("", finish_reason="refused", refused=f"HTTP {e.status}: {_server_message(e.body)}")
                else:
                    raise
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        result = Completion(_answer_text(choice.get("message") or {}), usage.get("prompt_tokens"),
                            usage.get("completion_tokens"), choice.get("finish_reason"),
                            constrained=form in ("json_schema", "json_object+schema"), cache_key=key)
        if self.cache and result.text.strip():  # an empty answer is never kept: a rerun asks again
            self.cache.put(key, {k: v for k, v in result.__dict__.items() if k not in ("cached", "cache_key")})
        return result

    def uncache(self, completion: Completion) -> None:
        """Forget an answer the caller found invalid, so that a rerun asks the server again."""
        if self.cache and completion.cache_key:
            self.cache.forget(completion.cache_key)

    def _lower_response_format(self, refused: str, e: RequestRefused) -> None:
        with self._lock:
            if self.response_format == refused:  # another thread may have lowered it already
                self.response_format = RESPONSE_FORMATS[RESPONSE_FORMATS.index(refused) + 1]
                self.stats["response_format_refused"] += 1
                log.warning("%s refused response_format %s (HTTP %d: %s); asking with %s from now on",
                            self.base_url, refused, e.status, e.body[:200], self.response_format)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The chat completion the server answered (an SSE stream read into one), after retries.
        Raises RequestRefused for a status retrying cannot change, FeedbackgenError naming the URL
        and what came back for an answer that is not a chat completion, or when retries run out."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            self._count("requests")
            wait = None
            try:
                status, headers, raw = self._fetch(url, payload)
                if status == 200:
                    body = _completion(raw, headers.get("content-type", ""), url)
                    if "error" not in body:
                        return body
                    problem = f"HTTP 200 with an error: {_server_message(json.dumps(body['error']))}"
                else:
                    text = raw.decode("utf-8", "replace")
                    # a refused response_format is refused again on every retry (llama-cpp-python's
                    # server reports it as a 500)
                    about_format = "response_format" in payload and status <= 500 and _ABOUT_FORMAT.search(text)
                    if status not in RETRY_STATUS or about_format:
                        raise RequestRefused(f"{url} answered {status}: {text[:300]}", status, text)
                    problem = f"HTTP {status}: {_server_message(text)}"
                    wait = retry_after_s(headers.get("retry-after"))
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries:
                raise FeedbackgenError(f"{url}: giving up after {attempt + 1} attempts ({problem})")
            self._count("retries")
            if wait is None:
                wait = self.backoff_s * 2 ** attempt * (0.5 + random.random())  # jitter spreads the retries
            time.sleep(min(wait, 60.0))
        raise AssertionError("unreachable")

    def _fetch(self, url: str, payload: dict[str, Any]) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one POST, read within `timeout_s` in all: httpx's timeouts
        count per read, so a server that trickles a byte at a time could otherwise hold it forever."""
        import httpx

        deadline = time.monotonic() + self.timeout_s
        with self.client.stream("POST", url, json=payload) as r:
            chunks = []
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"the answer took more than {self.timeout_s:g}s in all")
            return r.status_code, r.headers, b"".join(chunks)

    def close(self) -> None:
        self.client.close()


ROW_REFUSALS = {400, 413, 422}  # about one conversation (too long, malformed): that row falls back


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def _server_message(text: str) -> str:
    """The message of an error body (OpenAI/vLLM `{"error": {"message"}}` or `{"message"}`), else its start."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return str(text)[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    return (error if isinstance(error, str) else json.dumps(error))[:300]


def _completion(raw: bytes, content_type: str, url: str) -> dict[str, Any]:
    """A 200's body as a chat completion: JSON, or a text/event-stream of chunks joined into one.
    Raises FeedbackgenError naming the URL and what came back when it is neither."""
    text = raw.decode("utf-8", "replace")
    if "event-stream" in content_type or text.lstrip().startswith("data:"):
        return _from_stream(text, url)
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise FeedbackgenError(f"{url} answered 200 with {content_type or 'no content type'} that is not JSON: "
                               f"{text[:200]!r}") from None
    if not isinstance(body, dict) or ("error" not in body and not body.get("choices")):
        raise FeedbackgenError(f"{url} answered 200 with something that is not a chat completion (no choices): "
                               f"{text[:200]!r}")
    return body


def _from_stream(text: str, url: str) -> dict[str, Any]:
    """Server-sent `chat.completion.chunk` events joined into one completion."""
    parts, finish, usage = [], None, None
    for line in text.splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        try:
            chunk = json.loads(line[5:])
        except json.JSONDecodeError:
            raise FeedbackgenError(f"{url} streamed an event that is not JSON: {line[:200]!r}") from None
        if "error" in chunk:
            return {"error": chunk["error"]}
        for c in chunk.get("choices") or []:
            delta = c.get("delta") or c.get("message") or {}
            parts.append(_answer_text(delta))
            finish = c.get("finish_reason") or finish
        usage = chunk.get("usage") or usage
    if not parts:
        raise FeedbackgenError(f"{url} answered 200 with an event stream holding no chat completion chunk: "
                               f"{text[:200]!r}")
    return {"choices": [{"message": {"content": "".join(parts)}, "finish_reason": finish or "stop"}],
            "usage": usage or {}}


def _answer_text(message: dict[str, Any]) -> str:
    """The answer in a message: its content, else the arguments of its first tool call (servers
    that answer a JSON-schema request as a function call)."""
    if message.get("content"):
        return str(message["content"])
    calls = message.get("tool_calls") or []
    if calls and isinstance(calls[0], dict):
        return str((calls[0].get("function") or {}).get("arguments") or "")
    return ""
