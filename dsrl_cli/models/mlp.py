"""The one MLP builder every network in the project uses (policies, critics, velocity nets)."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: int,
    depth: int,
    layer_norm: bool = False,
    *,
    activation: type[nn.Module] = nn.Mish,
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
