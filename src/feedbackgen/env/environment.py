"""The simulated user as a Gymnasium environment: a recommender (the agent) shows slates, the user
takes some, tires, and leaves.

    env = make_env("data/mi", simulator="models/user", slate_size=10, max_steps=50)
    obs, info = env.reset(seed=1)                 # obs: {"user": index, "history": 0/1 per item}
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    info["engaged_items"], info["ratings"], info["texts"]

An episode is one user's session (`feedbackgen.recommend.sessions`, the same rules): `reset` draws a
user (uniformly among `users`, by default every user with train interactions; `options={"user_id":
...}` picks one) and observes their history (the items they took in train and valid); each `step`
is one page: the slate's items are judged in order, item j taken with P(engage) · satiation^k (k =
items taken so far in the episode); items in the history, shown earlier in the episode, or repeated
in the slate are never taken (a repeated index is judged once). After the step the user leaves
(`terminated`) with the exit rule's probability; `truncated` after `max_steps` steps.

Reward: the number of items taken (default), or `reward(info) -> float`. `info`: user_id, engaged
(item indices), engaged_items (ids), p_engage (per slot, as used), ratings and texts of the engaged
items when a generator is given (else None), duplicates and repeats (slots judged as not new).

Speed: at `reset` the user's P(engage) over the whole catalogue is computed once (one dense score
row per model and one sort, `EngageRows`) and kept for the most recent `cache_users` users (`warm()` fills the cache in batches), so a
step is a gather, the draws and the exit draw. Every draw comes from the env's `np_random`: the same
seed and actions give the same episode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError, FeedbackgenError
from feedbackgen.models import load as load_generator
from feedbackgen.recommend.choice import load_choice
from feedbackgen.recommend.ranking import pool_of, score_pairs
from feedbackgen.recommend.sessions import EngageRows, ExitRule, decide
from feedbackgen.recommend.simulated_user import SimulatedUser
from feedbackgen.types import FeedbackRequest


CACHE_CELLS = 2**26  # P(engage) values kept (float32: 256 MiB): every user of a dataset of moderate size


class SimulatedUserEnv(gym.Env):
    """Gymnasium environment over a simulated user (module docstring). Build it with `make_env`."""

    metadata = {"render_modes": []}

    def __init__(self, dataset: Dataset, user: SimulatedUser, *, generator: Any = None, slate_size: int = 10,
                 max_steps: int = 50, reward: Callable[[dict], float] | None = None,
                 exit_rule: ExitRule | dict | None = None, users: Sequence[str] | None = None,
                 decoding: Decoding | dict | None = None, seed: int | None = None, cache_users: int | None = None):
        self.pool = pool_of(dataset)
        self.rows = EngageRows.of(user, dataset)
        n_items = len(self.pool.items)
        if not isinstance(slate_size, int) or not 1 <= slate_size <= n_items:
            raise ConfigError(f"slate_size must be an integer in [1, {n_items}] (the catalogue), got {slate_size!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
        if reward is not None and not callable(reward):
            raise ConfigError("reward must be a callable info -> float, or None (the number of items taken)")
        self.user_ids = sorted(self.pool.train_users) if users is None else list(dict.fromkeys(users))
        unknown = [u for u in self.user_ids if u not in self.pool.train_users]
        if unknown or not self.user_ids:
            raise FeedbackgenError(f"{len(unknown)} user(s) have no train interactions, e.g. {unknown[:3]}: the "
                                   "environment's users must be known" if unknown else "no users to simulate")
        self.user_index = {u: n for n, u in enumerate(self.user_ids)}
        self.generator, self.reward_fn, self.slate_size, self.max_steps = generator, reward, slate_size, max_steps
        self.exit = validate(ExitRule, exit_rule, "exit rule")
        self.decoding = validate(Decoding, decoding, "decoding settings")
        self.writes = generator is not None and getattr(generator, "produces_text", False)
        self.observation_space = spaces.Dict({"user": spaces.Discrete(len(self.user_ids)),
                                              "history": spaces.MultiBinary(n_items)})
        self.action_space = spaces.MultiDiscrete(np.full(slate_size, n_items, dtype=np.int64))
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_users = cache_users or max(1, CACHE_CELLS // n_items)
        self._first_seed = seed
        self._user: str | None = None

    def warm(self, users: Sequence[str] | None = None) -> SimulatedUserEnv:
        """Compute the P(engage) rows of `users` (default: as many of the env's users as the cache
        holds) now, in batches, so that `reset` only looks them up."""
        todo = [u for u in (self.user_ids if users is None else users) if u not in self._cache]
        todo = todo[:self._cache_users]
        for start in range(0, len(todo), 256):
            batch = todo[start:start + 256]
            for u, row in zip(batch, self.rows.rows(batch).astype(np.float32)):
                self._store(u, row)
        return self

    def _store(self, user: str, row: np.ndarray) -> None:
        if len(self._cache) >= self._cache_users:
            self._cache.popitem(last=False)
        history = np.zeros(len(self.pool.items), dtype=np.int8)
        history[self.pool.masked(user, "train+valid")] = 1
        self._cache[user] = (row, history)

    def _user_rows(self, user: str) -> tuple[np.ndarray, np.ndarray]:
        """(P(engage) over the catalogue, float32; the history, int8 0/1) of a user, cached."""
        hit = self._cache.get(user)
        if hit is None:
            self._store(user, self.rows.rows([user])[0].astype(np.float32))
            hit = self._cache[user]
        return hit

    def _obs(self) -> dict[str, Any]:
        return {"user": self._u, "history": self._history.copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._first_seed is not None:
            seed, self._first_seed = self._first_seed, None
        super().reset(seed=seed)
        wanted = (options or {}).get("user_id")
        if wanted is not None:
            if wanted not in self.user_index:
                raise FeedbackgenError(f"user {wanted!r} is not one of this environment's {len(self.user_ids)} users")
            self._u = self.user_index[wanted]
        else:
            self._u = int(self.np_random.integers(len(self.user_ids)))
        self._user = self.user_ids[self._u]
        self._p, history = self._user_rows(self._user)
        self._history = history.copy()
        self._seen = history.astype(bool)  # taken before, or shown in this episode: never taken again
        self._taken, self._steps = 0, 0
        return self._obs(), {"user_id": self._user}

    def _slate(self, action: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """(the slate as int64 indices, a mask of each index's first place or None when all differ);
        raises FeedbackgenError for a wrong shape or an index outside the catalogue."""
        a = np.asarray(action).astype(np.int64, copy=False).ravel()
        if a.shape != (self.slate_size,):
            raise FeedbackgenError(f"a slate is {self.slate_size} item indices, got shape {np.shape(action)}")
        n_items, indices = len(self.pool.items), a.tolist()  # a short list: Python's min/max/set are quicker
        if min(indices) < 0 or max(indices) >= n_items:
            bad = next(i for i in indices if not 0 <= i < n_items)
            raise FeedbackgenError(f"item index {bad} out of range [0, {n_items}) "
                                   f"(the catalogue: env.unwrapped.pool.items)")
        if len(set(indices)) == len(indices):
            return a, None
        first = np.zeros(len(a), dtype=bool)  # a repeated index is judged once, at its first place
        first[np.unique(a, return_index=True)[1]] = True
        return a, first

    def step(self, action: Any):
        if self._user is None:
            raise FeedbackgenError("call reset() before step()")
        a, first = self._slate(action)
        repeat = self._seen[a] if first is None else self._seen[a] & first
        p = self._p[a].astype(np.float64)
        p[repeat] = 0.0
        if first is not None:
            p[~first] = 0.0
        engaged, used = decide(p, self.np_random.random(len(a)), self._taken, self.exit.satiation)
        self._seen[a] = True
        taken = a[engaged]
        self._history[taken] = 1
        self._taken += len(taken)
        self._steps += 1
        info = {"user_id": self._user, "engaged": taken, "engaged_items": self.pool.items[taken].tolist(),
                "p_engage": used, "duplicates": 0 if first is None else int((~first).sum()),
                "repeats": int(np.count_nonzero(repeat)), "ratings": None, "texts": None}
        if self.generator is not None:
            info["ratings"], info["texts"] = self._feedback(info["engaged_items"])
        terminated = bool(self.np_random.random() < self.exit.leave_probability(len(taken) > 0))
        truncated = not terminated and self._steps >= self.max_steps
        reward = float(len(taken)) if self.reward_fn is None else float(self.reward_fn(info))
        return self._obs(), reward, terminated, truncated, info

    def _feedback(self, items: list[str]) -> tuple[list[float], list[str] | None]:
        if not items:
            return [], ([] if self.writes else None)
        if self.writes:
            out = self.generator.generate([FeedbackRequest(self._user, i) for i in items], self.decoding)
            return [float(f.rating) for f in out], [f.text for f in out]
        return score_pairs(self.generator, [self._user] * len(items), items).tolist(), None


def make_env(dataset_dir: str | Path | Dataset, simulator: str | Path | Any, generator: str | Path | Any = None,
             slate_size: int = 10, max_steps: int = 50, reward: Callable[[dict], float] | None = None,
             seed: int | None = None, exit_rule: ExitRule | dict | None = None, users: Sequence[str] | None = None,
             decoding: Decoding | dict | None = None, calibration_pairs: int | None = None) -> SimulatedUserEnv:
    """The environment over a prepared dataset and a simulated user (module docstring).

    dataset_dir: a prepared dataset folder (or a loaded Dataset); simulator: a choice-model folder
    (`feedbackgen train D --model simulated_user`, or any choice model, calibrated on valid now) or a
    fitted ChoiceModel; generator: a generator folder or object (ratings and texts), or None. seed:
    the first `reset`'s seed when it is given none, and the calibration's (default 1). exit_rule:
    exit_base, boredom, satiation (`feedbackgen.recommend.sessions.ExitRule`). users: the users
    episodes draw from (default: every user with train interactions)."""
    dataset = dataset_dir if isinstance(dataset_dir, Dataset) else Dataset.load(dataset_dir)
    choice = load_choice(simulator) if isinstance(simulator, (str, Path)) else simulator
    if isinstance(generator, (str, Path)):
        generator = load_generator(generator)
    user = SimulatedUser(None, dataset, seed=1 if seed is None else seed, calibration_pairs=calibration_pairs,
                         choice=choice)
    return SimulatedUserEnv(dataset, user, generator=generator, slate_size=slate_size, max_steps=max_steps,
                            reward=reward, exit_rule=exit_rule, users=users, decoding=decoding, seed=seed)


__all__ = ["SimulatedUserEnv", "make_env"]
