"""PETER on the PETER-format Musical Instruments (split 1) next to the baselines: one Markdown table.

    python bench/peter.py                      # every row, presets' own epoch limits
    python bench/peter.py --epochs 8           # cap every PETER row at 8 epochs
    python bench/peter.py --dataset DATA/mi    # a prepared feedbackgen dataset (its own aspects)
    python bench/peter.py --quick              # a tiny run that checks the bench works
    python bench/peter.py --only "peter (rag)" --set rag_k=3 --set rag_max_tokens=48

Rows: `popular`, `retrieval`, `peter (reference preset)`, `peter (default)`, `peter+ (aspect)`,
`peter (rag)` (retrieval-augmented: the 4 training sentences nearest the request read as context),
`explainer` (the recommended explainer: `peter` writing from a content plan, several candidates per
request, the best utility kept; docs/explanations.md).
`--set key=value` overrides a setting of every PETER row run (and is shown in its name).
Each row runs in its own subprocess (so each peak memory is its own), trains on the train split
(early stopping on valid), then answers every test (user, item[, aspect]) greedily at batch 128
with at most 20 new tokens. The parent scores the texts with the PETER metrics
(`feedbackgen.evaluation.metrics.peter_metrics`; BLEU/ROUGE ×100) and the mean all-MiniLM-L6-v2
cosine between each text and its reference, and prints:

- s/epoch: median seconds per training epoch; train/s: training samples per second of the best
  epoch (the machine is shared: the best epoch is the least disturbed one);
- copy: share of generated texts that copy an 8-gram verbatim from the training texts
  (`feedbackgen.evaluation.extra.memorisation`; lower means less copying);
- ground: item grounding, the share of texts whose nearest training sentence was written about the
  same item (`feedbackgen.evaluation.grounding`); D-2: Distinct-2; loops: share of texts with a
  looping phrase (`feedbackgen.collapse.loops`); ρ(tone, ★) and ρ(tone, ★̂): Spearman of the VADER
  compound with the true and with the model's own rating; PPL: median perplexity under
  SmolLM2-135M of `--naturalness` seeded texts (lower = more natural). The last line gives the
  references' own D-2, ρ and PPL;
- gen/s: generated samples per second; peak MB: the subprocess's peak resident memory;
- FLOP %: achieved training FLOP/s (FLOPs of a training step counted by torch's FlopCounterMode
  × the best epoch's steps per second) as a share of this machine's fp32 matmul rate, measured in
  the same run with a 2048² × 2048² `torch.matmul`.

The reference implementation's own figures on this data are in the data folder's README.md.
Times depend on what else runs on the machine; the bench never asserts them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py

from feedbackgen.config import key_values
from feedbackgen.tables import number, table_lines

ROWS = {
    "popular": ("popular", {}),
    "retrieval": ("retrieval", {}),
    "peter (reference preset)": ("peter", {"preset": "reference", "max_epochs": 8}),
    "peter (default)": ("peter", {"preset": "default"}),
    "peter+ (aspect)": ("peter", {"preset": "default", "use_aspect": True}),
    "peter (rag)": ("peter", {"preset": "default", "rag_k": 4}),
    "explainer": ("explainer", {}),  # the recommended explainer: peter writing from a plan, candidates chosen
}
PETER_KINDS = ("peter", "explainer")
MAX_NEW_TOKENS = 20  # PETER's --words 20
QUICK = {"rows": 600, "epochs": 1, "test_rows": 100}


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * repeats / best / 1e9


def load_data(args):
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    if args.dataset:
        ds = Dataset.load(args.dataset)
        # a review with no opinion sentence about an aspect has no explanation to compare with:
        # it is left out of the test rows (and counted in the header line)
        df = ds.interactions
        ds = Dataset(df.filter((pl.col("split") != "test") | pl.col("explanation").is_not_null()),
                     ds.items, ds.users, ds.manifest)
        ds.test_without_explanation = df.filter((pl.col("split") == "test")
                                                & pl.col("explanation").is_null()).height
    else:
        from feedbackgen.data.paths import data_dir
        from feedbackgen.data.peter_format import read_peter

        df, split = read_peter(data_dir() / "peter_format_musical_instruments")
        ds = Dataset(df.with_columns(split))
    if args.rows or args.test_rows:
        parts = []
        for s in ("train", "valid", "test"):
            part = ds.split(s)
            n = args.rows if s == "train" else (args.test_rows or max(1, (args.rows or len(part)) // 8))
            parts.append(part.head(n) if n else part)
        ds = Dataset(pl.concat(parts, how="diagonal_relaxed"), ds.items, ds.users, ds.manifest)
    return ds


# -- one row, in a subprocess --------------------------------------------------------------------

def training_flops_per_sample(model) -> float | None:
    """FLOPs of forward + backward for a few training batches, per sample (PETER only)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if getattr(model, "model", None) is None or not hasattr(model, "_batch"):
        return None
    # a training batch like those fit() drew: re-encode a sample of the training rows
    data = model._bench_train
    n = len(data["user"])
    gen = torch.Generator().manual_seed(0)
    total, samples = 0, 0
    weights = (model.config.text_weight, model.config.context_weight, model.config.rating_weight)
    model.model.train()
    for _ in range(3):
        idx = torch.randperm(n, generator=gen)[:model.config.training.batch_size]
        batch = model._batch(data, idx)
        with FlopCounterMode(display=False) as counter:
            model.model.losses(batch, weights)["loss"].backward()
        total += counter.get_total_flops()
        samples += len(idx)
    model.model.zero_grad(set_to_none=True)
    model.model.eval()
    return total / samples


def run_row(name: str, args) -> dict:
    import torch

    from feedbackgen.models import create

    torch.set_num_threads(args.threads)
    kind, cfg = ROWS[name]
    cfg = dict(cfg)
    if kind in PETER_KINDS:
        cfg["progress"] = False
        cfg.update(key_values(args.set or []))
        if args.epochs:
            cfg["max_epochs"] = args.epochs
    ds = load_data(args)
    reuse = dict(pair.split("=", 1) for pair in args.model_dir or []).get(name)
    if reuse:  # a folder this row's settings trained before (`feedbackgen train`): score it, train nothing
        from feedbackgen.models import load

        model = load(reuse)
        if args.set:  # generation-time settings (plan, candidates, utility) apply to a loaded folder too
            model.config = model.config.model_copy(update=key_values(args.set))
        return {"row": name, "fit_seconds": None, **generate_row(model, kind, cfg, ds)}
    model = create(kind, cfg)
    t = time.perf_counter()
    model.fit(ds)
    fit_seconds = time.perf_counter() - t
    out = {"row": name, "fit_seconds": fit_seconds}
    if kind in PETER_KINDS:
        log = model.training_log
        best = max(log, key=lambda e: e["samples_per_s"])
        out.update(epochs=len(log), best_epoch=max((e["epoch"] for e in log if e["best"]), default=0),
                   epoch_seconds=statistics.median(e["seconds"] for e in log),
                   train_samples_per_s=best["samples_per_s"])
        model._bench_train = model._encode(model._rows(ds, "train"))
        flops = training_flops_per_sample(model)
        out["train_flops_per_s"] = flops * best["samples_per_s"] if flops else None
    return {**out, **generate_row(model, kind, cfg, ds)}


def generate_row(model, kind: str, cfg: dict, ds) -> dict:
    """Every test row answered greedily at batch 128 (with the model's own candidates, if any)."""
    from feedbackgen.types import FeedbackRequest

    out = {}
    test = ds.test
    aspect = kind in PETER_KINDS and cfg.get("use_aspect")
    has_aspect = "aspect" in test.columns
    reqs = [FeedbackRequest(u, i, (a or None) if aspect else None)
            for u, i, a in test.select("user_id", "item_id",
                                       "aspect" if has_aspect else "user_id").iter_rows()]
    t = time.perf_counter()
    fb = model.generate(reqs, {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 128})
    gen_seconds = time.perf_counter() - t
    out.update(gen_samples_per_s=len(reqs) / gen_seconds, texts=[f.text for f in fb],
               ratings=[f.rating for f in fb],
               peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


# -- the table -----------------------------------------------------------------------------------

def score(result: dict, ds, feature_set, copies, naturalness_rows: int) -> dict:
    import polars as pl

    from feedbackgen.collapse import loops
    from feedbackgen.data.text import tokenize
    from feedbackgen.evaluation.extra import distinct_n, embedding_similarity, memorisation, spearman, vader_compound
    from feedbackgen.evaluation.grounding import item_grounding
    from feedbackgen.evaluation.metrics import peter_metrics

    test = ds.test
    refs = test["explanation"].to_list()
    # lower-cased like the feature set (evaluation.scoring.feature_set)
    ref_features = [a.lower() if a else None for a in test["aspect"].to_list()] if feature_set else None
    m = peter_metrics([t.split() for t in result["texts"]], [tokenize(r) for r in refs], feature_set,
                      ref_features, result["ratings"], test["rating"].to_list())
    texts = result["texts"]
    m["emb"] = embedding_similarity(texts, refs)
    m["copy"] = memorisation([t.split() for t in texts], copies)["memorisation"]
    m["ground"] = item_grounding(pl.DataFrame({"item_id": test["item_id"], "text": texts}), ds)["item_grounding"]
    m["d2"] = distinct_n([t.split() for t in texts], 2)
    m["loops"] = sum(loops(t) for t in texts) / len(texts)
    compound = vader_compound(texts)
    m["rho"], m["rho_pred"] = spearman(compound, test["rating"].to_list()), spearman(compound, result["ratings"])
    m["ppl"] = median_perplexity(texts, naturalness_rows)
    return m


def median_perplexity(texts: list[str], rows: int) -> float | None:
    """Median perplexity under SmolLM2-135M (`feedbackgen.evaluation.naturalness`) of `rows` texts
    drawn with seed 0 (the same rows for every model and the references); None when rows is 0."""
    import numpy as np

    from feedbackgen.evaluation.naturalness import naturalness

    if not rows:
        return None
    pick = np.random.default_rng(0).permutation(len(texts))[:rows]
    return naturalness([texts[i] for i in sorted(pick)])["median"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="cap on PETER epochs (default: each preset's)")
    p.add_argument("--dataset", default=None, help="a prepared feedbackgen dataset folder")
    p.add_argument("--rows", type=int, default=None, help="use the first N training rows (valid/test N/8)")
    p.add_argument("--test-rows", type=int, default=None, help="use the first N valid and test rows")
    p.add_argument("--quick", action="store_true", help=f"a tiny check run: {QUICK}")
    p.add_argument("--only", nargs="*", default=None, help="run only these rows", choices=list(ROWS))
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="override a setting of every PETER row (repeatable), e.g. --set rag_k=3")
    p.add_argument("--model-dir", action="append", default=None, metavar="ROW=DIR",
                   help="score a model folder this row's settings trained before instead of training it "
                        "(repeatable), e.g. --model-dir explainer=models/explainer")
    p.add_argument("--examples", type=int, default=0, metavar="N",
                   help="print the first N test requests' texts from every row, side by side")
    p.add_argument("--naturalness", type=int, default=200, metavar="N",
                   help="texts scored for naturalness (median perplexity under SmolLM2-135M); 0 = skip")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows = args.rows or QUICK["rows"]
        args.epochs = args.epochs or QUICK["epochs"]
        args.test_rows = args.test_rows or QUICK["test_rows"]
    if args.worker:
        Path(args.out).write_text(json.dumps(run_row(args.worker, args)))
        return

    import torch

    torch.set_num_threads(args.threads)
    from feedbackgen.models import ALIASES, REGISTRY

    rate = matmul_gflops()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{args.threads} threads; fp32 matmul {rate:.0f} GFLOP/s")
    ds = load_data(args)
    source = args.dataset or "PETER-format Musical Instruments, split 1"
    left_out = getattr(ds, "test_without_explanation", 0)
    print(f"data: {source}: {len(ds.train)} train / {len(ds.valid)} valid / {len(ds.test)} test rows"
          + (f" ({left_out} test rows without an explanation left out)" if left_out else "")
          + (f"; epochs capped at {args.epochs}" if args.epochs else ""))
    from feedbackgen.data.text import tokenize
    from feedbackgen.evaluation.extra import NgramIndex
    from feedbackgen.evaluation.scoring import feature_set as aspect_vocabulary  # the one definition

    copies = NgramIndex([tokenize(t) for t in ds.train["explanation"].drop_nulls().to_list()])
    feature_set = aspect_vocabulary(ds)

    results = []
    for name in args.only or list(ROWS):
        kind = ROWS[name][0]
        if kind not in REGISTRY and kind not in ALIASES:
            print(f"  {name}: model {kind!r} is not in this version's registry; skipped", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            cmd = [sys.executable, __file__, "--worker", name, "--out", str(out),
                   "--threads", str(args.threads)]
            for flag in ("epochs", "dataset", "rows", "test_rows"):
                if getattr(args, flag) is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            for pair in args.set or []:
                cmd += ["--set", pair]
            for pair in args.model_dir or []:
                cmd += ["--model-dir", pair]
            t = time.perf_counter()
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                print(f"  {name}: failed (exit {proc.returncode})", flush=True)
                continue
            result = json.loads(out.read_text())
        print(f"  {name}: done in {time.perf_counter() - t:.0f} s"
              + (f" ({result['epochs']} epochs, best {result['best_epoch']})" if "epochs" in result else ""),
              flush=True)
        if kind in PETER_KINDS and args.set:
            result["row"] += " " + " ".join(args.set)
        result["metrics"] = score(result, ds, feature_set, copies, args.naturalness)
        results.append(result)

    cols = ["BLEU-1", "BLEU-4", "R-1 F", "R-2 F", "R-L F", "USR", "FMR", "FCR", "DIV", "RMSE", "MAE", "emb",
            "copy", "ground", "D-2", "loops", "ρ(tone, ★)", "ρ(tone, ★̂)", "PPL", "s/epoch", "train/s", "gen/s",
            "peak MB", "FLOP %"]
    rows = []
    for r in results:
        m = r["metrics"]
        flops = r.get("train_flops_per_s")
        cells = [number(m["bleu1"], ".2f"), number(m["bleu4"], ".2f"), number(m["rouge1_f"], ".2f"),
                 number(m["rouge2_f"], ".2f"), number(m["rougeL_f"], ".2f"), number(m["usr"], ".3f"),
                 number(m.get("fmr"), ".3f"), number(m.get("fcr"), ".3f"), number(m.get("div"), ".3f"),
                 number(m["rmse"], ".4f"), number(m["mae"], ".4f"), number(m["emb"], ".3f"),
                 number(m["copy"], ".3f"), number(m["ground"], ".3f"), number(m["d2"], ".3f"),
                 number(m["loops"], ".3f"), number(m["rho"], ".3f"), number(m["rho_pred"], ".3f"),
                 number(m["ppl"], ".0f"), number(r.get("epoch_seconds"), ".1f"), number(r.get("train_samples_per_s"), ".0f"),
                 number(r["gen_samples_per_s"], ".0f"), number(r["peak_mb"], ".0f"),
                 number(100 * flops / (rate * 1e9) if flops else None, ".1f")]
        rows.append([r["row"], *cells])
    print()
    print("\n".join(table_lines(["model", *cols], rows, align="l" + "r" * len(cols))))
    print("\n" + reference_line(ds, args.naturalness))
    for n in range(min(args.examples, len(ds.test))):  # the same requests' texts side by side
        row = ds.test.row(n, named=True)
        print(f"\nrequest {n + 1}: user {row['user_id']}, item {row['item_id']}, {row['rating']:g}★ — "
              f"reference: {row['explanation']}")
        for r in results:
            print(f"  {r['row']}: {r['texts'][n]} ({r['ratings'][n]:.1f}★)")


def reference_line(ds, naturalness_rows: int) -> str:
    """The test references' own Distinct-2, tone–rating ρ and median perplexity (the bar to compare with)."""
    from feedbackgen.data.text import tokenize
    from feedbackgen.evaluation.extra import distinct_n, spearman, vader_compound

    refs = ds.test["explanation"].to_list()
    rho = spearman(vader_compound(refs), ds.test["rating"].to_list())
    ppl = median_perplexity([" ".join(tokenize(r)) for r in refs], naturalness_rows)
    return (f"references: D-2 {number(distinct_n([tokenize(r) for r in refs], 2), '.3f')}, "
            f"ρ(tone, ★) {number(rho, '.3f')}, PPL {number(ppl, '.0f')}")


if __name__ == "__main__":
    main()
