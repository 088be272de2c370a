"""A simulated user that judges any recommender's output.

    sim = simulate(model, dataset, ["recs_a.parquet", "recs_b.csv"], k=10)
    sim.summary        # one row per recommender: the comparison table
    sim.save("runs/sim")

RECS is a CSV, Parquet or JSONL file of (user_id, item_id, rank), one row per recommended item,
from any recommender (RecBole-style `user_id:token` headers are accepted; without a `rank` column
the file order within each user is the rank). Rows the simulator cannot judge are reported, counted
and left out, never crashed on: users or items absent from the dataset's training split (the
generator knows nothing about them), rows with a missing id or a rank that is not a positive
integer, repeated (user, item) pairs (the best rank is kept), and ranks beyond `k`.

For each recommended item the simulated user (`feedbackgen.recommend.simulated_user`: a choice
model, a generator, or both) gives

- with a choice model (`choice=`), **p_engage**: the probability that the user takes the item,
  calibrated on the *validation* split to what users really took (`feedbackgen.recommend.engage`),
  and a decision, **engage** or **skip**, drawn with that probability (seeded per user:
  reproducible). Without a choice model, engage when the generator's predicted rating reaches a
  threshold fitted on validation (no probability);
- a rating: the generator's predicted rating; its star is that rating rounded to the nearest star;
- a review: the generator's text for (user, item). With a choice model only the items the user
  engages with get a rating and a review (`feedback_for="engaged"`, the default there: an LLM
  generator pays for far fewer generations); the skipped ones get nulls.

Per user: items judged, mean and best simulated rating, items engaged with, engagement (engaged /
judged), share rated 4 stars or more, rank of the first engaged item, and `satisfied` (engaged with
at least one item). Per recommender: users, items judged, mean simulated rating (over items),
engagement@K (mean over users of engaged / judged among the top K), share of rated items rated 4 or more
(mean rating and this share are over the items that got a rating: with a choice model, the engaged ones),
share of users satisfied, the counts of what was left out, and, with a choice model,
`expected_engagement_at_k`: the sum of p_engage over each user's judged items divided by K, averaged
over users (the expected share of the K slots whose item the user takes: a list's predicted
precision@K) with a 95 % bootstrap interval over users (`expected_engagement_ci`, `BOOTSTRAP`
resamples, seeded). `engagement@K` counts the drawn decisions the same way (engaged / K), so it
scatters around the expected value. Both divide by K, as precision@K does: a slot left empty (a
short list, a repeated item, an item the user already had) counts as a skip, so a top 3 padded to
10 by repetition cannot beat a real top 10.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.config import Decoding
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import FeedbackgenError
from feedbackgen.io import write_run
from feedbackgen.recommend.ranking import simulator_name
from feedbackgen.recommend.recs import RecommendationsCheck, already_owned, read_recommendations
from feedbackgen.recommend.simulated_user import Calibration, SimulatedUser
from feedbackgen.tables import number, table_lines

BOOTSTRAP = 1000  # resamples of the users behind expected_engagement_ci


# -- the simulation ----------------------------------------------------------------------------

@dataclass
class Simulation:
    """Everything one `simulate` call produced."""

    items: pl.DataFrame        # recommender, user_id, rank, item_id, rating, stars, text, provenance,
                               # source_item, source, engage, p_engage, repeated
    users: pl.DataFrame        # recommender, user_id, per-user satisfaction summary
    summary: pl.DataFrame      # one row per recommender: the comparison table
    checks: list[RecommendationsCheck]
    calibration: Calibration
    k: int
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "k": self.k, "calibration": self.calibration.to_dict(),
                "summary": self.summary.to_dicts(), "checks": [c.to_dict() for c in self.checks]}

    def markdown(self) -> str:
        k = self.k
        head = ["recommender", "users", "items judged", "mean rating", f"expected engagement@{k} (95% CI)",
                f"engagement@{k}", "rated ≥ 4★",
                "users engaging", "unknown users", "unknown items"]
        lines = [f"Simulated user: `{self.model}`; {self.calibration.describe()}.", "",
                 ]
        rows = []
        for r in self.summary.iter_rows(named=True):
            ci = r["expected_engagement_ci"]
            expected = ("–" if r["expected_engagement_at_k"] is None else
                        f"{r['expected_engagement_at_k']:.4f} ({ci[0]:.4f}–{ci[1]:.4f})")
            rows.append([r["recommender"], r["users"], r["items"], number(r["mean_rating"]), expected,
                         number(r["engagement_at_k"]), number(r["share_rated_4_plus"]),
                         number(r["share_users_engaging"]), r["unknown_users"], r["unknown_items"]])
        lines += table_lines(head, rows, align="l" + "r" * (len(head) - 1))
        user_sets = [set(self.users.filter(pl.col("recommender") == r)["user_id"].to_list())
                     for r in self.summary["recommender"]]
        if len(user_sets) > 1 and any(s != user_sets[0] for s in user_sets):
            common = set.intersection(*user_sets)
            lines += ["", f"The recommenders cover different users ({len(common)} in common): compare with care."]
        texts = self.text_basis()
        if texts:
            lines += ["", "Where the texts came from:"] + [f"- {t}" for t in texts]
        notes = [c.describe() for c in self.checks
                 if c.worth_noting()]
        if notes:
            lines += ["", "Left out:"] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def text_basis(self) -> list[str]:
        """Per recommender, one line counting its texts by provenance, the copies of another item's
        review and the texts repeated within a user's list; [] when no text was written."""
        out = []
        for name in self.summary["recommender"]:
            mine = self.items.filter((pl.col("recommender") == name) & pl.col("text").is_not_null())
            if not len(mine) or mine["provenance"].null_count() == len(mine):
                continue
            counts = mine.group_by("provenance").len().sort("provenance")
            kinds = ", ".join(f"{n} {kind or 'unrecorded'}" for kind, n in counts.iter_rows())
            other = mine.filter(pl.col("source_item").is_not_null()
                                & (pl.col("source_item") != pl.col("item_id"))).height
            out.append(f"{name}: {len(mine)} texts: {kinds}; {other} copied from another item's review; "
                       f"{int(mine['repeated'].sum())} repeated within a user's list")
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write simulated_items.parquet, simulated_users.parquet, summary.json and summary.md."""
        return write_run(out_dir, {"simulated_items": self.items, "simulated_users": self.users}, self.to_dict(),
                         self.markdown())


def _expected(items: pl.DataFrame, k: int, seed: int) -> dict[str, Any]:
    """expected_engagement_at_k (per user, the sum of p_engage over the judged items / k; averaged
    over users) and its 95 % bootstrap interval over users; None without probabilities (the rating rule)."""
    judged = items.filter(pl.col("p_engage").is_not_null())
    if not len(judged):
        return {"expected_engagement_at_k": None, "expected_engagement_ci": None}
    p = items.group_by("user_id").agg(pl.col("p_engage").fill_null(0.0).sum()).sort("user_id")["p_engage"].to_numpy() / k
    draws = np.random.default_rng(seed).integers(0, len(p), size=(BOOTSTRAP, len(p)))
    boot = p[draws].mean(axis=1)
    return {"expected_engagement_at_k": float(p.mean()),
            "expected_engagement_ci": [float(v) for v in np.percentile(boot, [2.5, 97.5])]}


def _per_user(items: pl.DataFrame) -> pl.DataFrame:
    return (items.group_by("recommender", "user_id", maintain_order=True).agg(
        pl.len().alias("items"),
        pl.col("rating").mean().alias("mean_rating"),
        pl.col("rating").max().alias("best_rating"),
        pl.col("engage").sum().cast(pl.Int64).alias("engaged"),
        pl.col("engage").mean().alias("engagement"),
        pl.col("p_engage").mean().alias("expected_engagement"),
        (pl.col("stars") >= 4).mean().alias("share_rated_4_plus"),
        pl.col("rank").filter(pl.col("engage")).min().alias("first_engaged_rank"),
    ).with_columns((pl.col("engaged") > 0).alias("satisfied")))


def simulate(model: Any, dataset: Dataset,
             recommendations: str | Path | pl.DataFrame | Sequence[str | Path | pl.DataFrame]
             | Mapping[str, str | Path | pl.DataFrame],
             k: int = 10, threshold: float | None = None, decoding: Decoding | dict | None = None,
             seed: int = 1, write: bool = True, calibration_pairs: int | None = None, *,
             choice: Any = None, feedback_for: str | None = None,
             name: str | None = None, mapping: Mapping[str, str] | None = None,
             check_ids: bool = True) -> Simulation:
    """Let `model` play the dataset's users and judge each recommender's top-`k` lists.

    recommendations: one RECS file/table, a list of them (named after the files), or a mapping
    name -> file/table. threshold: the engage threshold (default: calibrated, see the module
    docstring). write: also generate each review (off: ratings and decisions only, much faster).
    calibration_pairs: calibrate the threshold on a seeded sample of that many validation pairs.
    choice: a ChoiceModel deciding engage/skip (`model` may then be None: decisions only).
    feedback_for: `engaged` or
    `all` (default: `engaged` with a choice model, `all` without). name: the simulator's label
    (default: `simulator_name(model, choice)`; the CLI adds folder names through the same function).
    mapping, check_ids: how the RECS files are read and checked (`feedbackgen.recommend.recs`).
    """
    if not isinstance(k, int) or k < 1:
        raise FeedbackgenError(f"k must be a positive integer, got {k!r}")
    if isinstance(recommendations, (str, Path, pl.DataFrame)):
        recommendations = [recommendations]
    named = (dict(recommendations) if isinstance(recommendations, Mapping)
             else {(Path(r).stem if not isinstance(r, pl.DataFrame) else f"recommender{n + 1}"): r
                   for n, r in enumerate(recommendations)})
    if len(named) < (len(recommendations)):
        raise FeedbackgenError("two recommendation files share a name; pass a mapping name -> file")
    # every list is read and checked before any model work (the calibration may be paid LLM calls)
    read = {recommender: read_recommendations(source, dataset, k, recommender, mapping=mapping, check_ids=check_ids)
            for recommender, source in named.items()}
    user = SimulatedUser(model, dataset, threshold, seed, calibration_pairs, choice=choice)
    feedback_for = feedback_for or ("engaged" if choice is not None else "all")
    judged, checks = [], []
    for recommender, (recs, check) in read.items():
        checks.append(check)
        verdict = user.judge(recs["user_id"].to_list(), recs["item_id"].to_list(), decoding, write, feedback_for)
        mine = pl.concat([recs, verdict], how="horizontal")
        if check.history:  # items the user already had: a re-consumption (a skip), never a new find
            mine = pl.concat([mine, already_owned(check, choice is not None)],
                             how="diagonal_relaxed").sort("user_id", "rank")
        judged.append(mine.with_columns(pl.lit(recommender).alias("recommender")))
    items = pl.concat(judged).select("recommender", "user_id", "rank", "item_id", "rating", "stars",
                                     "text", "provenance", "source_item", "source", "engage", "p_engage")
    # the same text for several items of one user's list says nothing about any of them
    items = items.with_columns(
        (pl.col("text").is_not_null() & (pl.col("text") != "")
         & (pl.len().over("recommender", "user_id", "text") > 1)).alias("repeated"))
    users = _per_user(items)
    rows = []
    for check in checks:
        mine_items = items.filter(pl.col("recommender") == check.recommender)
        mine_users = users.filter(pl.col("recommender") == check.recommender)
        empty = not len(mine_items)
        rows.append({
            "recommender": check.recommender, "users": len(mine_users), "items": len(mine_items),
            "mean_rating": None if empty else mine_items["rating"].mean(),
            **_expected(mine_items, k, seed),
            "engagement_at_k": None if empty else float(mine_users["engaged"].mean() / k),
            "share_rated_4_plus": None if empty else (mine_items["stars"] >= 4).mean(),
            "share_users_engaging": None if empty else float(mine_users["satisfied"].mean()),
            "unknown_users": check.unknown_users, "unknown_items": check.unknown_items,
            "rows_left_out": check.rows - check.kept, "in_history_rows": check.in_history_rows,
            "duplicates": check.duplicates, "short_lists": check.short_lists,
        })
    summary = pl.DataFrame(rows, schema={
        "recommender": pl.Utf8, "users": pl.Int64, "items": pl.Int64, "mean_rating": pl.Float64,
        "expected_engagement_at_k": pl.Float64, "expected_engagement_ci": pl.List(pl.Float64),
        "engagement_at_k": pl.Float64, "share_rated_4_plus": pl.Float64, "share_users_engaging": pl.Float64,
        "unknown_users": pl.Int64, "unknown_items": pl.Int64, "rows_left_out": pl.Int64,
        "in_history_rows": pl.Int64, "duplicates": pl.Int64, "short_lists": pl.Int64})
    return Simulation(items, users, summary, checks, user.calibration, k, name or simulator_name(model, choice))
