"""Quality against privacy: `peter` trained with DP-SGD at several ε on the PETER-format Musical
Instruments (split 1): one Markdown table.

    python bench/dp.py                          # ε = ∞ (no DP), 8, 3, 1; the default preset
    python bench/dp.py --epsilons 8 3 1 0.5     # the DP rows to run (the ε = ∞ row always runs)
    python bench/dp.py --epochs 5 --set batch_size=256 --set lr=0.004
    python bench/dp.py --quick                  # a tiny run that checks the bench works

Each row runs in its own subprocess, trains `peter` (the `default` preset, early stopping on valid)
with `dp_epsilon` = ε (δ left at its default, min(1e-5, 1/(10 × training rows)); per-row gradients
clipped to 1.0), then answers every test (user, item) greedily at batch 128 with at most 20 new
tokens. Data loading, generation settings and scoring are bench/peter.py's (the PETER metrics,
BLEU/ROUGE ×100). Columns:

- BLEU-1/4, ROUGE-L F, USR (unique sentence ratio), RMSE and MAE of the rating;
- epochs: epochs trained (best) — the noise is calibrated for `max_epochs`, so a run stopped early
  spends less than its target;
- train s: seconds of `fit` (DP-SGD computes one gradient per row, several times the plain cost);
- ε, δ: the privacy budget actually spent (opacus's RDP accountant), — for the plain row.

The DP rows differ from the ε = ∞ row in more than noise: Poisson-sampled batches, per-row losses
and per-row clipping. What the guarantee covers (the weights, per review) and what it does not
(the vocabulary, id lists, validation split) is in docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py

from feedbackgen.tables import number, table_lines
from peter import MAX_NEW_TOKENS, load_data, score  # bench/peter.py: same data, decoding, metrics

EPSILONS = [8.0, 3.0, 1.0]
QUICK = {"rows": 400, "epochs": 1, "test_rows": 60}
# --quick also shrinks the model: DP-SGD's per-row gradients of the default preset's 1024-wide
# feed-forward layers cost seconds a step on two cores
QUICK_SETTINGS = ["emsize=64", "nhead=2", "nhid=128"]


def label(eps: float) -> str:
    return "∞ (no DP)" if math.isinf(eps) else f"{eps:g}"


def run_row(eps: float, args) -> dict:
    import torch

    from feedbackgen.config import parse_set_options
    from feedbackgen.models import create
    from feedbackgen.types import FeedbackRequest

    torch.set_num_threads(args.threads)
    cfg = {"preset": "default", "progress": False, **parse_set_options(args.set)}
    if args.epochs:
        cfg["max_epochs"] = args.epochs
    if not math.isinf(eps):
        cfg["dp_epsilon"] = eps
    ds = load_data(args)
    model = create("peter", cfg)
    t = time.perf_counter()
    model.fit(ds)
    fit_seconds = time.perf_counter() - t
    log = model.training_log
    reqs = [FeedbackRequest(u, i) for u, i in ds.test.select("user_id", "item_id").iter_rows()]
    fb = model.generate(reqs, {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 128})
    return {"eps": eps, "fit_seconds": fit_seconds, "epochs": len(log),
            "best_epoch": max((e["epoch"] for e in log if e["best"]), default=0),
            "privacy": model.privacy, "texts": [f.text for f in fb], "ratings": [f.rating for f in fb]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epsilons", type=float, nargs="*", default=EPSILONS,
                   help=f"target ε of the DP rows (default {EPSILONS}); the ε = ∞ row always runs")
    p.add_argument("--epochs", type=int, default=None, help="max_epochs of every row (default: the preset's)")
    p.add_argument("--set", action="append", default=[], help="peter setting key=value, for every row")
    p.add_argument("--dataset", default=None, help="a prepared feedbackgen dataset folder")
    p.add_argument("--rows", type=int, default=None, help="use the first N training rows (valid/test N/8)")
    p.add_argument("--test-rows", type=int, default=None, help="use the first N valid and test rows")
    p.add_argument("--quick", action="store_true", help=f"a tiny check run: {QUICK}, {QUICK_SETTINGS}")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows = args.rows or QUICK["rows"]
        args.epochs = args.epochs or QUICK["epochs"]
        args.test_rows = args.test_rows or QUICK["test_rows"]
        args.set = QUICK_SETTINGS + args.set
    if args.worker is not None:
        Path(args.out).write_text(json.dumps(run_row(args.worker, args)))
        return

    import torch

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} threads")
    ds = load_data(args)
    source = args.dataset or "PETER-format Musical Instruments, split 1"
    print(f"data: {source}: {len(ds.train)} train / {len(ds.valid)} valid / {len(ds.test)} test rows"
          + (f"; max_epochs {args.epochs}" if args.epochs else "")
          + (f"; settings {' '.join(args.set)}" if args.set else ""))
    from feedbackgen.evaluation.scoring import feature_set as aspect_vocabulary  # the one definition

    feature_set = aspect_vocabulary(ds)

    results = []
    for eps in [math.inf, *args.epsilons]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            cmd = [sys.executable, __file__, "--worker", str(eps), "--out", str(out),
                   "--threads", str(args.threads)]
            for flag in ("epochs", "dataset", "rows", "test_rows"):
                if getattr(args, flag) is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            cmd += [x for s in args.set for x in ("--set", s)]
            t = time.perf_counter()
            # passive: OpenMP threads spinning for a busy core slow torch down many times on a shared CPU
            proc = subprocess.run(cmd, env={**os.environ, "OMP_WAIT_POLICY": "passive"})
            if proc.returncode != 0:
                print(f"  ε = {label(eps)}: failed (exit {proc.returncode})", flush=True)
                continue
            result = json.loads(out.read_text())
        print(f"  ε = {label(eps)}: done in {time.perf_counter() - t:.0f} s "
              f"({result['epochs']} epochs, best {result['best_epoch']})", flush=True)
        result["metrics"] = score(result, ds, feature_set)
        results.append(result)

    cols = ["BLEU-1", "BLEU-4", "R-L F", "USR", "RMSE", "MAE", "epochs", "train s", "ε spent", "δ"]
    rows = []
    for r in results:
        m, priv = r["metrics"], r["privacy"] or {}
        cells = [number(m["bleu1"], ".2f"), number(m["bleu4"], ".2f"), number(m["rougeL_f"], ".2f"),
                 number(m["usr"], ".3f"), number(m["rmse"], ".4f"), number(m["mae"], ".4f"),
                 f"{r['epochs']} ({r['best_epoch']})", number(r["fit_seconds"], ".0f"),
                 number(priv.get("epsilon"), ".3f"), number(priv.get("delta"), ".0e")]
        rows.append([label(r["eps"]), *cells])
    print()
    print("\n".join(table_lines(["target ε", *cols], rows, align="l" + "r" * len(cols))))


if __name__ == "__main__":
    main()
