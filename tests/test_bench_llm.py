"""bench/llm.py's split of generating (on a GPU machine) from scoring (here): the stored rows are
cut to the scored test rows, and a file with too few rows is refused by name."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_llm():
    sys.path.insert(0, str(BENCH))  # bench/llm.py imports bench/machine.py
    try:
        spec = importlib.util.spec_from_file_location("bench_llm", BENCH / "llm.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


PAIRS = [[f"u{k}", f"i{k}"] for k in range(10)]


def _raw(path: Path, n: int, row: str = "prompt_lm", pairs=PAIRS) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"row": row, "fit_s": 1.0, "gen_per_s": 2.0, "texts": [f"text {k}" for k in range(n)],
                            "ratings": [float(k % 5 + 1) for k in range(n)], "backend": "transformers",
                            "trained_on": 10, "answers": {}, "prompt_tokens": None, "machine": "GPU",
                            "pairs": pairs[:n]}) + "\n")


def test_stored_rows_are_cut_to_the_scored_test_rows(tmp_path, bench_llm):
    path = tmp_path / "raw.jsonl"
    _raw(path, 5)
    _raw(path, 7, "sft (LoRA)")
    rows = [r for done in bench_llm.read_raw([str(path)], PAIRS[:3]) for r in done]
    assert [r["row"] for r in rows] == ["prompt_lm", "sft (LoRA)"]
    assert [r["texts"] for r in rows] == [["text 0", "text 1", "text 2"]] * 2
    assert [r["ratings"] for r in rows] == [[1.0, 2.0, 3.0]] * 2


def test_a_file_with_fewer_rows_than_scored_is_refused_by_line_and_row(tmp_path, bench_llm):
    path = tmp_path / "raw.jsonl"
    _raw(path, 5)
    _raw(path, 2, "sft (LoRA)")
    with pytest.raises(SystemExit, match=r"raw.jsonl:2: row 'sft \(LoRA\)' has 2 texts, fewer than the 4"):
        list(bench_llm.read_raw([str(path)], PAIRS[:4]))


def test_texts_for_other_requests_are_refused_by_line_and_row(tmp_path, bench_llm):
    path = tmp_path / "raw.jsonl"
    other = PAIRS[:2] + [["u9", "i2"]] + PAIRS[3:]  # another split: row 2 answers another user
    _raw(path, 5, pairs=other)
    with pytest.raises(SystemExit, match=r"raw.jsonl:1: row .prompt_lm. answers other requests.*test row 2: stored \['u9', 'i2'\], expected \['u2', 'i2'\]"):
        list(bench_llm.read_raw([str(path)], PAIRS[:4]))
    assert len(next(bench_llm.read_raw([str(path)], PAIRS[:2]))[0]["texts"]) == 2  # the rows that agree


def test_generating_without_keeping_the_texts_is_refused(bench_llm, capsys):
    with pytest.raises(SystemExit):
        bench_llm.main(["--no-score", "--only", "retrieval"])
    assert "--no-score keeps nothing without --raw-out" in capsys.readouterr().err


def test_a_saved_models_training_time_and_rows_come_from_its_folder(tmp_path, bench_llm):
    (tmp_path / "training_log.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 12.5}) + "\n"
                                                 + json.dumps({"epoch": 2, "seconds": 7.5}) + "\n")
    (tmp_path / "training.json").write_text(json.dumps({"train_rows": 2000}))
    assert bench_llm.saved_training(tmp_path) == {"seconds": 20.0, "rows": 2000}
    assert bench_llm.saved_training(tmp_path / "missing") == {"seconds": None, "rows": None}
