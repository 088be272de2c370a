"""Blind human evaluation of generated feedback: a task folder, its judgements, and their report.

    TASK/
      items.json          what annotators see: per item the user's past reviews, the item, and two
                          outputs "A" and "B" in random order, with no model names
      key.json            which model wrote A and B of each item, and the predictions it came from
      judgements.sqlite   one row per (item, annotator), created on first use (WAL mode)

An annotator says which output is better (A, B or tie) and rates each output 1-5 for relevance
(does it fit this item?), fluency (is it well written?) and personalisation (does it sound like
this user?). `report` turns the judgements into per-model win rates with 95% Wilson intervals,
mean ratings with 95% t intervals, and Krippendorff's alpha between annotators.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.evaluation.agreement import krippendorff_alpha, mean_interval, wilson_interval
from feedbackgen.evaluation.predictions import predictions_by_pair
from feedbackgen.io import atomic_write_json, sha256_file
from feedbackgen.tables import number, table_lines

CRITERIA = ("relevance", "fluency", "personalisation")
PREFERENCES = ("A", "B", "tie")
CONTEXT_REVIEWS = 5
ITEM_REVIEWS = 2
TASK_FORMAT = "feedbackgen-annotation-task"
ANNOTATOR_PATTERN = re.compile(r"^[\w][\w .@-]{0,63}$")

CRITERIA_HELP = {
    "relevance": "Does the text fit this item?",
    "fluency": "Is it well-formed, readable English?",
    "personalisation": "Does it sound like this user (their past reviews on the left)?",
}


# -- building a task --------------------------------------------------------------------------
def system_names(paths: list[Path]) -> list[str]:
    """Each predictions file's name without extension; repeats get the parent folder in front."""
    stems = [p.name.removesuffix(".jsonl").removesuffix(".json") for p in paths]
    return [f"{p.parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def _review(row: dict[str, Any], titles: dict[str, str]) -> dict[str, Any]:
    return {"item_id": row["item_id"], "title": titles.get(row["item_id"]), "rating": row["rating"],
            "text": row["text"] or ""}


def create_task(predictions: list[str | Path], dataset: Dataset, out: str | Path, n: int = 50,
                seed: int = 1) -> Path:
    """Write a blind pairwise task of `n` items from two or more models' predictions.

    Items are (user, item) pairs that every file answers with a non-empty text, drawn with `seed`.
    With more than two models, the model pairs take turns so each pair is judged equally often.
    The same inputs and seed give the same files.
    """
    paths = [Path(p) for p in predictions]
    if len(paths) < 2:
        raise FeedbackgenError("a pairwise task needs predictions from at least two models")
    if n < 1:
        raise FeedbackgenError(f"--n must be at least 1, got {n}")
    names = system_names(paths)
    preds = [predictions_by_pair(p) for p in paths]
    common = set.intersection(*({k for k, row in p.items() if str(row["text"] or "").strip()} for p in preds))
    if not common:
        raise FeedbackgenError("the predictions files share no (user_id, item_id) pair with a text; "
                               "generate them for the same split")
    rng = np.random.default_rng(seed)
    keys = sorted(common)
    chosen = [keys[k] for k in rng.permutation(len(keys))[:n]]
    pairs = list(itertools.combinations(range(len(paths)), 2))

    train = dataset.train.sort(["user_id", "timestamp", "item_id"], nulls_last=False)
    titles: dict[str, str] = {}
    if dataset.items is not None:
        titles = {i: t for i, t in dataset.items.select("item_id", "title").iter_rows() if t}
    by_user = {k[0]: g for k, g in train.group_by(["user_id"])} if len(train) else {}
    by_item = {k[0]: g for k, g in train.group_by(["item_id"])} if len(train) else {}

    items, key = [], []
    for k, (user_id, item_id) in enumerate(chosen):
        a, b = pairs[k % len(pairs)]
        if rng.random() < 0.5:
            a, b = b, a
        history = by_user.get(user_id, train.clear()).filter(pl.col("item_id") != item_id)
        others = by_item.get(item_id, train.clear()).filter(pl.col("user_id") != user_id)
        aspect = preds[a][(user_id, item_id)].get("aspect")
        items.append({
            "id": k,
            "user_id": user_id,
            "item": {"item_id": item_id, "title": titles.get(item_id), "aspect": aspect,
                     "other_reviews": [_review(r, titles) for r in others.head(ITEM_REVIEWS).iter_rows(named=True)]},
            "user_reviews": [_review(r, titles) for r in history.tail(CONTEXT_REVIEWS).reverse().iter_rows(named=True)],
            "outputs": {slot: {"rating": round(float(preds[s][(user_id, item_id)].get("rating") or 0.0), 1),
                               "text": str(preds[s][(user_id, item_id)]["text"])}
                        for slot, s in (("A", a), ("B", b))},
        })
        key.append({"A": names[a], "B": names[b]})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "judgements.sqlite").exists():
        raise FeedbackgenError(f"{out} already holds judgements; choose another --out")
    atomic_write_json(out / "items.json", {"format": TASK_FORMAT, "version": 1, "criteria": list(CRITERIA),
                                           "items": items})
    atomic_write_json(out / "key.json", {
        "systems": names,
        "sources": {name: {"path": str(p), "sha256": sha256_file(p)} for name, p in zip(names, paths)},
        "seed": seed, "items": key})
    return out


# -- judgements -------------------------------------------------------------------------------
@dataclass
class Judgement:
    item: int
    annotator: str
    preference: str
    ratings: dict[str, dict[str, int]]  # slot ("A"/"B") -> criterion -> 1..5
    comment: str = ""

    def validate(self, n_items: int) -> None:
        """Raise ValueError naming the first bad field."""
        if not (0 <= self.item < n_items):
            raise DataError(f"item: must be between 0 and {n_items - 1}, got {self.item}")
        if not ANNOTATOR_PATTERN.match(self.annotator or ""):
            raise DataError("annotator: 1-64 letters, digits, spaces or . @ - _ (starting with a letter "
                            f"or digit), got {self.annotator!r}")
        if self.preference not in PREFERENCES:
            raise DataError(f"preference: must be one of A, B, tie, got {self.preference!r}")
        for slot in ("A", "B"):
            for c in CRITERIA:
                value = self.ratings.get(slot, {}).get(c)
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
                    raise DataError(f"{c}_{slot.lower()}: must be a whole number from 1 to 5, got {value!r}")
        if len(self.comment) > 2000:
            raise DataError("comment: at most 2000 characters")


RATING_COLUMNS = [f"{c}_{s}" for s in ("a", "b") for c in CRITERIA]


class JudgementStore:
    """Judgements in SQLite: WAL mode, one short transaction per judgement, a connection per call
    (so any thread of the server may use it). A later judgement of the same (item, annotator)
    replaces the earlier one: annotators may change their minds."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"""CREATE TABLE IF NOT EXISTS judgements (
                item INTEGER NOT NULL, annotator TEXT NOT NULL,
                preference TEXT NOT NULL CHECK (preference IN ('A', 'B', 'tie')),
                {", ".join(f"{c} INTEGER NOT NULL CHECK ({c} BETWEEN 1 AND 5)" for c in RATING_COLUMNS)},
                comment TEXT NOT NULL DEFAULT '',
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                PRIMARY KEY (item, annotator))""")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA synchronous = FULL")  # a judgement acknowledged is a judgement kept
        return db

    def save(self, j: Judgement) -> None:
        values = [j.item, j.annotator, j.preference,
                  *(j.ratings[s.upper()][c] for s in ("a", "b") for c in CRITERIA), j.comment]
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"""INSERT INTO judgements (item, annotator, preference, {", ".join(RATING_COLUMNS)}, comment)
                           VALUES ({", ".join("?" * len(values))})
                           ON CONFLICT (item, annotator) DO UPDATE SET preference = excluded.preference,
                           {", ".join(f"{c} = excluded.{c}" for c in RATING_COLUMNS)},
                           comment = excluded.comment, updated_at = excluded.updated_at""", values)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _rows(self, where: str = "", args: tuple = ()) -> list[Judgement]:
        db = self._connect()
        try:
            rows = db.execute(f"SELECT item, annotator, preference, {', '.join(RATING_COLUMNS)}, comment "
                              f"FROM judgements {where} ORDER BY item, annotator", args).fetchall()
        finally:
            db.close()
        out = []
        for item, annotator, preference, *rest in rows:
            scores, comment = rest[:-1], rest[-1]
            ratings = {s.upper(): {c: scores[k * len(CRITERIA) + m] for m, c in enumerate(CRITERIA)}
                       for k, s in enumerate(("a", "b"))}
            out.append(Judgement(item, annotator, preference, ratings, comment))
        return out

    def all(self) -> list[Judgement]:
        return self._rows()

    def get(self, item: int, annotator: str) -> Judgement | None:
        rows = self._rows("WHERE item = ? AND annotator = ?", (item, annotator))
        return rows[0] if rows else None

    def judged_items(self, annotator: str) -> set[int]:
        return {j.item for j in self._rows("WHERE annotator = ?", (annotator,))}


class AnnotationTask:
    """A task folder opened for annotation: its blind items and its judgement store."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        items_file = self.path / "items.json"
        if not items_file.exists():
            raise FeedbackgenError(f"{self.path} is not an annotation task (no items.json); "
                                   "make one with `feedbackgen annotate create`")
        data = json.loads(items_file.read_text())
        if data.get("format") != TASK_FORMAT:
            raise FeedbackgenError(f"{items_file} is not a feedbackgen annotation task")
        self.items: list[dict[str, Any]] = data["items"]
        self.store = JudgementStore(self.path / "judgements.sqlite")

    def __len__(self) -> int:
        return len(self.items)

    def next_item(self, annotator: str, after: int = -1) -> int | None:
        """The first item after `after` (wrapping round) that `annotator` has not judged yet."""
        done = self.store.judged_items(annotator)
        order = list(range(after + 1, len(self.items))) + list(range(0, after + 1))
        return next((k for k in order if k not in done), None)


# -- the report -------------------------------------------------------------------------------
def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return [round(ci[0], 4), round(ci[1], 4)] if ci else None


def task_report(path: str | Path, rating_metric: str = "ordinal") -> dict[str, Any]:
    """Win rates, mean ratings and agreement for a task's judgements (model names from key.json).

    Win rate = wins / (wins + losses): ties are counted separately and left out of the rate.
    """
    task = AnnotationTask(path)
    key = json.loads((task.path / "key.json").read_text())
    systems: list[str] = key["systems"]
    judgements = task.store.all()

    wins, losses, ties = defaultdict(int), defaultdict(int), defaultdict(int)
    head_to_head: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    scores: dict[str, dict[str, list[int]]] = {s: {c: [] for c in CRITERIA} for s in systems}
    preference_units: dict[int, list[str]] = defaultdict(list)
    rating_units: dict[str, dict[tuple[int, str], list[int]]] = {c: defaultdict(list) for c in CRITERIA}
    for j in judgements:
        who = key["items"][j.item]
        a, b = who["A"], who["B"]
        pair, flipped = tuple(sorted((a, b))), a > b
        if j.preference == "tie":
            ties[a] += 1
            ties[b] += 1
            head_to_head[pair][2] += 1
        else:
            winner, loser = (a, b) if j.preference == "A" else (b, a)
            wins[winner] += 1
            losses[loser] += 1
            head_to_head[pair][int((j.preference == "A") == flipped)] += 1
        preference_units[j.item].append(j.preference)
        for slot, system in (("A", a), ("B", b)):
            for c in CRITERIA:
                scores[system][c].append(j.ratings[slot][c])
                rating_units[c][(j.item, slot)].append(j.ratings[slot][c])

    per_system = {}
    for s in systems:
        decided = wins[s] + losses[s]
        per_system[s] = {
            "wins": wins[s], "losses": losses[s], "ties": ties[s], "judgements": decided + ties[s],
            "win_rate": round(wins[s] / decided, 4) if decided else None,
            "win_rate_95ci": _interval(wilson_interval(wins[s], decided)),
            "ratings": {c: {"mean": round(float(np.mean(v)), 4) if v else None, "n": len(v),
                            "mean_95ci": _interval(mean_interval(v))} for c, v in scores[s].items()},
        }

    def alpha(units, metric):
        value = krippendorff_alpha(list(units.values()), metric)
        return {"alpha": None if value is None else round(value, 4), "metric": metric,
                "units_coded_twice": sum(len(v) >= 2 for v in units.values())}

    return {
        "task": str(task.path),
        "items": len(task),
        "judgements": len(judgements),
        "annotators": sorted({j.annotator for j in judgements}),
        "items_judged": len({j.item for j in judgements}),
        "systems": per_system,
        "head_to_head": [{"a": p[0], "b": p[1], "a_wins": w[0], "b_wins": w[1], "ties": w[2]}
                         for p, w in sorted(head_to_head.items())],
        "agreement": {"preference": alpha(preference_units, "nominal"),
                      **{c: alpha(rating_units[c], rating_metric) for c in CRITERIA}},
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [f"# Human evaluation: {report['task']}", "",
             f"{report['judgements']} judgements of {report['items_judged']} / {report['items']} items "
             f"by {len(report['annotators'])} annotator(s): {', '.join(report['annotators']) or '–'}.", "",
             "## Pairwise preference (win rate = wins / (wins + losses), 95% Wilson interval)", ""]
    lines += table_lines(["model", "wins", "losses", "ties", "win rate", "95% interval"], [
        [name, s["wins"], s["losses"], s["ties"], number(s["win_rate"]),
         "–" if s["win_rate_95ci"] is None else f"{number(s['win_rate_95ci'][0])} – {number(s['win_rate_95ci'][1])}"]
        for name, s in report["systems"].items()], align="lrrrrl")
    lines += ["", "## Mean ratings (1–5, higher is better; ± half-width of the 95% t interval)", ""]
    rows = []
    for name, s in report["systems"].items():
        cells = []
        for c in CRITERIA:
            r = s["ratings"][c]
            half = "" if r["mean_95ci"] is None else f" ± {(r['mean_95ci'][1] - r['mean_95ci'][0]) / 2:.2f}"
            cells.append(f"{number(r['mean'], '.2f')}{half} (n={r['n']})")
        rows.append([name, *cells])
    lines += table_lines(["model", *CRITERIA], rows, align="l" + "r" * len(CRITERIA))
    if len(report["head_to_head"]) > 1:
        lines += ["", "## Head to head", ""]
        lines += table_lines(["a", "b", "a wins", "b wins", "ties"],
                             [[h["a"], h["b"], h["a_wins"], h["b_wins"], h["ties"]] for h in report["head_to_head"]],
                             align="llrrr")
    lines += ["", "## Agreement between annotators (Krippendorff's alpha; ≥ 0.8 reliable, ≥ 0.667 tentative)", ""]
    lines += table_lines(["judgement", "metric", "alpha", "units coded twice or more"],
                         [[name, a["metric"], number(a["alpha"]), a["units_coded_twice"]]
                          for name, a in report["agreement"].items()], align="llrr")
    return "\n".join(lines) + "\n"
