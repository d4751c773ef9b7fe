"""DSRL-NA online agent: Q^A by TD on executed chunks, Q^W distilled from it, gradients kept apart."""

import torch

from dsrl_cli.agents.dsrl_na_agent import NA_STAT_KEYS, DSRLNAAgent
from dsrl_cli.agents.dsrl_sac_agent import SACConfig
from dsrl_cli.buffers.macro_replay_buffer import MacroBatch
from dsrl_cli.models.action_q_network import ActionQNetwork
from dsrl_cli.models.latent_policy import LatentPolicy
from dsrl_cli.models.latent_q_network import LatentQNetwork


class LinearDecoder:
    """Deterministic, differentiable stand-in for the frozen base policy."""

    def __init__(self) -> None:
        self.weight = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), requires_grad=False)

    def decode_actions(self, obs_cond, w, use_ema=True, head_only=False):
        a = torch.tanh(w + obs_cond[:, :2, None].transpose(1, 2))
        return a[:, :2] if head_only else a


def make_agent():
    torch.manual_seed(0)
    policy = LatentPolicy(3, 2, 4, 2, hidden=16, depth=1)
    q_w = LatentQNetwork(3, 8, hidden=16, depth=1)
    q_a = ActionQNetwork(3, 2, 2, hidden=16, depth=1)
    return DSRLNAAgent(policy, q_w, q_a, LinearDecoder(), SACConfig(batch_size=8))


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(n, 3, generator=g)
    w, a_head = torch.randn(n, 4, 2, generator=g), torch.rand(n, 2, 2, generator=g)
    reward, next_obs = torch.rand(n, generator=g), torch.randn(n, 3, generator=g)
    return MacroBatch(obs, w, a_head, reward, torch.full((n,), 0.9), torch.zeros(n), next_obs)


def grads(module):
    return [p.grad for p in module.parameters()]


def test_distill_loss_trains_only_qw():
    agent = make_agent()
    agent.distill_loss(batch())["loss"].backward()
    assert all(g is None for g in grads(agent.q_a))
    assert all(g is None for g in grads(agent.policy))
    assert any(g is not None for g in grads(agent.q))


def test_action_critic_loss_trains_only_qa():
    agent = make_agent()
    agent.action_critic_loss(batch())["loss"].backward()
    assert all(g is None for g in grads(agent.q))
    assert all(g is None for g in grads(agent.policy))
    assert any(g is not None for g in grads(agent.q_a))


def test_distillation_target_is_min_qa_of_decoded_head():
    agent = make_agent()
    agent.prior_fraction = 1.0
    b = batch()
    torch.manual_seed(3)
    loss = agent.distill_loss(b)["loss"]
    torch.manual_seed(3)
    w = torch.randn(8, 4, 2)
    target = agent.q_a(b.obs_cond, agent.sampler.decode_actions(b.obs_cond, w, head_only=True)).min(dim=0).values
    expected = (agent.q(b.obs_cond, w) - target).pow(2).mean(dim=1).sum()
    torch.testing.assert_close(loss, expected)


def test_update_reports_na_stats_and_moves_qa_towards_target():
    agent = make_agent()
    b = batch()
    first = agent.update(b)
    assert set(first) == set(NA_STAT_KEYS)
    for _ in range(200):
        last = agent.update(b)
    assert last["qa_loss"] < first["qa_loss"]
