"""Ensemble of Q heads `Q_i(obs_cond, x)` with Polyak target copies.

Every layer stores its weights stacked as `[num_q, in, out]`. How the heads run is chosen per device
(`EnsembleQ.batched`): on CUDA one `baddbmm` per layer for all heads (one kernel launch instead of
`num_q`); on CPU one `addmm` per head and layer, where LayerNorm's per-head affine fuses into the norm
kernel: 7% faster SAC updates with the default critic (3x256 with LayerNorm), the same without LayerNorm
(docs/BENCHMARKS.md). Target weights are *buffers* (never in `parameters()`, so an optimizer built from
`q.parameters()` cannot touch them) and are saved in `state_dict()`.

Per head the network is exactly `models.mlp.mlp(...)`: `depth` hidden layers `Linear -> [LayerNorm] -> Mish`
(or `activation`),
then a linear output. Shared by `LatentQNetwork` (`x = w`) and the action critic (`x = a_head`).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from dsrl_cli.models.mlp import mish

T = TypeVar("T")
# Hidden-layer activations by name. Mish is the default everywhere (models.mlp); the others are for speed
# comparisons (benchmarks/speed.py) and experiments.
ACTIVATIONS = {"mish": mish, "relu": F.relu, "silu": F.silu}


class EnsembleQ(nn.Module):
    # True: one baddbmm per layer for all heads; False: one addmm per head; None: batched on CUDA only.
    batched: bool | None = None

    def __init__(self, obs_cond_dim: int, input_dim: int, hidden: int = 256, depth: int = 2,
                 layer_norm: bool = True, num_q: int = 2, activation: str = "mish") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if num_q < 1 or depth < 0 or obs_cond_dim + input_dim < 1 or (depth > 0 and hidden < 1):
            raise ValueError(
                f"bad EnsembleQ sizes: obs_cond_dim={obs_cond_dim}, input_dim={input_dim}, "
                f"hidden={hidden}, depth={depth}, num_q={num_q}"
            )
        self.config: dict[str, Any] = {
            "obs_cond_dim": obs_cond_dim, "input_dim": input_dim, "hidden": hidden, "depth": depth,
            "layer_norm": layer_norm, "num_q": num_q,
        }
        if activation != "mish":  # absent at the default, so stored configs stay as they were
            self.config["activation"] = activation
        self.activation = ACTIVATIONS[activation]
        self.obs_cond_dim = obs_cond_dim
        self.input_dim = input_dim
        self.num_q = num_q
        self.layer_norm = layer_norm
        self.num_layers = depth + 1

        dims = [obs_cond_dim + input_dim] + [hidden] * depth + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_weights = nn.ParameterList()
        self.ln_biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            # Same distribution as nn.Linear's default init, drawn independently per head.
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(num_q, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_q, 1, d_out).uniform_(-bound, bound)))
            if layer_norm and i < depth:
                self.ln_weights.append(nn.Parameter(torch.ones(num_q, 1, d_out)))
                self.ln_biases.append(nn.Parameter(torch.zeros(num_q, 1, d_out)))

        self._param_names = [name for name, _ in self.named_parameters()]
        for name, p in self.named_parameters():
            self.register_buffer(self._target_name(name), p.detach().clone())

    @staticmethod
    def _target_name(param_name: str) -> str:
        return "target_" + param_name.replace(".", "_")

    def online_params(self) -> list[torch.Tensor]:
        return list(self.parameters())

    def target_params(self) -> list[torch.Tensor]:
        return [getattr(self, self._target_name(n)) for n in self._param_names]

    def _inputs(self, obs_cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.input_dim or obs_cond.shape[-1] != self.obs_cond_dim:
            raise ValueError(
                f"EnsembleQ expects obs_cond [B,{self.obs_cond_dim}] and input [B,{self.input_dim}] "
                f"(or reshapeable), got {tuple(obs_cond.shape)} and {tuple(x.shape)}"
            )
        return torch.cat([obs_cond, x], dim=-1)

    def _run(self, h: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """h: [B, in] -> [num_q, B]. `params` is ordered like `self.parameters()`."""
        batched = h.is_cuda if self.batched is None else self.batched
        return self._run_batched(h, params) if batched else self._run_per_head(h, params)

    def _split(self, params: list[T]) -> tuple[list[T], list[T], list[T], list[T]]:
        n = self.num_layers
        return params[:n], params[n : 2 * n], params[2 * n : 3 * n - 1], params[3 * n - 1 :]

    def _run_batched(self, h: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        weights, biases, ln_w, ln_b = self._split(params)
        # expand is a view: every head reads the same input batch.
        h = h.unsqueeze(0).expand(self.num_q, -1, -1)
        for i in range(self.num_layers):
            h = torch.baddbmm(biases[i], h, weights[i])
            if i < self.num_layers - 1:
                if self.layer_norm:
                    h = F.layer_norm(h, h.shape[-1:]) * ln_w[i] + ln_b[i]
                h = self.activation(h)
        return h.squeeze(-1)

    def _run_per_head(self, h: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        # unbind: one view per head, and one stack of the heads' gradients in the backward pass.
        weights, biases, ln_w, ln_b = self._split([p.unbind(0) for p in params])
        outs = []
        for j in range(self.num_q):
            x = h
            for i in range(self.num_layers):
                x = torch.addmm(biases[i][j], x, weights[i][j])
                if i < self.num_layers - 1:
                    if self.layer_norm:
                        x = F.layer_norm(x, x.shape[-1:], ln_w[i][j].view(-1), ln_b[i][j].view(-1))
                    x = self.activation(x)
            outs.append(x.view(-1))
        return torch.stack(outs)

    def forward(self, obs_cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """All heads with the trainable weights: `[num_q, B]`."""
        return self._run(self._inputs(obs_cond, x), self.online_params())

    def target(self, obs_cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """All heads with the Polyak-averaged target weights: `[num_q, B]` (no parameter gradients)."""
        return self._run(self._inputs(obs_cond, x), self.target_params())

    def frozen(self, obs_cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Online weights detached: gradients reach the inputs (e.g. the actor's `w`) but no parameter.

        Lets the actor loss differentiate through Q without toggling `requires_grad` on the critic.
        """
        return self._run(self._inputs(obs_cond, x), [p.detach() for p in self.online_params()])

    @torch.no_grad()
    def soft_update(self, tau: float) -> None:
        """theta_t <- tau * theta + (1 - tau) * theta_t, in place for all tensors at once."""
        torch._foreach_lerp_(self.target_params(), self.online_params(), tau)

    @torch.no_grad()
    def hard_update(self) -> None:
        torch._foreach_copy_(self.target_params(), self.online_params())
