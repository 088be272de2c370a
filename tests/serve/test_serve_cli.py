"""`feedbackgen serve` as a real process: it serves saved models and shuts down gracefully."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from feedbackgen.types import FeedbackRequest


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from feedbackgen.cli import main

    monkeypatch.setattr(sys, "argv", ["feedbackgen", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, " ".join(captured.err.split())  # rich wraps long lines


@pytest.fixture(scope="module")
def saved(served_models, mi_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    served_models["popular"].save(root / "popular")
    mi_small.save(root / "data")
    return root


def test_sigterm_finishes_in_flight_requests_then_exits(saved, served_models, known_pairs, unused_port):
    port = unused_port
    url = f"http://127.0.0.1:{port}"
    # a long batch window keeps a request in flight long enough to stop the server under it
    proc = subprocess.Popen(
        [sys.executable, "-c", "from feedbackgen.cli import main; main()", "serve", str(saved / "popular"),
         "--dataset", str(saved / "data"), "--port", str(port), "--max-wait-ms", "1500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)

        user, item = known_pairs[0]
        answer: dict = {}
        in_flight = threading.Thread(target=lambda: answer.update(r=httpx.post(
            url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}]}, timeout=30)))
        sent = time.monotonic()
        in_flight.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        in_flight.join()
        # uvicorn re-raises the signal once it has shut down, so the exit status says "terminated"
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    r = answer["r"]
    assert r.status_code == 200, log
    assert r.json()["feedback"][0]["text"] == served_models["popular"].generate([FeedbackRequest(user, item)])[0].text
    assert time.monotonic() - sent >= 1.4  # it really waited for its batch window, after the SIGTERM
    assert "Waiting for connections to close" in log or "Shutting down" in log, log
    assert "Finished server process" in log, log
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/healthz")


def test_serve_refuses_a_folder_without_a_model(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "serve", tmp_path)
    assert code == 1 and "not a saved feedbackgen model" in err
    code, _, err = run_cli(monkeypatch, capsys, "serve")
    assert code == 1 and "at least one model folder" in err


def test_serve_validates_its_options(saved, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "serve", saved / "popular", "--max-batch", "0")
    assert code == 1 and "max_batch" in err
    code, _, err = run_cli(monkeypatch, capsys, "serve", saved / "popular", "--unknown", "ignore")
    assert code == 1 and "unknown" in err
    code, _, err = run_cli(monkeypatch, capsys, "serve", saved / "popular", "--api-keys", saved / "missing.txt")
    assert code == 1 and "does not exist" in err


def test_api_key_command_prints_a_key_and_stores_its_hash(tmp_path, monkeypatch, capsys):
    from feedbackgen.serve.keys import hash_key, read_key_file

    code, out, _ = run_cli(monkeypatch, capsys, "api-key", tmp_path / "keys.txt", "--label", "alice")
    key = out.strip()
    assert code == 0 and key.startswith("fbg_")
    assert read_key_file(tmp_path / "keys.txt") == {hash_key(key): "alice"}
    assert oct((tmp_path / "keys.txt").stat().st_mode & 0o777) == "0o600"


def test_a_label_with_a_unicode_line_separator_stays_one_line(tmp_path, monkeypatch, capsys):
    from feedbackgen.errors import ConfigError
    from feedbackgen.serve.keys import hash_key, read_key_file

    code, out, _ = run_cli(monkeypatch, capsys, "api-key", tmp_path / "keys.txt", "--label", "ops\u2028team")
    assert code == 0
    assert read_key_file(tmp_path / "keys.txt") == {hash_key(out.strip()): "ops\u2028team"}
    with open(tmp_path / "keys.txt", "a", encoding="utf-8") as f:
        f.write("not a key\n")
    with pytest.raises(ConfigError, match="line 2:"):  # the label's U+2028 does not shift the count
        read_key_file(tmp_path / "keys.txt")
