"""OGBench cube-single (optional extra): env wrapper contract, oracle demonstrator and `dsrl collect` on it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from dsrl_cli.envs.macro import MacroVecEnv
from dsrl_cli.envs.tasks import TaskSpec, load_task, make_env
from dsrl_cli.errors import BadInput

pytest.importorskip("ogbench")

from dsrl_cli.cli.app import app  # noqa: E402
from dsrl_cli.envs.demonstrators import Demonstrator, make_demonstrator  # noqa: E402
from dsrl_cli.envs.ogbench_tasks import OGBENCH_ENV_ID, OGBenchEnv, oracle_info  # noqa: E402

TASK = "ogbench-cube-single"


@pytest.fixture(scope="module")
def env():
    env = make_env(load_task(TASK))  # a MuJoCo model compile per env (seconds): share one
    yield env
    env.close()


def test_task_loads_and_names_the_module_id() -> None:
    task = load_task(TASK)
    assert task.env_id == OGBENCH_ENV_ID
    assert task.env_kwargs == {"task": "cube-single"}
    assert task.demonstrator == "ogbench_cube"


def test_spaces_sparse_reward_and_reproducible_reset(env) -> None:
    assert env.observation_space.shape == (31,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (5,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, size=(5, 5)).astype(np.float32)

    def rollout(seed: int) -> tuple[np.ndarray, int]:
        obs, info = env.reset(seed=seed)
        assert info == {"success": False, "task_id": info["task_id"]}
        trace = [obs]
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            assert obs.dtype == np.float32 and obs.shape == (31,)
            assert isinstance(reward, float) and isinstance(info["success"], bool)
            assert (reward, terminated, truncated) == (0.0, False, False)  # random flailing never places the cube
            trace.append(obs)
        return np.stack(trace), info["task_id"]

    first, task_id = rollout(7)
    env.reset(seed=123)  # whatever ran in between
    again, task_id_again = rollout(7)
    np.testing.assert_array_equal(first, again)
    assert task_id == task_id_again
    # The seed draws the evaluation task: several seeds cover several of the 5 tasks (and their targets).
    drawn = {env.reset(seed=s)[1]["task_id"] for s in range(12)}
    assert len(drawn) >= 3 and drawn <= {1, 2, 3, 4, 5}
    targets = {tuple(env.reset(seed=s)[0][-3:].round(3)) for s in range(12)}
    assert len(targets) == len(drawn)
    # A reset option pins the task for one episode.
    assert env.reset(seed=0, options={"task_id": 4})[1]["task_id"] == 4
    with pytest.raises(BadInput, match="task_id"):
        env.reset(seed=0, options={"task_id": 6})


def test_reset_seed_fixes_the_whole_simulation_state() -> None:
    """Two envs reset with one seed hold bit-identical MuJoCo integration states (warm start and controls
    included), whatever OGBench's unseeded goal-rendering steps did inside reset."""
    import mujoco

    envs = [OGBenchEnv(), OGBenchEnv()]
    spec = mujoco.mjtState.mjSTATE_INTEGRATION

    def state(env: OGBenchEnv) -> np.ndarray:
        model, data = env._env.model, env._env.data
        out = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, out, spec)
        return out

    for seed in range(3):
        for env in envs:
            env.reset(seed=seed)
        np.testing.assert_array_equal(state(envs[0]), state(envs[1]))


def test_two_macro_envs_give_identical_first_observations() -> None:
    task = load_task(TASK)
    firsts = []
    for _ in range(2):  # two MacroVecEnv objects, as two commands would build them
        venv = MacroVecEnv(task, num_envs=1, seed=0)
        firsts.append(venv.reset(seeds=[11]))
        venv.close()
    np.testing.assert_array_equal(firsts[0], firsts[1])


@pytest.mark.filterwarnings("ignore::UserWarning")  # the raw CubeEnv's float64 action-Box note
def test_env_copies_step_exactly_like_a_freshly_built_env_and_cost_a_fraction() -> None:
    from ogbench.manipspace.envs.cube_env import CubeEnv

    start = time.perf_counter()
    fresh = CubeEnv(env_type="single", permute_blocks=False, terminate_at_goal=True, mode="task")
    fresh.reset(seed=0, options={"task_id": 1})
    build_s = time.perf_counter() - start
    OGBenchEnv()  # the process's template exists from here on (the module fixture may have built it already)
    start = time.perf_counter()
    a, b = OGBenchEnv(), OGBenchEnv()
    copy_s = (time.perf_counter() - start) / 2
    assert copy_s < 0.25 * build_s, (copy_s, build_s)  # a copy, not a second MuJoCo compile

    actions = np.random.default_rng(1).uniform(-1.0, 1.0, size=(40, 5))
    traces: list[list[np.ndarray]] = [[], []]
    traces[0].append(a._env.reset(seed=9, options={"task_id": 3})[0])
    b._env.reset(seed=10, options={"task_id": 5})
    traces[1].append(fresh.reset(seed=9, options={"task_id": 3})[0])
    for action in actions:  # interleaved: b's steps must not leak into a (shared parts are read-only)
        traces[0].append(a._env.step(action)[0])
        b._env.step(-action)
        traces[1].append(fresh.step(action)[0])
    np.testing.assert_array_equal(np.stack(traces[0]), np.stack(traces[1]))


def _oracle_rollout(env, demo: Demonstrator, seed: int) -> tuple[list[float], bool, bool, dict]:
    obs, _ = env.reset(seed=seed)
    demo.reset(obs)
    rewards, terminated, truncated, info = [], False, False, {}
    while not (terminated or truncated):
        action = demo.act(obs)
        assert action.dtype == np.float32 and action.shape == (5,) and np.all(np.abs(action) <= 1.0)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
    return rewards, terminated, truncated, info


def test_oracle_demonstrator_places_the_cube_and_the_episode_ends_there(env) -> None:
    demo = make_demonstrator("ogbench_cube", noise=0.0, seed=0)
    assert isinstance(demo, Demonstrator)
    state = np.random.get_state()
    for seed in (0, 1):
        rewards, terminated, truncated, info = _oracle_rollout(env, demo, seed)
        assert terminated and not truncated and info["success"] is True
        assert rewards[-1] == 1.0 and set(rewards[:-1]) == {0.0}  # sparse: 1 on the success step only
        assert len(rewards) < 100  # the expert needs about 50 steps (the task's limit is 100)
    # The oracle's own np.random draw is undone (the global stream is not ours to move).
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])


def test_oracle_info_recovers_the_oracle_inputs_from_the_observation(env) -> None:
    raw = env.unwrapped
    obs, _ = raw.reset(seed=3, options={"task_id": 4})
    info = oracle_info(obs, 1)
    inner = raw._env.compute_ob_info()  # OGBench's own privileged info, for comparison only
    for key in ("proprio/effector_pos", "proprio/effector_yaw", "proprio/gripper_opening", "privileged/block_0_pos",
                "privileged/block_0_yaw"):
        np.testing.assert_allclose(info[key], inner[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(info["privileged/target_block_pos"], raw._env.cur_task_info["goal_xyzs"][0], atol=1e-6)


def test_noisy_demonstrator_is_reproducible_and_validates_params(env) -> None:
    runs = []
    for _ in range(2):
        demo = make_demonstrator("ogbench_cube", noise=1.0, seed=3, lazy_prob=1.0)
        obs, _ = env.reset(seed=5)
        demo.reset(obs)
        runs.append(np.stack([demo.act(obs) for _ in range(30)]))  # the same obs: the demonstrator's own draws
    np.testing.assert_array_equal(runs[0], runs[1])
    with pytest.raises(BadInput, match="cube-single only"):
        make_demonstrator("ogbench_cube", noise=0.0, seed=0, task="cube-double")
    with pytest.raises(BadInput, match="unknown OGBench task"):
        make_demonstrator("ogbench_cube", noise=0.0, seed=0, task="puzzle-3x3")
    with pytest.raises(BadInput, match="lazy_prob"):
        make_demonstrator("ogbench_cube", noise=0.0, seed=0, lazy_prob=2.0)
    with pytest.raises(BadInput, match="task_id"):
        OGBenchEnv(task_id=0)


def test_collect_cli_writes_two_episodes(tmp_path) -> None:
    root = tmp_path / "artifacts"
    result = CliRunner().invoke(
        app, ["collect", "--task", TASK, "--episodes", "2", "--noise", "0", "--artifacts", str(root), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["episodes"] == 2 and out["success_rate"] == 1.0 and (out["obs_dim"], out["act_dim"]) == (31, 5)
    with h5py.File(out["artifact"], "r") as fh:
        demo = fh["data"][sorted(fh["data"].keys())[0]]
        assert demo["obs"].shape[1] == 31 and demo["actions"].shape[1] == 5
        assert demo["rewards"][-1] == 1.0


def test_missing_extra_is_bad_input_at_make_time_not_import_time() -> None:
    """With `ogbench` hidden, importing dsrl_cli (and the task module) works; making the env says how to fix."""
    code = (
        "import sys; sys.modules['ogbench'] = None\n"
        "import dsrl_cli.envs.ogbench_tasks, dsrl_cli.envs.demonstrators, dsrl_cli.cli.app\n"
        "from dsrl_cli.envs.tasks import load_task, make_env\n"
        "from dsrl_cli.envs.demonstrators import make_demonstrator\n"
        "from dsrl_cli.errors import BadInput\n"
        "for make in (lambda: make_env(load_task('ogbench-cube-single')),\n"
        "             lambda: make_demonstrator('ogbench_cube', noise=0.0, seed=0)):\n"
        "    try:\n"
        "        make()\n"
        "    except BadInput as exc:\n"
        "        print('BAD', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("BAD OGBench is not installed: pip install 'dsrl[ogbench]'") == 2


def test_cube_double_observes_both_targets_and_unknown_names_are_bad_input() -> None:
    env = OGBenchEnv(task="cube-double", task_id=2)
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (43,) and info["task_id"] == 2  # 19 + 2 x (9 + 3)
    goals = env._env.cur_task_info["goal_xyzs"]  # OGBench's task list, for comparison only
    np.testing.assert_allclose(obs[-6:].reshape(2, 3), (goals - [0.425, 0.0, 0.0]) * 10.0, atol=1e-6)
    env.close()
    spec = TaskSpec.from_dict({"name": "t", "env_id": OGBENCH_ENV_ID, "env_kwargs": {"task": "cube-sextuple"},
                               "n_obs_steps": 1, "pred_horizon": 8, "act_horizon": 4})
    with pytest.raises(BadInput, match="unknown OGBench task"):
        make_env(spec)
