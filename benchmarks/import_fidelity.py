"""Import fidelity on a task nobody here wrote: Meta-World door-open-v3 from a robomimic file whose obs is a
keyed group, against the same data as a flat array (issue 9's acceptance check).

    python benchmarks/import_fidelity.py [--out bench_out/import_fidelity] [--episodes 100] [--steps 3000]

Steps, each an ordinary `dsrl` command (so this is what a user would run):
1. `dsrl collect` 100 noisy scripted demonstrations on a door-open task file written here (not in configs/);
2. rewrite them as two robomimic files without dsrl's own meta: `flat.h5` (obs [T, 39]) and `keyed.h5`
   (obs a group of five named keys, which h5py lists in another order than the env's);
3. per file, in its own store: `collect --import` (keyed: with the task's `obs_keys`), `pretrain`, and
   `eval --compare prior,prior-mean --episodes 100`; then the keyed store's eval once more with `--force`
   in a new process.
Writes `results.json` and prints a table: the two priors must agree (same episodes, same seeds), and the
repeated eval must give identical numbers. Needs the Meta-World extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py

# Meta-World v3's 39-d observation in the env's order; alphabetical (h5py's) order differs.
OBS_KEYS = [("robot0_eef_pos", 0, 3), ("robot0_gripper_qpos", 3, 4), ("object", 4, 18),
            ("prev_frame", 18, 36), ("goal_pos", 36, 39)]

TASK = """\
name: door-open
env_id: "dsrl_cli.envs.metaworld_tasks:dsrl/MetaWorld-v0"
env_kwargs: {{task: door-open-v3}}
n_obs_steps: 1
pred_horizon: 8
act_horizon: 4
max_episode_steps: 200
gamma: 0.99
demonstrator: metaworld
demo_noise: 1.0
demo_params: {{task: door-open-v3}}
success_key: success
obs_keys: [{keys}]
base: {{kind: shortcut, hidden: 256, depth: 3, num_inference_steps: 4, steps: {steps}, batch_size: 256,
       lr: 3.0e-4, ema_decay: 0.995}}
dataset: {{episodes: {episodes}}}
"""


def dsrl(*args: str) -> dict:
    """Run one `dsrl` command in a fresh process; returns its --json object."""
    cmd = [sys.executable, "-m", "dsrl_cli", *args, "--json", "--device", "cpu"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ | {"NO_COLOR": "1"})
    return json.loads(out.stdout)


def to_robomimic(src: Path, flat: Path, keyed: Path) -> None:
    with h5py.File(src, "r") as f, h5py.File(flat, "w") as fo, h5py.File(keyed, "w") as fk:
        for out in (fo, fk):
            data = out.create_group("data")
            data.attrs["total"] = f["data"].attrs["total"]
            data.attrs["env_args"] = json.dumps({"env_name": "door-open-v3", "type": 2, "env_kwargs": {}})
        for name in f["data"]:
            demo = f["data"][name]
            for out, is_keyed in ((fo, False), (fk, True)):
                g = out["data"].create_group(name)
                for key in ("actions", "rewards", "dones"):
                    g.create_dataset(key, data=demo[key][()])
                g.attrs["num_samples"] = demo.attrs["num_samples"]
                for key in ("obs", "next_obs"):
                    arr = demo[key][()]
                    if not is_keyed:
                        g.create_dataset(key, data=arr)
                        continue
                    group = g.create_group(key)
                    for obs_key, lo, hi in OBS_KEYS:
                        group.create_dataset(obs_key, data=arr[:, lo:hi])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench_out/import_fidelity"))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-episodes", type=int, default=100)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    task = out / "door-open.yaml"
    task.write_text(TASK.format(keys=", ".join(k for k, _, _ in OBS_KEYS), steps=args.steps,
                                episodes=args.episodes))

    native = dsrl("collect", "--task", str(task), "--artifacts", str(out / "native"))
    to_robomimic(Path(native["artifact"]), out / "flat.h5", out / "keyed.h5")
    rows = {}
    for layout in ("flat", "keyed"):
        store = str(out / layout)
        dataset = dsrl("collect", "--task", str(task), "--import", str(out / f"{layout}.h5"), "--artifacts", store)
        base = dsrl("pretrain", "--artifacts", store)
        ev = dsrl("eval", "--compare", "prior,prior-mean", "--episodes", str(args.eval_episodes), "--artifacts", store)
        rows[layout] = {"dataset_key": dataset["key"], "base_key": base["key"], "eval": ev["results"]}
    again = dsrl("eval", "--compare", "prior,prior-mean", "--episodes", str(args.eval_episodes), "--force",
                 "--artifacts", str(out / "keyed"))
    rows["keyed_again"] = {"eval": again["results"]}

    fields = ("successes", "success_mean", "success_low", "success_high", "return_mean", "length_mean")
    print(f"{'layout':<12} {'row':<11} {'success [95% Wilson]':<24} {'return':>8} {'length':>7}")
    for layout, row in rows.items():
        for name, r in row["eval"].items():
            interval = f"{100 * r['success_mean']:.1f}% [{100 * r['success_low']:.1f}, {100 * r['success_high']:.1f}]"
            print(f"{layout:<12} {name:<11} {interval:<24} {r['return_mean']:>8.3f} {r['length_mean']:>7.1f}")
    same_repeat = all(
        {k: rows["keyed"]["eval"][n][k] for k in fields} == {k: rows["keyed_again"]["eval"][n][k] for k in fields}
        for n in rows["keyed"]["eval"]
    )
    summary = {"rows": rows, "repeat_identical": same_repeat,
               "flat_vs_keyed_prior_identical": rows["flat"]["eval"]["prior"] == rows["keyed"]["eval"]["prior"]}
    print(f"keyed eval repeated in a new process gives identical numbers: {same_repeat}")
    print(f"flat and keyed imports give the same prior: {summary['flat_vs_keyed_prior_identical']}")
    (out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
