"""Sessions: a simulated user browses a recommender page by page, takes some items, and leaves.

    run = sessions(None, dataset, {"ease": "recs/ease.parquet"}, choice=user_model,
                   config={"page_size": 10, "max_pages": 5})
    run.summary        # one row per recommender: pages viewed, items engaged, exit page, satisfaction
    run.save("runs/sessions")   # sessions.parquet (one row per shown item), summary.md, summary.json

Each user is shown page 1 of a recommender (ranks 1..page_size of a RECS file, or the live
recommender's top page_size), decides on each item, and after the page either leaves or asks for the
next one, up to `max_pages`. No item is shown twice. A live recommender (a choice model) re-ranks
before every page with `top_k`, the items engaged so far folded into its scoring as history and the
items already shown left out.

**Engaging.** P(engage) is the simulated user's calibrated probability
(`feedbackgen.recommend.engage`: the item's log ranks under the choice model(s) among the user's
candidates), precomputed for the whole catalogue once per user (`EngageRows`); items the user took
in train or valid, or already in this session, are never taken again (P = 0). **Satiation:** the
n-th item considered after k engagements in the session is taken with P · satiation^k. The draw is
one uniform per shown slot from a stream seeded by (seed, user, occurrence) — with satiation 1 and
full pages, the same decisions `SimulatedUser.draw` makes for the same list.

**Leaving.** Review and rating logs record what users took, not what they were shown or when they
stopped, so no exit model can be fitted from these datasets; the exit rule is an assumption with its
parameters stated, as Agent4Rec (Zhang et al., "On Generative Agents in Recommendation", SIGIR 2024:
an agent leaves when its LLM says it is tired or unsatisfied) and KuaiSim (Zhao et al., "KuaiSim: A
Comprehensive Simulator for Recommender Systems", NeurIPS 2023: a user leaves when a patience budget,
spent faster on poor items, runs out) do. After each page the user leaves with probability

    P(leave) = exit_base + (1 - exit_base) · boredom · [no item on the page was taken]

(a constant hazard, 1/exit_base pages on average for a user who keeps finding things, plus a boredom
jump after an empty page). A list that runs out ends the session too (`end_of_list`).

**Satisfaction** of a session: the share of the pages viewed on which the user took at least one
item (in [0, 1]; the complement is what the boredom term punishes). Per recommender: its mean over
sessions, beside pages viewed, items engaged, the exit page and the share who left before `max_pages`.

With a generator the engaged items get a rating and (when it writes) a review, in one batched
`generate` call after the decisions: what the user would say about what they took.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from feedbackgen.config import Decoding, StrictModel, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import FeedbackgenError
from feedbackgen.recommend.engage import EngageModel, pool_scores, ranks_in
from feedbackgen.recommend.ranking import Pool, pool_of, score_pairs, simulator_name, top_k
from feedbackgen.recommend.recs import read_recommendations
from feedbackgen.recommend.session_report import Sessions, per_session, per_recommender
from feedbackgen.recommend.simulated_user import SimulatedUser
from feedbackgen.types import FeedbackRequest

USERS_PER_BATCH = 256  # P rows held at a time: users x catalogue float64


class ExitRule(StrictModel):
    """How a simulated user leaves and tires (module docstring); shared with `feedbackgen.env`."""

    exit_base: float = Field(0.2, ge=0.0, le=1.0, description="P(leave) after any page")
    boredom: float = Field(0.5, ge=0.0, le=1.0, description="extra share of the rest after a page with no item taken")
    satiation: float = Field(0.9, ge=0.0, le=1.0, description="P(engage) multiplied by this per item taken so far")

    def leave_probability(self, engaged_on_page: bool) -> float:
        return self.exit_base + (1.0 - self.exit_base) * (0.0 if engaged_on_page else self.boredom)

    def describe(self) -> str:
        return (f"after each page P(leave) = {self.exit_base:g} + (1 - {self.exit_base:g}) · {self.boredom:g} "
                f"if nothing on it was taken; P(engage) × {self.satiation:g}^(items taken so far)")


class SessionConfig(ExitRule):
    page_size: int = Field(10, ge=1, le=1000, description="items per page")
    max_pages: int = Field(5, ge=1, le=1000, description="most pages a user views")
    seed: int = Field(1, ge=0, description="seed of the per-user draws")


def engage_parts(user: SimulatedUser) -> tuple[EngageModel, list[Any]]:
    """(the calibrated EngageModel, the models whose log ranks it reads) of a simulated user with a
    choice model: a `simulated_user` model's components, or the one plain choice model."""
    if user.engage_rule is None:
        raise FeedbackgenError("sessions and the environment need a choice model (--choice / simulator=): "
                               "P(engage) comes from it")
    rule = user.engage_rule
    return rule.model, (list(rule.choice.components) if rule.own else [rule.choice])


class EngageRows:
    """P(engage) of every catalogue item (`pool.items`) for a user, after the valid period: the same
    numbers `SimulatedUser.probability` gives item by item, for the price of one dense score row per
    model and one sort. Items in the user's train or valid history get 0."""

    def __init__(self, engage: EngageModel, models: Sequence[Any], pool: Pool):
        self.engage, self.models, self.pool = engage, list(models), pool
        self.every = np.arange(len(pool.items))

    @classmethod
    def of(cls, user: SimulatedUser, dataset: Dataset) -> EngageRows:
        engage, models = engage_parts(user)
        return cls(engage, models, pool_of(dataset))

    def rows(self, users: Sequence[str]) -> np.ndarray:
        """Shape (len(users), len(pool.items)); an unknown user is ranked by each model's fallback."""
        out = np.empty((len(users), len(self.pool.items)))
        for start in range(0, len(users), USERS_PER_BATCH):
            batch = list(users[start:start + USERS_PER_BATCH])
            blocks = [pool_scores(m, self.pool, batch) for m in self.models]
            for n, user in enumerate(batch):
                cand = np.ones(len(self.pool.items), dtype=bool)
                cand[self.pool.masked(user, "train")] = False
                x = np.column_stack([np.log(ranks_in(b[n], cand, self.every)) for b in blocks])
                p = self.engage.from_features(x)
                p[self.pool.masked(user, "train+valid")] = 0.0
                out[start + n] = p
        return out


def streams(seed: int, user: str, occurrence: int = 0) -> tuple[np.random.Generator, np.random.Generator]:
    """(engage stream, exit stream) of one session: seeded by (seed, user[, occurrence]), so a
    user's session does not depend on who else is simulated; the engage stream is `SimulatedUser.draw`'s."""
    key = [seed, zlib.crc32(str(user).encode())] + ([occurrence] if occurrence else [])
    return np.random.default_rng(key), np.random.default_rng([*key, 2**31 + 1])


def decide(p: np.ndarray, u: np.ndarray, taken_before: int, satiation: float) -> tuple[np.ndarray, np.ndarray]:
    """(engaged, the P used) for one page in order: item j is taken when u_j < p_j · satiation^k,
    k = items taken before it in the session (one pass per item taken, not per item shown)."""
    used = p * satiation ** taken_before if satiation != 1.0 else p
    taken = u < used
    if satiation == 1.0 or True not in taken.tolist():  # (the environment's step: mostly nothing taken)
        return taken, used
    used, start = used.copy(), 0
    while True:
        hits = np.flatnonzero(taken[start:])
        if not len(hits):
            return taken, used
        j = start + int(hits[0])  # decided: every item after it was considered one engagement later
        used[j + 1:] *= satiation
        taken[j + 1:] = u[j + 1:] < used[j + 1:]
        start = j + 1


# -- where the pages come from ------------------------------------------------------------------

class RecsPages:
    """Pages of a RECS list: page p holds ranks (p-1)·size+1 .. p·size."""

    def __init__(self, recs: pl.DataFrame, size: int):
        self.size, self.lists = size, {}
        for user, ranks, items in recs.group_by("user_id").agg("rank", "item_id").iter_rows():
            order = np.argsort(ranks)
            self.lists[user] = (np.asarray(ranks)[order], np.asarray(items, dtype=object)[order])

    def users(self) -> list[str]:
        return sorted(self.lists)

    def pages(self, users: list[str], page: int, shown: list[set[str]], taken: list[list[str]]) -> list[list[str]]:
        out = []
        for user, seen in zip(users, shown):
            ranks, items = self.lists.get(user, (np.zeros(0), np.zeros(0, dtype=object)))
            on = (ranks > (page - 1) * self.size) & (ranks <= page * self.size)
            out.append([i for i in items[on] if i not in seen])
        return out


class LivePages:
    """Pages of a live recommender: `top_k` before every page, with the items taken so far as history
    (masked and folded into the scoring) and the items already shown left out."""

    def __init__(self, model: Any, dataset: Dataset, size: int):
        self.model, self.dataset, self.size = model, dataset, size

    def pages(self, users: list[str], page: int, shown: list[set[str]], taken: list[list[str]]) -> list[list[str]]:
        if not users:
            return []
        history = {u: t for u, t in zip(users, taken) if t}
        k = self.size + max(len(s) for s in shown)  # enough rows left once the shown items go
        ranked = top_k(self.model, list(dict.fromkeys(users)), k, dataset=self.dataset, history=history)
        lists = {u: items for u, items in ranked.group_by("user_id").agg("item_id").iter_rows()}
        return [[i for i in lists.get(u, []) if i not in seen][:self.size] for u, seen in zip(users, shown)]


# -- the browsing -------------------------------------------------------------------------------

def browse(source: Any, users: Sequence[str], p_rows: EngageRows, cfg: SessionConfig) -> dict[str, list]:
    """Run the sessions of `users` (repeats allowed: each occurrence its own seeded session) on a
    page source; the log's columns as lists."""
    cols: dict[str, list] = {c: [] for c in ("user_id", "session", "page", "position", "item_id", "p_engage",
                                              "engaged", "exited_after", "exit_reason")}
    occurrence: dict[str, int] = {}
    for start in range(0, len(users), USERS_PER_BATCH):
        batch = list(users[start:start + USERS_PER_BATCH])
        probs = p_rows.rows(batch)
        rngs = []
        for u in batch:
            occurrence[u] = occurrence.get(u, -1) + 1
            rngs.append(streams(cfg.seed, u, occurrence[u]))
        shown: list[set[str]] = [set() for _ in batch]
        taken: list[list[str]] = [[] for _ in batch]
        last_page: list[range] = [range(0) for _ in batch]  # rows of each session's latest page
        active = list(range(len(batch)))
        for page in range(1, cfg.max_pages + 1):
            lists = source.pages([batch[n] for n in active], page, [shown[n] for n in active],
                                 [taken[n] for n in active])
            still = []
            for n, items in zip(active, lists):
                if not items:  # the list ran out: the session ends with the page before
                    for r in last_page[n]:
                        cols["exit_reason"][r] = "end_of_list"
                    continue
                idx = np.fromiter((p_rows.pool.index.get(i, -1) for i in items), dtype=np.int64, count=len(items))
                p = np.where(idx >= 0, probs[n, np.maximum(idx, 0)], 0.0)
                engaged, used = decide(p, rngs[n][0].random(cfg.page_size)[:len(items)], len(taken[n]),
                                       cfg.satiation)
                leaves = bool(rngs[n][1].random() < cfg.leave_probability(bool(engaged.any())))
                reason = "left" if leaves else ("max_pages" if page == cfg.max_pages else None)
                first = len(cols["item_id"])
                k = len(items)
                cols["user_id"] += [batch[n]] * k
                cols["session"] += [start + n] * k
                cols["page"] += [page] * k
                cols["position"] += list(range(1, k + 1))
                cols["item_id"] += items
                cols["p_engage"] += used.tolist()
                cols["engaged"] += engaged.tolist()
                cols["exited_after"] += [leaves] * k
                cols["exit_reason"] += [reason] * k
                last_page[n] = range(first, first + k)
                shown[n].update(items)
                taken[n] += [i for i, e in zip(items, engaged) if e]
                if reason is None:
                    still.append(n)
            active = still
    return cols


def feedback(generator: Any, log: pl.DataFrame, decoding: Decoding | dict | None, write: bool) -> pl.DataFrame:
    """Rating and text of the engaged rows (nulls elsewhere): one `generate` call when it writes,
    else its predicted ratings."""
    n = len(log)
    ratings, texts = np.full(n, np.nan), [None] * n
    rows = np.flatnonzero(log["engaged"].to_numpy()) if generator is not None else np.zeros(0, dtype=int)
    if len(rows):
        users, items = log["user_id"].to_list(), log["item_id"].to_list()
        if write and getattr(generator, "produces_text", False):
            out = generator.generate([FeedbackRequest(users[r], items[r]) for r in rows],
                                     validate(Decoding, decoding, "decoding settings"))
            for r, fb in zip(rows, out):
                ratings[r], texts[r] = fb.rating, fb.text
        else:
            ratings[rows] = score_pairs(generator, [users[r] for r in rows], [items[r] for r in rows])
    return log.with_columns(pl.Series("rating", ratings, dtype=pl.Float64, nan_to_null=True),
                            pl.Series("text", texts, dtype=pl.Utf8))


def sessions(model: Any, dataset: Dataset,
             recommendations: Mapping[str, str | Path | pl.DataFrame] | None = None, *,
             live: Mapping[str, Any] | None = None, choice: Any = None,
             config: SessionConfig | dict | None = None, users: Sequence[str] | None = None,
             decoding: Decoding | dict | None = None, write: bool = True,
             calibration_pairs: int | None = None, name: str | None = None,
             mapping: Mapping[str, str] | None = None, check_ids: bool = True,
             progress: Callable[[str], None] | None = None) -> Sessions:
    """Simulated users browse each recommender in sessions (module docstring).

    recommendations: name -> RECS file/table (ranked at least page_size · max_pages deep to fill
    every page); live: name -> choice model re-ranking before every page. choice: the simulated
    user's choice model (required: P(engage)); model: a generator for the engaged items' rating and
    review, or None. users: the users who browse (repeats allowed, each its own seeded session;
    default: every user of a RECS file, or the test users for a live recommender).
    Raises FeedbackgenError without a choice model or without any recommender."""
    cfg = validate(SessionConfig, config, "session settings")
    if not recommendations and not live:
        raise FeedbackgenError("sessions need a recommender: RECS files (--recommendations) or a live "
                               "choice model (--live-recommender)")
    depth = cfg.page_size * cfg.max_pages
    read = {r: read_recommendations(src, dataset, depth, r, mapping=mapping, check_ids=check_ids)
            for r, src in (recommendations or {}).items()}
    # the calibration keeps its own seed (1): a session seed changes the draws, not P(engage)
    user = SimulatedUser(None, dataset, calibration_pairs=calibration_pairs, choice=choice)
    p_rows = EngageRows.of(user, dataset)
    sources = {r: (RecsPages(recs, cfg.page_size), check) for r, (recs, check) in read.items()}
    sources.update({r: (LivePages(m, dataset, cfg.page_size), None) for r, m in (live or {}).items()})
    logs = []
    for recommender, (source, _) in sources.items():
        who = list(users) if users is not None else (
            source.users() if isinstance(source, RecsPages) else sorted(set(dataset.test["user_id"].to_list())))
        if progress:
            progress(f"{recommender}: {len(who)} sessions")
        log = pl.DataFrame(browse(source, who, p_rows, cfg), schema=LOG_SCHEMA).sort("session", "page", "position")
        logs.append(log.with_columns(pl.lit(recommender).alias("recommender")))
    log = feedback(model, pl.concat(logs), decoding, write).select(LOG_COLUMNS)
    sess = per_session(log, cfg.max_pages)
    return Sessions(log, sess, per_recommender(sess, log, list(sources)), cfg, user.calibration,
                    [c for _, c in sources.values() if c is not None], name or simulator_name(model, choice))


LOG_SCHEMA = {"user_id": pl.Utf8, "session": pl.Int64, "page": pl.Int32, "position": pl.Int32, "item_id": pl.Utf8,
              "p_engage": pl.Float64, "engaged": pl.Boolean, "exited_after": pl.Boolean, "exit_reason": pl.Utf8}
LOG_COLUMNS = ["recommender", "user_id", "session", "page", "position", "item_id", "p_engage", "engaged", "rating",
               "text", "exited_after", "exit_reason"]

__all__ = ["EngageRows", "ExitRule", "LivePages", "RecsPages", "SessionConfig", "Sessions", "browse", "decide",
           "engage_parts", "sessions", "streams"]
