"""DSRL SAC agent: hand-computed targets/losses, gradient isolation, Polyak, ensemble pass, learning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsrl_cli.agents.dsrl_sac_agent import STAT_KEYS, DSRLSACAgent, SACConfig
from dsrl_cli.buffers.macro_replay_buffer import MacroBatch, MacroReplayBuffer
from dsrl_cli.models.ensemble_q import EnsembleQ
from dsrl_cli.models.latent_policy import LatentPolicy
from dsrl_cli.models.latent_q_network import LatentQNetwork


def _agent(steer_mode: str = "full", **cfg: float) -> DSRLSACAgent:
    torch.manual_seed(0)
    pol = LatentPolicy(3, 2, 4, 2, steer_mode=steer_mode, hidden=16, depth=1)
    q = LatentQNetwork(3, 8, hidden=16, depth=2)
    return DSRLSACAgent(pol, q, SACConfig(**cfg), device="cpu")


def _batch(b: int = 8) -> MacroBatch:
    g = torch.Generator().manual_seed(1)
    return MacroBatch(
        obs_cond=torch.randn(b, 3, generator=g), w=torch.randn(b, 4, 2, generator=g),
        a_head=torch.randn(b, 2, 2, generator=g), reward=torch.rand(b, generator=g),
        discount=torch.full((b,), 0.9), done=(torch.rand(b, generator=g) < 0.3).float(),
        next_obs_cond=torch.randn(b, 3, generator=g),
    )


def test_hand_computed_target_critic_loss_and_alpha_step(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    pol = LatentPolicy(1, 1, 1, 1, hidden=4, depth=1)
    q = LatentQNetwork(1, 1, hidden=4, depth=1, num_q=2)
    with torch.no_grad():  # Q_1 = 0.5 and Q_2 = 2.0 everywhere: zero output weights, constant biases
        q.weights[-1].zero_()
        q.biases[-1].copy_(torch.tensor([0.5, 2.0]).reshape(2, 1, 1))
    agent = DSRLSACAgent(pol, q, SACConfig(init_alpha=0.1, alpha_lr=0.01), device="cpu")
    assert agent.target_entropy == -0.5

    next_logp = torch.tensor([-1.0, 0.5])
    monkeypatch.setattr(pol, "rsample", lambda obs: (torch.zeros(len(obs), 1, 1), next_logp))
    monkeypatch.setattr(q, "target", lambda obs, w: torch.tensor([[2.0, 3.0], [1.0, 5.0]]))
    batch = MacroBatch(
        obs_cond=torch.zeros(2, 1), w=torch.zeros(2, 1, 1), a_head=torch.zeros(2, 1, 1),
        reward=torch.tensor([1.0, 0.5]), discount=torch.tensor([0.9, 0.81]), done=torch.tensor([0.0, 1.0]),
        next_obs_cond=torch.zeros(2, 1),
    )
    out = agent.critic_loss(batch)
    # min target Q = [1, 3]; V = [1 - 0.1 * -1, 3 - 0.1 * 0.5] = [1.1, 2.95]; y = [1 + 0.9 * 1.1, 0.5 + 0]
    y = torch.tensor([1.99, 0.5])
    torch.testing.assert_close(out["y"], y)
    expected = ((0.5 - y) ** 2).mean() + ((2.0 - y) ** 2).mean()
    torch.testing.assert_close(out["loss"], expected)

    # L_alpha = mean(-alpha (logp + target_entropy)); d/dlog_alpha = -alpha * mean(logp - 0.5) = 0.075
    logp = torch.tensor([-1.0, 0.5])
    loss = agent.alpha_loss(logp)["loss"]
    torch.testing.assert_close(loss, torch.tensor(0.075))
    agent._step(agent.alpha_optim, loss, [agent.log_alpha])
    torch.testing.assert_close(agent.log_alpha.grad, torch.tensor(0.075))
    # Adam's first step is lr * g / (|g| + eps): alpha falls because the entropy is above target.
    torch.testing.assert_close(agent.log_alpha.detach(), torch.tensor(math.log(0.1) - 0.01))


def test_redq_target_subset_and_mean_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    pol = LatentPolicy(1, 1, 1, 1, hidden=4, depth=1)
    q = LatentQNetwork(1, 1, hidden=4, depth=1, num_q=4)
    agent = DSRLSACAgent(pol, q, SACConfig(init_alpha=0.1, target_subset=1), device="cpu")
    monkeypatch.setattr(pol, "rsample", lambda obs: (torch.zeros(len(obs), 1, 1), torch.zeros(len(obs))))
    heads = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    monkeypatch.setattr(q, "target", lambda obs, w: heads)
    monkeypatch.setattr(q, "frozen", lambda obs, w: heads)
    batch = MacroBatch(
        obs_cond=torch.zeros(1, 1), w=torch.zeros(1, 1, 1), a_head=torch.zeros(1, 1, 1), reward=torch.zeros(1),
        discount=torch.ones(1), done=torch.zeros(1), next_obs_cond=torch.zeros(1, 1),
    )
    # A subset of one head: each update's target is that head's value, and over many draws every head appears.
    targets = {float(agent.critic_loss(batch)["y"]) for _ in range(200)}
    assert targets == {1.0, 2.0, 3.0, 4.0}
    # The actor follows the mean of all heads (2.5), not their min.
    torch.testing.assert_close(agent.actor_loss(batch)["loss"], torch.tensor(-2.5))
    with pytest.raises(ValueError, match="target_subset"):
        DSRLSACAgent(pol, q, SACConfig(target_subset=5), device="cpu")


def _grads(params: list[torch.Tensor]) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]


@pytest.mark.parametrize("mode", ["full", "act_horizon"])
def test_gradient_isolation(mode: str) -> None:
    agent = _agent(mode)
    batch = _batch()
    pol_params, q_params = list(agent.policy.parameters()), list(agent.q.parameters())

    agent.critic_loss(batch)["loss"].backward()
    assert not any(p.grad is not None for p in pol_params)
    assert agent.log_alpha.grad is None
    assert any(_grads(q_params))
    for p in q_params:
        p.grad = None

    actor = agent.actor_loss(batch)
    actor["loss"].backward()
    assert not any(p.grad is not None for p in q_params)
    assert agent.log_alpha.grad is None
    assert any(_grads(pol_params))
    for p in pol_params:
        p.grad = None

    agent.alpha_loss(actor["logp"])["loss"].backward()
    assert agent.log_alpha.grad is not None
    assert not any(p.grad is not None for p in pol_params + q_params)


def test_target_params_are_buffers_and_polyak() -> None:
    q = LatentQNetwork(3, 8, hidden=16, depth=2)
    assert not any(t is p for t in q.target_params() for p in q.parameters())
    assert len(list(q.parameters())) == len(q.target_params())
    old = [t.clone() for t in q.target_params()]
    with torch.no_grad():
        for p in q.parameters():
            p.add_(torch.randn_like(p))
    q.soft_update(0.25)
    for t, o, p in zip(q.target_params(), old, q.parameters(), strict=True):
        torch.testing.assert_close(t, 0.25 * p.detach() + 0.75 * o)
    q.hard_update()
    for t, p in zip(q.target_params(), q.parameters(), strict=True):
        torch.testing.assert_close(t, p.detach())
    obs, w = torch.randn(5, 3), torch.randn(5, 4, 2)
    torch.testing.assert_close(q.target(obs, w), q(obs, w).detach())


@pytest.mark.parametrize("batched", [None, True, False])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_ensemble_single_pass_matches_per_head_loop(layer_norm: bool, batched: bool | None) -> None:
    torch.manual_seed(0)
    q = EnsembleQ(3, 6, hidden=8, depth=2, layer_norm=layer_norm, num_q=3)
    q.batched = batched  # None: the device's choice (per head on CPU)
    with torch.no_grad():  # non-trivial LayerNorm affine so it is exercised
        for p in list(q.ln_weights) + list(q.ln_biases):
            p.normal_()
    obs, x = torch.randn(7, 3), torch.randn(7, 6)
    out = q(obs, x)
    assert out.shape == (3, 7)
    for i in range(3):
        h = torch.cat([obs, x], -1)
        for layer in range(3):
            h = F.linear(h, q.weights[layer][i].T, q.biases[layer][i, 0])
            if layer < 2:
                if layer_norm:
                    h = F.layer_norm(h, (8,), q.ln_weights[layer][i, 0], q.ln_biases[layer][i, 0])
                h = F.mish(h)
        torch.testing.assert_close(out[i], h.squeeze(-1))
    torch.testing.assert_close(q.frozen(obs, x), out.detach())


@pytest.mark.parametrize("layer_norm", [True, False])
def test_ensemble_batched_and_per_head_paths_agree_with_gradients(layer_norm: bool) -> None:
    """The two ways to run the heads (baddbmm for all, addmm per head) give the same values and gradients,
    into the parameters and into the input (the actor's path through the frozen critic)."""
    torch.manual_seed(0)
    q = EnsembleQ(3, 6, hidden=8, depth=2, layer_norm=layer_norm, num_q=2)
    with torch.no_grad():
        for p in list(q.ln_weights) + list(q.ln_biases):
            p.normal_()
    obs, x = torch.randn(7, 3), torch.randn(7, 6)
    results = []
    for batched in (True, False):
        q.batched = batched
        xg = x.clone().requires_grad_(True)
        out = q(obs, xg)
        grads = torch.autograd.grad((out * torch.arange(1.0, 3.0)[:, None]).sum(), [xg, *q.parameters()])
        (frozen_grad,) = torch.autograd.grad(q.frozen(obs, xg).sum(), [xg])
        results.append((out.detach(), grads, frozen_grad))
    (o1, g1, f1), (o2, g2, f2) = results
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(f1, f2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_ensemble_path_per_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU default: one addmm per head (no baddbmm); batched=True: one baddbmm per layer for all heads."""
    q = EnsembleQ(3, 6, hidden=8, depth=2, num_q=2)
    obs, x = torch.randn(4, 3), torch.randn(4, 6)
    real = torch.baddbmm
    used: list[int] = []
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: used.append(1) or real(*a, **k))
    assert q.batched is None
    q(obs, x)
    assert not used
    q.batched = True
    q(obs, x)
    assert len(used) == 3


def test_critic_activation_option_round_trips_through_config() -> None:
    q = LatentQNetwork(3, 8, hidden=16, depth=2, activation="relu")
    assert q.config["activation"] == "relu"
    clone = LatentQNetwork(**q.config)
    clone.load_state_dict(q.state_dict())
    obs, w = torch.randn(5, 3), torch.randn(5, 4, 2)
    torch.testing.assert_close(clone(obs, w), q(obs, w))
    with torch.no_grad():  # head 0 by hand: Linear -> LayerNorm -> ReLU twice, then the output layer
        h = torch.cat([obs, w.reshape(5, -1)], -1)
        for i in range(3):
            h = h @ q.weights[i][0] + q.biases[i][0]
            if i < 2:
                h = F.relu(F.layer_norm(h, (16,), q.ln_weights[i][0, 0], q.ln_biases[i][0, 0]))
        torch.testing.assert_close(q(obs, w)[0], h.squeeze(-1))
    assert "activation" not in LatentQNetwork(3, 8).config  # the default leaves stored configs as they were
    with pytest.raises(ValueError, match="activation"):
        LatentQNetwork(3, 8, activation="tanh")


def test_optimizers_use_the_fused_adam_kernel_on_cpu() -> None:
    agent = _agent()
    assert all(o.defaults["fused"] for o in (agent.critic_optim, agent.actor_optim, agent.alpha_optim))


def test_update_many_draws_all_batches_at_once_and_equals_single_updates() -> None:
    buf = MacroReplayBuffer(64, 3, (4, 2), (2, 2))
    buf.add_batch(*_batch(40))
    calls = []
    sample_many = buf.sample_many

    def counting(*args: object, **kwargs: object) -> list[MacroBatch]:
        calls.append(args)
        return sample_many(*args, **kwargs)

    buf.sample_many = counting  # type: ignore[method-assign]
    a, b = _agent(), _agent()
    torch.manual_seed(7)
    stats = a.update_many(buf, 4, np.random.default_rng(3))
    assert len(calls) == 1 and calls[0][:2] == (4, a.config.batch_size)
    torch.manual_seed(7)
    singles = [b.update(batch) for batch in sample_many(4, b.config.batch_size, np.random.default_rng(3))]
    for key in STAT_KEYS:
        assert stats[key] == pytest.approx(np.mean([s[key] for s in singles]), rel=1e-5)
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_update_stats_polyak_and_state_round_trip(tmp_path: Path) -> None:
    agent = _agent("act_horizon", tau=0.5, actor_update_every=2, grad_clip=1.0)
    buf = MacroReplayBuffer(64, 3, (4, 2), (2, 2))
    b = _batch(40)
    buf.add_batch(*b)
    before = [t.clone() for t in agent.q.target_params()]
    stats = agent.update(agent_batch := buf.sample(16, np.random.default_rng(0)))
    assert set(stats) == set(STAT_KEYS) and all(math.isfinite(v) for v in stats.values())
    assert stats["alpha"] == pytest.approx(agent.config.init_alpha)
    # target moved halfway towards the (updated) online weights
    for t, o, p in zip(agent.q.target_params(), before, agent.q.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * p.detach() + 0.5 * o)
    stats2 = agent.update(agent_batch)  # actor skipped: actor stats re-reported
    assert stats2["actor_loss"] == stats["actor_loss"] and stats2["critic_loss"] != stats["critic_loss"]

    path = tmp_path / "agent.pt"
    torch.save(agent.state_dict(), path)
    clone = _agent("act_horizon", tau=0.5, actor_update_every=2, grad_clip=1.0)
    clone.load_state_dict(torch.load(path, weights_only=True))
    torch.manual_seed(5)
    s_a = agent.update_many(buf, 3, np.random.default_rng(2))
    torch.manual_seed(5)
    s_b = clone.update_many(buf, 3, np.random.default_rng(2))
    assert s_a == s_b and set(s_a) == set(STAT_KEYS)
    w = agent.act(torch.randn(2, 3), deterministic=True)
    assert w.shape == (2, 4, 2)


def test_learns_contextual_bandit() -> None:
    """Context one-hot c in {0, 1}; reward 1 iff sign(w) is + for c=0 and - for c=1; one-step episodes."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pol = LatentPolicy(2, 1, 1, 1, hidden=32, depth=2)
    q = LatentQNetwork(2, 1, hidden=32, depth=2)
    agent = DSRLSACAgent(pol, q, SACConfig(batch_size=64, actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3),
                         device="cpu")
    n = 1024
    ctx = rng.integers(0, 2, n)
    w = rng.uniform(-1.5, 1.5, (n, 1, 1)).astype(np.float32)
    good_sign = np.where(ctx == 0, 1.0, -1.0)
    reward = (np.sign(w[:, 0, 0]) == good_sign).astype(np.float32)
    obs = np.eye(2, dtype=np.float32)[ctx]
    buf = MacroReplayBuffer(n, 2, (1, 1), (1, 1))
    buf.add_batch(obs, w, w, reward, np.zeros(n), np.ones(n), obs)

    stats = agent.update_many(buf, 300, rng)
    mean_w = agent.act(torch.eye(2), deterministic=True).reshape(-1)
    assert mean_w[0] > 0.2 and mean_w[1] < -0.2, (mean_w, stats)
    assert 0.0 < stats["q_mean"] < 1.2
