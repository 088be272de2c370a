"""The recommender-level check: does the simulated user order recommenders as real users do?

    result = judge_panel(user, dataset)                 # the built-in panel, plus any RECS given
    panel_markdown(result); plot_panel(result, "panel.png")

A simulated user exists to judge recommenders before real users see them, so the question is not
whether it tells one user's real items from random ones, but whether its verdict on a *recommender*
matches what held-out users did. `fidelity --protocol recommenders` answers it:

- a **panel** of recommenders (`PANEL`: random, popularity, item-kNN with 50 and 3 neighbours,
  EASE with λ 200 and 30,000, ALS with 32 and 2 factors, BPR; weakened variants so that quality
  spreads), each fitted on **train** without a search, plus any RECS files given; each gives every
  test user a top-`k` list with the user's train and valid items masked (`top_k`, exclude
  `train+valid`, as the full-sort evaluation masks);
- per recommender, the **real** precision@k, HR@k and NDCG@k of the lists on the test split, and the
  **simulated** `expected_engagement_at_k` (the mean P(engage) of the listed items), each with a 95 %
  bootstrap interval over users (`BOOTSTRAP` resamples, seeded);
- agreement of the two orderings: Kendall's τ and Spearman's ρ (scipy) with bootstrap intervals;
  the share of **significantly different pairs** (the paired bootstrap interval of the difference in
  real precision excludes 0) that the simulated user orders the same way;
- the **calibration ratio** simulated / real per list (1 = the simulated user takes as many listed
  items as real users did);
- **self-preference**: for each recommender of the simulator's own family (the choice models it is
  built on), how many places the simulated ranking moves it up compared with the real ranking
  (`moved_up`; on small data many places are within noise), and how many recommenders that are
  really significantly better it is placed above (`passed_better`: the part that is not noise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import warnings

import numpy as np
import polars as pl
from scipy.stats import kendalltau, spearmanr

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError
from feedbackgen.io import atomic_write
from feedbackgen.recommend.choice import create_choice
from feedbackgen.recommend.ranking import pool_of, top_k
from feedbackgen.tables import number, table_lines

BOOTSTRAP = 1000
# (label, model, settings): weakened variants spread the panel's quality
PANEL: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("random", None, {}),
    ("popularity", "popularity", {}),
    ("itemknn-50", "itemknn", {"neighbours": 50}),
    ("itemknn-3", "itemknn", {"neighbours": 3}),
    ("ease-200", "ease", {"l2": 200.0}),
    ("ease-30000", "ease", {"l2": 30000.0}),
    ("als-32", "als", {"factors": 32}),
    ("als-2", "als", {"factors": 2}),
    ("bpr", "bpr", {}),
)


def panel_lists(dataset: Dataset, users: Sequence[str], k: int, seed: int = 1,
                panel: Sequence[tuple[str, str | None, dict[str, Any]]] = PANEL) -> dict[str, tuple[str | None, pl.DataFrame]]:
    """label -> (family, top-k lists of `users`): each panel recommender fitted on train, no search."""
    out: dict[str, tuple[str | None, pl.DataFrame]] = {}
    for label, name, settings in panel:
        if name is None:
            out[label] = (None, random_lists(dataset, users, k, seed))
            continue
        model = create_choice(name, {"search": False, "seed": seed, **settings}).fit(dataset)
        out[label] = (name, top_k(model, users, k, exclude="train+valid", dataset=dataset))
    return out


def random_lists(dataset: Dataset, users: Sequence[str], k: int, seed: int) -> pl.DataFrame:
    """k items per user drawn uniformly from the items not in their train or valid history."""
    pool = pool_of(dataset)
    rng = np.random.default_rng(seed)
    rows_u, rows_i, ranks = [], [], []
    for user in users:
        allowed = np.ones(len(pool.items), dtype=bool)
        allowed[pool.masked(user, "train+valid")] = False
        pick = rng.choice(np.flatnonzero(allowed), size=min(k, int(allowed.sum())), replace=False)
        rows_u += [user] * len(pick)
        rows_i += pool.items[pick].tolist()
        ranks += list(range(1, len(pick) + 1))
    return pl.DataFrame({"user_id": rows_u, "rank": ranks, "item_id": rows_i},
                        schema={"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8})


def per_user_scores(recs: pl.DataFrame, p: np.ndarray, truth: Mapping[str, set[str]], users: Sequence[str],
                    k: int) -> np.ndarray:
    """Per user (rows in `users` order): precision@k, hit@k, NDCG@k and the list's P(engage) summed
    and divided by k (its predicted precision@k), shape (len(users), 4). A user without a list
    scores 0 real and NaN simulated."""
    index = {u: n for n, u in enumerate(users)}
    out = np.zeros((len(users), 4))
    out[:, 3] = np.nan
    hits = np.zeros((len(users), k))
    sums, counts = np.zeros(len(users)), np.zeros(len(users))
    for (user, rank, item), prob in zip(recs.select("user_id", "rank", "item_id").iter_rows(), p):
        n = index.get(user)
        if n is None or rank > k:
            continue
        hits[n, rank - 1] = item in truth.get(user, ())
        sums[n] += prob
        counts[n] += 1
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.array([discount[:min(len(truth.get(u, ())), k)].sum() for u in users])
    out[:, 0] = hits.sum(axis=1) / k
    out[:, 1] = hits.any(axis=1)
    out[:, 2] = np.divide(hits @ discount, ideal, out=np.zeros(len(users)), where=ideal > 0)
    out[:, 3] = np.where(counts > 0, sums / k, np.nan)  # per slot, as precision: an empty slot is a skip
    return out


def judge_panel(user: Any, dataset: Dataset, *, k: int = 10, seed: int = 1, max_users: int | None = None,
                extra: Mapping[str, pl.DataFrame] | None = None, builtin: bool = True) -> dict[str, Any]:
    """Judge the panel (and `extra` lists: name -> user_id, rank, item_id) with the simulated user
    `user` (a `SimulatedUser` with a choice model). Returns the dict `panel_markdown` renders.

    Raises DataError when no test user has train interactions."""
    test = dataset.test
    pool = pool_of(dataset)
    users = sorted(set(test["user_id"].unique().to_list()) & pool.train_users)
    if not users:
        raise DataError("the recommender panel needs test users with train interactions; this dataset has none")
    rng = np.random.default_rng(seed)
    if max_users is not None and len(users) > max_users:
        users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
    truth = {u: set(i) for u, i in test.group_by("user_id").agg(pl.col("item_id")).iter_rows()}
    lists = panel_lists(dataset, users, k, seed) if builtin else {}
    for name, recs in (extra or {}).items():
        lists[name] = (None, recs.select("user_id", "rank", "item_id"))
    labels, families, scores = [], [], []
    for label, (family, recs) in lists.items():
        p = user.probability(recs["user_id"].to_list(), recs["item_id"].to_list())
        labels.append(label)
        families.append(family)
        scores.append(per_user_scores(recs, p, truth, users, k))
    return summarise(labels, families, np.stack(scores), k, seed, _family_of(user), len(users))


def _family_of(user: Any) -> list[str]:
    choice = getattr(user, "choice", None)
    components = getattr(getattr(choice, "config", None), "components", None)
    return list(components) if components else [getattr(choice, "name", "")]


def summarise(labels: list[str], families: list[str | None], scores: np.ndarray, k: int, seed: int,
              own: Sequence[str], n_users: int) -> dict[str, Any]:
    """The panel's table and agreement measures from per-user scores, shape (recommenders, users, 4)."""
    rng = np.random.default_rng(seed)
    n_rec, n = scores.shape[:2]
    sim_full = np.where(np.isnan(scores[:, :, 3]), 0.0, scores[:, :, 3])
    boot = rng.integers(0, n, size=(BOOTSTRAP, n))
    real_b = scores[:, :, 0][:, boot].mean(axis=2)  # (recommenders, resamples)
    sim_b = sim_full[:, boot].mean(axis=2)
    real, sim = scores[:, :, 0].mean(axis=1), sim_full.mean(axis=1)
    rows = []
    for r in range(n_rec):
        rows.append({"recommender": labels[r], "family": families[r],
                     f"precision@{k}": real[r], f"hr@{k}": scores[r, :, 1].mean(), f"ndcg@{k}": scores[r, :, 2].mean(),
                     "real_ci": _ci(real_b[r]), "expected_engagement_at_k": sim[r], "expected_ci": _ci(sim_b[r]),
                     "calibration_ratio": sim[r] / real[r] if real[r] > 0 else None})
    with warnings.catch_warnings():  # a resample where every list ties has no rank correlation (NaN, left out)
        warnings.simplefilter("ignore")
        tau_b = [kendalltau(real_b[:, b], sim_b[:, b]).statistic for b in range(BOOTSTRAP)]
        rho_b = [spearmanr(real_b[:, b], sim_b[:, b]).statistic for b in range(BOOTSTRAP)]
    better = np.zeros((n_rec, n_rec), dtype=bool)  # better[a, b]: a's real precision significantly above b's
    for a in range(n_rec):
        for b in range(n_rec):
            if a != b:
                better[a, b] = np.percentile(real_b[a] - real_b[b], 2.5) > 0
    significant = int(better.sum())
    right = int(sum(sim[a] > sim[b] for a, b in zip(*np.nonzero(better))))
    real_place, sim_place = _places(real), _places(sim)
    self_pref = [{"recommender": labels[r], "real_place": int(real_place[r]), "simulated_place": int(sim_place[r]),
                  "moved_up": int(real_place[r] - sim_place[r]),
                  "passed_better": int(sum(sim[r] > sim[a] for a in np.flatnonzero(better[:, r])))}
                 for r in range(n_rec) if families[r] in own]
    return {"k": k, "users": n_users, "bootstrap": BOOTSTRAP, "seed": seed, "rows": rows,
            "kendall_tau": kendalltau(real, sim).statistic, "kendall_tau_ci": _ci(np.array(tau_b)),
            "spearman_rho": spearmanr(real, sim).statistic, "spearman_rho_ci": _ci(np.array(rho_b)),
            "significant_pairs": significant, "ordered_right": right,
            "share_ordered_right": right / significant if significant else None,
            "self_preference": self_pref, "simulator_family": list(own)}


def _ci(x: np.ndarray) -> list[float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return [float(v) for v in np.percentile(x, [2.5, 97.5])] if len(x) else [float("nan")] * 2


def _places(values: np.ndarray) -> np.ndarray:
    """1 = best; ties share the better place."""
    return np.array([1 + int((values > v).sum()) for v in values])


def panel_markdown(result: dict[str, Any], simulator: str = "the simulated user") -> str:
    """The panel table, the agreement line and the self-preference line, as Markdown."""
    k = result["k"]
    lines = [f"### Recommender panel: real test behaviour vs {simulator} ({result['users']} test users, top {k})",
             ""]
    head = ["recommender", f"real precision@{k} (95% CI)", f"HR@{k}", f"NDCG@{k}",
            "simulated expected_engagement_at_k (95% CI)", "simulated / real"]
    rows = [[r["recommender"], f"{r[f'precision@{k}']:.4f} ({r['real_ci'][0]:.4f}–{r['real_ci'][1]:.4f})",
             number(r[f"hr@{k}"]), number(r[f"ndcg@{k}"], ".4f"),
             f"{r['expected_engagement_at_k']:.4f} ({r['expected_ci'][0]:.4f}–{r['expected_ci'][1]:.4f})",
             number(r["calibration_ratio"], ".2f")]
            for r in sorted(result["rows"], key=lambda r: -r[f"precision@{k}"])]
    lines += table_lines(head, rows, align="lrrrrr")
    share = result["share_ordered_right"]
    lines += ["", f"Kendall τ {result['kendall_tau']:.3f} (95% CI {result['kendall_tau_ci'][0]:.3f}–"
              f"{result['kendall_tau_ci'][1]:.3f}), Spearman ρ {result['spearman_rho']:.3f} (95% CI "
              f"{result['spearman_rho_ci'][0]:.3f}–{result['spearman_rho_ci'][1]:.3f}); "
              f"{result['ordered_right']} of {result['significant_pairs']} significantly different pairs "
              f"ordered right" + (f" ({share:.2f})" if share is not None else "") + "."]
    if result["self_preference"]:
        moved = ", ".join(f"{s['recommender']} {s['moved_up']:+d} (real {s['real_place']}, simulated "
                          f"{s['simulated_place']}; above {s['passed_better']} significantly better)"
                          for s in result["self_preference"])
        lines += ["", f"Self-preference (places the simulator's own family, {', '.join(result['simulator_family'])}, "
                  f"is moved up): {moved}."]
    lines += ["", "Real: precision/HR/NDCG of the lists on the test split (train and valid masked). Simulated: the "
              "mean P(engage) of the listed items, calibrated on the valid split; 1.00 in the last column means "
              "the simulated user takes as many listed items as real users did. Intervals: bootstrap over users."]
    return "\n".join(lines) + "\n"


def plot_panel(result: dict[str, Any], path: str | Path) -> Path:
    """Scatter of real precision@k against simulated expected engagement, one point per recommender."""
    from matplotlib.figure import Figure  # deferred: matplotlib is slow to import; the OO API, no pyplot

    k = result["k"]
    real = [r[f"precision@{k}"] for r in result["rows"]]
    sim = [r["expected_engagement_at_k"] for r in result["rows"]]
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.scatter(real, sim)
    for r, x, y in zip(result["rows"], real, sim):
        ax.annotate(r["recommender"], (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    top = max(max(real), max(sim)) * 1.1 or 1.0
    ax.plot([0, top], [0, top], linestyle="--", color="grey", linewidth=1, label="simulated = real")
    ax.set_xlabel(f"real precision@{k} (test)")
    ax.set_ylabel(f"simulated expected engagement@{k}")
    ax.set_title(f"Recommender panel: Kendall τ {result['kendall_tau']:.2f}")
    ax.legend(loc="upper left", frameon=False)
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))


__all__ = ["BOOTSTRAP", "PANEL", "judge_panel", "panel_lists", "panel_markdown", "per_user_scores", "plot_panel",
           "random_lists", "summarise"]
