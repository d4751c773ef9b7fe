"""OGBench cube tasks as a plain gymnasium env (optional extra: ``pip install 'dsrl[ogbench]'``).

Importing this module registers ``dsrl/OGBench-v0`` and nothing else: OGBench (and MuJoCo, dm_control) are
imported only when an env or the oracle demonstrator is built, so ``dsrl_cli`` works without the extra and a
missing extra is one clear ``BadInput`` at make time. Task files name the env as
``dsrl_cli.envs.ogbench_tasks:dsrl/OGBench-v0`` (gymnasium's ``module:id`` syntax). Only the environment is
used: no OGBench dataset is ever downloaded (demonstrations come from OGBench's scripted oracle, see
``envs/demonstrators.py``).

``OGBenchEnv(task="cube-single", task_id=None)`` is OGBench's manipulation ``CubeEnv`` (UR5e arm, 5-d
relative end-effector action) in its evaluation (``mode="task"``) setting: each episode is one of OGBench's 5
fixed evaluation tasks of that env (for cube-single: move the cube 15-40 cm horizontally, vertically or
diagonally), with the arm's start pose and the cube's yaw (and +-1 cm of its position) randomised.
``task_id=None`` (default) draws the evaluation task uniformly from 1..5 with the env's own ``np_random``, so
``reset(seed=s)`` picks the task and the start state reproducibly and a policy is evaluated on all five;
``task_id=k`` pins task ``k`` (``reset(options={"task_id": k})`` pins it for one episode). Differences from
the raw OGBench env:

- the observation is OGBench's state vector (proprioception, then per cube its position, quaternion and
  yaw) followed by each cube's target position, scaled like OGBench's positions (``(xyz - (0.425, 0, 0)) *
  10``), all ``float32``: OGBench's own evaluation passes the goal separately, a single policy needs it in
  the state (cube-single: 28 + 3 = 31 entries);
- actions are ``Box(-1, 1, (5,), float32)``, clipped;
- ``info`` is ``{"success": bool, "task_id": int}`` only (OGBench's large per-step info dict is dropped);
- reward is 1.0 on the successful step (every cube within 4 cm of its target), else 0.0, and the episode ends
  there with ``terminated=True`` (OGBench's own reward for these ids is the same 0/1 success flag).

Truncation comes from gymnasium's ``TimeLimit`` (the task's ``max_episode_steps``; 200, OGBench's own
horizon for cube-single, when the task leaves it unset).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from dsrl_cli.errors import BadInput, DsrlError

OGBENCH_ID = "dsrl/OGBench-v0"
# The id a task file uses: gymnasium imports the module before looking the id up.
OGBENCH_ENV_ID = f"{__name__}:{OGBENCH_ID}"
NOT_INSTALLED = "OGBench is not installed: pip install 'dsrl[ogbench]'"
# OGBench's cube envs by task name -> number of cubes; each has 5 fixed evaluation tasks.
CUBE_TASKS = {"cube-single": 1, "cube-double": 2, "cube-triple": 3, "cube-quadruple": 4}
NUM_EVAL_TASKS = 5
_ENV_TYPES = {1: "single", 2: "double", 3: "triple", 4: "quadruple"}

# OGBench's state layout (ManipSpaceEnv / CubeEnv.compute_observation), then our targets.
XYZ_CENTER = np.array([0.425, 0.0, 0.0])
XYZ_SCALE = 10.0
GRIPPER_SCALE = 3.0
PROPRIO_DIM = 19  # joint pos 6, joint vel 6, effector xyz 3, cos/sin yaw 2, gripper opening 1, contact 1
CUBE_DIM = 9  # xyz 3, quaternion 4, cos/sin yaw 2
# ManipSpaceEnv's arm start-pose box (set in its __init__, so not readable without building an env).
ARM_SAMPLING_BOUNDS = np.array([[0.25, -0.35, 0.20], [0.6, 0.35, 0.35]])


def import_ogbench() -> Any:
    """``import ogbench`` or a clear error: BadInput when it is missing, DsrlError when it is broken."""
    try:
        import ogbench
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "ogbench":
            raise BadInput(NOT_INSTALLED) from None
        raise DsrlError(f"OGBench is installed but cannot be imported: {exc}") from None
    except ImportError as exc:  # e.g. a broken MuJoCo / dm_control install
        raise DsrlError(f"OGBench is installed but cannot be imported: {exc}") from None
    return ogbench


def check_task_name(task: Any, what: str) -> str:
    """``task`` if it is a supported OGBench cube task, else BadInput naming them."""
    if not isinstance(task, str) or task not in CUBE_TASKS:
        raise BadInput(f"{what}: unknown OGBench task {task!r}; use one of {', '.join(CUBE_TASKS)}.")
    return task


def check_task_id(task_id: Any, what: str) -> int:
    if not isinstance(task_id, int) or isinstance(task_id, bool) or not 1 <= task_id <= NUM_EVAL_TASKS:
        raise BadInput(f"{what} must be an integer in 1..{NUM_EVAL_TASKS} or null, got {task_id!r}.")
    return task_id


def obs_dim(num_cubes: int) -> int:
    return PROPRIO_DIM + (CUBE_DIM + 3) * num_cubes


def oracle_info(obs: np.ndarray, num_cubes: int, target_block: int = 0) -> dict[str, Any]:
    """The ``info`` entries OGBench's Markov cube oracle reads, recovered from one of our observations.

    Everything the oracle needs is in the state (our observation adds the targets), so the demonstrator sees
    only what a policy sees. The target yaw is 0: OGBench's evaluation targets are unrotated (success only
    checks positions).
    """
    obs = np.asarray(obs, dtype=np.float64)

    def position(start: int) -> np.ndarray:
        return obs[start : start + 3] / XYZ_SCALE + XYZ_CENTER

    cube = PROPRIO_DIM + CUBE_DIM * target_block
    target = PROPRIO_DIM + CUBE_DIM * num_cubes + 3 * target_block
    return {
        "proprio/effector_pos": position(12),
        "proprio/effector_yaw": np.array([np.arctan2(obs[16], obs[15])]),
        "proprio/gripper_opening": np.array([obs[17] / GRIPPER_SCALE]),
        "proprio/gripper_contact": np.array([obs[18]]),
        "privileged/target_block": target_block,
        f"privileged/block_{target_block}_pos": position(cube),
        f"privileged/block_{target_block}_yaw": np.array([np.arctan2(obs[cube + 8], obs[cube + 7])]),
        "privileged/target_block_pos": position(target),
        "privileged/target_block_yaw": np.array([0.0]),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence OGBench's harmless warnings: no X display for GLFW (no window is ever opened) and gymnasium's
    float64 -> float32 note on the action Box that OGBench rebuilds (and samples) at every reset."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DISPLAY environment variable")
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
        yield


# One built CubeEnv per cube count and process, never stepped itself: every env is a copy of it.
_TEMPLATES: dict[int, Any] = {}


def _new_cube_env(num_cubes: int) -> Any:
    """A fresh OGBench ``CubeEnv``, copied from this process's template (built on first use).

    Building one compiles two MuJoCo models (the scene and the arm's IK model): 1.5-3 s here, so a 50-env
    evaluation spent minutes building envs. A copy shares the compiled, read-only parts (the MJCF tree, the
    task list, the IK solver, which resets its whole state on every call) and gets its own ``MjModel`` (the
    env recolours geoms per episode), ``MjData`` and RNG: about 0.1 s. This reaches into OGBench's private
    attributes (hence the ``ogbench<2`` pin); tests/test_ogbench.py checks that copies step exactly like a
    freshly built env, also when stepped interleaved.
    """
    import mujoco

    template = _TEMPLATES.get(num_cubes)
    if template is None:
        with _quiet():
            from ogbench.manipspace.envs.cube_env import CubeEnv

            # permute_blocks=False: the evaluation tasks as listed (it only matters with several cubes).
            template = CubeEnv(env_type=_ENV_TYPES[num_cubes], permute_blocks=False, terminate_at_goal=True,
                               mode="task")
            template.reset(seed=0, options={"task_id": 1})  # compiles the scene model
        _TEMPLATES[num_cubes] = template
    env = copy.copy(template)
    env._model = copy.deepcopy(template._model)
    env._data = mujoco.MjData(env._model)
    env._renderer = None
    env._passive_viewer_handle = None
    env._scene_option = mujoco.MjvOption()
    env._camera = mujoco.MjvCamera()
    env._np_random = None  # gymnasium's RNG: seeded by the first reset(seed=...)
    return env


class OGBenchEnv(gymnasium.Env):
    """One OGBench cube env with its 5 evaluation tasks; see the module docstring for the contract."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "cube-single", task_id: int | None = None, render_mode: str | None = None) -> None:
        import_ogbench()
        check_task_name(task, "env_kwargs.task")
        if task_id is not None:
            check_task_id(task_id, "env_kwargs.task_id")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise BadInput(f"render_mode must be rgb_array or null, got {render_mode!r}.")
        self.task = task
        self.num_cubes = CUBE_TASKS[task]
        self.fixed_task_id = task_id
        self.render_mode = render_mode
        self._env = _new_cube_env(self.num_cubes)
        self._target_mocap = [int(self._env.model.body(f"object_target_{i}").mocapid[0])
                              for i in range(self.num_cubes)]
        dim = obs_dim(self.num_cubes)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
        self.task_id = 1

    def _observation(self, raw: np.ndarray) -> np.ndarray:
        targets = (self._env.data.mocap_pos[self._target_mocap] - XYZ_CENTER) * XYZ_SCALE
        return np.concatenate([raw, targets.ravel()]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        task_id = (options or {}).get("task_id", self.fixed_task_id)
        if task_id is None:
            task_id = int(self.np_random.integers(1, NUM_EVAL_TASKS + 1))
        self.task_id = check_task_id(task_id, "reset option task_id")
        # OGBench draws the start state from its own np_random: seed it from ours every episode, so one
        # seed gives one episode whatever ran before (OGBench would otherwise draw the task from np.random).
        inner_seed = int(self.np_random.integers(2**31 - 1))
        with _quiet():
            raw, _ = self._env.reset(seed=inner_seed, options={"task_id": self.task_id})
        # To record the goal, OGBench's reset steps twice with unseeded random actions and then restores only
        # positions and velocities: the solver warm start and controls those steps leave would make one seed's
        # episodes differ between runs (at the 1e-17 level, enough to change some contact-rich episodes).
        # Clear them as mj_resetData does (every step sets all controls before simulating).
        data = self._env.data
        data.qacc_warmstart[:] = 0.0
        data.ctrl[:] = 0.0
        return self._observation(raw), {"success": False, "task_id": self.task_id}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        raw, _, _, _, raw_info = self._env.step(action)
        success = bool(raw_info["success"])
        info = {"success": success, "task_id": self.task_id}
        return self._observation(raw), float(success), success, False, info

    def render(self) -> Any:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


# Guarded so repeated imports (tests, reloads) do not trigger gymnasium's re-registration warning.
if OGBENCH_ID not in gymnasium.registry:
    gymnasium.register(
        id=OGBENCH_ID,
        entry_point=f"{__name__}:OGBenchEnv",
        max_episode_steps=200,
    )
