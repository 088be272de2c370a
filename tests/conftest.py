import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from feedbackgen.data.paths import data_dir, field_cases_dir, fixtures_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_root():
    root = data_dir()
    if not root.is_dir():
        pytest.fail(f"shared data not found at {root}; set FEEDBACKGEN_DATA")
    return root


@pytest.fixture(scope="session")
def fixtures_root():
    root = fixtures_dir()
    if not root.is_dir():
        pytest.fail(f"shared fixtures not found at {root}; set FEEDBACKGEN_FIXTURES")
    return root


@pytest.fixture(scope="session")
def field_cases_root():
    root = field_cases_dir()
    if not root.is_dir():
        pytest.fail(f"field cases not found at {root}; set FEEDBACKGEN_FIELD_CASES")
    return root


@pytest.fixture(scope="session")
def mi_dataset(data_root):
    """Musical Instruments 2014 5-core, prepared with the default pipeline (random 8:1:1, seed 1)."""
    from feedbackgen.data.prepare import prepare

    path = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    return prepare([path], "amazon2014", split="random", seed=1, progress=False)


@pytest.fixture(scope="session")
def mi_small(mi_dataset):
    """The rows of the 25 most-reviewed items: big enough to learn from, small enough to be quick."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    top = (mi_dataset.interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
           .head(25)["item_id"])
    return Dataset(mi_dataset.interactions.filter(pl.col("item_id").is_in(top.implode())), mi_dataset.items,
                   manifest=mi_dataset.manifest)


@pytest.fixture(scope="session")
def tiny_peter(data_root):
    """A tiny peter (`support.TINY`, 3 epochs) fitted on `support.peter_slice`: trained once for
    test_peter's model checks and, saved (`tiny_peter_folder`), the batch-job tests' model."""
    from feedbackgen.models import create
    from support import TINY, peter_slice

    return create("peter", {**TINY, "max_epochs": 3}).fit(peter_slice(data_root))


@pytest.fixture(scope="session")
def tiny_peter_folder(tiny_peter, tmp_path_factory):
    """`tiny_peter` saved; tests copy it where they need a model folder of their own."""
    folder = tmp_path_factory.mktemp("tiny_peter") / "model"
    tiny_peter.save(folder)
    return folder


@pytest.fixture(scope="session")
def a4r_prepared(data_root, tmp_path_factory):
    """Agent4Rec's MovieLens-1M split prepared once, through the command line as a user runs it
    (`feedbackgen prepare DIR --format lightgcn --meta movie_detail.csv --map item_id=movie_id`):
    (the dataset folder, what the command printed). Tests read the folder and write elsewhere."""
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    src = data_root / "movielens_1m_agent4rec"
    out = tmp_path_factory.mktemp("a4r") / "a4r"
    result = CliRunner().invoke(app, ["prepare", str(src), "--format", "lightgcn", "--meta",
                                      str(src / "movie_detail.csv"), "--map", "item_id=movie_id", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


# -- field case 13: one seeded request, whatever it is batched with ----------------------------------

def _post_concurrently(app, bodies: list) -> tuple[list, float]:
    """POST every body to `app`'s /v1/feedback at once, in process. Returns the responses and the
    mean number of requests per model call (above 1 when the micro-batcher joined the calls)."""
    import asyncio
    import re

    import httpx

    async def run():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                         timeout=600) as client:
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.05)
                responses = await asyncio.gather(*(client.post("/v1/feedback", json=b) for b in bodies))
                metrics = (await client.get("/metrics")).text
        return responses, metrics

    responses, metrics = asyncio.run(run())
    total = {k: sum(float(v) for v in re.findall(rf"^feedbackgen_batch_size_{k}{{.*}} (\S+)$", metrics, re.M))
             for k in ("sum", "count")}
    return responses, total["sum"] / max(1.0, total["count"])


def _texts_of_the_seeded_request(case, generator, decoding: dict) -> list[str]:
    """Case 13's request, sampled with `decoding` (which holds a seed): alone, second of two, and in
    each call of a concurrent server burst (in several positions, and once with the seed on the
    request instead of the decoding). Each should be the same text."""
    from feedbackgen.serve import create_app

    one, two = case
    assert one[0] == two[1]
    texts = [generator.generate(one, decoding)[0].text, generator.generate(two, decoding)[1].text]
    assert texts[1] == texts[0], f"second of two: {texts[1]!r}; alone: {texts[0]!r}"
    mine = {"user_id": one[0].user_id, "item_id": one[0].item_id}
    other = {"user_id": two[0].user_id, "item_id": two[0].item_id}
    calls = [([other, mine], 1), ([mine], 0), ([other, other, mine, other], 2), ([mine, other], 0)]
    bodies = [{"requests": reqs, "decoding": decoding} for reqs, _ in calls]
    unseeded = {k: v for k, v in decoding.items() if k != "seed"}
    bodies.append({"requests": [other, {**mine, "seed": decoding["seed"]}], "decoding": unseeded})
    calls.append((None, 1))
    app = create_app({"m": generator}, None, {"max_batch": 64, "max_wait_ms": 500})
    responses, per_call = _post_concurrently(app, bodies)
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    assert per_call > 1, "the burst was not micro-batched"
    for r, (_, k) in zip(responses, calls):
        answer = r.json()["feedback"][k]
        assert answer["meta"]["seed"] == decoding["seed"]
        texts.append(answer["text"])
    return texts


@pytest.fixture(scope="session")
def post_concurrently():
    """`post_concurrently(app, bodies)`: see `_post_concurrently`."""
    return _post_concurrently


@pytest.fixture(scope="session")
def seeded_case(field_cases_root):
    """Case 13's requests: one request alone, and the same request second of two."""
    from feedbackgen.batch import read_requests

    folder = field_cases_root / "13-seeded-sampling"
    return read_requests(folder / "one_request.jsonl"), read_requests(folder / "two_requests.jsonl")


@pytest.fixture(scope="session")
def seeded_request_texts(seeded_case):
    """`texts(generator, decoding)`: case 13's request decoded alone, in a batch and in a server
    burst (see `_texts_of_the_seeded_request`)."""
    return lambda generator, decoding: _texts_of_the_seeded_request(seeded_case, generator, decoding)


@pytest.fixture
def chat_server():
    """`chat_server(answer)` starts a local OpenAI-compatible /v1/chat/completions server and
    returns its base URL; `answer(body) -> (status, headers, content)` answers each request (the
    parsed JSON body; `content` is the assistant message). Stopped when the test ends."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, content = answer(body)
                payload = json.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 7}}).encode()
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json",
                             "Content-Length": str(len(payload))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(httpd)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()
