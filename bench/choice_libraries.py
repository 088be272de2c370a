"""`implicit` against `cornac` for the matrix-factorisation choice models, side by side in one run.

    python bench/choice_libraries.py       # both are feedbackgen dependencies (ALS: implicit, BPR: cornac)

Both libraries fit on Musical Instruments' train split (random 8:1:1, seed 1), each with the same
small grid chosen on the valid split by NDCG@10 (feedbackgen's validation search), then the chosen
setting is ranked on test (full ranking, train + valid masked). Fit time: one fit of the chosen
setting, one thread. cornac's counterpart of ALS, WMF, is written in TensorFlow and is not measured.
implicit's BPR draws negatives in proportion to item popularity (benfred/implicit issue 255),
cornac's uniformly as in Rendle et al. 2009.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ranking import load_dataset  # noqa: E402

from feedbackgen.tables import number, table_lines  # noqa: E402


def implicit_bpr():
    """feedbackgen's BPR with its factors from implicit's BPR instead of cornac's (same grid)."""
    from threadpoolctl import threadpool_limits

    from feedbackgen.recommend.choice.factors import BPR

    class ImplicitBPR(BPR):
        def fit_matrix(self, data, dataset):
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            c = self.config
            with threadpool_limits(1, "blas"):
                bpr = BayesianPersonalizedRanking(factors=c.factors, learning_rate=c.learning_rate,
                                                  regularization=c.regularization, iterations=c.iterations,
                                                  random_state=c.seed, num_threads=1)
                bpr.fit(data.matrix.astype(np.float32), show_progress=False)
            self.user_factors, self.item_factors = bpr.user_factors, bpr.item_factors

    return ImplicitBPR


def main() -> None:
    from feedbackgen.recommend import evaluate_ranking
    from feedbackgen.recommend.choice.factors import ALS, BPR

    dataset, label = load_dataset(None)
    contenders = {"implicit ALS": ALS, "implicit BPR": implicit_bpr(), "cornac BPR": BPR}
    models, rows = {}, []
    for name, cls in contenders.items():
        t0 = time.perf_counter()
        model = cls().fit(dataset)
        search_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cls({**model.config.model_dump(), "search": False}).fit(dataset)
        rows.append({"fit_s": time.perf_counter() - t0, "search_s": search_s, "chosen": model.search_record["chosen"]})
        models[name] = model
    table = evaluate_ranking(models, dataset, protocols=("full",))
    print(f"{label}: {dataset.summary()}\n")
    head = ["library / model", "HR@10", "NDCG@10", "Recall@10", "fit (s)", "search (s)", "chosen on valid"]
    print("\n".join(table_lines(head, ([row["model"], *(number(row[k], ".4f") for k in ("hr@10", "ndcg@10", "recall@10")),
                                       number(extra["fit_s"], ".2f"), number(extra["search_s"], ".1f"), extra["chosen"]]
                                      for row, extra in zip(table.iter_rows(named=True), rows)),
                                 align="lrrrrrl")))
    print("\ninstall (CPU wheels, Python 3.11):")
    for dist in ("implicit", "cornac"):
        try:
            requires = md.requires(dist) or []
            print(f"- {dist} {md.version(dist)}: requires {', '.join(r for r in requires if 'extra' not in r)}")
        except md.PackageNotFoundError:
            print(f"- {dist}: not installed")
    print(f"\n{os.cpu_count()} CPU(s); higher is better")


if __name__ == "__main__":
    main()
