"""Task-suite figures that need no training: env steps/s and the scripted demonstrator's success.

    python benchmarks/task_suite.py                       # every suite task (needs the `suite` extra)
    python benchmarks/task_suite.py --tasks metaworld-push --episodes 50

Per task: env construction time; env steps/s of one env (`make_env`, uniform random actions, seeded resets);
the demonstrator's success and mean episode length at noise 0 and at the task's `demo_noise`, over the
same collect seeds `dsrl collect` uses (`collect_episodes`). The prior's success needs a trained base
policy: `dsrl collect && dsrl pretrain && dsrl eval --compare prior,prior-mean` (docs/BENCHMARKS.md).
Writes `bench_out/task_suite.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsrl_cli.envs.tasks import TaskSpec, load_task, make_env  # noqa: E402
from dsrl_cli.stages.collect import collect_episodes  # noqa: E402

SUITE = ("metaworld-push", "metaworld-pick-place", "metaworld-door-open", "metaworld-window-open",
         "ogbench-cube-single")


def env_speed(task: TaskSpec, steps: int) -> tuple[float, float]:
    """(seconds to make the env, env steps/s over `steps` random-action steps with seeded resets)."""
    start = time.perf_counter()
    env = make_env(task)
    made = time.perf_counter() - start
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    env.reset(seed=0)
    start = time.perf_counter()
    episode = 0
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
        if terminated or truncated:
            episode += 1
            env.reset(seed=episode)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return made, rate


def demo_stats(task: TaskSpec, noise: float, episodes: int) -> dict:
    episodes_ = collect_episodes(task, episodes, noise, seed=0)
    success = np.array([bool(ep.success) for ep in episodes_])
    lengths = np.array([len(ep.actions) for ep in episodes_])
    return {"noise": noise, "episodes": episodes, "success": float(success.mean()),
            "mean_length": float(lengths.mean()),
            "mean_success_length": float(lengths[success].mean()) if success.any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SUITE))
    parser.add_argument("--episodes", type=int, default=50, help="demonstrator episodes per noise level")
    parser.add_argument("--steps", type=int, default=2000, help="random-action env steps for the speed figure")
    args = parser.parse_args()

    rows = []
    for name in args.tasks:
        task = load_task(name)
        made, rate = env_speed(task, args.steps)
        demos = [demo_stats(task, noise, args.episodes) for noise in (0.0, task.demo_noise)]
        rows.append({"task": name, "env_make_s": made, "env_steps_per_s": rate, "demonstrator": demos})
        print(json.dumps(rows[-1]), flush=True)

    out = ROOT / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "task_suite.json").write_text(json.dumps(rows, indent=2))
    print("\n| task | env make | env steps/s | demo success, noise 0 | demo success, task noise |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        zero, noisy = row["demonstrator"]
        print(f"| {row['task']} | {row['env_make_s']:.1f} s | {row['env_steps_per_s']:,.0f} | "
              f"{zero['success']:.0%} ({zero['mean_length']:.0f} steps) | "
              f"{noisy['success']:.0%} at {noisy['noise']:g} ({noisy['mean_length']:.0f} steps) |")


if __name__ == "__main__":
    main()
