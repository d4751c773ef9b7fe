"""ForkReach env, its demonstrator and task loading."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dsrl_cli.envs
from dsrl_cli.envs.demonstrators import Demonstrator, make_demonstrator
from dsrl_cli.envs.fork_reach import BUTTONS, ForkReachEnv
from dsrl_cli.envs.tasks import TaskSpec, available_tasks, load_task, make_env
from dsrl_cli.errors import BadInput

ENV_ID = "dsrl/ForkReach-v0"


def _nearest_button(obs: np.ndarray) -> int:
    return int(np.argmin([math.hypot(obs[0] - bx, obs[1] - by) for bx, by in BUTTONS]))


def _run_demos(noise: float, episodes: int, seed: int = 0) -> tuple[float, list[int], list[int], list[int]]:
    """Success rate, goals, demonstrator targets and touched buttons (-1: none) over `episodes`."""
    env = gymnasium.make(ENV_ID)
    demo = make_demonstrator("fork_reach", noise=noise, seed=seed)
    successes = 0
    goals, targets, touched = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 100_000 + ep)
        demo.reset(obs)
        goals.append(int(env.unwrapped.goal))
        targets.append(int(demo.target))  # type: ignore[attr-defined]
        terminated = truncated = False
        info: dict = {}
        while not (terminated or truncated):
            action = demo.act(obs)
            assert action.dtype == np.float32 and action.shape == (2,)
            assert np.all(np.abs(action) <= 1.0)
            obs, _, terminated, truncated, info = env.step(action)
        successes += bool(info["success"])
        touched.append(_nearest_button(obs) if terminated else -1)
    env.close()
    return successes / episodes, goals, targets, touched


def test_registration_and_env_checker() -> None:
    importlib.reload(dsrl_cli.envs)  # a second import must not fail
    env = gymnasium.make(ENV_ID)
    assert env.spec is not None and env.spec.max_episode_steps == 40
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == (5,)
    assert obs[2:].sum() == 1.0 and obs[2 + env.unwrapped.goal] == 1.0
    assert abs(obs[0]) <= 0.05 and abs(obs[1] + 0.6) <= 0.05
    with pytest.raises(ValueError):
        ForkReachEnv(render_mode="human")


def test_step_dynamics_and_clipping() -> None:
    env = ForkReachEnv()
    obs, _ = env.reset(seed=1)
    x, y = float(obs[0]), float(obs[1])
    obs, reward, terminated, truncated, info = env.step(np.array([10.0, -0.5], dtype=np.float32))
    assert obs[0] == pytest.approx(x + 0.1, abs=1e-6) and obs[1] == pytest.approx(y - 0.05, abs=1e-6)
    assert (reward, terminated, truncated, info["success"]) == (0.0, False, False, False)
    for _ in range(30):  # push into the bottom-left corner: position stays in [-1, 1]
        obs, *_ = env.step(np.array([-1.0, -1.0], dtype=np.float32))
    assert obs[0] == pytest.approx(-1.0) and obs[1] == pytest.approx(-1.0)


def test_goal_and_wrong_button() -> None:
    env = ForkReachEnv()
    for wrong in (False, True):
        obs, _ = env.reset(seed=7)
        target = (env.goal + 1) % 3 if wrong else env.goal
        tx, ty = BUTTONS[target]
        for _ in range(40):
            x, y = env.position
            obs, reward, terminated, truncated, info = env.step(np.array([tx - x, ty - y]) * 10)
            if terminated:
                break
        assert terminated and not truncated
        assert _nearest_button(obs) == target
        assert reward == (0.0 if wrong else 1.0)
        assert info["success"] is (not wrong)


def test_truncation_at_40() -> None:
    env = gymnasium.make(ENV_ID)
    env.reset(seed=0)
    zero = np.zeros(2, dtype=np.float32)
    for t in range(40):
        _, reward, terminated, truncated, info = env.step(zero)
        assert not terminated and reward == 0.0 and not info["success"]
        assert truncated == (t == 39)


def test_expert_demonstrator_succeeds() -> None:
    rate, goals, targets, touched = _run_demos(noise=0.0, episodes=200)
    assert rate >= 0.95
    assert targets == goals


def test_noisy_demonstrator_is_mixed_and_multimodal() -> None:
    rate, goals, targets, touched = _run_demos(noise=1.0, episodes=200, seed=1)
    assert 0.25 <= rate <= 0.6
    assert set(targets) == {0, 1, 2}
    # Multimodal given the observation: for one goal, episodes end at all three buttons.
    for goal in range(3):
        ends = {b for g, b in zip(goals, touched, strict=True) if g == goal}
        assert {0, 1, 2} <= ends


def test_demonstrator_registry_errors() -> None:
    assert isinstance(make_demonstrator("fork_reach", 0.5, 0, speed=0.5), Demonstrator)
    with pytest.raises(BadInput, match="Unknown demonstrator"):
        make_demonstrator("nope", 0.0, 0)
    with pytest.raises(BadInput, match="bogus"):
        make_demonstrator("fork_reach", 0.0, 0, bogus=1)
    with pytest.raises(BadInput):
        make_demonstrator("fork_reach", -1.0, 0)
    with pytest.raises(BadInput):
        make_demonstrator("fork_reach", 1.0, 0, confusion=2.0)


def test_load_default_task() -> None:
    assert "default" in available_tasks()
    task = load_task("default")
    assert task.name == "default" and task.env_id == ENV_ID
    assert (task.n_obs_steps, task.pred_horizon, task.act_horizon) == (2, 8, 4)
    assert task.max_episode_steps == 40 and task.gamma == 0.99 and task.success_key == "success"
    assert task.demonstrator == "fork_reach" and task.demo_noise == 1.0 and task.demo_params == {"confusion": 0.4}
    assert {
        "kind",
        "hidden",
        "depth",
        "num_inference_steps",
        "steps",
        "batch_size",
        "lr",
        "ema_decay",
    } <= set(task.base)
    assert "episodes" in task.dataset
    assert TaskSpec.from_dict(task.to_dict()) == task
    env = make_env(task)
    assert env.spec is not None and env.spec.max_episode_steps == 40
    env.close()


def test_unknown_task_lists_available() -> None:
    with pytest.raises(BadInput, match="default"):
        load_task("no_such_task")
    with pytest.raises(BadInput, match="does not exist"):
        load_task("/nonexistent/dir/task.yaml")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return str(path)


GOOD = "env_id: dsrl/ForkReach-v0\nn_obs_steps: 2\npred_horizon: 8\nact_horizon: 4\n"


def test_task_yaml_path_and_defaults(tmp_path: Path) -> None:
    task = load_task(_write(tmp_path, GOOD))
    assert task.name == "t" and task.max_episode_steps is None and task.success_key == "success"


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace("act_horizon: 4", "act_horizon: 9"),  # act_horizon > pred_horizon
        GOOD.replace("n_obs_steps: 2", "n_obs_steps: 0"),
        GOOD.replace("pred_horizon: 8", "pred_horizon: eight"),
        GOOD.replace("act_horizon: 4", "act_horizon: 2.5"),
        GOOD + "gamma: 1.5\n",
        GOOD + "gamma: '0.9'\n",
        GOOD + "demo_noise: -1\n",
        GOOD + "base: [1, 2]\n",
        GOOD + "max_episode_steps: -3\n",
        GOOD + "typo_field: 1\n",
        GOOD.replace("env_id: dsrl/ForkReach-v0\n", ""),
        "just a string\n",
        "env_id: [unclosed\n",
    ],
)
def test_bad_task_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(BadInput):
        load_task(_write(tmp_path, text))


def test_make_env_unknown_id() -> None:
    with pytest.raises(BadInput, match="cannot make environment"):
        make_env(TaskSpec(name="x", env_id="dsrl/NoSuchEnv-v0"))
