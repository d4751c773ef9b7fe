"""LatentPolicy: densities consistent with samples, bounds, act_horizon tail, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from dsrl_cli.models.latent_policy import LatentPolicy


def _policy(steer_mode: str = "full", **kw: float) -> LatentPolicy:
    torch.manual_seed(0)
    return LatentPolicy(obs_cond_dim=3, act_dim=2, pred_horizon=4, act_horizon=2, steer_mode=steer_mode,
                        hidden=16, depth=1, **kw)


@pytest.mark.parametrize("mode", ["full", "act_horizon"])
def test_log_prob_matches_sample_and_rsample(mode: str) -> None:
    pol = _policy(mode)
    obs = torch.randn(64, 3)
    w, logp = pol.sample(obs, generator=torch.Generator().manual_seed(1))
    assert w.shape == (64, 4, 2) and logp.shape == (64,)
    torch.testing.assert_close(pol.log_prob(obs, w), logp, atol=1e-3, rtol=1e-4)
    w_r, logp_r = pol.rsample(obs)
    assert logp_r.requires_grad
    torch.testing.assert_close(pol.log_prob(obs, w_r).detach(), logp_r.detach(), atol=1e-3, rtol=1e-4)


def test_density_1d_integrates_to_one_and_matches_histogram() -> None:
    torch.manual_seed(0)
    pol = LatentPolicy(obs_cond_dim=1, act_dim=1, pred_horizon=1, act_horizon=1, hidden=8, depth=1,
                       noise_scale=1.5)
    last = pol.net[-1]
    with torch.no_grad():  # fixed mu = 0.3, log_std = 0 (sigma = 1) whatever the input
        last.weight.zero_()
        # log_std = -5 + 7 * (tanh(raw) + 1) / 2 = 0  =>  tanh(raw) = 2 * 5/7 - 1
        last.bias.copy_(torch.tensor([0.3, math.atanh(2 * 5 / 7 - 1)]))
    obs = torch.zeros(1, 1)
    _, log_std = pol._dist_params(obs)
    assert abs(log_std.item()) < 1e-5

    edges = torch.linspace(-1.5, 1.5, 4001, dtype=torch.float64)[1:-1]
    grid = edges.float().reshape(-1, 1, 1)
    dens = pol.log_prob(obs.expand(len(grid), 1), grid).detach().double().exp()
    total = torch.trapezoid(dens, edges).item()
    assert abs(total - 1.0) < 2e-3

    # Histogram of samples vs the density's mass per bin.
    w, _ = pol.sample(obs.expand(40000, 1), generator=torch.Generator().manual_seed(0))
    w = w.reshape(-1)
    bins = torch.linspace(-1.5, 1.5, 7)
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        frac = ((w >= lo) & (w < hi)).float().mean().item()
        mask = (edges >= lo) & (edges < hi)
        mass = torch.trapezoid(dens[mask], edges[mask]).item()
        assert abs(frac - mass) < 0.015, (lo.item(), frac, mass)


def test_samples_bounded_by_noise_scale() -> None:
    pol = _policy("full", noise_scale=0.7, log_std_max=3.0)
    with torch.no_grad():
        pol.net[-1].bias.add_(3.0)  # wide sigma: many samples pushed to the bounds
    w, logp = pol.sample(torch.randn(256, 3))
    assert w.abs().max().item() <= 0.7
    assert torch.isfinite(logp).all()
    assert pol.steered_dim == 8


def test_act_horizon_tail_is_prior_and_ignored_by_logp() -> None:
    pol = _policy("act_horizon", noise_scale=1.5)
    assert pol.steered_dim == 2 * 2
    obs = torch.randn(4000, 3)
    w, logp = pol.sample(obs, generator=torch.Generator().manual_seed(3))
    assert w[:, :2].abs().max().item() <= 1.5
    tail = w[:, 2:]
    assert abs(tail.mean().item()) < 0.05
    assert abs(tail.std().item() - 1.0) < 0.05
    assert tail.abs().max().item() > 1.5  # genuinely unbounded prior noise, not squashed
    w2 = w.clone()
    w2[:, 2:] = torch.randn_like(w2[:, 2:]) * 5
    torch.testing.assert_close(pol.log_prob(obs, w2), pol.log_prob(obs, w))
    torch.testing.assert_close(pol.log_prob(obs, w), logp, atol=1e-3, rtol=1e-4)
    w_r, _ = pol.rsample(obs[:8])
    assert w_r.shape == (8, 4, 2)


def test_mean_action_and_generator_are_deterministic() -> None:
    pol = _policy("act_horizon")
    obs = torch.randn(5, 3)
    m1 = pol.mean_action(obs, generator=torch.Generator().manual_seed(3))
    m2 = pol.mean_action(obs, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(m1, m2)
    mu, _ = pol._dist_params(obs)
    torch.testing.assert_close(m1[:, :2].reshape(5, -1), 1.5 * torch.tanh(mu))
    a, _ = pol.sample(obs, generator=torch.Generator().manual_seed(7))
    b, _ = pol.sample(obs, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_bad_steer_mode_and_config_rebuild() -> None:
    with pytest.raises(ValueError):
        LatentPolicy(3, 2, 4, 2, steer_mode="half")
    pol = _policy("act_horizon")
    clone = LatentPolicy(**pol.config)
    clone.load_state_dict(pol.state_dict())
    obs = torch.randn(2, 3)
    torch.testing.assert_close(clone.mean_action(obs, torch.Generator().manual_seed(0)),
                               pol.mean_action(obs, torch.Generator().manual_seed(0)))


def test_set_constant_std_keeps_the_mean() -> None:
    torch.manual_seed(0)
    pol = LatentPolicy(3, 2, 4, 2, steer_mode="act_horizon", hidden=16, depth=1)
    obs = torch.randn(64, 3)
    mean_before = pol.mean_action(obs)[:, :2].detach().clone()
    pol.set_constant_std(0.15)
    torch.testing.assert_close(pol.mean_action(obs)[:, :2], mean_before)
    _, log_std = pol._dist_params(obs)
    torch.testing.assert_close(log_std, torch.full_like(log_std, math.log(0.15)))
    with pytest.raises(ValueError, match="outside"):
        pol.set_constant_std(100.0)


def test_mean_action_tail_is_prior_noise_not_zeros() -> None:
    """The unsteered tail of the mean noise is N(0, I) from the generator, exactly as `sample` draws it."""
    pol = _policy("act_horizon")
    obs = torch.randn(512, 3)
    w = pol.mean_action(obs, generator=torch.Generator().manual_seed(5)).detach()
    expected_tail = torch.randn(512, 2, 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(w[:, 2:], expected_tail)
    assert abs(float(w[:, 2:].std()) - 1.0) < 0.1
    # Same tail draws as the sampled noise after its steered eps (the generator's stream position aside).
    gen = torch.Generator().manual_seed(9)
    sampled, _ = pol.sample(obs, generator=gen)
    gen_mean = torch.Generator().manual_seed(9)
    torch.randn(512, pol.steered_dim, generator=gen_mean)  # what `sample` spent on its steered eps
    torch.testing.assert_close(pol.mean_action(obs, generator=gen_mean)[:, 2:], sampled[:, 2:])
