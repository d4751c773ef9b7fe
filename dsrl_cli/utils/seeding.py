"""Seeding, RNG-state capture (so resumed runs continue the same random stream) and episode seed spaces."""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np
import torch

from dsrl_cli.errors import BadInput

# Every environment episode that is started from an explicit seed draws it from the space of its purpose,
# so the final `dsrl eval` episodes are never seen in training, in online's periodic evaluations (which
# `stop_at_success` decides on) or in the demonstrations (DESIGN.md section 7).
SeedPurpose = Literal["collect", "train", "periodic_eval", "eval"]
SEED_PURPOSES: tuple[SeedPurpose, ...] = ("collect", "train", "periodic_eval", "eval")
MAX_EPISODES = 1_000_000  # episode indices per purpose and run seed


def episode_seed(purpose: SeedPurpose, seed: int, index: int) -> int:
    """Env reset seed of episode `index` of `purpose` in a run with seed `seed`.

    `(seed * MAX_EPISODES + index) * 4 + purpose number`: the purpose is the value mod 4, so two purposes
    never share a seed whatever the run seeds, and within a purpose distinct `(seed, index)` pairs with
    `0 <= index < MAX_EPISODES` give distinct seeds.
    """
    if purpose not in SEED_PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}")
    if seed < 0:
        raise BadInput(f"--seed must be >= 0, got {seed}")
    if not 0 <= index < MAX_EPISODES:
        raise BadInput(f"episode index {index} is outside [0, {MAX_EPISODES}) ({purpose} episodes)")
    return (seed * MAX_EPISODES + index) * len(SEED_PURPOSES) + SEED_PURPOSES.index(purpose)


def episode_seeds(purpose: SeedPurpose, seed: int, first: int, count: int) -> list[int]:
    return [episode_seed(purpose, seed, first + i) for i in range(count)]


def check_episode_counts(seed: int, **counts: int | None) -> None:
    """BadInput before any work when the seed is negative or a count would overflow its seed range."""
    if seed < 0:
        raise BadInput(f"--seed must be >= 0, got {seed}")
    for name, count in counts.items():
        if count is not None and count > MAX_EPISODES:
            raise BadInput(f"--{name.replace('_', '-')} must be at most {MAX_EPISODES:,} (one seed range), "
                           f"got {count:,}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_states() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_plain_to_numpy_state(state["numpy"]))
    random.setstate(_plain_to_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def generator_state(gen: np.random.Generator) -> dict[str, Any]:
    return _jsonable(gen.bit_generator.state)


def set_generator_state(gen: np.random.Generator, state: dict[str, Any]) -> None:
    gen.bit_generator.state = state


def _jsonable(obj: Any) -> Any:
    # weights_only torch.load accepts plain containers and ints; numpy scalars are converted.
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _plain_to_numpy_state(plain: dict[str, Any]) -> tuple:
    keys = plain["keys"].numpy().astype(np.uint32)
    return (plain["name"], keys, plain["pos"], plain["has_gauss"], plain["cached"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _plain_to_python_state(plain: list) -> tuple:
    version, internal, gauss = plain
    return (version, tuple(internal), gauss)
