"""Bring your own data and policy: faithful imports through `collect`, and `pipeline` over them.

Runs the worked example in examples/byo end to end (quick sizes) so it cannot rot.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dsrl_cli.cli.app import app
from dsrl_cli.data.dataset import read_dataset
from dsrl_cli.envs.tasks import TASKS_DIR, TaskSpec, load_task
from dsrl_cli.errors import BadInput
from dsrl_cli.stages.collect import check_source_env, collect_episodes
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
from dsrl_cli.stages.train_qa import TrainQAConfig, run_train_qa
from dsrl_cli.store.store import ArtifactStore
from tests.helpers import TINY_PRETRAIN

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "byo"
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"byo_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example folder with its demos.h5 (keyed obs group) and trained my_policy.pt."""
    folder = tmp_path_factory.mktemp("byo")
    for name in ("task.yaml", "my_policy.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    _example_module("make_demos").write_demos(folder / "demos.h5", episodes=30, seed=0)
    _example_module("my_policy").train(folder / "demos.h5", folder / "my_policy.pt", steps=30)
    return folder


@pytest.fixture
def user_policy(byo: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`my_policy:make_policy` importable the way a user sets it up (PYTHONPATH), weights from the copy."""
    monkeypatch.syspath_prepend(str(byo))
    monkeypatch.setenv("MY_POLICY_WEIGHTS", str(byo / "my_policy.pt"))
    sys.modules.pop("my_policy", None)
    yield "my_policy:make_policy"
    sys.modules.pop("my_policy", None)


# ---------------------------------------------------------------------------- obs_keys
def test_keyed_import_follows_obs_keys_and_restores_the_env_order(byo: Path, tmp_path: Path) -> None:
    root = tmp_path / "art"
    result = invoke("collect", "--task", byo / "task.yaml", "--import", byo / "demos.h5", "--artifacts", root)
    assert result.exit_code == 0, result.stderr
    assert "obs keys pos, goal" in result.stderr
    episodes, meta = read_dataset(result.stdout.strip().splitlines()[-1])
    # The same demonstrations rolled directly: the env's own observation order, column for column.
    direct = collect_episodes(load_task("default"), 30, 1.0, 0)
    assert len(episodes) == len(direct)
    for got, want in zip(episodes, direct, strict=True):
        np.testing.assert_array_equal(got.obs, want.obs)
        np.testing.assert_array_equal(got.next_obs, want.next_obs)
    assert meta["obs_format"] == "keys" and meta["obs_keys"] == ["pos", "goal"]
    assert meta["source_env_args"]["env_name"] == "dsrl/ForkReach-v0" and len(meta["source_sha256"]) == 64

    # --obs-keys wins over the task's (and enters the key): the columns come out in its order.
    other = invoke("collect", "--task", byo / "task.yaml", "--import", byo / "demos.h5", "--artifacts", root,
                   "--obs-keys", "goal,pos")
    assert other.exit_code == 0, other.stderr
    assert other.stdout != result.stdout
    swapped, meta2 = read_dataset(other.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(swapped[0].obs, direct[0].obs[:, [2, 3, 4, 0, 1]])
    assert meta2["obs_keys"] == ["goal", "pos"]


def test_keyed_import_without_obs_keys_is_refused_and_writes_nothing(byo: Path, tmp_path: Path) -> None:
    # Before: concatenated alphabetically (goal, pos), i.e. silently scrambled.
    root = tmp_path / "art"
    result = invoke("collect", "--task", "default", "--import", byo / "demos.h5", "--artifacts", root)
    assert result.exit_code == 2
    assert "group of named keys (goal, pos)" in result.stderr and "--obs-keys" in result.stderr
    assert not (root / "objects").exists()
    missing = invoke("collect", "--task", byo / "task.yaml", "--import", byo / "demos.h5", "--artifacts", root,
                     "--obs-keys", "pos,gaol")
    assert missing.exit_code == 2 and "gaol" in missing.stderr and "the file has goal, pos" in missing.stderr
    assert not (root / "objects").exists()


@pytest.mark.parametrize("value", ["pos", [], ["a", "a"], [1]])
def test_task_obs_keys_are_validated(tmp_path: Path, value: object) -> None:
    data = yaml.safe_load((EXAMPLE / "task.yaml").read_text()) | {"obs_keys": value}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BadInput, match="field 'obs_keys' must be a non-empty list of distinct key names"):
        load_task(str(path))


def test_task_dataset_file_is_relative_to_the_task_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(EXAMPLE / "task.yaml", tmp_path / "sub" / "task.yaml")
    task = load_task(str(tmp_path / "sub" / "task.yaml"))
    assert task.dataset["file"] == str(tmp_path / "sub" / "demos.h5")
    assert task.obs_keys == ["pos", "goal"]
    assert TaskSpec.from_dict(task.to_dict()) == task


# ---------------------------------------------------------------------------- env_args
def _write_flat_robomimic(path: Path, episodes: list, env_args: dict | None, next_obs: bool = True) -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if env_args is not None:
            data.attrs["env_args"] = json.dumps(env_args)
        for i, ep in enumerate(episodes):
            g = data.create_group(f"demo_{i}")
            g.create_dataset("obs", data=ep.obs)
            if next_obs:
                g.create_dataset("next_obs", data=ep.next_obs)
            g.create_dataset("actions", data=ep.actions)
            g.create_dataset("rewards", data=ep.rewards)
            dones = np.zeros(len(ep))
            dones[-1] = float(ep.terminated)
            g.create_dataset("dones", data=dones)
    return path


def test_env_args_of_another_env_is_refused_unless_overridden(tmp_path: Path) -> None:
    demos = collect_episodes(load_task("default"), 3, 1.0, 0)
    path = _write_flat_robomimic(tmp_path / "lift.h5", demos, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
    root = tmp_path / "art"
    result = invoke("collect", "--import", path, "--artifacts", root)
    assert result.exit_code == 2
    assert "'Lift'" in result.stderr and "dsrl/ForkReach-v0" in result.stderr
    assert "--ignore-env-args" in result.stderr and not (root / "objects").exists()
    ok = invoke("collect", "--import", path, "--artifacts", root, "--ignore-env-args", "--json")
    assert ok.exit_code == 0, ok.stderr
    _, meta = read_dataset(json.loads(ok.stdout)["artifact"])
    assert meta["source_env_args"]["env_name"] == "Lift"
    # What dsrl writes names the env by its id, so re-importing our own file passes the check.
    again = invoke("collect", "--import", json.loads(ok.stdout)["artifact"], "--artifacts", tmp_path / "b")
    assert again.exit_code == 0, again.stderr
    with h5py.File(json.loads(ok.stdout)["artifact"], "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "dsrl/ForkReach-v0"


def test_env_args_check_for_metaworld_tasks() -> None:
    task = TaskSpec(name="door", env_id="dsrl_cli.envs.metaworld_tasks:dsrl/MetaWorld-v0",
                    env_kwargs={"task": "door-open-v3"}, n_obs_steps=1, pred_horizon=8, act_horizon=4)
    here = Path("d.h5")
    for fits in ({"env_args": {"env_name": "door-open-v3"}},  # robomimic-style: the task as env_name
                 {"env_args": {"env_name": "Meta-World/MT1", "env_kwargs": {"env_name": "door-open-v3"}}},
                 {"env_args": {"env_name": "dsrl/MetaWorld-v0", "env_kwargs": {"task": "door-open-v3"}}},
                 {"task_spec": {"env_id": task.env_id, "env_kwargs": {"task": "door-open-v3"}}},
                 {"env_args": None}, {}):
        check_source_env(fits, task, here)
    with pytest.raises(BadInput, match="'reach-v3'.*'door-open-v3'.*--ignore-env-args"):
        check_source_env({"env_args": {"env_name": "reach-v3"}}, task, here)
    with pytest.raises(BadInput, match="'reach-v3'"):  # our own files: the recorded task's env_kwargs
        check_source_env({"task_spec": {"env_id": task.env_id, "env_kwargs": {}}}, task, here)
    fork = load_task("default")
    check_source_env({"env_args": {"env_name": "dsrl/ForkReach-v0"}}, fork, here)
    with pytest.raises(BadInput, match="'door-open-v3'.*'dsrl/ForkReach-v0'"):
        check_source_env({"env_args": {"env_name": "door-open-v3"}}, fork, here)


# ---------------------------------------------------------------------------- truncated episodes
def _short_task(tmp_path: Path) -> Path:
    """ForkReach cut at 14 steps: some noisy demonstrations end truncated, the others terminal."""
    data = yaml.safe_load((TASKS_DIR / "default.yaml").read_text()) | {"name": "short", "max_episode_steps": 14}
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _write_d4rl(path: Path, episodes: list) -> Path:
    """D4RL layout without next_observations: one flat array per field, episodes end at terminals/timeouts."""
    terminals, timeouts = [], []
    for ep in episodes:
        end = np.zeros(len(ep), bool)
        end[-1] = True
        terminals.append(end & ep.terminated)
        timeouts.append(end & (not ep.terminated))
    with h5py.File(path, "w") as f:
        for name, parts in (("observations", [ep.obs for ep in episodes]),
                            ("actions", [ep.actions for ep in episodes]),
                            ("rewards", [ep.rewards for ep in episodes]),
                            ("terminals", terminals), ("timeouts", timeouts)):
            f.create_dataset(name, data=np.concatenate(parts))
    return path


@pytest.mark.parametrize("fmt", ["robomimic", "d4rl"])
def test_truncated_episodes_are_kept_whole_bc_uses_them_td_does_not(tmp_path: Path, fmt: str) -> None:
    task_path = _short_task(tmp_path)
    demos = collect_episodes(load_task(str(task_path)), 12, 1.0, 0)
    truncated = [ep for ep in demos if not ep.terminated]
    assert truncated and len(truncated) < len(demos)  # both kinds present
    if fmt == "robomimic":  # without next_obs, the successor of a truncated last step is unknown
        path = _write_flat_robomimic(tmp_path / "d.h5", demos, None, next_obs=False)
    else:
        path = _write_d4rl(tmp_path / "d.h5", demos)
    store = ArtifactStore(tmp_path / "art")
    result = invoke("collect", "--task", task_path, "--import", path, "--artifacts", store.root, "--json")
    assert result.exit_code == 0, result.stderr
    assert f"{len(truncated)} truncated episode(s) end without a recorded next observation" in result.stderr
    summary = json.loads(result.stdout)
    total = sum(len(ep) for ep in demos)
    assert summary["steps"] == total and summary["unknown_successor_steps"] == len(truncated)
    episodes, meta = read_dataset(summary["artifact"])
    assert [len(ep) for ep in episodes] == [len(ep) for ep in demos]  # every step kept
    assert meta["unknown_successor_steps"] == len(truncated)
    for got, want in zip(episodes, demos, strict=True):
        np.testing.assert_array_equal(got.actions, want.actions)  # the last action included
        assert got.last_next_obs_known == want.terminated

    # Behaviour cloning uses every step; the TD critic leaves out the windows that end at an unknown
    # successor: min(act_horizon, T) rows per truncated episode.
    bc = run_pretrain(PretrainConfig(**TINY_PRETRAIN), store)
    assert bc.summary["train_samples"] == total
    qa = run_train_qa(TrainQAConfig(steps=2, batch_size=16, hidden=16, depth=1, device="cpu"), store)
    act_horizon = load_task(str(task_path)).act_horizon
    assert qa.summary["train_samples"] == total - sum(min(act_horizon, len(ep)) for ep in truncated)


def test_offline_sac_drops_rows_without_a_successor() -> None:
    import torch

    from dsrl_cli.data.chunks import build_chunks
    from dsrl_cli.data.dataset import Episode
    from dsrl_cli.data.normalization import Normalizer
    from dsrl_cli.models.latent_policy import LatentPolicy
    from dsrl_cli.models.latent_q_network import LatentQNetwork
    from dsrl_cli.stages.warmstart import WarmstartConfig, _OfflineSac

    ep = Episode(obs=np.arange(5, dtype=np.float32)[:, None], actions=np.zeros((5, 1)), rewards=np.zeros(5),
                 next_obs=np.arange(1, 6, dtype=np.float32)[:, None], terminated=False, last_next_obs_known=False)
    chunks = build_chunks([ep], Normalizer(np.zeros(1), np.ones(1), -np.ones(1), np.ones(1)), 1, 2, 2, 0.9)
    cfg = WarmstartConfig(method="offline-sac", batch_size=4, actor_hidden=8, critic_hidden=8, device="cpu")
    policy = LatentPolicy(1, 1, 2, 2, hidden=8)
    critic = LatentQNetwork(1, 2, hidden=8)
    index, w = np.arange(5), np.zeros((5, 2, 1), np.float32)
    trainer = _OfflineSac(cfg, policy, critic, lambda o, w_: o[:, 0], chunks, (index, w), torch.Generator(),
                          torch.device("cpu"))
    assert trainer.n == 3  # rows t = 3, 4 end at the unknown successor of step 4
    np.testing.assert_array_equal(trainer.data.obs_cond[:, 0].numpy(), [0, 1, 2])


# ---------------------------------------------------------------------------- pipeline
def test_pipeline_over_an_imported_file_and_a_user_policy(byo: Path, user_policy: str, tmp_path: Path) -> None:
    # Before: `pipeline` refused any task without a scripted demonstrator, and had no --dataset.
    root = tmp_path / "art"
    result = invoke("pipeline", "--quick", "--task", byo / "task.yaml", "--dataset", byo / "demos.h5",
                    "--base-policy", user_policy, "--artifacts", root, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out["results"]) == {"prior", "prior-mean", "stage1", "stage2"}
    store = ArtifactStore(root)
    base = store.resolve("base.ckpt")
    assert base.meta["kind"] == "user" and base.meta["factory"] == user_policy
    dataset = store.resolve("dataset.h5")
    assert dataset.meta["obs_keys"] == ["pos", "goal"] and dataset.meta["task"] == "byo-forkreach"

    # The task's own `dataset: {file: demos.h5}` is the same import (cached), and so is the artifact itself.
    for extra in ((), ("--dataset", "dataset.h5"), ("--dataset", dataset.key)):
        again = invoke("pipeline", "--quick", "--task", byo / "task.yaml", *extra, "--base-policy", user_policy,
                       "--artifacts", root, "--device", "cpu", "--json")
        assert again.exit_code == 0, again.stderr
        assert "collect cached" in again.stderr and json.loads(again.stdout)["cached"] is True


def test_pipeline_dataset_artifact_of_another_task_is_refused(byo: Path, tmp_path: Path) -> None:
    root = tmp_path / "art"
    made = invoke("collect", "--task", byo / "task.yaml", "--artifacts", root)  # dataset.file of the task
    assert made.exit_code == 0, made.stderr
    result = invoke("pipeline", "--quick", "--task", "default", "--dataset", "dataset.h5", "--artifacts", root)
    assert result.exit_code == 2 and "byo-forkreach" in result.stderr and "name" in result.stderr


def test_pipeline_without_demonstrator_or_data_is_one_clear_line(tmp_path: Path) -> None:
    data = yaml.safe_load((EXAMPLE / "task.yaml").read_text())
    data.pop("dataset")
    path = tmp_path / "nodata.yaml"
    path.write_text(yaml.safe_dump(data))
    result = invoke("pipeline", "--quick", "--task", path, "--artifacts", tmp_path / "art")
    assert result.exit_code == 2
    assert "no scripted demonstrator and no dataset file" in result.stderr and "--dataset" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    nothing = invoke("pipeline", "--quick", "--dataset", tmp_path / "nope.h5", "--artifacts", tmp_path / "art")
    assert nothing.exit_code == 2 and "nope.h5" in nothing.stderr


def test_metaworld_keyed_file_imports_like_the_flat_one(tmp_path: Path) -> None:
    """door-open-v3 (a task the repo does not ship) from a robomimic file with a keyed obs group."""
    pytest.importorskip("metaworld")
    data = yaml.safe_load((TASKS_DIR / "metaworld-reach.yaml").read_text())
    keys = {"robot0_eef_pos": slice(0, 3), "robot0_gripper": 3, "object": slice(4, 18), "prev": slice(18, 36),
            "goal": slice(36, 39)}  # the env's order; h5py lists them alphabetically (goal, object, ...)
    data |= {"name": "door", "env_kwargs": {"task": "door-open-v3"}, "demo_params": {"task": "door-open-v3"},
             "max_episode_steps": 20, "obs_keys": list(keys)}
    task_path = tmp_path / "door.yaml"
    task_path.write_text(yaml.safe_dump(data))
    demos = collect_episodes(load_task(str(task_path)), 2, 1.0, 0)
    flat = _write_flat_robomimic(tmp_path / "flat.h5", demos, {"env_name": "door-open-v3", "type": 2,
                                                                "env_kwargs": {}})
    keyed = tmp_path / "keyed.h5"
    shutil.copy(flat, keyed)
    with h5py.File(keyed, "a") as f:
        for i, ep in enumerate(demos):
            g = f[f"data/demo_{i}"]
            for group, arr in (("obs", ep.obs), ("next_obs", ep.next_obs)):
                del g[group]
                for name, cols in keys.items():  # a 1-D key for the gripper: one column
                    g.create_dataset(f"{group}/{name}", data=arr[:, cols])
    root = tmp_path / "art"
    got = {}
    for name, path in (("flat", flat), ("keyed", keyed)):
        result = invoke("collect", "--task", task_path, "--import", path, "--artifacts", root, "--json")
        assert result.exit_code == 0, result.stderr
        got[name], _ = read_dataset(json.loads(result.stdout)["artifact"])
    for a, b, want in zip(got["flat"], got["keyed"], demos, strict=True):
        np.testing.assert_array_equal(a.obs, want.obs)
        np.testing.assert_array_equal(b.obs, want.obs)
        np.testing.assert_array_equal(b.next_obs, want.next_obs)
    # The file names door-open-v3: a reach-v3 task refuses it (same sizes, another Meta-World task).
    refused = invoke("collect", "--task", "metaworld-reach", "--import", flat, "--artifacts", root)
    assert refused.exit_code == 2 and "'door-open-v3'" in refused.stderr and "'reach-v3'" in refused.stderr
