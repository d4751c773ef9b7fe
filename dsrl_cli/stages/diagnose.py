"""`dsrl diagnose ...`: plots and plain-language health warnings (DESIGN.md section 7).

The warning thresholds are heuristics chosen to catch the failure modes the spec names (td_error not
falling, q_mean exploding, alpha blowing up, entropy collapsing at once); each message says what was
measured so a user can judge it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dsrl_cli.errors import BadInput
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console, read_jsonl

HEALTH_KEYS = ("td_error", "q_mean", "alpha", "policy_entropy")


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if value is not None:
            xs.append(r["env_steps"])
            ys.append(float(value))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def stage2_warnings(records: list[dict[str, Any]], gamma: float, steered_dim: int) -> list[str]:
    """Plain-language warnings from an online run's training log."""
    warnings: list[str] = []
    train = [r for r in records if r.get("event") is None and r.get("td_error") is not None]
    if len(train) < 4:
        return ["too few logged updates to judge the run (log more often with --set log_every=N)"]
    for key in HEALTH_KEYS:
        _, ys = _series(train, key)
        if not np.all(np.isfinite(ys)):
            warnings.append(f"{key} became NaN or infinite: training diverged")
    quarter = max(1, len(train) // 4)
    _, td = _series(train, "td_error")
    first, last = float(np.mean(td[:quarter])), float(np.mean(td[-quarter:]))
    if last > first:
        warnings.append(f"td_error is not falling (first quarter mean {first:.3g}, last quarter {last:.3g})")
    _, q = _series(train, "q_mean")
    returns = [abs(r["episode_return"]) for r in records if r.get("episode_return") is not None]
    q_limit = 2.0 * max(1.0, max(returns, default=1.0)) / max(1.0 - gamma, 1e-6)
    if np.max(np.abs(q)) > q_limit:
        warnings.append(f"q_mean is exploding (|q_mean| reached {np.max(np.abs(q)):.3g}, more than twice the "
                        f"largest plausible discounted return {q_limit / 2:.3g})")
    _, alpha = _series(train, "alpha")
    if alpha[-1] > 10.0 * max(alpha[0], 1e-8) or alpha[-1] > 10.0:
        warnings.append(f"alpha is blowing up ({alpha[0]:.3g} -> {alpha[-1]:.3g}): the actor is being pushed "
                        "towards pure noise")
    _, ent = _series(train, "policy_entropy")
    early = max(1, len(ent) // 10)
    drop = float(ent[0] - np.min(ent[: early + 1]))
    if drop > 2.0 * steered_dim:
        warnings.append(f"policy_entropy collapsed at once (fell by {drop:.3g} nats in the first 10% of the run, "
                        f"more than 2 nats per steered dimension)")
    return warnings


def plot_curves(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.2 * rows), squeeze=False)
    for ax, (name, xs, ys) in zip(axes.flat, panels, strict=False):
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def diagnose_stage2(root: Path, ref: str) -> dict[str, Any]:
    store = ArtifactStore(root)
    artifact = store.resolve(ref, stage="online")
    log = artifact.dir / "log.jsonl"
    if not log.is_file():
        raise BadInput(f"online artifact {artifact.key} has no training log")
    records = read_jsonl(log)
    train = [r for r in records if r.get("event") is None]
    evals = [r for r in records if r.get("event") == "eval"]
    panels = [(key, *_series(train, key)) for key in HEALTH_KEYS]
    panels.append(("eval success", *_series(evals, "success")))
    panels.append(("episode success (training)", *_series(train, "episode_success")))
    task = artifact.meta.get("task_spec", {})
    steered = _steered_dim(artifact)
    warnings = stage2_warnings(records, float(task.get("gamma", 0.99)), steered)
    plot = plot_curves(panels, artifact.dir / "plots" / "stage2_health.png", f"online {artifact.key}")
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if not warnings:
        console.print("[green]stage 2 looks healthy[/]: td_error falling, q_mean bounded, alpha stable, "
                      "entropy not collapsed")
    return {"artifact": artifact.key, "plot": str(plot), "warnings": warnings,
            "final": {k: train[-1].get(k) for k in HEALTH_KEYS} if train else {}}


def _steered_dim(artifact: Any) -> int:
    from dsrl_cli.store.checkpoint import load_torch

    config = load_torch(artifact.main_path).get("actor_config", {})
    horizon = config.get("act_horizon") if config.get("steer_mode") == "act_horizon" else config.get("pred_horizon")
    return int((horizon or 1) * config.get("act_dim", 1))
