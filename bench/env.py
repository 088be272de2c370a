"""The Gymnasium environment's speed and the sessions' wall time (issue 21's two speed targets).

    python bench/env.py                              # both parts, models trained here (cached in --work)
    python bench/env.py --parts env                  # env | sessions
    python bench/env.py --quick                      # a tiny run that checks the bench works

1. `env`: steps per second of `feedbackgen.env` (slate 10, no generator) with a `simulated_user`
   simulator (components ease, itemknn, als, popularity; `search=False` to keep the bench short:
   the step does the same work whatever the components' settings), on the Agent4Rec MovieLens-1M
   split (3,292 items) and Musical Instruments (900 items). Random valid slates generated before the
   clock starts; every user's P(engage) row computed once before it (`warm()`, timed apart), so the
   figure is steps including the resets of the short episodes the default exit rule gives; also the
   same through `gymnasium.make` (its checker and order wrappers), and a cold reset (a user's
   row computed).
2. `sessions`: 10,000 sessions × up to 5 pages of 10 on Musical Instruments: the simulator above,
   ease's top-50 lists as the RECS file, `peter` (trained here for --peter-epochs, or --peter DIR)
   writing a review for every engaged item. The data has 1,429 users, so the 10,000 users are drawn
   with replacement (seeded); each occurrence is its own seeded session, and a user's P(engage) row is
   computed once per batch of 256 sessions it appears in.

Times are wall-clock; the table says what else the machine was running (load average).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402

from machine import cpu_model  # noqa: E402

from feedbackgen.data.dataset import Dataset  # noqa: E402
from feedbackgen.data.paths import data_dir  # noqa: E402
from feedbackgen.data.prepare import prepare  # noqa: E402
from feedbackgen.env import ENV_ID, make_env  # noqa: E402
from feedbackgen.models import create, load  # noqa: E402
from feedbackgen.recommend import create_choice, load_choice, top_k  # noqa: E402
from feedbackgen.recommend.sessions import sessions  # noqa: E402
from feedbackgen.tables import number, table_lines  # noqa: E402

ENV_HEAD = ["data", "users × items", "steps/s (make_env)", "steps/s (gymnasium.make)", "steps per episode",
            "cold reset, ms", "warm(), s"]
SESSIONS_HEAD = ["run", "sessions", "items shown", "pages per session", "engaged", "texts", "seconds"]

SIMULATOR = {"components": ["ease", "itemknn", "als", "popularity"], "search": False}


def dataset(name: str, work: Path) -> Dataset:
    folder = work / name
    if (folder / "manifest.json").exists():
        return Dataset.load(folder)
    if name == "a4r":
        src = data_dir() / "movielens_1m_agent4rec"
        ds = prepare([src], "lightgcn", meta=src / "movie_detail.csv", mapping={"item_id": "movie_id"},
                     progress=False)
    else:
        ds = prepare([data_dir() / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"],
                     "amazon2014", split="random", seed=1, progress=False)
    ds.save(folder)
    return ds


def simulator(ds: Dataset, folder: Path):
    if (folder / "config.json").exists():
        return load_choice(folder)
    model = create_choice("simulated_user", SIMULATOR).fit(ds)
    model.save(folder)
    return model


def steps_per_second(env, actions: np.ndarray, seed: int = 1) -> tuple[float, int]:
    env.reset(seed=seed)
    episodes, t = 0, time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
            episodes += 1
    return len(actions) / (time.perf_counter() - t), episodes


def bench_env(work: Path, names: list[str], steps: int) -> list[list[str]]:
    """A row of `ENV_HEAD` per dataset."""
    rows = []
    for name in names:
        ds = dataset(name, work)
        sim = simulator(ds, work / f"user_{name}")
        env = make_env(ds, sim, slate_size=10, max_steps=50, seed=1)
        t = time.perf_counter()
        env.warm()
        warm = time.perf_counter() - t
        n_items = len(env.pool.items)
        rng = np.random.default_rng(1)
        actions = np.stack([rng.choice(n_items, 10, replace=False) for _ in range(steps)])
        rate, episodes = steps_per_second(env, actions)
        made = gymnasium.make(ENV_ID, dataset_dir=ds, simulator=sim, slate_size=10, max_steps=50, seed=1)
        made.unwrapped.warm()
        made_rate, _ = steps_per_second(made, actions)
        cold = make_env(ds, sim, slate_size=10, seed=1)
        t = time.perf_counter()
        for k in range(50):
            cold.reset(seed=k)
        cold_ms = (time.perf_counter() - t) / 50 * 1000
        rows.append([name, f"{len(env.user_ids):,} × {n_items:,}", number(rate, ",.0f"), number(made_rate, ",.0f"),
                     number(steps / max(episodes, 1), ".2f"), number(cold_ms, ".1f"), number(warm, ".1f")])
        print(f"  env {name}: done", file=sys.stderr, flush=True)
    return rows


def bench_sessions(work: Path, n_sessions: int, peter_dir: Path | None,
                   peter_epochs: int) -> tuple[list[list[str]], str]:
    """Rows of `SESSIONS_HEAD` (decisions only, then with peter's texts), and where peter came from."""
    ds = dataset("mi", work)
    sim = simulator(ds, work / "user_mi")
    if peter_dir is not None:
        peter, trained = load(peter_dir), f"loaded from {peter_dir}"
    elif (work / "peter_mi" / "config.json").exists():
        peter, trained = load(work / "peter_mi"), "cached"
    else:
        t = time.time()
        peter = create("peter", {"max_epochs": peter_epochs, "progress": False}).fit(ds)
        peter.save(work / "peter_mi")
        trained = f"trained here, {peter_epochs} epoch(s), {time.time() - t:.0f}s"
    users_all = sorted(ds.interactions["user_id"].unique().to_list())
    users = np.random.default_rng(1).choice(users_all, size=n_sessions, replace=True).tolist()
    ease = create_choice("ease", {"search": False}).fit(ds)
    recs = top_k(ease, sorted(set(users)), 50, dataset=ds).select("user_id", "item_id", "rank")
    rows = []
    for write in (False, True):
        t = time.perf_counter()
        run = sessions(peter if write else None, ds, {"ease": recs}, choice=sim, users=users, write=write,
                       config={"page_size": 10, "max_pages": 5})
        seconds = time.perf_counter() - t
        s = run.summary.row(0, named=True)
        texts = run.log["text"].drop_nulls().len()
        rows.append(["ease top-50, peter text" if write else "ease top-50, decisions only",
                     f"{n_sessions:,} ({len(set(users)):,} distinct)", number(len(run.log), ",d"),
                     number(s["pages_viewed"], ".2f"), number(int(run.log["engaged"].sum()), ",d"),
                     number(texts, ",d"), number(seconds, ".1f")])
        print(f"  sessions{' with texts' if write else ''}: done", file=sys.stderr, flush=True)
    return rows, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["env", "sessions"], choices=["env", "sessions"])
    parser.add_argument("--work", type=Path, default=Path("runs/bench_env"), help="prepared data and models, kept")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--peter", type=Path, help="a saved peter folder trained on the default MI preparation")
    parser.add_argument("--peter-epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="MI only, 2,000 steps, 300 sessions, peter 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.sessions, args.peter_epochs = 2000, 300, 1
    args.work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load_before = os.getloadavg()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} cores, commit {commit}, "
          f"load average before {load_before[0]:.2f} / {load_before[1]:.2f} (1 / 5 min)\n")
    if "env" in args.parts:
        rows = bench_env(args.work, ["mi"] if args.quick else ["a4r", "mi"], args.steps)
        print("\n".join(table_lines(ENV_HEAD, rows, align="l" + "r" * 6)), flush=True)
    if "sessions" in args.parts:
        rows, trained = bench_sessions(args.work, args.sessions, args.peter, args.peter_epochs)
        print("\n" + "\n".join(table_lines(SESSIONS_HEAD, rows, align="l" + "r" * 6)))
        print(f"(peter {trained})")
    after = os.getloadavg()
    print(f"\nload average after {after[0]:.2f} / {after[1]:.2f} (1 / 5 min)")


if __name__ == "__main__":
    main()
