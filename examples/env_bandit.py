"""Train a simple recommender policy against the simulated user, then score it on the real test split.

    python examples/env_bandit.py --dataset data/a4r --simulator models/user --episodes 3000
    python examples/env_bandit.py --dataset data/mi            # trains an `ease` simulator first

The policy is an epsilon-greedy bandit over items (no user features): it keeps, per item, the share
of the times it was shown that the simulated user took it (an optimistic prior for items never
shown), and fills each slate with the best items the user has not seen, a share `epsilon` of slots
going to random unseen items. It learns only from the environment's rewards, never from the logs.

Then the sim-to-real gap: for the same policies (the bandit, popularity by train counts, random),
the simulated engagement of the first slate (mean items taken / slate size, in the environment) beside
the real precision@k of that slate for the test users (their test items, train and valid history
masked as in the offline evaluation). A simulator that can be trusted gives both the same order and
similar levels; the printed table says how far this one does.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from feedbackgen.data.dataset import Dataset
from feedbackgen.env import make_env
from feedbackgen.recommend import create_choice, load_choice


class EpsilonGreedy:
    """Per-item engagement estimates (successes + prior) / (shows + prior), epsilon-greedy slates."""

    def __init__(self, n_items: int, slate: int, epsilon: float, rng: np.random.Generator, prior: float = 1.0):
        self.shows, self.takes = np.zeros(n_items), np.zeros(n_items)
        self.slate, self.epsilon, self.rng, self.prior = slate, epsilon, rng, prior

    def value(self) -> np.ndarray:
        return (self.takes + self.prior * 0.1) / (self.shows + self.prior)  # unshown items start at 0.1: optimistic

    def act(self, seen: np.ndarray) -> np.ndarray:
        free = np.flatnonzero(~seen)
        best = free[np.argsort(-self.value()[free], kind="stable")[:self.slate]]
        explore = self.rng.random(self.slate) < self.epsilon
        if explore.any():
            rest = np.setdiff1d(free, best)
            picks = self.rng.choice(rest, size=min(int(explore.sum()), len(rest)), replace=False)
            best = best.copy()
            best[np.flatnonzero(explore)[:len(picks)]] = picks
        return best

    def learn(self, slate: np.ndarray, taken: np.ndarray) -> None:
        self.shows[slate] += 1
        self.takes[taken] += 1


def train(env, policy: EpsilonGreedy, episodes: int, seed: int) -> tuple[float, int]:
    """Run `episodes` episodes; (mean reward per step, steps)."""
    total, steps = 0.0, 0
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        seen = obs["history"].astype(bool)
        while (~seen).sum() >= policy.slate:  # a user who has seen nearly everything ends the episode
            slate = policy.act(seen)
            obs, reward, terminated, truncated, info = env.step(slate)
            policy.learn(slate, info["engaged"])
            seen[slate] = True
            total, steps = total + reward, steps + 1
            if terminated or truncated:
                break
    return total / max(steps, 1), steps


def first_slates(score: np.ndarray, env, users: Sequence[str], k: int) -> dict[str, np.ndarray]:
    """Each user's top k items by a global `score`, their train and valid items left out."""
    order = np.argsort(-score, kind="stable")
    out = {}
    for u in users:
        masked = np.zeros(len(score), dtype=bool)
        masked[env.pool.masked(u, "train+valid")] = True
        slate = order[~masked[order]][:k]
        if len(slate) == k:  # a user with fewer than k unseen items is left out
            out[u] = slate
    return out


def simulated_engagement(env, slates: dict[str, np.ndarray], seed: int) -> float:
    """Mean share of the first slate the simulated user takes (one episode per user)."""
    took = []
    for n, (u, slate) in enumerate(slates.items()):
        env.reset(seed=seed + n, options={"user_id": u})
        took.append(len(env.step(slate)[4]["engaged"]) / len(slate))
    return float(np.mean(took))


def real_precision(dataset: Dataset, env, slates: dict[str, np.ndarray]) -> float:
    """Mean over test users of |slate ∩ test items| / k."""
    test = {u: set(i) for u, i in dataset.test.group_by("user_id").agg("item_id").iter_rows()}
    return float(np.mean([len(set(env.pool.items[s]) & test[u]) / len(s) for u, s in slates.items()]))


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a prepared dataset folder")
    parser.add_argument("--simulator", help="a choice-model folder (default: fit `ease` on train now)")
    parser.add_argument("--episodes", type=int, default=3000)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--max-users", type=int, default=1000, help="test users scored (seeded sample)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    dataset = Dataset.load(args.dataset)
    simulator = (load_choice(args.simulator) if args.simulator
                 else create_choice("ease", {"search": False}).fit(dataset))
    env = make_env(dataset, simulator, slate_size=args.slate, max_steps=50, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    policy = EpsilonGreedy(len(env.pool.items), args.slate, args.epsilon, rng)
    t0 = time.time()
    reward, steps = train(env, policy, args.episodes, args.seed)
    print(f"trained on {args.episodes} simulated sessions ({steps} slates, {time.time() - t0:.1f}s): "
          f"{reward:.3f} items taken per slate")
    users = sorted(set(dataset.test["user_id"].to_list()) & set(env.user_ids))
    if len(users) > args.max_users:
        users = sorted(rng.choice(users, size=args.max_users, replace=False).tolist())
    scores = {"bandit (epsilon-greedy)": policy.value(), "popularity": env.pool.popularity.astype(float),
              "random": rng.random(len(env.pool.items))}
    rows = {}
    for name, score in scores.items():
        slates = first_slates(score, env, users, args.slate)
        rows[name] = {"simulated": simulated_engagement(env, slates, args.seed),
                      "real": real_precision(dataset, env, slates)}
    print(f"\n| policy | simulated engagement@{args.slate} | real precision@{args.slate} (test, {len(users)} users) "
          "| simulated / real |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        ratio = r["simulated"] / r["real"] if r["real"] else float("nan")
        print(f"| {name} | {r['simulated']:.4f} | {r['real']:.4f} | {ratio:.2f} |")
    return rows


if __name__ == "__main__":
    main()
