"""Cost of per-episode seeding on raw Meta-World MT1 (seed_kwarg re-creates the env every episode) against
``dsrl/MetaWorld-v0`` (seeded through ``reset(seed)``), on the same reach-v3 task and horizon.

    python benchmarks/metaworld_seeding.py [--episodes 10] [--horizon 150]

Needs the Meta-World extra. Each episode: a seeded reset, then zero actions until the episode ends.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsrl_cli.envs.tasks import TaskSpec, load_task, make_env  # noqa: E402


def _episodes_per_second(task: TaskSpec, episodes: int) -> tuple[float, float]:
    """(episodes/s, env steps/s) over `episodes` seeded episodes, after one warm-up episode."""
    env = make_env(task)
    zero = np.zeros(env.action_space.shape, dtype=env.action_space.dtype)

    def episode(seed: int) -> int:
        env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(zero)
            steps += 1
            done = terminated or truncated
        return steps

    episode(10_000)
    start = time.perf_counter()
    steps = sum(episode(seed) for seed in range(episodes))
    elapsed = time.perf_counter() - start
    env.close()
    return episodes / elapsed, steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=150)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # raw MT1's stale observation bounds warn on every episode
    wrapped = TaskSpec.from_dict({**load_task("metaworld-reach").to_dict(), "max_episode_steps": args.horizon})
    raw = TaskSpec.from_dict(
        {
            **wrapped.to_dict(),
            "name": "raw-mt1",
            "env_id": "metaworld:Meta-World/MT1",
            "env_kwargs": {"env_name": "reach-v3"},
            "reward": "success",
            "terminate_on_success": True,
            "seed_kwarg": "seed",
        }
    )
    rows = [("dsrl/MetaWorld-v0 (reset(seed))", wrapped), ("Meta-World/MT1 + seed_kwarg (re-created)", raw)]
    print(f"reach-v3, {args.episodes} seeded episodes of up to {args.horizon} steps, zero actions")
    for label, task in rows:
        eps, sps = _episodes_per_second(task, args.episodes)
        print(f"{label:45s} {eps:7.2f} episodes/s  {sps:9.0f} env steps/s")


if __name__ == "__main__":
    main()
