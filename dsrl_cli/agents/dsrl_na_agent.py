"""DSRL-NA online (noise aliasing): learn the critic in action space, steer in noise space.

One update reads top to bottom:

    Q^A TD:   w' ~ pi(.|s'),  a' = decode(s', w')_head,
              y = R + discount (1 - done) (min_i Q^A_targ_i(s', a') - alpha log pi(w'|s')),
              L_A = sum_i MSE(Q^A_i(s, a_head), y)           (a_head: the chunk actually executed)
    distill:  w ~ N(0, I) on part of the batch and w ~ pi(.|s) on the rest,
              L_W = sum_i MSE(Q^W_i(s, w), stopgrad min_j Q^A_j(s, decode(s, w)_head))
    actor / alpha / targets: as in DSRLSACAgent, against Q^W.

Q^A sees every executed chunk whatever noise produced it (so offline (s, a) data and aliasing share its
signal), while Q^W, which the actor follows, is fitted on as many noise samples as we like through the
frozen decoder. The soft value term keeps Q^A's target consistent with the SAC objective of the actor.
"""

from __future__ import annotations

from typing import Any

import torch

from dsrl_cli.agents.dsrl_sac_agent import STAT_KEYS, DSRLSACAgent, SACConfig, adam
from dsrl_cli.buffers.macro_replay_buffer import MacroBatch
from dsrl_cli.models.action_q_network import ActionQNetwork
from dsrl_cli.models.latent_policy import LatentPolicy
from dsrl_cli.models.latent_q_network import LatentQNetwork

NA_STAT_KEYS = STAT_KEYS + ("qa_loss", "qa_mean", "distill_loss")


class DSRLNAAgent(DSRLSACAgent):
    stat_keys = NA_STAT_KEYS

    def __init__(self, policy: LatentPolicy, q_w: LatentQNetwork, q_a: ActionQNetwork, sampler: Any,
                 config: SACConfig, device: torch.device | str = "cpu", prior_fraction: float = 0.5) -> None:
        super().__init__(policy, q_w, config, device)
        self.q_a = q_a.to(self.device)
        self.sampler = sampler
        self.prior_fraction = prior_fraction
        self.qa_optim = adam(self.q_a.parameters(), config.critic_lr)

    def action_critic_loss(self, batch: MacroBatch) -> dict[str, torch.Tensor]:
        alpha = self.alpha
        with torch.no_grad():
            next_w, next_logp = self.policy.rsample(batch.next_obs_cond)
            next_a = self.sampler.decode_actions(batch.next_obs_cond, next_w, head_only=True)
            next_v = self.q_a.target(batch.next_obs_cond, next_a).min(dim=0).values - alpha * next_logp
            y = batch.reward + batch.discount * (1.0 - batch.done) * next_v
        q = self.q_a(batch.obs_cond, batch.a_head)
        return {"loss": (q - y).pow(2).mean(dim=1).sum(), "q": q.detach(), "y": y}

    def distill_loss(self, batch: MacroBatch) -> dict[str, torch.Tensor]:
        obs = batch.obs_cond
        n_prior = int(round(obs.shape[0] * self.prior_fraction))
        with torch.no_grad():
            w_prior = torch.randn(n_prior, *batch.w.shape[1:], device=obs.device)
            w_actor = self.policy.sample(obs[n_prior:])[0]
            w = torch.cat([w_prior, w_actor], dim=0)
            a_head = self.sampler.decode_actions(obs, w, head_only=True)
            target = self.q_a(obs, a_head).min(dim=0).values
        pred = self.q(obs, w)
        return {"loss": (pred - target).pow(2).mean(dim=1).sum()}

    def _update(self, batch: MacroBatch) -> torch.Tensor:
        alpha_used = self.alpha
        qa = self.action_critic_loss(batch)
        self._step(self.qa_optim, qa["loss"], list(self.q_a.parameters()))
        distill = self.distill_loss(batch)
        self._step(self.critic_optim, distill["loss"], list(self.q.parameters()))

        actor_loss, alpha_loss, entropy, alpha = self._actor_and_alpha_step(batch, alpha_used).unbind()

        self.q_a.soft_update(self.config.tau)
        self.q.soft_update(self.config.tau)
        self.num_updates += 1
        with torch.no_grad():
            q_w = self.q(batch.obs_cond, batch.w)
        q_a, y = qa["q"], qa["y"]
        # Same order as NA_STAT_KEYS; critic_loss reports the distillation loss (Q^W's own objective).
        return torch.stack([
            distill["loss"].detach(), actor_loss, alpha_loss, alpha, q_w.mean(), q_w.std(),
            (q_a - y).abs().mean(), entropy, y.mean(), qa["loss"].detach(), q_a.mean(), distill["loss"].detach(),
        ])

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"q_a": self.q_a.state_dict(), "qa_optim": self.qa_optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.q_a.load_state_dict(state["q_a"])
        self.qa_optim.load_state_dict(state["qa_optim"])
