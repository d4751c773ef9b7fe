"""`make bench-learning`: learning curves and targets (never part of the timed tests).

    python benchmarks/run.py                  # everything below (long: tens of minutes on 2 cores)
    python benchmarks/run.py --only utd       # env steps to 80% success for UTD 1, 5, 20 over 3 seeds
    python benchmarks/run.py --only speed     # = python benchmarks/speed.py (`make bench`: the speed table)

Results go to `bench_out/` (JSON + PNG) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsrl_cli.envs.macro import MacroVecEnv  # noqa: E402
from dsrl_cli.utils.seeding import episode_seeds  # noqa: E402

OUT = ROOT / "bench_out"


def bench_oracle(artifacts: Path, episodes: int = 100, m: int = 32) -> dict:
    """How good can noise steering get on the default task? A greedy oracle that, every macro step, keeps
    the one of `m` prior noises whose decoded head ends closest to the goal button."""
    from dsrl_cli.envs.fork_reach import BUTTONS, STEP_SIZE
    from dsrl_cli.stages.collect import CollectConfig, run_collect
    from dsrl_cli.stages.common import load_sampler, task_spec_of
    from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
    from dsrl_cli.store.store import ArtifactStore

    store = ArtifactStore(artifacts)
    run_collect(CollectConfig(), store)
    base = run_pretrain(PretrainConfig(device="cpu"), store).artifact
    sampler, task = load_sampler(base, torch.device("cpu")), task_spec_of(base)
    venv = MacroVecEnv(task, episodes, seed=0)
    hist = venv.reset(seeds=episode_seeds("eval", 0, 0, episodes))  # the episodes `dsrl eval` uses
    pending, success = np.ones(episodes, bool), np.zeros(episodes, bool)
    buttons, gen = np.asarray(BUTTONS), torch.Generator().manual_seed(0)
    while pending.any():
        obs_cond = sampler.obs_cond_from_history(hist)
        w = sampler.sample_prior_noise(episodes * m, generator=gen)
        heads = sampler.env_actions(sampler.decode_actions(obs_cond.repeat_interleave(m, 0), w, head_only=True))
        end = hist[:, -1, None, :2] + STEP_SIZE * heads.reshape(episodes, m, -1, 2).sum(2)
        goal = buttons[hist[:, -1, 2:].argmax(1)]
        best = np.linalg.norm(end - goal[:, None], axis=2).argmin(1)
        chosen = w.reshape(episodes, m, *w.shape[1:])[np.arange(episodes), best]
        step = venv.step(sampler.env_actions(sampler.decode_actions(obs_cond, chosen, head_only=True)))
        ended = (step.terminated | step.truncated) & pending
        success[ended] = step.episode_success[ended]
        pending &= ~ended
        hist = step.obs_hist
    venv.close()
    return {"figure": f"greedy best-of-{m} prior noise success ({episodes} episodes)", "value": success.mean()}


def bench_utd(seeds: int, utds: list[int], env_steps: int, artifacts: Path) -> list[dict]:
    """Env steps to reach 80% eval success for each UTD, over seeds, through the real CLI stages."""
    from dsrl_cli.stages.collect import CollectConfig, run_collect
    from dsrl_cli.stages.online import OnlineConfig, run_online
    from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
    from dsrl_cli.store.store import ArtifactStore

    store = ArtifactStore(artifacts)
    run_collect(CollectConfig(), store)
    run_pretrain(PretrainConfig(device="cpu"), store)
    results = []
    for utd in utds:
        for seed in range(seeds):
            cfg = OnlineConfig(utd=utd, env_steps=env_steps, seed=seed, device="cpu", eval_every=500,
                               eval_episodes=100, stop_at_success=0.8)
            result = run_online(cfg, store)
            results.append({"utd": utd, "seed": seed, "env_steps_to_80": result.summary["env_steps_to_80"],
                            "final_success": result.summary["final_success"], "curve": result.summary["curve"]})
            print(f"utd {utd} seed {seed}: to 80% {result.summary['env_steps_to_80']}, "
                  f"final {result.summary['final_success']}", flush=True)
    return results


def bench_target(seeds: int, env_steps: int, artifacts: Path, init_from_stage1: bool = False) -> list[dict]:
    """Issue-3 acceptance: `online --utd 20` for a fixed env-step budget, then 100 evaluation episodes."""
    from dsrl_cli.stages.collect import CollectConfig, run_collect
    from dsrl_cli.stages.evaluate import EvalConfig, run_eval
    from dsrl_cli.stages.online import OnlineConfig, run_online
    from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
    from dsrl_cli.store.store import ArtifactStore

    store = ArtifactStore(artifacts)
    run_collect(CollectConfig(), store)
    run_pretrain(PretrainConfig(device="cpu"), store)
    rows = []
    for seed in range(seeds):
        online = run_online(OnlineConfig(utd=20, env_steps=env_steps, seed=seed, device="cpu", eval_every=2_500,
                                         eval_episodes=50), store)
        result = run_eval(EvalConfig(compare=f"prior,{online.path}", episodes=100, device="cpu"), store)
        res = result.summary["results"]
        rows.append({"seed": seed, "env_steps": online.summary["env_steps"],
                     "prior_success": res["prior"]["success_mean"],
                     "stage2_success": res[str(online.path)]["success_mean"],
                     "stage2_low": res[str(online.path)]["success_low"],
                     "stage2_high": res[str(online.path)]["success_high"], "seconds": online.summary["seconds"]})
        print(rows[-1], flush=True)
    return rows


def bench_stage1(seeds: int, env_steps: int, artifacts: Path) -> list[dict]:
    """Issue-4 acceptance: env steps to 90% eval success, Stage 2 from scratch vs from Stage 1 (actor + Q^W)."""
    from dsrl_cli.stages.online import OnlineConfig, run_online
    from dsrl_cli.stages.pipeline import PipelineConfig, run_pipeline
    from dsrl_cli.store.store import ArtifactStore

    store = ArtifactStore(artifacts)
    run_pipeline(PipelineConfig(device="cpu", online_env_steps=2_000, eval_episodes=100), store)
    stage1, qw = str(store.root / "stage1.ckpt"), str(store.root / "qw.ckpt")
    rows = []
    for seed in range(seeds):
        for start, init in (("scratch", {}), ("stage1", {"init_actor": stage1, "init_qw": qw})):
            cfg = OnlineConfig(utd=20, env_steps=env_steps, seed=seed, device="cpu", eval_every=500,
                               eval_episodes=100, stop_at_success=0.9, **init)
            summary = run_online(cfg, store).summary
            rows.append({"start": start, "seed": seed, "env_steps_to_90": summary["env_steps_to_90"],
                         "curve": summary["curve"]})
            print(f"{start} seed {seed}: env steps to 90% {summary['env_steps_to_90']}", flush=True)
    return rows


def plot_curves(rows: list[dict], group: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors: dict = {}
    for r in rows:
        xs = [p["env_steps"] for p in r["curve"]]
        ys = [p["success"] for p in r["curve"]]
        color = colors.setdefault(r[group], f"C{len(colors)}")
        ax.plot(xs, ys, color=color, alpha=0.7, marker=".", label=f"{group} {r[group]}" if r["seed"] == 0 else None)
    ax.set_xlabel("env steps")
    ax.set_ylabel("periodic eval success")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["speed", "oracle", "utd", "target", "stage1"], default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--utd", type=str, default="1,5,20")
    parser.add_argument("--env-steps", type=int, default=60_000)
    parser.add_argument("--target-env-steps", type=int, default=20_000)
    parser.add_argument("--artifacts", type=Path, default=OUT / "artifacts")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.only == "speed":  # the speed table has its own script (and references measured in the same run)
        subprocess.run([sys.executable, str(Path(__file__).with_name("speed.py"))], check=True)
        return
    if args.only in (None, "oracle"):
        row = bench_oracle(args.artifacts)
        print(f"{row['figure']}: {100 * row['value']:.0f}%")
    if args.only in (None, "target"):
        rows = bench_target(args.seeds, args.target_env_steps, args.artifacts)
        (OUT / "target.json").write_text(json.dumps(rows, indent=2))
        print(f"{'seed':>4s} {'env steps':>10s} {'prior':>7s} {'stage2 (100 episodes)':>22s}")
        for r in rows:
            print(f"{r['seed']:4d} {r['env_steps']:10d} {100 * r['prior_success']:6.0f}% "
                  f"{100 * r['stage2_success']:12.0f}% [{100 * r['stage2_low']:.0f}, {100 * r['stage2_high']:.0f}]")
    if args.only in (None, "stage1"):
        rows = bench_stage1(args.seeds, args.target_env_steps, OUT / "artifacts_stage1")
        (OUT / "stage1.json").write_text(json.dumps(rows, indent=2))
        plot_curves(rows, "start", OUT / "stage1_vs_scratch.png", "online from scratch vs from Stage 1")
        for start in ("scratch", "stage1"):
            steps = [r["env_steps_to_90"] for r in rows if r["start"] == start]
            print(f"{start:8s} env steps to 90% per seed: {steps}")
    if args.only in (None, "utd"):
        results = bench_utd(args.seeds, [int(u) for u in args.utd.split(",")], args.env_steps, args.artifacts)
        (OUT / "utd.json").write_text(json.dumps(results, indent=2))
        plot_curves(results, "utd", OUT / "utd_curves.png", "online on the default task: UTD sweep")
        print(f"{'UTD':>4s} {'env steps to 80% (per seed)':>40s} {'median':>8s}")
        for utd in sorted({r["utd"] for r in results}):
            steps = [r["env_steps_to_80"] for r in results if r["utd"] == utd]
            finite = [s for s in steps if s is not None]
            median = float(np.median(finite)) if len(finite) == len(steps) else float("nan")
            print(f"{utd:4d} {str(steps):>40s} {median:8.0f}")


if __name__ == "__main__":
    main()
