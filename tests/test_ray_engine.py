"""`generate --engine ray`: the same bytes as the local engine, in-process and on a `ray start` cluster.

A tiny PETER trained on a real slice of the PETER-format Musical Instruments data answers 400
requests in shards of 50 (greedy decoding, seeded). The local engine's file is the reference; the
Ray engine must write exactly that file, resume an interrupted job from its Parquet shards, and
refuse bad engine settings with a one-line error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feedbackgen.config import Decoding
from feedbackgen.errors import FeedbackgenError
from feedbackgen.batch import requests_file, run_generation
from feedbackgen.batch import ray_engine
from feedbackgen.batch.ray_engine import run_generation_ray
from feedbackgen.models import load
from support import peter_slice

pytest.importorskip("ray")

DECODING = Decoding(max_new_tokens=12, batch_size=16, seed=1)
SHARD = 50
N_SHARDS = 8  # 400 test requests


@pytest.fixture(scope="module")
def job(data_root, tiny_peter_folder, tmp_path_factory):
    """A saved model (the session's tiny peter: TINY, 3 epochs on peter_slice's training rows), its
    dataset, the requests as JSONL and Parquet, and the local engine's output."""
    root = tmp_path_factory.mktemp("ray_job")
    ds = peter_slice(data_root, n_test=400)
    ds.save(root / "ds")
    shutil.copytree(tiny_peter_folder, root / "model")
    pairs = ds.split("test").select("user_id", "item_id")
    pairs.write_parquet(root / "req.parquet")
    (root / "req.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs.iter_rows(named=True)))
    run_generation(load(root / "model"), requests_file(root / "req.jsonl"), root / "local.jsonl", DECODING,
                   model_id=str((root / "model").resolve()), shard_size=SHARD, progress=False)
    return root


@pytest.fixture
def local_ray():
    """Ray started in this process with 2 CPUs; the engine uses a session its caller opened."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow  # make test keeps Ray through test_cli_on_a_ray_start_cluster_matches_the_local_engine
def test_in_process_ray_resumes_and_matches_the_local_engine(job, tmp_path, monkeypatch, local_ray):
    out, parts = tmp_path / "ray.jsonl", tmp_path / "ray.jsonl.parts"
    args = dict(workers=2, shard_size=SHARD, progress=False)
    # a model folder the driver can read but a worker cannot load: what a node without it meets
    broken = tmp_path / "broken"
    shutil.copytree(job / "model", broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FeedbackgenError, match="a Ray worker could not load the model .*same path on every node"):
        run_generation_ray(broken, tmp_path / "broken.jsonl", DECODING, requests=job / "req.jsonl", **args)
    real_write = ray_engine._write_shard
    written = []

    def write_then_die(path, rows):  # the driver dies after its third shard
        real_write(path, rows)
        written.append(path.name)
        if len(written) == 3:
            raise KeyboardInterrupt("killed after three shards")

    monkeypatch.setattr(ray_engine, "_write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_generation_ray(job / "model", out, DECODING, requests=job / "req.jsonl", **args)
    assert not out.exists()
    assert json.loads((parts / "job.json").read_text())["engine"] == "ray"
    first = sorted(p.name for p in parts.glob("shard-*.parquet"))
    assert first == sorted(written) and len(first) == 3
    assert pq.read_table(parts / first[0]).column_names == ["user_id", "item_id", "aspect", "rating", "text",
                                                            "model", "line"]

    written.clear()
    monkeypatch.setattr(ray_engine, "_write_shard", lambda path, rows: (written.append(path.name),
                                                                        real_write(path, rows)))
    # a job is its requests, not the file they came in: the rerun reads the same requests from the
    # dataset's test split (the --dataset form) and resumes
    _, n = run_generation_ray(job / "model", out, DECODING, dataset=job / "ds", split="test", **args)
    assert n == 400
    assert sorted(written + first) == [f"shard-{k:05d}.parquet" for k in range(N_SHARDS)]  # none twice
    assert out.read_bytes() == (job / "local.jsonl").read_bytes()
    assert not parts.exists()
    assert local_ray.is_initialized()  # the caller's session is left to the caller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """A real `ray start --head` (2 CPUs) in its own session, killed whole afterwards: only the
    processes of that session, never another Ray on this machine."""
    port = free_port()
    # a throwaway cluster for one test: without token authentication, which docs/distributed.md sets up
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = head.communicate(timeout=60)
        assert head.returncode == 0, output
        yield f"127.0.0.1:{port}", env
    finally:
        kill_session(head.pid)
        # `ray start` registered its cluster as this machine's current one; it is gone now
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the head's daemons and the workers they forked)."""
    for line in subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.splitlines():
        pid, psid = map(int, line.split())
        if psid == sid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_cli_on_a_ray_start_cluster_matches_the_local_engine(job, tmp_path, ray_cluster):
    address, env = ray_cluster
    out = tmp_path / "cluster.jsonl"
    cmd = [str(Path(sys.executable).with_name("feedbackgen")), "generate", str(job / "model"),
           "--requests", str(job / "req.parquet"), "--out", str(out), "--engine", "ray", "--address", address,
           "--workers", "2", "--shard-size", str(SHARD), "--max-new-tokens", "12", "--batch-size", "16",
           "--seed", "1"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 400 feedback rows" in result.stderr
    assert out.read_bytes() == (job / "local.jsonl").read_bytes()
    assert not (tmp_path / "cluster.jsonl.parts").exists()


def run_cli(args: list[str], monkeypatch, capsys) -> str:
    from feedbackgen.cli import main

    monkeypatch.setattr(sys, "argv", ["feedbackgen", *args])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code != 0
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("extra,message", [
    (["--engine", "spark"], "unknown --engine 'spark'; choose local or ray"),
    (["--engine", "ray", "--workers", "0"], "--workers must be at least 1 (got 0)"),
    (["--workers", "2"], "--address and --workers go with --engine ray"),
    (["--engine", "ray", "--address", "127.0.0.1:{port}"], "cannot reach a Ray cluster at 127.0.0.1:{port}"),
    (["--engine", "ray", "--address", "nowhere"], "--address must be HOST:PORT, ray://HOST:PORT or auto"),
])
def test_bad_engine_settings_fail_in_one_line(job, tmp_path, monkeypatch, capsys, extra, message):
    port = free_port()  # nobody listens there
    extra = [x.format(port=port) for x in extra]
    err = run_cli(["generate", str(job / "model"), "--requests", str(job / "req.jsonl"),
                   "--out", str(tmp_path / "x.jsonl"), *extra], monkeypatch, capsys)
    assert message.format(port=port) in " ".join(err.split())
    assert len(err.splitlines()) <= 2  # one line, which rich may wrap
    assert not (tmp_path / "x.jsonl.parts").exists()
