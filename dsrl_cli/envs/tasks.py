"""Task specifications: which environment, chunking, discount and data-collection defaults.

A task is a small YAML file (``configs/tasks/<name>.yaml`` or any path). Everything is validated here
so later stages can trust the fields and users get one clear sentence for a bad file.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium
import yaml

import dsrl_cli
import dsrl_cli.envs  # noqa: F401  (registers the built-in gymnasium ids)
from dsrl_cli.envs.task_wrapper import REWARD_MODES, TaskWrapper
from dsrl_cli.errors import BadInput

TASKS_DIR = Path(dsrl_cli.__file__).parent / "configs" / "tasks"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    n_obs_steps: int = 2
    pred_horizon: int = 8
    act_horizon: int = 4
    max_episode_steps: int | None = None
    gamma: float = 0.99
    demonstrator: str | None = None
    demo_noise: float = 0.0
    demo_params: dict[str, Any] = field(default_factory=dict)
    success_key: str | None = "success"
    base: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    # Reward semantics and episode seeding, applied by envs/task_wrapper.py (see there):
    reward: str = "env"  # env: the env's own reward | success: 1.0 at the first successful step, else 0
    terminate_on_success: bool = False
    seed_kwarg: str | None = None  # env_kwargs name that seeds an env at creation (re-created per episode)
    # Order of the named keys of an imported robomimic obs group (the env's observation order).
    obs_keys: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        # Deep copy so callers can mutate the result without touching this (frozen) spec's dicts.
        data = copy.deepcopy(asdict(self))
        # Fields added later are left out at their defaults, so the stored spec (and every cache key
        # hashed from it) of a task that does not use them stays byte-identical.
        for name, default in _OMIT_AT_DEFAULT.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "task") -> TaskSpec:
        """Validate a plain mapping (YAML content or a stored ``to_dict()``) into a TaskSpec."""
        return _spec_from_mapping(data, source)


_REQUIRED = ("name", "env_id", "n_obs_steps", "pred_horizon", "act_horizon")
_OMIT_AT_DEFAULT: dict[str, Any] = {
    "reward": "env", "terminate_on_success": False, "seed_kwarg": None, "obs_keys": None,
}


def _spec_from_mapping(data: Any, source: str) -> TaskSpec:
    if not isinstance(data, dict):
        raise BadInput(f"{source} must be a YAML mapping of task fields, got {type(data).__name__}.")
    known = {f.name for f in fields(TaskSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInput(
            f"{source} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}."
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise BadInput(f"{source} is missing required field(s) {', '.join(missing)}.")

    def bad(key: str, expected: str) -> BadInput:
        return BadInput(f"{source}: field {key!r} must be {expected}, got {data[key]!r}.")

    for key in ("name", "env_id"):
        if not isinstance(data[key], str) or not data[key]:
            raise bad(key, "a non-empty string")
    for key in ("n_obs_steps", "pred_horizon", "act_horizon"):
        if not _is_int(data[key]) or data[key] <= 0:
            raise bad(key, "a positive integer")
    if (
        "max_episode_steps" in data
        and data["max_episode_steps"] is not None
        and (not _is_int(data["max_episode_steps"]) or data["max_episode_steps"] <= 0)
    ):
        raise bad("max_episode_steps", "a positive integer or null")
    if "gamma" in data and (not _is_real(data["gamma"]) or not 0 < data["gamma"] <= 1):
        raise bad("gamma", "a number in (0, 1]")
    if "demo_noise" in data and (not _is_real(data["demo_noise"]) or data["demo_noise"] < 0):
        raise bad("demo_noise", "a number >= 0")
    for key in ("demonstrator", "success_key"):
        if key in data and data[key] is not None and (not isinstance(data[key], str) or not data[key]):
            raise bad(key, "a non-empty string or null")
    for key in ("env_kwargs", "demo_params", "base", "dataset"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise bad(key, "a mapping")
    if "reward" in data and data["reward"] not in REWARD_MODES:
        raise bad("reward", " or ".join(REWARD_MODES))
    if "terminate_on_success" in data and not isinstance(data["terminate_on_success"], bool):
        raise bad("terminate_on_success", "true or false")
    if "seed_kwarg" in data and data["seed_kwarg"] is not None and (
        not isinstance(data["seed_kwarg"], str) or not data["seed_kwarg"]
    ):
        raise bad("seed_kwarg", "a non-empty string or null")
    success_key = data.get("success_key", "success")
    for key, needs in (("reward", "success"), ("terminate_on_success", True)):
        if data.get(key) == needs and success_key is None:
            raise BadInput(f"{source}: {key}: {str(needs).lower()} needs a success_key (the env's info flag).")
    if data.get("seed_kwarg") is not None and data["seed_kwarg"] in (data.get("env_kwargs") or {}):
        raise BadInput(
            f"{source}: env_kwargs.{data['seed_kwarg']} is set per episode by seed_kwarg; remove it from "
            "env_kwargs (one fixed creation seed would make every parallel env replay the same episodes)."
        )
    obs_keys = data.get("obs_keys")
    if obs_keys is not None and (
        not isinstance(obs_keys, list) or not obs_keys
        or not all(isinstance(k, str) and k for k in obs_keys) or len(set(obs_keys)) != len(obs_keys)
    ):
        raise bad("obs_keys", "a non-empty list of distinct key names or null")
    dataset_file = (data.get("dataset") or {}).get("file")
    if dataset_file is not None and (not isinstance(dataset_file, str) or not dataset_file):
        raise BadInput(f"{source}: dataset.file must be a non-empty path string, got {dataset_file!r}.")
    if data["act_horizon"] > data["pred_horizon"]:
        raise BadInput(
            f"{source}: act_horizon ({data['act_horizon']}) must not exceed "
            f"pred_horizon ({data['pred_horizon']})."
        )

    values = dict(data)
    for key in ("env_kwargs", "demo_params", "base", "dataset"):
        # `key:` with nothing after it parses as None; treat it as an empty mapping.
        values[key] = copy.deepcopy(values.get(key) or {})
    for key in ("gamma", "demo_noise"):
        if key in values:
            values[key] = float(values[key])
    return TaskSpec(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def available_tasks() -> list[str]:
    """Names of the tasks shipped in the package's ``configs/tasks``."""
    if not TASKS_DIR.is_dir():
        return []
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path


def load_task(name_or_path: str) -> TaskSpec:
    """Load a task by packaged name (``default``) or from a YAML file path."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise BadInput(f"Task file {name_or_path} does not exist.")
    else:
        path = TASKS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            names = ", ".join(available_tasks()) or "none"
            raise BadInput(
                f"Unknown task {name_or_path!r}; available tasks: {names} (or pass a YAML file path)."
            )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        raise BadInput(f"Task file {path} is not valid YAML: {problem}.") from None
    except OSError as exc:
        raise BadInput(f"Cannot read task file {path}: {exc.strerror}.") from None
    if isinstance(data, dict) and "name" not in data:
        # A file-based task without a name is named after its file.
        data = {**data, "name": path.stem}
    if isinstance(data, dict) and isinstance(data.get("dataset"), dict):
        file = data["dataset"].get("file")
        if isinstance(file, str) and file:
            # `dataset: {file: demos.h5}` is relative to the task file's folder, not the current one.
            data = {**data, "dataset": {**data["dataset"], "file": str((path.parent / Path(file).expanduser())
                                                                       .absolute())}}
    return _spec_from_mapping(data, f"Task file {path}")


def make_env(task: TaskSpec) -> gymnasium.Env:
    """One environment for ``task`` through ``gymnasium.make`` (with gymnasium's default wrappers), inside
    a ``TaskWrapper`` when the task sets ``reward``, ``terminate_on_success`` or ``seed_kwarg``."""
    if (task.reward, task.terminate_on_success, task.seed_kwarg) == ("env", False, None):
        return _make_raw(task, {})
    if task.seed_kwarg is None:
        return TaskWrapper(_make_raw(task, {}), task)
    name = task.seed_kwarg

    def remake(seed: int) -> gymnasium.Env:
        return _make_raw(task, {name: seed})

    try:
        # Seed 0 rather than none: the first env only gives the spaces (every reset re-creates it), and a
        # wrong seed_kwarg name fails here, once, rather than in the middle of a run.
        first = remake(0)
    except TypeError as exc:
        raise BadInput(
            f"Task {task.name!r}: cannot make environment {task.env_id!r} with seed_kwarg {name!r} "
            f"(env_kwargs.{name}=0): {exc}"
        ) from None
    return TaskWrapper(first, task, remake)


def _make_raw(task: TaskSpec, extra_kwargs: dict[str, Any]) -> gymnasium.Env:
    kwargs = dict(task.env_kwargs) | extra_kwargs
    if task.max_episode_steps is not None:
        kwargs["max_episode_steps"] = task.max_episode_steps
    try:
        return gymnasium.make(task.env_id, **kwargs)
    except gymnasium.error.Error as exc:
        # Covers unknown namespaces/names/versions and deprecated ids.
        raise BadInput(f"Task {task.name!r}: cannot make environment {task.env_id!r}: {exc}") from None
    except ModuleNotFoundError as exc:
        raise BadInput(
            f"Task {task.name!r}: environment {task.env_id!r} needs module {exc.name!r}, "
            "which is not installed."
        ) from None
