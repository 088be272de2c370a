"""LLM-based generators next to `retrieval` and `peter (default)`, and the three LLM back-ends' speed.

    python bench/llm.py                           # the small default run (≈10 min on 2 idle cores)
    python bench/llm.py --test-rows 300 --train-rows 2000 --valid-rows 256 --peter-epochs 10 --epochs 2  # full
    python bench/llm.py --backend llama_cpp       # llm rows through llama.cpp instead of transformers
    python bench/llm.py --model path/to/bigger-model-folder          # any other base model
    python bench/llm.py --backend openai --base-url http://host:8000/v1 --served-model NAME
    python bench/llm.py --only llm-zero-shot llm-few-shot --no-throughput
    python bench/llm.py --only                    # just the back-end throughput table
    python bench/llm.py --save-models runs/llm    # keep each row's model folder (for bench/fidelity.py)
    python bench/llm.py --load-models runs/llm --only sft-LoRA --test-rows 986   # reuse it on more rows
    python bench/llm.py --only llm-zero-shot --test-rows 30 --threads 2 --no-throughput  # answer kinds
    python bench/llm.py --only llm-few-shot --prompt-style short --no-throughput   # shorter prompts
    python bench/llm.py --train-rows all --only prompt_lm --set prompt_lm:rag_k=3   # the whole training split
    python bench/llm.py --dataset DATA/mi         # a prepared feedbackgen dataset (the second table)
    python bench/llm.py --device cuda --no-score --raw-out raw.jsonl   # train and generate on a GPU...
    python bench/llm.py --score-raw raw.jsonl     # ...and score those texts here (same data arguments)

Data: the PETER-format Musical Instruments (split 1), or with `--dataset` a prepared feedbackgen
dataset (test rows without an explanation left out, as bench/peter.py does); target = the
explanation sentence, the same fixed test subset for every row (the first `--test-rows` test rows).
`retrieval` and `peter (default)` train on the whole training split; `sft (LoRA)` and `prompt_lm`
on a seeded sample of `--train-rows` training reviews (`all`: the whole split; stated in the
table), validated on `--valid-rows`; `llm` rows train nothing and index the whole training split
for their prompts. `--set ROW:key=value` changes one setting of one row (shown in its name). Every text
generator answers greedily with at most `--max-new-tokens` new tokens (PETER's 20 words).

Main table columns: BLEU-1/4, ROUGE-L F (×100, PETER's definitions), USR, distinct-2, emb
(all-MiniLM-L6-v2 cosine to the reference), pers. rank (personalisation: rank of the own user's
reference among 1 + K other users' references, by cosine with the generated text; lower is
better, chance is printed), sent.-rating ρ (Spearman between VADER sentiment and the rating),
RMSE, MAE, copy (share of texts copying an 8-gram verbatim from the training texts,
`evaluation.extra.memorisation`), loops (share of texts with a looping phrase, `feedbackgen.collapse`,
the report's `loops`), naturalness (median perplexity of the texts under SmolLM2-135M,
`evaluation.naturalness`; the references' own median is printed above the table; lower is more
natural), train s, gen/s (samples per second), back-end, and for LLM rows how the JSON answers
went (valid / repaired / retried / fallback) and the mean prompt length in tokens. `--constrained
both` (the default) answers every `llm`/`sft` row twice from the same fitted model: decoded under
the answer's JSON schema (the row as named) and free, pre-filled and repaired ("…, free").

Throughput table: the same model (SmolLM2-135M-Instruct; float32 weights for transformers, the
Q4_1 GGUF for llama.cpp) answering the same few-shot prompts, greedy, at batch 1 and batched:
transformers in process, llama.cpp in process (no batch API: batched = one after another), and
llama.cpp's OpenAI-compatible server started here on 127.0.0.1 (`concurrency` requests in flight;
that server answers one at a time). Tokens/s counts generated tokens.

`--raw-out` keeps each row's texts, ratings and timings (JSON lines, one per row, written as each
row ends); `--score-raw` scores such files instead of running rows, on the first `--test-rows` test
rows of the same data, so a GPU machine without the scoring models can train and generate, and
this machine scores. Its "train s" and "gen/s" are the generating machine's, which the file names.

Times depend on what else runs on the machine; the bench never asserts them.
"""

from __future__ import annotations

import os

# Two OpenMP runtimes' worth of threads (torch's, and llama.cpp's, which shares torch's libgomp)
# spin-waiting on 2 shared cores made decoding 25x slower here; passive waiting costs little.
# It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from machine import cpu_model  # bench/machine.py

from feedbackgen.config import key_values
from feedbackgen.tables import number, table_lines

ROWS = ["retrieval", "peter (default)", "llm zero-shot", "llm few-shot", "sft (LoRA)", "prompt_lm"]
SLUG = {r: r.replace(" (", "-").replace(")", "").replace(" ", "-") for r in ROWS}


def load_data(args):
    import polars as pl

    from feedbackgen.data.dataset import Dataset
    from peter import load_data as load_whole  # bench/peter.py: the same data, the same test rows

    ds = load_whole(argparse.Namespace(dataset=args.dataset, rows=None, test_rows=None))
    test = ds.test.head(args.test_rows)
    out = Dataset(pl.concat([ds.train, ds.valid, test], how="diagonal_relaxed"), ds.items, ds.users, ds.manifest)
    out.test_without_explanation = getattr(ds, "test_without_explanation", 0)
    return out


def parse_sets(pairs: list[str] | None) -> dict[str, dict]:
    """`ROW:key=value` pairs as {row slug: {key: value}}, each value read as JSON when it parses
    (`feedbackgen.config.key_values`)."""
    out: dict[str, dict] = {}
    for pair in pairs or []:
        row, _, setting = pair.partition(":")
        if row not in SLUG.values() or "=" not in setting:
            raise SystemExit(f"--set {pair!r}: expected ROW:key=value with ROW one of {', '.join(SLUG.values())}")
        out.setdefault(row, {}).update(key_values([setting]))
    return out


def row_name(row: str, args) -> str:
    extra = parse_sets(args.set).get(SLUG[row])
    return row + (" " + ", ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")


def row_config(row: str, args) -> tuple[str, dict]:
    llm_common = {"model": args.model, "num_threads": args.threads, "prompt_style": args.prompt_style,
                  "device": args.device}
    backend = {"backend": args.backend, "base_url": args.base_url, "served_model": args.served_model}
    trained = {"max_train_samples": trained_rows(args), "max_valid_samples": args.valid_rows,
               "max_epochs": args.epochs, "progress": False}
    return {
        "retrieval": ("retrieval", {}),
        "peter (default)": ("peter", {"preset": "default", "max_epochs": args.peter_epochs, "progress": False,
                                      "num_threads": args.threads}),
        "llm zero-shot": ("llm", {**llm_common, **backend, "shots": 0}),
        "llm few-shot": ("llm", {**llm_common, **backend, "shots": args.shots}),
        "sft (LoRA)": ("sft", {**llm_common, **trained, "shots": args.shots}),
        "prompt_lm": ("prompt_lm", {"model": args.model, "num_threads": args.threads, "discrete_prompt": True,
                                    "device": args.device,
                                    "max_train_samples": trained_rows(args), "max_valid_samples": args.valid_rows,
                                    "prompt_epochs": args.epochs, "full_epochs": args.epochs, "progress": False}),
    }[row]


def trained_rows(args) -> int | None:
    return None if args.train_rows == "all" else int(args.train_rows)


def run_row(row: str, ds, args) -> dict:
    from feedbackgen.models import create, load
    from feedbackgen.types import FeedbackRequest

    kind, cfg = row_config(row, args)
    saved = Path(args.load_models) / SLUG[row] if args.load_models else None
    if saved is not None:  # trained by an earlier run: its folder gives the time and rows
        model, training = load(saved), saved_training(saved)
        fit_s = training["seconds"]
    else:
        model = create(kind, {**cfg, **parse_sets(args.set).get(SLUG[row], {})})
        t = time.perf_counter()
        model.fit(ds)
        fit_s = time.perf_counter() - t
    test = ds.test
    reqs = [FeedbackRequest(u, i) for u, i in zip(test["user_id"], test["item_id"])]
    if args.save_models:  # e.g. for bench/fidelity.py --model-dir
        model.save(Path(args.save_models) / SLUG[row])
    backend = {"retrieval": "numpy", "peter": "torch", "llm": cfg.get("backend")}.get(kind, "transformers")
    trained_on = len(ds.train) if kind in ("retrieval", "peter", "llm") or trained_rows(args) is None \
        else min(trained_rows(args), len(ds.train))
    if saved is not None:
        trained_on = training["rows"] or trained_on
    variants = {"on": [True], "off": [False], "both": [True, False]}[args.constrained] if kind in ("llm", "sft") \
        else [None]
    out = []
    for constrained in variants:
        if constrained is not None:
            model.config = model.config.model_copy(update={"constrained": constrained})
            model.answer_counts.clear()
        t = time.perf_counter()
        fb = model.generate(reqs, {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size})
        gen_s = time.perf_counter() - t
        prompt_tokens = [f.meta["prompt_tokens"] for f in fb if f.meta.get("prompt_tokens")]
        out.append({"row": row_name(row, args) + (", free" if constrained is False and len(variants) > 1 else "")
                    + (" (loaded)" if saved is not None else ""), "fit_s": fit_s,
                    "gen_per_s": len(reqs) / gen_s, "texts": [f.text for f in fb], "ratings": [f.rating for f in fb],
                    "backend": backend, "trained_on": trained_on,
                    "answers": dict(getattr(model, "answer_counts", {}) or {}),
                    "prompt_tokens": sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else None})
    return out


def saved_training(folder: Path) -> dict:
    """A saved model's training seconds (the sum over its training log's epochs; None without a log)
    and training rows (None when unrecorded)."""
    log, info = folder / "training_log.jsonl", folder / "training.json"
    seconds = sum(json.loads(line).get("seconds", 0.0) for line in log.read_text().splitlines()) \
        if log.exists() else None
    rows = json.loads(info.read_text()).get("train_rows") if info.exists() else None
    return {"seconds": seconds, "rows": rows}


def run_rows(ds, args, machine: str):
    """Each chosen row's results (a list: one per answer variant), appended to --raw-out as it ends."""
    for row in ROWS:
        if args.only is not None and SLUG[row] not in args.only:
            continue
        t = time.perf_counter()
        try:
            done = run_row(row, ds, args)
        except Exception as e:  # one failing row should not lose the others
            print(f"  {row}: failed ({type(e).__name__}: {e})", flush=True)
            continue
        if args.raw_out:
            with open(args.raw_out, "a") as f:
                for result in done:
                    f.write(json.dumps({**result, "machine": machine, "pairs": test_pairs(ds)},
                                       default=float) + "\n")
        print(f"  {row}: done in {time.perf_counter() - t:.0f} s", flush=True)
        yield done
        gc.collect()


def test_pairs(ds) -> list[list[str]]:
    """The (user, item) of each test row, in order: what a stored text answers."""
    return [[u, i] for u, i in zip(ds.test["user_id"], ds.test["item_id"])]


def read_raw(paths: list[str], pairs: list[list[str]]):
    """The results stored by --raw-out, cut to the test rows `pairs` (the first rows of the same
    data). Raises SystemExit, naming file, line and row, when a file holds fewer rows or answers
    other requests (another dataset or split; files written before the pairs were kept are taken
    as they are)."""
    n = len(pairs)
    for path in paths:
        for k, line in enumerate(Path(path).read_text().splitlines(), 1):
            result = json.loads(line)
            if len(result["texts"]) < n:
                raise SystemExit(f"{path}:{k}: row {result['row']!r} has {len(result['texts'])} texts, "
                                 f"fewer than the {n} test rows asked for")
            if "pairs" in result and result["pairs"][:n] != pairs:
                bad = next(j for j, (a, b) in enumerate(zip(result["pairs"], pairs)) if a != b)
                raise SystemExit(f"{path}:{k}: row {result['row']!r} answers other requests than this data's "
                                 f"test rows (test row {bad}: stored {result['pairs'][bad]}, expected {pairs[bad]})")
            result["texts"], result["ratings"] = result["texts"][:n], result["ratings"][:n]
            result.pop("pairs", None)
            yield [result]


def score(result: dict, ds, copies) -> dict:
    import numpy as np

    from feedbackgen.collapse import loop_share
    from feedbackgen.data.text import tokenize
    from feedbackgen.embeddings import embed
    from feedbackgen.evaluation.extra import (distinct_n, mean_cosine, memorisation, personalisation,
                                              sentiment_rating_agreement)
    from feedbackgen.evaluation.metrics import peter_metrics
    from feedbackgen.evaluation.naturalness import naturalness
    from feedbackgen.evaluation.scoring import feature_set  # the one definition (FMR / FCR / DIV)

    test = ds.test
    refs = test["explanation"].to_list()
    gen_tokens = [tokenize(t) for t in result["texts"]]
    features = feature_set(ds)
    ref_features = ([a.lower() if a else None for a in test["aspect"].to_list()]
                    if features is not None else None)
    m = peter_metrics(gen_tokens, [tokenize(r) for r in refs], features, ref_features, result["ratings"],
                      test["rating"].to_list())
    gen_vecs, ref_vecs = embed([" ".join(t) for t in gen_tokens]), embed(refs)
    m["emb"] = mean_cosine(gen_vecs, ref_vecs)
    m["distinct2"] = distinct_n(gen_tokens, 2)
    m.update(personalisation(gen_vecs, ref_vecs, test["user_id"].to_list()))
    m["sentiment_rating"] = sentiment_rating_agreement([" ".join(t) for t in gen_tokens], result["ratings"])
    m["ratings_constant"] = float(np.ptp(result["ratings"])) == 0.0
    m["copy"] = memorisation(gen_tokens, copies)["memorisation"]
    m["loops"] = loop_share(result["texts"])
    m["naturalness"] = naturalness([t for t in result["texts"] if t and t.strip()])["median"]
    return m


# -- throughput of the back-ends -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throughput(ds, args) -> list[dict]:
    import httpx

    from feedbackgen.config import Decoding
    from feedbackgen.models import create
    from feedbackgen.models.llm.backends import LlamaCppBackend, TransformersBackend
    from feedbackgen.models.llm.openai_backend import OpenAIBackend
    from feedbackgen.models.llm.llm_user import ANSWER_PREFIX, JSON_TOKENS
    from feedbackgen.pretrained import DEFAULT_MODEL, packaged_gguf
    from feedbackgen.types import FeedbackRequest

    prompter = create("llm", {"shots": args.shots}).fit(ds)
    test = ds.test.head(args.throughput_prompts)
    convs = [prompter.messages(FeedbackRequest(u, i))[0] for u, i in zip(test["user_id"], test["item_id"])]
    d1 = Decoding(max_new_tokens=args.max_new_tokens + JSON_TOKENS, batch_size=1)
    dn = d1.model_copy(update={"batch_size": len(convs)})
    out = []

    def timed(name, backend, decoding, batch_label):
        backend.chat(convs[:1], decoding, ANSWER_PREFIX if backend.prefills else "")  # warm-up
        t = time.perf_counter()
        done = backend.chat(convs, decoding, ANSWER_PREFIX if backend.prefills else "")
        s = time.perf_counter() - t
        tokens = sum(c.completion_tokens or 0 for c in done)
        out.append({"backend": name, "batch": batch_label, "samples_per_s": len(convs) / s,
                     "tokens_per_s": tokens / s, "mean_tokens": tokens / len(convs)})
        print(f"  throughput {name} {batch_label}: {len(convs) / s:.2f} samples/s, {tokens / s:.1f} tokens/s",
              flush=True)

    tf = TransformersBackend(DEFAULT_MODEL)  # on the process's threads, set in main
    timed("transformers", tf, d1, "1")
    timed("transformers", tf, dn, str(len(convs)))
    del tf
    gc.collect()
    try:
        lc = LlamaCppBackend(DEFAULT_MODEL)
    except Exception as e:  # llama-cpp-python missing
        print(f"  llama.cpp skipped: {e}")
        return out
    timed("llama.cpp", lc, d1, "1")
    lc.close()
    del lc
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "passive"}
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_gguf()),
                               "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                               "--n_threads", str(args.threads), "--n_ctx", "4096"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as cache:
            for conc in (1, 4):
                http = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "smollm2", timeout_s=600, concurrency=conc,
                                     cache_dir=Path(cache) / str(conc), json_mode=False)
                timed("llama.cpp server (HTTP)", http, d1, f"{conc} in flight")
                http.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--test-rows", type=int, default=40, help="the fixed test subset: first N test rows (full: 300)")
    p.add_argument("--train-rows", default="64", help="training reviews for sft and prompt_lm: a number, or all")
    p.add_argument("--dataset", default=None, help="a prepared feedbackgen dataset folder (default: the "
                   "PETER-format Musical Instruments, split 1)")
    p.add_argument("--set", action="append", default=None, metavar="ROW:KEY=VALUE",
                   help="one setting of one row, e.g. prompt_lm:rag_k=3 (repeatable)")
    p.add_argument("--valid-rows", type=int, default=32, help="validation reviews for sft and prompt_lm (full: 256)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of sft and of each prompt_lm phase")
    p.add_argument("--peter-epochs", type=int, default=2, help="epoch cap of peter (default) (its preset: 10)")
    p.add_argument("--shots", type=int, default=3, help="past reviews in few-shot and sft prompts")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size")
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model of every LLM row")
    p.add_argument("--backend", default="transformers", choices=["transformers", "llama_cpp", "openai", "vllm"],
                   help="back-end of the llm rows")
    p.add_argument("--base-url", default=None, help="--backend openai: the server's URL (…/v1)")
    p.add_argument("--served-model", default=None, help="--backend openai: the model name the server knows")
    p.add_argument("--only", nargs="*", default=None, choices=[SLUG[r] for r in ROWS],
                   help="run only these rows (`--only` alone: none, just the throughput table)")
    p.add_argument("--throughput-prompts", type=int, default=8, help="prompts per throughput measurement")
    p.add_argument("--no-throughput", action="store_true", help="skip the back-end throughput table")
    p.add_argument("--constrained", default="both", choices=["on", "off", "both"],
                   help="llm/sft answers decoded under their JSON schema, free (pre-filled, repaired), or both")
    p.add_argument("--prompt-style", default="full", choices=["full", "short"],
                   help="llm/sft prompts: the instruction in every turn, or once in a one-line system prompt")
    p.add_argument("--save-models", default=None, help="save each trained row's model folder under this folder")
    p.add_argument("--load-models", default=None, help="generate with the rows' model folders saved under this "
                   "folder by --save-models (on the same data) instead of training them")
    p.add_argument("--device", default="cpu", help="llm, sft and prompt_lm rows: cpu, cuda, cuda:N or auto")
    p.add_argument("--raw-out", default=None, help="append each row's texts, ratings and timings to this "
                   "JSON-lines file as the row ends")
    p.add_argument("--no-score", action="store_true", help="generate only (with --raw-out); score later")
    p.add_argument("--score-raw", nargs="+", default=None, metavar="FILE",
                   help="score the rows of these --raw-out files instead of running rows")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (1 is fastest while anything else runs on 2 cores; try 2 on an idle machine)")
    args = p.parse_args(argv)
    if args.train_rows != "all" and not args.train_rows.isdigit():
        p.error(f"--train-rows: expected a number or all, got {args.train_rows!r}")
    parse_sets(args.set)  # a typo stops here, not after an hour of training
    if args.no_score and not args.raw_out:
        p.error("--no-score keeps nothing without --raw-out FILE")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    ds = load_data(args)
    machine = f"{cpu_model()}, {os.cpu_count()} cores" + (
        f", {torch.cuda.get_device_name()}" if args.device != "cpu" and torch.cuda.is_available() else "")
    print(f"machine: {machine}; torch {torch.__version__}, {args.threads} threads")
    left_out = ds.test_without_explanation
    print(f"data: {args.dataset or 'PETER-format Musical Instruments split 1'}: {len(ds.train)} train / "
          f"{len(ds.valid)} valid / first {len(ds.test)} test rows"
          + (f" ({left_out} test rows without an explanation left out)" if left_out else "")
          + f"; base model {args.model}", flush=True)
    if not args.no_score:
        from feedbackgen.data.text import tokenize
        from feedbackgen.evaluation.extra import NgramIndex
        from feedbackgen.evaluation.naturalness import naturalness

        copies = NgramIndex([tokenize(t) for t in ds.train["explanation"].drop_nulls().to_list()])
        references = naturalness(ds.test["explanation"].to_list())

    results = []
    for done in (read_raw(args.score_raw, test_pairs(ds)) if args.score_raw else run_rows(ds, args, machine)):
        for result in done:
            if not args.no_score:
                result["metrics"] = score(result, ds, copies)
                results.append(result)
    if args.no_score:
        return

    chance = next((r["metrics"].get("personalisation_chance_mean_rank") for r in results), None)
    cols = ["BLEU-1", "BLEU-4", "ROUGE-L F", "USR", "distinct-2", "emb", "pers. rank", "sent.-rating ρ",
            "RMSE", "MAE", "copy", "loops", "natural.", "train s", "trained on", "gen/s", "back-end", "JSON valid/repaired/retried/fallback",
            "prompt tok"]
    if results:
        print()
        print(f"pers. rank: lower is better; chance = {number(chance, '.1f')}. natural.: median perplexity "
              f"(lower is more natural); the references' own: {references['median']:.1f}")
    rows = []
    for r in results:
        m, a = r["metrics"], r["answers"]
        answers = "/".join(str(a.get(k, 0)) for k in ("valid", "repaired", "retried", "fallback")) if a else "—"
        cells = [number(m["bleu1"], ".2f"), number(m["bleu4"], ".2f"), number(m["rougeL_f"], ".2f"), number(m["usr"], ".3f"),
                 number(m["distinct2"], ".3f"), number(m["emb"], ".3f"), number(m.get("personalisation_mean_rank"), ".1f"),
                 number(m["sentiment_rating"], ".3f"), number(m["rmse"], ".3f"), number(m["mae"], ".3f"),
                 number(m["copy"], ".3f"), number(m["loops"], ".3f"), number(m["naturalness"], ".1f"), number(r["fit_s"], ".0f"), f"{r['trained_on']} rows", number(r["gen_per_s"], ".2f"), r["backend"], answers,
                 number(r["prompt_tokens"], ".0f")]
        rows.append([r["row"], *cells])
    if results:
        print("\n".join(table_lines(["model", *cols], rows, align="l" + "r" * (len(cols) - 3) + "llr")))
    for machine in sorted({r["machine"] for r in results if r.get("machine")}):
        print(f"trained and generated on: {machine}")

    if not args.no_throughput:
        print()
        rows = throughput(ds, args)
        print()
        print("\n".join(table_lines(
            ["back-end", "batch", "samples/s", "tokens/s", "tokens per answer"],
            [[r["backend"], r["batch"], number(r["samples_per_s"], ".2f"), number(r["tokens_per_s"], ".1f"),
              number(r["mean_tokens"], ".1f")] for r in rows], align="llrrr")))
        tf1 = next((r for r in rows if r["backend"] == "transformers" and r["batch"] == "1"), None)
        lc1 = next((r for r in rows if r["backend"] == "llama.cpp"), None)
        if tf1 and lc1:
            print(f"\nllama.cpp / transformers at batch 1: {lc1['tokens_per_s'] / tf1['tokens_per_s']:.1f}× "
                  f"tokens/s, {lc1['samples_per_s'] / tf1['samples_per_s']:.1f}× samples/s (target ≥ 4×)")


if __name__ == "__main__":
    main()
