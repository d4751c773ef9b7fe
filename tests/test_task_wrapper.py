"""Task-file reward semantics (reward, terminate_on_success) and per-episode seeding (seed_kwarg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import h5py
import numpy as np
import pytest
import yaml
from gymnasium import spaces
from typer.testing import CliRunner

from dsrl_cli.cli.app import app
from dsrl_cli.envs.macro import MacroVecEnv
from dsrl_cli.envs.task_wrapper import TaskWrapper
from dsrl_cli.envs.tasks import TaskSpec, load_task, make_env
from dsrl_cli.errors import BadInput

DENSE_ID = "dsrl_test/DenseSuccess-v0"
SEEDED_ID = "dsrl_test/CreationSeeded-v0"
GAMMA = 0.9
DENSE = 0.25


class DenseSuccessEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Shaped reward 0.25 every step; ``info["success"]`` is 1.0 (a float, as in raw Meta-World) on steps
    whose action[0] > 0.5, and success never ends the episode (only the time limit does)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        success = float(action[0] > 0.5)
        return np.array([self.t], dtype=np.float32), DENSE, False, False, {"success": success}


class CreationSeededEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Like raw Meta-World MT1: each episode's goal comes from an RNG seeded at construction;
    ``reset(seed=...)`` is ignored. obs = [goal]."""

    def __init__(self, seed: int | None = None) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._goals = np.random.default_rng(seed)
        self.goal = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.goal = float(self._goals.uniform())  # the reset seed is ignored on purpose
        return np.array([self.goal], dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.array([self.goal], dtype=np.float32), 0.0, False, False, {"success": False}


for _id, _entry in ((DENSE_ID, DenseSuccessEnv), (SEEDED_ID, CreationSeededEnv)):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry)


def _task(env_id: str = DENSE_ID, max_episode_steps: int = 8, **fields: Any) -> TaskSpec:
    data = {
        "name": "t",
        "env_id": env_id,
        "n_obs_steps": 1,
        "pred_horizon": 4,
        "act_horizon": 4,
        "max_episode_steps": max_episode_steps,
        "gamma": GAMMA,
        **fields,
    }
    return TaskSpec.from_dict(data)


def _chunk(*rows: list[float]) -> np.ndarray:
    """One row of scalar actions per env -> [E, Ha, 1]."""
    return np.array(rows, dtype=np.float32)[:, :, None]


def test_reward_success_pays_once_at_the_first_success() -> None:
    venv = MacroVecEnv(_task(reward="success"), num_envs=2, seed=0)
    venv.reset()
    out = venv.step(_chunk([0, 1, 1, 0], [0, 0, 0, 0]))
    # env 0: success at inner steps 1 and 2; only the first pays (discounted once); env 1: none.
    np.testing.assert_allclose(out.reward, [GAMMA, 0.0], rtol=1e-6)
    assert out.steps.tolist() == [4, 4] and not out.terminated.any()  # success does not end it here
    assert out.success.tolist() == [True, False]
    out = venv.step(_chunk([1, 1, 1, 1], [0, 0, 0, 0]))  # the 8-step limit ends both episodes
    assert out.truncated.all() and out.reward.tolist() == [0.0, 0.0]
    assert out.episode_return.tolist() == [1.0, 0.0]  # the macro-step return counts the 0/1 reward
    assert out.episode_success.tolist() == [True, False]
    venv.close()

    env = make_env(_task(reward="success"))
    env.reset(seed=0)
    rewards, flags = [], []
    for a in (0.0, 1.0, 1.0, 0.0):
        _, r, *_, info = env.step(np.array([a], dtype=np.float32))
        rewards.append(r)
        flags.append(info["success"])
    assert rewards == [0.0, 1.0, 0.0, 0.0]
    assert flags == [False, True, True, False] and all(type(f) is bool for f in flags)
    env.reset(seed=1)  # a new episode pays again
    assert env.step(np.array([1.0], dtype=np.float32))[1] == 1.0
    env.close()


def test_terminate_on_success_ends_the_episode_inside_a_macro_step() -> None:
    venv = MacroVecEnv(_task(terminate_on_success=True), num_envs=2, seed=0)
    venv.reset()
    out = venv.step(_chunk([0, 1, 0, 0], [0, 0, 0, 0]))
    assert out.steps.tolist() == [2, 4]
    assert out.terminated.tolist() == [True, False] and not out.truncated.any()
    assert out.success.tolist() == [True, False] and out.episode_success.tolist() == [True, False]
    np.testing.assert_allclose(out.reward, [DENSE * (1 + GAMMA), DENSE * (1 + GAMMA + GAMMA**2 + GAMMA**3)])
    assert out.episode_length[0] == 2
    np.testing.assert_array_equal(out.next_obs_hist[0], [[2.0]])  # the successful step's observation
    np.testing.assert_array_equal(out.obs_hist[0], [[0.0]])  # a fresh episode follows
    venv.close()

    both = MacroVecEnv(_task(reward="success", terminate_on_success=True), num_envs=1, seed=0)
    both.reset()
    out = both.step(_chunk([0, 0, 1, 1]))
    assert out.steps.tolist() == [3] and out.terminated.tolist() == [True]
    np.testing.assert_allclose(out.reward, [GAMMA**2])
    assert out.episode_return.tolist() == [1.0]
    both.close()


def test_default_fields_leave_env_and_stored_spec_unchanged() -> None:
    for name in ("default", "metaworld-reach"):
        task = load_task(name)
        assert (task.reward, task.terminate_on_success, task.seed_kwarg) == ("env", False, None)
        assert not {"reward", "terminate_on_success", "seed_kwarg"} & set(task.to_dict())
    env = make_env(load_task("default"))
    assert not isinstance(env, TaskWrapper)
    env.close()
    plain = make_env(_task())
    assert not isinstance(plain, TaskWrapper)
    plain.reset(seed=0)
    assert plain.step(np.array([1.0], dtype=np.float32))[1] == DENSE  # the env's own reward
    plain.close()
    set_fields = _task(reward="success", terminate_on_success=True, env_id=SEEDED_ID, seed_kwarg="seed")
    stored = set_fields.to_dict()
    assert (stored["reward"], stored["terminate_on_success"], stored["seed_kwarg"]) == ("success", True, "seed")
    assert TaskSpec.from_dict(stored) == set_fields and TaskSpec(**stored) == set_fields


def _seeded_task(**fields: Any) -> TaskSpec:
    return _task(env_id=SEEDED_ID, max_episode_steps=2, seed_kwarg="seed", **fields)


def test_seed_kwarg_makes_seeded_resets_reproducible_and_parallel_envs_differ() -> None:
    firsts = []
    for _ in range(2):  # two fresh objects, as two commands would build them
        venv = MacroVecEnv(_seeded_task(), num_envs=3, seed=0)
        first = venv.reset(seeds=[10, 11, 12])
        again = venv.reset(seeds=[10, 11, 12])  # the same seeds later in the same object
        np.testing.assert_array_equal(first, again)
        firsts.append(first)
        venv.close()
    np.testing.assert_array_equal(firsts[0], firsts[1])
    assert len({float(g) for g in firsts[0][:, 0, 0]}) == 3  # parallel envs get different episodes
    # The episode is the one an env created with that seed plays first (what seed_kwarg promises).
    np.testing.assert_allclose(firsts[0][1, 0, 0], CreationSeededEnv(seed=11).reset()[0][0])


def _goal_stream(seed: int, macro_steps: int = 6) -> np.ndarray:
    """Goals of the first and every later (unseeded, auto-reset) episode of 2 parallel envs: [T, 2]."""
    venv = MacroVecEnv(_seeded_task(), num_envs=2, seed=seed)
    goals = [venv.reset()[:, 0, 0]]
    for _ in range(macro_steps):
        out = venv.step(np.zeros((2, 2, 1), dtype=np.float32))  # 2 steps: every episode ends here
        assert out.truncated.all()
        goals.append(out.obs_hist[:, 0, 0])
    venv.close()
    return np.array(goals)


def test_seed_kwarg_unseeded_resets_differ_and_reproduce() -> None:
    first = _goal_stream(seed=3)
    np.testing.assert_array_equal(first, _goal_stream(seed=3))  # reproducible across objects
    assert len(np.unique(first)) == first.size  # every episode of every env is a different one
    assert not np.array_equal(first, _goal_stream(seed=4))


def test_seed_kwarg_wrapper_seeds_inner_env_per_episode() -> None:
    env = make_env(_seeded_task())
    assert isinstance(env, TaskWrapper)
    env.reset(seed=7)
    assert env.episode_seed == 7
    env.reset()
    later = env.episode_seed
    assert later is not None and later != 7
    env.reset(seed=7)  # re-seeding restarts the same stream of later episodes, as reset(seed) does
    env.reset()
    assert env.episode_seed == later
    env.close()


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return str(path)


GOOD = f"env_id: {DENSE_ID}\nn_obs_steps: 1\npred_horizon: 4\nact_horizon: 4\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (GOOD + "reward: success\nsuccess_key: null\n", "reward: success needs a success_key"),
        (GOOD + "terminate_on_success: true\nsuccess_key: null\n", "terminate_on_success: true needs"),
        (GOOD + "reward: sparse\n", "'reward' must be env or success"),
        (GOOD + "terminate_on_success: 'yes'\n", "'terminate_on_success' must be true or false"),
        (GOOD + "seed_kwarg: ''\n", "'seed_kwarg' must be a non-empty string"),
        (GOOD + "seed_kwarg: seed\nenv_kwargs: {seed: 3}\n", "env_kwargs.seed is set per episode"),
    ],
)
def test_bad_reward_and_seeding_fields(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        load_task(_write(tmp_path, text))


def test_reward_success_and_seed_kwarg_fail_clearly_on_the_wrong_env() -> None:
    task = _task(reward="success", success_key="is_success")
    env = make_env(task)
    env.reset(seed=0)
    with pytest.raises(BadInput, match=r"info\['is_success'\].*keys: success"):
        env.step(np.array([1.0], dtype=np.float32))
    env.close()
    with pytest.raises(BadInput, match="seed_kwarg 'seed'"):
        make_env(_task(seed_kwarg="seed"))  # DenseSuccessEnv takes no `seed` argument


def _d4rl_file(path: Path, rewards: list[float]) -> Path:
    """A D4RL-layout file for the default task (obs 5, act 2): one terminal episode."""
    n = len(rewards)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("observations", data=np.zeros((n, 5), dtype=np.float32))
        fh.create_dataset("actions", data=np.zeros((n, 2), dtype=np.float32))
        fh.create_dataset("rewards", data=np.asarray(rewards, dtype=np.float32))
        fh.create_dataset("terminals", data=np.arange(n) == n - 1)
        fh.create_dataset("timeouts", data=np.zeros(n, dtype=bool))
    return path


def test_collect_import_notes_a_reward_mismatch(tmp_path: Path) -> None:
    def collect(task: str, rewards: list[float]) -> str:
        data = _d4rl_file(tmp_path / f"{len(rewards)}-{rewards[-1]}.h5", rewards)
        result = CliRunner().invoke(
            app, ["collect", "--task", task, "--import", str(data), "--artifacts", str(tmp_path / "a")]
        )
        assert result.exit_code == 0, result.stderr
        return result.stderr

    success_task = tmp_path / "sparse.yaml"
    success_task.write_text(_yaml_of_default(reward="success"))
    assert "reward: success" in collect("default", [0.0, 0.0, 1.0])  # 0/1 data, env reward
    assert "note:" not in collect("default", [0.1, 0.2, 0.5])
    assert "span [0.1, 0.5]" in collect(str(success_task), [0.1, 0.2, 0.5])  # shaped data, 0/1 online
    assert "note:" not in collect(str(success_task), [0.0, 1.0, 0.0, 1.0])


def _yaml_of_default(**fields: Any) -> str:
    return yaml.safe_dump({**load_task("default").to_dict(), "name": "sparse", **fields})
