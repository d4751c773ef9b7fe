"""Meta-World tasks (optional extra): env adapter, scripted demonstrator and `dsrl collect` on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from typer.testing import CliRunner

from dsrl_cli.envs.macro import MacroVecEnv
from dsrl_cli.envs.tasks import TaskSpec, load_task, make_env
from dsrl_cli.errors import BadInput

pytest.importorskip("metaworld")

from dsrl_cli.cli.app import app  # noqa: E402
from dsrl_cli.envs.demonstrators import Demonstrator, make_demonstrator  # noqa: E402
from dsrl_cli.envs.metaworld_tasks import METAWORLD_ENV_ID, MetaWorldEnv  # noqa: E402

TASK = "metaworld-reach"


@pytest.fixture(scope="module")
def env():
    env = make_env(load_task(TASK))
    yield env
    env.close()


def test_task_loads_and_names_the_module_id() -> None:
    task = load_task(TASK)
    assert task.env_id == METAWORLD_ENV_ID
    assert (task.n_obs_steps, task.pred_horizon, task.act_horizon, task.max_episode_steps) == (1, 8, 4, 150)
    assert task.demonstrator == "metaworld" and task.demo_params == {"task": "reach-v3"}
    assert task.dataset["episodes"] == 100


# The task suite's Meta-World tasks (docs/BENCHMARKS.md "Task suite"): name -> Meta-World task.
SUITE = {"metaworld-push": "push-v3", "metaworld-pick-place": "pick-place-v3",
         "metaworld-door-open": "door-open-v3", "metaworld-window-open": "window-open-v3"}


@pytest.mark.parametrize("name", sorted(SUITE))
def test_suite_task_files_load_and_make_their_env(name: str) -> None:
    task = load_task(name)
    assert task.env_id == METAWORLD_ENV_ID and task.demonstrator == "metaworld"
    # The env and the scripted policy must run the same Meta-World task.
    assert task.env_kwargs["task"] == task.demo_params["task"] == SUITE[name]
    assert task.max_episode_steps == 150 and task.dataset["episodes"] == 200
    env = make_env(task)
    assert env.spec is not None and env.spec.max_episode_steps == 150
    obs, _ = env.reset(seed=0)
    assert obs.shape == (39,) and env.action_space.shape == (4,)
    demo = make_demonstrator(task.demonstrator, noise=task.demo_noise, seed=0, **task.demo_params)
    demo.reset(obs)
    _, reward, terminated, truncated, info = env.step(demo.act(obs))
    assert (reward, terminated, truncated, info["success"]) == (0.0, False, False, False)
    env.close()


def test_env_spaces_step_and_success_key(env) -> None:
    assert env.spec is not None and env.spec.max_episode_steps == 150
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (39,) and env.observation_space.contains(obs)
    assert info["success"] is False
    again, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, again)  # reset(seed) is reproducible (goal picked by np_random)
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert isinstance(info["success"], bool) and isinstance(reward, float)
    assert (terminated, truncated) == (info["success"], False)
    assert reward == float(info["success"])  # sparse by default
    # Different seeds pick different MT1 goals (the goal is the last three observation entries).
    goals = {tuple(env.reset(seed=s)[0][-3:].round(4)) for s in range(8)}
    assert len(goals) > 1


@pytest.mark.filterwarnings("ignore:.*infinity:UserWarning")  # object slots of the 39-d state are unbounded
def test_gymnasium_env_checker_and_bad_kwargs() -> None:
    raw = MetaWorldEnv(task="reach-v3")
    check_env(raw, skip_render_check=True)
    raw.close()
    with pytest.raises(BadInput, match="unknown Meta-World task"):
        MetaWorldEnv(task="reach-v0")
    with pytest.raises(BadInput, match="reward"):
        MetaWorldEnv(task="reach-v3", reward="shaped")


def _rollout(env, demo: Demonstrator, episodes: int, seed: int) -> tuple[int, list[int]]:
    successes, lengths = 0, []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        demo.reset(obs)
        terminated = truncated = False
        steps = 0
        while not (terminated or truncated):
            action = demo.act(obs)
            assert action.dtype == np.float32 and action.shape == (4,) and np.all(np.abs(action) <= 1.0)
            obs, reward, terminated, truncated, info = env.step(action)
            steps += 1
        successes += bool(info["success"])
        assert terminated == info["success"]  # success ends the episode; otherwise it is truncated
        lengths.append(steps)
    return successes, lengths


def test_scripted_demonstrator_succeeds_without_noise(env) -> None:
    demo = make_demonstrator("metaworld", noise=0.0, seed=0, task="reach-v3")
    assert isinstance(demo, Demonstrator)
    successes, lengths = _rollout(env, demo, episodes=5, seed=0)
    assert successes >= 4
    assert max(lengths) < 150


def test_noisy_demonstrator_is_reproducible_and_validates_params(env) -> None:
    runs = []
    for _ in range(2):
        demo = make_demonstrator("metaworld", noise=1.0, seed=3, task="reach-v3", lazy_prob=1.0)
        runs.append(_rollout(env, demo, episodes=1, seed=5))
    assert runs[0] == runs[1]
    with pytest.raises(BadInput, match="demo_params.task"):
        make_demonstrator("metaworld", noise=0.0, seed=0)
    with pytest.raises(BadInput, match="unknown Meta-World task"):
        make_demonstrator("metaworld", noise=0.0, seed=0, task="nope-v3")
    with pytest.raises(BadInput, match="lazy_prob"):
        make_demonstrator("metaworld", noise=0.0, seed=0, task="reach-v3", lazy_prob=2.0)


def test_collect_cli_writes_a_dataset(tmp_path) -> None:
    root = tmp_path / "artifacts"
    result = CliRunner().invoke(
        app, ["collect", "--task", TASK, "--episodes", "3", "--artifacts", str(root), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    path = json.loads(result.stdout)["artifact"]
    assert path.endswith("dataset.h5") and os.path.exists(path)
    with h5py.File(path, "r") as fh:
        demos = sorted(fh["data"].keys())
        assert len(demos) == 3
        first = fh["data"][demos[0]]
        assert first["obs"].shape[1] == 39 and first["actions"].shape[1] == 4


def test_missing_extra_is_bad_input_at_make_time_not_import_time() -> None:
    """With `metaworld` hidden, importing dsrl_cli (and the task module) works; making the env says how to fix."""
    code = (
        "import sys; sys.modules['metaworld'] = None\n"
        "import dsrl_cli.envs.metaworld_tasks, dsrl_cli.envs.demonstrators, dsrl_cli.cli.app\n"
        "from dsrl_cli.envs.tasks import load_task, make_env\n"
        "from dsrl_cli.errors import BadInput\n"
        "try:\n"
        "    make_env(load_task('metaworld-reach'))\n"
        "except BadInput as exc:\n"
        "    print('BAD', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "BAD Meta-World is not installed: pip install 'dsrl[metaworld]'" in proc.stdout


def _raw_mt1_task(**fields) -> TaskSpec:
    """Raw Meta-World MT1 (its own gymnasium id) with the task-file reward and seeding fields."""
    return TaskSpec.from_dict(
        {
            "name": "raw-mt1",
            "env_id": "metaworld:Meta-World/MT1",
            "env_kwargs": {"env_name": "reach-v3"},
            "n_obs_steps": 1,
            "pred_horizon": 8,
            "act_horizon": 4,
            "max_episode_steps": 100,
            **fields,
        }
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # raw MT1's observation bounds are stale (gymnasium warns)
def test_raw_mt1_with_seed_kwarg_seeds_goals_per_episode_and_pays_success() -> None:
    # Without seed_kwarg, raw MT1 ignores reset(seed): two envs give two goals for one seed.
    plain = [make_env(_raw_mt1_task()) for _ in range(2)]
    goals = [env.reset(seed=3)[0][-3:] for env in plain]
    assert not np.allclose(goals[0], goals[1])
    for env in plain:
        env.close()

    task = _raw_mt1_task(reward="success", terminate_on_success=True, seed_kwarg="seed")
    firsts = []
    for _ in range(2):  # two MacroVecEnv objects, as two commands would build them
        venv = MacroVecEnv(task, num_envs=2, seed=0)
        firsts.append(venv.reset(seeds=[3, 4]))
        out = venv.step(np.zeros((2, 4, 4), dtype=np.float32))
        assert out.reward.tolist() == [0.0, 0.0]  # not the shaped reward
        venv.close()
    np.testing.assert_array_equal(firsts[0], firsts[1])
    assert not np.allclose(firsts[0][0, 0, -3:], firsts[0][1, 0, -3:])  # parallel envs: different goals

    # The scripted policy reaches the goal: reward 1 on that step only, and the episode ends there.
    env = make_env(task)
    obs, _ = env.reset(seed=3)
    demo = make_demonstrator("metaworld", noise=0.0, seed=0, task="reach-v3")
    demo.reset(obs)
    rewards, terminated, truncated = [], False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(demo.act(obs))
        rewards.append(reward)
    env.close()
    assert terminated and info["success"] is True
    assert rewards[-1] == 1.0 and set(rewards[:-1]) == {0.0}
