"""Ring replay buffer of macro-step transitions `(obs_cond, w, a_head, R, discount, done, next_obs_cond)`.

Storage is preallocated float32 numpy, one array per field (cheap appends from the env side, exactly the
transition's own bytes; `np.zeros` maps pages lazily, so unfilled capacity costs no resident memory).
`sample` / `sample_many` return torch tensors on the requested device. `a_head` is stored next to `w` so the
same buffer can also train `Q^A` (DSRL-NA).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from dsrl_cli.errors import DsrlError

_FIELDS = ("obs_cond", "w", "a_head", "reward", "discount", "done", "next_obs_cond")


class MacroBatch(NamedTuple):
    obs_cond: torch.Tensor  # [B, D]
    w: torch.Tensor  # [B, H, A]
    a_head: torch.Tensor  # [B, Ha, A]
    reward: torch.Tensor  # [B]  sum_{i<k} gamma^i r_i
    discount: torch.Tensor  # [B]  gamma^k
    done: torch.Tensor  # [B]  1.0 on a true terminal only (truncation bootstraps)
    next_obs_cond: torch.Tensor  # [B, D]


ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class MacroReplayBuffer:
    def __init__(self, capacity: int, obs_cond_dim: int, w_shape: tuple[int, ...],
                 a_head_shape: tuple[int, ...]) -> None:
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.obs_cond_dim = int(obs_cond_dim)
        self.w_shape = tuple(int(s) for s in w_shape)
        self.a_head_shape = tuple(int(s) for s in a_head_shape)
        self._shapes: dict[str, tuple[int, ...]] = {
            "obs_cond": (self.obs_cond_dim,),
            "w": self.w_shape,
            "a_head": self.a_head_shape,
            "reward": (),
            "discount": (),
            "done": (),
            "next_obs_cond": (self.obs_cond_dim,),
        }
        self._data: dict[str, np.ndarray] = {
            name: np.zeros((self.capacity, *shape), dtype=np.float32) for name, shape in self._shapes.items()
        }
        self._ptr = 0  # next slot to write
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add_batch(self, obs_cond: ArrayLike, w: ArrayLike, a_head: ArrayLike, reward: ArrayLike,
                  discount: ArrayLike, done: ArrayLike, next_obs_cond: ArrayLike) -> None:
        values = dict(zip(_FIELDS, (obs_cond, w, a_head, reward, discount, done, next_obs_cond), strict=True))
        arrays = {name: _as_numpy(v) for name, v in values.items()}
        n = arrays["reward"].reshape(-1).shape[0]
        for name, arr in arrays.items():
            shape = self._shapes[name]
            try:
                arrays[name] = arr.reshape(n, *shape)
            except ValueError:
                expected = (n, *shape)
                msg = f"replay add_batch: {name} has shape {arr.shape}, expected {expected}"
                raise DsrlError(msg) from None
        if n == 0:
            return
        # Writing n items in order is equivalent to writing only the last `capacity` of them; those land on
        # `capacity` distinct consecutive slots, so one fancy-indexed assignment handles the wrap-around.
        start = max(0, n - self.capacity)
        idx = (self._ptr + np.arange(start, n)) % self.capacity
        for name, arr in arrays.items():
            self._data[name][idx] = arr[start:]
        self._ptr = (self._ptr + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator,
               device: torch.device | str = "cpu") -> MacroBatch:
        return self.sample_many(1, batch_size, rng, device)[0]

    def sample_many(self, num_batches: int, batch_size: int, rng: np.random.Generator,
                    device: torch.device | str = "cpu") -> list[MacroBatch]:
        """`num_batches` independent uniform batches, gathered (and moved to `device`) in one go.

        One gather per field for all batches; on CUDA they are gathered into one pinned staging block and
        sent in one asynchronous copy, so a run of updates neither waits on nor pays for per-batch transfers.
        """
        if self._size == 0:
            raise DsrlError("cannot sample from an empty replay buffer")
        n = num_batches * batch_size
        idx = rng.integers(0, self._size, size=n)
        device = torch.device(device)
        if device.type == "cpu":
            fields = [torch.from_numpy(self._data[name][idx]) for name in _FIELDS]
        else:
            fields = self._gather_packed(idx, device, pin=device.type == "cuda")
        return [MacroBatch(*parts) for parts in zip(*(f.split(batch_size) for f in fields), strict=True)]

    def _gather_packed(self, idx: np.ndarray, device: torch.device, pin: bool) -> list[torch.Tensor]:
        """Rows `idx` of every field packed side by side in one (pinned) host block, sent in one copy."""
        n = len(idx)
        widths = [int(np.prod(self._shapes[name], dtype=np.int64)) for name in _FIELDS]
        # torch's pinned-memory cache keeps a block from being reused until its async copy is done.
        staging = torch.empty((n, sum(widths)), dtype=torch.float32, pin_memory=pin)
        np.concatenate([self._data[name][idx].reshape(n, -1) for name in _FIELDS], axis=1, out=staging.numpy())
        flat = staging.to(device, non_blocking=pin).split(widths, dim=1)
        return [f.reshape(n, *self._shapes[name]) for f, name in zip(flat, _FIELDS, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        """The filled rows, without copying them: each tensor shares memory with the buffer (so a checkpoint
        of a large buffer does not double its resident memory); save it before adding more transitions.
        `torch.from_numpy` of a numpy slice owns exactly the filled rows, so torch.save writes only those."""
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "ptr": self._ptr,
            "size": self._size,
        }
        for name in _FIELDS:
            state[name] = torch.from_numpy(self._data[name][: self._size])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise DsrlError(
                f"replay state has capacity {state['capacity']} but this buffer has {self.capacity}"
            )
        size = int(state["size"])
        for name in _FIELDS:
            arr = state[name]
            arr = arr.cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
            expected = (size, *self._shapes[name])
            if arr.shape != expected:
                raise DsrlError(f"replay state field {name} has shape {arr.shape}, expected {expected}")
        # Validate everything before mutating so a bad state leaves the buffer untouched.
        for name in _FIELDS:
            arr = state[name]
            arr = arr.cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
            # Rows at or past the old size were never written (zero, and not resident): leave them be.
            self._data[name][size : max(size, self._size)] = 0.0
            self._data[name][:size] = arr
        self._ptr = int(state["ptr"])
        self._size = size
