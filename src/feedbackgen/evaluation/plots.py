"""The report's plots: metrics.png (main metrics per model), confusion.png (rating confusion per
model), lengths.png (token-length histograms of outputs and references). matplotlib's OO API only:
no pyplot, no global backend switch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from feedbackgen.data.text import tokenize
from feedbackgen.evaluation.render import ALL_METRICS, MAIN_COLUMNS, MISSING, arrow
from feedbackgen.evaluation.scoring import STARS
from feedbackgen.io import atomic_write


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))


def _grid(n: int, columns: int) -> tuple[int, int]:
    cols = min(n, columns)
    return math.ceil(n / cols), cols


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _plot_metric_bars(report: dict, path: Path) -> bool:
    from matplotlib.figure import Figure

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
        ax.set_title(ALL_METRICS[key].name + arrow(ALL_METRICS[key].direction), fontsize=9)
        ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    _save(fig, path)
    return True


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


def _plot_lengths(report: dict, groups: dict[str, pl.DataFrame], references: pl.DataFrame, path: Path) -> bool:
    from matplotlib.figure import Figure

    series: list[tuple[str, list[int]]] = []
    for column in dict.fromkeys(m["reference_column"] for m in report["models"].values() if m["has_text"]):
        texts = references[column].drop_nulls().to_list()
        series.append((f"references ({column})", [len(tokenize(t)) for t in texts]))
    for name, m in report["models"].items():
        if m["has_text"]:
            series.append((name, [len(tokenize(t)) for t in groups[name]["text"].to_list()]))
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


def write_plots(report: dict, groups: dict[str, pl.DataFrame], references: pl.DataFrame,
                out_dir: Path) -> list[str]:
    """Draw the plots that have data into `out_dir`; return the file names written. `groups`: each
    report row's prediction rows, by label; `references`: the split's reference rows."""
    written = []
    for name, draw in (("metrics.png", lambda p: _plot_metric_bars(report, p)),
                       ("confusion.png", lambda p: _plot_confusions(report, p)),
                       ("lengths.png", lambda p: _plot_lengths(report, groups, references, p))):
        if draw(out_dir / name):
            written.append(name)
    return written
