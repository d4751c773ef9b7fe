"""`dsrl pretrain`: behaviour-clone a flow / shortcut-flow base policy (or register a user's own)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import torch

from dsrl_cli.config import check_values, cosmetic, hashed_config, require_positive
from dsrl_cli.data.chunks import build_chunks
from dsrl_cli.data.dataset import read_dataset
from dsrl_cli.data.normalization import Normalizer
from dsrl_cli.errors import BadInput
from dsrl_cli.models.flow_policy import FlowPolicy, flow_matching_loss, shortcut_loss
from dsrl_cli.samplers.base_policy_sampler import (
    BasePolicyMeta,
    BasePolicySampler,
    load_user_base_policy,
    save_base_policy,
)
from dsrl_cli.stages.common import KeyParts, StageResult, cached_result, seeded_generator, task_of
from dsrl_cli.store.checkpoint import save_torch
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import JsonlLogger, console
from dsrl_cli.utils.device import resolve_device
from dsrl_cli.utils.seeding import capture_rng_states, restore_rng_states, seed_everything

STAGE = "pretrain"
SCHEMA = 2  # 2: log_every is hashed (it decides log.jsonl)
MAIN_FILE = "base.ckpt"


@dataclass(frozen=True)
class PretrainConfig:
    dataset: str | None = None  # artifact reference; default: the store's dataset.h5
    kind: Literal["flow", "shortcut"] | None = None  # default: the task's base.kind
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    hidden: int | None = None
    depth: int | None = None
    ema_decay: float | None = None
    num_inference_steps: int | None = None
    base_policy: str | None = None  # "module:factory": bring your own policy instead of training
    seed: int = 0
    device: str = cosmetic("auto")
    checkpoint_every: int = cosmetic(1000)
    log_every: int = 250


_TASK_DEFAULTS = {
    "kind": "shortcut", "steps": 4000, "batch_size": 256, "lr": 3e-4, "hidden": 256, "depth": 3,
    "ema_decay": 0.995, "num_inference_steps": 4,
}


def resolve(cfg: PretrainConfig, task: dict) -> PretrainConfig:
    """Fill unset options from the task's `base:` defaults (the result is what gets hashed)."""
    base = task.get("base", {}) or {}
    values = {k: getattr(cfg, k) if getattr(cfg, k) is not None else base.get(k, default)
              for k, default in _TASK_DEFAULTS.items()}
    out = PretrainConfig(**(cfg.__dict__ | values))
    check_values(out)
    require_positive(steps=out.steps, batch_size=out.batch_size, lr=out.lr, hidden=out.hidden,
                     depth=out.depth, num_inference_steps=out.num_inference_steps,
                     checkpoint_every=out.checkpoint_every, log_every=out.log_every)
    if out.kind not in ("flow", "shortcut"):
        raise BadInput(f"--kind must be flow or shortcut, got {out.kind!r}")
    if not 0.0 <= out.ema_decay < 1.0:
        raise BadInput(f"ema_decay must be in [0, 1), got {out.ema_decay}")
    return out


def key_parts(cfg: PretrainConfig, store: ArtifactStore) -> KeyParts:
    """A trained policy hashes its resolved options; a user's policy only its factory and weights' fingerprint."""
    check_values(cfg)
    dataset = store.resolve_default(cfg.dataset, "collect", "run `dsrl collect` first or pass --dataset PATH")
    task = task_of(dataset)
    inputs = {"dataset": dataset.key}
    if cfg.base_policy:
        sampler = _load_user_policy(cfg, dataset, task, resolve_device(cfg.device))
        return KeyParts({"base_policy": cfg.base_policy, "fingerprint": sampler.fingerprint()}, inputs,
                        {"dataset": dataset, "sampler": sampler})
    cfg = resolve(cfg, task)
    return KeyParts(hashed_config(cfg) | {"dataset": None}, inputs, {"dataset": dataset, "task": task, "cfg": cfg})


def artifact_key(cfg: PretrainConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_pretrain(cfg: PretrainConfig, store: ArtifactStore, force: bool = False) -> StageResult:
    parts = key_parts(cfg, store)
    dataset = parts.upstream["dataset"]
    if cfg.base_policy:
        return _register_user_policy(cfg, store, dataset, parts, force)
    task, cfg = parts.upstream["task"], parts.upstream["cfg"]
    device = resolve_device(cfg.device)
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)

    episodes, _ = read_dataset(dataset.main_path)
    normalizer = Normalizer.fit(episodes)
    chunks = build_chunks(episodes, normalizer, task["n_obs_steps"], task["pred_horizon"], task["act_horizon"],
                          task["gamma"])
    obs_cond = torch.as_tensor(chunks.obs_cond, device=device)
    a_seq = torch.as_tensor(chunks.a_seq, device=device)
    meta = BasePolicyMeta(
        obs_dim=dataset.meta["obs_dim"], act_dim=dataset.meta["act_dim"], n_obs_steps=task["n_obs_steps"],
        pred_horizon=task["pred_horizon"], act_horizon=task["act_horizon"],
        num_inference_steps=cfg.num_inference_steps, kind=cfg.kind,
    )

    seed_everything(cfg.seed)
    policy = FlowPolicy(meta.obs_cond_dim, meta.act_dim, meta.pred_horizon, hidden=cfg.hidden, depth=cfg.depth,
                        shortcut=cfg.kind == "shortcut").to(device)
    ema = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=1e-6)
    gen = seeded_generator(cfg.seed + 1, device)

    state, start = run.load_state()
    if state is not None:
        policy.load_state_dict(state["policy"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        restore_rng_states(state["rng"])
        console.print(f"resuming pretrain {run.key} from step {start}")
    logger = JsonlLogger(run.dir / "log.jsonl")
    logger.truncate_after("step", start)

    n = obs_cond.shape[0]
    t0 = time.perf_counter()
    last = {}
    policy.train()
    for step in range(start, cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), device=device, generator=gen)
        if cfg.kind == "shortcut":
            losses = shortcut_loss(policy, obs_cond[idx], a_seq[idx], ema)
            loss = losses["loss"]
        else:
            loss = flow_matching_loss(policy, obs_cond[idx], a_seq[idx])
            losses = {"loss": loss}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(policy.parameters()), 1.0 - cfg.ema_decay)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            last = {k: float(v.detach()) for k, v in losses.items()}
            logger.log({"step": done, **last, "seconds": round(time.perf_counter() - t0, 2)})
            console.print(f"pretrain step {done}/{cfg.steps} loss {last['loss']:.4f}")
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            run.save_state({"policy": policy.state_dict(), "ema": ema.state_dict(),
                            "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                            "rng": capture_rng_states()}, done)

    sampler = BasePolicySampler(policy, ema, normalizer, meta)
    save_base_policy(run.dir / MAIN_FILE, sampler)
    summary = {"kind": cfg.kind, "steps": cfg.steps, "final_loss": last.get("loss"),
               "train_samples": int(n), "seconds": round(time.perf_counter() - t0, 2)}
    out_meta = dataset.meta | {"kind": cfg.kind, "fingerprint": sampler.fingerprint(),
                               "num_inference_steps": cfg.num_inference_steps}
    artifact = run.finish(MAIN_FILE, summary, out_meta)
    return StageResult.from_artifact(artifact, cached=False)


def _load_user_policy(cfg: PretrainConfig, dataset, task: dict, device) -> BasePolicySampler:
    sampler = load_user_base_policy(cfg.base_policy, device)
    meta = sampler.meta
    expected = (dataset.meta["obs_dim"], dataset.meta["act_dim"], task["n_obs_steps"], task["pred_horizon"],
                task["act_horizon"])
    got = (meta.obs_dim, meta.act_dim, meta.n_obs_steps, meta.pred_horizon, meta.act_horizon)
    if got != expected:
        raise BadInput(
            f"base policy {cfg.base_policy} has (obs_dim, act_dim, n_obs_steps, pred_horizon, act_horizon) = {got}, "
            f"but task {task['name']} needs {expected}"
        )
    return sampler


def _register_user_policy(cfg: PretrainConfig, store: ArtifactStore, dataset, parts: KeyParts, force: bool):
    """A user's policy is recorded by factory path and parameter fingerprint, never pickled."""
    sampler = parts.upstream["sampler"]
    meta, fingerprint = sampler.meta, parts.hashed["fingerprint"]
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)
    save_torch(run.dir / MAIN_FILE, {"format": "dsrl-base-policy-user", "factory": cfg.base_policy,
                                     "fingerprint": fingerprint, "meta": meta.to_dict()})
    out_meta = dataset.meta | {"kind": "user", "factory": cfg.base_policy, "fingerprint": fingerprint,
                               "num_inference_steps": meta.num_inference_steps}
    artifact = run.finish(MAIN_FILE, {"kind": "user", "factory": cfg.base_policy}, out_meta)
    return StageResult.from_artifact(artifact, cached=False)
