"""Latent policy `pi^W(w | s)`: a tanh-squashed diagonal Gaussian over the base policy's input noise.

`u ~ N(mu(s), sigma(s))`, `w_steered = noise_scale * tanh(u)`. With `steer_mode="act_horizon"` only
`w[:, :act_horizon]` is steered; the rest of `w` is drawn from the prior N(0, I) and is not part of the
policy's density (it does not depend on `s` or on the policy's parameters).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dsrl_cli.models.mlp import mlp

STEER_MODES = ("full", "act_horizon")
_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def _log_one_minus_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2) without the cancellation of the naive form for large |u|."""
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


class LatentPolicy(nn.Module):
    def __init__(self, obs_cond_dim: int, act_dim: int, pred_horizon: int, act_horizon: int,
                 steer_mode: str = "full", noise_scale: float = 1.5, hidden: int = 256, depth: int = 2,
                 log_std_min: float = -5.0, log_std_max: float = 2.0) -> None:
        super().__init__()
        if steer_mode not in STEER_MODES:
            raise ValueError(f"steer_mode must be one of {STEER_MODES}, got {steer_mode!r}")
        if not 1 <= act_horizon <= pred_horizon:
            raise ValueError(f"need 1 <= act_horizon <= pred_horizon, got {act_horizon} and {pred_horizon}")
        if noise_scale <= 0 or log_std_min >= log_std_max:
            raise ValueError(f"bad noise_scale={noise_scale} or log_std range [{log_std_min}, {log_std_max}]")
        self.config: dict[str, Any] = {
            "obs_cond_dim": obs_cond_dim, "act_dim": act_dim, "pred_horizon": pred_horizon,
            "act_horizon": act_horizon, "steer_mode": steer_mode, "noise_scale": noise_scale,
            "hidden": hidden, "depth": depth, "log_std_min": log_std_min, "log_std_max": log_std_max,
        }
        self.obs_cond_dim = obs_cond_dim
        self.act_dim = act_dim
        self.pred_horizon = pred_horizon
        self.act_horizon = act_horizon
        self.steer_mode = steer_mode
        self.noise_scale = float(noise_scale)
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        self.steered_horizon = pred_horizon if steer_mode == "full" else act_horizon
        self.net = mlp(obs_cond_dim, 2 * self.steered_dim, hidden, depth)

    @property
    def steered_dim(self) -> int:
        return self.steered_horizon * self.act_dim

    @property
    def w_shape(self) -> tuple[int, int]:
        return (self.pred_horizon, self.act_dim)

    @torch.no_grad()
    def set_constant_std(self, std: float) -> None:
        """Make the pre-tanh std `std` for every observation, leaving the mean untouched.

        Zeroes the log-std rows of the output layer and sets their bias, so the change is exact and the net
        can still learn a state-dependent std afterwards.
        """
        log_std = math.log(std)
        if not self.log_std_min < log_std < self.log_std_max:
            raise ValueError(f"std {std} is outside (exp({self.log_std_min}), exp({self.log_std_max}))")
        span = self.log_std_max - self.log_std_min
        raw = math.atanh(2.0 * (log_std - self.log_std_min) / span - 1.0)  # inverse of _dist_params' squash
        out = self.net[-1]
        out.weight[self.steered_dim:] = 0.0
        out.bias[self.steered_dim:] = raw

    def _dist_params(self, obs_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw_log_std = self.net(obs_cond).chunk(2, dim=-1)
        # Smooth squash into [min, max] (instead of clamping) so log_std always gets a gradient.
        span = self.log_std_max - self.log_std_min
        log_std = self.log_std_min + 0.5 * span * (torch.tanh(raw_log_std) + 1)
        return mu, log_std

    def _log_prob_u(self, u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """Density of `w_steered = noise_scale * tanh(u)` by change of variables, summed over dims: [B]."""
        z = (u - mu) * torch.exp(-log_std)
        log_gauss = -0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI
        log_det = _log_one_minus_tanh_sq(u) + math.log(self.noise_scale)
        return (log_gauss - log_det).sum(-1)

    def _assemble(self, w_steered: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flat steered part [B, steered_dim] -> full w [B, H, A], filling the unsteered tail from N(0, I)."""
        w_steered = w_steered.reshape(w_steered.shape[0], self.steered_horizon, self.act_dim)
        return with_prior_tail(w_steered, self.pred_horizon, generator)

    def _steered_flat(self, w: torch.Tensor) -> torch.Tensor:
        return w[:, : self.steered_horizon].reshape(w.shape[0], self.steered_dim)

    def rsample(self, obs_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized sample: `(w [B,H,A], logp [B])`, differentiable in the policy parameters.

        The unsteered tail (act_horizon mode) uses torch's default RNG.
        """
        mu, log_std = self._dist_params(obs_cond)
        u = mu + torch.exp(log_std) * torch.randn_like(mu)
        # logp from u directly: exact, no atanh round trip near the bounds.
        logp = self._log_prob_u(u, mu, log_std)
        return self._assemble(self.noise_scale * torch.tanh(u), None), logp

    @torch.no_grad()
    def sample(self, obs_cond: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample without gradients, optionally from a dedicated generator (reproducible rollouts)."""
        mu, log_std = self._dist_params(obs_cond)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        u = mu + torch.exp(log_std) * eps
        logp = self._log_prob_u(u, mu, log_std)
        return self._assemble(self.noise_scale * torch.tanh(u), generator), logp

    def log_prob(self, obs_cond: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """log pi(w_steered | s) for given `w [B,H,A]` (e.g. aliased noise): [B]. The tail is ignored.

        `w` outside the open box (-noise_scale, noise_scale) is clamped just inside it, so off-support
        noise (an N(0,I) alias) gets a very low but finite log-density.
        """
        mu, log_std = self._dist_params(obs_cond)
        y = (self._steered_flat(w) / self.noise_scale).clamp(-1.0 + eps, 1.0 - eps)
        u = torch.atanh(y)
        return self._log_prob_u(u, mu, log_std)

    def mean_action(self, obs_cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Deterministic steered part `w = noise_scale * tanh(mu)`; the unsteered tail is drawn from N(0, I).

        The tail is sampled as in `sample` (from `generator` when given), never set to the prior's mean 0:
        a zero tail is a different, better-than-prior base policy input, which would credit steering with
        a gain it did not make.
        """
        mu, _ = self._dist_params(obs_cond)
        w = (self.noise_scale * torch.tanh(mu)).reshape(mu.shape[0], self.steered_horizon, self.act_dim)
        return with_prior_tail(w, self.pred_horizon, generator)


def with_prior_tail(w_head: torch.Tensor, pred_horizon: int, generator: torch.Generator | None) -> torch.Tensor:
    """`w_head [B, h, A]` -> `[B, pred_horizon, A]`: steps `h..pred_horizon-1` drawn from N(0, I).

    The tail is drawn on `generator`'s device (else `w_head`'s), like `BasePolicySampler.sample_prior_noise`.
    """
    b, h, a = w_head.shape
    rest = pred_horizon - h
    if rest == 0:
        return w_head
    device = generator.device if generator is not None else w_head.device
    tail = torch.randn(b, rest, a, generator=generator, device=device, dtype=w_head.dtype).to(w_head.device)
    return torch.cat([w_head, tail], dim=1)
