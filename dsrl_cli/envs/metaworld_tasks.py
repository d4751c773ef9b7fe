"""Meta-World single tasks as a plain gymnasium env (optional extra: ``pip install 'dsrl[metaworld]'``).

Importing this module registers ``dsrl/MetaWorld-v0`` and nothing else: Meta-World (and MuJoCo) are
imported only when an env or a scripted policy is built, so ``dsrl_cli`` works without the extra and a
missing extra is one clear ``BadInput`` at make time. Task files name the env as
``dsrl_cli.envs.metaworld_tasks:dsrl/MetaWorld-v0`` (gymnasium's ``module:id`` syntax), so
``gymnasium.make`` imports this module on demand.

``MetaWorldEnv(task="reach-v3", goal_seed=0, reward="sparse")`` mirrors Meta-World's MT1 benchmark: one
fixed task with the 50 goals (object / target placements) that ``metaworld.MT1(task, seed=goal_seed)``
generates; every ``reset`` picks one of them uniformly with the env's own ``np_random``, so
``reset(seed=s)`` is reproducible. Differences from the raw Meta-World env:

- observations are the fully observable 39-d state (goal included) as ``float32``;
- actions are ``Box(-1, 1, (4,), float32)`` (xyz end-effector delta, gripper effort), clipped;
- ``info["success"]`` is a ``bool`` (Meta-World's own success flag, a float there);
- the episode ends with ``terminated=True`` at the first successful step, so a macro-step (action chunk)
  stops executing there and the success is a true terminal state for the critic;
- ``reward="sparse"`` (default): 1.0 on the successful (terminal) step, else 0.0. ``reward="dense"`` passes
  Meta-World's shaped reward (0..10 per step) through; with termination on success that dense reward can
  pay more for hovering near the goal than for finishing, so use it knowingly.

Truncation comes from gymnasium's ``TimeLimit`` (the task's ``max_episode_steps``; 500, Meta-World's own
horizon, when the task leaves it unset).

This is the documented path for any MT1 task (``env_kwargs.task``). Meta-World's own gymnasium id
``Meta-World/MT1`` (``env_name=..., seed=...``) differs in three ways: a shaped reward, no termination on
success (both unless the task sets ``reward: success`` / ``terminate_on_success: true``) and goals drawn from
the ``seed`` given at creation (``MT1(env_name, seed)`` builds the goal set; the task picker's RNG is seeded
from it; ``reset(seed=...)`` is ignored). A task file can use it with ``seed_kwarg: seed``
(``envs/task_wrapper.py`` re-creates it per episode, about 15x slower: ``benchmarks/metaworld_seeding.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from dsrl_cli.errors import BadInput, DsrlError

METAWORLD_ID = "dsrl/MetaWorld-v0"
# The id a task file uses: gymnasium imports the module before looking the id up.
METAWORLD_ENV_ID = f"{__name__}:{METAWORLD_ID}"
NOT_INSTALLED = "Meta-World is not installed: pip install 'dsrl[metaworld]'"
REWARD_MODES = ("sparse", "dense")


def import_metaworld() -> Any:
    """``import metaworld`` or a clear error: BadInput when it is missing, DsrlError when it is broken."""
    try:
        import metaworld
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "metaworld":
            raise BadInput(NOT_INSTALLED) from None
        raise DsrlError(f"Meta-World is installed but cannot be imported: {exc}") from None
    except ImportError as exc:  # e.g. a broken MuJoCo install
        raise DsrlError(f"Meta-World is installed but cannot be imported: {exc}") from None
    return metaworld


def available_metaworld_tasks() -> list[str]:
    """Meta-World v3 task names (``reach-v3``, ``push-v3``, ...); needs the extra."""
    metaworld = import_metaworld()
    return sorted(metaworld.env_dict.ALL_V3_ENVIRONMENTS)


def check_task_name(task: Any, what: str) -> str:
    """``task`` if it is a Meta-World v3 task name, else BadInput naming a few valid ones."""
    names = available_metaworld_tasks()
    if not isinstance(task, str) or task not in names:
        raise BadInput(
            f"{what}: unknown Meta-World task {task!r}; use one of the {len(names)} v3 tasks "
            f"such as {', '.join(names[:4])}, ... (e.g. reach-v3)."
        )
    return task


@functools.lru_cache(maxsize=16)
def _mt1_goals(task: str, goal_seed: int) -> tuple[Any, ...]:
    """MT1's 50 goal tasks for ``task`` (about a second to generate, so shared by all envs of a process)."""
    metaworld = import_metaworld()
    return tuple(metaworld.MT1(task, seed=goal_seed).train_tasks)


class MetaWorldEnv(gymnasium.Env):
    """One Meta-World v3 task with MT1's random goals; see the module docstring for the contract."""

    metadata = {"render_modes": ["rgb_array", "depth_array"], "render_fps": 80}

    def __init__(
        self,
        task: str = "reach-v3",
        goal_seed: int = 0,
        reward: str = "sparse",
        render_mode: str | None = None,
    ) -> None:
        metaworld = import_metaworld()
        check_task_name(task, "env_kwargs.task")
        if not isinstance(goal_seed, int) or isinstance(goal_seed, bool) or goal_seed < 0:
            raise BadInput(f"env_kwargs.goal_seed must be an integer >= 0, got {goal_seed!r}.")
        if reward not in REWARD_MODES:
            raise BadInput(f"env_kwargs.reward must be one of {', '.join(REWARD_MODES)}, got {reward!r}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise BadInput(
                f"render_mode must be one of {', '.join(self.metadata['render_modes'])} or null, "
                f"got {render_mode!r}."
            )
        self.task = task
        self.goal_seed = goal_seed
        self.reward_mode = reward
        self.render_mode = render_mode
        self._goals = _mt1_goals(task, goal_seed)
        self._env = metaworld.env_dict.ALL_V3_ENVIRONMENTS[task](render_mode=render_mode)
        self._env.set_task(self._goals[0])
        # The raw env's `observation_space` is stale after `set_task` (goal bounds stay 0); this one is not.
        raw = self._env.sawyer_observation_space
        self.observation_space = spaces.Box(
            raw.low.astype(np.float32), raw.high.astype(np.float32), dtype=np.float32
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=self._env.action_space.shape, dtype=np.float32)
        self.goal_index = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.goal_index = int(self.np_random.integers(len(self._goals)))
        self._env.set_task(self._goals[self.goal_index])
        obs, _ = self._env.reset()  # deterministic given the goal (Meta-World ignores reset seeds)
        return obs.astype(np.float32), {"success": False, "goal_index": self.goal_index}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, raw_reward, _, truncated, raw_info = self._env.step(action)
        success = bool(raw_info.get("success", 0.0))
        info = dict(raw_info)
        info["success"] = success
        reward = float(success) if self.reward_mode == "sparse" else float(raw_reward)
        return obs.astype(np.float32), reward, success, bool(truncated), info

    def render(self) -> Any:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


# Guarded so repeated imports (tests, reloads) do not trigger gymnasium's re-registration warning.
if METAWORLD_ID not in gymnasium.registry:
    gymnasium.register(
        id=METAWORLD_ID,
        entry_point=f"{__name__}:MetaWorldEnv",
        max_episode_steps=500,
    )
