"""`dsrl diagnose ...`: plots and plain-language health warnings (DESIGN.md section 7).

The warning thresholds are heuristics chosen to catch the failure modes the spec names (td_error not
falling, q_mean exploding, alpha blowing up, entropy collapsing at once, evaluation success or return
falling from where it started); each message says what was measured so a user can judge it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dsrl_cli.errors import BadInput
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console, read_jsonl
from dsrl_cli.utils.stats import intervals_overlap, wilson_ci95

HEALTH_KEYS = ("td_error", "q_mean", "alpha", "policy_entropy")
SUCCESS_DROP = 0.10  # a fall of 10 points or more is reported even when the two intervals still overlap


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if value is not None:
            xs.append(r["env_steps"])
            ys.append(float(value))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _success_interval(point: dict[str, Any]) -> tuple[float, float] | None:
    if point.get("success_low") is not None and point.get("success_high") is not None:
        return float(point["success_low"]), float(point["success_high"])
    if point.get("episodes"):  # older logs: rebuild the interval from the rate and the episode count
        n = int(point["episodes"])
        return wilson_ci95(round(float(point["success"]) * n), n)
    return None


def _success_text(point: dict[str, Any]) -> str:
    n = point.get("episodes")
    count = f" ({round(float(point['success']) * n)}/{n} episodes)" if n else " (episode count not logged)"
    return f"{100 * float(point['success']):.0f}%{count} at {int(point['env_steps'])} env steps"


def evaluation_warnings(evals: list[dict[str, Any]]) -> list[str]:
    """Warn when the last periodic evaluation is below the first by more than the evaluation noise.

    Success: the two Wilson intervals do not overlap, or it fell by 10 points or more (with the episode
    counts, so a user can judge a small evaluation). Return: it fell by more than either evaluation's 95% CI.
    """
    if len(evals) < 2:
        return []
    first, last = evals[0], evals[-1]
    warnings: list[str] = []
    if first.get("success") is not None and last.get("success") is not None:
        drop = float(first["success"]) - float(last["success"])
        a, b = _success_interval(first), _success_interval(last)
        separated = a is not None and b is not None and not intervals_overlap(a, b)
        if drop > 0 and (round(drop, 9) >= SUCCESS_DROP or separated):
            warnings.append(f"evaluation success fell from {_success_text(first)} to {_success_text(last)}: "
                            "online training made the policy worse than where it started")
    if first.get("return") is not None and last.get("return") is not None:
        drop = float(first["return"]) - float(last["return"])
        ci_first, ci_last = first.get("return_ci95"), last.get("return_ci95")
        if ci_first is not None and ci_last is not None and drop > max(float(ci_first), float(ci_last)):
            warnings.append(f"evaluation return fell from {float(first['return']):.4g} ± {float(ci_first):.2g} at "
                            f"{int(first['env_steps'])} env steps to {float(last['return']):.4g} ± "
                            f"{float(ci_last):.2g} at {int(last['env_steps'])}, more than either evaluation's "
                            "95% CI")
    return warnings


def stage2_warnings(records: list[dict[str, Any]], gamma: float, steered_dim: int) -> list[str]:
    """Plain-language warnings from an online run's log: training curves and periodic evaluations."""
    warnings = evaluation_warnings([r for r in records if r.get("event") == "eval"])
    train = [r for r in records if r.get("event") is None and r.get("td_error") is not None]
    if len(train) < 4:
        return warnings + ["too few logged updates to judge the run (log more often with --set log_every=N)"]
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


def save_figure(fig: Any, path: Path) -> Path:
    """Write a PNG atomically (temp name, then rename) and free the figure."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


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
    return save_figure(fig, path)


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
    panels.append(("eval return", *_series(evals, "return")))
    panels.append(("episode return (training)", *_series(train, "episode_return")))
    # Success panels only where the task reports success (a returns-only task logs null).
    for name, rows, key in (("eval success", evals, "success"), ("episode success (training)", train,
                                                                 "episode_success")):
        xs, ys = _series(rows, key)
        if len(xs):
            panels.append((name, xs, ys))
    task = artifact.meta.get("task_spec", {})
    steered = _steered_dim(artifact)
    warnings = stage2_warnings(records, float(task.get("gamma", 0.99)), steered)
    plot = plot_curves(panels, artifact.dir / "plots" / "stage2_health.png", f"online {artifact.key}")
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if not warnings:
        judged = "evaluation not falling" if len(evals) >= 2 else "evaluation not judged (fewer than two)"
        console.print("[green]stage 2 looks healthy[/]: td_error falling, q_mean bounded, alpha stable, "
                      f"entropy not collapsed, {judged}")
    return {"artifact": artifact.key, "plot": str(plot), "warnings": warnings,
            "final": {k: train[-1].get(k) for k in HEALTH_KEYS} if train else {},
            "evaluations": evals}


def _steered_dim(artifact: Any) -> int:
    from dsrl_cli.store.checkpoint import load_torch

    config = load_torch(artifact.main_path).get("actor_config", {})
    horizon = config.get("act_horizon") if config.get("steer_mode") == "act_horizon" else config.get("pred_horizon")
    return int((horizon or 1) * config.get("act_dim", 1))


def diagnose_alias(root: Path) -> dict[str, Any]:
    """Reconstruction-error distribution of every complete alias artifact, per mode (newest run per mode).

    Saves overlaid histograms of log10(head MSE) to `<store root>/plots/alias_errors.png`, prints median and
    p90 per mode to stderr and returns `{plot, modes: {mode: {median, p90, mean, n, artifact, params}},
    runs: [...]}` where `runs` lists every alias artifact.
    """
    from dsrl_cli.stages.alias import error_stats, load_alias_file

    store = ArtifactStore(root)
    artifacts = sorted((a for a in store.list() if a.stage == "alias"),
                       key=lambda a: (a.manifest.get("created", ""), (a.dir / "manifest.json").stat().st_mtime))
    if not artifacts:
        raise BadInput(f"no complete alias artifact in {root}; run `dsrl alias` first")
    runs: list[dict[str, Any]] = []
    errors: dict[str, np.ndarray] = {}
    modes: dict[str, dict[str, Any]] = {}
    for artifact in artifacts:  # oldest first, so the newest run of a mode wins
        blob = load_alias_file(artifact.main_path)
        err = blob["err"].double().numpy()
        stats = error_stats(err)
        entry = {"median": stats["err_median"], "p90": stats["err_p90"], "mean": stats["err_mean"],
                 "n": int(err.size), "artifact": artifact.key, "params": blob.get("params", {})}
        runs.append({"mode": blob.get("mode"), **entry})
        modes[str(blob.get("mode"))] = entry
        errors[str(blob.get("mode"))] = err
    plot = _plot_alias_errors(errors, modes, store.root / "plots" / "alias_errors.png")
    for mode, entry in modes.items():
        console.print(f"alias {mode} ({entry['artifact']}, {entry['n']} pairs): median error {entry['median']:.3g}, "
                      f"p90 {entry['p90']:.3g}")
    if "retrieve" in modes and "invert" in modes and modes["retrieve"]["median"] > 0:
        ratio = modes["invert"]["median"] / modes["retrieve"]["median"]
        console.print(f"invert / retrieve median error: {ratio:.3g}")
    return {"plot": str(plot), "modes": modes, "runs": runs}


def _plot_alias_errors(errors: dict[str, np.ndarray], modes: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {mode: np.log10(np.clip(err, 1e-12, None)) for mode, err in errors.items() if err.size}
    fig, ax = plt.subplots(figsize=(7, 4))
    if logs:
        lo = min(float(v.min()) for v in logs.values())
        hi = max(float(v.max()) for v in logs.values())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 60)
        for mode, values in logs.items():
            ax.hist(values, bins=bins, alpha=0.55, label=f"{mode}: median {modes[mode]['median']:.2g}, "
                                                         f"p90 {modes[mode]['p90']:.2g} (n={values.size})")
        ax.legend()
    ax.set_xlabel("log10 reconstruction error (head MSE, normalized actions)")
    ax.set_ylabel("pairs")
    ax.set_title("DSRL-NA alias reconstruction error")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def diagnose_stage1(root: Path, ref: str = "stage1.ckpt", batch: int = 1024, device: str = "auto") -> dict[str, Any]:
    """Spec 5.1: on a fixed batch of dataset observations, E[Q(s, w)] for w ~ prior vs w ~ pi_stage1.

    Scores with `Q^W(s, w)` (the critic saved in stage1.ckpt, else the warm start's qw.ckpt input, else the
    store's qw.ckpt) and, when a qa.ckpt is available, with `Q^A(s, decode(s, w)_head)` through the frozen
    base policy. The actor is scored both sampled and by its mean noise. Note that an AW-MLE actor was fitted
    against its own scorer, so that scorer's gain is an in-sample check; the other critic is a cross-check.
    Returns `{"artifact", "observations", "q_w": {...} | None, "q_a": {...} | None, "verdict", "warnings"}`.
    """
    import torch
    from rich.table import Table

    from dsrl_cli.stages import warmstart as ws
    from dsrl_cli.stages.common import load_actor, load_critic_from, load_sampler
    from dsrl_cli.stages.train_qa import dataset_chunks
    from dsrl_cli.store.store import FRIENDLY_NAMES
    from dsrl_cli.utils.device import resolve_device

    store = ArtifactStore(root)
    artifact = store.resolve(ref, stage="warmstart", hint="run `dsrl warmstart` first")
    base_key, dataset_key = artifact.input_key("base"), artifact.input_key("dataset")
    if not base_key or not dataset_key:
        raise BadInput(f"warmstart artifact {artifact.key} records no base policy or dataset input")
    base = store.resolve(base_key, stage="pretrain", hint="its base policy is no longer in the store")
    dataset = store.resolve(dataset_key, stage="collect", hint="its dataset is no longer in the store")
    dev = resolve_device(device)
    sampler = load_sampler(base, dev)
    policy = load_actor(artifact, dev)
    meta = sampler.meta
    obs = ws.fixed_obs_batch(torch.as_tensor(dataset_chunks(dataset, sampler).obs_cond, device=dev), batch)

    def upstream(stage: str) -> Any:
        key = artifact.input_key({"distill-qw": "qw", "train-qa": "qa"}[stage])
        if key:
            return store.resolve(key, stage=stage)
        if (store.root / FRIENDLY_NAMES[stage]).exists():
            found = store.resolve(FRIENDLY_NAMES[stage], stage=stage)
            ws.check_upstream(base, found)
            return found
        return None

    q_w = q_a = None
    qw_source = None
    qw = load_critic_from(artifact.main_path, dev)
    if qw is not None:
        qw_source = f"stage1.ckpt ({artifact.key})"
    else:
        qw_art = upstream("distill-qw")
        if qw_art is not None:
            qw = ws.load_qw(qw_art, meta.obs_cond_dim, meta.pred_horizon * meta.act_dim, dev)
            qw_source = f"qw.ckpt ({qw_art.key})"
    if qw is not None:
        q_w = ws.policy_scores(ws.LatentScorer(qw.eval()), policy, obs) | {"source": qw_source}
    qa_art = upstream("train-qa")
    if qa_art is not None:
        qa = ws.load_qa(qa_art, meta, dev)
        q_a = ws.policy_scores(ws.ActionScorer(qa, sampler), policy, obs) | {"source": f"qa.ckpt ({qa_art.key})"}
    if q_w is None and q_a is None:
        raise BadInput(f"no critic to score warmstart artifact {artifact.key} with: it holds no Q^W and the store "
                       "has no qw.ckpt or qa.ckpt; run `dsrl distill-qw` or `dsrl train-qa` first")

    table = Table(title=f"stage 1 ({artifact.key}) vs prior noise on {obs.shape[0]} dataset observations")
    for column in ("critic", "w ~ prior", "w ~ pi (sampled)", "w = pi mean", "gain (sampled)", "sampled > prior"):
        if column == "critic":
            table.add_column(column, no_wrap=True, min_width=13)
        else:
            table.add_column(column, justify="right")
    warnings: list[str] = []
    for name, scores in (("Q^W(s,w)", q_w), ("Q^A(s,dec(w))", q_a)):
        if scores is None:
            continue
        table.add_row(name, f"{scores['prior']:.4f}", f"{scores['actor_sample']:.4f}", f"{scores['actor_mean']:.4f}",
                      f"{scores['gain_sample']:+.4f}", f"{100 * scores['sample_beats_prior']:.0f}%")
        if not scores["gain_sample"] > 0:
            warnings.append(f"under {name} stage 1 noise does not score higher than prior noise "
                            f"({scores['actor_sample']:.4g} vs {scores['prior']:.4g})")
    console.print(table)
    if warnings:
        verdict = "warning: " + "; ".join(warnings)
        console.print(f"[yellow]{verdict}[/]")
    else:
        verdict = "stage 1 noise scores higher than prior noise"
        console.print(f"[green]{verdict}[/]")
    return {"artifact": artifact.key, "observations": int(obs.shape[0]), "q_w": q_w, "q_a": q_a,
            "verdict": verdict, "warnings": warnings}
