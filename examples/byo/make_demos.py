"""Write `demos.h5`: ForkReach demonstrations in the real robomimic layout, with a keyed obs group.

This stands in for data you recorded yourself. ForkReach observations are `[x, y, goal one-hot (3)]`;
here they are stored as two named keys, `pos` (2) and `goal` (3), under `data/demo_N/obs` and
`data/demo_N/next_obs`, plus `actions`, `rewards`, `dones` and robomimic's `data.attrs["env_args"]`.
h5py lists the keys alphabetically (`goal`, `pos`), which is NOT the env's order, so the task file says
`obs_keys: [pos, goal]`.

    python make_demos.py --episodes 300 --out demos.h5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

from dsrl_cli.envs.tasks import load_task
from dsrl_cli.stages.collect import collect_episodes

KEYS = {"pos": slice(0, 2), "goal": slice(2, 5)}  # name -> columns of the env's observation


def write_demos(out: Path, episodes: int = 300, noise: float = 1.0, seed: int = 0) -> Path:
    # The built-in task's noisy scripted demonstrator: mixed-quality, multimodal data.
    demos = collect_episodes(load_task("default"), episodes, noise, seed)
    with h5py.File(out, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "dsrl/ForkReach-v0", "type": 2, "env_kwargs": {}})
        data.attrs["total"] = sum(len(ep) for ep in demos)
        for i, ep in enumerate(demos):
            g = data.create_group(f"demo_{i}")
            for group, arr in (("obs", ep.obs), ("next_obs", ep.next_obs)):
                for name in sorted(KEYS):  # written alphabetically, as h5py lists them anyway
                    g.create_dataset(f"{group}/{name}", data=arr[:, KEYS[name]])
            g.create_dataset("actions", data=ep.actions)
            g.create_dataset("rewards", data=ep.rewards)
            dones = np.zeros(len(ep), dtype=np.float32)
            dones[-1] = float(ep.terminated)  # 1 only at a true terminal, not at a time-limit cut
            g.create_dataset("dones", data=dones)
            g.attrs["num_samples"] = len(ep)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("demos.h5"))
    args = parser.parse_args()
    print(write_demos(args.out, args.episodes, args.noise, args.seed))
