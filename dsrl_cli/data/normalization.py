"""Dataset normalization: observations by mean/std, actions by min/max to [-1, 1].

Every array is float32. Methods accept numpy arrays or torch tensors with any leading dims and return
the same kind; torch copies of the statistics are cached per (device, dtype) so hot loops do not
re-upload them each call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from dsrl_cli.errors import BadInput

if TYPE_CHECKING:
    from dsrl_cli.data.dataset import Episode

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Absolute floor for an observation's std; scaled up with |mean| so a constant large feature is not
# blown up by float32 rounding noise.
OBS_STD_FLOOR = 1e-3
# A constant action dimension is widened to this half-width around its value so normalization stays
# finite; small, so decoded actions stay next to what the data did.
ACT_MIN_HALF_RANGE = 1e-3
_ACT_RANGE_EPS = 1e-6
_FIELDS = ("obs_mean", "obs_std", "act_min", "act_max")


@dataclass(frozen=True, eq=False)
class Normalizer:
    obs_mean: np.ndarray
    obs_std: np.ndarray
    act_min: np.ndarray
    act_max: np.ndarray
    # Torch copies of the four arrays keyed by (device, dtype); not part of the value.
    _torch_cache: dict[tuple[str, torch.dtype], tuple[torch.Tensor, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in _FIELDS:
            arr = np.asarray(getattr(self, name), dtype=np.float32)
            if arr.ndim != 1:
                raise BadInput(f"normalizer field {name} must be 1-D but has shape {arr.shape}.")
            if not np.all(np.isfinite(arr)):
                raise BadInput(f"normalizer field {name} contains NaN or inf.")
            # Own, read-only copies: the dataclass is frozen and the arrays should be too.
            arr = arr.copy()
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if self.obs_mean.shape != self.obs_std.shape:
            raise BadInput(
                f"normalizer obs_mean {self.obs_mean.shape} and obs_std {self.obs_std.shape} differ in shape."
            )
        if self.act_min.shape != self.act_max.shape:
            raise BadInput(
                f"normalizer act_min {self.act_min.shape} and act_max {self.act_max.shape} differ in shape."
            )
        if np.any(self.obs_std <= 0):
            raise BadInput("normalizer obs_std must be positive in every dimension.")
        if np.any(self.act_max - self.act_min <= 0):
            raise BadInput("normalizer act_max must exceed act_min in every dimension.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, episodes: Sequence[Episode]) -> Normalizer:
        """Statistics over all steps of all episodes (float64 accumulation, float32 result)."""
        if len(episodes) == 0:
            raise BadInput("cannot fit a normalizer on an empty list of episodes.")
        obs = np.concatenate([np.asarray(ep.obs, dtype=np.float64) for ep in episodes], axis=0)
        act = np.concatenate([np.asarray(ep.actions, dtype=np.float64) for ep in episodes], axis=0)
        if obs.shape[0] == 0 or act.shape[0] == 0:
            raise BadInput("cannot fit a normalizer on episodes with no steps.")
        mean = obs.mean(axis=0)
        std = obs.std(axis=0)
        std = np.maximum(std, OBS_STD_FLOOR * np.maximum(1.0, np.abs(mean)))
        lo = act.min(axis=0)
        hi = act.max(axis=0)
        flat = (hi - lo) < _ACT_RANGE_EPS
        center = 0.5 * (hi + lo)
        lo = np.where(flat, center - ACT_MIN_HALF_RANGE, lo)
        hi = np.where(flat, center + ACT_MIN_HALF_RANGE, hi)
        return cls(obs_mean=mean, obs_std=std, act_min=lo, act_max=hi)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists of Python floats: loadable with `torch.load(weights_only=True)` and JSON."""
        return {name: [float(v) for v in getattr(self, name)] for name in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        if not isinstance(d, dict):
            raise BadInput(f"normalizer data must be a dict but is a {type(d).__name__}.")
        missing = [name for name in _FIELDS if name not in d]
        if missing:
            raise BadInput(f"normalizer data is missing the field(s) {', '.join(missing)}.")
        arrays: dict[str, np.ndarray] = {}
        for name in _FIELDS:
            value = d[name]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            arrays[name] = np.asarray(value, dtype=np.float32)
        return cls(**arrays)

    # ------------------------------------------------------------------ properties
    @property
    def obs_dim(self) -> int:
        return int(self.obs_mean.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.act_min.shape[0])

    # ------------------------------------------------------------------ transforms
    def normalize_obs(self, x: ArrayT) -> ArrayT:
        self._check_last_dim(x, self.obs_dim, "observation")
        if isinstance(x, torch.Tensor):
            mean, std, _, _ = self._torch_stats(x)
            return (x.to(mean.dtype) - mean) / std
        return ((np.asarray(x, dtype=np.float32) - self.obs_mean) / self.obs_std).astype(np.float32)

    def unnormalize_obs(self, x: ArrayT) -> ArrayT:
        self._check_last_dim(x, self.obs_dim, "observation")
        if isinstance(x, torch.Tensor):
            mean, std, _, _ = self._torch_stats(x)
            return x.to(mean.dtype) * std + mean
        return (np.asarray(x, dtype=np.float32) * self.obs_std + self.obs_mean).astype(np.float32)

    def normalize_action(self, a: ArrayT) -> ArrayT:
        """Maps [act_min, act_max] to [-1, 1]; not clipped so out-of-range data stays visible."""
        self._check_last_dim(a, self.act_dim, "action")
        if isinstance(a, torch.Tensor):
            _, _, lo, hi = self._torch_stats(a)
            return 2.0 * (a.to(lo.dtype) - lo) / (hi - lo) - 1.0
        a_np = np.asarray(a, dtype=np.float32)
        return (2.0 * (a_np - self.act_min) / (self.act_max - self.act_min) - 1.0).astype(np.float32)

    def unnormalize_action(self, a: ArrayT) -> ArrayT:
        """Clips to [-1, 1] first, so the result always lies within the dataset's [act_min, act_max]."""
        self._check_last_dim(a, self.act_dim, "action")
        if isinstance(a, torch.Tensor):
            _, _, lo, hi = self._torch_stats(a)
            return (a.to(lo.dtype).clamp(-1.0, 1.0) + 1.0) * 0.5 * (hi - lo) + lo
        a_np = np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)
        return ((a_np + 1.0) * 0.5 * (self.act_max - self.act_min) + self.act_min).astype(np.float32)

    # ------------------------------------------------------------------ helpers
    def _torch_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Integer inputs are computed in float32; float inputs keep their precision.
        dtype = like.dtype if like.is_floating_point() else torch.float32
        key = (str(like.device), dtype)
        cached = self._torch_cache.get(key)
        if cached is None:
            cached = tuple(
                torch.as_tensor(np.array(getattr(self, name)), dtype=dtype, device=like.device)
                for name in _FIELDS
            )
            self._torch_cache[key] = cached
        return cached

    @staticmethod
    def _check_last_dim(x: np.ndarray | torch.Tensor, dim: int, what: str) -> None:
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        if len(shape) == 0 or shape[-1] != dim:
            raise BadInput(f"{what} of shape {shape} does not end in the normalizer's dimension {dim}.")
