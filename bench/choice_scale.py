"""Fit time and peak memory of the choice models on a synthetic 1M-interaction log.

    python bench/choice_scale.py                          # 6,000 users x 3,700 items, 1M interactions
    python bench/choice_scale.py --models ease als --interactions 2000000

The log has MovieLens-1M's shape: user activity log-normal, item popularity power-law (Zipf,
exponent 1), split 8:1:1 at random. Each model fits in a fresh process (so each peak RSS is its
own: loading the dataset, the fit and, for the default model, the validation search); the other
models fit with `search=false` at their default settings, which is what one candidate of their
search costs. The table says where each model stops scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from feedbackgen.tables import MISSING, number, table_lines

LIMITS = {
    "popularity": "no limit in practice: one count per item",
    "itemknn": "co-occurrences cost Σ_u (items of u)²; items x 1024 dense block (8 KB x items) + items x k sparse",
    "ease": "items x items dense float64, 2-3 copies: ~10k items in 4 GB, ~25k in 24 GB; O(items³) inverse",
    "als": "linear in interactions, (users + items) x factors: tens of millions on one machine",
    "bpr": "linear in interactions x epochs, (users + items) x factors; one thread (deterministic)",
}


def synthetic(users: int, items: int, interactions: int, seed: int):
    """A Dataset of `interactions` distinct (user, item) rows with power-law item popularity."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1)
    popularity /= popularity.sum()
    activity = rng.lognormal(0.0, 1.0, users)
    counts = np.clip(np.round(activity / activity.sum() * interactions), 5, items // 2)
    # the clip moved the total: scale once more towards `interactions`
    counts = np.clip(np.round(counts * interactions / counts.sum()), 5, items // 2).astype(int)
    user_col, item_col = [], []
    for u, n in enumerate(counts):
        user_col.append(np.full(n, u))
        item_col.append(rng.choice(items, size=n, replace=False, p=popularity))
    u, i = np.concatenate(user_col), np.concatenate(item_col)
    split = rng.choice(np.array(["train", "valid", "test"]), size=len(u), p=[0.8, 0.1, 0.1])
    return Dataset(pl.DataFrame({"user_id": pl.Series(u).cast(pl.Utf8), "item_id": pl.Series(i).cast(pl.Utf8),
                                 "rating": np.ones(len(u)), "split": split}))


def fit_one(model: str, dataset: Path, search: bool) -> dict:
    """Runs in the child process: load, fit, report."""
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.recommend.choice import create_choice

    ds = Dataset.load(dataset)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    fitted = create_choice(model, {"search": search}).fit(ds)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted.recommend(fitted.user_ids[:1000], k=10)
    return {"fit_s": fit_s, "recommend_1000_s": time.perf_counter() - t0, "rss_data_mb": rss_data,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "chosen": fitted.search_record["chosen"] if fitted.search_record else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=6000)
    parser.add_argument("--items", type=int, default=3700)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--models", nargs="*", default=["popularity", "ease", "itemknn", "als", "bpr"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=600, help="seconds one model may take")
    parser.add_argument("--fit", nargs=3, metavar=("MODEL", "DATASET", "SEARCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit:
        print(json.dumps(fit_one(args.fit[0], Path(args.fit[1]), args.fit[2] == "1")))
        return

    from feedbackgen.recommend.choice import DEFAULT_CHOICE_MODEL

    t0 = time.perf_counter()
    dataset = synthetic(args.users, args.items, args.interactions, args.seed)
    print(f"synthetic log: {dataset.summary()} ({time.perf_counter() - t0:.0f}s to make)\n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset.save(Path(tmp) / "ds")
        for model in args.models:
            search = model == DEFAULT_CHOICE_MODEL
            cmd = [sys.executable, __file__, "--fit", model, str(Path(tmp) / "ds"), "1" if search else "0"]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                cells = [number(r["fit_s"], ".1f"), number(r["recommend_1000_s"], ".1f"),
                         number(r["peak_rss_mb"] / 1024, ".2f"), number(r["rss_data_mb"] / 1024, ".2f"),
                         r["chosen"] or MISSING]
            except subprocess.TimeoutExpired:
                cells = [f"> {args.timeout}", *[MISSING] * 4]
            except subprocess.CalledProcessError as e:
                cells = [f"failed: {e.stderr.strip().splitlines()[-1]}", *[""] * 4]
            rows.append([model, "on" if search else "off", *cells, LIMITS.get(model, "")])
            print(f"  {model}: done", file=sys.stderr, flush=True)
    head = ["model", "validation search", "fit (s)", "recommend 1,000 users (s)", "peak RSS (GB)",
            "RSS after loading (GB)", "chosen", "stops scaling"]
    print("\n".join(table_lines(head, rows, align="llrrrrll")))
    print(f"\n{os.cpu_count()} CPU(s); the default model ({DEFAULT_CHOICE_MODEL}) fits with its validation search")


if __name__ == "__main__":
    main()
