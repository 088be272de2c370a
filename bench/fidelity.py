"""How far the simulated user can be trusted, on Musical Instruments: one Markdown table.

    python bench/fidelity.py                              # prepare MI, train popular + retrieval, measure
    python bench/fidelity.py --model-dir models/peter     # add a row per saved model folder
    python bench/fidelity.py --dataset data/mi            # a prepared dataset (the one those models learnt from)
    python bench/fidelity.py --max-users 300 --out runs/fidelity
    python bench/fidelity.py --baselines popular          # skip retrieval (it embeds every training review)

Rows: `popular` and `retrieval`, trained here on the training split with `target=review` (a
simulated user writes reviews; their ratings come from the biased MF inside them), then one row per
`--model-dir` (e.g. a trained `peter`, whose rating head rates). Each row is measured with
`feedbackgen.recommend.fidelity`: discrimination at 1:1 / 1:3 / 1:9 (Agent4Rec), RMSE / MAE and the
star distributions, and AgentSociety's preference estimation and review score (emotion term left
out, re-weighted). Published anchors (Agent4Rec, SimUSER) are printed beside them for scale; they
are LLM-agent simulators on other data.

Without `--dataset`, Musical Instruments (2014 5-core) is prepared with the default pipeline
(random 8:1:1 split, seed 1), as `feedbackgen prepare ... --format amazon2014` does: a model folder
given with `--model-dir` must have been trained on that same preparation. Times depend on what else
runs on the machine; the bench never asserts them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MI = ("amazon_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz", "amazon2014")


def load_dataset(path: Path | None):
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
    parser.add_argument("--baselines", nargs="*", default=["popular", "retrieval"], choices=["popular", "retrieval"],
                        help="generators trained here (retrieval embeds every training review: the slow one)")
    parser.add_argument("--max-users", type=int, help="a seeded sample of test users (faster)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calibration-pairs", type=int,
                        help="calibrate the engage threshold on this many validation pairs (LLM rows: faster)")
    parser.add_argument("--out", type=Path, help="also write fidelity.json, fidelity.md, rating_distribution.png")
    args = parser.parse_args()

    from feedbackgen.models import create, load
    from feedbackgen.recommend import fidelity, fidelity_markdown, write_fidelity

    t0 = time.time()
    dataset, label = load_dataset(args.dataset)
    print(f"dataset: {label} {dataset.summary()} ({time.time() - t0:.1f}s)", flush=True)
    models = {}
    for name in args.baselines:
        t = time.time()
        models[name] = create(name, {"target": "review"}).fit(dataset)
        print(f"trained {name} in {time.time() - t:.1f}s", flush=True)
    for folder in args.model_dir:
        model = load(folder)
        models[f"{model.name} ({folder.name})"] = model
    results, seconds = [], {}
    for name, model in models.items():
        t = time.time()
        results.append(fidelity(model, dataset, max_users=args.max_users, seed=args.seed, name=name,
                                calibration_pairs=args.calibration_pairs))
        seconds[name] = time.time() - t
        print(f"measured {name} in {seconds[name]:.1f}s", flush=True)
    print()
    print(fidelity_markdown(results, label))
    print(f"users: {results[0]['users'] if results else 0} test users"
          + (f" (a seeded sample of {args.max_users})" if args.max_users else "")
          + "; seconds per row: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
          + f"; total {time.time() - t0:.0f}s on {os.cpu_count()} CPU(s)")
    if args.out:
        write_fidelity(results, args.out, label)
        print(f"wrote {args.out}/fidelity.md, fidelity.json, rating_distribution.png")


if __name__ == "__main__":
    main()
