"""Does generated feedback help? Augment the users with few reviews, retrain MF, compare: one table.

    python bench/augment.py                                  # Musical Instruments and Gift Cards
    python bench/augment.py --datasets mi --seeds 1 2 3 4 5
    python bench/augment.py --model-dir mi=models/peter      # add a generator trained on that dataset

For each dataset (prepared with the default pipeline: random 8:1:1 split, seed 1):

1. **none**: a biased MF (`mf`, its default settings) on the training split.
2. **+ generator**: for every *few-review user* (at most `--max-train-reviews` training reviews),
   `--per-user` items they never interacted with are drawn uniformly from the catalogue; the
   generator gives its feedback (rating + text) for each; those rows join the training split
   (marked `augmented`), and MF is retrained with the same settings and seed.

Each is scored on the real test split: RMSE over all test rows and over the few-review users' rows,
and NDCG@10 of ranking by predicted rating, full (all unseen items) and sampled (1 + 99), for all
test users and for the few-review users (`feedbackgen.recommend.ranking`; the candidate lists are built
once from the original dataset, so augmented items stay candidates and every run ranks the same
lists). Every figure is the mean over `--seeds` (the draw of items and MF's initialisation and
tie-breaking), ± the standard deviation across them.

Generators: `popular` with its own MF giving the ratings (MF taught by MF: self-training), and
`popular` with the bias baseline giving them (shrunk user + item biases); MF reads no text, so the
text of the added rows does not matter here and `retrieval` would repeat the first row. Pass a
trained `peter` (its rating head learnt from ratings and text together) with `--model-dir`.
An honest "it does not help" is a result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from feedbackgen.tables import number, table_lines

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = {
    "mi": ("Musical Instruments", "amazon_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz",
           None, "amazon2014"),
    "gift": ("Gift Cards", "amazon_gift_cards_5core_2018/Gift_Cards_5.json.gz",
             "amazon_gift_cards_5core_2018/meta_Gift_Cards.json.gz", "amazon2018"),
}
GENERATORS = {
    "popular (MF ratings)": ("popular", {"target": "review", "rating_model": "mf"}),
    "popular (bias ratings)": ("popular", {"target": "review", "rating_model": "bias"}),
}
METRICS = ("rmse_all", "rmse_few", "ndcg10_full_all", "ndcg10_full_few", "ndcg10_sampled_all", "ndcg10_sampled_few")


def prepare_dataset(key: str):
    from feedbackgen.data.paths import data_dir
    from feedbackgen.data.prepare import prepare

    _, source, meta, fmt = DATASETS[key]
    return prepare([data_dir() / source], fmt, meta=data_dir() / meta if meta else None, split="random",
                   seed=1, progress=False)


def few_review_users(dataset, max_train_reviews: int) -> list[str]:
    import polars as pl

    counts = dataset.train.group_by("user_id").len()
    return sorted(counts.filter(pl.col("len") <= max_train_reviews)["user_id"].to_list())


def augmented(dataset, generator, users: list[str], per_user: int, seed: int):
    """`dataset` with `per_user` generated rows per user added to its training split."""
    import numpy as np
    import polars as pl

    from feedbackgen.data.dataset import Dataset
    from feedbackgen.recommend.ranking import UnseenSampler
    from feedbackgen.types import FeedbackRequest

    sampler = UnseenSampler(dataset, np.random.default_rng(seed))
    requests = [FeedbackRequest(u, i) for u in users for i in sampler.sample(u, per_user)]
    feedback = generator.generate(requests, {"seed": seed})
    added = pl.DataFrame({"user_id": [f.user_id for f in feedback], "item_id": [f.item_id for f in feedback],
                          "rating": [f.rating for f in feedback], "text": [f.text for f in feedback],
                          "split": ["train"] * len(feedback), "augmented": [True] * len(feedback)})
    real = dataset.interactions.with_columns(pl.lit(False).alias("augmented"))
    return Dataset(pl.concat([real, added], how="diagonal_relaxed"), dataset.items), len(added)


def ranking_lists(dataset, few: list[str]) -> dict:
    """The candidate lists of both protocols, built once per dataset (seed 1): every run ranks the same."""
    from feedbackgen.recommend.ranking import ranking_queries

    lists = {}
    for protocol in ("full", "sampled"):
        queries = ranking_queries(dataset, protocol, seed=1)
        lists[protocol] = (queries, [u in set(few) for u in queries.users])
    return lists


def scores(train_on, dataset, few: list[str], lists: dict, seed: int) -> dict[str, float]:
    """MF fitted on `train_on`, scored on `dataset`'s real test split."""
    import polars as pl

    from feedbackgen.evaluation.metrics import root_mean_square_error
    from feedbackgen.models import create
    from feedbackgen.recommend.metrics import ndcg
    from feedbackgen.recommend.ranking import Popularity, relevant_ranks
    from feedbackgen.types import FeedbackRequest

    mf = create("mf", {"seed": seed}).fit(train_on)
    out = {}
    test = dataset.test
    for part, rows in (("all", test), ("few", test.filter(pl.col("user_id").is_in(few)))):
        pred = mf.predict_rating([FeedbackRequest(u, i) for u, i in zip(rows["user_id"], rows["item_id"])])
        out[f"rmse_{part}"] = root_mean_square_error(pred, rows["rating"].to_numpy())
    popularity = Popularity().fit(dataset)
    for protocol, (queries, is_few) in lists.items():
        ranks = relevant_ranks(mf, queries, seed, popularity)
        out[f"ndcg10_{protocol}_all"] = ndcg(ranks, 10)
        out[f"ndcg10_{protocol}_few"] = ndcg([r for r, f in zip(ranks, is_few) if f], 10)
    return out


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return number(values[0], ".4f")
    return f"{number(statistics.mean(values), '.4f')} ± {number(statistics.stdev(values), '.4f')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--model-dir", nargs="*", default=[], metavar="DATASET=FOLDER",
                        help="a saved generator trained on that dataset's default preparation, e.g. mi=models/peter")
    parser.add_argument("--max-train-reviews", type=int, default=4, help="a few-review user has at most this many")
    parser.add_argument("--per-user", type=int, default=5, help="generated rows added per few-review user")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    args = parser.parse_args()

    from feedbackgen.models import create, load

    extra: dict[str, list[Path]] = {}
    for spec in args.model_dir:
        key, _, folder = spec.partition("=")
        if key not in DATASETS or not folder:
            parser.error(f"--model-dir expects DATASET=FOLDER with DATASET one of {', '.join(DATASETS)}, got {spec!r}")
        extra.setdefault(key, []).append(Path(folder))

    t0 = time.time()
    header = ["dataset", "training data", "few-review users", "rows added", "RMSE all", "RMSE few",
              "NDCG@10 full all", "NDCG@10 full few", "NDCG@10 sampled all", "NDCG@10 sampled few"]
    rows = []
    for key in args.datasets:
        label = DATASETS[key][0]
        dataset = prepare_dataset(key)
        few = few_review_users(dataset, args.max_train_reviews)
        generators = {name: create(model, config).fit(dataset) for name, (model, config) in GENERATORS.items()}
        for folder in extra.get(key, []):
            model = load(folder)
            generators[f"{model.name} ({folder.name})"] = model
        print(f"{label}: {dataset.summary()}; {len(few)} users with <= {args.max_train_reviews} training "
              f"reviews ({time.time() - t0:.0f}s)", flush=True)
        lists = ranking_lists(dataset, few)
        runs = {"none (real data only)": ([scores(dataset, dataset, few, lists, s) for s in args.seeds], 0)}
        for name, generator in generators.items():
            results, added = [], 0
            for s in args.seeds:
                train_on, added = augmented(dataset, generator, few, args.per_user, s)
                results.append(scores(train_on, dataset, few, lists, s))
            runs[f"+ {name}"] = (results, added)
            print(f"  {name}: done ({time.time() - t0:.0f}s)", flush=True)
        for name, (results, added) in runs.items():
            cells = [mean_sd([r[m] for r in results]) for m in METRICS]
            rows.append([label, name, len(few), added, *cells])
    print()
    print("\n".join(table_lines(header, rows, align="ll" + "r" * (len(header) - 2))))
    print(f"\nRMSE: lower is better; NDCG@10: higher is better. Mean ± sd over seeds {args.seeds}; "
          f"few = users with <= {args.max_train_reviews} training reviews, {args.per_user} generated rows each. "
          f"{time.time() - t0:.0f}s on {os.cpu_count()} CPU(s).")


if __name__ == "__main__":
    main()
