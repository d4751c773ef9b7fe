"""Environments. Importing this package registers the built-in gymnasium ids."""

from __future__ import annotations

import gymnasium

FORK_REACH_ID = "dsrl/ForkReach-v0"

# Guarded so repeated imports (tests, reloads) do not trigger gymnasium's re-registration warning.
if FORK_REACH_ID not in gymnasium.registry:
    gymnasium.register(
        id=FORK_REACH_ID,
        entry_point="dsrl_cli.envs.fork_reach:ForkReachEnv",
        max_episode_steps=40,
    )
