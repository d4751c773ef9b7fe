"""Stage configuration: frozen dataclasses resolved from defaults, a YAML file, CLI options and `--set`.

Precedence (later wins): dataclass defaults < task defaults < `--config FILE.yaml` < explicit CLI options
< `--set key=value`. A field whose metadata says `cosmetic=True` (device, checkpoint intervals) does not
enter the artifact hash, so changing it never invalidates a cached result; it must then leave every
stored byte identical (tests/test_cache_keys.py checks each one).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dsrl_cli.errors import BadInput

T = TypeVar("T")


def cosmetic(default: Any) -> Any:
    """A config field that does not change the result (excluded from the artifact key)."""
    return dataclasses.field(default=default, metadata={"cosmetic": True})


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BadInput(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"config file {path} must hold a mapping at the top level")
    return data


def parse_set_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are parsed as YAML scalars (so `3`, `1e-4`, `true` work)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise BadInput(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise BadInput(f"--set expects key=value, got {item!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise BadInput(f"--set {item!r}: cannot parse the value") from exc
    return out


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def build_config(
    cls: type[T],
    *layers: Mapping[str, Any] | None,
    section: str | None = None,
) -> T:
    """Merge layers (later wins) into `cls`, rejecting unknown keys and coercing types.

    A YAML layer may hold the stage's keys flat or under a top-level `section` key (e.g. `online:`).
    """
    names = field_names(cls)
    merged: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        layer = dict(layer)
        if section and isinstance(layer.get(section), dict):
            nested = layer.pop(section)
            layer = {k: v for k, v in layer.items() if k in names} | nested
        for key, value in layer.items():
            key = key.replace("-", "_")
            if key not in names:
                known = ", ".join(sorted(names))
                raise BadInput(f"unknown option {key!r} for {section or cls.__name__}; known: {known}")
            merged[key] = value
    hints = typing.get_type_hints(cls)
    for key, value in list(merged.items()):
        merged[key] = _coerce(key, value, hints[key])
    try:
        cfg = cls(**merged)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"invalid {section or cls.__name__} configuration: {exc}") from exc
    check_values(cfg)
    return cfg


MAX_SEED = 2**32 - 1  # numpy's legacy seeding range; torch and gymnasium accept it too


def check_values(cfg: Any) -> None:
    """Checks every stage config shares, before any work: numbers are finite, the seed is in range.

    NaN slips through range checks (`nan <= 0` is False) and inf through most, and either produces a
    diverged run after minutes of work, so no float field may hold them. Stage `validate()` functions call
    this too (configs built in Python never pass through `build_config`).
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(f"{f.name} must be a finite number, got {value}")
        if f.name == "seed" and isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise BadInput(f"--seed must be in [0, {MAX_SEED}], got {value}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        # YAML reads `null` as None; users also write `none` (`--set actor_std=none`).
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except BadInput as exc:
                errors.append(exc)
        raise errors[0] if errors else BadInput(f"option {key!r}: bad value {value!r}")
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise BadInput(f"option {key!r} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise BadInput(f"option {key!r} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise BadInput(f"option {key!r} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise BadInput(f"option {key!r} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise BadInput(f"option {key!r} must be an integer, got {value!r}")
        return int(as_float)
    if hint is float:
        if isinstance(value, bool):
            raise BadInput(f"option {key!r} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BadInput(f"option {key!r} must be a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise BadInput(f"option {key!r} must be a string, got {value!r}")
        return str(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise BadInput(f"option {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"option {key!r} must be a list, got {value!r}")
        return tuple(value) if (origin is tuple or hint is tuple) else list(value)
    return value


def hashed_config(cfg: Any) -> dict[str, Any]:
    """The part of a config that decides the result: every field not marked cosmetic."""
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if not f.metadata.get("cosmetic", False)
    }


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def require_positive(**values: float | int | None) -> None:
    """One clear line for the first non-positive (or NaN) option (checked before any work starts)."""
    for name, value in values.items():
        if value is not None and not value > 0:  # `not > 0`, not `<= 0`: NaN fails every comparison
            raise BadInput(f"--{name.replace('_', '-')} must be positive, got {value}")
