"""The field cases of round two (15-25, and the old kinds still open), through the command line as
a user meets it: the exit status (`feedbackgen.cli.app._run`, what `main` hands to sys.exit, and a
real `feedbackgen` process for the pipeline's view), the recommendation lists, the LLM servers
that misbehave and the release layouts. Inputs are read where they lie (`$FEEDBACKGEN_FIELD_CASES`);
only variants built for a test are written, to tmp_path."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedbackgen.cli.app import _run


@pytest.fixture(scope="module")
def cases(field_cases_root) -> Path:
    return field_cases_root


def run(*args) -> tuple[int, str]:
    """`feedbackgen ARGS` in this process: its exit status and all it printed, on one line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
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
        code, said = run(*args)
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


def test_17_a_huge_k_is_a_clear_usage_error_or_the_whole_list(a4r, cases):
    ranked = cases / "17-rank-conventions" / "ranked_1based.csv"
    code, said = simulate(a4r, ranked, "--k", "1e20")
    assert code == 2 and "Invalid value for '--k'" in said
    code, said = simulate(a4r, ranked, "--k", str(10**20))
    assert code == 0 and "| ranked_1based | 50 | 500 |" in said, said


# -- recommendation lists read as meant or refused (15, 16, 17, 19) ---------------------------------

@pytest.fixture(scope="module")
def a4r(data_root, tmp_path_factory) -> dict:
    """Case 15's set-up: the Agent4Rec MovieLens-1M split prepared, and ALS trained on it."""
    root = tmp_path_factory.mktemp("a4r")
    source = data_root / "movielens_1m_agent4rec"
    assert _run(["prepare", str(source), "--format", "lightgcn", "--meta", str(source / "movie_detail.csv"),
                 "--map", "item_id=movie_id", "--out", str(root / "data")]) == 0
    assert _run(["train", str(root / "data"), "--model", "als", "--out", str(root / "als"),
                 "--set", "search=false"]) == 0
    return {"data": root / "data", "choice": root / "als", "root": root}


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
    return {row["recommender"]: {**row, "check": checks[row["recommender"]], "said": said}
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
    files += [cases / "15-recbole-internal-ids" / "recbole_external.csv",
              cases / "19-history-echo" / "ease_unfiltered.csv", padded]
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
    # asked to judge it anyway: its rows in the users' history are counted and left out
    forced = verdict(a4r, folder / "recbole_internal.csv", "--no-id-check")
    assert forced["check"]["in_history_rows"] > 0 and forced["items"] == 500 - forced["check"]["in_history_rows"]
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


def test_17_rank_conventions_are_detected(judged):
    reference = judged["ranked_1based"]
    assert (reference["users"], reference["items"]) == (50, 500) and "ranked_1based:" not in reference["said"]
    for name, words in (("ranked_0based", "0-based (shifted by one)"),
                        ("score_in_rank_column", "the rank column holds scores"),
                        ("scored_unsorted", "ordered by score, highest first")):
        assert same_verdict(judged[name], reference) and words in judged[name]["said"], name


def test_19_a_list_cannot_win_by_echoing_the_history(a4r, cases, judged):
    from feedbackgen.data.dataset import Dataset

    folder = cases / "19-history-echo"
    ds = Dataset.load(a4r["data"])
    history = set(ds.interactions.filter(ds.interactions["split"] != "test").select("user_id", "item_id").iter_rows())
    rows = [tuple(line.split(",")[:2]) for line in (folder / "ease_unfiltered.csv").read_text().splitlines()[1:]]
    owned = sum(r in history for r in rows)
    unfiltered = judged["ease_unfiltered"]
    assert owned >= 437 and unfiltered["in_history_rows"] == owned and unfiltered["items"] == 500 - owned
    assert "already in the user's train/valid history" in unfiltered["said"]
    code, said = simulate(a4r, folder / "echo_history.csv")
    assert code == 1 and "nothing in it can be judged" in said and "500 row(s) already in the user's" in said


def test_padded_and_short_lists_are_counted_beside_the_verdict(judged):
    got = judged["padded"]
    assert (got["items"], got["duplicates"], got["short_lists"]) == (150, 350, 50)
    assert "350 repeated (user, item) row(s)" in got["said"]
    assert "50 of 50 user(s) with a list shorter than k" in got["said"]
