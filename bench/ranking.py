"""Ranking by predicted rating against the popularity and MF baselines: HR@K and NDCG@K, one table.

    python bench/ranking.py                            # Musical Instruments, popularity + MF
    python bench/ranking.py --model-dir models/peter   # add a row per saved model folder
    python bench/ranking.py --dataset data/mi --max-users 500

Protocols (`feedbackgen.recommend.evaluate_ranking`): `full` ranks every item a test user has not
interacted with in train or valid; `sampled` ranks each test item among 99 items the user never
interacted with (He et al., NCF, WWW 2017). K = 5, 10, 20. `popular` and `retrieval` rank by the
biased MF inside them, so they would repeat the MF row: they are not listed separately.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

MI = ("amazon_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz", "amazon2014")


def load_dataset(path: Path | None):
    """A prepared dataset folder, or Musical Instruments prepared by default (random 8:1:1, seed 1)."""
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.data.paths import data_dir
    from feedbackgen.data.prepare import prepare

    if path is not None:
        return Dataset.load(path), path.name
    source, fmt = MI
    return prepare([data_dir() / source], fmt, split="random", seed=1, progress=False), "Musical Instruments"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="a prepared dataset folder (default: prepare MI)")
    parser.add_argument("--model-dir", type=Path, nargs="*", default=[], help="saved model folder(s) to add")
    parser.add_argument("--max-users", type=int, help="a seeded sample of test users (for slow models)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from feedbackgen.models import create, load
    from feedbackgen.recommend import Popularity, evaluate_ranking, markdown_table

    t0 = time.time()
    dataset, label = load_dataset(args.dataset)
    models = {"popularity": Popularity().fit(dataset), "mf": create("mf").fit(dataset)}
    for folder in args.model_dir:
        model = load(folder)
        models[f"{model.name} ({folder.name})"] = model
    table = evaluate_ranking(models, dataset, seed=args.seed, max_users=args.max_users)
    print(f"{label}: {dataset.summary()}\n")
    print(markdown_table(table))
    print(f"\nhigher is better; {time.time() - t0:.0f}s on {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()
