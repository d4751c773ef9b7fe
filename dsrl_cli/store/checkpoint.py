"""Torch files that never execute code on load: `weights_only=True` and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dsrl_cli.errors import BadInput


def save_torch(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: Path, map_location: str | torch.device = "cpu") -> Any:
    path = Path(path)
    if not path.exists():
        raise BadInput(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling error, truncated file, foreign format
        raise BadInput(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
