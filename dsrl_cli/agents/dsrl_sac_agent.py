"""SAC over the latent noise `w` (DESIGN.md section 5). One `update` reads top to bottom:

    critic:  w' ~ pi(.|s'),  V(s') = min_i Q_i^targ(s', w') - alpha log pi(w'|s'),
             y = R + discount (1 - done) V(s'),  L_Q = sum_i MSE(Q_i(s, w), y)
    actor:   w ~ pi(.|s) (rsample),  L_pi = mean(alpha log pi(w|s) - min_i Q_i(s, w))
    alpha:   L_alpha = mean(-alpha (log pi(w|s) + target_entropy))
    targets: theta_t <- tau theta + (1 - tau) theta_t

The macro-step discount `gamma^k` comes with each transition, so there is no `gamma` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dsrl_cli.buffers.macro_replay_buffer import MacroBatch, MacroReplayBuffer
from dsrl_cli.models.latent_policy import LatentPolicy
from dsrl_cli.models.latent_q_network import LatentQNetwork

STAT_KEYS = (
    "critic_loss", "actor_loss", "alpha_loss", "alpha", "q_mean", "q_std", "td_error", "policy_entropy",
    "target_q_mean",
)


@dataclass(frozen=True)
class SACConfig:
    batch_size: int = 256
    tau: float = 0.005
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    # 0.1 rather than SAC's usual 1.0: macro-step rewards here are O(1) (often sparse 0/1 success), and an
    # initial entropy bonus of ~1 nat per steered dim would swamp the Q differences the actor must follow.
    init_alpha: float = 0.1
    autotune_alpha: bool = True
    # None -> -0.5 * policy.steered_dim (DESIGN.md section 8).
    target_entropy: float | None = None
    actor_update_every: int = 1
    grad_clip: float | None = None
    # REDQ-style ensembles for high UTD: the TD target takes the min over a random subset of this many heads
    # (drawn afresh each update) and the actor follows the mean of all heads. None: min over all heads.
    target_subset: int | None = None


def adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel on CPU and CUDA: one pass over all tensors instead of about ten per tensor
    (3-7x faster steps on CPU, docs/BENCHMARKS.md). Same update rule, not bit-identical to the loop."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


class DSRLSACAgent:
    def __init__(self, policy: LatentPolicy, q: LatentQNetwork, config: SACConfig,
                 device: torch.device | str = "cpu") -> None:
        if config.init_alpha <= 0 or config.actor_update_every < 1 or config.batch_size < 1:
            raise ValueError(f"bad SACConfig: {config}")
        if config.target_subset is not None and not 1 <= config.target_subset <= q.num_q:
            raise ValueError(f"target_subset {config.target_subset} must be in [1, num_q={q.num_q}]")
        self.config = config
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.q = q.to(self.device)
        self.target_entropy = (
            -0.5 * policy.steered_dim if config.target_entropy is None else float(config.target_entropy)
        )
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device, requires_grad=True)
        # q.parameters() holds only the online heads; target weights are buffers.
        self.critic_optim = adam(self.q.parameters(), config.critic_lr)
        self.actor_optim = adam(self.policy.parameters(), config.actor_lr)
        self.alpha_optim = adam([self.log_alpha], config.alpha_lr)
        self.num_updates = 0
        # Re-reported on updates that skip the actor (actor_update_every > 1).
        self._last_actor_stats = torch.full((4,), float("nan"), device=self.device)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    # ---- losses (each usable on its own so gradient flow can be tested) ----

    def critic_loss(self, batch: MacroBatch) -> dict[str, torch.Tensor]:
        alpha = self.alpha
        with torch.no_grad():
            next_w, next_logp = self.policy.rsample(batch.next_obs_cond)
            next_q = self._target_heads(self.q.target(batch.next_obs_cond, next_w)).min(dim=0).values
            next_v = next_q - alpha * next_logp
            y = batch.reward + batch.discount * (1.0 - batch.done) * next_v
        q = self.q(batch.obs_cond, batch.w)  # [num_q, B]
        loss = (q - y).pow(2).mean(dim=1).sum()
        return {"loss": loss, "q": q.detach(), "y": y}

    def _target_heads(self, q_heads: torch.Tensor) -> torch.Tensor:
        """All heads, or REDQ's random subset of `target_subset` heads."""
        k = self.config.target_subset
        if k is None or k == q_heads.shape[0]:
            return q_heads
        return q_heads[torch.randperm(q_heads.shape[0], device=q_heads.device)[:k]]

    def actor_loss(self, batch: MacroBatch) -> dict[str, torch.Tensor]:
        w, logp = self.policy.rsample(batch.obs_cond)
        # frozen(): gradients flow into w (and so the actor) but never into the critic's parameters.
        q_heads = self.q.frozen(batch.obs_cond, w)
        q_pi = q_heads.min(dim=0).values if self.config.target_subset is None else q_heads.mean(dim=0)
        loss = (self.alpha * logp - q_pi).mean()
        return {"loss": loss, "logp": logp.detach()}

    def alpha_loss(self, logp: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = (-self.log_alpha.exp() * (logp.detach() + self.target_entropy)).mean()
        return {"loss": loss}

    # ---- one update ----

    def _step(self, optim: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optim.step()

    def _actor_and_alpha_step(self, batch: MacroBatch, alpha_used: torch.Tensor) -> torch.Tensor:
        """Actor step against the critic, then the temperature step: [actor_loss, alpha_loss, entropy, alpha]."""
        actor = self.actor_loss(batch)
        self._step(self.actor_optim, actor["loss"], list(self.policy.parameters()))
        if self.config.autotune_alpha:
            alpha_l = self.alpha_loss(actor["logp"])["loss"]
            self._step(self.alpha_optim, alpha_l, [self.log_alpha])
        else:
            alpha_l = torch.zeros((), device=self.device)
        return torch.stack([actor["loss"].detach(), alpha_l.detach(), -actor["logp"].mean(), alpha_used])

    def _update(self, batch: MacroBatch) -> torch.Tensor:
        """One SAC update; returns the stats in STAT_KEYS order as one tensor (no host sync)."""
        alpha_used = self.alpha

        critic = self.critic_loss(batch)
        self._step(self.critic_optim, critic["loss"], list(self.q.parameters()))

        if self.num_updates % self.config.actor_update_every == 0:
            self._last_actor_stats = self._actor_and_alpha_step(batch, alpha_used)

        self.q.soft_update(self.config.tau)
        self.num_updates += 1

        q, y = critic["q"], critic["y"]
        actor_loss, alpha_loss, entropy, alpha = self._last_actor_stats.unbind()
        return torch.stack([
            critic["loss"].detach(), actor_loss, alpha_loss, alpha, q.mean(), q.std(),
            (q - y).abs().mean(), entropy, y.mean(),
        ])

    stat_keys: tuple[str, ...] = STAT_KEYS

    def update(self, batch: MacroBatch) -> dict[str, float]:
        """One SAC update. `target_q_mean` is the mean TD target y; `alpha` the value used in this update."""
        return dict(zip(self.stat_keys, self._update(batch).tolist(), strict=True))

    def update_many(self, buffer: MacroReplayBuffer, num_updates: int,
                    rng: np.random.Generator) -> dict[str, float]:
        """`num_updates` updates on fresh batches; stats averaged, with a single host sync at the end."""
        if num_updates < 1:
            return {}
        batches = buffer.sample_many(num_updates, self.config.batch_size, rng, self.device)
        stats = [self._update(batch) for batch in batches]
        return dict(zip(self.stat_keys, torch.stack(stats).mean(dim=0).tolist(), strict=True))

    @torch.no_grad()
    def act(self, obs_cond: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
        obs_cond = obs_cond.to(self.device)
        if deterministic:
            return self.policy.mean_action(obs_cond, generator=generator)
        return self.policy.sample(obs_cond, generator=generator)[0]

    # ---- checkpointing (plain tensors/numbers/dicts: loadable with weights_only=True) ----

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "q": self.q.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "alpha_optim": self.alpha_optim.state_dict(),
            "num_updates": self.num_updates,
            "last_actor_stats": self._last_actor_stats.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.q.load_state_dict(state["q"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.alpha_optim.load_state_dict(state["alpha_optim"])
        self.num_updates = int(state["num_updates"])
        if "last_actor_stats" in state:
            self._last_actor_stats = state["last_actor_stats"].to(self.device)
