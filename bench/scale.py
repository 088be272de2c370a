"""`prepare` and `generate` on millions of reviews: wall time and peak memory as the input grows.

    python bench/scale.py                                  # 0.5M, 1M and 5M rows
    python bench/scale.py --sizes 50000,100000             # a quick run (a couple of minutes)
    python bench/scale.py --work /big/disk --chunk-rows 100000 --keep

Input: the Amazon Musical Instruments 5-core reviews (10,261, amazon2014 JSON lines) replicated
with new ids (copy c renames user U to U-rC and item I to I-rC) until the size asked for, written
uncompressed to `--work` (default: the system's temp folder, never the repository) and reused by
later runs. Each size then runs, each in its own subprocess so its peak memory is its own:

- prepare: `feedbackgen prepare INPUT --format amazon2014 --set explanations=off --chunk-rows N`
  (aspect mining is a Python pass over every training review: left out here, see docs/scale.md);
- generate: `feedbackgen generate MODEL --requests REQUESTS.parquet` for every (user, item) of
  the prepared dataset, with `popular` (rating from the `bias` baseline) fitted once on copy 0.

Columns: rows of input, input MB, wall seconds and peak resident memory (the subprocess's
ru_maxrss, from wait4) of each step, and rows/s end to end (input rows / (prepare + generate s)).
Times depend on what else runs on the machine; the bench never asserts them.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402

from feedbackgen.tables import number, table_lines  # noqa: E402

SOURCE = "amazon_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz"
CLI = [sys.executable, "-c", "from feedbackgen.cli import main; main()"]


def data_dir() -> Path:
    from feedbackgen.data.paths import data_dir as find

    return find()


def _templates(source: Path) -> list[tuple[bytes, bytes, bytes]]:
    """Each review line cut around its two ids, so a copy is written without parsing JSON again.
    The line's text before the user id, between the two ids, after the item id (ids kept)."""
    import json

    out = []
    with gzip.open(source, "rb") as f:
        for raw in f:
            record = json.loads(raw)
            user, item = record["reviewerID"].encode(), record["asin"].encode()
            u = raw.index(b'"reviewerID": "' + user + b'"') + len(b'"reviewerID": "') + len(user)
            i = raw.index(b'"asin": "' + item + b'"') + len(b'"asin": "') + len(item)
            if not u < i:
                raise SystemExit("expected reviewerID before asin in every line")
            out.append((raw[:u], raw[u:i], raw[i:].rstrip(b"\n") + b"\n"))
    return out


def build_input(rows: int, work: Path) -> Path:
    """`rows` replicated reviews as JSON lines in `work` (built once, then reused)."""
    path = work / f"mi_x{rows}.json"
    if path.exists():
        return path
    templates = _templates(data_dir() / SOURCE)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb", buffering=1 << 22) as f:
        written, copy = 0, 0
        while written < rows:
            suffix = f"-r{copy}".encode()
            for head, middle, tail in templates[: rows - written]:
                f.write(head + suffix + middle + suffix + tail)
            written += min(len(templates), rows - written)
            copy += 1
    os.replace(tmp, path)
    return path


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of `command`, run as a child of its own."""
    # stderr goes to a file, not a pipe: nobody reads a pipe during wait4, and a long run's progress
    # bar filled one and stalled the child
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            stderr = err.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(command[3:])} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def prepare_command(source: Path, out: Path, chunk_rows: int, work: Path) -> list[str]:
    return [*CLI, "prepare", str(source), "--format", "amazon2014", "--out", str(out),
            "--set", "explanations=off", "--chunk-rows", str(chunk_rows), "--workdir", str(work)]


def model(work: Path, env: dict[str, str], chunk_rows: int) -> Path:
    """`popular` (ratings from `bias`) fitted on copy 0 of the replicated reviews (built once)."""
    folder = work / "popular-copy0"
    if (folder / "config.json").exists():
        return folder
    copy0 = build_input(10_261, work)
    run(prepare_command(copy0, work / "copy0-dataset", chunk_rows, work), env)
    run([*CLI, "train", str(work / "copy0-dataset"), "--model", "popular", "--out", str(folder),
         "--set", "target=review", "--set", "rating_model=bias"], env)
    return folder


def requests_for(dataset: Path, out: Path) -> None:
    """Every (user, item) of the prepared dataset, streamed into a Parquet requests file."""
    import polars as pl

    (pl.scan_parquet(dataset / "interactions.parquet").select("user_id", "item_id")
     .sink_parquet(out, engine="streaming"))


def measure(rows: int, work: Path, env: dict[str, str], chunk_rows: int, keep: bool) -> dict:
    source = build_input(rows, work)
    folder = work / f"run-{rows}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    prep_s, prep_mb = run(prepare_command(source, folder / "dataset", chunk_rows, folder), env)
    requests_for(folder / "dataset", folder / "requests.parquet")
    gen_s, gen_mb = run([*CLI, "generate", str(model(work, env, chunk_rows)), "--requests",
                         str(folder / "requests.parquet"), "--out", str(folder / "pred.jsonl")], env)
    if not keep:
        shutil.rmtree(folder)
    return {"rows": rows, "input_mb": source.stat().st_size / 2**20, "prepare_s": prep_s, "prepare_mb": prep_mb,
            "generate_s": gen_s, "generate_mb": gen_mb, "rows_per_s": rows / (prep_s + gen_s)}


def table(results: list[dict]) -> str:
    head = ["rows", "input MB", "prepare wall s", "prepare peak RSS MB", "generate wall s", "generate peak RSS MB",
            "rows/s"]
    specs = {"rows": ",d", "input_mb": ",.0f", "prepare_s": ".1f", "prepare_mb": ",.0f", "generate_s": ".1f",
             "generate_mb": ",.0f", "rows_per_s": ",.0f"}
    rows = ([number(r[k], spec) for k, spec in specs.items()] for r in results)
    return "\n".join(table_lines(head, rows, align="r" * len(head)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="500000,1000000,5000000", help="input rows, comma-separated")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "feedbackgen-scale",
                        help="folder for the replicated inputs (kept and reused) and each run's outputs")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="prepare's --chunk-rows")
    parser.add_argument("--keep", action="store_true", help="keep each run's dataset and predictions")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    work = args.work.resolve()
    repo = Path(__file__).resolve().parent.parent
    if work == repo or repo in work.parents:
        raise SystemExit(f"--work {work} is inside the repository; choose a folder outside it")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = []
    for rows in sizes:
        results.append(measure(rows, work, env, args.chunk_rows, args.keep))
        print(f"{rows:,} rows done", file=sys.stderr)
    print(f"prepare (--chunk-rows {args.chunk_rows:,}, random split, explanations off) and generate "
          f"(`popular` + `bias`, every (user, item) of the dataset) on {cpu_model()}, {os.cpu_count()} CPUs\n")
    print(table(results))


if __name__ == "__main__":
    main()
