"""Scoring one group of predictions (one model of one file, one target) against a dataset's split.

Everything here returns plain dicts; `report.evaluate` assembles them and `render` shows them.

- Coverage: matched / expected, where expected is the number of distinct (user_id, item_id)
  references of the split and matched how many of them the group answers. A low share means the
  predictions are for another dataset or split, or a run stopped early: its metrics describe a
  few rows, not the split.
- Collapse: a model that writes nearly the same text for every request gets the best possible
  DIV (0) and a ROUGE near the best one fixed sentence can reach. A group is marked collapsed by
  the one rule training applies too (`feedbackgen.collapse`), with PETER's USR of its texts.
- The leak check: the share of the split's references whose normalised text (data/duplicates.py)
  occurs in the training split, from the same user and from anyone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.collapse import RULE, loop_share, signal
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.duplicates import normalised_text
from feedbackgen.data.text import tokenize
from feedbackgen.embeddings import embed
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.evaluation import extra
from feedbackgen.evaluation.extra import NgramIndex
from feedbackgen.evaluation.grounding import item_grounding
from feedbackgen.evaluation.metrics import mean_absolute_error, peter_metrics, root_mean_square_error, to_stars
from feedbackgen.evaluation.naturalness import PerplexityScorer, summary
from feedbackgen.evaluation.predictions import TARGETS
from feedbackgen.types import ANSWER_KINDS, PROVENANCE

STARS = (1, 2, 3, 4, 5)
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


def feature_set(dataset: Dataset) -> set[str] | None:
    """The aspect vocabulary FMR / FCR / DIV look for: every distinct `aspect` of the dataset's rows,
    all splits, lower-cased; None when the dataset has no aspects. As in PETER's `DataLoader`
    (lileipisces/PETER utils.py), which adds each review's feature to `feature_set` before splitting.
    The one definition used by `evaluate` and every bench script."""
    if "aspect" not in dataset.interactions.columns:
        return None
    aspects = dataset.interactions["aspect"].drop_nulls().str.to_lowercase().unique().to_list()
    return set(aspects) or None


def default_target(dataset: Dataset, target: str | None) -> str:
    if target is not None:
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        return target
    return "explanation" if dataset.has_explanations else "review"


def reference_column(dataset: Dataset, target: str) -> str:
    if target == "explanation":
        if not dataset.has_explanations:
            raise DataError("predictions target explanations but the dataset has no 'explanation' column; "
                            "prepare it with aspect extraction, or evaluate with target 'review'")
        return "explanation"
    return "text"


def dedupe(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    unique = df.unique(subset=["user_id", "item_id"], keep="first", maintain_order=True)
    return unique, len(df) - len(unique)


def rating_confusion(predicted: Sequence[float], true: Sequence[float]) -> list[list[int]]:
    """Counts [true star][predicted star], both rounded to the nearest star in 1..5."""
    matrix = np.zeros((len(STARS), len(STARS)), dtype=int)
    if len(predicted):
        np.add.at(matrix, (to_stars(true) - 1, to_stars(predicted) - 1), 1)
    return matrix.tolist()


def collapse(texts: Sequence[str], usr: float | None) -> dict[str, Any]:
    """{"collapsed", "looping", "usr", "top_share", "top_text", "repetition", "loop_example", "rule"}
    of one group's texts, by `feedbackgen.collapse.signal` with the group's PETER USR (`repetition`:
    the share of looping texts, the `loops` metric); not collapsed when it has no text."""
    if not texts:
        return {"collapsed": False, "looping": False, "usr": usr, "top_share": 0.0, "top_text": "",
                "repetition": 0.0, "loop_example": None, "rule": RULE}
    sig = signal(texts, usr)
    return {"collapsed": sig["collapsed"], "looping": sig["looping"], "usr": sig["usr"],
            "top_share": sig["top_share"], "top_text": sig["top_text"], "repetition": sig["repetition"],
            "loop_example": sig["loop_example"], "rule": RULE}


class Context:
    """What all groups of one report share, computed once: references, features, training n-grams,
    embeddings and perplexities (cached by text), the naturalness sample."""

    def __init__(self, dataset: Dataset, split: str, embeddings: bool, seed: int,
                 naturalness_model: str | None = None, naturalness_sample: int = 200):
        self.dataset, self.split, self.embeddings, self.seed = dataset, split, embeddings, seed
        self.references, self.reference_duplicates = dedupe(dataset.split(split))
        self.feature_set = feature_set(dataset)
        self._indexes: dict[str, NgramIndex] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self.scorer = PerplexityScorer(naturalness_model) if naturalness_model else None
        # the same seeded pairs for every model and for the references, so their values compare
        n = min(naturalness_sample, len(self.references))
        self.naturalness_pairs = self.references.select("user_id", "item_id").sample(n, seed=seed)

    def training_index(self, column: str) -> NgramIndex:
        if column not in self._indexes:
            texts = self.dataset.train[column].drop_nulls().to_list()
            self._indexes[column] = NgramIndex([tokenize(t) for t in texts])
        return self._indexes[column]

    def embed(self, texts: list[str]) -> np.ndarray:

        new = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if new:
            self._vectors.update(zip(new, embed(new)))
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, EMBEDDING_DIM), np.float32)

    def naturalness(self, rows: pl.DataFrame, column: str) -> dict[str, Any] | None:
        """Perplexity summaries of `rows`' texts, and of the references, on the sampled pairs."""
        if self.scorer is None:
            return None
        sampled = rows.join(self.naturalness_pairs, on=["user_id", "item_id"], how="semi")
        refs = self.references.join(sampled, on=["user_id", "item_id"], how="semi")[column].drop_nulls()
        return {"model": self.scorer.model, "sample": len(self.naturalness_pairs),
                "generated": summary(self.scorer.perplexities(sampled["text"].to_list())),
                "references": summary(self.scorer.perplexities(refs.to_list()))}


def _text_metrics(rows: pl.DataFrame, ctx: Context, column: str) -> dict[str, Any]:
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
    out["loops"] = loop_share(generated_text)
    out.update(extra.length_stats(generated, "gen"))
    out.update(extra.length_stats(references, "ref"))
    out.update(extra.memorisation(generated, ctx.training_index(column)))
    if ctx.dataset.train[column].drop_nulls().len():  # item grounding: is the text about its item?
        out["item_grounding"] = item_grounding(rows.select("item_id", "text"), ctx.dataset, column)["item_grounding"]
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


def score_group(preds: pl.DataFrame, ctx: Context, target: str) -> dict[str, Any]:
    """Metrics, counts, coverage, collapse and naturalness of one group's rows (one file, model, target)."""
    column = reference_column(ctx.dataset, target)
    preds, duplicates = dedupe(preds)
    refs = ctx.references.select(
        "user_id", "item_id", pl.col("rating").alias("rating_ref"), pl.col(column).alias("reference"),
        (pl.col("aspect") if "aspect" in ctx.references.columns else pl.lit(None, pl.Utf8)).alias("aspect"))
    rows = preds.drop("aspect").join(refs, on=["user_id", "item_id"], how="inner", maintain_order="left")
    has_text = bool(rows["text"].str.strip_chars().str.len_chars().gt(0).any()) if len(rows) else False
    expected = len(ctx.references)
    counts = {
        "predictions": len(preds) + duplicates,
        "duplicate_predictions": duplicates,
        "matched": len(rows),
        "predictions_without_reference": len(preds) - len(rows),
        "references_without_prediction": expected - len(rows),
        "matched_without_reference_text": int(rows["reference"].null_count()),
        "matched_with_rating": int(rows.filter(pl.col("rating").is_not_null()
                                               & pl.col("rating_ref").is_not_null()).height),
    }
    coverage = {"matched": len(rows), "expected": expected, "share": len(rows) / expected if expected else 0.0}
    metrics: dict[str, Any] = {}
    collapsed = naturalness = None
    if has_text:
        metrics.update(_text_metrics(rows, ctx, column))
        collapsed = collapse(rows["text"].to_list(), metrics.get("usr"))
        naturalness = ctx.naturalness(rows, column)
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
            "coverage": coverage, "collapse": collapsed, "naturalness": naturalness, "answers": answer_counts,
            "provenance": provenance_counts(rows) if has_text else None,
            "metrics": metrics, "decoding": decoding, "rating_confusion": confusion}


def provenance_counts(rows: pl.DataFrame) -> dict[str, int] | None:
    """How many of the matched rows' texts were written by the model, copied from a training review,
    a fallback or none (`meta.provenance`, `feedbackgen.types.PROVENANCE`); None when no row says."""
    if "provenance" not in rows.columns or not rows["provenance"].drop_nulls().len():
        return None
    said = rows["provenance"]
    return {kind: int((said == kind).sum()) for kind in PROVENANCE} | {"unknown": int(said.null_count())}


def examples(ctx: Context, groups: dict[str, pl.DataFrame], n: int = 3) -> list[dict]:
    """`n` seeded reference rows with every group's text for them: {"user_id", "item_id",
    "reference", "outputs": {label: text}}. Texts as written (render detokenises them for display)."""
    column = next((reference_column(ctx.dataset, g["target"][0]) for g in groups.values() if len(g)), None)
    if column is None or ctx.references.is_empty():
        return []
    picked = ctx.references.filter(pl.col(column).is_not_null())
    picked = picked.sample(min(n, len(picked)), seed=ctx.seed)
    out = []
    for user_id, item_id, reference in picked.select("user_id", "item_id", column).rows():
        outputs = {}
        for label, group in groups.items():
            hit = group.filter((pl.col("user_id") == user_id) & (pl.col("item_id") == item_id))["text"]
            if len(hit) and hit[0].strip():
                outputs[label] = hit[0]
        out.append({"user_id": user_id, "item_id": item_id, "reference": reference, "outputs": outputs})
    return out


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
