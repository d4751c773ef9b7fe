"""Replay of action-space transitions `(obs_cond, a_head, R, discount, done, next_obs_cond)` for Q^A.

Offline dataset chunks are pinned at the front and never overwritten; online executed chunks go into a
preallocated ring after them. Each row also carries the dataset's next chunk head (`next_a_head`) and
`has_next`, so the TD target can use SARSA when the next chunk exists and fall back to a prior action
when it does not (episode truncated inside or right after the chunk). Offline rows whose successor is
unknown (`ChunkData.td_valid` False) are left out: there is nothing to bootstrap from.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from dsrl_cli.errors import BadInput


class ActionBatch(NamedTuple):
    obs_cond: torch.Tensor  # [B, D]
    a_head: torch.Tensor  # [B, Ha, A]
    reward: torch.Tensor  # [B]
    discount: torch.Tensor  # [B]
    done: torch.Tensor  # [B]
    next_obs_cond: torch.Tensor  # [B, D]
    next_a_head: torch.Tensor  # [B, Ha, A], zeros where has_next == 0
    has_next: torch.Tensor  # [B] float, 1 where the dataset has the next chunk


_FIELDS = ActionBatch._fields


class ActionReplayBuffer:
    def __init__(self, capacity: int, obs_cond_dim: int, a_head_shape: tuple[int, int]) -> None:
        if capacity < 1:
            raise BadInput(f"replay capacity must be positive, got {capacity}")
        ha, a = (int(x) for x in a_head_shape)
        self.capacity = int(capacity)
        self.obs_cond_dim = int(obs_cond_dim)
        self.a_head_shape = (ha, a)
        n = self.capacity
        self._data: dict[str, np.ndarray] = {
            "obs_cond": np.zeros((n, obs_cond_dim), np.float32),
            "a_head": np.zeros((n, ha, a), np.float32),
            "reward": np.zeros(n, np.float32),
            "discount": np.zeros(n, np.float32),
            "done": np.zeros(n, np.float32),
            "next_obs_cond": np.zeros((n, obs_cond_dim), np.float32),
            "next_a_head": np.zeros((n, ha, a), np.float32),
            "has_next": np.zeros(n, np.float32),
        }
        self.pinned = 0  # rows [0, pinned) hold offline data and are never overwritten
        self.size = 0
        self._ptr = 0  # next ring slot, in [pinned, capacity)

    def __len__(self) -> int:
        return self.size

    @classmethod
    def from_chunks(cls, chunks: Any, extra_capacity: int = 0) -> ActionReplayBuffer:
        """Build from ChunkData-like arrays; `extra_capacity` rows are left for online `add_batch`.

        Only rows with `td_valid` (when the chunks carry it) are kept; `next_a_head` is linked before
        that, over all rows, so a kept row still sees the next chunk's actions.
        """
        obs = np.asarray(chunks.obs_cond, np.float32)
        a_head = np.asarray(chunks.a_head, np.float32)
        if obs.ndim != 2 or a_head.ndim != 3 or len(obs) != len(a_head) or len(obs) == 0:
            raise BadInput(
                f"chunk arrays have inconsistent shapes: obs_cond {obs.shape}, a_head {a_head.shape}"
            )
        n = len(obs)
        next_index = np.asarray(chunks.next_index, np.int64)
        if next_index.shape != (n,) or (next_index >= n).any():
            raise BadInput("chunk next_index must have one entry per sample, each -1 or a valid index")
        has_next = next_index >= 0
        next_a_head = np.zeros_like(a_head)
        next_a_head[has_next] = a_head[next_index[has_next]]
        keep = np.asarray(getattr(chunks, "td_valid", np.ones(n, bool)), bool)
        if keep.shape != (n,):
            raise BadInput(f"chunk td_valid must have shape ({n},), got {keep.shape}")
        if not keep.any():
            raise BadInput("no dataset chunk has a known successor observation, so there is nothing to TD-learn on")
        rows = dict(obs_cond=obs, a_head=a_head, reward=chunks.reward, discount=chunks.discount, done=chunks.done,
                    next_obs_cond=chunks.next_obs_cond, next_a_head=next_a_head, has_next=has_next)
        rows = {k: np.asarray(v)[keep] for k, v in rows.items()}
        kept = int(keep.sum())
        buf = cls(kept + int(extra_capacity), obs.shape[1], (a_head.shape[1], a_head.shape[2]))
        buf._write(0, rows)
        buf.pinned = buf.size = buf._ptr = kept
        return buf

    def add_batch(
        self,
        obs_cond: np.ndarray,
        a_head: np.ndarray,
        reward: np.ndarray,
        discount: np.ndarray,
        done: np.ndarray,
        next_obs_cond: np.ndarray,
        next_a_head: np.ndarray | None = None,
        has_next: np.ndarray | None = None,
    ) -> None:
        """Append online executed chunks into the ring. The next executed chunk is usually unknown when
        a transition is stored, so by default `has_next = 0` (the TD target then uses a prior action)."""
        ring = self.capacity - self.pinned
        if ring <= 0:
            raise BadInput("replay buffer has no room for online data (built with extra_capacity=0)")
        b = len(obs_cond)
        if next_a_head is None:
            next_a_head = np.zeros((b, *self.a_head_shape), np.float32)
        if has_next is None:
            has_next = np.zeros(b, np.float32)
        rows = dict(obs_cond=obs_cond, a_head=a_head, reward=reward, discount=discount, done=done,
                    next_obs_cond=next_obs_cond, next_a_head=next_a_head, has_next=has_next)
        if b > ring:  # only the newest `ring` rows could survive anyway
            rows = {k: np.asarray(v)[-ring:] for k, v in rows.items()}
            b = ring
        idx = self.pinned + (self._ptr - self.pinned + np.arange(b)) % ring
        self._write(idx, rows)
        self._ptr = int(self.pinned + (self._ptr - self.pinned + b) % ring)
        self.size = min(self.capacity, self.size + b)

    def _write(self, idx: int | np.ndarray, rows: dict[str, Any]) -> None:
        if isinstance(idx, int):
            idx = np.arange(idx, idx + len(rows["obs_cond"]))
        for key in _FIELDS:
            dst = self._data[key]
            src = np.asarray(rows[key], np.float32)
            want = (len(idx), *dst.shape[1:])
            if src.shape != want:
                raise BadInput(f"replay field {key} has shape {src.shape}, expected {want}")
            dst[idx] = src

    def sample(
        self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu"
    ) -> ActionBatch:
        if self.size == 0:
            raise BadInput("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        return ActionBatch(*(torch.as_tensor(self._data[k][idx], device=device) for k in _FIELDS))

    def state_dict(self) -> dict[str, Any]:
        # Plain tensors and ints only, so it loads with torch.load(weights_only=True).
        state: dict[str, Any] = {k: torch.from_numpy(v[: self.size].copy()) for k, v in self._data.items()}
        state.update(capacity=self.capacity, pinned=self.pinned, size=self.size, ptr=self._ptr)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise BadInput(f"replay state has capacity {state['capacity']}, this buffer {self.capacity}")
        size = int(state["size"])
        self._write(0, {k: state[k].numpy() for k in _FIELDS})
        self.pinned, self.size, self._ptr = int(state["pinned"]), size, int(state["ptr"])
