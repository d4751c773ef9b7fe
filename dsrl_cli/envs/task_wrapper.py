"""The task file's reward semantics and per-episode seeding, for any gymnasium env.

``make_env`` wraps an env in ``TaskWrapper`` only when the task sets one of these fields away from its
default, so tasks that leave them alone get exactly the env ``gymnasium.make`` returns.

- ``reward: success``: the reward is 1.0 on the first step of an episode where ``info[success_key]`` is
  true and 0.0 on every other step (the env's own, possibly shaped, reward is dropped). Use it when the
  data's rewards are 0/1 success, so offline and online learning optimise the same thing.
- ``terminate_on_success: true``: ``terminated=True`` at the first successful step, so success is a true
  terminal state for the critic and a macro step stops executing there.
- ``seed_kwarg: NAME``: for envs that seed at creation (their episodes follow a constructor seed and
  ignore ``reset(seed=...)``, e.g. raw ``Meta-World/MT1``). Every reset re-creates the inner env with
  ``env_kwargs[NAME] = episode seed`` and also passes that seed to its ``reset``: a seeded reset uses the
  given seed (and re-seeds the wrapper's own RNG from it, as gymnasium's ``reset(seed)`` does); an
  unseeded one draws the next episode seed from that RNG. So each episode is a function of its seed, and
  parallel envs seeded ``seed + i`` get different but reproducible episodes.

With either of the first two the wrapper also writes ``info[success_key]`` back as a ``bool`` (raw
Meta-World reports a float), which is what ``MacroVecEnv``'s success accounting reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np

from dsrl_cli.errors import BadInput

if TYPE_CHECKING:
    from dsrl_cli.envs.tasks import TaskSpec

REWARD_MODES = ("env", "success")
# Mixed into the wrapper's RNG seed so its stream of episode seeds is not the very stream an env seeded
# with the same integer draws from (Meta-World seeds its own np_random from it).
_STREAM_TAG = 0x5EED_0F_EE
_MAX_EPISODE_SEED = 2**31  # fits every seeding API (np.random.seed needs < 2**32)


class TaskWrapper(gymnasium.Wrapper):
    """See the module docstring; ``task`` is validated by ``tasks.py``. With ``task.seed_kwarg`` set,
    ``remake(seed)`` builds a fresh inner env created with that seed."""

    def __init__(
        self, env: gymnasium.Env, task: TaskSpec, remake: Callable[[int], gymnasium.Env] | None = None
    ) -> None:
        super().__init__(env)
        if task.seed_kwarg is not None and remake is None:
            raise ValueError("TaskWrapper: a task with seed_kwarg needs `remake`.")
        self._task_name = task.name
        self._success_key = task.success_key
        self._sparse = task.reward == "success"
        self._terminate = task.terminate_on_success
        self._remake = remake if task.seed_kwarg is not None else None
        self._rng: np.random.Generator | None = None
        self._succeeded = False
        self.episode_seed: int | None = None  # the seed the current inner env was created with

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._succeeded = False
        if self._remake is not None:
            if seed is not None:
                self._rng = np.random.default_rng([_STREAM_TAG, int(seed)])
            elif self._rng is None:  # never seeded: an unreproducible stream, as gymnasium does
                self._rng = np.random.default_rng()
            episode_seed = int(seed) if seed is not None else int(self._rng.integers(_MAX_EPISODE_SEED))
            self.env.close()
            self.env = self._remake(episode_seed)
            self.episode_seed = seed = episode_seed
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not (self._sparse or self._terminate):
            return obs, reward, terminated, truncated, info
        key = self._success_key
        if key is None or key not in info:
            raise BadInput(
                f"Task {self._task_name!r}: reward: success / terminate_on_success read info[{key!r}], but the "
                f"env's step info has no such key (keys: {', '.join(map(str, info)) or 'none'}); "
                "set success_key to the env's success flag."
            )
        success = bool(info[key])
        info = {**info, key: success}
        first = success and not self._succeeded
        self._succeeded |= success
        if self._sparse:
            reward = 1.0 if first else 0.0
        if self._terminate and success:
            terminated = True
        return obs, reward, terminated, truncated, info
