"""dsrl: off-policy DSRL (latent-noise SAC) with DSRL-NA noise aliasing."""

__version__ = "0.1.0"
