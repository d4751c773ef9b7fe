"""`dsrl distill-qw`: Stage 1 step 3 (DSRL-NA), distill the action critic into a latent critic `Q^W(s, w)`.

Targets come from the frozen `Q^A` (min over its heads, computed under `no_grad`: `Q^A` never gets a
gradient) and every `Q^W` head regresses onto them:
- `alias`: `MSE(Q^W(s, w_alias), Q^A(s, a_head))` on the dataset pairs of an alias artifact;
- `prior` (the paper's form): `w ~ N(0, I)`, target `Q^A(s, decode(s, w)_head)` on dataset observations;
- `both` (default): each batch holds `prior_fraction` prior samples and the rest alias pairs.
The `Q^W` targets are hard-copied from the trained weights at the end, so `dsrl online --init-qw qw.ckpt`
starts with consistent online and target critics. Defaults (hidden 256, depth 3, LayerNorm, double Q)
match the online stage's critic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from dsrl_cli.config import check_values, cosmetic, hashed_config, require_positive
from dsrl_cli.errors import BadInput
from dsrl_cli.models.latent_q_network import LatentQNetwork
from dsrl_cli.stages.alias import CACHE_DIR, load_alias_file
from dsrl_cli.stages.common import (
    KeyParts,
    StageResult,
    cached_result,
    check_same_task,
    critic_checkpoint,
    load_action_critic,
    load_sampler,
    seeded_generator,
)
from dsrl_cli.stages.train_qa import dataset_chunks
from dsrl_cli.store.checkpoint import save_torch
from dsrl_cli.store.store import Artifact, ArtifactStore
from dsrl_cli.utils.console import JsonlLogger, console
from dsrl_cli.utils.device import resolve_device
from dsrl_cli.utils.seeding import capture_rng_states, restore_rng_states, seed_everything

STAGE = "distill-qw"
SCHEMA = 2  # 2: log_every is hashed (it decides log.jsonl)
MAIN_FILE = "qw.ckpt"
HOLDOUT = 1024  # fresh prior samples for the held-out check


@dataclass(frozen=True)
class DistillConfig:
    qa: str | None = None  # train-qa artifact; default: the store's qa.ckpt
    alias: str | None = None  # alias artifact (sources alias / both); default: the store's alias.pt
    base: str | None = None  # pretrain artifact; default: the store's base.ckpt
    dataset: str | None = None  # collect artifact (sources prior / both); default: the store's dataset.h5
    source: Literal["alias", "prior", "both"] = "both"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 3e-4
    hidden: int = 256
    depth: int = 3
    layer_norm: bool = True
    prior_fraction: float = 0.5  # share of prior samples per batch with source=both
    seed: int = 0
    device: str = cosmetic("auto")
    checkpoint_every: int = cosmetic(1000)
    log_every: int = 250


def validate(cfg: DistillConfig) -> None:
    check_values(cfg)
    require_positive(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, hidden=cfg.hidden, depth=cfg.depth,
                     checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every)
    if cfg.source not in ("alias", "prior", "both"):
        raise BadInput(f"--source must be alias, prior or both, got {cfg.source!r}")
    if not 0.0 <= cfg.prior_fraction <= 1.0:
        raise BadInput(f"--prior-fraction must be in [0, 1], got {cfg.prior_fraction}")


def split_batch(cfg: DistillConfig) -> tuple[int, int]:
    """(alias rows, prior rows) of one batch."""
    if cfg.source == "alias":
        return cfg.batch_size, 0
    if cfg.source == "prior":
        return 0, cfg.batch_size
    n_prior = int(round(cfg.batch_size * cfg.prior_fraction))
    return cfg.batch_size - n_prior, n_prior


def _resolve_alias(store: ArtifactStore, ref: str | None) -> Artifact:
    hint = "run `dsrl alias` first or pass --alias PATH"
    if ref is not None and Path(ref).name == CACHE_DIR:
        ref = None  # the shared LMDB cache is no artifact: take the newest alias artifact
    return store.resolve_default(ref, "alias", hint)


def resolve_inputs(cfg: DistillConfig, store: ArtifactStore) -> dict[str, Artifact | None]:
    qa = store.resolve_default(cfg.qa, "train-qa", "run `dsrl train-qa` first or pass --qa PATH")
    base = store.resolve_default(cfg.base, "pretrain", "run `dsrl pretrain` first or pass --base PATH")
    alias = _resolve_alias(store, cfg.alias) if cfg.source in ("alias", "both") else None
    dataset = None
    if cfg.source in ("prior", "both"):
        dataset = store.resolve_default(cfg.dataset, "collect", "run `dsrl collect` first or pass --dataset PATH")
    for upstream in (qa, alias, dataset):
        if upstream is None:
            continue
        check_same_task(base, upstream)
        if upstream.stage != "collect" and upstream.input_key("base") not in (None, base.key):
            raise BadInput(f"{upstream.stage} artifact {upstream.key} was made with another base policy than "
                           f"{base.key}; rerun it or pass --base with the base policy it used")
    return {"qa": qa, "base": base, "alias": alias, "dataset": dataset}


def q_a_target(qa: torch.nn.Module, obs_cond: torch.Tensor, a_head: torch.Tensor) -> torch.Tensor:
    """min over Q^A's heads, without any gradient path into Q^A."""
    with torch.no_grad():
        return qa(obs_cond, a_head).min(dim=0).values


def distill_loss(qw: LatentQNetwork, qa: torch.nn.Module, sampler: Any, alias_part: tuple | None,
                 prior_obs: torch.Tensor | None, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """One distillation loss. `alias_part = (obs_cond, w_alias, a_head)`; `prior_obs` rows get `w ~ N(0,I)`.

    Returns `loss` (sum over Q^W heads of the MSE to the detached target) and detached diagnostics.
    """
    obs_parts, w_parts, y_parts = [], [], []
    if alias_part is not None and alias_part[0].shape[0] > 0:
        obs, w, a_head = alias_part
        obs_parts.append(obs)
        w_parts.append(w)
        y_parts.append(q_a_target(qa, obs, a_head))
    if prior_obs is not None and prior_obs.shape[0] > 0:
        w = sampler.sample_prior_noise(prior_obs.shape[0], generator=generator).to(prior_obs.device)
        with torch.no_grad():
            head = sampler.decode_actions(prior_obs, w, head_only=True).to(prior_obs.device)
        obs_parts.append(prior_obs)
        w_parts.append(w)
        y_parts.append(q_a_target(qa, prior_obs, head))
    obs, w, y = torch.cat(obs_parts), torch.cat(w_parts), torch.cat(y_parts)
    pred = qw(obs, w.reshape(w.shape[0], -1))  # [num_q, B]
    loss = torch.stack([F.mse_loss(p, y) for p in pred]).sum()
    return {"loss": loss, "mae": (pred.detach() - y).abs().mean(), "q_mean": pred.detach().mean(),
            "target_mean": y.mean(), "target_std": y.std() if y.numel() > 1 else y.new_zeros(())}


def key_parts(cfg: DistillConfig, store: ArtifactStore) -> KeyParts:
    validate(cfg)
    inputs = resolve_inputs(cfg, store)
    hashed = hashed_config(cfg) | {"qa": None, "alias": None, "base": None, "dataset": None}
    if cfg.source != "both":
        hashed["prior_fraction"] = None  # irrelevant to a single source
    keys = {name: (a.key if a is not None else None) for name, a in inputs.items()}
    return KeyParts(hashed, keys, inputs)


def artifact_key(cfg: DistillConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_distill_qw(
    cfg: DistillConfig,
    store: ArtifactStore,
    force: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> StageResult:
    parts = key_parts(cfg, store)
    inputs = parts.upstream
    qa_art, base, alias_art, dataset = inputs["qa"], inputs["base"], inputs["alias"], inputs["dataset"]
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    sampler = load_sampler(base, device)
    meta = sampler.meta
    qa = load_action_critic(qa_art.main_path, device).eval()
    qa.requires_grad_(False)
    if (qa.config["obs_cond_dim"], qa.config["act_horizon"], qa.config["act_dim"]) != (
            meta.obs_cond_dim, meta.act_horizon, meta.act_dim):
        raise BadInput(f"Q^A {qa_art.key} expects (obs_cond_dim, act_horizon, act_dim) = "
                       f"{(qa.config['obs_cond_dim'], qa.config['act_horizon'], qa.config['act_dim'])}, "
                       f"the base policy gives {(meta.obs_cond_dim, meta.act_horizon, meta.act_dim)}")

    alias_t: tuple[torch.Tensor, ...] | None = None
    if alias_art is not None:
        blob = load_alias_file(alias_art.main_path)
        alias_t = tuple(blob[k].to(device, torch.float32) for k in ("obs_cond", "w", "a_head"))
        if alias_t[0].shape[1] != meta.obs_cond_dim or tuple(alias_t[1].shape[1:]) != sampler.w_shape:
            raise BadInput(f"alias artifact {alias_art.key} does not match the base policy's shapes")
        if alias_t[0].shape[0] == 0:
            raise BadInput(f"alias artifact {alias_art.key} holds no pairs")
    if dataset is not None:
        prior_pool = torch.as_tensor(dataset_chunks(dataset, sampler).obs_cond, device=device)
    else:
        assert alias_t is not None
        prior_pool = alias_t[0]  # only the held-out check uses prior samples then

    seed_everything(cfg.seed)
    qw = LatentQNetwork(meta.obs_cond_dim, meta.pred_horizon * meta.act_dim, hidden=cfg.hidden, depth=cfg.depth,
                        layer_norm=cfg.layer_norm).to(device)
    optimizer = torch.optim.Adam(qw.parameters(), lr=cfg.lr)
    gen = seeded_generator(cfg.seed + 1, device)

    state, start = run.load_state()
    if state is not None:
        qw.load_state_dict(state["qw"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        restore_rng_states(state["rng"])
        console.print(f"resuming distill-qw {run.key} from step {start}")
    logger = JsonlLogger(run.dir / "log.jsonl")
    logger.truncate_after("step", start)

    n_alias, n_prior = split_batch(cfg)

    def make_batch(g: torch.Generator, rows_alias: int, rows_prior: int) -> tuple[tuple | None, torch.Tensor]:
        part = None
        if rows_alias > 0 and alias_t is not None:
            idx = torch.randint(0, alias_t[0].shape[0], (rows_alias,), device=device, generator=g)
            part = tuple(t[idx] for t in alias_t)
        idx = torch.randint(0, prior_pool.shape[0], (rows_prior,), device=device, generator=g)
        return part, prior_pool[idx]

    qw.train()
    for step in range(start, cfg.steps):
        if on_step is not None:
            on_step(step)
        part, prior_obs = make_batch(gen, n_alias, n_prior)
        out = distill_loss(qw, qa, sampler, part, prior_obs, gen)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            record = {k: float(v.detach()) for k, v in out.items()}
            logger.log({"step": done, **record, "seconds": round(time.perf_counter() - t0, 2)})
            console.print(f"distill-qw step {done}/{cfg.steps} loss {record['loss']:.4g} mae {record['mae']:.4g}")
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            run.save_state({"qw": qw.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                            "rng": capture_rng_states()}, done)
    qw.hard_update()
    qw.eval()

    # Fixed, seeded evaluation batches: the summary does not depend on logging or resumption.
    eval_gen = seeded_generator(cfg.seed + 99_991, device)
    with torch.no_grad():
        part, prior_obs = make_batch(eval_gen, *(4 * r for r in (n_alias, n_prior)))
        final = distill_loss(qw, qa, sampler, part, prior_obs, eval_gen)
        holdout = distill_loss(qw, qa, sampler, None, make_batch(eval_gen, 0, HOLDOUT)[1], eval_gen)
    save_torch(run.dir / MAIN_FILE, critic_checkpoint(qw, "latent", {
        "base": base.key, "qa": qa_art.key, "alias": alias_art.key if alias_art else None, "source": cfg.source,
    }))
    summary = {
        "source": cfg.source, "steps": cfg.steps, "final_loss": float(final["loss"]), "final_mae": float(final["mae"]),
        "holdout_prior_mae": float(holdout["mae"]), "holdout_target_mean": float(holdout["target_mean"]),
        "holdout_q_mean": float(holdout["q_mean"]), "holdout_target_std": float(holdout["target_std"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    artifact = run.finish(MAIN_FILE, summary, base.meta)
    return StageResult.from_artifact(artifact, cached=False)


__all__ = ["DistillConfig", "distill_loss", "q_a_target", "run_distill_qw"]
