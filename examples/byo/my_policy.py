"""A user's own base policy for dsrl: `--base-policy my_policy:make_policy` (this folder on PYTHONPATH).

`make_policy()` is the factory dsrl calls, with no arguments, in every stage that needs the policy
(pretrain records it, then train-qa, alias, distill-qw, warmstart, online and eval each rebuild it), so
it must return the same weights every time: it loads them from `my_policy.pt` next to this file (or the
file `$MY_POLICY_WEIGHTS` names).
dsrl checks a fingerprint of meta, normalizer and weights and refuses to go on if they changed.

What the factory returns (an `nn.Module`):
- `decode(obs_cond [B, n_obs_steps * obs_dim], w [B, pred_horizon, act_dim], num_steps) -> [B, pred_horizon,
  act_dim]`: NORMALIZED actions (dsrl clips them to [-1, 1] and unnormalizes with `normalizer`), a
  deterministic function of (obs_cond, w), differentiable in `w`. `obs_cond` is the last n_obs_steps
  observations, normalized with `normalizer`, oldest first, flattened (the episode's first observation
  repeated before its start). `w ~ N(0, I)` is the prior noise that dsrl learns to steer.
- `meta`: a `BasePolicyMeta` (sizes, which must match the task; `num_inference_steps` is passed to
  decode as `num_steps`).
- `normalizer`: a `dsrl_cli.data.normalization.Normalizer` (obs mean/std, action min/max in env units).

The policy here is a tiny flow-matching model trained by `python my_policy.py train` on demos.h5: a
stand-in for your own model and training code. Only `make_policy` is the interface.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from dsrl_cli.data.normalization import Normalizer
from dsrl_cli.samplers.base_policy_sampler import BasePolicyMeta

OBS_KEYS = ["pos", "goal"]  # the env's observation order (as task.yaml's obs_keys)
OBS_DIM, ACT_DIM, N_OBS_STEPS, PRED_HORIZON, ACT_HORIZON = 5, 2, 2, 8, 4


class MyFlowPolicy(nn.Module):
    """Velocity field v(x, t | obs_cond); decoding integrates x from the noise w (t = 0) to actions (t = 1)."""

    def __init__(self, meta: BasePolicyMeta, normalizer: Normalizer, hidden: int = 128) -> None:
        super().__init__()
        self.meta, self.normalizer = meta, normalizer
        size = meta.pred_horizon * meta.act_dim
        self.net = nn.Sequential(nn.Linear(meta.obs_cond_dim + size + 1, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, size))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        flat = torch.cat([obs_cond, x.flatten(1), t[:, None]], dim=1)
        return self.net(flat).view_as(x)

    def decode(self, obs_cond: torch.Tensor, w: torch.Tensor, num_steps: int) -> torch.Tensor:
        x, dt = w, 1.0 / num_steps
        for i in range(num_steps):  # Euler steps; no randomness, so decode is a function of (obs_cond, w)
            t = torch.full((x.shape[0],), i * dt, device=x.device)
            x = x + dt * self.velocity(x, t, obs_cond)
        return x


def weights_path() -> Path:
    return Path(os.environ.get("MY_POLICY_WEIGHTS") or Path(__file__).with_name("my_policy.pt"))


def _meta() -> BasePolicyMeta:
    return BasePolicyMeta(obs_dim=OBS_DIM, act_dim=ACT_DIM, n_obs_steps=N_OBS_STEPS, pred_horizon=PRED_HORIZON,
                          act_horizon=ACT_HORIZON, num_inference_steps=4, kind="user")


def make_policy() -> MyFlowPolicy:
    """The factory: the same weights on every call (dsrl rebuilds the policy in every stage)."""
    path = weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python my_policy.py train` first")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    policy = MyFlowPolicy(_meta(), Normalizer.from_dict(blob["normalizer"]))
    policy.load_state_dict(blob["state"])
    return policy.eval()


def train(demos: Path, out: Path, steps: int = 3000, seed: int = 0) -> Path:
    """Flow matching on demos.h5; dsrl's own import and chunking give exactly the obs_cond layout above."""
    from dsrl_cli.data.chunks import build_chunks
    from dsrl_cli.data.dataset import import_dataset

    episodes, _ = import_dataset(demos, obs_keys=OBS_KEYS)
    normalizer = Normalizer.fit(episodes)
    chunks = build_chunks(episodes, normalizer, N_OBS_STEPS, PRED_HORIZON, ACT_HORIZON, gamma=0.99)
    obs_cond, a_seq = torch.as_tensor(chunks.obs_cond), torch.as_tensor(chunks.a_seq)
    torch.manual_seed(seed)
    policy = MyFlowPolicy(_meta(), normalizer)
    optim = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for step in range(steps):
        idx = torch.randint(0, len(obs_cond), (256,))
        x1, cond = a_seq[idx], obs_cond[idx]
        x0 = torch.randn_like(x1)
        t = torch.rand(len(idx))
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * x1
        loss = (policy.velocity(xt, t, cond) - (x1 - x0)).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        if (step + 1) % 500 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    torch.save({"state": policy.state_dict(), "normalizer": normalizer.to_dict()}, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train the example user policy on demos.h5.")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--demos", type=Path, default=Path(__file__).with_name("demos.h5"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=weights_path())
    args = parser.parse_args()
    print(train(args.demos, args.out, args.steps, args.seed))
