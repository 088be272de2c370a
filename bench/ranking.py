"""Every choice model against ranking by predicted rating (MF): HR@K, NDCG@K and Recall@K, one table.

    python bench/ranking.py                            # Musical Instruments, every choice model + MF
    python bench/ranking.py --model-dir models/peter   # add a row per saved model folder (generator or choice)
    python bench/ranking.py --dataset data/mi --max-users 500 --choice ease popularity

Choice models (popularity, itemknn, ease, als, bpr, hybrid) fit on train, their hyper-parameters
chosen on valid by NDCG@10 (the fit time includes that search; the chosen values are printed).
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

import polars as pl

CHOICE_ORDER = ("popularity", "itemknn", "ease", "als", "bpr", "hybrid")
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
    parser.add_argument("--choice", nargs="*", default=list(CHOICE_ORDER), help="choice models to train")
    parser.add_argument("--max-users", type=int, help="a seeded sample of test users (for slow models)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from feedbackgen.models import create, load
    from feedbackgen.recommend import create_choice, evaluate_ranking, is_choice_folder, load_choice
    from feedbackgen.recommend.ranking import RANKING_FORMATS, simulator_name
    from feedbackgen.tables import markdown_table

    t0 = time.time()
    dataset, label = load_dataset(args.dataset)
    models, fit_s, chosen = {}, {}, {}
    for name in args.choice:
        t = time.perf_counter()
        models[name] = create_choice(name, {"seed": args.seed}).fit(dataset)
        fit_s[name] = time.perf_counter() - t
        if models[name].search_record is not None:
            chosen[name] = models[name].search_record["chosen"]
    t = time.perf_counter()
    models["mf"] = create("mf").fit(dataset)
    fit_s["mf"] = time.perf_counter() - t
    for folder in args.model_dir:
        model = load_choice(folder) if is_choice_folder(folder) else load(folder)
        models[simulator_name(model, None, folder)] = model
    t = time.perf_counter()
    table = evaluate_ranking(models, dataset, seed=args.seed, max_users=args.max_users)
    eval_s = time.perf_counter() - t
    table = table.with_columns(pl.col("model").replace_strict(fit_s, default=None, return_dtype=pl.Float64)
                               .alias("fit (s)"))
    print(f"{label}: {dataset.summary()}\n")
    print(markdown_table(table.select("model", "protocol", "queries", "candidates", "fit (s)",
                                      *[c for c in table.columns if "@" in c]),
                         formats={**RANKING_FORMATS, "fit (s)": ".1f"}))
    print("\nchosen on the valid split (NDCG@10): "
          + "; ".join(f"{name} {params}" for name, params in chosen.items()))
    print(f"\nhigher is better; fit (s) includes the validation search; ranking all models took {eval_s:.0f}s; "
          f"{time.time() - t0:.0f}s in all on {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()
