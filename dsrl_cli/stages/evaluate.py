"""`dsrl eval --compare prior,stage1,stage2`: the same seeded episodes for every policy, with 95% CIs.

Episode j of an evaluation always starts from environment seed `10_000 * (seed + 1) + j`, whatever the
policy, so differences between rows come from the policies, not from the start states.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.table import Table

from dsrl_cli.config import cosmetic, hashed_config, require_positive
from dsrl_cli.envs.macro import MacroVecEnv
from dsrl_cli.envs.tasks import TaskSpec
from dsrl_cli.errors import BadInput
from dsrl_cli.stages.common import (
    KeyParts,
    StageResult,
    cached_result,
    check_same_task,
    load_actor,
    load_sampler,
    seeded_generator,
    task_of,
    task_spec_of,
)
from dsrl_cli.store.store import FRIENDLY_NAMES, Artifact, ArtifactStore
from dsrl_cli.utils.console import console
from dsrl_cli.utils.device import resolve_device
from dsrl_cli.utils.stats import mean_ci95

STAGE = "eval"
SCHEMA = 1
MAIN_FILE = "eval.json"

# obs_cond [B, D] -> w [B, H, A]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalConfig:
    compare: str = "prior"
    episodes: int = 100
    num_envs: int = 50
    base: str | None = None
    deterministic: bool = True  # latent actors act with their mean noise
    seed: int = 0
    device: str = cosmetic("auto")


@dataclass
class EvalStats:
    episodes: int
    success_mean: float | None
    success_ci95: float | None
    return_mean: float
    return_ci95: float
    length_mean: float
    env_steps: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def eval_seed(seed: int) -> int:
    return 10_000 * (seed + 1)


def evaluate_noise_policy(
    task: TaskSpec,
    sampler: Any,
    noise_fn: NoiseFn,
    episodes: int,
    seed: int,
    num_envs: int,
) -> EvalStats:
    """Run `episodes` episodes; episode j starts from env seed `eval_seed(seed) + j`."""
    num_envs = max(1, min(num_envs, episodes))
    venv = MacroVecEnv(task, num_envs=num_envs, seed=eval_seed(seed))
    returns = np.zeros(episodes)
    successes = np.zeros(episodes, dtype=bool)
    lengths = np.zeros(episodes)
    env_steps = 0
    try:
        for first in range(0, episodes, num_envs):
            count = min(num_envs, episodes - first)
            obs_hist = venv.reset(seeds=[eval_seed(seed) + first + i for i in range(num_envs)])
            pending = np.zeros(num_envs, dtype=bool)
            pending[:count] = True
            while pending.any():
                with torch.no_grad():
                    obs_cond = sampler.obs_cond_from_history(obs_hist)
                    a_head = sampler.decode_actions(obs_cond, noise_fn(obs_cond), head_only=True)
                step = venv.step(sampler.env_actions(a_head))
                env_steps += int(step.steps[pending].sum())
                ended = (step.terminated | step.truncated) & pending
                for i in np.flatnonzero(ended):
                    returns[first + i] = step.episode_return[i]
                    successes[first + i] = step.episode_success[i]
                    lengths[first + i] = step.episode_length[i]
                pending &= ~ended
                obs_hist = step.obs_hist
    finally:
        venv.close()
    has_success = task.success_key is not None
    s_mean, s_ci = mean_ci95(successes.astype(float).tolist()) if has_success else (None, None)
    r_mean, r_ci = mean_ci95(returns.tolist())
    return EvalStats(episodes, s_mean, s_ci, r_mean, r_ci, float(lengths.mean()), env_steps)


def prior_noise_fn(sampler: Any, seed: int) -> NoiseFn:
    gen = seeded_generator(seed, sampler.device)

    def fn(obs_cond: torch.Tensor) -> torch.Tensor:
        return sampler.sample_prior_noise(obs_cond.shape[0], generator=gen)

    return fn


def actor_noise_fn(actor: Any, deterministic: bool, seed: int) -> NoiseFn:
    gen = seeded_generator(seed, next(actor.parameters()).device)

    def fn(obs_cond: torch.Tensor) -> torch.Tensor:
        if deterministic:
            return actor.mean_action(obs_cond)
        return actor.sample(obs_cond, generator=gen)[0]

    return fn


def _resolve_entry(store: ArtifactStore, name: str) -> Artifact | None:
    """`prior` -> None; `stage1`/`stage2` -> friendly names; anything else a path or key."""
    if name == "prior":
        return None
    alias = {"stage1": "warmstart", "stage2": "online"}
    if name in alias:
        stage = alias[name]
        return store.resolve(FRIENDLY_NAMES[stage], stage=None,
                             hint=f"run `dsrl {'warmstart' if name == 'stage1' else 'online'}` first")
    artifact = store.resolve(name)
    if artifact.stage not in ("warmstart", "online"):
        raise BadInput(
            f"{name} is a {artifact.stage} artifact; --compare takes prior, stage1, stage2 or actor artifacts"
        )
    return artifact


def key_parts(cfg: EvalConfig, store: ArtifactStore) -> KeyParts:
    names = [n.strip() for n in cfg.compare.split(",") if n.strip()]
    if not names:
        raise BadInput("--compare needs at least one policy (prior, stage1, stage2 or an artifact path)")
    if len(set(names)) != len(names):
        raise BadInput(f"--compare lists a policy twice: {cfg.compare}")
    require_positive(episodes=cfg.episodes, num_envs=cfg.num_envs)
    entries = {name: _resolve_entry(store, name) for name in names}

    # One base policy for all rows: the actors' own base, or --base / the store's base.ckpt.
    actor_bases = {a.input_key("base") for a in entries.values() if a is not None}
    if len(actor_bases) > 1:
        raise BadInput(f"the compared actors were trained on different base policies: {sorted(actor_bases)}")
    if cfg.base:
        base = store.resolve(cfg.base, stage="pretrain")
        if actor_bases and base.key not in actor_bases:
            raise BadInput(f"--base {cfg.base} is not the base policy the compared actors were trained on")
    elif actor_bases:
        base = store.resolve(next(iter(actor_bases)), stage="pretrain")
    else:
        base = store.resolve_default(None, "pretrain", "run `dsrl pretrain` first or pass --base PATH")
    for artifact in entries.values():
        if artifact is not None:
            check_same_task(base, artifact)

    hashed = hashed_config(cfg) | {"compare": None, "base": None}
    inputs = {"base": base.key} | {f"policy:{n}": (a.key if a else "prior") for n, a in entries.items()}
    return KeyParts(hashed, inputs, {"base": base, "entries": entries})


def artifact_key(cfg: EvalConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_eval(cfg: EvalConfig, store: ArtifactStore, force: bool = False) -> StageResult:
    parts = key_parts(cfg, store)
    base, entries = parts.upstream["base"], parts.upstream["entries"]
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        result = cached_result(run)
        print_table(result.summary["results"], task_of(base)["name"], cfg.episodes)
        return result

    device = resolve_device(cfg.device)
    task = task_spec_of(base)
    sampler = load_sampler(base, device)
    results: dict[str, dict[str, Any]] = {}
    for name, artifact in entries.items():
        if artifact is None:
            fn = prior_noise_fn(sampler, cfg.seed)
        else:
            fn = actor_noise_fn(load_actor(artifact, device), cfg.deterministic, cfg.seed)
        console.print(f"evaluating [bold]{name}[/] on {cfg.episodes} episodes")
        stats = evaluate_noise_policy(task, sampler, fn, cfg.episodes, cfg.seed, cfg.num_envs)
        results[name] = stats.as_dict() | {"artifact": artifact.key if artifact else None}
    print_table(results, task.name, cfg.episodes)
    summary = {"task": task.name, "episodes": cfg.episodes, "results": results}
    (run.dir / MAIN_FILE).write_text(json.dumps(summary, indent=2))
    artifact = run.finish(MAIN_FILE, summary, base.meta)
    return StageResult.from_artifact(artifact, cached=False)


def print_table(results: dict[str, dict[str, Any]], task_name: str, episodes: int) -> None:
    table = Table(title=f"eval on {task_name}: {episodes} episodes, same seeds per row (mean ± 95% CI)")
    table.add_column("policy")
    table.add_column("success", justify="right")
    table.add_column("return", justify="right")
    table.add_column("length", justify="right")
    for name, r in results.items():
        success = (
            "n/a" if r["success_mean"] is None
            else f"{100 * r['success_mean']:.1f}% ± {100 * r['success_ci95']:.1f}"
        )
        table.add_row(name, success, f"{r['return_mean']:.3f} ± {r['return_ci95']:.3f}", f"{r['length_mean']:.1f}")
    console.print(table)
