"""Example of the "bring your own base policy" route: `load_user_base_policy("module:factory", ...)`.

Use it as `dsrl_cli.samplers.example_user_policy:make_policy`. A real factory would load its own weights;
this one builds a small *untrained* FlowPolicy for the default task (ForkReach: obs_dim 5, act_dim 2,
n_obs_steps 2, pred_horizon 8, act_horizon 4), so it documents the protocol and serves tests only.

The protocol: return an `nn.Module` with
- `decode(obs_cond [B, n*d], w [B, H, A], num_steps) -> a_seq [B, H, A]`, all normalized, deterministic and
  differentiable in `w`;
- `meta`: a `BasePolicyMeta` (or its dict); its `kind` is forced to "user";
- `normalizer`: a `dsrl_cli.data.normalization.Normalizer` (or its `to_dict()`), mapping raw env units to
  the policy's normalized space.
(or return a ready `BasePolicySampler`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsrl_cli.models.flow_policy import FlowPolicy
from dsrl_cli.samplers.base_policy_sampler import BasePolicyMeta


class ExampleUserPolicy(nn.Module):
    def __init__(self, net: nn.Module, meta: BasePolicyMeta, normalizer: object) -> None:
        super().__init__()
        self.net = net
        self.meta = meta
        self.normalizer = normalizer

    def decode(self, obs_cond: torch.Tensor, w: torch.Tensor, num_steps: int) -> torch.Tensor:
        return self.net.decode(obs_cond, w, num_steps)


def make_policy(seed: int = 0, hidden: int = 64, depth: int = 2, num_inference_steps: int = 4) -> nn.Module:
    from dsrl_cli.data.normalization import Normalizer

    obs_dim, act_dim, n_obs_steps, pred_horizon, act_horizon = 5, 2, 2, 8, 4
    meta = BasePolicyMeta(
        obs_dim=obs_dim,
        act_dim=act_dim,
        n_obs_steps=n_obs_steps,
        pred_horizon=pred_horizon,
        act_horizon=act_horizon,
        num_inference_steps=num_inference_steps,
        kind="user",
    )
    # Identity-ish: ForkReach observations and actions already live in [-1, 1].
    normalizer = Normalizer(
        obs_mean=np.zeros(obs_dim, dtype=np.float32),
        obs_std=np.ones(obs_dim, dtype=np.float32),
        act_min=-np.ones(act_dim, dtype=np.float32),
        act_max=np.ones(act_dim, dtype=np.float32),
    )
    # Seeded locally so the example is reproducible without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FlowPolicy(meta.obs_cond_dim, act_dim, pred_horizon, hidden=hidden, depth=depth, shortcut=True)
    return ExampleUserPolicy(net, meta, normalizer)
