"""Dataset I/O, imports, validation, Normalizer and chunk arithmetic on tiny hand-made data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from dsrl_cli.data.chunks import ChunkData, build_chunks
from dsrl_cli.data.dataset import (
    Episode,
    dataset_summary,
    import_dataset,
    read_dataset,
    read_normalizer,
    write_dataset,
)
from dsrl_cli.data.normalization import Normalizer
from dsrl_cli.errors import BadInput


def _episode(T: int, d: int = 3, A: int = 2, terminated: bool = True, success: bool | None = True,
             seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(T + 1, d)).astype(np.float32)
    return Episode(
        obs=obs[:-1],
        actions=rng.uniform(-1, 1, size=(T, A)).astype(np.float32),
        rewards=rng.normal(size=T).astype(np.float32),
        next_obs=obs[1:],
        terminated=terminated,
        success=success,
    )


def _assert_episodes_equal(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name in ("obs", "actions", "rewards", "next_obs"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
            assert getattr(y, name).dtype == np.float32
        assert x.terminated == y.terminated
        assert x.success == y.success
        assert x.last_next_obs_known == y.last_next_obs_known


# ---------------------------------------------------------------------------- write / read
def test_write_read_round_trip(tmp_path: Path) -> None:
    eps = [_episode(5, seed=1), _episode(3, terminated=False, success=None, seed=2),
           _episode(4, terminated=False, success=False, seed=3)]
    eps[2].last_next_obs_known = False  # a truncated episode whose last successor is unknown
    meta = {"task": "fork_reach", "env_id": "dsrl/ForkReach-v0", "env_kwargs": {"a": 1}, "n": np.int64(3)}
    path = write_dataset(tmp_path / "sub" / "demo.hdf5", eps, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.hdf5"]  # no temp file left behind
    back, meta_back = read_dataset(path)
    _assert_episodes_equal(eps, back)
    assert meta_back == {"task": "fork_reach", "env_id": "dsrl/ForkReach-v0", "env_kwargs": {"a": 1}, "n": 3}
    with h5py.File(path, "r") as f:
        assert f["data"].attrs["total"] == 12
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["env_name"] == "dsrl/ForkReach-v0" and env_args["env_kwargs"] == {"a": 1}
        assert "type" in env_args
        np.testing.assert_array_equal(f["data/demo_0/dones"][()], [0, 0, 0, 0, 1])
        np.testing.assert_array_equal(f["data/demo_1/dones"][()], [0, 0, 0])
        assert f["data/demo_0"].attrs["num_samples"] == 5
        assert "success" not in f["data/demo_1"].attrs
        assert [bool(f[f"data/demo_{i}"].attrs["last_next_obs_known"]) for i in range(3)] == [True, True, False]
        assert set(f["stats"].keys()) == {"obs_mean", "obs_std", "act_min", "act_max"}
    norm = read_normalizer(path)
    assert norm is not None
    np.testing.assert_allclose(norm.obs_mean, Normalizer.fit(eps).obs_mean)
    # Imports of our own files keep the dsrl meta too.
    imported, imeta = import_dataset(path)
    _assert_episodes_equal(eps, imported)
    assert imeta["source_format"] == "robomimic" and imeta["task"] == "fork_reach"
    assert imeta["unknown_successor_steps"] == 1 and imeta["obs_format"] == "array" and imeta["obs_keys"] is None


def test_write_uses_given_normalizer_and_meta_defaults(tmp_path: Path) -> None:
    eps = [_episode(2)]
    norm = Normalizer(np.zeros(3), np.ones(3), -np.ones(2), np.ones(2))
    path = write_dataset(tmp_path / "d.hdf5", eps, {}, normalizer=norm)
    got = read_normalizer(path)
    assert got is not None and got.to_dict() == norm.to_dict()
    _, meta = read_dataset(path)
    assert meta == {}


def test_dataset_summary() -> None:
    eps = [_episode(5, success=True), _episode(3, success=False), _episode(2, success=None)]
    s = dataset_summary(eps)
    assert s["episodes"] == 3 and s["steps"] == 10 and s["obs_dim"] == 3 and s["act_dim"] == 2
    assert s["success_rate"] == pytest.approx(0.5)
    assert s["mean_return"] == pytest.approx(np.mean([e.rewards.sum() for e in eps]), rel=1e-5)
    assert dataset_summary([_episode(2, success=None)])["success_rate"] is None
    assert s["unknown_successor_steps"] == 0


# ---------------------------------------------------------------------------- robomimic import
def _write_keyed_robomimic(path: Path, T: int = 4, next_obs: bool = False) -> dict[str, np.ndarray]:
    """Two demos (terminal, truncated) whose obs is a group of named keys, created in a scrambled order."""
    keys = {
        "b": np.arange(T, dtype=np.float32) + 100,  # 1-D key -> one column
        "a": np.arange(T * 2, dtype=np.float64).reshape(T, 2),
        "c": np.full((T, 3), 7.0),  # a key the task does not list: ignored
    }
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i, terminal in ((0, True), (1, False)):
            g = data.create_group(f"demo_{i}")
            for group in ("obs", "next_obs") if next_obs else ("obs",):
                obs = g.create_group(group)
                for name, arr in keys.items():
                    obs.create_dataset(name, data=arr + (1000 if group == "next_obs" else 0))
            g.create_dataset("actions", data=np.full((T, 2), 0.5))
            g.create_dataset("rewards", data=np.arange(T, dtype=np.float64))
            g.create_dataset("dones", data=np.array([0] * (T - 1) + [int(terminal)]))
    return keys


def test_import_robomimic_keyed_obs_needs_obs_keys(tmp_path: Path) -> None:
    # Old code concatenated the keys in h5py's alphabetical order without a word.
    path = tmp_path / "rm.hdf5"
    _write_keyed_robomimic(path)
    with pytest.raises(BadInput) as err:
        import_dataset(path)
    msg = str(err.value)
    assert "group of named keys (a, b, c)" in msg and "obs_keys" in msg and "\n" not in msg
    with pytest.raises(BadInput, match=r"key\(s\) d of obs_keys are not in obs; the file has a, b, c"):
        import_dataset(path, obs_keys=["b", "d"])


def test_import_robomimic_obs_keys_order_and_truncated_last_step(tmp_path: Path) -> None:
    path = tmp_path / "rm.hdf5"
    T = 4
    keys = _write_keyed_robomimic(path, T)
    eps, meta = import_dataset(path, obs_keys=["b", "a"])  # not alphabetical: the given order wins
    assert meta["source_format"] == "robomimic" and meta["env_args"]["env_name"] == "Lift"
    assert meta["obs_format"] == "keys" and meta["obs_keys"] == ["b", "a"]
    expected_obs = np.concatenate([keys["b"][:, None], keys["a"]], axis=1).astype(np.float32)
    term, trunc = eps
    assert term.terminated and not trunc.terminated and term.success is None
    np.testing.assert_array_equal(term.obs, expected_obs)
    np.testing.assert_array_equal(term.next_obs[:-1], expected_obs[1:])
    # Terminal: the successor is a placeholder (masked by done), nothing is unknown.
    np.testing.assert_array_equal(term.next_obs[-1], expected_obs[-1])
    assert term.last_next_obs_known and not term.unknown_successor
    # Truncated demo without next_obs: every step kept, the last one marked as without a successor.
    assert len(trunc) == T and not trunc.last_next_obs_known and trunc.unknown_successor
    np.testing.assert_array_equal(trunc.actions, np.full((T, 2), 0.5))
    np.testing.assert_array_equal(trunc.next_obs[:-1], expected_obs[1:])
    assert meta["unknown_successor_steps"] == 1


def test_import_robomimic_keyed_next_obs_uses_the_same_keys(tmp_path: Path) -> None:
    path = tmp_path / "rm.hdf5"
    keys = _write_keyed_robomimic(path, next_obs=True)
    eps, meta = import_dataset(path, obs_keys=["a", "c"])
    want = np.concatenate([keys["a"], keys["c"]], axis=1).astype(np.float32)
    for ep in eps:
        np.testing.assert_array_equal(ep.obs, want)
        np.testing.assert_array_equal(ep.next_obs, want + 1000)
        assert ep.last_next_obs_known  # a recorded next_obs is a real successor
    assert meta["unknown_successor_steps"] == 0


def test_import_flat_obs_ignores_obs_keys(tmp_path: Path) -> None:
    # A flat [T, d] array already fixes its column order: obs_keys does not apply (meta says so).
    path = write_dataset(tmp_path / "flat.hdf5", [_episode(3)], {})
    (ep,), meta = import_dataset(path, obs_keys=["x", "y"])
    assert meta["obs_format"] == "array" and meta["obs_keys"] is None and ep.obs.shape == (3, 3)


def test_import_refuses_mixed_obs_layouts(tmp_path: Path) -> None:
    path = tmp_path / "rm.hdf5"
    _write_keyed_robomimic(path)
    with h5py.File(path, "a") as f:
        g = f.create_group("data/demo_2")
        g.create_dataset("obs", data=np.zeros((2, 6)))
        g.create_dataset("actions", data=np.zeros((2, 2)))
        g.create_dataset("rewards", data=np.zeros(2))
        g.create_dataset("dones", data=np.zeros(2))
    with pytest.raises(BadInput, match="group of keys in data/demo_0 but a flat array in data/demo_2"):
        import_dataset(path, obs_keys=["a", "b", "c"])


def test_import_robomimic_next_obs_group(tmp_path: Path) -> None:
    path = tmp_path / "rm.hdf5"
    with h5py.File(path, "w") as f:
        g = f.create_group("data/demo_0")
        for key in ("obs", "next_obs"):
            grp = g.create_group(key)
            grp.create_dataset("z", data=np.ones((3, 1)) * (key == "next_obs"))
            grp.create_dataset("p", data=np.zeros((3, 2)))
        g.create_dataset("actions", data=np.zeros((3, 1)))
        g.create_dataset("rewards", data=np.zeros((3, 1)))  # [T, 1] rewards are accepted
        g.create_dataset("dones", data=np.zeros(3))
    (ep,), meta = import_dataset(path, obs_keys=["p", "z"])
    assert ep.obs.shape == (3, 3) and len(ep) == 3 and meta["unknown_successor_steps"] == 0
    np.testing.assert_array_equal(ep.next_obs[:, 2], [1, 1, 1])
    assert not ep.terminated


# ---------------------------------------------------------------------------- D4RL import
def _write_d4rl(path: Path, N: int = 7, with_next: bool = True, **override: Any) -> Path:
    obs = np.arange(N * 2, dtype=np.float32).reshape(N, 2)
    arrays: dict[str, Any] = {
        "observations": obs,
        "actions": np.zeros((N, 1), dtype=np.float32),
        "rewards": np.arange(N, dtype=np.float32),
        "terminals": np.array([0, 0, 1, 0, 0, 0, 0][:N], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 1, 0, 0][:N], dtype=bool),
    }
    if with_next:
        arrays["next_observations"] = obs + 0.5
    arrays.update(override)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if value is not None:
                f.create_dataset(key, data=value)
    return path


def test_import_d4rl_split_with_next_observations(tmp_path: Path) -> None:
    eps, meta = import_dataset(_write_d4rl(tmp_path / "d.hdf5"))
    assert meta["source_format"] == "d4rl" and meta["unknown_successor_steps"] == 0
    assert [len(e) for e in eps] == [3, 2, 2]
    # terminal -> terminated; timeout and trailing unfinished segment -> truncated
    assert [e.terminated for e in eps] == [True, False, False]
    np.testing.assert_array_equal(eps[1].rewards, [3, 4])
    np.testing.assert_array_equal(eps[2].next_obs, np.arange(10, 14).reshape(2, 2) + 0.5)


def test_import_d4rl_without_next_observations(tmp_path: Path) -> None:
    eps, meta = import_dataset(_write_d4rl(tmp_path / "d.hdf5", with_next=False))
    # Every episode keeps all its steps; each truncated segment's last successor is marked unknown.
    assert [len(e) for e in eps] == [3, 2, 2] and meta["unknown_successor_steps"] == 2
    assert [e.last_next_obs_known for e in eps] == [True, False, False]
    obs = np.arange(14, dtype=np.float32).reshape(7, 2)
    np.testing.assert_array_equal(eps[0].next_obs, obs[[1, 2, 2]])  # never obs[3] of the next episode
    np.testing.assert_array_equal(eps[1].obs, obs[[3, 4]])
    np.testing.assert_array_equal(eps[1].next_obs[:1], obs[[4]])  # never obs[5] of the next segment
    np.testing.assert_array_equal(eps[1].actions, np.zeros((2, 1)))


def test_import_d4rl_terminal_and_timeout_same_step(tmp_path: Path) -> None:
    path = _write_d4rl(tmp_path / "d.hdf5", N=3, terminals=np.array([0, 0, 1], bool),
                       timeouts=np.array([0, 0, 1], bool))
    (ep,), _ = import_dataset(path)
    assert ep.terminated and len(ep) == 3


# ---------------------------------------------------------------------------- invalid files
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"actions": None}, "missing the key 'actions'"),
        ({"timeouts": None}, "missing the key 'timeouts'"),
        ({"actions": np.zeros(7, np.float32)}, "actions must be 2-D"),
        ({"observations": np.zeros((7, 2, 2), np.float32)}, "observations must be 2-D"),
        ({"rewards": np.zeros(6, np.float32)}, "rewards has 6 steps"),
        ({"rewards": np.zeros((7, 2), np.float32)}, "rewards must be 1-D"),
        ({"terminals": np.zeros(5, bool)}, "terminals must have shape"),
        ({"next_observations": np.zeros((7, 3), np.float32)}, "next_observations has shape"),
        ({"rewards": np.array([0, 1, np.nan, 0, 0, 0, 0], np.float32)}, "rewards contains NaN or inf"),
        ({"observations": np.full((7, 2), np.inf, np.float32)}, "NaN or inf"),
        ({"observations": np.zeros((0, 2), np.float32), "actions": np.zeros((0, 1), np.float32),
          "rewards": np.zeros(0, np.float32), "terminals": np.zeros(0, bool),
          "timeouts": np.zeros(0, bool), "next_observations": np.zeros((0, 2), np.float32)}, "no steps"),
    ],
)
def test_import_invalid_d4rl(tmp_path: Path, override: dict[str, Any], needle: str) -> None:
    path = _write_d4rl(tmp_path / "bad.hdf5", **override)
    with pytest.raises(BadInput) as err:
        import_dataset(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_import_invalid_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.hdf5"
    with pytest.raises(BadInput, match="not found"):
        import_dataset(missing)
    text = tmp_path / "x.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(BadInput, match="not an HDF5 file"):
        import_dataset(text)
    with pytest.raises(BadInput, match="not a file"):
        read_dataset(tmp_path)
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f.create_dataset("foo", data=np.zeros(3))
    with pytest.raises(BadInput, match="neither robomimic"):
        import_dataset(other)
    with pytest.raises(BadInput, match="no data/demo_"):
        read_dataset(other)


def test_import_invalid_robomimic(tmp_path: Path) -> None:
    def write(path: Path, **demo: Any) -> Path:
        base: dict[str, Any] = {"obs": np.zeros((3, 2)), "actions": np.zeros((3, 1)),
                                "rewards": np.zeros(3), "dones": np.zeros(3)}
        base.update(demo)
        with h5py.File(path, "w") as f:
            g = f.create_group("data/demo_0")
            for k, v in base.items():
                if v is not None:
                    g.create_dataset(k, data=v)
        return path

    with pytest.raises(BadInput, match="demo_0 is missing the key 'rewards'"):
        import_dataset(write(tmp_path / "a.hdf5", rewards=None))
    with pytest.raises(BadInput, match="actions must be 2-D"):
        import_dataset(write(tmp_path / "b.hdf5", actions=np.zeros(3)))
    with pytest.raises(BadInput, match="actions has 2 steps but obs has 3"):
        import_dataset(write(tmp_path / "c.hdf5", actions=np.zeros((2, 1))))
    with pytest.raises(BadInput, match="obs contains NaN"):
        import_dataset(write(tmp_path / "d.hdf5", obs=np.array([[0, 0], [np.nan, 0], [0, 0]])))
    with pytest.raises(BadInput, match="no steps"):
        import_dataset(write(tmp_path / "e.hdf5", obs=np.zeros((0, 2)), actions=np.zeros((0, 1)),
                             rewards=np.zeros(0), dones=np.zeros(0)))
    # Different obs_dim across demos.
    path = write(tmp_path / "f.hdf5")
    with h5py.File(path, "a") as f:
        g = f.create_group("data/demo_1")
        g.create_dataset("obs", data=np.zeros((2, 4)))
        g.create_dataset("next_obs", data=np.zeros((2, 4)))
        g.create_dataset("actions", data=np.zeros((2, 1)))
        g.create_dataset("rewards", data=np.zeros(2))
        g.create_dataset("dones", data=np.zeros(2))
    with pytest.raises(BadInput, match="episode 1 has obs_dim 4"):
        import_dataset(path)


def test_write_rejects_bad_episodes(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="contains no episodes"):
        write_dataset(tmp_path / "e.hdf5", [], {})
    bad = _episode(3)
    bad.rewards[1] = np.inf
    with pytest.raises(BadInput, match="rewards contains NaN or inf"):
        write_dataset(tmp_path / "e.hdf5", [bad], {})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- Normalizer
def test_normalizer_numpy_and_torch_round_trip(tmp_path: Path) -> None:
    eps = [_episode(20, seed=4), _episode(10, seed=5)]
    norm = Normalizer.fit(eps)
    assert norm.obs_dim == 3 and norm.act_dim == 2
    obs = np.stack([eps[0].obs[:4], eps[1].obs[:4]])  # leading dims [2, 4, d]
    z = norm.normalize_obs(obs)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == obs.shape
    np.testing.assert_allclose(norm.unnormalize_obs(z), obs, atol=1e-5)
    act = eps[0].actions
    a = norm.normalize_action(act)
    assert a.min() >= -1 - 1e-6 and a.max() <= 1 + 1e-6
    np.testing.assert_allclose(norm.unnormalize_action(a), act, atol=1e-5)
    # Out-of-range normalized actions are clipped to the dataset's range.
    np.testing.assert_allclose(norm.unnormalize_action(np.full((1, 2), 5.0)), norm.act_max[None], atol=1e-6)

    zt = norm.normalize_obs(torch.from_numpy(obs))
    assert isinstance(zt, torch.Tensor) and zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), z, atol=1e-6)
    at64 = norm.normalize_action(torch.from_numpy(act).double())
    assert at64.dtype == torch.float64
    back = norm.unnormalize_action(at64)
    np.testing.assert_allclose(back.numpy(), act, atol=1e-5)
    assert torch.equal(norm.unnormalize_action(torch.full((3, 2), -7.0))[0], torch.tensor(norm.act_min))
    # Stats tensors are cached per (device, dtype), not re-created each call.
    cached = norm._torch_stats(zt)
    assert norm._torch_stats(torch.zeros(1, 3)) is cached

    # to_dict -> torch.save -> weights_only load -> from_dict
    d = norm.to_dict()
    assert all(isinstance(v, list) and all(isinstance(x, float) for x in v) for v in d.values())
    torch.save(d, tmp_path / "n.pt")
    loaded = Normalizer.from_dict(torch.load(tmp_path / "n.pt", weights_only=True))
    for name in ("obs_mean", "obs_std", "act_min", "act_max"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(norm, name))

    with pytest.raises(BadInput, match="obs_std"):
        Normalizer.from_dict({"obs_mean": [0.0]})
    with pytest.raises(BadInput, match="dimension 3"):
        norm.normalize_obs(np.zeros((2, 4)))


def test_normalizer_constant_dims_stay_finite() -> None:
    ep = _episode(5)
    ep.obs[:, 1] = 7.0
    ep.actions[:, 0] = 0.25
    norm = Normalizer.fit([ep])
    assert np.all(norm.obs_std > 0) and np.all(norm.act_max > norm.act_min)
    a = norm.normalize_action(ep.actions)
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a[:, 0], 0.0, atol=1e-3)
    np.testing.assert_allclose(norm.unnormalize_action(a)[:, 0], 0.25, atol=1e-5)
    assert np.all(np.isfinite(norm.normalize_obs(ep.obs)))


# ---------------------------------------------------------------------------- chunks
def _identity_norm(d: int = 1, A: int = 1) -> Normalizer:
    # mean 0 / std 1 / range [-1, 1]: normalized values equal raw ones, so the arithmetic is readable.
    return Normalizer(np.zeros(d), np.ones(d), -np.ones(A), np.ones(A))


def _chunk_episodes() -> list[Episode]:
    ep_a = Episode(obs=[[0.0], [1.0], [2.0]], actions=[[0.1], [0.2], [0.3]], rewards=[1.0, 2.0, 4.0],
                   next_obs=[[1.0], [2.0], [3.0]], terminated=True, success=True)
    ep_b = Episode(obs=[[10.0], [11.0]], actions=[[0.5], [-0.5]], rewards=[8.0, 16.0],
                   next_obs=[[11.0], [12.0]], terminated=False, success=None)
    return [ep_a, ep_b]


def test_chunk_arithmetic() -> None:
    c = build_chunks(_chunk_episodes(), _identity_norm(), n_obs_steps=2, pred_horizon=3, act_horizon=2,
                     gamma=0.5)
    assert isinstance(c, ChunkData) and len(c) == 5
    assert c.obs_cond.shape == (5, 2) and c.a_seq.shape == (5, 3, 1) and c.a_head.shape == (5, 2, 1)
    assert c.obs_cond.dtype == np.float32 and c.done.dtype == np.float32
    assert c.steps.dtype == np.int64 and c.next_index.dtype == np.int64
    # History padded with the episode's first obs; never the previous episode's.
    np.testing.assert_array_equal(c.obs_cond, [[0, 0], [0, 1], [1, 2], [10, 10], [10, 11]])
    np.testing.assert_allclose(
        c.a_seq[:, :, 0],
        [[0.1, 0.2, 0.3], [0.2, 0.3, 0.3], [0.3, 0.3, 0.3], [0.5, -0.5, -0.5], [-0.5, -0.5, -0.5]],
        atol=1e-6,
    )
    np.testing.assert_array_equal(c.a_head, c.a_seq[:, :2])
    np.testing.assert_array_equal(c.steps, [2, 2, 1, 2, 1])
    np.testing.assert_allclose(c.reward, [1 + 0.5 * 2, 2 + 0.5 * 4, 4, 8 + 0.5 * 16, 16])
    np.testing.assert_allclose(c.discount, [0.25, 0.25, 0.5, 0.25, 0.5])
    # Terminal end -> done; the truncated episode's end bootstraps (done 0).
    np.testing.assert_array_equal(c.done, [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(c.next_obs_cond, [[1, 2], [2, 3], [2, 3], [11, 12], [11, 12]])
    np.testing.assert_array_equal(c.next_index, [2, -1, -1, -1, -1])
    # next_index points at a sample whose obs_cond is this sample's next_obs_cond (next_obs == obs[t+1]).
    j = c.next_index[0]
    np.testing.assert_array_equal(c.obs_cond[j], c.next_obs_cond[0])


def test_chunk_padding_long_history_single_step() -> None:
    eps = _chunk_episodes()
    c = build_chunks(eps, _identity_norm(), n_obs_steps=3, pred_horizon=2, act_horizon=1, gamma=0.9)
    np.testing.assert_array_equal(c.steps, [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(c.obs_cond[0], [0, 0, 0])
    np.testing.assert_array_equal(c.next_obs_cond[0], [0, 0, 1])  # [obs0, obs0, next_obs0]
    np.testing.assert_array_equal(c.next_obs_cond[1], [0, 1, 2])
    np.testing.assert_array_equal(c.next_obs_cond[3], [10, 10, 11])
    np.testing.assert_array_equal(c.next_index, [1, 2, -1, 4, -1])
    np.testing.assert_allclose(c.discount, 0.9)
    np.testing.assert_array_equal(c.done, [0, 0, 1, 0, 0])


def test_chunk_normalizes_and_validates() -> None:
    eps = _chunk_episodes()
    norm = Normalizer(np.array([1.0]), np.array([2.0]), np.array([0.0]), np.array([0.5]))
    c = build_chunks(eps, norm, n_obs_steps=1, pred_horizon=1, act_horizon=1, gamma=1.0)
    np.testing.assert_allclose(c.obs_cond[:3, 0], [-0.5, 0.0, 0.5])
    np.testing.assert_allclose(c.a_seq[:3, 0, 0], [-0.6, -0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(c.reward, [1, 2, 4, 8, 16])
    with pytest.raises(BadInput, match="act_horizon"):
        build_chunks(eps, norm, 1, 2, 3, 0.9)
    with pytest.raises(BadInput, match="empty"):
        build_chunks([], norm, 1, 2, 1, 0.9)


def test_chunks_mark_rows_that_end_at_an_unknown_successor() -> None:
    truncated = Episode(obs=[[0.0], [1.0], [2.0], [3.0]], actions=[[0.1], [0.2], [0.3], [0.4]],
                        rewards=[1.0, 1.0, 1.0, 1.0], next_obs=[[1.0], [2.0], [3.0], [3.0]], terminated=False,
                        last_next_obs_known=False)
    eps = [*_chunk_episodes(), truncated]
    c = build_chunks(eps, _identity_norm(), n_obs_steps=2, pred_horizon=3, act_horizon=2, gamma=0.5)
    # Behaviour cloning sees every step, the last action of the truncated episode included.
    assert len(c) == 9
    np.testing.assert_allclose(c.a_seq[8, 0, 0], 0.4)
    # Only windows that end at its last step (t = 2, 3) would bootstrap from the unknown successor.
    assert c.td_valid.dtype == bool
    np.testing.assert_array_equal(c.td_valid, [True] * 7 + [False, False])
    # A known successor (the same episode with a recorded next_obs) leaves every row usable.
    truncated.last_next_obs_known = True
    assert build_chunks(eps, _identity_norm(), 2, 3, 2, 0.5).td_valid.all()


def test_td_buffer_leaves_out_rows_without_a_successor() -> None:
    from dsrl_cli.buffers.action_replay_buffer import ActionReplayBuffer

    ep = Episode(obs=[[0.0], [1.0], [2.0], [3.0]], actions=[[0.1], [0.2], [0.3], [0.4]], rewards=[0.0] * 4,
                 next_obs=[[1.0], [2.0], [3.0], [3.0]], terminated=False, last_next_obs_known=False)
    c = build_chunks([ep], _identity_norm(), n_obs_steps=1, pred_horizon=2, act_horizon=2, gamma=0.9)
    buf = ActionReplayBuffer.from_chunks(c)
    assert len(buf) == 2  # rows t = 0, 1; t = 2, 3 end at the unknown successor
    np.testing.assert_array_equal(buf._data["obs_cond"][:, 0], [0.0, 1.0])
    # Row 0 still links to the next chunk (row 2, itself left out) for the SARSA target.
    np.testing.assert_allclose(buf._data["next_a_head"][0, :, 0], [0.3, 0.4], atol=1e-6)
    np.testing.assert_array_equal(buf._data["has_next"], [1.0, 1.0])
    one = Episode(obs=[[0.0]], actions=[[0.1]], rewards=[0.0], next_obs=[[0.0]], terminated=False,
                  last_next_obs_known=False)
    with pytest.raises(BadInput, match="no dataset chunk has a known successor"):
        ActionReplayBuffer.from_chunks(build_chunks([one], _identity_norm(), 1, 2, 2, 0.9))
