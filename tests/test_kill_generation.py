"""`feedbackgen generate` killed for real (SIGKILL, at a seeded random moment) and rerun: the final
file equals an uninterrupted run's, byte for byte: no row lost, none duplicated.

A tiny PETER trained on a real slice answers 1,600 real (user, item) pairs of the PETER-format
Musical Instruments data in 50 shards of 32 (two batches each), so a run takes seconds and a kill
lands mid-job (the two kills stop after at most 16 + 16 new shards).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

N_REQUESTS = 1600
SHARD = 32


@pytest.fixture(scope="module")
def job(data_root, tiny_peter_folder, tmp_path_factory):
    from feedbackgen.data.peter_format import read_peter

    root = tmp_path_factory.mktemp("kill_job")
    shutil.copytree(tiny_peter_folder, root / "model")  # TINY, 3 epochs on support.peter_slice
    df, _ = read_peter(Path(data_root) / "peter_format_musical_instruments")
    pairs = df.select("user_id", "item_id").head(N_REQUESTS)
    (root / "req.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs.iter_rows(named=True)))
    return root


def command(job: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("feedbackgen")), "generate", str(job / "model"),
            "--requests", str(job / "req.jsonl"), "--out", str(out), "--shard-size", str(SHARD),
            "--batch-size", "16", "--max-new-tokens", "15"]


def shards(parts: Path) -> int:
    return len(list(parts.glob("shard-*.jsonl"))) if parts.is_dir() else 0


def start_and_kill(cmd: list[str], env: dict, parts: Path, rng: random.Random) -> int:
    """Start `cmd` and SIGKILL it at a random moment: after a random number (2 to 16) of new shards,
    plus a random part of the time one shard took, so the kill can land anywhere in a shard's life
    (generating, writing, renaming) on a slow machine or a fast one. Returns the shards on disk."""
    target = shards(parts) + 2 + rng.randrange(15)
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, changed, gap = shards(parts), time.time(), 0.0
    deadline = time.time() + 120
    while seen < target and child.poll() is None and time.time() < deadline:
        time.sleep(0.002)
        if (now := shards(parts)) != seen:
            seen, gap, changed = now, time.time() - changed, time.time()
    time.sleep(rng.random() * gap)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run ended before the kill: give it more requests"
    return shards(parts)


# a second seed (other kill points) under make test-all: make test stays under 10 minutes
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_generate_killed_twice_and_rerun_equals_an_uninterrupted_run(job, tmp_path, seed):
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    straight = subprocess.Popen(command(job, tmp_path / "straight.jsonl"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out, parts = tmp_path / "killed.jsonl", tmp_path / "killed.jsonl.parts"
    first = start_and_kill(command(job, out), env, parts, rng)
    second = start_and_kill(command(job, out), env, parts, rng)
    assert 0 < first < second < N_REQUESTS // SHARD, (first, second)  # each run resumed, none finished
    assert not out.exists()

    done = subprocess.run(command(job, out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err[-3000:]
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    requests = [json.loads(x) for x in (job / "req.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["item_id"]) for r in rows] == [(r["user_id"], r["item_id"]) for r in requests]
    # what is left beside the output: nothing from the killed runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.jsonl", "straight.jsonl"]
