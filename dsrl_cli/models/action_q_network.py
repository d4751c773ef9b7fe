"""Action critic `Q^A(s, a_head)`: an `EnsembleQ` (double Q by default) over the flattened executed head,
and its TD loss. The caller picks the next action `a'` (dataset's next chunk = SARSA, or the base policy's
decoded head for `w ~ N(0, I)`); rows without a dataset next chunk can fall back to a prior action."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dsrl_cli.buffers.action_replay_buffer import ActionBatch
from dsrl_cli.errors import BadInput
from dsrl_cli.models.ensemble_q import EnsembleQ


class ActionQNetwork(EnsembleQ):
    def __init__(self, obs_cond_dim: int, act_horizon: int, act_dim: int, hidden: int = 256, depth: int = 2,
                 layer_norm: bool = True, num_q: int = 2) -> None:
        super().__init__(obs_cond_dim, act_horizon * act_dim, hidden=hidden, depth=depth,
                         layer_norm=layer_norm, num_q=num_q)
        self.act_horizon = act_horizon
        self.act_dim = act_dim
        # Keyed by this constructor's argument names so `ActionQNetwork(**q.config)` rebuilds it.
        self.config = {
            "obs_cond_dim": obs_cond_dim, "act_horizon": act_horizon, "act_dim": act_dim, "hidden": hidden,
            "depth": depth, "layer_norm": layer_norm, "num_q": num_q,
        }


def action_q_td_loss(
    q: EnsembleQ,
    batch: ActionBatch,
    next_a_head: torch.Tensor,
    fallback_a_head: torch.Tensor | None = None,
    fallback_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Double-Q TD loss: `y = R + discount * (1 - done) * min_i Q_t_i(s', a')`, loss = sum_i MSE(Q_i, y).

    `a'` is `next_a_head`, except on rows where `fallback_mask` is true, which use `fallback_a_head`.
    With a fallback and no mask, the mask is `has_next == 0`: under SARSA (`next_a_head =
    batch.next_a_head`) a chunk truncated by the time limit has no dataset successor yet must bootstrap,
    so a prior action (decoded head for `w ~ N(0, I)`) stands in. Terminal rows never bootstrap, so what
    `a'` is there does not matter. Returns `loss` (with grad) and detached diagnostics.
    """
    if next_a_head.shape != batch.a_head.shape:
        raise BadInput(
            f"next_a_head has shape {tuple(next_a_head.shape)}, expected {tuple(batch.a_head.shape)}"
        )
    a_next = next_a_head
    if fallback_a_head is not None:
        if fallback_a_head.shape != batch.a_head.shape:
            raise BadInput(
                f"fallback_a_head has shape {tuple(fallback_a_head.shape)}, "
                f"expected {tuple(batch.a_head.shape)}"
            )
        mask = batch.has_next < 0.5 if fallback_mask is None else fallback_mask.bool()
        a_next = torch.where(mask.reshape(-1, 1, 1), fallback_a_head, next_a_head)
    with torch.no_grad():
        q_next = q.target(batch.next_obs_cond, a_next).min(dim=0).values
        y = batch.reward + batch.discount * (1.0 - batch.done) * q_next
    q_pred = q(batch.obs_cond, batch.a_head)  # [num_q, B]
    losses = torch.stack([F.mse_loss(qi, y) for qi in q_pred])
    td = (q_pred.detach() - y).abs().mean()
    return {
        "loss": losses.sum(),
        "q_mean": q_pred.detach().mean(),
        "q_std": q_pred.detach().std() if q_pred.numel() > 1 else q_pred.detach().new_zeros(()),
        "td_error": td,
        "target_mean": y.mean(),
    }
