"""Differentially private training of `peter` (DP-SGD with opacus) on a real slice.

The budget reported, saved and printed; per-row gradients that really are per row (tied weights
included); a DP run that resumes after an interruption to the same weights and budget; and the
settings DP cannot run with, refused with a message that says why.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from feedbackgen.cli import app
from feedbackgen.errors import ConfigError
from feedbackgen.models import create, load
from feedbackgen.models.peter import Peter
from feedbackgen.models.privacy import default_delta
from support import TINY, fit_interrupted_after_first_checkpoint, peter_slice, requests_of, tiny_net, weights

DP = {**TINY, "max_epochs": 2, "dp_epsilon": 8.0, "dp_seed": 0}


@pytest.fixture(scope="module")
def ds(data_root):
    return peter_slice(data_root)


def test_dp_training_reports_its_budget_and_the_model_round_trips(ds, tmp_path):
    ds.save(tmp_path / "ds")
    args = ["train", str(tmp_path / "ds"), "--model", "peter", "--out", str(tmp_path / "model")]
    unseeded = {k: v for k, v in DP.items() if k != "dp_seed"}  # as a user runs it
    args += [x for k, v in unseeded.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "privacy spent: ε = " in result.output  # printed at the end

    model = load(tmp_path / "model")
    p = model.privacy
    assert 0 < p["epsilon"] <= 8.0
    assert p["epsilon"] > 7.0  # the noise is calibrated to spend the budget over max_epochs
    assert p["delta"] == default_delta(300) == 1e-5
    assert p["noise_multiplier"] > 0 and p["max_grad_norm"] == 1.0 and p["steps"] > 0
    assert json.loads((tmp_path / "model" / "state.json").read_text())["privacy"] == p
    spent = [e["privacy"]["epsilon"] for e in model.training_log]  # and per epoch, growing
    assert len(spent) == 2 and 0 < spent[0] < spent[1] == p["epsilon"]
    out = model.generate(requests_of(ds.test.head(10)), {"max_new_tokens": 10})
    assert len(out) == 10 and all(fb.text for fb in out) and all(1 <= fb.rating <= 5 for fb in out)
    # a smaller budget means more noise; an explicit δ is kept
    tight = create("peter", {**DP, "max_epochs": 1, "dp_epsilon": 1.0, "dp_delta": 1e-6}).fit(ds)
    assert 0 < tight.privacy["epsilon"] <= 1.0 and tight.privacy["delta"] == 1e-6
    assert tight.privacy["noise_multiplier"] > p["noise_multiplier"]


def test_noise_and_sampling_are_secret_unless_seeded(monkeypatch):
    import opacus.accountants.utils

    from feedbackgen.models.privacy import Privacy, PrivacySettings

    monkeypatch.setattr(opacus.accountants.utils, "get_noise_multiplier", lambda **_: 1.0)  # not the point here

    def batches(seed):
        net = torch.nn.Linear(2, 1)
        p = Privacy(net, torch.optim.SGD(net.parameters(), lr=0.1), PrivacySettings(8.0, 1e-5, seed=seed),
                    n_train=1000, batch_size=100, steps=10)
        return [p.sample(1000).tolist() for _ in range(3)]

    assert batches(None) != batches(None)  # drawn from the OS: nobody can replay them
    assert batches(3) == batches(3) != batches(4)
    assert 50 < len(batches(3)[0]) < 150  # Poisson: about batch_size rows


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_row_losses_give_each_row_its_own_gradient():
    """What DP-SGD clips: opacus's per-row gradients of the DP loss equal each row's gradient
    alone, for every parameter (the word embedding tied to the word decoder included)."""
    from opacus import GradSampleModule

    from feedbackgen.models.vocab import BOS, EOS, PAD

    net = tiny_net().train()
    assert net.head.weight is net.word_emb.weight
    seq = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 8, EOS, PAD, PAD], [BOS, 9, 9, EOS, PAD]])
    batch = {"user": torch.tensor([1, 2, 3]), "item": torch.tensor([3, 4, 1]), "inputs": seq[:, :-1],
             "targets": seq[:, 1:], "rating": torch.tensor([5.0, 2.0, 3.0]), "rating_mask": torch.ones(3)}
    w = (1.0, 1.0, 0.1)
    gsm = GradSampleModule(net)
    net.losses(batch, w, per_row=True)["loss"].backward()
    per_row = {n: p.grad_sample.clone() for n, p in net.named_parameters()}
    gsm._close()
    for i in range(3):
        net.zero_grad()
        net.losses({k: v[i:i + 1] for k, v in batch.items()}, w)["loss"].backward()
        for n, p in net.named_parameters():
            assert torch.allclose(per_row[n][i], p.grad, atol=1e-5), n


def test_interrupted_dp_run_resumes_to_the_same_weights_and_budget(ds, tmp_path, monkeypatch):
    cfg = {**DP, "checkpoint_dir": str(tmp_path / "ckpt")}
    straight = create("peter", {**cfg, "checkpoint_dir": None}).fit(ds)
    fit_interrupted_after_first_checkpoint(cfg, ds, monkeypatch)
    resumed = create("peter", cfg).fit(ds)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the noise and the sampling resumed too
    assert resumed.privacy == straight.privacy


def test_settings_dp_cannot_run_with_are_refused(ds, monkeypatch):
    for stray in ({"dp_max_grad_norm": 0.5}, {"dp_delta": 1e-6}, {"dp_seed": 1}):
        with pytest.raises(ConfigError, match="set dp_epsilon too"):
            Peter(stray)
    with pytest.raises(ConfigError, match="dp_epsilon"):
        Peter({"dp_epsilon": -1})
    with pytest.raises(ConfigError, match=r"dp_delta \(0.01\) must be below 1 / training rows \(1/300"):
        create("peter", {**DP, "dp_delta": 0.01}).fit(ds)
    with pytest.raises(ConfigError, match=r"batch_size \(300\) must be below the number of training rows"):
        create("peter", {**DP, "batch_size": 300}).fit(ds)
    with pytest.raises(ConfigError, match="cannot be reached"):
        create("peter", {**DP, "dp_epsilon": 0.01}).fit(ds)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: refused before joining any group
    with pytest.raises(ConfigError, match="start it without torchrun"):
        create("peter", DP).fit(ds)
