"""Latent critic `Q^W(s, w)`: an `EnsembleQ` (double Q by default) whose input is the flattened noise `w`."""

from __future__ import annotations

from dsrl_cli.models.ensemble_q import EnsembleQ


class LatentQNetwork(EnsembleQ):
    def __init__(self, obs_cond_dim: int, w_dim: int, hidden: int = 256, depth: int = 2,
                 layer_norm: bool = True, num_q: int = 2, activation: str = "mish") -> None:
        super().__init__(obs_cond_dim, w_dim, hidden=hidden, depth=depth, layer_norm=layer_norm, num_q=num_q,
                         activation=activation)
        self.w_dim = w_dim
        # Keyed by this constructor's argument names so `LatentQNetwork(**q.config)` rebuilds it.
        self.config = {
            "obs_cond_dim": obs_cond_dim, "w_dim": w_dim, "hidden": hidden, "depth": depth,
            "layer_norm": layer_norm, "num_q": num_q,
        }
        if activation != "mish":
            self.config["activation"] = activation


__all__ = ["EnsembleQ", "LatentQNetwork"]
