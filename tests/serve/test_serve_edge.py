"""The HTTP edge, as field cases 21 (CORS preflight) and 23 (slow clients) meet it: a real server on 127.0.0.1."""

import logging
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from feedbackgen.serve import create_app
from feedbackgen.serve.app import server_config
from feedbackgen.serve.keys import add_key, read_key_file
from feedbackgen.serve.middleware import RepeatFilter

ORIGIN = "http://localhost:3000"


def _preflight(case_dir, port, key=None) -> list[str]:
    """The field case's own client: what a page at localhost:3000 sends (preflight, then the call)."""
    args = [sys.executable, str(case_dir / "preflight.py"), str(port), *([key] if key else [])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_21_an_allowed_origins_preflight_passes_whatever_the_key_check(field_cases_root, served_models, mi_small,
                                                                        tmp_path, live):
    case = field_cases_root / "21-cors-preflight"
    key = add_key(tmp_path / "keys.txt", "page")
    app = create_app({"popular": served_models["popular"]}, mi_small, key_hashes=read_key_file(tmp_path / "keys.txt"),
                     cors_origins=[ORIGIN])
    with live(app) as s:
        preflight, call = _preflight(case, s.port, key)
        assert preflight.startswith("OPTIONS /v1/feedback: HTTP 200"), preflight
        assert f"'access-control-allow-origin': '{ORIGIN}'" in preflight
        assert "authorization" in preflight and "content-type" in preflight
        assert call.startswith("POST /v1/feedback: HTTP 200") and ORIGIN in call, call
        # another origin is not allowed, and still needs its key
        r = httpx.options(s.url + "/v1/feedback", headers={"Origin": "http://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    with live(create_app({"popular": served_models["popular"]}, mi_small)) as s:  # off by default
        preflight, call = _preflight(case, s.port)
        assert "CORS headers: none" in preflight and "CORS headers: none" in call


def test_21_serve_help_says_how_to_allow_origins():
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    res = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--cors-origin" in res.output
    for flag in ("--request-timeout", "--max-connections"):
        assert flag in res.output


@pytest.fixture
def limited_server(served_models, mi_small, unused_port):
    """A server as `feedbackgen serve` runs it (server_config's limits), with a 1 s request deadline
    and room for 40 connections."""
    import uvicorn

    app = create_app({"popular": served_models["popular"]}, mi_small, {"request_timeout": 1.0})
    server = uvicorn.Server(server_config(app, port=unused_port, log_level="warning", max_connections=40))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{unused_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    yield unused_port, url
    server.should_exit = True
    thread.join(timeout=15)


def _slow_connection(port: int) -> socket.socket:
    """Field case 23's client: the headers of a POST /v1/feedback and 10 of its 70 body bytes."""
    body = b'{"requests":[{"user_id":"A2IBPI20UZIR0U","item_id":"1384719342"}]}'
    head = (b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head + body[:10])
    return s


def _answer(s: socket.socket) -> bytes:
    """What the server sent before closing (b"" when it closed without a word)."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_23_a_request_not_received_in_time_gets_408_and_is_closed(limited_server):
    port, url = limited_server
    slow = [_slow_connection(port) for _ in range(10)]
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # a normal client meanwhile
    t0 = time.monotonic()
    answers = [_answer(s) for s in slow]
    assert time.monotonic() - t0 < 5  # the deadline (1 s), not the client, ended them
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0]
    assert b"request-timeout" in answers[0]
    for s in slow:
        s.close()


def test_23_open_connections_are_bounded_and_new_clients_still_answered(limited_server):
    port, url = limited_server
    slow = [_slow_connection(port) for _ in range(60)]  # more than the 40 the server keeps
    time.sleep(0.3)
    refused = 0
    for s in slow:
        s.settimeout(0.2)
        try:
            refused += s.recv(64).startswith(b"HTTP/1.1 503")  # over the limit: 503 at once, then closed
        except TimeoutError:
            pass
    assert refused >= 20
    time.sleep(1.5)  # the deadline frees the others: a new client gets its answer
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    for s in slow:
        s.close()


def test_23_an_error_repeated_in_a_loop_is_logged_once_with_a_count():
    records = []
    logger = logging.getLogger("test.accept-loop")
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.addFilter(RepeatFilter(window=0.5))
    try:
        def accept_fails():
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logger.error("socket.accept() out of system resource", exc_info=True)

        for _ in range(10_000):  # the accept loop out of file descriptors
            accept_fails()
        assert len(records) == 1
        time.sleep(0.6)
        accept_fails()
        assert len(records) == 2 and "repeated 9999 more times" in records[1].getMessage()
        logger.error("another error")
        assert len(records) == 3
    finally:
        logger.removeHandler(handler)


def test_a_body_that_is_not_json_is_refused_naming_its_content_type(served_models, mi_small, live):
    with live(create_app({"popular": served_models["popular"]}, mi_small)) as s:
        body = '{"requests": [{"user_id": "u", "item_id": "i"}]}'
        r = httpx.post(s.url + "/v1/feedback", content=body, headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "'text/plain'" in r.json()["detail"] and r.json()["field"] == "body"
        r = httpx.post(s.url + "/v1/feedback", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200
