"""Every command's `--help` example runs as written, on the demo data.

The examples are read from the commands themselves (the "Example: `...`" of each help text), so a
new command or a changed example is tested without touching this file. They run in one scratch
folder, in the order of the flow (prepare, train, generate, evaluate, ... serve), with the demo's
file names: `reviews_Musical_Instruments_5.json.gz` there is a slice of the real file (its first
reviews, so that the whole test stays short) and `agent4rec/` a slice of the Agent4Rec split. What an
example reads but no earlier example wrote — a model folder, a prediction or recommendation file,
G.txt — is made first with the ordinary commands, on the dataset the example names. Commands run in
process (one import of torch for all); the servers run as processes and must become ready (/readyz).

Also: an option name that does not exist is answered with the closest valid one.
"""

from __future__ import annotations

import glob
import gzip
import itertools
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from feedbackgen.cli import app

MI_REVIEWS = 400  # the first reviews of the Musical Instruments file: about 40 items
A4R_USERS = 60
ORDER = ("prepare", "train", "models", "generate", "evaluate", "report", "metrics", "recommend", "simulate",
         "fidelity", "api-key", "annotate create", "annotate report", "serve", "annotate serve", "events export")
SERVERS = ("serve", "annotate serve")
# settings that make a model folder an example needs quick to train; the example itself is never changed
QUICK = {"peter": ["--set", "max_epochs=1", "--set", "emsize=32", "--set", "nhid=64", "--set", "nhead=2",
                   "--set", "nlayers=1", "--set", "vocab_size=2000"],
         "ease": ["--set", "search=false"], "itemknn": ["--set", "search=false"]}
# a model folder's name in the examples -> the model it holds, where the two differ
MODEL_OF = {"user": "simulated_user", "pepler": "prompt_lm"}


def _commands() -> dict[str, click.Command]:
    def walk(command, prefix):
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, prefix + [name])
        else:
            yield " ".join(prefix), command
    return dict(walk(typer.main.get_command(app), []))


def _examples() -> list[tuple[str, str]]:
    found = []
    for name, command in _commands().items():
        for example in re.findall(r"Example: `([^`]*)`", " ".join((command.help or "").split())):
            found.append((name, example))
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda e: rank.get(e[0], len(ORDER)))


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise AssertionError(f"`feedbackgen {shlex.join(args)}` exited {result.exit_code}: {result.output[-3000:]}"
                             f" {result.exception!r}")
    return result.output


class Workspace:
    """The scratch folder and what has been made in it (model folder -> dataset it was trained on)."""

    def __init__(self, root: Path):
        self.root, self.trained = root, {}

    def dataset_of(self, args: list[str]) -> str:
        return args[args.index("--dataset") + 1] if "--dataset" in args else "data/mi"

    def ensure(self, args: list[str]) -> None:
        """Make what `args` reads and no earlier example wrote (module docstring)."""
        outputs = {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--out"}
        dataset = self.dataset_of(args)
        for token in args:
            if token in outputs or token.startswith("-"):
                continue
            if token in ("data/mi", "data/a4r"):
                self.dataset(token)
            elif token.startswith("models/"):
                self.model(token, dataset)
            elif token.startswith("pred/") and token.endswith(".jsonl"):
                self.prediction(token)
            elif token.startswith("recs/"):
                self.recommendations(token)
            elif token in ("G.txt", "R.txt"):
                Path(token).write_text("great sound for the price\nthe cable works\n", encoding="utf-8")
            elif token == "reports/mi" and not Path(token).exists():
                _run(["evaluate", *glob.glob("pred/*.jsonl"), "--dataset", "data/mi", "--out", "reports/mi"])
            elif token == "tasks/mi" and not Path(token).exists():
                _run(["annotate", "create", "--predictions", *glob.glob("pred/*.jsonl"), "--dataset", "data/mi",
                      "--out", "tasks/mi"])

    def dataset(self, path: str) -> None:
        if Path(path, "manifest.json").exists():
            return
        if path == "data/mi":
            _run(["prepare", "reviews_Musical_Instruments_5.json.gz", "--format", "amazon2014", "--out", path])
        else:
            _run(["prepare", "agent4rec", "--format", "lightgcn", "--meta", "agent4rec/movie_detail.csv",
                  "--map", "item_id=movie_id", "--out", path])

    def model(self, path: str, dataset: str) -> None:
        if self.trained.get(path) == dataset:
            return
        self.dataset(dataset)
        name = MODEL_OF.get(Path(path).name, Path(path).name)
        _run(["train", dataset, "--model", name, "--out", path, *QUICK.get(name, [])])
        self.trained[path] = dataset

    def prediction(self, path: str) -> None:
        if not Path(path).exists():
            model = "models/" + Path(path).stem
            self.model(model, "data/mi")
            _run(["generate", model, "--dataset", "data/mi", "--split", "test", "--out", path])

    def recommendations(self, path: str) -> None:
        if Path(path).exists():
            return
        self.model("models/ease", "data/mi")
        users = pl.read_parquet("data/mi/interactions.parquet").filter(pl.col("split") == "test")["user_id"]
        Path("users.txt").write_text("\n".join(users.unique(maintain_order=True).head(20)) + "\n", encoding="utf-8")
        _run(["recommend", "models/ease", "--dataset", "data/mi", "--users", "users.txt", "--out", "recs/ease.parquet"])
        recs = pl.read_parquet("recs/ease.parquet").select("user_id", "item_id", "rank")
        if path.endswith(".csv"):
            recs.write_csv(path)
        elif path.endswith(".jsonl"):
            recs.write_ndjson(path)
        else:
            recs.write_parquet(path)


@pytest.fixture(scope="module")
def workspace(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    source = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    with gzip.open(source, "rt", encoding="utf-8") as f, \
            gzip.open(root / "reviews_Musical_Instruments_5.json.gz", "wt", encoding="utf-8") as out:
        out.writelines(itertools.islice(f, MI_REVIEWS))
    a4r = root / "agent4rec"
    a4r.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        lines = (data_root / "movielens_1m_agent4rec" / name).read_text(encoding="utf-8").splitlines()
        (a4r / name).write_text("\n".join(lines[:A4R_USERS]) + "\n", encoding="utf-8")
    (a4r / "movie_detail.csv").write_bytes((data_root / "movielens_1m_agent4rec" / "movie_detail.csv").read_bytes())
    before = os.getcwd()
    os.chdir(root)
    try:
        yield Workspace(root)
    finally:
        os.chdir(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _serve(args: list[str]) -> None:
    """Start the server as written (on a free port when its port is taken by someone else's run) and
    wait until /readyz answers 200 (every model and the dataset loaded); then stop it."""
    if "--port" not in args and _port_taken(8000):  # the commands' default port
        args += ["--port", str(_free_port())]
    elif "--port" in args and _port_taken(int(args[args.index("--port") + 1])):
        args[args.index("--port") + 1] = str(_free_port())
    port = int(args[args.index("--port") + 1]) if "--port" in args else 8000
    proc = subprocess.Popen([sys.executable, "-m", "feedbackgen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"`feedbackgen {shlex.join(args)}` exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    assert answer.status == 200
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"`feedbackgen {shlex.join(args)}` was not ready (/readyz) in 180 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


EXAMPLES = _examples()


def test_every_command_has_an_example():
    names = {name for name, _ in EXAMPLES}
    assert set(_commands()) <= names, f"commands without an `Example:` in --help: {set(_commands()) - names}"


SLOW_EXAMPLES = {"evaluate:4"}  # the full report with embeddings and naturalness: under make test-all


@pytest.mark.parametrize("command,example", [
    pytest.param(n, e, id=f"{n}:{i}", marks=[pytest.mark.slow] if f"{n}:{i}" in SLOW_EXAMPLES else [])
    for i, (n, e) in enumerate(EXAMPLES)])
def test_help_example_runs_as_written(workspace, command, example):
    words = shlex.split(example)
    assert words[0] == "feedbackgen", f"{command}: the example should start with `feedbackgen`: {example}"
    args = [expanded for word in words[1:] for expanded in (sorted(glob.glob(word)) or [word] if "*" in word else [word])]
    workspace.ensure(args)
    if command in SERVERS:
        _serve(args)
    else:
        _run(args)
    out = args[args.index("--out") + 1] if "--out" in args else None
    if out:
        assert Path(out).exists(), f"`{example}` wrote nothing at {out}"
        if command == "train":
            workspace.trained[out] = workspace.dataset_of(args)


def test_a_misspelt_option_names_the_closest_one():
    """Click's "Did you mean" must survive the one-line error handler (feedbackgen.cli.main)."""
    result = subprocess.run([sys.executable, "-m", "feedbackgen.cli", "fidelity", "--no-review"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--no-reviews" in result.stderr, result.stderr
