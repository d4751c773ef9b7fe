"""MacroVecEnv: chunk arithmetic, early ends, histories and seeding, on a tiny deterministic env."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from dsrl_cli.envs.macro import MacroStep, MacroVecEnv
from dsrl_cli.envs.tasks import TaskSpec, load_task
from dsrl_cli.errors import BadInput, DsrlError

COUNTER_ID = "dsrl_test/Counter-v0"
GAMMA = 0.9


class CounterEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """obs = [t, episode number]; reward at step t is t; action[0] > 0.5 terminates with success."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.t = 0
        self.episode = 0
        self.executed: list[float] = []  # every action actually executed, across episodes

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.episode], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        self.episode += 1
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.executed.append(float(action[0]))
        self.t += 1
        terminated = bool(action[0] > 0.5)
        return self._obs(), float(self.t), terminated, False, {"success": terminated}


if COUNTER_ID not in gymnasium.registry:
    gymnasium.register(id=COUNTER_ID, entry_point=CounterEnv, max_episode_steps=5)


def _task(success_key: str | None = "success", n_obs_steps: int = 3) -> TaskSpec:
    return TaskSpec(
        name="counter",
        env_id=COUNTER_ID,
        n_obs_steps=n_obs_steps,
        pred_horizon=4,
        act_horizon=4,
        max_episode_steps=5,
        gamma=GAMMA,
        success_key=success_key,
    )


def _chunk(*rows: list[float]) -> np.ndarray:
    """One row of scalar actions per env -> [E, Ha, 1]."""
    return np.array(rows, dtype=np.float32)[:, :, None]


def _disc(rewards: list[float]) -> float:
    return sum(GAMMA**i * r for i, r in enumerate(rewards))


def _inner(env: MacroVecEnv, i: int) -> CounterEnv:
    return env._vec.envs[i].unwrapped  # type: ignore[return-value]


def test_full_chunk_arithmetic_and_padding() -> None:
    env = MacroVecEnv(_task(), num_envs=2, seed=0)
    assert (env.num_envs, env.obs_dim, env.act_dim) == (2, 2, 1)
    assert env.action_low.tolist() == [-1.0] and env.action_high.tolist() == [1.0]
    hist = env.reset()
    assert hist.shape == (2, 3, 2) and hist.dtype == np.float32
    np.testing.assert_array_equal(hist[0], [[0, 1]] * 3)  # padded with the first obs

    out = env.step(_chunk([0, 0, 0, 0], [0, 0, 0, 0]))
    assert isinstance(out, MacroStep)
    np.testing.assert_allclose(out.reward, _disc([1, 2, 3, 4]), rtol=1e-6)
    np.testing.assert_allclose(out.discount, GAMMA**4, rtol=1e-6)
    assert out.steps.tolist() == [4, 4]
    assert not out.terminated.any() and not out.truncated.any() and not out.success.any()
    np.testing.assert_array_equal(out.next_obs_hist[1], [[2, 1], [3, 1], [4, 1]])
    np.testing.assert_array_equal(out.obs_hist, out.next_obs_hist)
    assert out.reward.dtype == np.float32 and out.discount.dtype == np.float32

    # A one-step chunk shifts the history by one (and hits the 5-step limit).
    out = env.step(_chunk([0], [0]))
    np.testing.assert_array_equal(out.next_obs_hist[0], [[3, 1], [4, 1], [5, 1]])
    assert out.truncated.all()
    env.close()


def test_early_termination_stops_chunk_and_resets() -> None:
    env = MacroVecEnv(_task(), num_envs=2, seed=0)
    env.reset()
    out = env.step(_chunk([0, 1, 0.3, 0.3], [0, 0, 0, 0]))
    # env 0 ends at inner step k=2: its last two actions are never executed.
    assert _inner(env, 0).executed == [0.0, 1.0]
    assert _inner(env, 1).executed == [0.0, 0.0, 0.0, 0.0]
    assert out.steps.tolist() == [2, 4]
    np.testing.assert_allclose(out.reward, [_disc([1, 2]), _disc([1, 2, 3, 4])], rtol=1e-6)
    np.testing.assert_allclose(out.discount, [GAMMA**2, GAMMA**4], rtol=1e-6)
    assert out.terminated.tolist() == [True, False] and out.truncated.tolist() == [False, False]
    assert out.success.tolist() == [True, False]
    assert out.episode_return[0] == 3.0 and out.episode_length[0] == 2 and out.episode_success[0]
    # next_obs_hist ends the finished episode; obs_hist is the fresh (padded) one.
    np.testing.assert_array_equal(out.next_obs_hist[0], [[0, 1], [1, 1], [2, 1]])
    np.testing.assert_array_equal(out.obs_hist[0], [[0, 2]] * 3)
    np.testing.assert_array_equal(out.obs_hist[1], out.next_obs_hist[1])

    # The fresh episode's history grows from its padding.
    out = env.step(_chunk([0], [0]))
    np.testing.assert_array_equal(out.obs_hist[0], [[0, 2], [0, 2], [1, 2]])
    assert out.reward[0] == 1.0 and out.steps[0] == 1
    env.close()


def test_truncation_is_not_terminal() -> None:
    env = MacroVecEnv(_task(), num_envs=1, seed=0)
    env.reset()
    env.step(_chunk([0, 0, 0, 0]))
    out = env.step(_chunk([0, 0, 0, 0]))  # the 5-step limit hits at inner step 1
    assert out.terminated.tolist() == [False] and out.truncated.tolist() == [True]
    assert out.steps.tolist() == [1]
    np.testing.assert_allclose(out.reward, [5.0], rtol=1e-6)
    np.testing.assert_allclose(out.discount, [GAMMA], rtol=1e-6)
    assert out.episode_return[0] == 15.0 and out.episode_length[0] == 5 and not out.episode_success[0]
    np.testing.assert_array_equal(out.next_obs_hist[0], [[3, 1], [4, 1], [5, 1]])
    np.testing.assert_array_equal(out.obs_hist[0], [[0, 2]] * 3)
    assert _inner(env, 0).executed == [0.0] * 5
    env.close()


def test_all_envs_end_and_episode_stats_span_chunks() -> None:
    env = MacroVecEnv(_task(success_key=None), num_envs=2, seed=0)
    env.reset()
    env.step(_chunk([0, 0], [0, 0]))
    out = env.step(_chunk([1, 0, 0], [0, 1, 0]))
    assert out.steps.tolist() == [1, 2] and out.terminated.all()
    assert not out.success.any() and not out.episode_success.any()  # success_key None -> never success
    assert out.episode_return.tolist() == [1 + 2 + 3, 1 + 2 + 3 + 4]
    assert out.episode_length.tolist() == [3, 4]
    np.testing.assert_array_equal(out.obs_hist[:, -1], [[0, 2], [0, 2]])
    env.close()


def test_seeding_and_determinism() -> None:
    task = load_task("default")

    def rollout(seed: int) -> list[np.ndarray]:
        env = MacroVecEnv(task, num_envs=3, seed=seed)
        rng = np.random.default_rng(0)
        arrays = [env.reset()]
        for _ in range(15):
            out = env.step(rng.uniform(-1, 1, size=(3, task.act_horizon, 2)))
            arrays.extend(np.asarray(a) for a in out)
        arrays.append(env.reset())  # a later reset continues each env's RNG
        env.close()
        return arrays

    first = rollout(5)
    for a, b in zip(first, rollout(5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], rollout(6)[0])
    assert not np.array_equal(first[0], first[-1])
    # Sub-env i is seeded with seed + i.
    single = gymnasium.make(task.env_id)
    for i in range(3):
        np.testing.assert_array_equal(first[0][i, 0], single.reset(seed=5 + i)[0])


def test_bad_usage() -> None:
    env = MacroVecEnv(_task(), num_envs=2, seed=0)
    with pytest.raises(DsrlError):
        env.step(_chunk([0], [0]))
    env.reset()
    with pytest.raises(BadInput):
        env.step(np.zeros((3, 2, 1), dtype=np.float32))
    with pytest.raises(BadInput):
        env.step(np.zeros((2, 0, 1), dtype=np.float32))
    env.close()
    with pytest.raises(BadInput):
        MacroVecEnv(_task(), num_envs=0, seed=0)
    with pytest.raises(BadInput):
        MacroVecEnv(TaskSpec(name="x", env_id="dsrl/NoSuchEnv-v0"), num_envs=1, seed=0)
