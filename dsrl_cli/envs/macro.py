"""The macro-step SMDP over ``gymnasium.vector``: one step executes an action chunk in every env.

With ``k`` the number of inner steps an env executed: ``reward = sum_{i<k} gamma^i r_i``,
``discount = gamma^k``; terminated and truncated stay apart (a time limit is not terminal).

Why the extra wrapper: with ``AutoresetMode.DISABLED`` gymnasium asserts that an env which reported
``terminated``/``truncated`` is reset before it is stepped again, but an env whose episode ends mid-chunk
must wait while the others finish theirs. ``_HoldAfterEnd`` therefore hides the end flags from the vector
env (reporting them once through ``info``) and freezes the sub-env until it is reset through
``reset(options={"reset_mask": ...})`` at the end of the macro step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium
import numpy as np
from gymnasium import spaces

from dsrl_cli.envs.tasks import TaskSpec, make_env
from dsrl_cli.errors import BadInput, DsrlError

_TERM_KEY = "macro_terminated"
_TRUNC_KEY = "macro_truncated"


class MacroStep(NamedTuple):
    next_obs_hist: np.ndarray  # [E, n, d] float32, history after the last executed step
    reward: np.ndarray  # [E] float32, sum_{i<k} gamma^i r_i
    discount: np.ndarray  # [E] float32, gamma^k
    terminated: np.ndarray  # [E] bool
    truncated: np.ndarray  # [E] bool
    steps: np.ndarray  # [E] int64, k
    success: np.ndarray  # [E] bool, success seen during this chunk
    obs_hist: np.ndarray  # [E, n, d] float32, history to act from next (fresh episode's if one ended)
    episode_return: np.ndarray  # [E] float32, valid where terminated | truncated
    episode_length: np.ndarray  # [E] int64, valid where terminated | truncated
    episode_success: np.ndarray  # [E] bool, valid where terminated | truncated


class _HoldAfterEnd(gymnasium.Wrapper):
    """After the episode ends, ignore ``step`` (final obs, reward 0, not done, same info) until ``reset``."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self._ended = False
        self._last_obs: Any = None
        self._last_info: dict[str, Any] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._ended = False
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._ended:
            return self._last_obs, 0.0, False, False, self._last_info
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self._ended = True
            self._last_obs = obs
            self._last_info = info
            # The end is reported once, through info, so the vector env never sees a done flag.
            info = {**info, _TERM_KEY: bool(terminated), _TRUNC_KEY: bool(truncated)}
        return obs, reward, False, False, info


class MacroVecEnv:
    """``num_envs`` copies of ``task``'s env stepped one action chunk at a time (see module docstring)."""

    def __init__(self, task: TaskSpec, num_envs: int, seed: int, gamma: float | None = None) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise BadInput(f"num_envs must be a positive integer, got {num_envs!r}.")
        gamma = task.gamma if gamma is None else float(gamma)
        if not 0.0 < gamma <= 1.0:
            raise BadInput(f"gamma must be in (0, 1], got {gamma!r}.")
        self.task = task
        self.gamma = gamma
        self.seed = int(seed)
        self.n_obs_steps = task.n_obs_steps
        self._success_key = task.success_key
        self._success_mask_key = None if task.success_key is None else f"_{task.success_key}"

        # Build one env eagerly so a bad env id fails here with BadInput rather than inside gymnasium.
        first = make_env(task)
        fns = [lambda env=first: _HoldAfterEnd(env)] + [
            lambda: _HoldAfterEnd(make_env(task)) for _ in range(num_envs - 1)
        ]
        # copy=False: observations are copied into our own history buffer anyway.
        self._vec = gymnasium.vector.SyncVectorEnv(
            fns, copy=False, autoreset_mode=gymnasium.vector.AutoresetMode.DISABLED
        )
        obs_space = self._vec.single_observation_space
        act_space = self._vec.single_action_space
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            self._vec.close()
            raise BadInput(f"Task {task.name!r} needs a flat Box observation space, got {obs_space}.")
        if not isinstance(act_space, spaces.Box) or len(act_space.shape) != 1:
            self._vec.close()
            raise BadInput(f"Task {task.name!r} needs a flat Box action space, got {act_space}.")
        self.num_envs = num_envs
        self.obs_dim = int(obs_space.shape[0])
        self.act_dim = int(act_space.shape[0])
        self.action_low = np.asarray(act_space.low, dtype=np.float32)
        self.action_high = np.asarray(act_space.high, dtype=np.float32)

        e = num_envs
        self._hist = np.zeros((e, self.n_obs_steps, self.obs_dim), dtype=np.float32)
        self._ep_return = np.zeros(e, dtype=np.float64)
        self._ep_length = np.zeros(e, dtype=np.int64)
        self._ep_success = np.zeros(e, dtype=bool)
        self._seeded = False
        self._ready = False

    def reset(self, seeds: list[int] | None = None) -> np.ndarray:
        """Start fresh episodes everywhere; returns raw observation histories ``[E, n, d]``.

        With ``seeds`` (one per env) each episode starts from exactly that seed, which evaluation uses
        to give every compared policy the same start states.
        """
        if seeds is not None:
            if len(seeds) != self.num_envs:
                raise BadInput(f"reset() needs {self.num_envs} seeds, got {len(seeds)}.")
            seed: int | list[int] | None = [int(s) for s in seeds]
        else:
            # First reset seeds sub-env i with seed + i; later ones continue each env's own RNG stream.
            seed = None if self._seeded else self.seed
        obs, _ = self._vec.reset(seed=seed)
        self._seeded = True
        self._hist[:] = np.asarray(obs, dtype=np.float32)[:, None, :]
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._ep_success[:] = False
        self._ready = True
        return self._hist.copy()

    def step(self, actions_head: np.ndarray) -> MacroStep:
        """Execute ``actions_head [E, Ha', A]`` (raw env units); an env stops at its episode's end."""
        if not self._ready:
            raise DsrlError("MacroVecEnv.step() was called before reset().")
        actions = np.asarray(actions_head, dtype=np.float32)
        e = self.num_envs
        if (
            actions.ndim != 3
            or actions.shape[0] != e
            or actions.shape[2] != self.act_dim
            or actions.shape[1] < 1
        ):
            raise BadInput(
                f"Action chunk must have shape [{e}, >=1, {self.act_dim}], got {list(actions.shape)}."
            )
        if not np.isfinite(actions).all():
            raise DsrlError("Action chunk contains NaN or inf values.")

        hist = self._hist
        gamma = self.gamma
        reward = np.zeros(e, dtype=np.float64)
        undiscounted = np.zeros(e, dtype=np.float64)
        steps = np.zeros(e, dtype=np.int64)
        terminated = np.zeros(e, dtype=bool)
        truncated = np.zeros(e, dtype=bool)
        success = np.zeros(e, dtype=bool)
        active = np.ones(e, dtype=bool)
        all_active = True
        skey, smask = self._success_key, self._success_mask_key
        g = 1.0
        for j in range(actions.shape[1]):
            obs, r, _, _, info = self._vec.step(actions[:, j])
            # Held (ended) envs report reward 0, so rewards need no masking.
            reward += g * r
            undiscounted += r
            if all_active:
                # Common case (no episode ended yet in this chunk): whole-array updates, no masking.
                steps += 1
                hist[:, :-1] = hist[:, 1:]
                hist[:, -1] = obs
            else:
                idx = np.flatnonzero(active)
                steps[idx] += 1
                hist[idx, :-1] = hist[idx, 1:]
                hist[idx, -1] = obs[idx]
            if skey is not None and skey in info:
                success |= active & info[smask] & info[skey].astype(bool)
            if _TERM_KEY in info:
                ended = info[f"_{_TERM_KEY}"] & active
                terminated |= ended & info[_TERM_KEY]
                truncated |= ended & info[_TRUNC_KEY]
                active &= ~ended
                all_active = False
                if not active.any():
                    break
            g *= gamma
        self._ep_return += undiscounted
        self._ep_length += steps
        self._ep_success |= success

        next_obs_hist = hist.copy()
        done = terminated | truncated
        episode_return = self._ep_return.astype(np.float32)
        episode_length = self._ep_length.copy()
        episode_success = self._ep_success.copy()
        if done.any():
            fresh, _ = self._vec.reset(options={"reset_mask": done})
            hist[done] = np.asarray(fresh, dtype=np.float32)[done][:, None, :]
            self._ep_return[done] = 0.0
            self._ep_length[done] = 0
            self._ep_success[done] = False
        return MacroStep(
            next_obs_hist=next_obs_hist,
            reward=reward.astype(np.float32),
            discount=np.power(gamma, steps).astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            steps=steps,
            success=success,
            obs_hist=hist.copy(),
            episode_return=episode_return,
            episode_length=episode_length,
            episode_success=episode_success,
        )

    def close(self) -> None:
        self._vec.close()
        self._ready = False
