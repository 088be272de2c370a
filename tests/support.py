"""Helpers several test modules share: tiny PETER settings and networks, a slice of the PETER-format
Musical Instruments data, requests from rows, and a fit killed after its first checkpoint. (Shared
datasets are fixtures in conftest.py; test modules import nothing from one another.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from feedbackgen.data.dataset import Dataset
from feedbackgen.data.peter_format import read_peter
from feedbackgen.models import create
from feedbackgen.models import trainer as trainer_mod
from feedbackgen.models.peter import PETER, Peter, PeterShape
from feedbackgen.types import FeedbackRequest

TINY = dict(emsize=32, nhead=2, nlayers=2, nhid=64, dropout=0.1, max_epochs=2, batch_size=32,
            warmup_steps=5, lr=3e-3, progress=False, num_threads=1)


def peter_slice(root: Path, n_train: int = 300, n_valid: int = 40, n_test: int = 40) -> Dataset:
    df, split = read_peter(root / "peter_format_musical_instruments")
    df = df.with_columns(split)
    parts = [df.filter(pl.col("split") == s).head(n) for s, n in (("train", n_train), ("valid", n_valid),
                                                                  ("test", n_test))]
    return Dataset(pl.concat(parts))


def requests_of(df: pl.DataFrame, aspect: bool = False) -> list[FeedbackRequest]:
    return [FeedbackRequest(u, i, a if aspect else None)
            for u, i, a in df.select("user_id", "item_id", "aspect").iter_rows()]


def tiny_net(n_aspects: int = 0, norm_first: bool = True) -> PETER:
    torch.manual_seed(0)
    shape = PeterShape(n_users=5, n_items=6, n_aspects=n_aspects, n_tokens=20, emsize=16, nhead=2,
                       nlayers=2, nhid=32, dropout=0.0, norm_first=norm_first, max_len=64)
    return PETER(shape, mean_rating=4.0).eval()


def weights(m: Peter) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.model.state_dict().items()}


def run_until_first_checkpoint(train, monkeypatch) -> None:
    """Call `train()` until the trainer's first checkpoint is written, then stop as a kill would."""
    real_save = trainer_mod.Trainer._save_checkpoint

    def save_then_die(self, path):
        real_save(self, path)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(trainer_mod.Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(trainer_mod.Trainer, "_save_checkpoint", real_save)


def fit_interrupted_after_first_checkpoint(cfg: dict, ds: Dataset, monkeypatch) -> None:
    """Train peter with `cfg` until its first checkpoint is written, then stop as a kill would."""
    run_until_first_checkpoint(lambda: create("peter", cfg).fit(ds), monkeypatch)


def planted_rows(pools: Sequence[tuple[str, Sequence[str]]], per_split: tuple[int, int, int] = (4, 1, 1),
                 seed: int = 0) -> list[dict]:
    """The one planted-data builder: each user (`name`, `pool`) takes sum(per_split) distinct items
    drawn, seeded, from its pool: the first per_split[0] in train, then valid, then test. One dict
    per row: user_id, item_id, split and k (the row's place in its user's draw); tests add the
    rating and text they need."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * per_split[0] + ["valid"] * per_split[1] + ["test"] * per_split[2]
    rows = []
    for user, pool in pools:
        chosen = rng.choice(list(pool), size=len(splits), replace=False)
        rows += [{"user_id": user, "item_id": str(item), "split": split, "k": k}
                 for k, (item, split) in enumerate(zip(chosen, splits))]
    return rows
