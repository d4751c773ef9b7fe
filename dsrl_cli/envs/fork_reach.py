"""ForkReach: the built-in default task (a 2-D point that must press the goal one of three buttons).

The task is deliberately tiny and multimodal (three reachable buttons, one rewarded) so the whole
pipeline runs in minutes on a CPU. ``step`` works on plain Python floats because numpy calls on
2-element arrays cost more than the arithmetic itself.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

STEP_SIZE = 0.1
BUTTON_RADIUS = 0.1
START = (0.0, -0.6)
START_JITTER = 0.05
# Buttons on a circle of radius 0.6 at 150, 90 and 30 degrees (left, middle, right).
BUTTONS: tuple[tuple[float, float], ...] = tuple(
    (0.6 * math.cos(math.radians(deg)), 0.6 * math.sin(math.radians(deg))) for deg in (150.0, 90.0, 30.0)
)
NUM_BUTTONS = len(BUTTONS)
_TOUCH_SQ = BUTTON_RADIUS * BUTTON_RADIUS


class ForkReachEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Point mass on ``[-1, 1]^2``; obs ``[x, y, one_hot(goal, 3)]``; touching any button ends the episode."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"ForkReach has no rendering; render_mode must be None, got {render_mode!r}.")
        self.render_mode = None
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2 + NUM_BUTTONS,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._x = START[0]
        self._y = START[1]
        self._goal = 0
        # Template holding the episode's one-hot; each obs is a copy with x, y written in (cheapest route).
        self._obs = np.zeros(2 + NUM_BUTTONS, dtype=np.float32)

    @property
    def goal(self) -> int:
        return self._goal

    @property
    def position(self) -> tuple[float, float]:
        return (self._x, self._y)

    def _observation(self) -> np.ndarray:
        obs = self._obs.copy()
        obs[0] = self._x
        obs[1] = self._y
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        self._goal = int(rng.integers(NUM_BUTTONS))
        jitter = rng.uniform(-START_JITTER, START_JITTER, size=2)
        self._x = START[0] + float(jitter[0])
        self._y = START[1] + float(jitter[1])
        self._obs[2:] = 0.0
        self._obs[2 + self._goal] = 1.0
        return self._observation(), {"success": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        ax = float(action[0])
        ay = float(action[1])
        # min/max chains are several times faster than np.clip on scalars.
        ax = -1.0 if ax < -1.0 else (1.0 if ax > 1.0 else ax)
        ay = -1.0 if ay < -1.0 else (1.0 if ay > 1.0 else ay)
        x = self._x + STEP_SIZE * ax
        y = self._y + STEP_SIZE * ay
        x = -1.0 if x < -1.0 else (1.0 if x > 1.0 else x)
        y = -1.0 if y < -1.0 else (1.0 if y > 1.0 else y)
        self._x = x
        self._y = y
        for i, (bx, by) in enumerate(BUTTONS):
            dx = x - bx
            dy = y - by
            if dx * dx + dy * dy < _TOUCH_SQ:
                hit = i == self._goal
                return self._observation(), (1.0 if hit else 0.0), True, False, {"success": hit}
        return self._observation(), 0.0, False, False, {"success": False}

    def render(self) -> None:
        return None
