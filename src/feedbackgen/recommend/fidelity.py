"""How far the simulated user can be trusted, measured against held-out real behaviour.

    result = fidelity(model, dataset)              # a dict; fidelity_markdown([result, ...]) tabulates
    write_fidelity([result, ...], "runs/fidelity") # fidelity.json, fidelity.md, rating_distribution.png

Three measurements, with the engage rule of `feedbackgen.recommend.simulated_user` (a choice
model's calibrated probability, or a threshold on the predicted rating; fitted on the validation
split, so nothing here is tuned on the test split):

- **discrimination**, telling a user's real items from items they never touched, in one of two
  protocols (`protocol=`):
  - `pooled` (the default): each test user's real test items are mixed with items the user never
    interacted with, at 1:1, 1:3 and 1:9; the simulated user engages or skips each; accuracy,
    precision, recall and F1 of "engage" against "real item", pooled over all pairs. The negatives
    are drawn once (seeded) at the largest ratio and the smaller ratios take a prefix of them, so
    every model and ratio sees the same items.
  - `agent4rec`: Agent4Rec's own protocol (Zhang et al., SIGIR 2024, section 4.1; their
    `simulation/arena.py`), run once per ratio r in 1, 2, 3, 9: for each user, min(count,
    ⌊20 / (r + 1)⌋) positives drawn from the user's held-out items (valid ∪ test), r× as many
    negatives drawn uniformly from the items the user never interacted with in any split, the list
    shuffled; precision, recall, accuracy and F1 per user, then averaged over users. One deviation,
    stated: a user who engages with nothing gets precision 0 (their code divides by zero, and one
    such user turns the average into NaN), as scikit-learn's `zero_division=0` does. The engage rule
    is fitted on validation pairs, and this protocol's positives include validation items, as
    published; the rule is a one-dimensional monotone map (choice) or a single threshold (rating),
    so it carries almost nothing about individual pairs.
- **rating fidelity**: RMSE and MAE of simulated against real ratings on the real test pairs
  (`feedbackgen.evaluation.metrics`, PETER's definitions), and the two star distributions side by
  side (simulated ratings rounded to the nearest star), with their total variation distance.
- **review fidelity**, AgentSociety Challenge (WWW 2025) Track 1 style: preference estimation
  1 - mean(|Δstars| / 5), and the review score with its emotion term left out and re-weighted,
  1 - (0.25 sentiment error + 0.5 topic error) / 0.75, sentiment from VADER compound scores, topic
  from all-MiniLM-L6-v2 cosine distance (the challenge used paraphrase-MiniLM-L6-v2 and a RoBERTa
  emotion classifier, neither available offline). The generated text is compared with the real
  text of the generator's own target: the explanation sentence for `target=explanation`
  generators, the whole review otherwise.

`ANCHORS` are published figures for LLM-agent simulators on other data, printed beside ours for
scale only: they are not comparable numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.config import Decoding
from feedbackgen.data.dataset import Dataset
from feedbackgen.embeddings import embed
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.evaluation.extra import vader_compound
from feedbackgen.evaluation.metrics import mean_absolute_error, root_mean_square_error
from feedbackgen.io import atomic_write, atomic_write_json, atomic_write_text, json_ready
from feedbackgen.recommend.metrics import (classification_metrics, preference_estimation,
                                           review_score_without_emotion, sentiment_error, star_histogram,
                                           topic_error, total_variation)
from feedbackgen.recommend.panel import judge_panel, panel_markdown, plot_panel
from feedbackgen.recommend.ranking import UnseenSampler, simulator_name
from feedbackgen.recommend.simulated_user import Calibration, SimulatedUser
from feedbackgen.tables import number, table_lines

RATIOS = (1, 3, 9)
AGENT4REC_RATIOS = (1, 2, 3, 9)
AGENT4REC_LIST = 20  # positives + negatives per user and ratio in Agent4Rec's protocol
PROTOCOLS = ("pooled", "agent4rec", "recommenders")
STARS = (1, 2, 3, 4, 5)

ANCHORS: tuple[dict[str, Any], ...] = (
    {"model": "Agent4Rec (Zhang et al., SIGIR 2024)", "data": "agent4rec-ml1m", "protocol": "agent4rec",
     "accuracy_1_1": 0.6912, "f1_1_1": 0.6982, "rmse": 0.76},
    {"model": "SimUSER (Bougie & Watanabe, 2025)", "data": "movielens", "protocol": "agent4rec",
     "accuracy_1_1": 0.791, "rmse": 0.50},
)
# Agent4Rec's MovieLens-1M split (their datasets/ml-1m/cf_data): users, items, train/valid/test rows
AGENT4REC_ML1M = (1000, 3292, 74271, 55486, 55492)


def is_agent4rec_ml1m(dataset: Dataset) -> bool:
    """Whether `dataset` is the MovieLens-1M split Agent4Rec was evaluated on (by its counts)."""
    df = dataset.interactions
    return (df["user_id"].n_unique(), df["item_id"].n_unique(), len(dataset.train), len(dataset.valid),
            len(dataset.test)) == AGENT4REC_ML1M


def anchor_data(anchor: dict[str, Any], same_data: bool) -> str:
    if anchor["data"] == "agent4rec-ml1m":
        return "same data (Agent4Rec's ML-1M split), as published" if same_data else "ML-1M, as published: other data"
    return "MovieLens, as published: other data"


def reference_column(model: Any, dataset: Dataset) -> str:
    """The real text a generator's output is compared with: its target's column."""
    target = getattr(getattr(model, "config", None), "target", "review")
    if target == "explanation" and "explanation" in dataset.interactions.columns:
        return "explanation"
    return "text"


def discrimination(user: SimulatedUser, dataset: Dataset, test: pl.DataFrame, rng: np.random.Generator,
                   ratios: Sequence[int] = RATIOS) -> dict[str, dict[str, float]]:
    """Accuracy / precision / recall / F1 of the engage decision at each positives:negatives ratio,
    with the pairs and users they are over (every ratio has all the test users of `test`)."""
    sampler = UnseenSampler(dataset, rng)
    per_user = test.group_by("user_id", maintain_order=True).agg(pl.col("item_id").unique(maintain_order=True))
    users, items, real, first_ratio = [], [], [], []
    for u, positives in per_user.iter_rows():
        negatives = sampler.sample(u, max(ratios) * len(positives)).tolist()
        users += [u] * (len(positives) + len(negatives))
        items += [*positives, *negatives]
        real += [True] * len(positives) + [False] * len(negatives)
        # negative j (0-based) belongs to ratio r when j < r * |positives|
        first_ratio += [0] * len(positives) + [-(-(j + 1) // len(positives)) for j in range(len(negatives))]
    engage = user.engage(users, items)
    real, first_ratio = np.array(real, dtype=bool), np.array(first_ratio)
    out = {}
    for r in ratios:
        keep = first_ratio <= r
        positives = int(real[keep].sum())
        out[f"1:{r}"] = {**classification_metrics(engage[keep], real[keep]), "pairs": int(keep.sum()),
                         "users": len(per_user),
                         "negatives_per_positive": (int(keep.sum()) - positives) / positives if positives else 0.0}
    return out


def discrimination_agent4rec(user: SimulatedUser, dataset: Dataset, users: Sequence[str],
                             rng: np.random.Generator, ratios: Sequence[int] = AGENT4REC_RATIOS
                             ) -> dict[str, dict[str, float]]:
    """Agent4Rec's per-user discrimination protocol (module docstring); one entry per ratio "1:r"."""
    held_out = pl.concat([dataset.valid, dataset.test]).filter(pl.col("user_id").is_in(list(users)))
    per_user = dict(held_out.group_by("user_id").agg(pl.col("item_id").unique().sort()).iter_rows())
    sampler = UnseenSampler(dataset, rng)
    out = {}
    for r in ratios:
        lists_u, lists_i, real, owner = [], [], [], []
        for n, u in enumerate(users):
            candidates = per_user.get(u, [])
            k = min(len(candidates), AGENT4REC_LIST // (r + 1))
            if not k:
                continue
            positives = rng.choice(np.array(candidates, dtype=object), size=k, replace=False).tolist()
            negatives = sampler.sample(u, k * r).tolist()
            listed = np.array(positives + negatives, dtype=object)
            truth = np.array([True] * k + [False] * len(negatives))
            order = rng.permutation(len(listed))
            lists_u += [u] * len(listed)
            lists_i += listed[order].tolist()
            real += truth[order].tolist()
            owner += [n] * len(listed)
        engage, real, owner = user.engage(lists_u, lists_i), np.array(real, dtype=bool), np.array(owner)
        per = [classification_metrics(engage[owner == n], real[owner == n]) for n in np.unique(owner)]
        out[f"1:{r}"] = {**{m: float(np.mean([p[m] for p in per])) if per else 0.0
                            for m in ("accuracy", "precision", "recall", "f1")},
                         "pairs": len(real), "users": len(per), "negatives_per_positive": float(r)}
    return out


def fidelity(model: Any, dataset: Dataset, *, ratios: Sequence[int] = RATIOS, threshold: float | None = None,
             seed: int = 1, max_users: int | None = None, review: bool = True,
             decoding: Decoding | dict | None = None, name: str | None = None,
             calibration_pairs: int | None = None, choice: Any = None,
             protocol: str = "pooled", recommendations: Mapping[str, pl.DataFrame] | None = None,
             k: int = 10, panel: bool = True) -> dict[str, Any]:
    """Discrimination, rating and review fidelity of a simulated user (see the module docstring).

    model: the Generator (ratings and texts), or None with `choice` (discrimination only).
    choice: a ChoiceModel for the engage rule.
    protocol: `pooled`, `agent4rec` (its own ratios 1, 2, 3, 9 unless `ratios` is given) or
    `recommenders` (`feedbackgen.recommend.panel`: the built-in panel, unless `panel=False`, and the
    `recommendations` lists, name -> user_id, rank, item_id, judged at top `k`; needs `choice`).

    max_users: evaluate a seeded sample of test users (all three protocols use the same users).
    review: also generate the texts and compute the AgentSociety review score (needs a text model).
    calibration_pairs: calibrate the engage threshold on a seeded sample of that many validation
    pairs (default: all of them; an LLM generator pays a generation per pair).
    """
    if protocol not in PROTOCOLS:
        raise FeedbackgenError(f"unknown fidelity protocol {protocol!r}; choose {', '.join(PROTOCOLS)}")
    test = dataset.test
    if not len(test):
        raise DataError("the dataset's test split is empty: nothing to measure the simulator against")
    rng = np.random.default_rng(seed)
    users = sorted(test["user_id"].unique().to_list())
    if max_users is not None and len(users) > max_users:
        users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
        test = test.filter(pl.col("user_id").is_in(users))
    if protocol == "recommenders" and choice is None:
        raise FeedbackgenError("the recommenders protocol compares expected engagement, a probability: give a "
                               "choice model (--choice DIR, e.g. one trained with --model simulated_user)")
    simulated_user = SimulatedUser(model, dataset, threshold, seed, calibration_pairs, choice=choice)
    if protocol == "recommenders":
        return {"model": name or simulator_name(model, choice), "protocol": protocol,
                "engage_rule": simulated_user.rule, "calibration": simulated_user.calibration.to_dict(),
                "panel": judge_panel(simulated_user, dataset, k=k, seed=seed, max_users=max_users,
                                     extra=recommendations, builtin=panel),
                "discrimination": None, "rating": None, "agentsociety": None}
    if protocol == "agent4rec":
        shown = discrimination_agent4rec(simulated_user, dataset, users, rng,
                                         AGENT4REC_RATIOS if ratios is RATIOS else ratios)
    else:
        shown = discrimination(simulated_user, dataset, test, rng, ratios)
    result: dict[str, Any] = {
        "model": name or simulator_name(model, choice), "users": len(users), "protocol": protocol,
        "engage_rule": simulated_user.rule, "calibration": simulated_user.calibration.to_dict(),
        "discrimination": shown, "rating": None, "agentsociety": None,
    }
    if model is None or test["rating"].null_count() == len(test):
        return result  # a choice model alone, or data without ratings: nothing to rate or write

    write = review and getattr(model, "produces_text", False)
    test = test.filter(pl.col("rating").is_not_null())
    frame = simulated_user.judge(test["user_id"].to_list(), test["item_id"].to_list(), decoding, write, "all")
    simulated, real = frame["rating"].to_numpy(), test["rating"].to_numpy()

    real_hist, sim_hist = star_histogram(real, STARS), star_histogram(simulated, STARS)
    result["rating"] = {
        "pairs": len(real), "rmse": root_mean_square_error(simulated, real),
        "mae": mean_absolute_error(simulated, real), "stars": list(STARS),
        "real_distribution": real_hist.tolist(), "simulated_distribution": sim_hist.tolist(),
        "distribution_tvd": total_variation(real_hist, sim_hist),
    }
    result["agentsociety"] = {"preference_estimation": preference_estimation(simulated, real)}
    if write:
        scores = result["agentsociety"]
        scores.update(review_fidelity(frame["text"].to_list(), test, reference_column(model, dataset)))
        if scores["review_score_without_emotion"] is not None:
            scores["overall_without_emotion"] = (scores["preference_estimation"]
                                                 + scores["review_score_without_emotion"]) / 2
    return result


@lru_cache(maxsize=4)
def _embed_once(embed: Callable[[list[str]], np.ndarray], texts: tuple[str, ...]) -> np.ndarray:
    """The real texts are the same for every model measured on a dataset: embed them once."""
    return embed(list(texts))


def review_fidelity(generated: list[str], test: pl.DataFrame, column: str) -> dict[str, Any]:
    """AgentSociety's sentiment and topic errors, and the review score without the emotion term."""

    references = test[column].to_list()
    keep = [n for n, (g, r) in enumerate(zip(generated, references))
            if g and g.strip() and r and r.strip()]
    gen, ref = [generated[n] for n in keep], [references[n] for n in keep]
    s_err = sentiment_error(vader_compound(gen), vader_compound(ref))
    t_err = topic_error(embed(gen), _embed_once(embed, tuple(ref)))
    return {"review_pairs": len(keep), "reference": column, "sentiment_error": s_err, "topic_error": t_err,
            "review_score_without_emotion": review_score_without_emotion(s_err, t_err) if keep else None}


# -- output ------------------------------------------------------------------------------------

def fidelity_markdown(results: Sequence[dict[str, Any]], dataset_label: str = "this dataset",
                      anchors: Sequence[dict[str, Any]] = ANCHORS, same_data: bool = False) -> str:
    """The fidelity table (ours, then the published anchors), and the per-ratio precision/recall.

    same_data: the dataset is Agent4Rec's ML-1M split, so their published row is on the same data.
    """
    if results and results[0].get("protocol") == "recommenders":
        return "\n".join(panel_markdown(r["panel"], r["model"]) + f"\nEngage rule: {_rule(r['calibration'])}.\n"
                         for r in results)
    ratios = list(results[0]["discrimination"]) if results else [f"1:{r}" for r in RATIOS]
    head = (["simulator", "data", "users"] + [f"acc {r}" for r in ratios] + [f"F1 {r}" for r in ratios]
            + ["RMSE", "MAE", "star TVD", "pref. est.", "review (no emotion)†", "text vs"])
    rows = []
    for res in results:
        d, r, a = res["discrimination"], res.get("rating") or {}, res.get("agentsociety") or {}
        cells = ([res["model"], dataset_label, str(res["users"])] + [number(d[x]["accuracy"]) for x in ratios]
                 + [number(d[x]["f1"]) for x in ratios]
                 + [number(r.get("rmse")), number(r.get("mae")), number(r.get("distribution_tvd")),
                    number(a.get("preference_estimation")), number(a.get("review_score_without_emotion")),
                    a.get("reference", "–")])
        rows.append(cells)
    protocol = results[0].get("protocol", "pooled") if results else "pooled"
    for anchor in anchors:
        cells = ([anchor["model"], anchor_data(anchor, same_data), "–"]
                 + [number(anchor.get("accuracy_1_1")) if x == "1:1" else "–" for x in ratios]
                 + [number(anchor.get("f1_1_1")) if x == "1:1" else "–" for x in ratios]
                 + [number(anchor.get("rmse")), "–", "–", "–", "–", "–"])
        rows.append(cells)
    lines = table_lines(head, rows, align="ll" + "r" * (len(head) - 3) + "l")
    basis = ("Agent4Rec's protocol: per user, min(held-out, ⌊20/(r+1)⌋) of their valid ∪ test items and r× as "
             "many never-seen items, shuffled; metrics per user, averaged" if protocol == "agent4rec" else
             "pooled protocol: every test pair of the users against r× as many never-seen items, metrics over "
             "all pairs")
    lines += ["", f"Higher is better except RMSE, MAE and star TVD (total variation distance between the real "
              f"and simulated star distributions). acc / F1 1:r: discrimination of real items from never-seen "
              f"ones ({basis}). † AgentSociety Track 1 review score with the emotion "
              "term left out and re-weighted: 1 − (0.25·sentiment error + 0.5·topic error) / 0.75. Published "
              "rows are LLM-agent simulators, marked with the data they were measured on. text vs: the "
              "real text the generated one is compared with (the generator's target). – : not measured "
              "(no generator, or no ratings in the data).", ""]
    lines += ["Basis (what each row's figures rest on):"] + [f"- {basis_line(res)}" for res in results] + [""]
    pr_rows = []
    for res in results:
        d = res["discrimination"]
        sizes = ", ".join(_pairs_users(d[x]) for x in ratios)
        pr_rows.append([res["model"], _rule(res["calibration"]), sizes]
                       + [f"{number(d[x]['precision'])} / {number(d[x]['recall'])}" for x in ratios])
    lines += table_lines(["simulator", "engage rule", "pairs / users"] + [f"P / R {r}" for r in ratios], pr_rows,
                         align="llr" + "r" * len(ratios))
    return "\n".join(lines) + "\n"


def _rule(c: dict[str, Any]) -> str:
    """The engage rule as `simulate` prints it: one `Calibration.describe` for both commands."""
    return Calibration.from_dict(c).describe()


def _pairs_users(d: dict[str, Any]) -> str:
    """One ratio's `pairs / users` cell (a result saved before users were counted: pairs alone)."""
    return f"{d['pairs']} / {d['users']}" if "users" in d else str(d["pairs"])


def basis_line(res: dict[str, Any]) -> str:
    """The counts behind one fidelity row: users, pairs per ratio, rated and reviewed pairs, the
    engage rule and its calibration (pairs, users, accuracy)."""
    d, r, a = res["discrimination"], res.get("rating") or {}, res.get("agentsociety") or {}
    pairs = ", ".join(f"{x}: {d[x]['pairs']}" + (f" ({d[x]['users']} users)" if "users" in d[x] else "")
                      for x in d)
    parts = [f"{res['model']}: {res['users']} test users", f"discrimination pairs {pairs}"]
    if r:
        parts.append(f"RMSE/MAE/stars over {r['pairs']} rated test pairs")
    if a.get("review_pairs") is not None:
        parts.append(f"review score over {a['review_pairs']} pairs")
    return "; ".join(parts) + f"; {_rule(res['calibration'])}"


def plot_rating_distributions(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Real and simulated star distributions side by side, one bar group per star."""
    from matplotlib.figure import Figure  # the OO API: no pyplot, no global backend switch

    stars = results[0]["rating"]["stars"]
    series = [("real (test)", results[0]["rating"]["real_distribution"])]
    series += [(f"simulated: {r['model']}", r["rating"]["simulated_distribution"]) for r in results]
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    x = np.arange(len(stars))
    for n, (label, shares) in enumerate(series):
        ax.bar(x + (n - (len(series) - 1) / 2) * width, shares, width, label=label)
    ax.set_xticks(x, [f"{s}★" for s in stars])
    ax.set_ylabel("share of test pairs")
    ax.set_title("Star ratings: real vs simulated (rounded to the nearest star)")
    ax.legend(fontsize=8, frameon=False)
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))


def write_fidelity(results: Sequence[dict[str, Any]], out_dir: str | Path,
                   dataset_label: str = "this dataset", same_data: bool = False) -> Path:
    """Write fidelity.json, fidelity.md and rating_distribution.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "fidelity.json", json_ready({"results": list(results), "anchors": list(ANCHORS)}))
    atomic_write_text(out_dir / "fidelity.md", fidelity_markdown(results, dataset_label, same_data=same_data))
    if results and all(r.get("rating") for r in results):
        plot_rating_distributions(results, out_dir / "rating_distribution.png")
    for r in results:
        if r.get("panel"):
            plot_panel(r["panel"], out_dir / ("panel.png" if len(results) == 1 else f"panel_{r['model']}.png"))
    return out_dir


__all__ = ["AGENT4REC_RATIOS", "ANCHORS", "PROTOCOLS", "RATIOS", "discrimination", "discrimination_agent4rec",
           "is_agent4rec_ml1m", "fidelity", "fidelity_markdown", "plot_rating_distributions",
           "reference_column", "review_fidelity", "write_fidelity"]
