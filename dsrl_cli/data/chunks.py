"""Offline macro-step transitions cut from dataset episodes (one per time step, never across episodes).

For a sample at step t of an episode of length T, with k = min(Ha, T - t) executed steps:
- `obs_cond`: normalized obs[t-n+1 .. t] flattened (before the start: obs[0] repeated, as the env does);
- `a_seq`: normalized actions[t .. t+H-1], past the end: the last action repeated; `a_head = a_seq[:Ha]`;
- `reward = sum_{i<k} gamma^i r[t+i]`, `discount = gamma^k`,
  `done = 1` iff the episode terminated and t + k == T (a truncated end bootstraps);
- `next_obs_cond`: history after the last executed step e = t+k-1, i.e. obs[e-n+2 .. e] then next_obs[e];
- `next_index`: global index of the sample at t + k of the same episode, -1 when t + k == T;
- `td_valid`: False where the window ends at the last step of a truncated episode whose successor is
  unknown (`Episode.last_next_obs_known`), so `next_obs_cond` holds a placeholder. Behaviour cloning and
  aliasing use every row; anything that bootstraps from `next_obs_cond` must keep only `td_valid` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dsrl_cli.data.dataset import Episode
from dsrl_cli.data.normalization import Normalizer
from dsrl_cli.errors import BadInput


@dataclass
class ChunkData:
    obs_cond: np.ndarray  # [N, n*d] float32
    a_seq: np.ndarray  # [N, H, A] float32
    a_head: np.ndarray  # [N, Ha, A] float32
    reward: np.ndarray  # [N] float32
    discount: np.ndarray  # [N] float32
    done: np.ndarray  # [N] float32
    next_obs_cond: np.ndarray  # [N, n*d] float32
    steps: np.ndarray  # [N] int64 (k)
    next_index: np.ndarray  # [N] int64, -1 when the episode ended inside the chunk
    td_valid: np.ndarray  # [N] bool, False where next_obs_cond is an unknown successor (no bootstrapping)

    def __len__(self) -> int:
        return int(self.reward.shape[0])


def _check_params(n_obs_steps: int, pred_horizon: int, act_horizon: int, gamma: float) -> None:
    if n_obs_steps < 1:
        raise BadInput(f"n_obs_steps must be at least 1 but is {n_obs_steps}.")
    if pred_horizon < 1:
        raise BadInput(f"pred_horizon must be at least 1 but is {pred_horizon}.")
    if not 1 <= act_horizon <= pred_horizon:
        raise BadInput(
            f"act_horizon must be between 1 and pred_horizon ({pred_horizon}) but is {act_horizon}."
        )
    if not 0.0 < gamma <= 1.0:
        raise BadInput(f"gamma must be in (0, 1] but is {gamma}.")


def _episode_chunks(
    ep: Episode,
    normalizer: Normalizer,
    offset: int,
    n: int,
    H: int,
    Ha: int,
    gamma: float,
) -> ChunkData:
    T = len(ep)
    obs = normalizer.normalize_obs(ep.obs)  # [T, d]
    next_obs = normalizer.normalize_obs(ep.next_obs)  # [T, d]
    act = normalizer.normalize_action(ep.actions)  # [T, A]
    t = np.arange(T)

    # History at t: indices t-n+1..t, clipped at 0 so the start repeats obs[0].
    hist_idx = np.maximum(t[:, None] + np.arange(-n + 1, 1)[None, :], 0)  # [T, n]
    obs_cond = obs[hist_idx].reshape(T, -1)

    # Action chunk: indices t..t+H-1, clipped at T-1 so the end repeats the last action.
    seq_idx = np.minimum(t[:, None] + np.arange(H)[None, :], T - 1)  # [T, H]
    a_seq = act[seq_idx]  # [T, H, A]

    k = np.minimum(Ha, T - t)  # [T]
    i = np.arange(Ha)
    valid = i[None, :] < k[:, None]  # [T, Ha]
    r_idx = np.minimum(t[:, None] + i[None, :], T - 1)
    # float64 accumulation; the mask keeps clipped indices from adding rewards past the end.
    rewards = ep.rewards.astype(np.float64)[r_idx] * valid
    reward = (rewards * gamma ** i[None, :].astype(np.float64)).sum(axis=1)
    discount = np.power(np.float64(gamma), k)
    end = t + k  # [T], index of the next decision step
    done = (end == T) & ep.terminated

    # Next history: obs at e-n+2..e (clipped at 0), then next_obs[e], with e = t+k-1 the last executed step.
    e = end - 1
    if n > 1:
        prev_idx = np.maximum(e[:, None] + np.arange(-n + 2, 1)[None, :], 0)  # [T, n-1]
        next_hist = np.concatenate([obs[prev_idx], next_obs[e][:, None, :]], axis=1)
    else:
        next_hist = next_obs[e][:, None, :]
    next_obs_cond = next_hist.reshape(T, -1)
    next_index = np.where(end < T, offset + end, -1)
    td_valid = ~((end == T) & ep.unknown_successor)

    return ChunkData(
        obs_cond=obs_cond.astype(np.float32),
        a_seq=a_seq.astype(np.float32),
        a_head=a_seq[:, :Ha].astype(np.float32),
        reward=reward.astype(np.float32),
        discount=discount.astype(np.float32),
        done=done.astype(np.float32),
        next_obs_cond=next_obs_cond.astype(np.float32),
        steps=k.astype(np.int64),
        next_index=next_index.astype(np.int64),
        td_valid=td_valid.astype(bool),
    )


def build_chunks(
    episodes: Sequence[Episode],
    normalizer: Normalizer,
    n_obs_steps: int,
    pred_horizon: int,
    act_horizon: int,
    gamma: float,
) -> ChunkData:
    """All chunk transitions of all episodes, episode after episode in the given order."""
    _check_params(n_obs_steps, pred_horizon, act_horizon, gamma)
    if len(episodes) == 0:
        raise BadInput("cannot build chunks from an empty list of episodes.")
    parts: list[ChunkData] = []
    offset = 0
    for idx, ep in enumerate(episodes):
        if len(ep) == 0:
            raise BadInput(f"episode {idx} has no steps, so no chunks can be cut from it.")
        parts.append(_episode_chunks(ep, normalizer, offset, n_obs_steps, pred_horizon, act_horizon, gamma))
        offset += len(ep)
    return ChunkData(
        obs_cond=np.concatenate([p.obs_cond for p in parts]),
        a_seq=np.concatenate([p.a_seq for p in parts]),
        a_head=np.concatenate([p.a_head for p in parts]),
        reward=np.concatenate([p.reward for p in parts]),
        discount=np.concatenate([p.discount for p in parts]),
        done=np.concatenate([p.done for p in parts]),
        next_obs_cond=np.concatenate([p.next_obs_cond for p in parts]),
        steps=np.concatenate([p.steps for p in parts]),
        next_index=np.concatenate([p.next_index for p in parts]),
        td_valid=np.concatenate([p.td_valid for p in parts]),
    )
