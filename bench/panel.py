"""Can the simulated user's verdict on a recommender be believed? The panel benchmark, Markdown tables.

    python bench/panel.py --dataset runs/lead/mi --dataset runs/lead/a4r      # prepared datasets
    python bench/panel.py --dataset data/a4r --simulators simulated_user ease --max-users 500

For each dataset and each simulator (`simulated_user`, the recommended one, and single-model
simulators for comparison: each fitted on train, P(engage) calibrated on valid):

- the recommender panel of `feedbackgen.recommend.panel` (random, popularity, item-kNN 50/3, EASE
  λ 200/30,000, ALS 32/2, BPR), plus three recommenders written here with other libraries, outside
  the project, which no simulator is built on: truncated SVD with 32 and 2 factors (scikit-learn) and
  user-kNN (cosine, 50 neighbours, NumPy); and `held-out`, the user's own test items (an oracle list,
  padded with random items): what a recommender far stronger than the simulator would show;
- per simulator: Kendall τ, the share of significantly different pairs ordered right, the range of
  the calibration ratio simulated / real over the non-random lists, the largest self-preference
  (places its own family is moved up), and Agent4Rec's 1:1 accuracy (their protocol, `fidelity`).

Nothing here is timed against anything; times are printed for information only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.decomposition import TruncatedSVD  # noqa: E402

from feedbackgen.data.dataset import Dataset  # noqa: E402
from feedbackgen.recommend import SimulatedUser, create_choice, fidelity  # noqa: E402
from feedbackgen.recommend.panel import judge_panel, panel_markdown  # noqa: E402
from feedbackgen.recommend.ranking import pool_of  # noqa: E402
from feedbackgen.tables import number, table_lines  # noqa: E402

SUMMARY_HEAD = ["data", "simulator", "Kendall τ", "significant pairs ordered right",
                "simulated / real (non-random lists)",
                "largest self-preference: places (past significantly better lists)",
                "place of the held-out list among the panel, by the simulated user", "Agent4Rec 1:1 accuracy"]

SIMULATORS = ("simulated_user", "ease", "itemknn", "als", "popularity")


def outside_lists(ds: Dataset, users: list[str], k: int, seed: int) -> dict[str, pl.DataFrame]:
    """Lists from recommenders built here, not from the project's choice models."""
    pool = pool_of(ds)
    train = ds.train
    u_index = {u: n for n, u in enumerate(sorted(train["user_id"].unique()))}
    rows = np.array([u_index[u] for u in train["user_id"]])
    cols = np.array([pool.index[i] for i in train["item_id"]])
    x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(u_index), len(pool.items)))
    x.data[:] = 1.0
    scorers = {}
    for f in (32, 2):
        svd = TruncatedSVD(n_components=f, random_state=seed).fit(x)
        scorers[f"svd-{f}"] = lambda r, svd=svd: svd.inverse_transform(svd.transform(x[r]))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()) + 1e-9

    def user_knn(r):
        sims = (x[r] @ x.T).toarray() / (norms[r][:, None] * norms[None, :])
        sims[np.arange(len(r)), r] = 0.0
        top = np.argsort(-sims, axis=1)[:, 50:]
        np.put_along_axis(sims, top, 0.0, axis=1)
        return sims @ x.toarray()

    scorers["userknn-50"] = user_knn
    truth = {u: set(i) for u, i in ds.test.group_by("user_id").agg(pl.col("item_id")).iter_rows()}
    rng = np.random.default_rng(seed)
    out = {name: [] for name in [*scorers, "held-out"]}
    for start in range(0, len(users), 256):
        batch = users[start:start + 256]
        r = np.array([u_index[u] for u in batch])
        for name, score in scorers.items():
            s = score(r)
            for n, user in enumerate(batch):
                s[n, pool.masked(user, "train+valid")] = -np.inf
                top = np.argsort(-s[n], kind="stable")[:k]
                out[name] += [(user, rank + 1, pool.items[j]) for rank, j in enumerate(top)]
        for user in batch:
            allowed = np.ones(len(pool.items), dtype=bool)
            allowed[pool.masked(user, "train+valid")] = False
            mine = sorted(truth.get(user, ()))[:k]
            filler = [i for i in pool.items[rng.permutation(np.flatnonzero(allowed))] if i not in truth.get(user, ())]
            out["held-out"] += [(user, rank + 1, i) for rank, i in enumerate((mine + filler)[:k])]
    return {name: pl.DataFrame(rows, schema=["user_id", "rank", "item_id"], orient="row") for name, rows in out.items()}


def summary_row(name: str, label: str, res: dict, held: dict, a4r_acc: float | None) -> list[str]:
    """The cells of a `SUMMARY_HEAD` row."""
    rows = [r for r in res["rows"] if r["recommender"] != "random" and r["calibration_ratio"]]
    ratios = [r["calibration_ratio"] for r in rows]
    moved = max((s["moved_up"] for s in res["self_preference"]), default=0)
    passed = max((s["passed_better"] for s in res["self_preference"]), default=0)
    share = res["share_ordered_right"]
    held_place = 1 + sum(r["expected_engagement_at_k"] > held["expected_engagement_at_k"] for r in res["rows"])
    return [label, name, number(res["kendall_tau"]),
            f"{res['ordered_right']}/{res['significant_pairs']} ({number(share, '.2f')})",
            f"{number(min(ratios), '.2f')}–{number(max(ratios), '.2f')}", f"{moved:+d} ({passed})",
            f"{held_place} (real {number(held['precision@' + str(res['k'])])}, simulated "
            f"{number(held['expected_engagement_at_k'])})", number(a4r_acc)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, action="append", required=True, help="a prepared dataset folder")
    parser.add_argument("--simulators", nargs="+", default=list(SIMULATORS))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the tables to this Markdown file too")
    args = parser.parse_args()
    summary, details = [], []
    for path in args.dataset:
        ds = Dataset.load(path)
        users = sorted(set(ds.test["user_id"].unique()) & pool_of(ds).train_users)
        extra = outside_lists(ds, users, args.k, args.seed)
        for name in args.simulators:
            t0 = time.time()
            settings = {} if name in ("simulated_user", "popularity") else {"search": name != "als"}
            choice = create_choice(name, settings).fit(ds)
            user = SimulatedUser(None, ds, choice=choice, seed=args.seed)
            held_out = {"held-out": extra.pop("held-out")} if "held-out" in extra else {}
            res = judge_panel(user, ds, k=args.k, seed=args.seed, max_users=args.max_users, extra=extra)
            held = judge_panel(user, ds, k=args.k, seed=args.seed, max_users=args.max_users, extra=held_out,
                               builtin=False)["rows"][0]
            extra.update(held_out)
            a4r = fidelity(None, ds, choice=choice, protocol="agent4rec", seed=args.seed, max_users=args.max_users)
            summary.append(summary_row(name, path.name, res, held, a4r["discrimination"]["1:1"]["accuracy"]))
            details.append(f"#### {path.name}, simulator {name} ({time.time() - t0:.0f} s)\n\n"
                           + panel_markdown(res, name))
            print(f"  {path.name}, {name}: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    text = "\n".join([*table_lines(SUMMARY_HEAD, summary, align="llrrrrrr"), "", *details])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
