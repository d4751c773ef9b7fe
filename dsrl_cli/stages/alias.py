"""`dsrl alias`: Stage 1 step 2 (DSRL-NA), map every dataset pair `(obs_cond, a_head)` to a noise `w_alias`
with `decode(obs_cond, w_alias)_head ~= a_head` (see `samplers/noise_aliasing.py` for the two modes).

Two places hold results:
- the artifact `objects/alias/<key>/alias.pt` (friendly name `alias.pt`): this run's pairs, aliases and
  reconstruction errors, what `distill-qw` and `warmstart` read;
- the shared LMDB cache `<store root>/alias.lmdb` (the DESIGN's `artifacts/alias.lmdb`): a real folder
  outside every artifact, keyed by the base policy's fingerprint, the mode and its parameters, the seed,
  the device type and the pair itself. Each entry is a function of exactly these (per-row random draws,
  fixed-size computation blocks), so reusing it never changes a result: another dataset with overlapping
  pairs, another `--batch-size`, `--force`, or an `invert --init retrieve` run after `alias --mode
  retrieve` with the same `--m` and `--seed` only computes the rows the cache lacks, and gives the same
  bytes as a run on an empty cache. Batches are committed as soon as they are computed, so a run killed
  halfway keeps its finished batches and the rerun computes only the missing rows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dsrl_cli.config import check_values, cosmetic, require_positive
from dsrl_cli.errors import BadInput
from dsrl_cli.samplers.noise_aliasing import AliasCache, alias_dataset, alias_namespace, retrieve_params
from dsrl_cli.stages.common import KeyParts, StageResult, cached_result, load_sampler
from dsrl_cli.stages.train_qa import dataset_chunks, resolve_dataset_and_base
from dsrl_cli.store import lock as key_lock
from dsrl_cli.store.checkpoint import load_torch, save_torch
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console
from dsrl_cli.utils.device import resolve_device

STAGE = "alias"
SCHEMA = 2  # 2: per-row random draws, seed in the cache namespace, batch_size no longer hashed
MAIN_FILE = "alias.pt"
ALIAS_FORMAT = "dsrl-alias-v1"
CACHE_DIR = "alias.lmdb"  # under the store root, shared by every alias run


@dataclass(frozen=True)
class AliasConfig:
    dataset: str | None = None  # collect artifact; default: the store's dataset.h5
    base: str | None = None  # pretrain artifact; default: the store's base.ckpt
    mode: Literal["retrieve", "invert"] = "retrieve"
    m: int = 64  # retrieve candidates (also invert's retrieve init)
    steps: int = 30  # invert: Adam iterations
    lr: float = 0.05  # invert: Adam learning rate
    multi_start: int = 4  # invert: starts per row
    init: Literal["retrieve", "random"] = "retrieve"  # invert: first start from the retrieved w
    batch_size: int = cosmetic(1024)  # rows computed (and committed to the cache) at a time: speed only
    max_pairs: int | None = None  # only the first N dataset pairs
    seed: int = 0
    device: str = cosmetic("auto")


def validate(cfg: AliasConfig) -> None:
    check_values(cfg)
    require_positive(m=cfg.m, steps=cfg.steps, lr=cfg.lr, multi_start=cfg.multi_start, batch_size=cfg.batch_size,
                     max_pairs=cfg.max_pairs)
    if cfg.mode not in ("retrieve", "invert"):
        raise BadInput(f"--mode must be retrieve or invert, got {cfg.mode!r}")
    if cfg.init not in ("retrieve", "random"):
        raise BadInput(f"--init must be retrieve or random, got {cfg.init!r}")


def mode_params(cfg: AliasConfig) -> dict[str, Any]:
    """The parameters that decide an alias (the LMDB namespace and the artifact key use exactly these)."""
    if cfg.mode == "retrieve":
        return {"m": cfg.m}
    params: dict[str, Any] = {"steps": cfg.steps, "lr": cfg.lr, "multi_start": cfg.multi_start, "init": cfg.init}
    if cfg.init == "retrieve":
        params["m"] = cfg.m
    return params


def cache_path(store: ArtifactStore) -> Path:
    return store.root / CACHE_DIR


def key_parts(cfg: AliasConfig, store: ArtifactStore) -> KeyParts:
    validate(cfg)
    cache = cache_path(store)
    if (cache.exists() or cache.is_symlink()) and not cache.is_dir():
        raise BadInput(f"{cache} is a file, but the alias cache must be a folder (an LMDB environment); move it away")
    dataset, base = resolve_dataset_and_base(store, cfg.dataset, cfg.base)
    # Only what decides the result: irrelevant options of the other mode do not change the key, and neither
    # does batch_size (every row's alias is computed alone, see samplers/noise_aliasing.py).
    hashed = {"mode": cfg.mode, "params": mode_params(cfg), "max_pairs": cfg.max_pairs, "seed": cfg.seed}
    return KeyParts(hashed, {"dataset": dataset.key, "base": base.key}, {"dataset": dataset, "base": base})


def artifact_key(cfg: AliasConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_alias(
    cfg: AliasConfig,
    store: ArtifactStore,
    force: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> StageResult:
    """`on_batch(rows_done, rows_to_compute)` runs after each batch is committed to the cache."""
    parts = key_parts(cfg, store)
    dataset, base = parts.upstream["dataset"], parts.upstream["base"]
    params = parts.hashed["params"]
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    sampler = load_sampler(base, device)
    chunks = dataset_chunks(dataset, sampler)
    n = len(chunks) if cfg.max_pairs is None else min(len(chunks), cfg.max_pairs)
    obs_cond = np.ascontiguousarray(chunks.obs_cond[:n])
    a_head = np.ascontiguousarray(chunks.a_head[:n])
    fingerprint = sampler.fingerprint()
    namespace = alias_namespace(fingerprint, cfg.mode, params, cfg.seed, device.type)
    # Every cache namespace this run fills (invert's retrieve init fills retrieve's), locked in sorted order.
    namespaces = {namespace}
    if cfg.mode == "invert" and cfg.init == "retrieve":
        namespaces.add(alias_namespace(fingerprint, "retrieve", retrieve_params(params), cfg.seed, device.type))

    progress = Progress(TextColumn(f"[bold]alias {cfg.mode}[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("rows"), TimeElapsedColumn(), console=console, transient=False)
    with AliasCache(cache_path(store)) as cache, contextlib.ExitStack() as locks:
        # One writer per namespace: a concurrent alias run over the same rows (another dataset or max_pairs)
        # waits here, then finds them in the cache instead of computing each row a second time.
        for ns in sorted(namespaces):
            locks.enter_context(key_lock.acquire(cache.path / f"{ns}.lock", on_wait=lambda: console.print(
                "waiting for another alias run filling the same cache rows")))
        locks.enter_context(progress)
        bar = progress.add_task("alias", total=None)

        def report(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)
            if on_batch is not None:
                on_batch(done, total)

        w, err, computed = alias_dataset(sampler, obs_cond, a_head, cfg.mode, params, cache, cfg.batch_size,
                                         progress_callback=report, seed=cfg.seed, fingerprint=fingerprint)
        progress.update(bar, total=max(computed, 1), completed=max(computed, 1))
    console.print(f"alias {cfg.mode}: {n} pairs, {computed} computed, {n - computed} from {cache_path(store)}")

    save_torch(run.dir / MAIN_FILE, {
        "format": ALIAS_FORMAT, "mode": cfg.mode, "params": params, "namespace": namespace,
        "w": torch.from_numpy(np.asarray(w, np.float32)), "err": torch.from_numpy(np.asarray(err, np.float32)),
        "obs_cond": torch.from_numpy(obs_cond), "a_head": torch.from_numpy(a_head),
        "base": base.key, "dataset": dataset.key,
    })
    summary = {"mode": cfg.mode, "params": params, "pairs": int(n), "computed": int(computed),
               "from_cache": int(n - computed), **error_stats(err),
               # ~1 for noise in the prior's typical set; far above 1 means out-of-distribution aliases
               "w_rms": float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) if n else float("nan"),
               "cache": str(cache_path(store)),
               "seconds": round(time.perf_counter() - t0, 2)}
    artifact = run.finish(MAIN_FILE, summary, base.meta)
    return StageResult.from_artifact(artifact, cached=False)


def error_stats(err: Any) -> dict[str, float]:
    e = np.asarray(err, np.float64)
    if e.size == 0:
        return {"err_median": float("nan"), "err_p90": float("nan"), "err_mean": float("nan")}
    return {"err_median": float(np.median(e)), "err_p90": float(np.quantile(e, 0.9)), "err_mean": float(e.mean())}


def load_alias_file(path: Path) -> dict[str, Any]:
    """The contents of an alias.pt (plain tensors and strings), checked for format and consistent rows."""
    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != ALIAS_FORMAT:
        raise BadInput(f"{path} is not a dsrl alias file (expected format {ALIAS_FORMAT})")
    n = blob["w"].shape[0]
    if any(blob[k].shape[0] != n for k in ("err", "obs_cond", "a_head")):
        raise BadInput(f"alias file {path} has inconsistent row counts")
    return blob
