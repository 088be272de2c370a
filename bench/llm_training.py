"""What each step buys when fine-tuning an LM on a CPU: `sft` and `prompt_lm`, one step added at a time.

    python bench/llm_training.py                  # the default run (about 12 min on 2 shared cores)
    python bench/llm_training.py --rows 96        # more training rows per measurement
    python bench/llm_training.py --only sft --lora-layers 8
    python bench/llm_training.py --memory --rows 8 --valid-rows 4    # peak memory of sft's defaults

Data: the PETER-format Musical Instruments (split 1), target = the explanation sentence. Each row of
the table fits the generator once, for one epoch, on the same seeded sample of `--rows` training
reviews (`max_train_samples`; batch size 8 for sft, 16 for prompt_lm, their defaults), validated on
the same `--valid-rows` reviews, with `--threads` threads, after a warm-up fit of one batch with and
without autocast. The steps are cumulative, each row keeping the ones above it:

  sft        baseline: the default few-shot prompt (shots=3, full style), LoRA on q/k/v/o of every
             layer, float32, shuffled batches, and the output layer run at every position (the
             model's own `labels=` loss, as before `training.target_nll`);
             + logits at the answer's positions only (`training.target_nll`, now always on)
             + short RAG-only prompt (prompt_style=short, shots=0, rag_k=3)
             + length grouping (group_by_length)   + LoRA on q_proj, v_proj only
             + lora_layers=N (`--lora-layers`)      + autocast (bfloat16)
  prompt_lm  PEPLER's defaults with one epoch per phase; each step's two phases are two rows:
             phase 1 (prompt vectors and rating head, LM frozen) and phase 2 (everything);
             baseline (shuffled batches, float32) + length grouping + autocast

Columns: prompt tok = mean prompt tokens per training row over the whole training split (sft: the
chat up to the assistant's turn; prompt_lm: 2 vectors + its text prompt); padding = padded tokens /
all tokens of the first epoch's batches over the whole training split, in the trainer's seeded
order (the most that packing rows into full sequences could buy); rows/s = training rows per second
of the timed epoch (`training_log`: the trainer's time for the epoch, validation excluded); ×
= rows/s over the kind's baseline; min/epoch = the whole training split's rows / rows/s; valid NLL = the
validation loss of the answer (sft) or text (prompt_lm) tokens after that tiny epoch, a rough
sanity check only (sft rows with other prompts score other inputs).

Below the table: prompt tokens of the three prompt shapes, the shared prefix (the system prompt:
what KV-cache reuse of a common prefix could save at generation), and the share of a training step
that the frozen layers below `lora_layers` take (what caching their outputs could save from the
second epoch on). Times depend on what else runs on the machine; the bench never asserts them.

`--memory`: the peak resident memory of a default `sft` LoRA fit (the few-shot prompt, batch 8,
LoRA on q/k/v/o of every layer, float32), each setting in a fresh process (`ru_maxrss` of the whole
run: data, review embeddings, the model, training, validation and the collapse check), on the
training reviews of the `--memory-users` most active users (30: about 620 reviews, the issue's
"600 reviews"; their prompts are as long as anyone's) and `--rows` of them trained on: without
gradient checkpointing or micro-batches, with checkpointing only, and with the defaults (both).
Columns: peak MB, rows/s of the epoch, valid NLL after it (the same seeded rows: equal up to
float rounding, since both settings change how a step is computed, not what).
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin-waiting on 2 shared cores slow everything else down (bench/llm.py)
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from machine import cpu_model  # bench/machine.py

from feedbackgen.tables import number, table_lines

SHORT_RAG = {"prompt_style": "short", "shots": 0, "rag_k": 3}


def load_data():
    """Train and valid splits of the PETER-format Musical Instruments (split 1), read as bench/peter.py does."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset
    from peter import load_data as load_whole  # bench/peter.py

    ds = load_whole(argparse.Namespace(dataset=None, rows=None, test_rows=None))
    return Dataset(pl.concat([ds.train, ds.valid], how="diagonal_relaxed"))


def most_active(ds, users: int):
    """`ds` restricted to the rows of its `users` most active users (ties by id)."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    df = ds.interactions
    top = df.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False]).head(users)["user_id"]
    return Dataset(df.filter(pl.col("user_id").is_in(top.implode())))


# -- --memory: the peak memory of a default sft fit, one process per setting -----------------------

MEMORY_SETTINGS = [("no checkpointing, whole batches", {"gradient_checkpointing": False, "micro_batch_size": None}),
                   ("gradient checkpointing", {"micro_batch_size": None}),
                   ("defaults: checkpointing + micro-batches of 4", {})]


def memory_child(args) -> None:
    """Fit `sft` with its defaults and `--memory-child`'s settings; print one JSON line."""
    import torch

    from feedbackgen.models import create as create_model

    torch.set_num_threads(args.threads)
    ds = most_active(load_data(), args.memory_users)
    cfg = {"num_threads": args.threads, "max_train_samples": args.rows, "max_valid_samples": args.valid_rows,
           "progress": False, "collapse_requests": 2, "collapse_max_new_tokens": 4, **json.loads(args.memory_child)}
    model = create_model("sft", cfg).fit(ds)
    entry = model.training_log[-1]
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "train_rows": len(ds.train), "rows_s": entry["samples_per_s"],
                      "valid": entry["valid"]["nll_answer"]}))


def memory_table(args) -> None:
    """One fresh process per `MEMORY_SETTINGS` entry; the table of their peaks."""
    rows = []
    for label, settings in MEMORY_SETTINGS:
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--memory-child", json.dumps(settings), "--rows", str(args.rows),
               "--valid-rows", str(args.valid_rows), "--threads", str(args.threads),
               "--memory-users", str(args.memory_users)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{label}: the fit failed:\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {label}: {r['peak_mb']:.0f} MB ({time.perf_counter() - t:.0f} s)", flush=True)
        rows.append([label, f"{r['peak_mb']:,.0f}", f"{r['rows_s']:.2f}", f"{r['valid']:.4f}"])
    print(f"\nsft defaults otherwise; the {args.memory_users} most active users' {r['train_rows']} training "
          f"reviews, {args.rows} trained on (batch 8), {args.valid_rows} validated; {args.threads} threads")
    print("\n".join(table_lines(["setting", "peak MB", "rows/s", "valid NLL"], rows, align="lrrr")))


def embed_once() -> None:
    """Every sft fit embeds the same 7,876 training reviews for its prompts (minutes on 2 cores):
    embed them once for the whole bench. The vectors are the same; only the waiting goes."""
    from feedbackgen.models.llm import prompts

    done: dict = {}
    real = prompts.embed

    def embed(texts, model=prompts.DEFAULT_MODEL, *args, **kwargs):
        key = (tuple(texts), model)
        if key not in done:
            done[key] = real(texts, model, *args, **kwargs)
        return done[key]

    prompts.embed = embed


def all_logits_sft():
    """`sft` as it was: the model's own `labels=` loss, the output layer run at every position."""
    from feedbackgen.models.llm.sft import LoRASFT
    from feedbackgen.models.llm.training import autocast

    class AllLogitsSFT(LoRASFT):
        def answer_nll(self, batch):
            with autocast(self.config.autocast, batch["labels"].device):
                return self.lm(**batch).loss

    return AllLogitsSFT


def steps(args) -> list[tuple[str, str, dict, bool]]:
    """(kind, label, config, all logits) per row: each step's settings on top of the previous ones'."""
    out = []
    if "sft" in args.only:
        cfg = {"group_by_length": False}
        for label, update in [("baseline", {}), ("+ logits at answer positions only", {}),
                              ("+ short RAG-only prompt", SHORT_RAG), ("+ length grouping", {"group_by_length": True}),
                              ("+ LoRA on q_proj, v_proj only", {"target_modules": ["q_proj", "v_proj"]}),
                              (f"+ lora_layers={args.lora_layers}", {"lora_layers": args.lora_layers}),
                              ("+ autocast bf16", {"autocast": True})]:
            cfg = {**cfg, **update}
            out.append(("sft", label, cfg, label == "baseline"))
    if "prompt_lm" in args.only:
        cfg = {"group_by_length": False}
        for label, update in [("baseline", {}), ("+ length grouping", {"group_by_length": True}),
                              ("+ autocast bf16", {"autocast": True})]:
            cfg = {**cfg, **update}
            out.append(("prompt_lm", label, cfg, False))
    return out


def create(kind: str, cfg: dict, args, rows: int, all_logits: bool = False):
    from feedbackgen.models import create as create_model

    common = {"num_threads": args.threads, "max_train_samples": rows, "max_valid_samples": args.valid_rows,
              "progress": False, "collapse_requests": 1, "collapse_max_new_tokens": 1, "seed": 1}
    if kind == "prompt_lm":
        common.update(prompt_epochs=1, full_epochs=1)
    else:
        common.update(max_epochs=1)
    if all_logits:
        return all_logits_sft()({**common, **cfg})
    return create_model(kind, {**common, **cfg})


# -- what a prompt shape costs, over the whole training split ------------------------------------

def lengths_of(model, train) -> tuple[list[int], list[int], list[list[int]]]:
    """(sequence tokens, prompt tokens, prompt token ids) per training row, as the fitted `model` encodes them."""
    if model.name == "sft":
        from feedbackgen.models.llm.training import IGNORE

        encoded = model.encode(train)
        prompts = [ids[:sum(label == IGNORE for label in labels)] for ids, labels in encoded]
        return [len(ids) for ids, _ in encoded], [len(p) for p in prompts], prompts
    encoded = model._encode(train, training=True)
    return ([2 + len(r["prefix"]) + len(r["tokens"]) for r in encoded], [2 + len(r["prefix"]) for r in encoded],
            [r["prefix"] for r in encoded])


def padding_share(lengths: list[int], batch_size: int, grouped: bool, seed: int = 1) -> float:
    """Padded / all tokens of the first epoch's batches, drawn as the trainer draws them."""
    import torch

    from feedbackgen.models.trainer import length_grouped_batches

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=gen)
    batches = length_grouped_batches(order, lengths, batch_size, gen) if grouped else order.split(batch_size)
    padded = total = 0
    for b in batches:
        rows = [lengths[i] for i in b.tolist()]
        padded += max(rows) * len(rows) - sum(rows)
        total += max(rows) * len(rows)
    return padded / total


def shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with."""
    n = min(len(p) for p in prompts)
    first = prompts[0]
    for p in prompts[1:]:
        while n and p[:n] != first[:n]:
            n -= 1
    return n


def bottom_share(model, train, frozen: int, batches: int = 3) -> float:
    """Share of a training step (forward and backward) spent below decoder layer `frozen`: what
    caching those layers' outputs would save per step (from the second epoch on)."""
    import torch

    layers = model.lm.get_base_model().model.layers
    marks: dict[str, float] = {}
    hooks = [layers[0].register_forward_pre_hook(lambda *_: marks.__setitem__("bottom", time.perf_counter())),
             layers[frozen].register_forward_pre_hook(lambda *_: marks.__setitem__("top", time.perf_counter()))]
    bs = model.config.training.batch_size
    encoded = model.encode(train.head(batches * bs))
    model.lm.train()
    below = whole = 0.0
    for b in range(batches):
        batch = model._batch(encoded, torch.arange(b * bs, (b + 1) * bs))
        t = time.perf_counter()
        model.answer_nll(batch).backward()
        whole += time.perf_counter() - t
        below += marks["top"] - marks["bottom"]
    for h in hooks:
        h.remove()
    model.lm.zero_grad(set_to_none=True)
    model.lm.eval()
    return below / whole


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=48, help="training rows of each timed epoch (a seeded sample)")
    p.add_argument("--valid-rows", type=int, default=16, help="validation rows scored after the epoch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lora-layers", type=int, default=10, help="the lora_layers step's N (SmolLM2-135M has 30)")
    p.add_argument("--only", nargs="+", default=["sft", "prompt_lm"], choices=["sft", "prompt_lm"])
    p.add_argument("--memory", action="store_true", help="the peak memory of sft's default training instead")
    p.add_argument("--memory-users", type=int, default=30, help="--memory: train on these most active users' rows")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)  # JSON settings: one --memory fit, in this process
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.memory:
        print(f"machine: {cpu_model()}, {os.cpu_count()} cores", flush=True)
        return memory_table(args)

    import torch

    from feedbackgen.models.text_units import target_rows

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} threads",
          flush=True)
    ds = load_data()
    whole_split = len(ds.train)  # 7,876 reviews
    train = target_rows(ds, "train", "explanation")
    embed_once()
    print(f"data: PETER-format Musical Instruments split 1, {len(train)} train / {len(ds.valid)} valid rows; each "
          f"row: 1 epoch on {args.rows} train rows, validated on {args.valid_rows}", flush=True)

    for kind in args.only:  # warm-up: one batch in float32 and one under autocast
        for bf16 in (False, True):
            create(kind, {**(SHORT_RAG if kind == "sft" else {}), "autocast": bf16}, args,
                   rows=8 if kind == "sft" else 16).fit(ds)
    print(f"warm-up done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    shapes: dict = {}  # prompt shape -> (lengths, prompt lengths, prompt ids) over the whole split
    results, extras = [], {}
    for kind, label, cfg, all_logits in steps(args):
        t = time.perf_counter()
        model = create(kind, cfg, args, args.rows, all_logits).fit(ds)
        shape = (kind, cfg.get("prompt_style"), cfg.get("shots"), cfg.get("rag_k"))
        if shape not in shapes:
            shapes[shape] = lengths_of(model, train)
        lengths, prompt_lengths, _ = shapes[shape]
        bs = model.config.training.batch_size
        for entry in model.training_log:
            phase = {"prompts": " — phase 1", "full": " — phase 2"}.get(entry.get("phase"), "")
            results.append({"kind": kind, "step": label + phase, "prompt": sum(prompt_lengths) / len(prompt_lengths),
                            "padding": padding_share(lengths, bs, cfg["group_by_length"]),
                            "rows_s": entry["samples_per_s"],
                            "valid": entry["valid"].get("nll_answer", entry["valid"].get("nll_text")),
                            "base": (kind, phase)})
        if kind == "sft" and cfg.get("autocast"):  # the last sft step: everything on
            extras["layers"] = model.lm.get_base_model().config.num_hidden_layers
            extras["bottom"] = bottom_share(model, train, extras["layers"] - args.lora_layers)
            extras["sft_tokens"] = sum(lengths) / len(lengths)
            extras["hidden"] = model.lm.get_base_model().config.hidden_size
        if kind == "sft" and label == "baseline":  # the three prompt shapes, as this fitted model writes them
            for update in ({"prompt_style": "short"}, SHORT_RAG):
                model.config = model.config.model_copy(update=update)
                shapes[("sft", update["prompt_style"], update.get("shots"), update.get("rag_k"))] = \
                    lengths_of(model, train)
        print(f"  {kind} {label}: {results[-1]['rows_s']:.2f} rows/s ({time.perf_counter() - t:.0f} s)", flush=True)
        del model
        gc.collect()

    baseline = {r["base"]: r["rows_s"] for r in reversed(results)}
    print()
    head = ["model", "step", "prompt tok", "padding", "rows/s", "×", f"min/epoch ({whole_split:,} rows)", "valid NLL"]
    rows = [[r["kind"], r["step"], f"{r['prompt']:.0f}", f"{100 * r['padding']:.1f} %", f"{r['rows_s']:.2f}",
             f"{r['rows_s'] / baseline[r['base']]:.1f}", f"{whole_split / r['rows_s'] / 60:.0f}",
             number(r["valid"], ".3f")]
            for r in results]
    print("\n".join(table_lines(head, rows, align="llrrrrrr")))

    if "sft" in args.only:
        print("\nsft prompt shapes over the whole training split (prompt tokens; padding shuffled → grouped, "
              "batch 8; shared prefix = tokens every prompt starts with):")
        names = {(None, None, None): "full few-shot (shots=3)", ("short", None, None): "short few-shot (shots=3)",
                 ("short", 0, 3): "short RAG-only (shots=0, rag_k=3)"}
        full = None
        for key, name in names.items():
            lengths, prompt_lengths, prompts = shapes[("sft", *key)]
            mean = sum(prompt_lengths) / len(prompt_lengths)
            full = full or mean
            prefix = shared_prefix(prompts)
            print(f"- {name}: {mean:.0f} prompt tokens ({100 * mean / full:.0f} % of full), "
                  f"{(sum(lengths) - sum(prompt_lengths)) / len(lengths):.0f} answer tokens; padding "
                  f"{100 * padding_share(lengths, 8, False):.1f} % → {100 * padding_share(lengths, 8, True):.1f} %; "
                  f"shared prefix {prefix} tokens = {100 * prefix / mean:.0f} % of the prompt")
    if "bottom" in extras:
        gb = whole_split * extras["sft_tokens"] * extras["hidden"] * 2 / 1e9
        frozen = extras["layers"] - args.lora_layers
        print(f"\nsft, last step: the {frozen} frozen layers below lora_layers={args.lora_layers} take "
              f"{100 * extras['bottom']:.0f} % of a training step; caching their outputs (bfloat16: {gb:.1f} GB "
              "for the whole split) would save that from the second epoch on")
    if "prompt_lm" in args.only:
        print("prompt_lm phase 1: nothing to cache (the prompt vectors are the LM's first input)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
