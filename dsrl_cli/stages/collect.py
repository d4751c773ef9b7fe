"""`dsrl collect`: scripted demonstrations (or an imported HDF5 file) -> `dataset.h5`.

An import (`--import FILE`, or the task's `dataset: {file: ...}`) is checked before anything is stored:
its obs / action sizes against the env, a keyed robomimic obs group against `obs_keys` (`--obs-keys`
wins over the task's), and robomimic's `data.attrs["env_args"]` against the task's env (skip with
`--ignore-env-args`).
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsrl_cli.config import check_values, cosmetic, hashed_config, require_positive
from dsrl_cli.data.dataset import Episode, dataset_summary, import_dataset, write_dataset
from dsrl_cli.data.normalization import Normalizer
from dsrl_cli.envs.demonstrators import make_demonstrator
from dsrl_cli.envs.tasks import TaskSpec, load_task, make_env
from dsrl_cli.errors import BadInput
from dsrl_cli.stages.common import KeyParts, StageResult, cached_result
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console
from dsrl_cli.utils.seeding import check_episode_counts, episode_seed

STAGE = "collect"
SCHEMA = 2  # 2: demonstrations from the collect seed space (utils/seeding.py); truncated episodes kept
# whole (last_next_obs_known); env / import provenance in meta
MAIN_FILE = "dataset.h5"


@dataclass(frozen=True)
class CollectConfig:
    task: str = "default"
    episodes: int | None = None  # default: the task's dataset.episodes
    noise: float | None = None  # default: the task's demo_noise
    import_path: str | None = None  # default: the task's dataset.file, if any
    obs_keys: tuple[str, ...] | None = None  # default: the task's obs_keys
    # The check can only refuse: when it passes, the flag changes no stored byte.
    ignore_env_args: bool = cosmetic(False)
    seed: int = 0
    device: str = cosmetic("auto")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect_episodes(task: TaskSpec, episodes: int, noise: float, seed: int) -> list[Episode]:
    """Roll the task's scripted demonstrator; episode i starts from `episode_seed("collect", seed, i)`."""
    if task.demonstrator is None:
        raise BadInput(f"task {task.name} has no scripted demonstrator; use `dsrl collect --import FILE`")
    env = make_env(task)
    demo = make_demonstrator(task.demonstrator, noise=noise, seed=seed, **task.demo_params)
    out: list[Episode] = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=episode_seed("collect", seed, i))
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


def import_reward_note(task: TaskSpec, episodes: list[Episode]) -> str | None:
    """A one-line note when imported rewards and the task's reward mode look mismatched, else None.

    Offline stages learn from the file's rewards, online RL from the env's (through the task's `reward`
    field); the two only agree when both are 0/1 success or both are the env's own reward. Only the file
    can be inspected here, so this is a hint, not a check.
    """
    rewards = np.concatenate([ep.rewards for ep in episodes])
    binary = bool(np.isin(rewards, (0.0, 1.0)).all())
    if task.reward == "env" and binary:
        return (
            f"note: the imported rewards are all 0 or 1, and task {task.name} trains online on its env's own "
            "reward (reward: env); if that reward is shaped, set `reward: success` in the task file."
        )
    if task.reward == "success" and not binary:
        return (
            f"note: task {task.name} pays 0/1 success online (reward: success), but the imported rewards "
            f"span [{rewards.min():g}, {rewards.max():g}]; offline and online rewards disagree."
        )
    return None


def task_meta(task: TaskSpec, obs_dim: int, act_dim: int) -> dict:
    # env_id / env_kwargs also become the file's robomimic env_args, which a later import checks.
    return {"task": task.name, "task_spec": task.to_dict(), "env_id": task.env_id,
            "env_kwargs": task.env_kwargs, "obs_dim": obs_dim, "act_dim": act_dim}


def _gym_id(env_id: str) -> str:
    return env_id.rpartition(":")[2]  # gymnasium's "module:id" form imports module, then makes id


def _metaworld_task(name: str, kwargs: dict, default: str) -> str | None:
    """The Meta-World task a recorded env names: ours (env_kwargs.task), raw MT1 (env_kwargs.env_name),
    or robomimic-style files that carry the task itself as env_name (`door-open-v3`)."""
    from dsrl_cli.envs.metaworld_tasks import METAWORLD_ID

    if _gym_id(name) == METAWORLD_ID:
        return kwargs.get("task", default)
    if name.startswith("Meta-World/"):
        return kwargs.get("env_name")
    return name


def check_source_env(source: dict, task: TaskSpec, path: Path) -> None:
    """Refuse a file recorded on another env than the task's (the file's dsrl task, else its env_args)."""
    # Imported here: the module registers dsrl/MetaWorld-v0, which only Meta-World tasks need.
    from dsrl_cli.envs.metaworld_tasks import METAWORLD_ID, MetaWorldEnv

    spec = source.get("task_spec")
    env_args = source.get("env_args")
    if isinstance(spec, dict) and isinstance(spec.get("env_id"), str):  # a file dsrl wrote
        name, kwargs = spec["env_id"], spec.get("env_kwargs")
    elif isinstance(env_args, dict) and isinstance(env_args.get("env_name"), str):
        name, kwargs = env_args["env_name"], env_args.get("env_kwargs")
    else:
        return  # the file names no env: nothing to check
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    hint = "pass --ignore-env-args if the data fits this task anyway"
    if _gym_id(task.env_id) == METAWORLD_ID:
        default = inspect.signature(MetaWorldEnv).parameters["task"].default
        want = task.env_kwargs.get("task", default)
        got = _metaworld_task(name, kwargs, default)
        if got != want:
            raise BadInput(f"{path} was recorded on {got!r} (env_args env_name {name!r}) but task {task.name} "
                           f"runs Meta-World task {want!r}; {hint}")
    elif _gym_id(name) != _gym_id(task.env_id):
        raise BadInput(f"{path} was recorded on env {name!r} (env_args) but task {task.name} uses env_id "
                       f"{task.env_id!r}; {hint}")


def key_parts(cfg: CollectConfig, store: ArtifactStore) -> KeyParts:
    """The key's inputs; an imported file is validated (and read) here, before the store is touched."""
    check_values(cfg)
    task = load_task(cfg.task)
    episodes = cfg.episodes if cfg.episodes is not None else int(task.dataset.get("episodes", 1000))
    noise = cfg.noise if cfg.noise is not None else task.demo_noise
    require_positive(episodes=episodes)
    check_episode_counts(cfg.seed, episodes=episodes)
    if not 0 <= noise < float("inf"):  # also refuses a NaN from a task file
        raise BadInput(f"--noise must be >= 0, got {noise}")

    env = make_env(task)
    try:
        env_obs, env_act = env.observation_space.shape, env.action_space.shape
    finally:
        env.close()

    imported: list[Episode] | None = None
    # Both the option and the task's obs_keys are hashed (the option in cfg, the task's in task_spec).
    hashed = hashed_config(cfg) | {"episodes": episodes, "noise": noise, "task_spec": task.to_dict()}
    import_path = cfg.import_path or task.dataset.get("file")
    obs_keys = list(cfg.obs_keys) if cfg.obs_keys else task.obs_keys
    source: dict = {}
    if import_path:
        path = Path(import_path)
        # Validate before touching the store so a bad file never creates or replaces an artifact.
        imported, source = import_dataset(path, obs_keys)
        shapes = ((imported[0].obs.shape[1],), (imported[0].actions.shape[1],))
        if shapes != (env_obs, env_act):
            keys = f" (obs keys {', '.join(source['obs_keys'])})" if source["obs_keys"] else ""
            raise BadInput(
                f"{path}: obs dim {shapes[0][0]}{keys} / act dim {shapes[1][0]} do not match task {task.name} "
                f"(obs {env_obs}, act {env_act})"
            )
        if not cfg.ignore_env_args:
            check_source_env(source, task, path)
        hashed = hashed | {"import_path": None, "import_sha256": _file_digest(path), "episodes": None, "noise": None}
        note = import_reward_note(task, imported)
        if note is not None:
            console.print(note, markup=False)

    return KeyParts(hashed, {}, {"task": task, "episodes": episodes, "noise": noise, "imported": imported,
                                 "source": source, "import_path": import_path, "obs_keys": obs_keys})


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
    summary = dataset_summary(data)
    meta["unknown_successor_steps"] = summary["unknown_successor_steps"]
    if imported is not None:
        source = parts.upstream["source"]
        # Provenance by content (the path is not part of the key, so it is not stored either).
        meta |= {"source_format": source["source_format"], "source_sha256": parts.hashed["import_sha256"],
                 "obs_format": source["obs_format"], "obs_keys": source["obs_keys"],
                 "source_env_args": source["env_args"]}
        _report_import(Path(parts.upstream["import_path"]), source, summary, parts.upstream["obs_keys"])
    write_dataset(run.dir / MAIN_FILE, data, meta, Normalizer.fit(data))
    artifact = run.finish(MAIN_FILE, summary, meta)
    return StageResult.from_artifact(artifact, cached=False)


def _report_import(path: Path, source: dict, summary: dict, obs_keys: list[str] | None) -> None:
    layout = (f"obs keys {', '.join(source['obs_keys'])}" if source["obs_format"] == "keys"
              else f"flat obs array{' (obs_keys not applied)' if obs_keys else ''}")
    console.print(f"imported {summary['episodes']} episodes / {summary['steps']} steps from {path} "
                  f"({source['source_format']}, {layout})")
    unknown = summary["unknown_successor_steps"]
    if unknown:
        console.print(f"{unknown} truncated episode(s) end without a recorded next observation: their last "
                      "steps are kept for behaviour cloning and left out of TD targets")
