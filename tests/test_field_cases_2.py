"""The field cases of round two (15-25, and the old kinds still open), through the command line as
a user meets it: the exit status (`feedbackgen.cli.app._run`, what `main` hands to sys.exit, and a
real `feedbackgen` process for the pipeline's view), the recommendation lists, the LLM servers
that misbehave and the release layouts. Inputs are read where they lie (`$FEEDBACKGEN_FIELD_CASES`);
only variants built for a test are written, to tmp_path."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from feedbackgen.cli.app import _one_line_warning, _run


@pytest.fixture(scope="module")
def cases(field_cases_root) -> Path:
    return field_cases_root


def run(*args) -> tuple[int, str]:
    """`feedbackgen ARGS` in this process: its exit status and all it printed, on one line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _one_line_warning  # as `main` shows them
        code = _run([str(a) for a in args])
    return code, " ".join((out.getvalue() + err.getvalue()).split())


# -- exit status tells the truth (17, and every command) ----------------------------------------------

def planted_failures(tmp: Path) -> list[tuple[list, int, str]]:
    """(arguments, expected exit status, words the one-line message holds): every command of the
    tool, each with a failure planted; 2 is click's status for bad usage, 1 for an error."""
    missing = tmp / "missing"
    return [
        (["prepare", missing / "r.csv", "--format", "csv", "--out", tmp / "ds"], 1, "r.csv"),
        (["prepare", missing / "r.csv", "--fromat", "csv"], 2, "Did you mean --format?"),
        (["train", missing, "--model", "popular", "--out", tmp / "m"], 1, "missing"),
        (["models", "extra"], 2, "unexpected extra argument"),
        (["generate", missing, "--requests", missing / "q.jsonl", "--out", tmp / "p.jsonl"], 1, "missing"),
        (["evaluate", missing / "p.jsonl", "--dataset", missing, "--out", tmp / "r"], 1, "missing"),
        (["metrics", "--generated", missing / "g.txt", "--references", missing / "r.txt"], 1, "g.txt"),
        (["report", missing], 1, "missing"),
        (["recommend", missing, "--dataset", missing, "--user", "u"], 1, "missing"),
        (["simulate", "--choice", missing, "--dataset", missing, "--recommendations", missing / "r.csv",
          "--k", "1e20"], 2, "Invalid value for '--k'"),
        (["simulate", "--choice", missing, "--dataset", missing, "--recommendations", missing / "r.csv"], 1,
         "missing"),
        (["fidelity", "--dataset", missing, "--no-review"], 2, "Did you mean --no-reviews"),
        (["serve", missing, "--dataset", missing], 1, "missing"),
        (["api-key", missing / "no" / "keys.txt"], 1, "keys.txt"),
        (["annotate", "create", "--predictions", missing / "a.jsonl", missing / "b.jsonl", "--dataset", missing,
          "--out", tmp / "task"], 1, "missing"),
        (["annotate", "serve", missing], 1, "missing"),
        (["annotate", "report", missing], 1, "missing"),
        (["no-such-command"], 2, "No such command"),
    ]


def test_17_every_command_exits_non_zero_on_a_planted_failure(tmp_path):
    for args, status, words in planted_failures(tmp_path):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _run([str(a) for a in args])
        said = " ".join((out.getvalue() + err.getvalue()).split())
        assert code == status and words in said, (args, code, said)
        assert "Traceback" not in said, args
        assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("error: "), err.getvalue()  # one line


def test_17_the_process_exit_status_is_what_a_pipeline_sees(tmp_path):
    """The installed entry point, as a shell script or CI job runs it."""
    for args, status, words in [(["fidelity", "--no-review"], 2, "Did you mean --no-reviews"),
                                (["metrics", "--generated", tmp_path / "g.txt", "--references", tmp_path / "r.txt"],
                                 1, "error:")]:
        proc = subprocess.run([sys.executable, "-c", "from feedbackgen.cli import main; main()", *map(str, args)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == status and words in " ".join(proc.stderr.split()), proc.stderr


def test_17_a_huge_k_is_a_clear_usage_error_or_the_whole_list(a4r, cases):
    ranked = cases / "17-rank-conventions" / "ranked_1based.csv"
    code, said = simulate(a4r, ranked, "--k", "1e20")
    assert code == 2 and "Invalid value for '--k'" in said
    code, said = simulate(a4r, ranked, "--k", str(10**20))
    assert code == 0 and "| ranked_1based | 50 | 500 |" in said, said


# -- recommendation lists read as meant or refused (15, 16, 17, 19) ---------------------------------

@pytest.fixture(scope="module")
def a4r(a4r_prepared, tmp_path_factory) -> dict:
    """Case 15's set-up: the Agent4Rec MovieLens-1M split prepared (the session's), and ALS trained on it."""
    root = tmp_path_factory.mktemp("a4r")
    data = a4r_prepared[0]
    assert _run(["train", str(data), "--model", "als", "--out", str(root / "als"), "--set", "search=false"]) == 0
    return {"data": data, "choice": root / "als", "root": root}


def simulate(a4r, *args) -> tuple[int, str]:
    return run("simulate", "--choice", a4r["choice"], "--dataset", a4r["data"], "--no-reviews",
               "--calibration-pairs", "500", "--recommendations", *args)


def verdicts(a4r, paths: list, *args) -> dict:
    """The summary row `simulate` writes for each RECS file, by file stem (one run, exit 0 asserted),
    with its check and what the command said."""
    out = a4r["root"] / f"sim_{len(list(a4r['root'].iterdir()))}"
    code, said = simulate(a4r, *paths, "--out", out, *args)
    assert code == 0, said
    summary = json.loads((out / "summary.json").read_text())
    checks = {c["recommender"]: c for c in summary["checks"]}
    return {row["recommender"]: {**row, "check": checks[row["recommender"]], "said": said, "out": out.name}
            for row in summary["summary"]}


def verdict(a4r, path, *args) -> dict:
    return verdicts(a4r, [path], *args)[Path(path).stem]


@pytest.fixture(scope="module")
def judged(a4r, cases, tmp_path_factory) -> dict:
    """One simulate run (one calibration) over the lists of 15-19 that should be judged, and a top 3
    padded to 10 by repetition."""
    lines = (cases / "17-rank-conventions" / "ranked_1based.csv").read_text().splitlines()[1:]
    top3 = [line.split(",")[:2] for line in lines if int(line.split(",")[2]) <= 3]
    padded = tmp_path_factory.mktemp("padded") / "padded.csv"
    padded.write_text("user_id,item_id,rank\n" + "".join(
        f"{u},{top3[3 * (n // 3) + (r % 3)][1]},{r + 1}\n" for n, (u, _) in enumerate(top3) if n % 3 == 0
        for r in range(10)))
    files = [cases / "17-rank-conventions" / name for name in
             ("ranked_1based.csv", "ranked_0based.csv", "score_in_rank_column.csv", "scored_unsorted.csv")]
    files += [cases / "16-recs-other-layouts" / name for name in ("ms_recommenders.csv", "lenskit.csv", "elliot.tsv")]
    # the reference as pandas writes ids beside a missing value: floats (0.0, 282.0), in Parquet
    import polars as pl

    floats = padded.with_name("as_floats.parquet")
    pl.read_csv(files[0]).with_columns(pl.col("user_id", "item_id").cast(pl.Float64)).write_parquet(floats)
    files += [cases / "15-recbole-internal-ids" / "recbole_external.csv", padded, floats]
    files += [cases / "19-history-echo" / name for name in ("ease_filtered.csv", "ease_unfiltered.csv",
                                                            "echo_history.csv")]
    return verdicts(a4r, files)


def same_verdict(a: dict, b: dict) -> bool:
    keys = ("users", "items", "engagement_at_k", "share_users_engaging")
    return all(a[key] == b[key] for key in keys)


def test_15_internal_ids_are_refused_before_they_are_judged(a4r, cases, judged):
    folder = cases / "15-recbole-internal-ids"
    right = judged["recbole_external"]
    assert (right["users"], right["items"], right["in_history_rows"]) == (50, 500, 0)
    code, said = simulate(a4r, folder / "recbole_internal.csv")
    assert code == 1 and "recbole_internal.csv" in said and "random draws from the catalogue" in said
    assert "RecBole's internal ids" in said and "--no-id-check" in said
    # together: the run stops on the bad file; nothing is judged silently
    code, said = simulate(a4r, folder / "recbole_external.csv", folder / "recbole_internal.csv")
    assert code == 1 and "recbole_internal.csv" in said and "| recbole_external |" not in said
    # asked to judge it anyway: its rows in the users' history are counted and judged as already owned
    forced = verdict(a4r, folder / "recbole_internal.csv", "--no-id-check")
    assert forced["check"]["in_history_rows"] > 0 and forced["items"] == 500
    assert forced["engagement_at_k"] < right["engagement_at_k"] / 2
    assert forced["check"]["popularity_percentile"] < 0.6 < right["check"]["popularity_percentile"]


def test_16_other_tools_layouts_are_read_or_mapped(a4r, cases, judged, tmp_path):
    reference = judged["ranked_1based"]
    for name, words in (("ms_recommenders", "score = prediction"), ("lenskit", "user_id = user"),
                        ("elliot", "no header row: columns read as user_id = column 1")):
        assert same_verdict(judged[name], reference) and words in judged[name]["said"], name
    # a layout nobody knows: refused naming its columns, then mapped as prepare --map does
    lines = (cases / "17-rank-conventions" / "ranked_1based.csv").read_text().splitlines()[1:]
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("who,what,pos\n" + "".join(line + "\n" for line in lines))
    code, said = simulate(a4r, theirs)
    assert code == 1 and "name them with --map user_id=COLUMN" in said and "who, what, pos" in said
    # header-less and in another order: columns by position
    swapped = tmp_path / "swapped.tsv"
    swapped.write_text("".join(f"{r}\t{i}\t{u}\n" for u, i, r in (line.split(",") for line in lines)))
    got = verdict(a4r, theirs, "--map", "user_id=who", "--map", "item_id=what", "--map", "rank=pos")
    assert same_verdict(got, reference)
    got = verdict(a4r, swapped, "--map", "user_id=3", "--map", "item_id=2", "--map", "rank=1")
    assert same_verdict(got, reference)


def test_ids_written_as_floats_are_read_or_named(a4r, judged, tmp_path):
    assert same_verdict(judged["as_floats"], judged["ranked_1based"])
    as_text = tmp_path / "as_text.csv"  # the same floats as CSV text: refused, naming the cause
    import polars as pl

    pl.read_parquet(judged["as_floats"]["check"]["source"]).write_csv(as_text)
    code, said = simulate(a4r, as_text)
    assert code == 1 and "its ids are written as decimals (1.0)" in said, said


def test_17_rank_conventions_are_detected(judged):
    reference = judged["ranked_1based"]
    assert (reference["users"], reference["items"]) == (50, 500) and "ranked_1based:" not in reference["said"]
    for name, words in (("ranked_0based", "0-based (shifted by one)"),
                        ("score_in_rank_column", "the rank column holds scores"),
                        ("scored_unsorted", "ordered by score, highest first")):
        assert same_verdict(judged[name], reference) and words in judged[name]["said"], name


def test_19_a_list_cannot_win_by_echoing_the_history(a4r, cases, judged):
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    folder = cases / "19-history-echo"
    ds = Dataset.load(a4r["data"])
    history = set(ds.interactions.filter(ds.interactions["split"] != "test").select("user_id", "item_id").iter_rows())
    rows = [tuple(line.split(",")[:2]) for line in (folder / "ease_unfiltered.csv").read_text().splitlines()[1:]]
    owned = sum(r in history for r in rows)
    unfiltered, filtered, echo = (judged[name] for name in ("ease_unfiltered", "ease_filtered", "echo_history"))
    assert owned >= 437 and unfiltered["in_history_rows"] == owned and unfiltered["items"] == 500
    assert "judged as already owned (skipped), never as new finds" in unfiltered["said"]
    # handing users back what they had never beats the real recommender
    assert echo["in_history_rows"] == 500 and echo["engagement_at_k"] == echo["expected_engagement_at_k"] == 0
    assert unfiltered["engagement_at_k"] < filtered["engagement_at_k"]
    assert unfiltered["expected_engagement_at_k"] < filtered["expected_engagement_at_k"]
    items = pl.read_parquet(a4r["root"] / judged["echo_history"]["out"] / "simulated_items.parquet")
    echoed = items.filter(pl.col("recommender") == "echo_history")
    assert not echoed["engage"].any() and set(echoed["source"]) == {"already in the user's history: not a new find"}


def test_padded_and_short_lists_are_counted_beside_the_verdict(judged):
    got = judged["padded"]
    assert (got["items"], got["duplicates"], got["short_lists"]) == (150, 350, 50)
    assert "350 repeated (user, item) row(s)" in got["said"]
    assert "50 of 50 user(s) with a list shorter than k" in got["said"]
    # an empty slot is a skip (engaged / k, as precision@k): three items cannot beat the real top 10
    real = judged["ranked_1based"]
    assert got["expected_engagement_at_k"] < real["expected_engagement_at_k"]
    assert got["engagement_at_k"] < real["engagement_at_k"]


# -- LLM servers that misbehave cost one row, not the run (24, 25) -----------------------------------

class FakeServer:
    """A case's own fake_openai_server.py, run as the user runs it, on a free local port; `start(mode)`
    (re)starts it in that mode; `calls()` reads its log of the calls received."""

    def __init__(self, script: Path, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.script, self.log, self.proc = script, folder / "server_log.jsonl", None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self, mode: str) -> FakeServer:
        self.stop()
        self.log.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.port), mode, str(self.log)])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the fake server did not start")

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def llm_openai(data_root, cases, tmp_path_factory):
    """Case 24's set-up: data/mi600 and models/llm_openai trained against the fake server; and
    models/llm_openai_cache, the same with response_cache=true (its config.json's settings, as
    `--set response_cache=true --set cache_dir=...` would write them)."""
    root = tmp_path_factory.mktemp("llm")
    mi = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    with gzip.open(mi, "rt", encoding="utf-8") as f:
        head = "".join(line for _, line in zip(range(600), f))
    (root / "mi600.json.gz").write_bytes(gzip.compress(head.encode()))
    server = FakeServer(cases / "24-one-refused-request" / "fake_openai_server.py", root)
    assert _run(["prepare", str(root / "mi600.json.gz"), "--format", "amazon2014", "--out", str(root / "mi600")]) == 0
    assert _run(["train", str(root / "mi600"), "--model", "llm", "--out", str(root / "llm_openai"),
                 "--set", "backend=openai", "--set", f"base_url={server.url}", "--set", "response_cache=false",
                 "--set", "max_retries=1", "--set", "backoff_s=0.01"]) == 0
    shutil.copytree(root / "llm_openai", root / "llm_openai_cache")
    config = json.loads((root / "llm_openai_cache" / "config.json").read_text())
    settings = config.get("config", config)
    settings.update(response_cache=True, cache_dir=str(root / "llm_cache"))
    (root / "llm_openai_cache" / "config.json").write_text(json.dumps(config))
    yield {"root": root, "server": server, "data": root / "mi600"}
    server.stop()


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_24_a_refused_request_costs_its_row_not_the_run(llm_openai, cases):
    root, server = llm_openai["root"], llm_openai["server"].start("ctx400")
    requests = cases / "24-one-refused-request" / "requests.jsonl"
    out = root / "pred24.jsonl"
    code, said = run("generate", root / "llm_openai", "--requests", requests, "--out", out)
    assert code == 0 and "refused 1" in said and "valid 3" in said, said
    rows = {r["user_id"]: r for r in rows_of(out)}
    long = rows.pop("A2EZWZ8MBEDOLN")["meta"]
    assert long["answer"] == "fallback" and "maximum context length" in long["refused"] and long["attempts"] == 1
    assert [r["meta"]["answer"] for r in rows.values()] == ["valid"] * 3
    assert sum(c["long_user"] for c in server.calls()) == 1  # refused once, never asked again
    code, said = run("generate", root / "llm_openai", "--requests", requests, "--out", out)  # resumable
    assert code == 0 and len(rows_of(out)) == 4


def test_24_in_serve_only_the_request_that_caused_it_is_affected(llm_openai, post_concurrently):
    from feedbackgen.models import load
    from feedbackgen.serve import create_app

    llm_openai["server"].start("ctx400")
    app = create_app({"m": load(llm_openai["root"] / "llm_openai")}, None, {"max_batch": 8, "max_wait_ms": 300})
    bodies = [{"requests": [{"user_id": "A2EZWZ8MBEDOLN", "item_id": "B000068NVI"}]},
              {"requests": [{"user_id": "AMNTZU1YQN1TH", "item_id": "B00004Y2UT"}]}]
    responses, _ = post_concurrently(app, bodies)
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    long, ordinary = (r.json()["feedback"][0]["meta"] for r in responses)
    assert ordinary["answer"] == "valid" and "refused" not in ordinary
    assert long["answer"] == "fallback" and "maximum context length" in long["refused"]


def test_25_answers_of_an_unexpected_shape(llm_openai, cases):
    root, server = llm_openai["root"], llm_openai["server"]
    requests = cases / "25-nonstandard-200-answers" / "requests.jsonl"
    server.start("sse")  # a streamed reply is still an answer
    code, said = run("generate", root / "llm_openai", "--requests", requests, "--out", root / "sse.jsonl")
    assert code == 0 and "valid 4" in said, said
    assert {r["text"] for r in rows_of(root / "sse.jsonl")} == {"Sturdy and sounds good for the price."}
    server.start("error200")  # the gateway's own message and the URL, and a failing exit
    code, said = run("generate", root / "llm_openai", "--requests", requests, "--out", root / "e200.jsonl")
    assert code == 1 and "overloaded" in said and f"127.0.0.1:{server.port}/v1/chat/completions" in said, said
    assert "KeyError" not in said
    server.start("toolcalls")  # the answer in tool_calls is read, and cached
    code, said = run("generate", root / "llm_openai_cache", "--requests", requests, "--out", root / "tc.jsonl")
    assert code == 0 and "valid 4" in said and len(server.calls()) == 4, said
    server.start("fixed")
    code, said = run("generate", root / "llm_openai_cache", "--requests", requests, "--out", root / "tc2.jsonl")
    assert code == 0 and len(server.calls()) == 0  # the valid answers came from the cache
    assert all(r["meta"]["cached"] for r in rows_of(root / "tc2.jsonl"))


def test_25_nothing_empty_or_invalid_is_cached_and_the_key_holds_the_server(llm_openai, cases, chat_server):
    root = llm_openai["root"]
    requests = cases / "25-nonstandard-200-answers" / "requests.jsonl"
    answer, calls = {"text": ""}, {"a": 0, "b": 0}

    def server(name):
        def reply(body):
            calls[name] += 1
            return 200, {}, answer["text"]
        return reply

    cache = root / "llm_cache_2"

    def model_at(url: str, name: str) -> Path:
        model = root / name
        shutil.copytree(root / "llm_openai_cache", model)
        config = json.loads((model / "config.json").read_text())
        config.get("config", config).update(base_url=url, cache_dir=str(cache))
        (model / "config.json").write_text(json.dumps(config))
        return model

    at_a, at_b = model_at(chat_server(server("a")), "llm_at_a"), model_at(chat_server(server("b")), "llm_at_b")
    code, said = run("generate", at_a, "--requests", requests, "--out", root / "empty.jsonl")
    assert code == 1 and "not one answer of the model was usable" in said, said  # a run where nothing worked
    assert calls["a"] == 12 and not any(cache.rglob("*.json"))  # 3 attempts each; no empty answer kept
    answer["text"] = '{"rating": 5, "review": "Now it works."}'
    code, said = run("generate", at_a, "--requests", requests, "--out", root / "fixed.jsonl")
    assert code == 0 and "valid 4" in said and calls["a"] == 16, said
    assert not any(r["meta"]["cached"] for r in rows_of(root / "fixed.jsonl"))
    assert len(list(cache.rglob("*.json"))) == 4
    code, said = run("generate", at_b, "--requests", requests, "--out", root / "other.jsonl")
    assert code == 0 and calls["b"] == 4  # another server: asked, not answered from the first one's cache
    code, said = run("generate", at_a, "--requests", requests, "--out", root / "again.jsonl")
    assert code == 0 and calls["a"] == 16 and all(r["meta"]["cached"] for r in rows_of(root / "again.jsonl"))


def test_retry_after_in_both_forms():
    from email.utils import format_datetime

    from feedbackgen.models.llm.openai_backend import retry_after_s

    assert retry_after_s("3") == 3.0 and retry_after_s("0.5") == 0.5 and retry_after_s(None) is None
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    assert 25 <= retry_after_s(format_datetime(when, usegmt=True)) <= 31
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_s("soon") is None


def test_a_trickling_server_cannot_stretch_a_call(tmp_path):
    """A server that sends its headers, then one byte every 0.3 s: each read is quick, the whole is not."""
    from feedbackgen.config import Decoding
    from feedbackgen.errors import FeedbackgenError
    from feedbackgen.models.llm.openai_backend import OpenAIBackend

    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    backend = OpenAIBackend(f"http://127.0.0.1:{httpd.server_address[1]}/v1", timeout_s=1.5, max_retries=0,
                            response_cache=False)
    t0 = time.monotonic()
    with pytest.raises(FeedbackgenError, match="more than 1.5s in all"):
        backend.chat([[{"role": "user", "content": "hi"}]], Decoding())
    assert time.monotonic() - t0 < 5
    httpd.shutdown()


def test_24_a_failing_batch_in_serve_fails_only_its_culprit(llm_openai, post_concurrently):
    """Any error in a micro-batch (here planted: the model raises for one user) reaches only the
    client whose request caused it; the others get their answers."""
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.errors import FeedbackgenError
    from feedbackgen.models import create
    from feedbackgen.serve import create_app

    ds = Dataset.load(llm_openai["data"])
    model = create("popular").fit(ds)

    class FailsForOneUser(type(model)):
        def generate(self, requests, decoding=None):
            if any(r.user_id == "A2EZWZ8MBEDOLN" for r in requests):
                raise FeedbackgenError("planted: this user's request breaks the model")
            return super().generate(requests, decoding)

    model.__class__ = FailsForOneUser
    app = create_app({"m": model}, None, {"max_batch": 8, "max_wait_ms": 300})
    users = ["AMNTZU1YQN1TH", "A2EZWZ8MBEDOLN", ds.train["user_id"][0]]
    bodies = [{"requests": [{"user_id": u, "item_id": "B00004Y2UT"}]} for u in users]
    responses, per_call = post_concurrently(app, bodies)
    assert [r.status_code for r in responses] == [200, 500, 200], [r.text for r in responses]
    assert "planted" in responses[1].text and all("planted" not in r.text for r in (responses[0], responses[2]))


def test_16_a_list_is_checked_before_any_llm_call(llm_openai, cases, tmp_path):
    server = llm_openai["server"].start("fixed")
    mi600 = cases / "16-recs-other-layouts" / "ms_recommenders_mi600.csv"
    typo = tmp_path / "typo.csv"
    typo.write_text(mi600.read_text().replace("userID", "usrID", 1))
    ghosts = tmp_path / "ghosts.csv"
    ghosts.write_text("user_id,item_id,rank\nnobody,B000068NVI,1\nnobody,B000068NZC,2\n")
    for recs, words in ((typo, "usrID, itemID, prediction"), (ghosts, "2 of its 2 rows name a user or item")):
        code, said = run("simulate", llm_openai["root"] / "llm_openai", "--dataset", llm_openai["data"],
                         "--recommendations", recs, "--no-reviews")
        assert code == 1 and words in said, said
    assert server.calls() == []  # refused before the calibration's first generation


# -- release layouts (20) -----------------------------------------------------------------------------

def test_20_lightgcn_id_maps_are_used_and_ids_stay_text(cases, tmp_path):
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.recommend.recs import read_recommendations

    folder = cases / "20-release-layouts" / "lightgcn"
    release = folder / "amazon-book-mini"
    code, said = run("prepare", release, "--format", "lightgcn", "--meta", folder / "item_list_as.csv",
                     "--map", "item_id=org_id", "--out", tmp_path / "ab")
    assert code == 0 and "ids translated to the original ones through user_list.txt (6 ids) and item_list.txt" in said
    ds = Dataset.load(tmp_path / "ab")
    org = {line.split()[1]: line.split()[0] for line in (release / "item_list.txt").read_text().splitlines()[1:]}
    users = {line.split()[1]: line.split()[0] for line in (release / "user_list.txt").read_text().splitlines()[1:]}
    expected = sorted((users[line.split()[0]], org[i]) for line in (release / "train.txt").read_text().splitlines()
                      for i in line.split()[1:])
    assert sorted(ds.train.select("user_id", "item_id").iter_rows()) == expected and len(expected) == 27
    assert ds.test.height == 5 and ds.manifest["source"]["id_maps"]["item_id"] == {"file": "item_list.txt", "ids": 10}
    items = ds.items.filter(ds.items["item_id"] == "0553092626")
    assert items["remap_id"].to_list() == ["0"] and items.schema["remap_id"] == ds.items.schema["item_id"]
    # the same map given as the --meta file, as LightGCN ships it (space-separated .txt)
    code, said = run("prepare", release, "--format", "lightgcn", "--meta", release / "item_list.txt",
                     "--map", "item_id=org_id", "--out", tmp_path / "ab_txt")
    assert code == 0, said
    assert Dataset.load(tmp_path / "ab_txt").items["freebase_id"].to_list()[:1] == ["m.04fskk"]
    # a list in the release's original ids now means what it says
    recs, check = read_recommendations(folder / "recs_original_ids.csv", ds)
    assert (check.kept, check.unknown_users, check.unknown_items) == (3, 0, 0)


def test_20_a_zip_archive_is_refused_with_the_instruction(cases, tmp_path):
    archive = cases / "20-release-layouts" / "movielens" / "ml-1m.zip"
    for fmt in ("movielens", "csv"):
        code, said = run("prepare", archive, "--format", fmt, "--out", tmp_path / "ml")
        assert code == 1 and "is a zip archive of 3 files" in said and "unzip it first (unzip ml-1m.zip)" in said, said
    import zipfile

    zipfile.ZipFile(archive).extractall(tmp_path)  # what the message says to do
    code, said = run("prepare", tmp_path / "ml-1m", "--format", "movielens", "--out", tmp_path / "ml")
    assert code == 0 and "12" in said, said


# -- the commonest log of all: user, item (and a count) without a rating ------------------------------

def test_an_interaction_log_without_ratings_prepares_as_implicit_feedback(data_root, tmp_path):
    """Musical Instruments' (user, item, time) pairs, as a click/purchase log in csv, jsonl and
    parquet, with a play count; one pair logged twice."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    mi = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    with gzip.open(mi, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(3000), f)]
    log = pl.DataFrame({"user": [r["reviewerID"] for r in rows], "item": [r["asin"] for r in rows],
                        "plays": [len(r["reviewText"]) % 7 + 1 for r in rows],
                        "timestamp": [r["unixReviewTime"] for r in rows]})
    log = pl.concat([log, log.head(1).with_columns(pl.col("timestamp") + 1)])  # the same pair played again
    pairs = log.select("user", "item").unique().height
    paths = {"csv": tmp_path / "log.csv", "jsonl": tmp_path / "log.jsonl", "parquet": tmp_path / "log.parquet"}
    log.write_csv(paths["csv"]), log.write_ndjson(paths["jsonl"]), log.write_parquet(paths["parquet"])
    for fmt, path in paths.items():
        code, said = run("prepare", path, "--format", fmt, "--map", "user_id=user", "--map", "item_id=item",
                         "--map", "weight=plays", "--out", tmp_path / fmt)
        assert code == 0 and "no ratings (implicit feedback)" in said, (fmt, said)
        ds = Dataset.load(tmp_path / fmt)
        assert ds.manifest["feedback"] == "implicit" and not ds.has_ratings
        assert ds.interactions.height == pairs and ds.interactions["rating"].null_count() == pairs
        dup = {s["step"]: s for s in ds.manifest["steps"]}["drop_duplicates"]
        assert (dup["duplicate_pairs"], dup["dropped_duplicates"]) == (1, 1)
        assert ds.interactions.schema["weight"] == pl.Float64
        assert ds.interactions["weight"].sum() == log["plays"].sum() - log["plays"][0]  # the latest play kept
    code, said = run("train", tmp_path / "csv", "--model", "als", "--out", tmp_path / "als", "--set", "search=false")
    assert code == 0, said
    # a column that looks like a rating is not ignored: it must be named
    stars = tmp_path / "stars.csv"
    log.rename({"plays": "stars"}).write_csv(stars)
    code, said = run("prepare", stars, "--format", "csv", "--map", "user_id=user", "--map", "item_id=item",
                     "--out", tmp_path / "stars")
    assert code == 1 and "--map rating=COLUMN" in said


# -- the old kinds still open: RecBole --map on every atomic file, metrics edge cases, \r in a sample --

def test_recbole_map_applies_to_every_atomic_file(data_root, tmp_path):
    """A RecBole dataset whose item id column is `product` in the .inter and the .item alike,
    and whose user id column is `reviewer` in the .inter and the .user."""
    from feedbackgen.data.dataset import Dataset

    mi = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    with gzip.open(mi, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(400), f)]
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "shop.inter").write_text("reviewer:token\tproduct:token\trating:float\ttimestamp:float\n" + "".join(
        f"{r['reviewerID']}\t{r['asin']}\t{r['overall']}\t{r['unixReviewTime']}\n" for r in rows))
    items = sorted({r["asin"] for r in rows})
    (folder / "shop.item").write_text("product:token\ttitle:token_seq\tprice:float\n" + "".join(
        f"{asin}\tItem {asin}\t{n + 0.5}\n" for n, asin in enumerate(items)))
    users = sorted({r["reviewerID"] for r in rows})
    (folder / "shop.user").write_text("reviewer:token\tage:float\n" + "".join(f"{u}\t{30 + n % 9}\n"
                                                                                for n, u in enumerate(users)))
    code, said = run("prepare", folder, "--format", "recbole", "--map", "user_id=reviewer", "--map",
                     "item_id=product", "--out", tmp_path / "ds")
    assert code == 0 and "missing" not in said, said
    ds = Dataset.load(tmp_path / "ds")
    kept = set(ds.interactions["item_id"])
    titled = dict(ds.items.select("item_id", "title").iter_rows())
    assert kept <= set(titled) and all(titled[i] == f"Item {i}" for i in kept)
    assert ds.manifest["problems"]["skipped"] == 0


def test_metrics_on_one_sample_and_on_empty_files(tmp_path):
    one, features = tmp_path / "one.txt", tmp_path / "features.txt"
    one.write_text("great sound for the price\n")
    features.write_text("sound\nprice\n")
    code, said = run("metrics", "--generated", one, "--references", one, "--feature-set", features, "--json")
    got = json.loads(said[said.index("{"):])  # strict JSON: json.loads would take NaN, so check the text too
    assert code == 0 and got["div"] is None and "NaN" not in said and got["fcr"] == 1.0
    code, said = run("metrics", "--generated", one, "--references", one, "--feature-set", features)
    assert code == 0 and "div undefined" in said
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, said = run("metrics", "--generated", empty, "--references", empty, "--json")
    assert code == 1 and "empty.txt: holds no samples" in said and "NaN" not in said
    blank = tmp_path / "blank.txt"  # one sample with no tokens: scored, in strict JSON
    blank.write_text("\n")
    code, said = run("metrics", "--generated", blank, "--references", blank, "--json")
    assert code == 0 and "NaN" not in said and json.loads(said[said.index("{"):])["usn"] == 1


def test_09_a_carriage_return_inside_a_sample_separates_tokens(cases):
    folder = cases / "09-line-endings"
    scores = {}
    for pair in (("gen_cr.txt", "ref_cr.txt"), ("gen_cr_as_space.txt", "ref_cr_as_space.txt")):
        code, said = run("metrics", "--generated", folder / pair[0], "--references", folder / pair[1], "--json")
        assert code == 0, said
        scores[pair[0]] = json.loads(said[said.index("{"):])
    assert scores["gen_cr.txt"] == scores["gen_cr_as_space.txt"]
    assert scores["gen_cr.txt"]["bleu1"] == pytest.approx(100) == scores["gen_cr.txt"]["rouge1_f_official"]
