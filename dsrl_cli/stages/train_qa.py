"""`dsrl train-qa`: Stage 1 step 1, TD-learn the action critic `Q^A(s, a_head)` on dataset chunks.

Double Q with a Polyak target (`action_q_td_loss`). The TD target needs an action at `s'`:
- `dataset` (default, SARSA): the dataset's next chunk head, stays in distribution; where the episode
  was truncated inside or right after the chunk there is no next chunk, and the base policy's decoded
  head for `w ~ N(0, I)` stands in (terminal rows never bootstrap, so their `a'` does not matter);
- `prior`: always the base policy's decoded head for `w ~ N(0, I)` (evaluates the prior policy).

Observations and actions are normalized with the BASE POLICY's normalizer, so `Q^A` sees exactly what the
sampler produces online and what the alias / distill stages feed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dsrl_cli.buffers.action_replay_buffer import ActionBatch, ActionReplayBuffer
from dsrl_cli.config import check_values, cosmetic, hashed_config, require_positive
from dsrl_cli.data.chunks import ChunkData, build_chunks
from dsrl_cli.data.dataset import read_dataset
from dsrl_cli.errors import BadInput
from dsrl_cli.models.action_q_network import ActionQNetwork, action_q_td_loss
from dsrl_cli.stages.common import (
    KeyParts,
    StageResult,
    cached_result,
    check_same_task,
    critic_checkpoint,
    load_sampler,
    seeded_generator,
    task_spec_of,
)
from dsrl_cli.store.checkpoint import save_torch
from dsrl_cli.store.store import Artifact, ArtifactStore
from dsrl_cli.utils.console import JsonlLogger, console
from dsrl_cli.utils.device import resolve_device
from dsrl_cli.utils.seeding import capture_rng_states, restore_rng_states, seed_everything

STAGE = "train-qa"
SCHEMA = 2  # 2: log_every is hashed (it decides log.jsonl)
MAIN_FILE = "qa.ckpt"
EVAL_ROWS = 4096  # rows of the fixed batch the summary's td_error / q_mean are measured on


@dataclass(frozen=True)
class TrainQAConfig:
    dataset: str | None = None  # collect artifact; default: the store's dataset.h5
    base: str | None = None  # pretrain artifact; default: the store's base.ckpt
    steps: int = 3000
    target: Literal["dataset", "prior"] = "dataset"
    batch_size: int = 256
    lr: float = 3e-4
    hidden: int = 256
    depth: int = 3
    tau: float = 0.005
    layer_norm: bool = True
    seed: int = 0
    device: str = cosmetic("auto")
    checkpoint_every: int = cosmetic(1000)
    log_every: int = 250


def validate(cfg: TrainQAConfig) -> None:
    check_values(cfg)
    require_positive(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, hidden=cfg.hidden, depth=cfg.depth,
                     checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every)
    if cfg.target not in ("dataset", "prior"):
        raise BadInput(f"--target must be dataset or prior, got {cfg.target!r}")
    if not 0.0 < cfg.tau <= 1.0:
        raise BadInput(f"tau must be in (0, 1], got {cfg.tau}")


def resolve_dataset_and_base(store: ArtifactStore, dataset_ref: str | None,
                             base_ref: str | None) -> tuple[Artifact, Artifact]:
    dataset = store.resolve_default(dataset_ref, "collect", "run `dsrl collect` first or pass --dataset PATH")
    base = store.resolve_default(base_ref, "pretrain", "run `dsrl pretrain` first or pass --base PATH")
    check_same_task(dataset, base)
    return dataset, base


def dataset_chunks(dataset: Artifact, sampler: Any) -> ChunkData:
    """Chunk transitions of a dataset artifact, normalized with the base policy's own normalizer."""
    task = task_spec_of(dataset)
    meta = sampler.meta
    if (task.n_obs_steps, task.pred_horizon, task.act_horizon) != (meta.n_obs_steps, meta.pred_horizon,
                                                                   meta.act_horizon):
        raise BadInput(
            f"dataset {dataset.key} is cut with (n_obs_steps, pred_horizon, act_horizon) = "
            f"{(task.n_obs_steps, task.pred_horizon, task.act_horizon)} but the base policy uses "
            f"{(meta.n_obs_steps, meta.pred_horizon, meta.act_horizon)}"
        )
    episodes, _ = read_dataset(dataset.main_path)
    if episodes and (episodes[0].obs.shape[-1], episodes[0].actions.shape[-1]) != (meta.obs_dim, meta.act_dim):
        raise BadInput(f"dataset {dataset.key} has (obs_dim, act_dim) = "
                       f"{(episodes[0].obs.shape[-1], episodes[0].actions.shape[-1])}, the base policy "
                       f"{(meta.obs_dim, meta.act_dim)}")
    return build_chunks(episodes, sampler.normalizer, task.n_obs_steps, task.pred_horizon, task.act_horizon,
                        task.gamma)


def next_actions(batch: ActionBatch, sampler: Any, target: str, generator: torch.Generator) -> torch.Tensor:
    """`a'` for the TD target: SARSA with a prior fallback where the dataset has no next chunk, or prior."""
    if target == "prior":
        w = sampler.sample_prior_noise(batch.obs_cond.shape[0], generator=generator)
        return sampler.decode_actions(batch.next_obs_cond, w, head_only=True).to(batch.a_head.device)
    a_next = batch.next_a_head.clone()
    missing = torch.nonzero(batch.has_next < 0.5).flatten()
    if missing.numel() > 0:  # decode only the rows that need a stand-in
        w = sampler.sample_prior_noise(int(missing.numel()), generator=generator)
        a_next[missing] = sampler.decode_actions(batch.next_obs_cond[missing], w, head_only=True).to(a_next.device)
    return a_next


@torch.no_grad()
def _evaluate(q: ActionQNetwork, buffer: ActionReplayBuffer, sampler: Any, cfg: TrainQAConfig,
              device: torch.device) -> dict[str, float]:
    """td_error / q_mean on a fixed seeded batch, so the summary does not depend on the log interval."""
    rows = min(EVAL_ROWS, len(buffer))
    batch = buffer.sample(rows, np.random.default_rng(cfg.seed + 12_345), device)
    gen = seeded_generator(cfg.seed + 54_321, device)
    out = action_q_td_loss(q, batch, next_actions(batch, sampler, cfg.target, gen))
    return {k: float(v) for k, v in out.items()}


def key_parts(cfg: TrainQAConfig, store: ArtifactStore) -> KeyParts:
    validate(cfg)
    dataset, base = resolve_dataset_and_base(store, cfg.dataset, cfg.base)
    return KeyParts(hashed_config(cfg) | {"dataset": None, "base": None}, {"dataset": dataset.key, "base": base.key},
                    {"dataset": dataset, "base": base})


def artifact_key(cfg: TrainQAConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_train_qa(
    cfg: TrainQAConfig,
    store: ArtifactStore,
    force: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> StageResult:
    parts = key_parts(cfg, store)
    dataset, base = parts.upstream["dataset"], parts.upstream["base"]
    device = resolve_device(cfg.device)
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)

    sampler = load_sampler(base, device)
    chunks = dataset_chunks(dataset, sampler)
    buffer = ActionReplayBuffer.from_chunks(chunks)
    meta = sampler.meta

    seed_everything(cfg.seed)
    q = ActionQNetwork(meta.obs_cond_dim, meta.act_horizon, meta.act_dim, hidden=cfg.hidden, depth=cfg.depth,
                       layer_norm=cfg.layer_norm).to(device)
    optimizer = torch.optim.Adam(q.parameters(), lr=cfg.lr)
    sample_rng = np.random.default_rng(cfg.seed)
    noise_gen = seeded_generator(cfg.seed + 1, device)

    state, start = run.load_state()
    if state is not None:
        q.load_state_dict(state["q"])
        optimizer.load_state_dict(state["optimizer"])
        sample_rng.bit_generator.state = state["sample_rng"]
        noise_gen.set_state(state["noise_gen"])
        restore_rng_states(state["rng"])
        console.print(f"resuming train-qa {run.key} from step {start}")
    logger = JsonlLogger(run.dir / "log.jsonl")
    logger.truncate_after("step", start)

    t0 = time.perf_counter()
    q.train()
    for step in range(start, cfg.steps):
        if on_step is not None:
            on_step(step)
        batch = buffer.sample(cfg.batch_size, sample_rng, device)
        out = action_q_td_loss(q, batch, next_actions(batch, sampler, cfg.target, noise_gen))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        q.soft_update(cfg.tau)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            record = {k: float(v.detach()) for k, v in out.items()}
            logger.log({"step": done, **record, "seconds": round(time.perf_counter() - t0, 2)})
            console.print(f"train-qa step {done}/{cfg.steps} td_error {record['td_error']:.4f} "
                          f"q_mean {record['q_mean']:.3f}")
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            run.save_state({"q": q.state_dict(), "optimizer": optimizer.state_dict(),
                            "sample_rng": sample_rng.bit_generator.state, "noise_gen": noise_gen.get_state(),
                            "rng": capture_rng_states()}, done)

    q.eval()
    final = _evaluate(q, buffer, sampler, cfg, device)
    save_torch(run.dir / MAIN_FILE, critic_checkpoint(q, "action", {
        "base": base.key, "dataset": dataset.key, "target": cfg.target, "gamma": float(task_spec_of(base).gamma),
    }))
    summary = {
        "steps": cfg.steps, "target": cfg.target, "train_samples": len(buffer),
        "td_error": final["td_error"], "q_mean": final["q_mean"], "q_std": final["q_std"],
        "target_mean": final["target_mean"], "loss": final["loss"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    artifact = run.finish(MAIN_FILE, summary, base.meta)
    return StageResult.from_artifact(artifact, cached=False)
