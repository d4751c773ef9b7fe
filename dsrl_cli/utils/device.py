from __future__ import annotations

import torch

from dsrl_cli.errors import BadInput


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput("--device cuda was asked for but no CUDA device is available")
        return torch.device(name)
    raise BadInput(f"unknown device {name!r}; use auto, cpu or cuda")
