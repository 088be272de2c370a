"""How much data and how many epochs `peter` (default preset) needs before it stops answering every
request alike: one Markdown table of the collapse signal.

    python bench/collapse.py                  # slices 300 / 1000 / 3000 / all × 1 / 3 / 10 epochs
    python bench/collapse.py --skip-all-10    # the same without the dearest cell (all rows, 10 epochs)
    python bench/collapse.py --slices 300 1000 --epochs 1 3   # a part of the grid
    python bench/collapse.py --quick          # 300 rows × 1 epoch: checks the bench works

Data: Amazon Musical Instruments 2014 5-core from $FEEDBACKGEN_DATA, prepared as the tests do
(`prepare(..., "amazon2014", split="random", seed=1)`). Each cell trains `peter` with the default
preset on a seeded sample of N training reviews (the valid split whole, for early stopping) for E
epochs (`max_epochs=E`; the cosine schedule spans E epochs), then reports the collapse signal of the
final model (`feedbackgen.models.collapse`): USR (distinct greedy texts / texts) and repetition
(share of texts repeating a word 3+ times in a row) on 200 seeded validation requests. A cell
marked "collapsed" is one training warns about (USR < 0.05 or repetition > 0.5). Quality only:
the machine may be shared, so no times are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.data.prepare import prepare
from feedbackgen.models import create
from feedbackgen.tables import table_lines

SLICES = [300, 1000, 3000, None]  # None = every training review
EPOCHS = [1, 3, 10]


def prepared() -> Dataset:
    root = Path(os.environ.get("FEEDBACKGEN_DATA", "/work/shared/data"))
    path = root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    return prepare([path], "amazon2014", split="random", seed=1, progress=False)


def slice_of(ds: Dataset, n: int | None, seed: int = 1) -> Dataset:
    """The first `n` training reviews of a seeded shuffle (all when None), with valid and test whole."""
    train = ds.interactions.filter(pl.col("split") == "train")
    if n is not None and n < len(train):
        train = train.sample(n, seed=seed, shuffle=True)
    rest = ds.interactions.filter(pl.col("split") != "train")
    return Dataset(pl.concat([train, rest]), ds.items, manifest=ds.manifest)


def cell(ds: Dataset, epochs: int) -> dict:
    m = create("peter", {"max_epochs": epochs, "progress": False, "num_threads": 2}).fit(ds)
    return m.training_summary["collapse"] | {"best_epoch": m.training_summary["best_epoch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-all-10", action="store_true")
    ap.add_argument("--slices", type=int, nargs="+", help="training reviews per row (default: 300 1000 3000 all)")
    ap.add_argument("--epochs", type=int, nargs="+", help="epochs per column (default: 1 3 10)")
    args = ap.parse_args()
    slices, epochs = ([300], [1]) if args.quick else (args.slices or SLICES, args.epochs or EPOCHS)
    full = prepared()
    n_all = len(full.train)
    rows = []
    for n in slices:
        ds = slice_of(full, n)
        cells = []
        for e in epochs:
            if args.skip_all_10 and n is None and e == 10:
                cells.append("not run")
                continue
            sig = cell(ds, e)
            cells.append(f"{sig['usr']:.3f} / {sig['repetition']:.2f}" + (" collapsed" if sig["collapsed"] else ""))
            print(f"# {n or n_all} reviews, {e} epoch(s): {sig}", file=sys.stderr, flush=True)
        rows.append([f"{n or n_all:,}" + (" (all)" if n is None else "")] + cells)
    head = ["training reviews"] + [f"{e} epoch{'s' if e > 1 else ''}: USR / repetition" for e in epochs]
    print("\n".join(table_lines(head, rows)))


if __name__ == "__main__":
    main()
