"""The Gymnasium environment (`feedbackgen.env`): Gymnasium's own checker, seeds, the exit rule, bad slates."""

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from feedbackgen.env import ENV_ID, make_env
from feedbackgen.errors import FeedbackgenError
from feedbackgen.recommend import create_choice
from feedbackgen.recommend.simulated_user import SimulatedUser


@pytest.fixture(scope="module")
def ease(mi_small):
    return create_choice("ease", {"search": False}).fit(mi_small)


@pytest.fixture(scope="module")
def env(mi_small, ease):
    return make_env(mi_small, ease, slate_size=5, max_steps=4, seed=3)


def test_gymnasium_checker_and_make(mi_small, ease, env):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker's notes on render modes
        check_env(env)
        made = gymnasium.make(ENV_ID, dataset_dir=mi_small, simulator=ease, slate_size=5)
        check_env(made.unwrapped)
    obs, info = made.reset(seed=1)
    assert made.observation_space.contains(obs) and info["user_id"] in made.unwrapped.user_ids
    obs, reward, terminated, truncated, info = made.step(made.action_space.sample())
    assert made.observation_space.contains(obs) and reward == len(info["engaged"])


def run_episode(env, seed, actions):
    out = [env.reset(seed=seed)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return out


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def test_seeded_episodes_repeat(mi_small, ease, env):
    n = len(env.pool.items)
    actions = [np.random.default_rng(k).permutation(n)[:5] for k in range(4)]
    first = run_episode(env, 7, actions)
    other = make_env(mi_small, ease, slate_size=5, max_steps=4)
    assert same(first, run_episode(other, 7, actions))
    users = {run_episode(env, s, actions)[0][1]["user_id"] for s in range(12)}
    assert len(users) > 1  # seeds draw different users


def test_probabilities_history_and_exit(mi_small, ease):
    env = make_env(mi_small, ease, slate_size=5, max_steps=3, exit_rule={"exit_base": 0.0, "boredom": 0.0,
                                                                         "satiation": 1.0})
    obs, info = env.reset(seed=1)
    user, pool = info["user_id"], env.pool
    assert set(np.flatnonzero(obs["history"])) == set(pool.masked(user, "train+valid"))
    fresh = np.flatnonzero(obs["history"] == 0)[:5]
    _, _, terminated, truncated, info = env.step(fresh)
    expected = SimulatedUser(None, mi_small, choice=ease).probability([user] * 5, list(pool.items[fresh]))
    assert info["p_engage"] == pytest.approx(expected, abs=1e-6)
    assert not terminated and not truncated
    # shown items are never taken again, history items never: P 0 for both
    old = np.flatnonzero(obs["history"])[:2]
    obs, _, _, truncated, info = env.step(np.concatenate([fresh[:3], old])[:5])
    assert (info["p_engage"] == 0).all() and info["repeats"] == 5 and not truncated
    _, _, terminated, truncated, _ = env.step(fresh)
    assert truncated and not terminated  # max_steps
    leaving = make_env(mi_small, ease, slate_size=5, exit_rule={"exit_base": 1.0})
    leaving.reset(seed=2)
    assert leaving.step(leaving.action_space.sample())[2]  # exit_base 1: the first page is the last


def test_bad_slates_and_unknown_users(mi_small, ease, env):
    env.reset(seed=1)
    n = len(env.pool.items)
    with pytest.raises(FeedbackgenError, match="out of range"):
        env.step([0, 1, 2, 3, n])
    with pytest.raises(FeedbackgenError, match="5 item indices"):
        env.step([0, 1])
    env.reset(seed=1)
    fresh = np.flatnonzero(env._history == 0)[:3]
    _, _, _, _, info = env.step([fresh[0], fresh[0], fresh[1], fresh[2], fresh[0]])
    assert info["duplicates"] == 2 and info["p_engage"][1] == 0 and info["p_engage"][4] == 0
    with pytest.raises(FeedbackgenError, match="not one of"):
        env.reset(options={"user_id": "nobody"})
    with pytest.raises(FeedbackgenError, match="train interactions"):
        make_env(mi_small, ease, users=["nobody"])
    with pytest.raises(FeedbackgenError, match="slate_size"):
        make_env(mi_small, ease, slate_size=0)


def test_generator_texts_and_a_reward(mi_small, ease):
    from feedbackgen.models import create

    popular = create("popular", {"target": "review"}).fit(mi_small)
    env = make_env(mi_small, ease, generator=popular, slate_size=10, max_steps=50,
                   exit_rule={"exit_base": 0.0, "boredom": 0.0}, reward=lambda info: sum(info["ratings"]))
    got = 0
    for seed in range(10):  # ten users, each shown everything not yet seen, ten at a time
        env.reset(seed=seed)
        while (~env._seen).sum() >= 10:
            _, reward, _, _, info = env.step(np.flatnonzero(~env._seen)[:10])
            assert len(info["texts"]) == len(info["ratings"]) == len(info["engaged"])
            assert all(info["texts"]) and reward == pytest.approx(sum(info["ratings"]))
            got += len(info["engaged"])
    assert got > 0


def test_the_bandit_example_runs(mi_small, tmp_path, capsys):
    """examples/env_bandit.py on a tiny budget: it trains, and scores the policies in the simulator and on test."""
    import runpy
    from pathlib import Path

    mi_small.save(tmp_path / "mi")
    example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "env_bandit.py"))
    rows = example["main"](["--dataset", str(tmp_path / "mi"), "--episodes", "60", "--max-users", "50"])
    assert set(rows) == {"bandit (epsilon-greedy)", "popularity", "random"}
    assert all(0.0 <= r["simulated"] <= 1.0 and 0.0 <= r["real"] <= 1.0 for r in rows.values())
    assert "| popularity |" in capsys.readouterr().out
