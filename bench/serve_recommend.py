"""`/v1/recommend` under load, an event to the next recommendation, and the list's quality over HTTP.

    python bench/serve.py --choice models/ease --model-dir models/peter --dataset data/mi
    python bench/serve.py --choice models/a4r_ease --dataset data/a4r        # ranking only, ML-1M

Starts `feedbackgen serve [GENERATOR] --choice CHOICE --dataset DATA --events TMP.sqlite` as its own
process and measures, from this one:
- calls/s and p50/p99 latency of `/v1/recommend` (k = 10) for a known user and for a session visitor
  (3 items of a training user's history, no user_id), ranked only and (with a generator) explained,
  at each concurrency (1, 8, 32), each client on its own keep-alive connection;
- an event to the next recommendation: `POST /v1/events` (the user's current top item), then
  `POST /v1/recommend`, sequentially, wall time of the two calls and whether the item was masked;
- events lost across a SIGKILL: 200 events posted one call each, the server killed with SIGKILL,
  restarted on the same file, the stored events counted;
- full HR@10 of the lists `/v1/recommend` gives test users, beside `evaluate_ranking`'s for the same
  choice model and users (the offline number `recommend --evaluate` prints).
The numbers depend on the machine and on what else runs on it; the bench never asserts them.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl

from feedbackgen.tables import number, table_lines
from machine import cpu_model  # bench/machine.py
from serve import Server, load  # bench/serve.py


def scenarios(dataset: Path, explain: bool, seed: int, max_new_tokens: int) -> dict:
    """{name: make_call(n)}: the calls of each row of the table."""
    df = pl.read_parquet(dataset / "interactions.parquet", columns=["user_id", "item_id", "split"])
    train = df.filter(pl.col("split") == "train")
    users = sorted(train["user_id"].unique().to_list())
    random.Random(seed).shuffle(users)
    histories = [h[:3] for h in train.group_by("user_id").agg(pl.col("item_id").sort()).sort("user_id")["item_id"]
                 .to_list() if len(h) >= 3]
    random.Random(seed + 1).shuffle(histories)
    decoding = {"max_new_tokens": max_new_tokens}
    rows = {"known user, ranked only": lambda n: {"user_id": users[n % len(users)], "k": 10, "with_feedback": False},
            "visitor (3 items), ranked only": lambda n: {"history": histories[n % len(histories)], "k": 10,
                                                         "with_feedback": False}}
    if explain:
        rows["known user, explained"] = lambda n: {"user_id": users[n % len(users)], "k": 10, "decoding": decoding}
        rows["visitor (3 items), explained"] = lambda n: {"history": histories[n % len(histories)], "k": 10,
                                                          "decoding": decoding}
    return rows


def event_latency(url: str, dataset: Path, n: int, seed: int) -> dict:
    """An event (the user's current top item) then the user's next list, n users one after another."""
    df = pl.read_parquet(dataset / "interactions.parquet", columns=["user_id", "split"])
    users = sorted(df.filter(pl.col("split") == "train")["user_id"].unique().to_list())
    users = random.Random(seed + 2).sample(users, min(n, len(users)))
    times, applied = [], 0
    with httpx.Client(base_url=url, timeout=60) as c:
        for k, user in enumerate(users):
            top = c.post("/v1/recommend", json={"user_id": user, "k": 10, "with_feedback": False}).json()
            item = top["items"][0]["item_id"]
            t0 = time.perf_counter()
            c.post("/v1/events", json={"events": [{"user_id": user, "item_id": item, "timestamp": k}]}).raise_for_status()
            after = c.post("/v1/recommend", json={"user_id": user, "k": 10, "with_feedback": False}).json()
            times.append(time.perf_counter() - t0)
            applied += item not in [x["item_id"] for x in after["items"]]
    times.sort()
    return {"calls": len(times), "p50_ms": 1000 * times[len(times) // 2],
            "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))], "applied": applied}


def events_across_sigkill(args, events: Path, n: int = 200) -> tuple[int, int]:
    """(events acknowledged, events found after a SIGKILL and a restart)."""
    server = Server(args.model_dir, args.dataset, args.max_batch, args.max_wait_ms,
                    ["--choice", str(args.choice), "--events", str(events)])
    server.wait_ready()
    with sqlite3.connect(events) as db:
        before = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    acked = 0
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for k in range(n):
            r = c.post("/v1/events", json={"events": [{"user_id": f"sigkill-{k}", "item_id": "x", "timestamp": k}]})
            acked += r.status_code == 200 and r.json()["stored"] == 1
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    again = Server(args.model_dir, args.dataset, args.max_batch, args.max_wait_ms,
                   ["--choice", str(args.choice), "--events", str(events)])
    try:
        again.wait_ready()
        with sqlite3.connect(events) as db:
            found = db.execute("SELECT COUNT(*) FROM events").fetchone()[0] - before
    finally:
        again.stop()
    return acked, found


def quality(url: str, dataset: Path, choice: Path, n_users: int, seed: int) -> dict:
    """Full HR@10 of /v1/recommend's lists and of evaluate_ranking, on the same test users."""
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.recommend import evaluate_ranking, load_choice
    from feedbackgen.recommend.ranking import ranking_queries

    ds = Dataset.load(dataset)
    queries = ranking_queries(ds, "full", seed=seed, max_users=n_users)
    hits = 0
    with httpx.Client(base_url=url, timeout=60) as c:
        for user, items, relevant in zip(queries.users, queries.items, queries.relevant):
            got = c.post("/v1/recommend", json={"user_id": user, "k": 10, "with_feedback": False}).json()
            hits += bool({x["item_id"] for x in got["items"]} & set(items[relevant].tolist()))
    offline = evaluate_ranking({"choice": load_choice(choice)}, ds, ks=(10,), protocols=("full",),
                               users=queries.users)
    return {"users": len(queries.users), "http": hits / max(1, len(queries.users)),
            "offline": float(offline["hr@10"][0])}


def bench_recommend(args) -> None:
    t_start = time.time()
    events = Path(tempfile.mkdtemp(prefix="feedbackgen-bench-")) / "events.sqlite"
    server = Server(args.model_dir, args.dataset, args.max_batch, args.max_wait_ms,
                    ["--choice", str(args.choice), "--events", str(events)])
    rows = []
    try:
        server.wait_ready()
        for name, make_call in scenarios(args.dataset, args.model_dir is not None, args.seed,
                                         args.max_new_tokens).items():
            for c in args.concurrency:
                r = asyncio.run(load(server.port, [("", "")], c, args.warmup, args.seconds, {}, make_call,
                                     "/v1/recommend"))
                rows.append({**r, "scenario": name, "concurrency": c})
                print(f"  {name}, concurrency {c}: {r['rps']:.1f} calls/s", flush=True, file=sys.stderr)
        event = event_latency(server.url, args.dataset, 100, args.seed)
        hr = quality(server.url, args.dataset, args.choice, args.quality_users, args.seed)
    finally:
        server.stop()
    acked, found = events_across_sigkill(args, events)
    explainer = f", explained by `{args.model_dir.name}` (max_new_tokens={args.max_new_tokens})" if args.model_dir else ""
    print(f"\n`/v1/recommend` k=10 on {args.dataset.name}: ranked by `{args.choice.name}`{explainer}; "
          f"{args.seconds:g} s per row after {args.warmup:g} s warm-up; {cpu_model()}, {os.cpu_count()} cores; "
          "client in a second process.\n")
    print("\n".join(table_lines(["call", "concurrency", "calls", "calls/s", "p50 ms", "p99 ms", "errors"],
                                ([r["scenario"], r["concurrency"], r["requests"],
                                  *(number(r[k], ".1f") for k in ("rps", "p50_ms", "p99_ms")), r["errors"]]
                                 for r in rows), align="l" + "r" * 6)))
    print(f"\nAn event to the next recommendation (POST /v1/events, then POST /v1/recommend, {event['calls']} users "
          f"in turn): p50 {event['p50_ms']:.1f} ms, p99 {event['p99_ms']:.1f} ms; the event's item left the list for "
          f"{event['applied']} of {event['calls']}.")
    print(f"Events across a SIGKILL of the server: {acked} acknowledged, {found} found after the restart "
          f"({acked - found} lost).")
    print(f"Full HR@10 on {hr['users']} test users: /v1/recommend {hr['http']:.4f}, evaluate_ranking (the same "
          f"model, offline) {hr['offline']:.4f}. Total {time.time() - t_start:.0f} s.")
