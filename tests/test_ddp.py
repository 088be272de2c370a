"""Data-parallel training of `peter` under torchrun: 2 processes (gloo on CPU) on a real slice.

A run as a user starts it (`torchrun -m feedbackgen.cli train ...`) must load, generate, and track
a one-process run with the same global batch. A second run, killed after its first checkpoint and
resumed, goes through a small wrapper of the same command that dumps each rank's final weights: the
ranks must end identical (gradients averaged, the same early-stopping decisions), equal to what
rank 0 saved and to the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from feedbackgen.errors import ConfigError
from feedbackgen.models import create, load
from feedbackgen.models import distributed
from support import TINY, peter_slice, requests_of

# dropout off, so that one process and two draw no different random masks and differ only in how
# the batch's loss is averaged (over each rank's words, then over the ranks)
CFG = {**TINY, "dropout": 0.0, "id_dropout": 0.0, "max_epochs": 3, "batch_size": 32}

CHILD = textwrap.dedent("""
    import os, runpy, sys
    from safetensors.torch import save_file
    from feedbackgen.models import trainer
    from feedbackgen.models.peter import Peter

    dump, die = sys.argv[1], sys.argv[2] == "die"
    real_save = trainer.Trainer._save_checkpoint
    def save_then_die(self, path):
        real_save(self, path)
        if die and self.epoch == 1:
            os._exit(9)  # every rank, with nothing cleaned up, as after SIGKILL
    trainer.Trainer._save_checkpoint = save_then_die
    real_fit = Peter.fit
    def fit_and_dump(self, dataset):  # every rank's final weights, for the test to compare
        real_fit(self, dataset)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items() if k != "head.weight"},
                  f"{dump}/rank{os.environ['RANK']}.safetensors")
        return self
    Peter.fit = fit_and_dump
    sys.argv = ["feedbackgen", *sys.argv[3:]]
    runpy.run_module("feedbackgen.cli", run_name="__main__")  # = python -m feedbackgen.cli
""")


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=timeout)


def sets(cfg: dict) -> list[str]:
    return [x for k, v in cfg.items() for x in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def ds(data_root):
    return peter_slice(data_root)


def train_ddp(ds, folder, child: str | None = None) -> subprocess.CompletedProcess:
    """`torchrun -m feedbackgen.cli train` on 2 processes into folder/model, checkpoints in
    folder/ckpt; with `child` ("dump" or "die"), through CHILD instead, which dumps each rank's
    weights into folder/rankR.safetensors (or dies after the first checkpoint)."""
    folder.mkdir(exist_ok=True)
    data = folder.parent / "ds"
    if not data.exists():
        ds.save(data)
    args = ["train", str(data), "--model", "peter", "--out", str(folder / "model"),
            *sets({**CFG, "checkpoint_dir": str(folder / "ckpt")})]
    if child is None:
        return torchrun("-m", "feedbackgen.cli", *args)  # what a user runs
    script = folder.parent / "child.py"
    script.write_text(CHILD)
    return torchrun(str(script), str(folder), child, *args)


@pytest.fixture(scope="module")
def ddp_run(ds, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp") / "straight"
    proc = train_ddp(ds, folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc


def weights_of(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.model.state_dict().items() if k != "head.weight"}


def test_shard_splits_each_global_batch_between_ranks():
    idx = torch.arange(10, 17)
    parts = [distributed.shard(idx, distributed.World(r, 2)) for r in range(2)]
    assert parts[0].tolist() == [10, 12, 14, 16] and parts[1].tolist() == [11, 13, 15]
    # a last batch smaller than the world: the rank left without a row still takes part
    assert distributed.shard(torch.tensor([5]), distributed.World(2, 3)).tolist() == [5]
    assert distributed.current() == distributed.World(0, 1)  # no torchrun here: one process


def test_torchrun_trains_a_model_like_one_process_does(ds, ddp_run):
    folder, proc = ddp_run
    assert proc.stderr.count("trained peter") == 1  # only rank 0 reports and saves
    model = load(folder / "model")
    out = model.generate(requests_of(ds.test.head(10)), {"max_new_tokens": 10})
    assert len(out) == 10 and all(fb.text for fb in out)

    # one process with the same global batch: the same steps, and nearly the same losses
    log2 = model.training_log
    single = create("peter", CFG).fit(ds)
    log1 = single.training_log
    assert [e["world_size"] for e in log2] == [2, 2, 2] and "world_size" not in log1[0]
    assert [e["step"] for e in log2] == [e["step"] for e in log1] == [10, 20, 30]
    for e1, e2 in zip(log1, log2):  # measured: within 0.05 %
        for key in ("nll_text", "nll_context", "mse_rating"):
            assert e2["valid"][key] == pytest.approx(e1["valid"][key], rel=0.005), (e1["epoch"], key)
    assert log2[-1]["valid"]["loss"] < log2[0]["valid"]["loss"]  # and it learnt
    ratings = model.predict_rating(requests_of(ds.test))
    assert np.abs(ratings - single.predict_rating(requests_of(ds.test))).max() < 0.1
    # but not bit for bit: each rank saw only its half of each batch (had both ranks taken whole
    # batches, the averaged gradients, and so the weights, would equal the one-process run's)
    w1, w2 = weights_of(single), weights_of(model)
    assert not all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.slow  # make test keeps test_torchrun_trains_a_model_like_one_process_does and the one-process kill/resume tests
def test_ranks_agree_and_a_killed_run_resumes_to_the_same_weights(ds, ddp_run):
    straight = ddp_run[0]
    folder = straight.parent / "killed"
    killed = train_ddp(ds, folder, "die")
    assert killed.returncode != 0 and not (folder / "model").exists()
    assert (folder / "ckpt" / "checkpoint.safetensors").exists()
    resumed = train_ddp(ds, folder, "dump")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # both ranks end with the very same weights (gradients averaged, the same early stopping),
    # which are the weights rank 0 saved, and those of the uninterrupted run
    r0, r1 = (load_file(str(folder / f"rank{r}.safetensors")) for r in (0, 1))
    saved, uninterrupted = weights_of(load(folder / "model")), weights_of(load(straight / "model"))
    for other in (r1, saved, uninterrupted):
        assert other.keys() == r0.keys() and all(torch.equal(r0[k], other[k]) for k in r0)
    logs = [load(f / "model").training_log for f in (folder, straight)]
    assert [e["valid"] for e in logs[0]] == [e["valid"] for e in logs[1]]
    # the checkpoint of a 2-process run does not resume on 1 process
    with pytest.raises(ConfigError, match="written by a run on 2 process"):
        create("peter", {**CFG, "checkpoint_dir": str(folder / "ckpt")}).fit(ds)


def test_models_without_data_parallel_training_are_refused_under_torchrun(ds, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from feedbackgen.cli import app

    ds.save(tmp_path / "ds")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before joining any group
    result = CliRunner().invoke(app, ["train", str(tmp_path / "ds"), "--model", "popular",
                                      "--out", str(tmp_path / "model")])
    assert result.exit_code != 0 and "popular does not train data-parallel" in str(result.exception)
    assert not (tmp_path / "model").exists()
