"""`make bench-rl`: dsrl against the DSRL paper's SB3 recipe, per task, over seeds (long-running, resumable).

For every task (task names or task files) and seed, through one artifact store, so an interrupted run
continues where it stopped and a finished one is a cache hit:

- the task's base policy: `collect` and `pretrain` at the task's own sizes, seed 0, shared by every row
  and seed (the rows differ by how they steer one frozen policy);
- Stage 1 for the seed: `train-qa`, `alias`, `distill-qw`, `warmstart` at their defaults;
- Stage 2 twice: `online` from Stage 1 (`--init-actor stage1 --init-qw qw`) and from scratch;
- the paper's recipe in SB3 (benchmarks/sb3_recipe.py), `default` and `tuned`;
- one `eval` artifact per seed with prior, prior-mean, stage1 and both stage2 actors on `--final-episodes`
  episodes of `dsrl eval`'s seed space (the SB3 runs evaluate themselves on the same episodes, same protocol).

All learning rows share the periodic-eval schedule (`--eval-every`, `--eval-episodes`, the actor's sampled
noise, `dsrl online`'s periodic-eval episode seeds), so their curves compare row for row. Output: a markdown
table (bench_out/bench_rl*.md, also printed), the raw records (bench_out/bench_rl*.json) and one PNG per task
(success vs env steps, mean over seeds with a min-max band) under `--figures` (docs/figures).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.sb3_recipe import VARIANTS, RecipeConfig, run_recipe  # noqa: E402
from dsrl_cli.envs.tasks import load_task  # noqa: E402
from dsrl_cli.errors import DsrlError  # noqa: E402
from dsrl_cli.stages.alias import AliasConfig, run_alias  # noqa: E402
from dsrl_cli.stages.collect import CollectConfig, run_collect  # noqa: E402
from dsrl_cli.stages.common import StageResult  # noqa: E402
from dsrl_cli.stages.distill_qw import DistillConfig, run_distill_qw  # noqa: E402
from dsrl_cli.stages.evaluate import EvalConfig, format_success, run_eval  # noqa: E402
from dsrl_cli.stages.online import OnlineConfig, first_reaching, run_online  # noqa: E402
from dsrl_cli.stages.pipeline import QUICK  # noqa: E402
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain  # noqa: E402
from dsrl_cli.stages.train_qa import TrainQAConfig, run_train_qa  # noqa: E402
from dsrl_cli.stages.warmstart import WarmstartConfig, run_warmstart  # noqa: E402
from dsrl_cli.store.store import ArtifactStore  # noqa: E402
from dsrl_cli.utils.stats import wilson_ci95  # noqa: E402

# The third-party suite (configs/tasks; Meta-World MT1 through dsrl/MetaWorld-v0 and OGBench cube-single).
# Its 6-hour budget was estimated on default and metaworld-reach, before these tasks landed: check it.
SUITE_TASKS: tuple[str, ...] = (
    "metaworld-push", "metaworld-pick-place", "metaworld-door-open", "metaworld-window-open", "ogbench-cube-single",
)
# row id -> label; the learning rows (with a curve) are the last four.
ROWS: dict[str, str] = {
    "prior": "prior (sampled)",
    "prior-mean": "prior-mean (w_head = 0)",
    "stage1": "stage1",
    "stage2-stage1": "stage2 from Stage 1",
    "stage2-scratch": "stage2 from scratch",
    "sb3-default": "SB3 recipe, default",
    "sb3-tuned": "SB3 recipe, tuned",
}
TARGET_GAIN, TARGET_CAP = 0.30, 0.90  # "reached": prior + 30 points, or 90% when that is lower


@dataclass(frozen=True)
class BenchConfig:
    tasks: tuple[str, ...] = SUITE_TASKS
    seeds: int = 3
    env_steps: int = 20_000
    eval_every: int = 2_000
    eval_episodes: int = 50
    final_episodes: int = 100
    utd: int = 20
    jobs: int = 2  # (task, seed) cells run in parallel processes, one thread each: one per core here
    quick: bool = False  # tiny sizes everywhere: checks the wiring, nothing learns
    artifacts: Path = ROOT / "bench_out" / "rl_artifacts"
    out: Path = ROOT / "bench_out"
    figures: Path = ROOT / "docs" / "figures"
    label: str = ""  # suffix of the output files (e.g. "smoke")
    device: str = "cpu"


# --quick: `dsrl pipeline --quick`'s stage sizes, and learners as small.
QUICK_ONLINE = {"num_envs": 4, "utd": 2, "batch_size": 32, "warmup_env_steps": 40, "actor_hidden": 32,
                "critic_hidden": 32, "critic_depth": 1}
QUICK_RECIPE = {"num_envs": 2, "gradient_steps": 2, "batch_size": 32, "warmup_env_steps": 40, "hidden": 16,
                "depth": 1, "final_eval_envs": 10}


def _sized(cfg: BenchConfig, stage: str, **kw: Any) -> dict[str, Any]:
    return kw | (QUICK.get(stage, {}) if cfg.quick else {}) | {"device": cfg.device}


def build_base(task: str, cfg: BenchConfig, store: ArtifactStore) -> tuple[str, str]:
    """The task's dataset and base policy (seed 0, the task's own sizes): shared by every row and seed."""
    prefix = f"[{task}]"
    dataset = _step(prefix, "collect", lambda: run_collect(CollectConfig(**_sized(cfg, "collect", task=task)), store))
    base = _step(prefix, "pretrain", lambda: run_pretrain(PretrainConfig(**_sized(cfg, "pretrain", dataset=dataset)),
                                                          store))
    return dataset, base


def run_cell(task: str, seed: int, cfg: BenchConfig, store: ArtifactStore) -> dict[str, Any]:
    """Every row of one task and seed (each a cached, resumable artifact); returns its record."""
    dataset, base = build_base(task, cfg, store)
    prefix = f"[{task} seed {seed}]"
    refs = {"dataset": dataset, "base": base, "seed": seed}
    qa = _step(prefix, "train-qa", lambda: run_train_qa(TrainQAConfig(**_sized(cfg, "train-qa", **refs)), store))
    alias = _step(prefix, "alias", lambda: run_alias(AliasConfig(**_sized(cfg, "alias", **refs)), store))
    qw = _step(prefix, "distill-qw", lambda: run_distill_qw(
        DistillConfig(**_sized(cfg, "distill-qw", **refs, qa=qa, alias=alias)), store))
    stage1 = _step(prefix, "warmstart", lambda: run_warmstart(
        WarmstartConfig(**_sized(cfg, "warmstart", **refs, qa=qa, qw=qw)), store))
    stage1_seconds = sum(store.resolve(p).manifest["seconds"] for p in (qa, alias, qw, stage1))

    schedule = {"env_steps": cfg.env_steps, "eval_every": cfg.eval_every, "eval_episodes": cfg.eval_episodes,
                "seed": seed, "device": cfg.device}
    runs: dict[str, StageResult] = {}
    for row, init in (("stage2-stage1", {"init_actor": stage1, "init_qw": qw}), ("stage2-scratch", {})):
        online = OnlineConfig(base=base, **schedule, **init, **({"utd": cfg.utd} | (QUICK_ONLINE if cfg.quick else {})))
        runs[row] = _step(prefix, row, lambda c=online: run_online(c, store), path=False)
    for variant, overrides in VARIANTS.items():
        recipe = RecipeConfig(base=base, **schedule, final_eval_episodes=cfg.final_episodes, **overrides,
                              **(QUICK_RECIPE if cfg.quick else {}))
        runs[f"sb3-{variant}"] = _step(prefix, f"sb3-{variant}", lambda c=recipe: run_recipe(c, store), path=False)

    # One eval artifact per seed for the rows dsrl evaluates; the SB3 runs evaluated themselves on the same
    # episodes with the same protocol (their summary's final_eval).
    names = {"prior": "prior", "prior-mean": "prior-mean", "stage1": stage1,
             "stage2-stage1": str(runs["stage2-stage1"].path), "stage2-scratch": str(runs["stage2-scratch"].path)}
    evaluated = _step(prefix, "eval", lambda: run_eval(EvalConfig(
        compare=",".join(names.values()), episodes=cfg.final_episodes, base=base, seed=seed, device=cfg.device),
        store), path=False)
    finals = {row: evaluated.summary["results"][name] for row, name in names.items()}
    finals |= {row: runs[row].summary["final_eval"] for row in runs if row.startswith("sb3-")}
    rows: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        run = runs.get(row)
        seconds = run.summary["seconds"] if run is not None else (stage1_seconds if row == "stage1" else None)
        rows[row] = {"successes": finals[row]["successes"], "episodes": finals[row]["episodes"],
                     "return": finals[row]["return_mean"], "curve": run.summary["curve"] if run else None,
                     "seconds": seconds}
    return {"task": load_task(task).name, "seed": seed, "rows": rows}


def _step(prefix: str, what: str, run: Callable[[], StageResult], path: bool = True) -> Any:
    """Run one stage; print whether it was cached or how long it took (wall and this process's CPU time:
    on a shared machine the CPU time is what the run would take alone, one thread per process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    took = f"done in {time.perf_counter() - wall:,.0f} s ({time.process_time() - cpu:,.0f} s CPU)"
    print(f"{prefix} {what} {'cached' if result.cached else took}: {result.path}", flush=True)
    return str(result.path) if path else result


def _cell_in_worker(task: str, seed: int, cfg: BenchConfig) -> dict[str, Any]:
    return run_cell(task, seed, cfg, ArtifactStore(cfg.artifacts))


def run_bench(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Every (task, seed) cell, `cfg.jobs` at a time; the records come back in task, seed order."""
    store = ArtifactStore(cfg.artifacts)
    for task in cfg.tasks:  # first, alone: two cells must never build one shared artifact at once
        build_base(task, cfg, store)
    cells = [(task, seed) for task in cfg.tasks for seed in range(cfg.seeds)]
    if cfg.jobs == 1:
        return [run_cell(task, seed, cfg, store) for task, seed in cells]
    # Cells write disjoint artifacts (their seed is in every key); the alias LMDB cache and the friendly-name
    # links are safe to share between processes. Spawned, not forked: torch and forking do not mix.
    with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_cell_in_worker, task, seed, cfg) for task, seed in cells]
        return [f.result() for f in futures]


# ---- the report: pure functions of the records (tests/test_sb3_recipe.py feeds them fake ones) ----

def target_success(records: Sequence[dict[str, Any]]) -> float | None:
    """The "reached" level of a task: the prior's pooled final success + 30 points, at most 90%."""
    n = sum(r["rows"]["prior"]["episodes"] for r in records)
    k = [r["rows"]["prior"]["successes"] for r in records]
    if n == 0 or any(v is None for v in k):
        return None  # a task without a success signal
    return min(sum(k) / n + TARGET_GAIN, TARGET_CAP)


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row: pooled final success with its Wilson interval, per-seed successes, env steps to the target
    (the first of two periodic evaluations in a row at or above it, per seed; None: not reached), wall time."""
    target = target_success(records)
    out: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        cells = [r["rows"][row] for r in sorted(records, key=lambda r: r["seed"]) if row in r["rows"]]
        if not cells:
            continue
        entry: dict[str, Any] = {"seeds": len(cells), "per_seed": [], "steps_to_target": None, "seconds": None}
        if all(c["successes"] is not None for c in cells):
            k, n = sum(c["successes"] for c in cells), sum(c["episodes"] for c in cells)
            low, high = wilson_ci95(k, n)
            entry |= {"success": k / n, "low": low, "high": high,
                      "per_seed": [c["successes"] / c["episodes"] for c in cells]}
        if target is not None and all(c["curve"] is not None for c in cells):
            entry["steps_to_target"] = [first_reaching(c["curve"], target) for c in cells]
        seconds = [c["seconds"] for c in cells if c["seconds"] is not None]
        if seconds:
            entry["seconds"] = sum(seconds) / len(seconds)
        out[row] = entry
    return out


def markdown_table(task: str, records: Sequence[dict[str, Any]], cfg: BenchConfig) -> str:
    summary, target = summarize(records), target_success(records)
    seeds = sorted(r["seed"] for r in records)
    lines = [
        f"### {task}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {cfg.env_steps:,} env steps per learning run; periodic evals of "
        f"{cfg.eval_episodes} episodes every {cfg.eval_every:,} env steps (sampled noise); final success on "
        f"{cfg.final_episodes} `dsrl eval` episodes per seed, pooled over seeds (Wilson 95%). Target: "
        + (f"{100 * target:.0f}% (prior + 30 points, at most 90%), reached when two periodic evals in a row "
           "are at or above it." if target is not None else "n/a (no success signal)."),
        "",
        "| row | final success (pooled) | per seed | env steps to target (per seed) | wall s per seed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row, entry in summary.items():
        success = format_success(entry.get("success"), entry.get("low"), entry.get("high"))
        per_seed = " / ".join(f"{100 * v:.0f}%" for v in entry["per_seed"]) or "n/a"
        steps = entry["steps_to_target"]
        steps_text = "—" if steps is None else " / ".join("not reached" if s is None else f"{s:,}" for s in steps)
        wall = "—" if entry["seconds"] is None else f"{entry['seconds']:,.0f}"
        lines.append(f"| {ROWS[row]} | {success} | {per_seed} | {steps_text} | {wall} |")
    return "\n".join(lines) + "\n"


def plot_task(task: str, records: Sequence[dict[str, Any]], path: Path) -> None:
    """Success vs env steps: per learning row the mean over seeds with a min-max band (evaluations aligned by
    their index); the prior, prior-mean and Stage 1 final successes and the target as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary, target = summarize(records), target_success(records)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    learning = [row for row in ROWS if all(rec["rows"].get(row, {}).get("curve") for rec in records)]
    for i, row in enumerate(learning):
        curves = [rec["rows"][row]["curve"] for rec in records]
        length = min(len(c) for c in curves)
        xs = np.mean([[p["env_steps"] for p in c[:length]] for c in curves], axis=0)
        ys = np.array([[np.nan if p["success"] is None else p["success"] for p in c[:length]] for c in curves])
        color = f"C{i}"
        ax.plot(xs, ys.mean(0), color=color, marker=".", label=f"{ROWS[row]} (mean of {len(curves)})")
        if len(curves) > 1:
            ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.15)
    for row, style in (("prior", ":"), ("prior-mean", "-."), ("stage1", "--")):
        if summary.get(row, {}).get("success") is not None:
            ax.axhline(summary[row]["success"], color="grey", linestyle=style, linewidth=1,
                       label=f"{ROWS[row]}: {100 * summary[row]['success']:.0f}%")
    if target is not None:
        ax.axhline(target, color="black", linewidth=0.8, alpha=0.5, label=f"target {100 * target:.0f}%")
    ax.set_xlabel("env steps")
    ax.set_ylabel("periodic eval success (sampled noise)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{task}: dsrl vs the SB3 recipe (band: min-max over seeds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(records: Sequence[dict[str, Any]], cfg: BenchConfig) -> str:
    """Writes the table, the JSON and one PNG per task; returns the table."""
    suffix = f"_{cfg.label}" if cfg.label else ""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    text = "\n".join(markdown_table(task, recs, cfg) for task, recs in by_task.items())
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / f"bench_rl{suffix}.md").write_text(text, encoding="utf-8")
    (cfg.out / f"bench_rl{suffix}.json").write_text(json.dumps(list(records), indent=1), encoding="utf-8")
    for task, recs in by_task.items():
        plot_task(task, recs, cfg.figures / f"bench_rl_{task}{suffix}.png")
    return text


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated task names or task files")
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds 0..N-1")
    p.add_argument("--env-steps", type=int, default=d.env_steps, help="env steps per learning run")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes, help="episodes per periodic eval")
    p.add_argument("--final-episodes", type=int, default=d.final_episodes, help="`dsrl eval` episodes per seed")
    p.add_argument("--utd", type=int, default=d.utd, help="dsrl online's updates per collected batch")
    p.add_argument("--jobs", type=int, default=d.jobs, help="cells run in parallel (processes)")
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere: a wiring check, nothing learns")
    p.add_argument("--artifacts", type=Path, default=d.artifacts)
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--figures", type=Path, default=d.figures)
    p.add_argument("--label", default=d.label, help="suffix of the output file names")
    p.add_argument("--device", default=d.device)
    a = p.parse_args(argv)
    tasks = tuple(t.strip() for t in a.tasks.split(",") if t.strip())
    for name, value in (("seeds", a.seeds), ("env-steps", a.env_steps), ("eval-episodes", a.eval_episodes),
                        ("final-episodes", a.final_episodes), ("utd", a.utd), ("jobs", a.jobs)):
        if value <= 0:
            p.error(f"--{name} must be positive")
    if a.eval_every < 0 or not tasks:
        p.error("--eval-every must be >= 0 and --tasks must name at least one task")
    return BenchConfig(tasks, a.seeds, a.env_steps, a.eval_every, a.eval_episodes, a.final_episodes, a.utd, a.jobs,
                       a.quick, a.artifacts, a.out, a.figures, a.label, a.device)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    try:
        records = run_bench(cfg)
    except DsrlError as exc:  # one clear line, like the CLI (a missing extra, an unknown task)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    print(report(records, cfg))


if __name__ == "__main__":
    main()
