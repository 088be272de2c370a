"""Score prediction files against a dataset and write the report: JSON, Markdown and plots.

    evaluate([PRED.jsonl, ...], dataset, out_dir)  ->  out_dir/report.json
                                                       out_dir/report.md
                                                       out_dir/report.html (self-contained: report_html.py)
                                                       out_dir/metrics.png, confusion.png, lengths.png

Prediction files are read by `predictions.read_predictions`. Rows are joined to the dataset's
`split` rows on (user_id, item_id); each (file, model, target) group is one row of the report,
scored on its own (`scoring.score_group`). Its label is the model name; a model name found in two
files gets the file's name beside it ("peter (a.jsonl)"), and a model with several targets in one
file gets the target ("peter [review]"). No group is ever dropped.

A group that answers fewer than `min_coverage` of the split's references stops `evaluate` with a
one-line reason naming the file, the model and matched/expected (predictions for another dataset
or split, a run stopped early), unless `allow_partial`: then its row is marked partial. A group
writing nearly one text for all requests is marked collapsed (`scoring.collapse`).

Every report carries a leak check (`scoring.leak_check`) and, when asked, naturalness
(perplexity under a fixed pretrained LM, `naturalness`). This package imports nothing from
`feedbackgen.models`: it judges text and ratings, whoever produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.evaluation.predictions import read_predictions
from feedbackgen.evaluation.render import ALL_METRICS, MAIN_COLUMNS, render_markdown
from feedbackgen.evaluation.report_html import render_html
from feedbackgen.evaluation.scoring import (Context, default_target, examples, leak_check, rating_confusion,
                                            score_group)
from feedbackgen.io import atomic_write_json, atomic_write_text, json_ready
from feedbackgen.pretrained import DEFAULT_MODEL

REPORT_VERSION = 2  # 2: rows keyed by file and model; coverage, collapse, naturalness, examples
MIN_COVERAGE = 0.9
NATURALNESS_SAMPLE = 200


def _labels(groups: list[tuple[str, str, str]]) -> list[str]:
    """One distinct label per (file, model, target) group (module docstring)."""
    files_of: dict[str, set[str]] = {}
    targets_of: dict[tuple[str, str], set[str]] = {}
    for file, model, target in groups:
        files_of.setdefault(model, set()).add(file)
        targets_of.setdefault((file, model), set()).add(target)
    names = [Path(f).name for f in dict.fromkeys(f for f, _, _ in groups)]
    short = {f: Path(f).name if names.count(Path(f).name) == 1 else f for f, _, _ in groups}
    labels = []
    for file, model, target in groups:
        label = model + (f" ({short[file]})" if len(files_of[model]) > 1 else "")
        labels.append(label + (f" [{target}]" if len(targets_of[(file, model)]) > 1 else ""))
    return labels


def _partial(group: pl.DataFrame, ctx: Context, file: str, model: str, min_coverage: float,
             allow_partial: bool) -> bool:
    """Whether the group answers fewer than `min_coverage` of the references (allowed); raises when
    it does and that is not allowed. Checked before any scoring, so a wrong file fails fast."""
    matched = group.join(ctx.references, on=["user_id", "item_id"], how="semi").select("user_id", "item_id")
    matched, expected = matched.unique().height, len(ctx.references)
    share = matched / expected if expected else 0.0
    if share >= min_coverage:
        return False
    if allow_partial:
        return True
    raise DataError(f"model {model!r} answers {matched} of {expected} references of split {ctx.split!r} "
                    f"({100 * share:.1f} %), below the {100 * min_coverage:g} % coverage threshold: "
                    "predictions for another dataset or split? Pass --allow-partial to score it anyway "
                    "(marked partial)", source=file)


def evaluate(predictions: list[Path], dataset: Dataset, out_dir: Path, split: str = "test",
             target: str | None = None, embeddings: bool = True, *,
             dataset_path: str | Path | None = None, seed: int = 1, sections: Sequence[str | Path] = (),
             min_coverage: float = MIN_COVERAGE, allow_partial: bool = False,
             naturalness: bool = False, naturalness_model: str = DEFAULT_MODEL,
             naturalness_sample: int = NATURALNESS_SAMPLE) -> dict:
    """Score every (file, model, target) group in `predictions` against `dataset`'s `split`; write
    report.json, report.md and plots to `out_dir`; return the report dict.

    A row's target is its `target` field, else `target`, else "explanation" when the dataset has
    explanations, else "review". `embeddings=False` skips the MiniLM metrics (embedding similarity,
    personalisation), the slow part on a CPU. `min_coverage` (0..1) and `allow_partial`: see the
    module docstring; raises `DataError` naming the file for a group below it. `naturalness=True`
    adds each text model's perplexity under `naturalness_model` (median and mean, and the
    references' own) on `naturalness_sample` reference rows drawn with `seed`. `seed` fixes every
    sampled metric. Writes report.html too (one self-contained page). Raises `ConfigError` for no files
    or a value out of range."""
    if not predictions:
        raise ConfigError("evaluate needs at least one prediction file")
    if not 0 <= min_coverage <= 1:
        raise ConfigError(f"min_coverage must be within 0..1 (a share of the references), got {min_coverage}")
    if naturalness_sample < 1:
        raise ConfigError(f"naturalness_sample must be at least 1, got {naturalness_sample}")
    fallback_target = default_target(dataset, target)
    frames = [read_predictions(Path(p)) for p in predictions]
    preds = pl.concat(frames).with_columns(pl.col("target").fill_null(fallback_target))
    ctx = Context(dataset, split, embeddings, seed, naturalness_model if naturalness else None, naturalness_sample)

    keys = preds.select("file", "model", "target").unique(maintain_order=True).rows()
    groups = {label: preds.filter((pl.col("file") == f) & (pl.col("model") == m) & (pl.col("target") == t))
              for label, (f, m, t) in zip(_labels(keys), keys)}
    partial = [_partial(group, ctx, f, m, min_coverage, allow_partial) for group, (f, m, _) in zip(groups.values(), keys)]
    models = {label: {"model": model, "file": file, "partial": is_partial, **score_group(group, ctx, group_target)}
              for (label, group), (file, model, group_target), is_partial in zip(groups.items(), keys, partial)}

    manifest = dataset.manifest or {}
    report = json_ready({
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
        "min_coverage": min_coverage,
        "seed": seed,
        "predictions": [{"file": str(p), "rows": len(f)} for p, f in zip(predictions, frames)],
        "models": models,
        "examples": examples(ctx, {k: g for k, g in groups.items() if models[k]["has_text"]}),
        "metric_definitions": {k: m.to_dict() for k, m in ALL_METRICS.items()},
        "sections": [read_section(p) for p in sections],
    })
    out_dir = Path(out_dir)
    from feedbackgen.evaluation.plots import write_plots  # matplotlib only when writing

    report["plots"] = write_plots(report, groups, ctx.references, out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_text(out_dir / "report.html", render_html(report, out_dir))
    return report


def read_section(path: str | Path) -> dict[str, str]:
    """A Markdown file written by another command (`recommend --evaluate --out`, `fidelity --out`),
    shown in the report beside the text metrics: {"file", "title", "markdown"}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--include {path}: no such Markdown file (write it with `feedbackgen recommend "
                          "--evaluate --out DIR` or `feedbackgen fidelity --out DIR`)")
    title = {"ranking": "Ranking", "fidelity": "Simulated user fidelity",
             "summary": "The simulated user judging recommenders"}.get(path.stem, path.stem.replace("_", " "))
    return {"file": str(path), "title": title, "markdown": path.read_text(encoding="utf-8")}


__all__ = ["evaluate", "read_predictions", "render_markdown", "rating_confusion", "ALL_METRICS",
           "MAIN_COLUMNS", "MIN_COVERAGE", "NATURALNESS_SAMPLE"]
