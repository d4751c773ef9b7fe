"""`dsrl collect`: scripted demonstrations (or an imported HDF5 file) -> `dataset.h5`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsrl_cli.config import cosmetic, hashed_config, require_positive
from dsrl_cli.data.dataset import Episode, dataset_summary, import_dataset, write_dataset
from dsrl_cli.data.normalization import Normalizer
from dsrl_cli.envs.demonstrators import make_demonstrator
from dsrl_cli.envs.tasks import TaskSpec, load_task, make_env
from dsrl_cli.errors import BadInput
from dsrl_cli.stages.common import KeyParts, StageResult, cached_result
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console

STAGE = "collect"
SCHEMA = 1
MAIN_FILE = "dataset.h5"


@dataclass(frozen=True)
class CollectConfig:
    task: str = "default"
    episodes: int | None = None  # default: the task's dataset.episodes
    noise: float | None = None  # default: the task's demo_noise
    import_path: str | None = None
    seed: int = 0
    device: str = cosmetic("auto")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect_episodes(task: TaskSpec, episodes: int, noise: float, seed: int) -> list[Episode]:
    """Roll the task's scripted demonstrator; episode i is seeded with `seed + i` (reproducible)."""
    if task.demonstrator is None:
        raise BadInput(f"task {task.name} has no scripted demonstrator; use `dsrl collect --import FILE`")
    env = make_env(task)
    demo = make_demonstrator(task.demonstrator, noise=noise, seed=seed, **task.demo_params)
    out: list[Episode] = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            demo.reset(obs)
            obs_l, act_l, rew_l, next_l = [], [], [], []
            terminated = truncated = False
            success = False
            while not (terminated or truncated):
                action = np.asarray(demo.act(obs), dtype=np.float32)
                next_obs, reward, terminated, truncated, info = env.step(action)
                obs_l.append(obs)
                act_l.append(action)
                rew_l.append(float(reward))
                next_l.append(next_obs)
                if task.success_key is not None and info.get(task.success_key, False):
                    success = True
                obs = next_obs
            out.append(
                Episode(
                    obs=np.asarray(obs_l, dtype=np.float32),
                    actions=np.asarray(act_l, dtype=np.float32),
                    rewards=np.asarray(rew_l, dtype=np.float32),
                    next_obs=np.asarray(next_l, dtype=np.float32),
                    terminated=bool(terminated),
                    success=success if task.success_key is not None else None,
                )
            )
    finally:
        env.close()
    return out


def task_meta(task: TaskSpec, obs_dim: int, act_dim: int) -> dict:
    return {"task": task.name, "task_spec": task.to_dict(), "obs_dim": obs_dim, "act_dim": act_dim}


def key_parts(cfg: CollectConfig, store: ArtifactStore) -> KeyParts:
    """The key's inputs; an imported file is validated (and read) here, before the store is touched."""
    task = load_task(cfg.task)
    episodes = cfg.episodes if cfg.episodes is not None else int(task.dataset.get("episodes", 1000))
    noise = cfg.noise if cfg.noise is not None else task.demo_noise
    require_positive(episodes=episodes)
    if noise < 0:
        raise BadInput(f"--noise must be >= 0, got {noise}")

    env = make_env(task)
    try:
        env_obs, env_act = env.observation_space.shape, env.action_space.shape
    finally:
        env.close()

    imported: list[Episode] | None = None
    hashed = hashed_config(cfg) | {"episodes": episodes, "noise": noise, "task_spec": task.to_dict()}
    if cfg.import_path:
        path = Path(cfg.import_path)
        # Validate before touching the store so a bad file never creates or replaces an artifact.
        imported, _ = import_dataset(path)
        shapes = ((imported[0].obs.shape[1],), (imported[0].actions.shape[1],))
        if shapes != (env_obs, env_act):
            raise BadInput(
                f"{path}: obs dim {shapes[0][0]} / act dim {shapes[1][0]} do not match task {task.name} "
                f"(obs {env_obs}, act {env_act})"
            )
        hashed = hashed | {"import_path": None, "import_sha256": _file_digest(path), "episodes": None, "noise": None}

    return KeyParts(hashed, {}, {"task": task, "episodes": episodes, "noise": noise, "imported": imported})


def artifact_key(cfg: CollectConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_collect(cfg: CollectConfig, store: ArtifactStore, force: bool = False) -> StageResult:
    parts = key_parts(cfg, store)
    task, episodes, noise, imported = (parts.upstream[k] for k in ("task", "episodes", "noise", "imported"))
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)

    if imported is None:
        console.print(f"collecting {episodes} demonstrations on task [bold]{task.name}[/] (noise {noise})")
        data = collect_episodes(task, episodes, noise, cfg.seed)
    else:
        data = imported
    obs_dim, act_dim = data[0].obs.shape[1], data[0].actions.shape[1]
    meta = task_meta(task, obs_dim, act_dim)
    write_dataset(run.dir / MAIN_FILE, data, meta, Normalizer.fit(data))
    summary = dataset_summary(data)
    artifact = run.finish(MAIN_FILE, summary, meta)
    return StageResult.from_artifact(artifact, cached=False)
