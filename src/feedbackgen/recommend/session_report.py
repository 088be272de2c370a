"""What a run of sessions produced (`feedbackgen.recommend.sessions`): the log, per session, per recommender.

    run.log        # one row per shown item: recommender, user_id, session, page, position, item_id,
                   # p_engage, engaged, rating, text, exited_after, exit_reason
    run.sessions   # one row per session: pages viewed, items engaged, exit page, satisfaction
    run.summary    # one row per recommender (the table of summary.md)
    run.save(dir)  # sessions.parquet, sessions_users.parquet, summary.json, summary.md
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.io import write_run
from feedbackgen.recommend.recs import RecommendationsCheck
from feedbackgen.tables import markdown_table


def per_session(log: pl.DataFrame, max_pages: int) -> pl.DataFrame:
    """One row per (recommender, session): user_id, pages_viewed, items_shown, items_engaged,
    exit_reason (left | max_pages | end_of_list), exit_page (the page after which the user left by the
    exit rule; null otherwise), satisfaction (share of viewed pages with an item taken), mean_rating."""
    pages = (log.group_by("recommender", "session", "page", maintain_order=True)
             .agg(pl.col("engaged").any().alias("hit")))
    hits = pages.group_by("recommender", "session", maintain_order=True).agg(
        pl.col("hit").mean().alias("satisfaction"))
    out = log.group_by("recommender", "session", maintain_order=True).agg(
        pl.col("user_id").first(),
        pl.col("page").max().alias("pages_viewed"),
        pl.len().alias("items_shown"),
        pl.col("engaged").sum().cast(pl.Int64).alias("items_engaged"),
        pl.col("exit_reason").drop_nulls().last().alias("exit_reason"),
        pl.col("page").filter(pl.col("exited_after")).max().alias("exit_page"),
        pl.col("rating").filter(pl.col("engaged")).mean().alias("mean_rating"),
    )
    return out.join(hits, on=["recommender", "session"], how="left", maintain_order="left")


def per_recommender(sessions: pl.DataFrame, log: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """One row per recommender, in `names` order: sessions, users, mean pages_viewed,
    items_engaged per session, engagement (engaged / shown), exit_page (mean over those who left),
    share_left (left before max_pages by the exit rule), satisfaction, mean_p_engage, mean_rating."""
    rows = []
    for name in names:
        s = sessions.filter(pl.col("recommender") == name)
        items = log.filter(pl.col("recommender") == name)
        rows.append({
            "recommender": name, "sessions": len(s), "users": s["user_id"].n_unique(),
            "pages_viewed": s["pages_viewed"].mean(), "items_engaged": s["items_engaged"].mean(),
            "engagement": items["engaged"].mean() if len(items) else None,
            "exit_page": s["exit_page"].mean(), "share_left": (s["exit_reason"] == "left").mean() if len(s) else None,
            "satisfaction": s["satisfaction"].mean(), "mean_p_engage": items["p_engage"].mean(),
            "mean_rating": items["rating"].mean()})
    return pl.DataFrame(rows, schema={
        "recommender": pl.Utf8, "sessions": pl.Int64, "users": pl.Int64, "pages_viewed": pl.Float64,
        "items_engaged": pl.Float64, "engagement": pl.Float64, "exit_page": pl.Float64, "share_left": pl.Float64,
        "satisfaction": pl.Float64, "mean_p_engage": pl.Float64, "mean_rating": pl.Float64})


@dataclass
class Sessions:
    """Everything one `sessions` call produced (module docstring)."""

    log: pl.DataFrame
    sessions: pl.DataFrame
    summary: pl.DataFrame
    config: Any                 # the SessionConfig
    calibration: Any            # the simulated user's Calibration
    checks: list[RecommendationsCheck]
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config.model_dump(), "exit_rule": self.config.describe(),
                "calibration": self.calibration.to_dict(), "summary": self.summary.to_dicts(),
                "checks": [c.to_dict() for c in self.checks]}

    def markdown(self) -> str:
        c = self.config
        lines = [f"Sessions of simulated user `{self.model}`: pages of {c.page_size}, at most {c.max_pages} pages, "
                 f"seed {c.seed}. Exit rule (an assumption: these logs record what users took, not when they "
                 f"left): {c.describe()}.", "", markdown_table(self.summary, digits=3), "",
                 "pages_viewed, items_engaged: means per session; engagement: engaged / shown; exit_page: mean page "
                 "after which users left (among those who left); share_left: left before the last page; "
                 "satisfaction: mean share of viewed pages with an item taken; mean_rating: the generator's rating "
                 "of the engaged items."]
        notes = [ch.describe() for ch in self.checks if ch.worth_noting()]
        if notes:
            lines += ["", "Left out of the lists:"] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> Path:
        """Write sessions.parquet (the log), sessions_users.parquet, summary.json and summary.md."""
        return write_run(out_dir, {"sessions": self.log, "sessions_users": self.sessions}, self.to_dict(),
                         self.markdown())


__all__ = ["Sessions", "per_recommender", "per_session"]
