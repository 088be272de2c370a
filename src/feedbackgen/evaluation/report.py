"""Score prediction files against a dataset and write the report: JSON, Markdown and plots.

    evaluate([PRED.jsonl, ...], dataset, out_dir)  ->  out_dir/report.json
                                                       out_dir/report.md
                                                       out_dir/metrics.png, confusion.png, lengths.png

A prediction row is one JSON object a line with at least user_id, item_id, rating, text and model
(optionally target, aspect, decoding). Rows are joined to the dataset's `split` rows on
(user_id, item_id); each (model, target) pair is scored on its own. A model whose texts are all
empty (a rating-only baseline) gets rating metrics only.

Every report carries a leak check (`leak_check`): the share of the split's references (reviews,
and explanations when the dataset has them) whose normalised text (data/duplicates.py) occurs
in the training split — from the same user, and from anyone. A model that copies training text
scores well exactly where these shares are high; the memorisation metric compares *outputs*
with training text and cannot see it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.data.duplicates import normalised_text
from feedbackgen.data.text import tokenize
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.evaluation import extra
from feedbackgen.evaluation.extra import EXTRA_METRICS, NgramIndex
from feedbackgen.evaluation.metrics import (METRICS, mean_absolute_error, peter_metrics,
                                             root_mean_square_error)
from feedbackgen.io import atomic_write, atomic_write_json, atomic_write_text
from feedbackgen.models.llm.answers import ANSWER_KINDS

REPORT_VERSION = 1
REQUIRED_FIELDS = ("user_id", "item_id", "rating", "text", "model")
TARGETS = ("explanation", "review")
STARS = (1, 2, 3, 4, 5)
ALL_METRICS = {**METRICS, **EXTRA_METRICS}

# The headline table, in this order; every other metric goes to the second table.
MAIN_COLUMNS = ("bleu1", "bleu4", "rouge1_f", "rouge2_f", "rougeL_f", "usr", "fmr", "fcr", "div",
                "rmse", "mae", "embedding_sim", "distinct2", "memorisation")
MISSING = "—"


# -- reading predictions -----------------------------------------------------------------------

def _field_error(path: Path, line: int, field: str, message: str) -> DataError:
    return DataError(message, source=str(path), line=line, field=field)


def _as_id(value: Any, path: Path, line: int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise _field_error(path, line, field, f"expected a non-empty string (or integer), got {value!r}")
    return str(value)


def _parse_prediction(obj: Any, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", source=str(path), line=line)
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise _field_error(path, line, name, "missing field (each row needs " + ", ".join(REQUIRED_FIELDS) + ")")
    rating = obj["rating"]
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))
                               or not math.isfinite(rating)):
        raise _field_error(path, line, "rating", f"expected a finite number or null, got {rating!r}")
    if not isinstance(obj["text"], str):
        raise _field_error(path, line, "text", f"expected a string (empty for no text), got {obj['text']!r}")
    if not isinstance(obj["model"], str) or not obj["model"]:
        raise _field_error(path, line, "model", f"expected a non-empty string, got {obj['model']!r}")
    target = obj.get("target")
    if target is not None and target not in TARGETS:
        raise _field_error(path, line, "target", f"expected one of {', '.join(TARGETS)} or null, got {target!r}")
    decoding = obj.get("decoding")
    if decoding is not None and not isinstance(decoding, dict):
        raise _field_error(path, line, "decoding", f"expected an object or null, got {decoding!r}")
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise _field_error(path, line, "meta", f"expected an object or null, got {meta!r}")
    answer = (meta or {}).get("answer")  # LLM generators: how the JSON answer was obtained
    if answer is not None and answer not in ANSWER_KINDS:
        raise _field_error(path, line, "meta.answer", f"expected one of {', '.join(ANSWER_KINDS)}, got {answer!r}")
    return {
        "user_id": _as_id(obj["user_id"], path, line, "user_id"),
        "item_id": _as_id(obj["item_id"], path, line, "item_id"),
        "rating": None if rating is None else float(rating),
        "text": obj["text"],
        "model": obj["model"],
        "target": target,
        "decoding": json.dumps(decoding, sort_keys=True) if decoding is not None else None,
        "answer": answer,
        "file": str(path),
    }


def read_predictions(path: Path) -> pl.DataFrame:
    """One row per prediction line (blank lines skipped); any bad line stops with file, line, field."""
    path = Path(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"not valid JSON ({e.msg} at column {e.colno})",
                                    source=str(path), line=number) from None
                rows.append(_parse_prediction(obj, path, number))
    except FileNotFoundError:
        raise DataError("prediction file does not exist", source=str(path)) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=str(path)) from None
    if not rows:
        raise DataError("holds no predictions", source=str(path))
    schema = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "text": pl.Utf8,
              "model": pl.Utf8, "target": pl.Utf8, "decoding": pl.Utf8, "answer": pl.Utf8, "file": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


# -- what each prediction is compared with -----------------------------------------------------

def _default_target(dataset: Dataset, target: str | None) -> str:
    if target is not None:
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        return target
    return "explanation" if dataset.has_explanations else "review"


def _reference_column(dataset: Dataset, target: str) -> str:
    if target == "explanation":
        if not dataset.has_explanations:
            raise DataError("predictions target explanations but the dataset has no 'explanation' column; "
                            "prepare it with aspect extraction, or evaluate with target 'review'")
        return "explanation"
    return "text"


def _feature_set(dataset: Dataset) -> set[str] | None:
    """Distinct aspects of the training rows: the vocabulary FMR / FCR / DIV look for."""
    if "aspect" not in dataset.interactions.columns:
        return None
    aspects = dataset.train["aspect"].drop_nulls().str.to_lowercase().unique().to_list()
    return set(aspects) or None


def _dedupe(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    unique = df.unique(subset=["user_id", "item_id"], keep="first", maintain_order=True)
    return unique, len(df) - len(unique)


# -- scoring one model -------------------------------------------------------------------------

def _stars(ratings: np.ndarray) -> np.ndarray:
    """Nearest star 1..5, halves rounded up (np.rint would round 2.5 to 2)."""
    return np.clip(np.floor(ratings + 0.5), STARS[0], STARS[-1]).astype(int)


def rating_confusion(predicted: Sequence[float], true: Sequence[float]) -> list[list[int]]:
    """Counts [true star][predicted star], both rounded to the nearest star in 1..5."""
    matrix = np.zeros((len(STARS), len(STARS)), dtype=int)
    if len(predicted):
        np.add.at(matrix, (_stars(np.asarray(true)) - 1, _stars(np.asarray(predicted)) - 1), 1)
    return matrix.tolist()


class _Context:
    """What all models of one report share, computed once: references, features, training n-grams,
    embeddings (cached by text, so each distinct reference is embedded once)."""

    def __init__(self, dataset: Dataset, split: str, embeddings: bool, seed: int):
        self.dataset, self.split, self.embeddings, self.seed = dataset, split, embeddings, seed
        self.references, self.reference_duplicates = _dedupe(dataset.split(split))
        self.feature_set = _feature_set(dataset)
        self._indexes: dict[str, NgramIndex] = {}
        self._vectors: dict[str, np.ndarray] = {}

    def training_index(self, column: str) -> NgramIndex:
        if column not in self._indexes:
            texts = self.dataset.train[column].drop_nulls().to_list()
            self._indexes[column] = NgramIndex([tokenize(t) for t in texts])
        return self._indexes[column]

    def embed(self, texts: list[str]) -> np.ndarray:
        from feedbackgen.embeddings import embed

        new = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if new:
            self._vectors.update(zip(new, embed(new)))
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


def _text_metrics(rows: pl.DataFrame, ctx: _Context, column: str) -> dict[str, Any]:
    rows = rows.filter(pl.col("reference").is_not_null())
    if rows.is_empty():
        return {}
    generated_text, reference_text = rows["text"].to_list(), rows["reference"].to_list()
    generated = [tokenize(t) for t in generated_text]
    references = [tokenize(t) for t in reference_text]
    reference_features = None
    if ctx.feature_set is not None:
        reference_features = [a.lower() if a else None for a in rows["aspect"].to_list()]
    out: dict[str, Any] = peter_metrics(generated, references, ctx.feature_set, reference_features)
    out["distinct1"] = extra.distinct_n(generated, 1)
    out["distinct2"] = extra.distinct_n(generated, 2)
    out["self_bleu4"] = extra.self_bleu(generated, seed=ctx.seed)
    out.update(extra.length_stats(generated, "gen"))
    out.update(extra.length_stats(references, "ref"))
    out.update(extra.memorisation(generated, ctx.training_index(column)))
    compound = extra.vader_compound(generated_text)
    with_true = rows["rating_ref"].is_not_null().to_numpy()
    out["sentiment_rating_rho"] = extra.spearman(compound[with_true], rows["rating_ref"].to_numpy()[with_true])
    with_pred = rows["rating"].is_not_null().to_numpy()
    out["sentiment_pred_rating_rho"] = extra.spearman(compound[with_pred], rows["rating"].to_numpy()[with_pred])
    if ctx.embeddings:
        gen_vecs, ref_vecs = ctx.embed(generated_text), ctx.embed(reference_text)
        out["embedding_sim"] = extra.mean_cosine(gen_vecs, ref_vecs)
        out.update(extra.personalisation(gen_vecs, ref_vecs, rows["user_id"].to_list(), seed=ctx.seed))
    return out


def _score_group(preds: pl.DataFrame, ctx: _Context, target: str) -> dict[str, Any]:
    column = _reference_column(ctx.dataset, target)
    preds, duplicates = _dedupe(preds)
    refs = ctx.references.select(
        "user_id", "item_id", pl.col("rating").alias("rating_ref"), pl.col(column).alias("reference"),
        (pl.col("aspect") if "aspect" in ctx.references.columns else pl.lit(None, pl.Utf8)).alias("aspect"))
    rows = preds.join(refs, on=["user_id", "item_id"], how="inner", maintain_order="left")
    has_text = bool(rows["text"].str.strip_chars().str.len_chars().gt(0).any()) if len(rows) else False
    counts = {
        "predictions": len(preds) + duplicates,
        "duplicate_predictions": duplicates,
        "matched": len(rows),
        "predictions_without_reference": len(preds) - len(rows),
        "references_without_prediction": len(ctx.references) - len(rows),
        "matched_without_reference_text": int(rows["reference"].null_count()),
        "matched_with_rating": int(rows.filter(pl.col("rating").is_not_null()
                                               & pl.col("rating_ref").is_not_null()).height),
    }
    metrics: dict[str, Any] = {}
    if has_text:
        metrics.update(_text_metrics(rows, ctx, column))
    rated = rows.filter(pl.col("rating").is_not_null() & pl.col("rating_ref").is_not_null())
    confusion = None
    if len(rated):
        predicted, true = rated["rating"].to_numpy(), rated["rating_ref"].to_numpy()
        metrics["rmse"] = root_mean_square_error(predicted, true)
        metrics["mae"] = mean_absolute_error(predicted, true)
        confusion = {"stars": list(STARS), "rows": "true star", "columns": "predicted star (rounded, clipped)",
                     "matrix": rating_confusion(predicted, true)}
    decoding = [json.loads(d) for d in preds["decoding"].drop_nulls().unique(maintain_order=True).to_list()]
    answers = preds["answer"].drop_nulls()
    answer_counts = {kind: int((answers == kind).sum()) for kind in ANSWER_KINDS} if len(answers) else None
    return {"target": target, "reference_column": column, "has_text": has_text, "counts": counts,
            "answers": answer_counts,
            "metrics": metrics, "decoding": decoding, "rating_confusion": confusion,
            "files": preds["file"].unique(maintain_order=True).to_list()}


# -- the whole report --------------------------------------------------------------------------

def leak_check(dataset: Dataset, split: str) -> dict[str, Any]:
    """Per reference column: how many `split` rows have a text, and how many (and which share)
    of them occur, normalised, in train for the same user and for anyone (module docstring)."""
    if split == "train":
        return {"note": "the references are the training split itself"}
    out: dict[str, Any] = {}
    for column, name in (("text", "review"), ("explanation", "explanation")):
        if column not in dataset.interactions.columns:
            continue

        def keyed(df: pl.DataFrame) -> pl.DataFrame:
            return (df.select("user_id", normalised_text(column).alias("norm"))
                    .filter(pl.col("norm").is_not_null() & (pl.col("norm") != "")))

        train, refs = keyed(dataset.train), keyed(dataset.split(split))
        if refs.is_empty():
            continue
        pairs = train.select(pl.struct("user_id", "norm").alias("k")).unique()["k"].implode()
        same = int(refs.select(pl.struct("user_id", "norm").is_in(pairs).sum()).item())
        anyone = int(refs["norm"].is_in(train["norm"].unique().implode()).sum())
        out[name] = {"references": refs.height, "in_train_same_user": same, "in_train_anyone": anyone,
                     "share_same_user": same / refs.height, "share_anyone": anyone / refs.height}
    return out


def _finite(obj: Any) -> Any:
    """NaN / inf become None: JSON has no spelling for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def evaluate(predictions: list[Path], dataset: Dataset, out_dir: Path, split: str = "test",
             target: str | None = None, embeddings: bool = True, *,
             dataset_path: str | Path | None = None, seed: int = 1, sections: Sequence[str | Path] = ()) -> dict:
    """Score every model in `predictions` against `dataset`'s `split`; write report.json, report.md
    and plots to `out_dir`; return the report dict.

    A row's target is its `target` field, else `target`, else "explanation" when the dataset has
    explanations, else "review". `embeddings=False` skips the MiniLM metrics (embedding similarity,
    personalisation), the slow part on a CPU. `seed` fixes every sampled metric."""
    if not predictions:
        raise ConfigError("evaluate needs at least one prediction file")
    default_target = _default_target(dataset, target)
    frames = [read_predictions(Path(p)) for p in predictions]
    preds = pl.concat(frames).with_columns(pl.col("target").fill_null(default_target))
    ctx = _Context(dataset, split, embeddings, seed)

    groups = preds.select("model", "target").unique(maintain_order=True).rows()
    targets_per_model = preds.group_by("model").agg(pl.col("target").n_unique()).rows()
    several = {model for model, n in targets_per_model if n > 1}
    models = {}
    for model, group_target in groups:
        name = f"{model} [{group_target}]" if model in several else model
        group = preds.filter((pl.col("model") == model) & (pl.col("target") == group_target))
        models[name] = {"model": model, **_score_group(group, ctx, group_target)}

    manifest = dataset.manifest or {}
    report = _finite({
        "report_version": REPORT_VERSION,
        "dataset": {"path": str(dataset_path) if dataset_path is not None else None,
                    "source": manifest.get("source"), "summary": dataset.summary(),
                    "manifest_summary": manifest.get("summary")},
        "split": split,
        "references": len(ctx.references),
        "reference_duplicates": ctx.reference_duplicates,
        "leak_check": leak_check(dataset, split),
        "feature_set_size": len(ctx.feature_set) if ctx.feature_set else 0,
        "embeddings": embeddings,
        "seed": seed,
        "predictions": [{"file": str(p), "rows": len(f)} for p, f in zip(predictions, frames)],
        "models": models,
        "metric_definitions": {k: m.to_dict() for k, m in ALL_METRICS.items()},
        "sections": [read_section(p) for p in sections],
    })
    out_dir = Path(out_dir)
    report["plots"] = write_plots(report, preds, ctx, out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    return report


def read_section(path: str | Path) -> dict[str, str]:
    """A Markdown file written by another command (`recommend --evaluate --out`, `fidelity --out`),
    shown in the report beside the text metrics: {"file", "title", "markdown"}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--include {path}: no such Markdown file (write it with `feedbackgen recommend "
                          "--evaluate --out DIR` or `feedbackgen fidelity --out DIR`)")
    title = {"ranking": "Ranking", "fidelity": "Simulated user fidelity"}.get(path.stem, path.stem.replace("_", " "))
    return {"file": str(path), "title": title, "markdown": path.read_text(encoding="utf-8")}


# -- Markdown ----------------------------------------------------------------------------------

def _format(key: str, value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if key.startswith(("bleu", "rouge", "self_bleu")):
        return f"{value:.2f}"  # ×100 scores
    if key.startswith("length_") or key.endswith("mean_rank"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def _header(direction: str) -> str:
    return {"higher": " ↑", "lower": " ↓"}.get(direction, "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731 - a model name may hold a pipe
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(escape, row)) + " |" for row in rows]


def _describe_source(source) -> str:
    if not isinstance(source, dict):
        return str(source)
    files = ", ".join(f.get("name", "?") for f in source.get("files", []))
    return f"{source.get('format', '?')} file(s) {files}" if files else str(source.get("format", "?"))


def render_markdown(report: dict) -> str:
    models = report["models"]
    ds = report["dataset"]
    lines = ["# Evaluation report", "",
             f"Dataset: {ds.get('path') or '(in memory)'}"
             + (f" (from {_describe_source(ds['source'])})" if ds.get("source") else "")
             + f"; split `{report['split']}` with {report['references']} reference rows. "
             "↑ higher is better, ↓ lower is better; — not applicable (e.g. a rating-only model).", ""]

    lines += ["## Main metrics", ""]
    header = ["model", "target"] + [ALL_METRICS[k].name + _header(ALL_METRICS[k].direction) for k in MAIN_COLUMNS]
    rows = [[name, m["target"]] + [_format(k, m["metrics"].get(k)) for k in MAIN_COLUMNS]
            for name, m in models.items()]
    lines += _table(header, rows) + [""]

    rest = [k for k in ALL_METRICS if k not in MAIN_COLUMNS
            and any(k in m["metrics"] for m in models.values())]
    if rest:
        lines += ["## Other metrics", ""]
        header = ["metric"] + list(models)
        rows = [[ALL_METRICS[k].name + _header(ALL_METRICS[k].direction)]
                + [_format(k, m["metrics"].get(k)) for m in models.values()] for k in rest]
        lines += _table(header, rows) + [""]

    for section in report.get("sections") or ():
        text = section["markdown"].strip()
        title = "" if text.startswith("#") else f"## {section['title']}\n\nFrom `{section['file']}`.\n\n"
        lines += [title + text, ""]

    leaks = {k: v for k, v in (report.get("leak_check") or {}).items() if isinstance(v, dict)}
    if leaks:
        lines += ["## Leak check", "",
                  "References whose text (normalised: lower case, punctuation as spaces) also occurs in the "
                  "training split. A model that copies training text scores high where these shares are.", ""]
        lines += _table(["reference", "rows", "same user in train", "anyone in train"],
                        [[k, str(v["references"]), f"{v['in_train_same_user']} ({100 * v['share_same_user']:.1f} %)",
                          f"{v['in_train_anyone']} ({100 * v['share_anyone']:.1f} %)"] for k, v in leaks.items()])
        lines += [""]

    lines += ["## Counts", ""]
    count_keys = list(next(iter(models.values()))["counts"]) if models else []
    lines += _table(["model"] + [k.replace("_", " ") for k in count_keys],
                    [[name] + [str(m["counts"][k]) for k in count_keys] for name, m in models.items()]) + [""]

    answered = [(name, m["answers"]) for name, m in models.items() if m.get("answers")]
    if answered:
        lines += ["## LLM answers", "",
                  "How each JSON answer was obtained: valid as given, repaired without guessing, valid after "
                  "a retry, or the fallback (baseline rating + the user's most similar past review).", ""]
        lines += _table(["model"] + list(ANSWER_KINDS),
                        [[name] + [str(a[k]) for k in ANSWER_KINDS] for name, a in answered]) + [""]

    decoded = [(name, m["decoding"]) for name, m in models.items() if m["decoding"]]
    if decoded:
        lines += ["## Decoding settings", ""]
        lines += [f"- **{name}**: " + "; ".join(json.dumps(d, sort_keys=True) for d in ds_) for name, ds_ in decoded]
        lines += [""]

    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]

    lines += ["## Metric definitions", ""]
    used = [k for k in ALL_METRICS if any(k in m["metrics"] for m in models.values())]
    lines += _table(["key", "metric", "better", "definition", "source"],
                    [[k, ALL_METRICS[k].name, ALL_METRICS[k].direction, ALL_METRICS[k].description,
                      ALL_METRICS[k].source] for k in used]) + [""]
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------

def _save(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))


def _grid(n: int, columns: int) -> tuple[int, int]:
    cols = min(n, columns)
    return math.ceil(n / cols), cols


def _plot_metric_bars(report: dict, path: Path) -> bool:
    from matplotlib.figure import Figure  # the OO API: no pyplot, no global backend switch

    models = report["models"]
    keys = [k for k in MAIN_COLUMNS if any(m["metrics"].get(k) is not None for m in models.values())]
    if not keys:
        return False
    rows, cols = _grid(len(keys), 4)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    names = list(models)
    colors = [f"C{i % 10}" for i in range(len(names))]
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = [models[n]["metrics"].get(key) for n in names]
        ax.bar(range(len(names)), [v if v is not None else 0 for v in values], color=colors)
        for x, v in enumerate(values):
            if v is None:  # not applicable, unlike a true 0
                ax.text(x, 0, MISSING, ha="center", va="bottom", fontsize=9, color="grey")
        ax.set_title(ALL_METRICS[key].name + _header(ALL_METRICS[key].direction), fontsize=9)
        ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    _save(fig, path)
    return True


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _plot_confusions(report: dict, path: Path) -> bool:
    from matplotlib.figure import Figure

    rated = [(n, m["rating_confusion"]) for n, m in report["models"].items() if m["rating_confusion"]]
    if not rated:
        return False
    rows, cols = _grid(len(rated), 3)
    fig = Figure(figsize=(3.4 * cols, 3.2 * rows), layout="constrained")
    for i, (name, confusion) in enumerate(rated):
        ax = fig.add_subplot(rows, cols, i + 1)
        matrix = np.array(confusion["matrix"])
        ax.imshow(matrix, cmap="Blues")
        for (t, p), count in np.ndenumerate(matrix):
            ax.text(p, t, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set_xticks(range(len(STARS)), STARS)
        ax.set_yticks(range(len(STARS)), STARS)
        ax.set_xlabel("predicted star", fontsize=8)
        ax.set_ylabel("true star", fontsize=8)
        ax.set_title(_short(name, 30), fontsize=9)
    _save(fig, path)
    return True


def _plot_lengths(report: dict, preds: pl.DataFrame, ctx: _Context, path: Path) -> bool:
    from matplotlib.figure import Figure

    series: list[tuple[str, list[int]]] = []
    for column in dict.fromkeys(m["reference_column"] for m in report["models"].values()
                                if m["has_text"]):
        texts = ctx.references[column].drop_nulls().to_list()
        series.append((f"references ({column})", [len(tokenize(t)) for t in texts]))
    for name, m in report["models"].items():
        if m["has_text"]:
            texts = preds.filter((pl.col("model") == m["model"]) & (pl.col("target") == m["target"]))["text"]
            series.append((name, [len(tokenize(t)) for t in texts.to_list()]))
    if not series:
        return False
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    longest = max((np.percentile(lengths, 99) for _, lengths in series if lengths), default=1)
    step = max(1, math.ceil(longest / 40))
    bins = np.arange(0, longest + 2 * step, step) - 0.5  # whole tokens fall mid-bin
    for i, (label, lengths) in enumerate(series):
        ax.hist(np.clip(lengths, 0, bins[-1]), bins=bins, histtype="step", linewidth=1.5,
                density=True, label=_short(label, 40), color=f"C{i % 10}",
                linestyle="--" if label.startswith("references") else "-")
    ax.set_xlabel("tokens per text (clipped at the 99th percentile)")
    ax.set_ylabel("share of texts")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def write_plots(report: dict, preds: pl.DataFrame, ctx: _Context, out_dir: Path) -> list[str]:
    """metrics.png (main metrics per model), confusion.png (rating confusion per model),
    lengths.png (token-length histograms). Returns the file names written."""
    written = []
    for name, draw in (("metrics.png", lambda p: _plot_metric_bars(report, p)),
                       ("confusion.png", lambda p: _plot_confusions(report, p)),
                       ("lengths.png", lambda p: _plot_lengths(report, preds, ctx, p))):
        if draw(out_dir / name):
            written.append(name)
    return written


__all__ = ["evaluate", "read_predictions", "render_markdown", "rating_confusion", "ALL_METRICS",
           "MAIN_COLUMNS"]
