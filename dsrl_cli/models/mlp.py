"""The one MLP builder every network in the project uses (policies, critics, velocity nets), and its Mish.

Mish is `x * tanh(softplus(x))`. On CPU, torch's own kernel (`F.mish`) evaluates exp, log1p and tanh per
element and is 5-10x slower than a matmul of the same layer would suggest: it was 40% of a SAC update
(docs/BENCHMARKS.md). `mish` below computes the same function with one exp, using
`tanh(log(1 + e^x)) = n / (n + 2)` with `n = e^x (e^x + 2)`, and saves `tanh(softplus(x))` for the backward
pass instead of recomputing it. Its error is within float32 rounding of the exact function (as is
`F.mish`'s), but not bit-identical to `F.mish`. On CUDA `F.mish` is one fused kernel, so it is used there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Above this, tanh(softplus(x)) is 1.0 in float32; clamping first keeps e^x (e^x + 2) finite.
_MISH_CLAMP = 20.0


def _tanh_softplus(x: torch.Tensor) -> torch.Tensor:
    n = x.clamp(max=_MISH_CLAMP).exp_()
    n = (n + 2.0).mul_(n)
    return n.div_(n + 2.0)


class _Mish(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        t = _tanh_softplus(x)
        ctx.save_for_backward(x, t)
        return x * t

    @staticmethod
    @torch.autograd.function.once_differentiable  # t was saved without a graph: no silent wrong 2nd derivative
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        x, t = ctx.saved_tensors
        # d/dx x tanh(softplus(x)) = t + x sigmoid(x) (1 - t^2)
        one_minus_t2 = torch.addcmul(torch.ones_like(t), t, t, value=-1.0)
        return torch.sigmoid(x).mul_(x).mul_(one_minus_t2).add_(t).mul_(grad)


def mish(x: torch.Tensor) -> torch.Tensor:
    """`x * tanh(softplus(x))`: `F.mish` on CUDA, the one-exp form above elsewhere."""
    if x.is_cuda:
        return F.mish(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Mish.apply(x)
    return _tanh_softplus(x).mul_(x)  # no graph: reuse the temporary


class Mish(nn.Module):
    """`nn.Mish` with the fast CPU path of `mish`; no parameters, so checkpoints are unaffected."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: int,
    depth: int,
    layer_norm: bool = False,
    *,
    activation: type[nn.Module] = Mish,
) -> nn.Sequential:
    """`depth` hidden layers of width `hidden`, then a linear output layer.

    Each hidden layer is `Linear -> [LayerNorm] -> activation`; `depth=0` gives a single linear map.
    LayerNorm sits before the activation, as in the critics of RLPD / DSRL, where it tames Q overestimation.
    """
    if in_dim < 1 or out_dim < 1 or depth < 0 or (depth > 0 and hidden < 1):
        raise ValueError(f"bad mlp sizes: in_dim={in_dim}, out_dim={out_dim}, hidden={hidden}, depth={depth}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers.append(nn.Linear(width, hidden))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(activation())
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
