"""The field cases of round two (15-25, and the old kinds still open), through the command line as
a user meets it: the exit status (`feedbackgen.cli.app._run`, what `main` hands to sys.exit, and a
real `feedbackgen` process for the pipeline's view), the recommendation lists, the LLM servers
that misbehave and the release layouts. Inputs are read where they lie (`$FEEDBACKGEN_FIELD_CASES`);
only variants built for a test are written, to tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedbackgen.cli.app import _run


@pytest.fixture(scope="module")
def cases(field_cases_root) -> Path:
    return field_cases_root


def run(capsys, *args) -> tuple[int, str]:
    """`feedbackgen ARGS` in this process: its exit status and all it printed, on one line."""
    code = _run([str(a) for a in args])
    said = capsys.readouterr()
    return code, " ".join((said.out + said.err).split())


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


def test_17_every_command_exits_non_zero_on_a_planted_failure(capsys, tmp_path):
    for args, status, words in planted_failures(tmp_path):
        code, said = run(capsys, *args)
        assert code == status and words in said, (args, code, said)
        assert "Traceback" not in said, args


def test_17_the_process_exit_status_is_what_a_pipeline_sees(tmp_path):
    """The installed entry point, as a shell script or CI job runs it."""
    for args, status, words in [(["fidelity", "--no-review"], 2, "Did you mean --no-reviews"),
                                (["metrics", "--generated", tmp_path / "g.txt", "--references", tmp_path / "r.txt"],
                                 1, "error:")]:
        proc = subprocess.run([sys.executable, "-c", "from feedbackgen.cli import main; main()", *map(str, args)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == status and words in " ".join(proc.stderr.split()), proc.stderr
