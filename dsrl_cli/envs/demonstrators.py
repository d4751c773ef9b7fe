"""Scripted demonstrators that generate the offline datasets, looked up by name.

A demonstrator sees raw observations only (the same thing a policy sees), so datasets can be collected
through any wrapper stack without reaching into the environment.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dsrl_cli.envs.fork_reach import BUTTON_RADIUS, BUTTONS, NUM_BUTTONS, STEP_SIZE
from dsrl_cli.errors import BadInput


@runtime_checkable
class Demonstrator(Protocol):
    """Per-episode scripted controller: ``reset`` at each episode start, then ``act`` every step."""

    def reset(self, obs: np.ndarray) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


class ForkReachDemonstrator:
    """Goes for the goal button; with ``noise > 0`` it is confused, curved and jittery (multimodal data).

    Per episode the target is a uniformly random button with probability ``confusion * min(noise, 1)``
    (which may still be the goal), else the goal. The path runs through a via-point offset sideways by
    ``N(0, via_spread * noise)`` from the midpoint of start -> target; actions get ``N(0, action_noise *
    noise)`` noise and are clipped to ``[-1, 1]``.
    """

    act_dim = 2

    def __init__(
        self,
        noise: float,
        seed: int,
        confusion: float = 0.9,
        action_noise: float = 0.15,
        via_spread: float = 0.3,
        speed: float = 0.8,
    ) -> None:
        for name, value in (
            ("confusion", confusion),
            ("action_noise", action_noise),
            ("via_spread", via_spread),
        ):
            if not _is_number(value) or value < 0:
                raise BadInput(
                    f"fork_reach demonstrator parameter {name} must be a number >= 0, got {value!r}."
                )
        if not _is_number(confusion) or confusion > 1:
            raise BadInput(
                f"fork_reach demonstrator parameter confusion must be in [0, 1], got {confusion!r}."
            )
        if not _is_number(speed) or not 0 < speed <= 1:
            raise BadInput(f"fork_reach demonstrator parameter speed must be in (0, 1], got {speed!r}.")
        self.noise = float(noise)
        self.confusion = float(confusion)
        self.action_noise = float(action_noise)
        self.via_spread = float(via_spread)
        self.speed = float(speed)
        self._rng = np.random.default_rng(seed)
        self.target = 0
        self.goal = 0
        self._via: tuple[float, float] | None = None
        self._tx, self._ty = BUTTONS[0]

    def reset(self, obs: np.ndarray) -> None:
        self.goal = int(np.argmax(obs[2 : 2 + NUM_BUTTONS]))
        noise = self.noise
        confused = noise > 0 and self._rng.random() < self.confusion * min(noise, 1.0)
        self.target = int(self._rng.integers(NUM_BUTTONS)) if confused else self.goal
        self._tx, self._ty = BUTTONS[self.target]
        self._via = None
        if noise > 0:
            x0, y0 = float(obs[0]), float(obs[1])
            dx, dy = self._tx - x0, self._ty - y0
            norm = math.hypot(dx, dy) or 1.0
            offset = float(self._rng.normal(0.0, self.via_spread * noise))
            # Perpendicular (-dy, dx) of the unit start -> target direction.
            self._via = ((x0 + self._tx) / 2 - dy / norm * offset, (y0 + self._ty) / 2 + dx / norm * offset)

    def act(self, obs: np.ndarray) -> np.ndarray:
        x, y = float(obs[0]), float(obs[1])
        if self._via is not None:
            vx, vy = self._via
            if math.hypot(vx - x, vy - y) < BUTTON_RADIUS:
                self._via = None
        if self._via is not None:
            # Full speed through the via-point: slowing down there would only make demos longer.
            dx, dy = self._via[0] - x, self._via[1] - y
            scale = self.speed / max(math.hypot(dx, dy), 1e-8)
        else:
            # Proportional controller (one step closes the gap) saturating at `speed` along the line.
            dx, dy = self._tx - x, self._ty - y
            dist = math.hypot(dx, dy)
            scale = min(1.0 / STEP_SIZE, self.speed / max(dist, 1e-8))
        action = np.array((dx * scale, dy * scale), dtype=np.float32)
        std = self.action_noise * self.noise
        if std > 0:
            action += self._rng.normal(0.0, std, size=2).astype(np.float32)
        return np.clip(action, -1.0, 1.0, out=action)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_REGISTRY: dict[str, Callable[..., Demonstrator]] = {"fork_reach": ForkReachDemonstrator}


def available_demonstrators() -> list[str]:
    return sorted(_REGISTRY)


def make_demonstrator(name: str, noise: float, seed: int, **params: Any) -> Demonstrator:
    """Build the demonstrator registered as ``name``; user mistakes (name, noise, params) raise BadInput."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise BadInput(f"Unknown demonstrator {name!r}; available: {', '.join(available_demonstrators())}.")
    if not _is_number(noise) or noise < 0:
        raise BadInput(f"Demonstrator noise must be a number >= 0, got {noise!r}.")
    known = set(inspect.signature(factory).parameters) - {"noise", "seed"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadInput(
            f"Unknown parameter(s) {', '.join(unknown)} for demonstrator {name!r}; "
            f"accepted: {', '.join(sorted(known))}."
        )
    return factory(noise=float(noise), seed=int(seed), **params)


class NoisyScriptedDemonstrator:
    """A scripted expert (``expert_action``) made mixed-quality by ``noise``; subclasses supply the expert.

    With ``noise=0`` it is the scripted expert (actions clipped to ``[-1, 1]``). With ``noise > 0``:

    - every action gets ``N(0, action_noise * noise)`` Gaussian noise;
    - per episode, with probability ``lazy_prob * min(noise, 1)``, the demonstrator "wanders off" for a
      stretch: starting at a uniform step in ``[0, lazy_steps)`` and lasting a uniform
      ``[lazy_steps // 2, lazy_steps]`` steps, its actions are a random direction (uniform in ``[-1, 1]^A``,
      fixed for the stretch) plus ``N(0, action_noise)`` noise. The expert then recovers from wherever that
      left it, so these episodes are slower and some run out of time (failures).
    """

    name = "scripted"  # the registry name, for error messages

    def __init__(
        self, noise: float, seed: int, act_dim: int, action_noise: float, lazy_prob: float, lazy_steps: int
    ) -> None:
        for key, value in (("action_noise", action_noise), ("lazy_prob", lazy_prob)):
            if not _is_number(value) or value < 0:
                raise BadInput(f"{self.name} demonstrator parameter {key} must be a number >= 0, got {value!r}.")
        if lazy_prob > 1:
            raise BadInput(f"{self.name} demonstrator parameter lazy_prob must be in [0, 1], got {lazy_prob!r}.")
        if not isinstance(lazy_steps, int) or isinstance(lazy_steps, bool) or lazy_steps < 1:
            raise BadInput(
                f"{self.name} demonstrator parameter lazy_steps must be an integer >= 1, got {lazy_steps!r}."
            )
        self.noise = float(noise)
        self.action_noise = float(action_noise)
        self.lazy_prob = float(lazy_prob)
        self.lazy_steps = lazy_steps
        self.act_dim = act_dim
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._lazy: tuple[int, int] | None = None  # [start, end) steps of this episode's wandering stretch
        self._lazy_dir = np.zeros(self.act_dim, dtype=np.float32)

    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset_expert(self, obs: np.ndarray) -> None:
        """Per-episode expert state (none by default)."""

    def reset(self, obs: np.ndarray) -> None:
        self._t = 0
        self._lazy = None
        if self.noise > 0 and self._rng.random() < self.lazy_prob * min(self.noise, 1.0):
            start = int(self._rng.integers(self.lazy_steps))
            length = int(self._rng.integers(self.lazy_steps // 2, self.lazy_steps + 1))
            self._lazy = (start, start + length)
            self._lazy_dir = self._rng.uniform(-1.0, 1.0, size=self.act_dim).astype(np.float32)
        self.reset_expert(obs)

    def act(self, obs: np.ndarray) -> np.ndarray:
        t = self._t
        self._t += 1
        if self._lazy is not None and self._lazy[0] <= t < self._lazy[1]:
            action = self._lazy_dir + self._rng.normal(0.0, self.action_noise, size=self.act_dim).astype(np.float32)
            return np.clip(action, -1.0, 1.0).astype(np.float32)
        action = np.asarray(self.expert_action(obs), dtype=np.float32)
        std = self.action_noise * self.noise
        if std > 0:
            action = action + self._rng.normal(0.0, std, size=action.shape).astype(np.float32)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class MetaWorldDemonstrator(NoisyScriptedDemonstrator):
    """Meta-World's own scripted policy for ``task`` (``metaworld.policies``), made mixed-quality by ``noise``
    (see ``NoisyScriptedDemonstrator``).

    Needs the Meta-World extra (imported when the demonstrator is built, not when this module is).
    """

    name = "metaworld"

    def __init__(
        self,
        noise: float,
        seed: int,
        task: str | None = None,
        action_noise: float = 0.3,
        lazy_prob: float = 0.5,
        lazy_steps: int = 80,
    ) -> None:
        from dsrl_cli.envs.metaworld_tasks import check_task_name, import_metaworld

        if task is None:
            raise BadInput("metaworld demonstrator needs demo_params.task (a Meta-World task such as reach-v3).")
        import_metaworld()
        import importlib

        check_task_name(task, "metaworld demonstrator parameter task")
        policy_map = importlib.import_module("metaworld.policies").ENV_POLICY_MAP
        if task not in policy_map:
            raise BadInput(f"Meta-World ships no scripted policy for task {task!r}.")
        super().__init__(noise, seed, 4, action_noise, lazy_prob, lazy_steps)
        self.task = task
        self.policy = policy_map[task]()

    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():
            # The scripted policies warn whenever a proportional gain saturates; the env clips anyway.
            warnings.simplefilter("ignore")
            return np.array(self.policy.get_action(np.asarray(obs, dtype=np.float64)), dtype=np.float32)


_REGISTRY["metaworld"] = MetaWorldDemonstrator


class OGBenchCubeDemonstrator(NoisyScriptedDemonstrator):
    """OGBench's Markov cube oracle (``CubeMarkovOracle``: grasp, lift, carry, place) for ``dsrl/OGBench-v0``
    cube-single, made mixed-quality by ``noise`` (see ``NoisyScriptedDemonstrator``).

    The oracle reads privileged state from OGBench's ``info``; ``envs/ogbench_tasks.oracle_info`` recovers it
    from our observation (which carries the cube's target), so this stays an observation-only demonstrator.
    Needs the OGBench extra (imported when the demonstrator is built).
    """

    name = "ogbench_cube"

    def __init__(
        self,
        noise: float,
        seed: int,
        task: str = "cube-single",
        action_noise: float = 0.3,
        lazy_prob: float = 0.5,
        lazy_steps: int = 40,
    ) -> None:
        from dsrl_cli.envs.ogbench_tasks import check_task_name, import_ogbench

        import_ogbench()
        check_task_name(task, "ogbench_cube demonstrator parameter task")
        if task != "cube-single":
            raise BadInput(f"ogbench_cube demonstrator supports task cube-single only, got {task!r}.")
        super().__init__(noise, seed, 5, action_noise, lazy_prob, lazy_steps)
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        from dsrl_cli.envs.ogbench_tasks import ARM_SAMPLING_BOUNDS

        self.task = task
        # The oracle reads only the env's arm sampling bounds (for its post-placement move, which never runs
        # here: the episode ends on success), so a stand-in carries them instead of a second MuJoCo env.
        stand_in = SimpleNamespace(_arm_sampling_bounds=ARM_SAMPLING_BOUNDS)
        stand_in.unwrapped = stand_in
        self.oracle = CubeMarkovOracle(env=stand_in)

    def reset_expert(self, obs: np.ndarray) -> None:
        from dsrl_cli.envs.ogbench_tasks import oracle_info

        # The oracle draws its post-placement pose from the global np.random: keep other users' draws intact.
        state = np.random.get_state()
        try:
            self.oracle.reset(obs, oracle_info(obs, 1))
        finally:
            np.random.set_state(state)

    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        from dsrl_cli.envs.ogbench_tasks import oracle_info

        return np.asarray(self.oracle.select_action(obs, oracle_info(obs, 1)), dtype=np.float32)


_REGISTRY["ogbench_cube"] = OGBenchCubeDemonstrator
