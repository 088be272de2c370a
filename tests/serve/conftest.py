"""Real models, and real servers on 127.0.0.1 (uvicorn in a thread, a free port each)."""

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, wait_ready: bool = True) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200 or not wait_ready:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server on {self.url} did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def metric(self, name: str, **labels) -> float:
        """The value of one sample in /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith("#"):
                continue
            key, value = line.rsplit(" ", 1)
            sample, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if sample == name and got == want:
                return float(value)
        return 0.0


@contextmanager
def _live(app, wait_ready: bool = True):
    server = LiveServer(app).start(wait_ready)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def live():
    """`with live(app) as server:` runs `app` on a free port until the block ends."""
    return _live


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def served_models(mi_small):
    """Two real generators: `popular` (text + MF ratings) and `mf` (ratings only)."""
    from feedbackgen.models import create

    return {"popular": create("popular").fit(mi_small), "mf": create("mf").fit(mi_small)}


@pytest.fixture(scope="session")
def known_pairs(mi_small):
    """(user, item) pairs of the test split whose user and item both have training reviews."""
    train = mi_small.train
    users, items = set(train["user_id"]), set(train["item_id"])
    test = mi_small.test
    return [(u, i) for u, i in zip(test["user_id"], test["item_id"]) if u in users and i in items]


@pytest.fixture(scope="session")
def text_models(served_models, mi_small):
    """Three real generators with different texts (or ratings): aspect sentences, whole reviews,
    aspect sentences with bias-baseline ratings."""
    from feedbackgen.models import create

    return {"popular": served_models["popular"],
            "popular_review": create("popular", {"target": "review", "rating_model": "bias"}).fit(mi_small),
            "popular_bias": create("popular", {"rating_model": "bias"}).fit(mi_small)}


@pytest.fixture(scope="session")
def predictions(text_models, mi_small, tmp_path_factory):
    """Test-split predictions (PRED.jsonl) of the three text models."""
    from feedbackgen.batch import requests_from_split, run_generation

    root = tmp_path_factory.mktemp("pred")
    requests = requests_from_split(mi_small, "test")
    return {name: run_generation(m, requests, root / f"{name}.jsonl", progress=False)
            for name, m in text_models.items()}
