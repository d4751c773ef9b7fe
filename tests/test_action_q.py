"""Action critic Q^A: TD target on hand cases, SARSA vs prior next action, and the action replay buffer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dsrl_cli.buffers.action_replay_buffer import ActionBatch, ActionReplayBuffer
from dsrl_cli.errors import BadInput
from dsrl_cli.models.action_q_network import ActionQNetwork, action_q_td_loss

D, HA, A = 3, 2, 2


class StubQ(nn.Module):
    """Online Q = one learnable scalar per (member, row); target Q is a known function of (s', a')."""

    def __init__(self, online: torch.Tensor, target_fn) -> None:
        super().__init__()
        self.online = nn.Parameter(online.clone())
        self.target_fn = target_fn

    def forward(self, obs_cond: torch.Tensor, a_head: torch.Tensor) -> torch.Tensor:
        return self.online

    def target(self, obs_cond: torch.Tensor, a_head: torch.Tensor) -> torch.Tensor:
        return self.target_fn(obs_cond, a_head)


def _batch(b: int, **over: torch.Tensor) -> ActionBatch:
    fields = dict(
        obs_cond=torch.zeros(b, D), a_head=torch.zeros(b, HA, A), reward=torch.zeros(b),
        discount=torch.ones(b), done=torch.zeros(b), next_obs_cond=torch.zeros(b, D),
        next_a_head=torch.zeros(b, HA, A), has_next=torch.ones(b),
    )
    fields.update(over)
    return ActionBatch(**fields)


def test_td_target_hand_case() -> None:
    # Target members disagree; min is taken per row. Row 1 is terminal: no bootstrap at all.
    target_q = torch.tensor([[3.0, 10.0], [5.0, 1.0]])
    q = StubQ(torch.tensor([[4.0, 2.0], [3.0, 0.0]]), lambda s, a: target_q)
    batch = _batch(2, reward=torch.tensor([1.0, 2.0]), discount=torch.tensor([0.9, 0.5]),
                   done=torch.tensor([0.0, 1.0]))
    out = action_q_td_loss(q, batch, batch.next_a_head)
    y = torch.tensor([1.0 + 0.9 * 3.0, 2.0])
    torch.testing.assert_close(out["target_mean"], y.mean())
    expect = ((torch.tensor([4.0, 2.0]) - y) ** 2).mean() + ((torch.tensor([3.0, 0.0]) - y) ** 2).mean()
    torch.testing.assert_close(out["loss"], expect)
    out["loss"].backward()
    # d/dq_ij of sum_i mean_j (q_ij - y_j)^2 = 2 (q_ij - y_j) / B
    torch.testing.assert_close(q.online.grad, (q.online.detach() - y) * 2 / 2)


def test_sarsa_vs_prior_next_action() -> None:
    # Target value = sum of a', so the chosen next action is visible in the target.
    q = StubQ(torch.zeros(2, 3), lambda s, a: a.flatten(1).sum(1).expand(2, -1))
    data_next = torch.stack([torch.full((HA, A), 1.0), torch.zeros(HA, A), torch.full((HA, A), 2.0)])
    prior = torch.full((3, HA, A), -1.0)
    batch = _batch(3, next_a_head=data_next, has_next=torch.tensor([1.0, 0.0, 1.0]),
                   done=torch.tensor([0.0, 0.0, 1.0]))
    n = HA * A
    # SARSA with prior fallback: row 0 dataset's next chunk, row 1 (truncated, no next) the prior,
    # row 2 terminal so nothing bootstraps.
    out = action_q_td_loss(q, batch, batch.next_a_head, fallback_a_head=prior)
    torch.testing.assert_close(out["target_mean"], torch.tensor([1.0 * n, -1.0 * n, 0.0]).mean())
    # Target = prior everywhere.
    out = action_q_td_loss(q, batch, prior)
    torch.testing.assert_close(out["target_mean"], torch.tensor([-1.0 * n, -1.0 * n, 0.0]).mean())
    # Explicit mask overrides has_next.
    out = action_q_td_loss(q, batch, batch.next_a_head, fallback_a_head=prior,
                           fallback_mask=torch.tensor([True, False, False]))
    torch.testing.assert_close(out["target_mean"], torch.tensor([-1.0 * n, 0.0, 0.0]).mean())
    with pytest.raises(BadInput):
        action_q_td_loss(q, batch, prior[:, :1])


def test_action_q_network_trains_online_weights_only() -> None:
    torch.manual_seed(0)
    q = ActionQNetwork(D, HA, A, hidden=32, depth=2)
    assert ActionQNetwork(**q.config).config == q.config
    b = 64
    batch = _batch(b, obs_cond=torch.randn(b, D), a_head=torch.randn(b, HA, A), reward=torch.randn(b),
                   discount=torch.full((b,), 0.9), next_obs_cond=torch.randn(b, D),
                   next_a_head=torch.randn(b, HA, A))
    assert q(batch.obs_cond, batch.a_head).shape == (2, b)
    targets_before = [t.clone() for t in q.target_params()]
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        out = action_q_td_loss(q, batch, batch.next_a_head)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = float(out["loss"].detach()) if first is None else first
    assert float(out["loss"].detach()) < 0.5 * first  # fixed targets: plain regression
    for t, t0 in zip(q.target_params(), targets_before, strict=True):
        torch.testing.assert_close(t, t0)
    q.soft_update(0.5)
    assert any(not torch.equal(t, t0) for t, t0 in zip(q.target_params(), targets_before, strict=True))


# --- replay buffer ---------------------------------------------------------------------------------------


def _chunks(n: int = 5) -> SimpleNamespace:
    a_head = np.arange(n * HA * A, dtype=np.float32).reshape(n, HA, A)
    return SimpleNamespace(
        obs_cond=np.arange(n * D, dtype=np.float32).reshape(n, D), a_head=a_head,
        reward=np.ones(n, np.float32), discount=np.full(n, 0.9, np.float32),
        done=np.array([0, 0, 1, 0, 0], np.float32), next_obs_cond=np.zeros((n, D), np.float32),
        next_index=np.array([1, 2, -1, 4, -1], np.int64),
    )


def test_buffer_from_chunks_links_next_chunk() -> None:
    ch = _chunks()
    buf = ActionReplayBuffer.from_chunks(ch)
    assert len(buf) == 5
    batch = buf.sample(200, np.random.default_rng(0), "cpu")
    assert batch.obs_cond.shape == (200, D) and batch.a_head.shape == (200, HA, A)
    assert batch.obs_cond.dtype == torch.float32
    rows = batch.obs_cond[:, 0].long() // D  # obs_cond row i starts at i * D
    expect_has = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])[rows]
    torch.testing.assert_close(batch.has_next, expect_has)
    nxt = torch.tensor(ch.next_index)[rows]
    a_head = torch.from_numpy(ch.a_head)
    expect_next = torch.where((nxt >= 0).reshape(-1, 1, 1), a_head[nxt.clamp(min=0)], torch.zeros(1))
    torch.testing.assert_close(batch.next_a_head, expect_next)


def test_buffer_ring_keeps_offline_rows() -> None:
    buf = ActionReplayBuffer.from_chunks(_chunks(), extra_capacity=3)
    for step in range(3):  # 3 batches of 2 into a 3-row ring
        obs = np.full((2, D), 100.0 + step, np.float32)
        buf.add_batch(obs, np.zeros((2, HA, A)), np.zeros(2), np.ones(2), np.zeros(2), obs)
    assert len(buf) == 8
    first = buf._data["obs_cond"][:, 0]
    np.testing.assert_array_equal(first[:5], np.arange(5) * D)  # pinned offline data untouched
    assert sorted(first[5:].tolist()) == [101.0, 102.0, 102.0]  # newest 3 online rows
    assert buf._data["has_next"][5:].sum() == 0

    state = buf.state_dict()
    other = ActionReplayBuffer(8, D, (HA, A))
    other.load_state_dict(state)
    assert len(other) == 8 and other.pinned == 5
    np.testing.assert_array_equal(other._data["obs_cond"], buf._data["obs_cond"])

    with pytest.raises(BadInput):
        ActionReplayBuffer.from_chunks(_chunks()).add_batch(obs, np.zeros((2, HA, A)), np.zeros(2),
                                                             np.ones(2), np.zeros(2), obs)
