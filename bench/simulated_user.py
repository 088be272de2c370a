"""Simulated users that choose like real ones: choice model + generator, three tables.

    python bench/simulated_user.py                        # all three parts
    python bench/simulated_user.py --parts agent4rec      # one part: agent4rec | mi | simulate
    python bench/simulated_user.py --peter models/peter   # time `simulate` with a saved peter (trained on MI)

1. `agent4rec`: Agent4Rec's MovieLens-1M split (`../shared/data/movielens_1m_agent4rec`, prepared with
   `--format lightgcn`), every choice model fitted on train (hyper-parameters chosen on valid),
   the engage rule calibrated on valid (isotonic, each user counted once), and Agent4Rec's own
   discrimination protocol (`fidelity(..., protocol="agent4rec")`: per user, min(held-out,
   ⌊20/(r+1)⌋) positives from valid ∪ test and r× as many never-seen items; metrics per user,
   averaged), beside the published Agent4Rec (same data) and SimUSER rows.
2. `mi`: Musical Instruments (2014 5-core, the default preparation), the pooled protocol the
   README's earlier fidelity table used: the rating-threshold rule of a `popular` generator
   (what `simulate` did before choice models) against every choice model's calibrated rule.
3. `simulate`: 1,000 Musical Instruments users × their top 20 EASE recommendations judged by a
   simulated user = EASE (engage) + `peter` (rating and text, written for engaged items only);
   the wall time of `simulate` alone, and the number of generations it paid for.

Times are wall-clock on this machine with nothing else running; the bench never asserts them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402

from feedbackgen.tables import number, table_lines  # noqa: E402

CHOICE = ("popularity", "itemknn", "ease", "als", "bpr")
MI = ("amazon_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz", "amazon2014")


def agent4rec_dataset():
    from feedbackgen.data.paths import data_dir
    from feedbackgen.data.prepare import prepare

    src = data_dir() / "movielens_1m_agent4rec"
    return prepare([src], "lightgcn", meta=src / "movie_detail.csv", mapping={"item_id": "movie_id"},
                   split=None, progress=False)


def mi_dataset():
    from feedbackgen.data.paths import data_dir
    from feedbackgen.data.prepare import prepare

    return prepare([data_dir() / MI[0]], MI[1], split="random", seed=1, progress=False)


def fit_choice(name, dataset):
    from feedbackgen.recommend import create_choice

    t = time.time()
    model = create_choice(name).fit(dataset)
    return model, time.time() - t


def row(name, seconds, result) -> list[str]:
    """A discrimination table's cells: the simulator, its fit seconds, accuracy / F1 per ratio."""
    d = result["discrimination"]
    print(f"  {name}: done", file=sys.stderr, flush=True)
    return [name, number(seconds, ".1f"), *(f"{number(d[r]['accuracy'])} / {number(d[r]['f1'])}" for r in d)]


def print_table(ratios: str, rows: list[list[str]]) -> None:
    """A discrimination table: one column of accuracy / F1 per ratio in `ratios` ("1239": 1:1 ... 1:9)."""
    head = ["simulator", "fit s", *(f"1:{r} acc / F1" for r in ratios)]
    print("\n".join(table_lines(head, rows, align="l" + "r" * (len(head) - 1))))


def part_agent4rec(args) -> None:
    from feedbackgen.recommend import fidelity

    t0 = time.time()
    ds = agent4rec_dataset()
    print(f"\n## Agent4Rec's MovieLens-1M split ({ds.summary()['interactions']:,} interactions, "
          f"prepared in {time.time() - t0:.1f}s), Agent4Rec's protocol\n", flush=True)
    rows = []
    for name in args.choice:
        model, seconds = fit_choice(name, ds)
        result = fidelity(None, ds, choice=model, protocol="agent4rec", seed=args.seed)
        rows.append(row(f"{name} (engage: calibrated choice)", seconds, result))
    rows += [["Agent4Rec (SIGIR 2024, published, same data)", "–", "0.691 / 0.698", "–", "–", "–"],
             ["SimUSER (2025, published, MovieLens)", "–", "0.791 / –", "–", "–", "–"]]
    print_table("1239", rows)


def part_mi(args) -> None:
    from feedbackgen.models import create
    from feedbackgen.recommend import fidelity

    ds = mi_dataset()
    print("\n## Musical Instruments, pooled protocol (test pairs against 1, 3, 9× never-seen items)\n",
          flush=True)
    t = time.time()
    popular = create("popular", {"target": "review"}).fit(ds)
    seconds = time.time() - t
    rows = [row("popular (engage: rating ≥ threshold, as before)", seconds,
                fidelity(popular, ds, review=False, seed=args.seed))]
    for name in args.choice:
        model, seconds = fit_choice(name, ds)
        rows.append(row(f"{name} (engage: calibrated choice)", seconds,
                        fidelity(None, ds, choice=model, seed=args.seed)))
    print_table("139", rows)
    print("\n## Musical Instruments, Agent4Rec's protocol\n", flush=True)
    rows = []
    for name in args.choice:
        model, seconds = fit_choice(name, ds)
        rows.append(row(f"{name} (engage: calibrated choice)", seconds,
                        fidelity(None, ds, choice=model, protocol="agent4rec", seed=args.seed)))
    print_table("1239", rows)


def part_simulate(args) -> None:
    from feedbackgen.models import create, load
    from feedbackgen.recommend import simulate

    ds = mi_dataset()
    if args.peter is not None:
        peter, trained = load(args.peter), f"loaded from {args.peter}"
    else:
        t = time.time()
        peter = create("peter", {"max_epochs": args.peter_epochs, "progress": False}).fit(ds)
        trained = f"trained here, {args.peter_epochs} epoch(s), {time.time() - t:.0f}s"
    ease, _ = fit_choice("ease", ds)
    known = sorted(set(ds.train["user_id"].unique().to_list()))[:args.users]
    recs = ease.recommend(known, k=20).select("user_id", "item_id", "rank")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ease_top20.parquet"
        recs.write_parquet(path)
        t = time.time()
        sim = simulate(peter, ds, {"ease_top20": path}, k=20, choice=ease)
        seconds = time.time() - t
    engaged = int(sim.items["engage"].sum())
    print(f"\n## simulate: {len(known):,} users × 20 items = {len(sim.items):,} judged (peter {trained})\n")
    print("\n".join(table_lines(["simulated user", "items judged", "engaged (texts written)", "wall s", "items/s"],
                                [["ease + peter", number(len(sim.items), ",d"), number(engaged, ",d"),
                                  number(seconds, ".1f"), number(len(sim.items) / seconds, ",.0f")]],
                                align="lrrrr")))
    print(f"\ncalibration: {sim.calibration.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="*", default=["agent4rec", "mi", "simulate"],
                        choices=["agent4rec", "mi", "simulate"])
    parser.add_argument("--choice", nargs="*", default=list(CHOICE), choices=list(CHOICE) + ["hybrid"])
    parser.add_argument("--peter", type=Path, help="a saved peter folder trained on the default MI preparation")
    parser.add_argument("--peter-epochs", type=int, default=3, help="epochs when peter is trained here")
    parser.add_argument("--users", type=int, default=1000, help="users simulated in the `simulate` part")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.time()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPU(s)")
    for part in args.parts:
        {"agent4rec": part_agent4rec, "mi": part_mi, "simulate": part_simulate}[part](args)
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
