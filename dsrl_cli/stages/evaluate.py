"""`dsrl eval --compare prior,prior-mean,stage1,stage2`: one protocol for every row, with 95% intervals.

- Episodes: episode j of an evaluation starts from `episode_seed("eval", seed, j)` whatever the policy, so
  rows differ by their policies, not their start states; online's periodic evaluations, training rollouts
  and demonstrations draw from other seed spaces (utils/seeding.py), so these episodes are never trained on.
- Noise (`noise`): latent actors act with `sampled` noise (`w ~ pi(.|s)`, the policy SAC optimises) or
  their `mean`; the built-in rows are `prior` (`w ~ N(0, I)`, the base policy's own samples) and
  `prior-mean` (`w = 0` over the executed head), the same in both modes. Wherever a part of `w` is not
  chosen by the row (the unsteered tail `w[act_horizon:]`), it comes from N(0, I), never zeros. Every row
  draws from a fresh generator with the same seed.
- Intervals: Wilson score intervals for success rates, mean ± normal 95% CI for returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from rich.table import Table

from dsrl_cli.config import check_values, cosmetic, hashed_config, require_positive
from dsrl_cli.envs.macro import MacroVecEnv
from dsrl_cli.envs.tasks import TaskSpec
from dsrl_cli.errors import BadInput
from dsrl_cli.models.latent_policy import with_prior_tail
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
from dsrl_cli.store.store import FRIENDLY_NAMES, READ_ONLY_ERRNOS, Artifact, ArtifactStore, StageRun, write_text_atomic
from dsrl_cli.utils.console import console
from dsrl_cli.utils.device import resolve_device
from dsrl_cli.utils.seeding import SeedPurpose, check_episode_counts, episode_seeds
from dsrl_cli.utils.stats import mean_ci95, wilson_ci95

STAGE = "eval"
SCHEMA = 2  # 2: noise modes per row, prior-mean row, N(0, I) tails, Wilson intervals, own seed space
MAIN_FILE = "eval.json"
NoiseMode = Literal["sampled", "mean"]
BUILTIN_ROWS = {"prior": "N(0,I)", "prior-mean": "w_head=0"}  # row -> its noise, whatever the mode

# obs_cond [B, D] -> w [B, H, A]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalConfig:
    compare: str = "prior"
    episodes: int = 100
    num_envs: int = 50
    base: str | None = None
    noise: NoiseMode = "sampled"  # latent actors: sample w ~ pi(.|s), or act with the mean (README: why)
    seed: int = 0
    device: str = cosmetic("auto")


@dataclass
class EvalStats:
    episodes: int
    successes: int | None  # None: the task reports no success
    success_mean: float | None
    success_low: float | None  # Wilson score 95% interval
    success_high: float | None
    return_mean: float
    return_ci95: float  # half-width of the normal 95% interval
    length_mean: float
    env_steps: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_noise_policy(
    task: TaskSpec,
    sampler: Any,
    noise_fn: NoiseFn,
    episodes: int,
    seed: int,
    num_envs: int,
    purpose: SeedPurpose = "eval",
) -> EvalStats:
    """Run `episodes` episodes; episode j starts from env seed `episode_seed(purpose, seed, j)`."""
    seeds = episode_seeds(purpose, seed, 0, episodes)
    num_envs = max(1, min(num_envs, episodes))
    venv = MacroVecEnv(task, num_envs=num_envs, seed=seeds[0])
    returns = np.zeros(episodes)
    successes = np.zeros(episodes, dtype=bool)
    lengths = np.zeros(episodes)
    env_steps = 0
    try:
        for first in range(0, episodes, num_envs):
            count = min(num_envs, episodes - first)
            batch = seeds[first:first + count]
            # A short last batch pads its idle envs with its own seeds: no seed outside this evaluation's set.
            obs_hist = venv.reset(seeds=[batch[i % count] for i in range(num_envs)])
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
    r_mean, r_ci = mean_ci95(returns.tolist())
    if task.success_key is None:
        return EvalStats(episodes, None, None, None, None, r_mean, r_ci, float(lengths.mean()), env_steps)
    k = int(successes.sum())
    low, high = wilson_ci95(k, episodes)
    return EvalStats(episodes, k, k / episodes, low, high, r_mean, r_ci, float(lengths.mean()), env_steps)


def prior_noise_fn(sampler: Any, seed: int) -> NoiseFn:
    """The base policy's own noise, `w ~ N(0, I)`."""
    gen = seeded_generator(seed, sampler.device)

    def fn(obs_cond: torch.Tensor) -> torch.Tensor:
        return sampler.sample_prior_noise(obs_cond.shape[0], generator=gen)

    return fn


def prior_mean_noise_fn(sampler: Any, seed: int) -> NoiseFn:
    """`w = 0` over the executed head, the tail from N(0, I): the mean mode of an act_horizon actor whose mean is 0.

    The trivial baseline any steering must beat: it needs no learning, and on multimodal data the prior's
    mode often beats its own samples.
    """
    gen = seeded_generator(seed, sampler.device)
    meta = sampler.meta

    def fn(obs_cond: torch.Tensor) -> torch.Tensor:
        head = torch.zeros(obs_cond.shape[0], meta.act_horizon, meta.act_dim, device=obs_cond.device)
        return with_prior_tail(head, meta.pred_horizon, gen)

    return fn


def actor_noise_fn(actor: Any, noise: NoiseMode, seed: int) -> NoiseFn:
    gen = seeded_generator(seed, next(actor.parameters()).device)

    def fn(obs_cond: torch.Tensor) -> torch.Tensor:
        if noise == "mean":
            return actor.mean_action(obs_cond, generator=gen)
        return actor.sample(obs_cond, generator=gen)[0]

    return fn


def format_success(mean: float | None, low: float | None, high: float | None) -> str:
    """`58.0% [48.2, 67.3]` (Wilson 95%), or n/a for a task without success."""
    if mean is None or low is None or high is None:
        return "n/a"
    return f"{100 * mean:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def format_return(mean: float, ci95: float) -> str:
    return f"{mean:.3f} ± {ci95:.3f}"


def _resolve_entry(store: ArtifactStore, name: str) -> Artifact | None:
    """`prior` / `prior-mean` -> None; `stage1`/`stage2` -> friendly names; anything else a path or key."""
    if name in BUILTIN_ROWS:
        return None
    alias = {"stage1": "warmstart", "stage2": "online"}
    if name in alias:
        stage = alias[name]
        return store.resolve(FRIENDLY_NAMES[stage], stage=None,
                             hint=f"run `dsrl {'warmstart' if name == 'stage1' else 'online'}` first")
    artifact = store.resolve(name)
    if artifact.stage not in ("warmstart", "online"):
        raise BadInput(f"{name} is a {artifact.stage} artifact; --compare takes prior, prior-mean, stage1, stage2 "
                       "or actor artifacts")
    return artifact


def key_parts(cfg: EvalConfig, store: ArtifactStore) -> KeyParts:
    check_values(cfg)
    names = [n.strip() for n in cfg.compare.split(",") if n.strip()]
    if not names:
        raise BadInput("--compare needs at least one policy (prior, prior-mean, stage1, stage2 or an artifact path)")
    if len(set(names)) != len(names):
        raise BadInput(f"--compare lists a policy twice: {cfg.compare}")
    require_positive(episodes=cfg.episodes, num_envs=cfg.num_envs)
    check_episode_counts(cfg.seed, episodes=cfg.episodes)
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
    inputs = {"base": base.key} | {f"policy:{n}": (a.key if a else n) for n, a in entries.items()}
    return KeyParts(hashed, inputs, {"base": base, "entries": entries})


def artifact_key(cfg: EvalConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_eval(cfg: EvalConfig, store: ArtifactStore, force: bool = False) -> StageResult:
    parts = key_parts(cfg, store)
    base, entries = parts.upstream["base"], parts.upstream["entries"]
    try:
        run: StageRun | None = parts.begin(store, STAGE, SCHEMA, force)
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise
        # A read-only store (a finished store on a read-only mount): evaluate all the same, store nothing.
        console.print(f"note: {store.root} is read-only; the results are printed but not stored")
        run = None
    if run is not None and run.cached:
        result = cached_result(run)
        print_table(result.summary["results"], task_of(base)["name"], cfg.episodes, cfg.noise)
        return result

    device = resolve_device(cfg.device)
    task = task_spec_of(base)
    sampler = load_sampler(base, device)
    results: dict[str, dict[str, Any]] = {}
    for name, artifact in entries.items():
        if name == "prior":
            fn = prior_noise_fn(sampler, cfg.seed)
        elif name == "prior-mean":
            fn = prior_mean_noise_fn(sampler, cfg.seed)
        else:
            fn = actor_noise_fn(load_actor(artifact, device), cfg.noise, cfg.seed)
        noise = BUILTIN_ROWS.get(name, cfg.noise)
        console.print(f"evaluating [bold]{name}[/] ({noise} noise) on {cfg.episodes} episodes")
        stats = evaluate_noise_policy(task, sampler, fn, cfg.episodes, cfg.seed, cfg.num_envs)
        results[name] = {"noise": noise} | stats.as_dict() | {"artifact": artifact.key if artifact else None}
    print_table(results, task.name, cfg.episodes, cfg.noise)
    summary = {"task": task.name, "episodes": cfg.episodes, "noise": cfg.noise, "results": results}
    if run is None:
        return StageResult(None, parts.key(STAGE, SCHEMA), False, summary)
    write_text_atomic(run.dir / MAIN_FILE, json.dumps(summary, indent=2))
    artifact = run.finish(MAIN_FILE, summary, base.meta)
    return StageResult.from_artifact(artifact, cached=False)


def print_table(results: dict[str, dict[str, Any]], task_name: str, episodes: int, noise: NoiseMode) -> None:
    table = Table(
        title=f"eval on {task_name}: {episodes} episodes, the same seeded episodes per row, actors' noise: {noise}",
        caption="noise: sampled = w ~ actor, mean = the actor's mean, N(0,I) = the base policy's own noise, "
                "w_head=0 = zero noise on the executed head; unsteered tails from a seeded N(0,I). "
                "success: Wilson 95% interval; return: mean ± 95% CI",
    )
    table.add_column("policy")
    table.add_column("noise")
    table.add_column("success", justify="right")
    table.add_column("return", justify="right")
    table.add_column("length", justify="right")
    for name, r in results.items():
        table.add_row(name, r["noise"], format_success(r["success_mean"], r["success_low"], r["success_high"]),
                      format_return(r["return_mean"], r["return_ci95"]), f"{r['length_mean']:.1f}")
    console.print(table)
