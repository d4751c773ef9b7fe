"""Seeding and RNG-state capture (so resumed runs continue the same random stream)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


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
