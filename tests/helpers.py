"""Tiny end-to-end fixtures shared by the CLI and stage tests."""

from __future__ import annotations

from pathlib import Path

from dsrl_cli.stages.collect import CollectConfig, run_collect
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
from dsrl_cli.store.store import ArtifactStore

TINY_PRETRAIN = {"steps": 40, "batch_size": 64, "hidden": 32, "depth": 2, "device": "cpu"}


def tiny_store(root: Path, episodes: int = 20) -> ArtifactStore:
    store = ArtifactStore(root)
    run_collect(CollectConfig(episodes=episodes), store)
    run_pretrain(PretrainConfig(**TINY_PRETRAIN), store)
    return store
