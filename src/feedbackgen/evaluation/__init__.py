"""Judge generated feedback, whoever produced it: metrics and the report.

    metrics   PETER / PEPLER metrics, exactly as the reference computes them (BLEU, ROUGE, USR,
              FMR, FCR, DIV, RMSE, MAE) plus the official rouge-score variant
    extra     beyond PETER: distinct-n, self-BLEU, embedding similarity, sentiment vs rating,
              personalisation, lengths, memorisation
    predictions  the one PRED.jsonl reader (evaluate, human evaluation, anything reading predictions)
    scoring   one group's metrics, coverage, collapse; the feature set behind FMR / FCR / DIV
    naturalness  perplexity under a fixed pretrained LM (feedbackgen.pretrained)
    report    `evaluate(prediction files, dataset, out_dir)` -> report.json, report.md, plots
    render    report.md, and Markdown fitted to a terminal; plots: the PNGs

Every metric key is documented (source and direction) in `METRICS` / `EXTRA_METRICS`. This
package never imports `feedbackgen.models`: it scores text and ratings, not generators.
"""

from feedbackgen.evaluation.extra import EXTRA_METRICS
from feedbackgen.evaluation.metrics import METRICS, Metric, metrics_from_files, peter_metrics

__all__ = ["METRICS", "EXTRA_METRICS", "Metric", "peter_metrics", "metrics_from_files"]
