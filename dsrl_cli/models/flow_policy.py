"""Conditional flow-matching policy over normalized action chunks, with an optional shortcut variant.

Conventions (shared with the rest of the project, see docs/ARCHITECTURE.md "base policy"):

- Interpolation `x_t = (1 - t) * x0 + t * x1` for `t` in [0, 1], with `x0 = w ~ N(0, I)` (the latent noise
  DSRL steers) and `x1 = a_seq` (a normalized action chunk, `[B, H, A]`).
- The velocity net predicts `dx_t/dt = x1 - x0`; decoding integrates it with Euler steps from `t=0`
  (the noise `w`) to `t=1` (the chunk). Decoding is deterministic: the same `(obs_cond, w)` always gives
  the same chunk, and it is differentiable in `w`.
- Shortcut variant (Frans et al., "One Step Diffusion via Shortcut Models", 2024): the net also sees the
  step size `d`, and `x_t + d * v(x_t, t, d)` should land where two steps of size `d/2` land. Plain flow
  matching trains the smallest step `d_min = 2**-max_log2_steps`; a `bootstrap_fraction` of each batch
  trains `d = 2**-k` on the self-consistency target `(v(x_t, t, d/2) + v(x', t + d/2, d/2)) / 2`,
  `x' = x_t + (d/2) * v(x_t, t, d/2)`, computed by a target (typically EMA) copy without gradients.
  Decoding with `num_steps` Euler steps passes `d = 1 / num_steps`, so 1-4 steps already decode well.
- The decoded chunk is not clipped: clipping would kill the gradient that noise inversion needs; the
  environment side (`BasePolicySampler.env_actions`) clips.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dsrl_cli.models.mlp import mlp

DEFAULT_MAX_LOG2_STEPS = 7


def sinusoidal_features(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`[B] -> [B, dim]` sin/cos features with geometric frequencies 1..1000 (inputs live in [0, 1])."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=x.device, dtype=x.dtype))
    angles = x[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class FlowPolicy(nn.Module):
    """Velocity net `v(x_t, t, obs_cond[, d])`: an MLP over the flattened chunk, the conditioning and
    sinusoidal features of `t` (and of the step size `d` for the shortcut variant)."""

    def __init__(
        self,
        obs_cond_dim: int,
        act_dim: int,
        pred_horizon: int,
        hidden: int = 256,
        depth: int = 3,
        shortcut: bool = False,
        time_dim: int = 32,
    ) -> None:
        super().__init__()
        if min(obs_cond_dim, act_dim, pred_horizon) < 1 or time_dim < 2 or time_dim % 2:
            raise ValueError(
                f"bad FlowPolicy sizes: obs_cond_dim={obs_cond_dim}, act_dim={act_dim}, "
                f"pred_horizon={pred_horizon}, time_dim={time_dim}"
            )
        # Plain data only, so a checkpoint can rebuild the module (`FlowPolicy.from_config`).
        self.config: dict[str, Any] = {
            "obs_cond_dim": int(obs_cond_dim),
            "act_dim": int(act_dim),
            "pred_horizon": int(pred_horizon),
            "hidden": int(hidden),
            "depth": int(depth),
            "shortcut": bool(shortcut),
            "time_dim": int(time_dim),
        }
        self.obs_cond_dim = int(obs_cond_dim)
        self.act_dim = int(act_dim)
        self.pred_horizon = int(pred_horizon)
        self.shortcut = bool(shortcut)
        self.time_dim = int(time_dim)
        chunk_dim = self.pred_horizon * self.act_dim
        in_dim = chunk_dim + self.obs_cond_dim + self.time_dim * (2 if self.shortcut else 1)
        self.net = mlp(in_dim, chunk_dim, hidden, depth)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowPolicy:
        return cls(**config)

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        obs_cond: torch.Tensor,
        d: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x_t [B,H,A], t [B], obs_cond [B,D], d [B] | None -> [B,H,A]`; `d` is ignored by plain flow."""
        batch = x_t.shape[0]
        feats = [x_t.reshape(batch, -1), obs_cond, sinusoidal_features(t, self.time_dim)]
        if self.shortcut:
            if d is None:
                raise ValueError("a shortcut FlowPolicy needs the step size d")
            feats.append(sinusoidal_features(d, self.time_dim))
        out = self.net(torch.cat(feats, dim=-1))
        return out.reshape(batch, self.pred_horizon, self.act_dim)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        obs_cond: torch.Tensor,
        d: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.velocity(x_t, t, obs_cond, d)

    def decode(self, obs_cond: torch.Tensor, w: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Euler-integrate from `x_0 = w` at t=0 to t=1 in `num_steps` equal steps -> `a_seq [B,H,A]`.

        One batched velocity call per step; differentiable in `w` (no in-place updates, no clipping).
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        batch = w.shape[0]
        dt = 1.0 / num_steps
        d = torch.full((batch,), dt, device=w.device, dtype=w.dtype) if self.shortcut else None
        x = w
        for i in range(num_steps):
            t = torch.full((batch,), i * dt, device=w.device, dtype=w.dtype)
            x = x + dt * self.velocity(x, t, obs_cond, d)
        return x


def flow_matching_loss(
    policy: FlowPolicy,
    obs_cond: torch.Tensor,
    a_seq: torch.Tensor,
    d: float | None = None,
) -> torch.Tensor:
    """Conditional flow matching: `t ~ U[0,1]`, regress `v(x_t, t)` onto `a_seq - w`.

    A shortcut policy is trained at step size `d` (default: the smallest, `2**-DEFAULT_MAX_LOG2_STEPS`).
    """
    batch = a_seq.shape[0]
    x0 = torch.randn_like(a_seq)
    t = torch.rand(batch, device=a_seq.device, dtype=a_seq.dtype)
    x_t = (1.0 - t)[:, None, None] * x0 + t[:, None, None] * a_seq
    d_t = None
    if policy.shortcut:
        step = 2.0**-DEFAULT_MAX_LOG2_STEPS if d is None else d
        d_t = torch.full((batch,), step, device=a_seq.device, dtype=a_seq.dtype)
    return F.mse_loss(policy.velocity(x_t, t, obs_cond, d_t), a_seq - x0)


def shortcut_loss(
    policy: FlowPolicy,
    obs_cond: torch.Tensor,
    a_seq: torch.Tensor,
    target_policy: FlowPolicy,
    bootstrap_fraction: float = 0.25,
    max_log2_steps: int = DEFAULT_MAX_LOG2_STEPS,
) -> dict[str, torch.Tensor]:
    """Shortcut-model loss (Frans et al. 2024) on one batch; returns `loss`, `flow_loss`, `consistency_loss`.

    The first `round(bootstrap_fraction * B)` samples are bootstrap samples: `d = 2**-k` with `k` uniform in
    `0..max_log2_steps-1`, `t` uniform on the grid `{0, d, ..., 1-d}` (so `t + d <= 1`), target = mean of two
    half-step velocities of `target_policy` (no gradient). The rest are flow-matching samples at the
    smallest step `2**-max_log2_steps` with `t ~ U[0,1]`. Both parts share one forward pass; `loss` is the
    mean squared error over the whole batch, so each part is weighted by its share of the batch.
    """
    if not policy.shortcut:
        raise ValueError("shortcut_loss needs a FlowPolicy built with shortcut=True")
    if max_log2_steps < 1 or not 0.0 <= bootstrap_fraction <= 1.0:
        raise ValueError(f"bad shortcut settings: fraction={bootstrap_fraction}, max_log2={max_log2_steps}")
    batch = a_seq.shape[0]
    dev, dtype = a_seq.device, a_seq.dtype
    n_boot = min(batch, int(round(bootstrap_fraction * batch)))

    x0 = torch.randn_like(a_seq)
    # Bootstrap part: dyadic step sizes and grid-aligned times.
    k = torch.randint(0, max_log2_steps, (n_boot,), device=dev)
    sections = (2**k).to(dtype)
    d_boot = 1.0 / sections
    t_boot = torch.floor(torch.rand(n_boot, device=dev, dtype=dtype) * sections) / sections
    # Flow part: continuous times at the smallest step.
    n_flow = batch - n_boot
    d_flow = torch.full((n_flow,), 2.0**-max_log2_steps, device=dev, dtype=dtype)
    t_flow = torch.rand(n_flow, device=dev, dtype=dtype)

    t = torch.cat([t_boot, t_flow])
    d = torch.cat([d_boot, d_flow])
    x_t = (1.0 - t)[:, None, None] * x0 + t[:, None, None] * a_seq

    with torch.no_grad():
        xb, tb, cb, half = x_t[:n_boot], t_boot, obs_cond[:n_boot], d_boot / 2
        v1 = target_policy.velocity(xb, tb, cb, half)
        v2 = target_policy.velocity(xb + half[:, None, None] * v1, tb + half, cb, half)
        target_boot = (v1 + v2) / 2
    target = torch.cat([target_boot, (a_seq - x0)[n_boot:]])

    err = (policy.velocity(x_t, t, obs_cond, d) - target).pow(2).flatten(1).mean(dim=1)
    zero = err.new_zeros(())
    return {
        "loss": err.mean(),
        "flow_loss": err[n_boot:].mean() if n_flow else zero,
        "consistency_loss": err[:n_boot].mean() if n_boot else zero,
    }


@torch.no_grad()
def ema_update(ema_policy: nn.Module, policy: nn.Module, decay: float) -> None:
    """`ema <- decay * ema + (1 - decay) * policy`, parameters and float buffers alike."""
    for e, p in zip(ema_policy.parameters(), policy.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema_policy.buffers(), policy.buffers(), strict=True):
        if e.dtype.is_floating_point:
            e.lerp_(b, 1.0 - decay)
        else:
            e.copy_(b)
