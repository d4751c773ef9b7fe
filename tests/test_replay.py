"""MacroReplayBuffer: ring order, oversized batches, sampling, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsrl_cli.buffers.macro_replay_buffer import MacroBatch, MacroReplayBuffer
from dsrl_cli.errors import DsrlError

D, W_SHAPE, A_SHAPE = 3, (4, 2), (2, 2)


def _items(start: int, n: int) -> dict[str, np.ndarray]:
    """Transitions whose every field encodes its global index i, so rows can be identified."""
    i = np.arange(start, start + n, dtype=np.float32)
    return {
        "obs_cond": np.repeat(i[:, None], D, 1),
        "w": np.broadcast_to(i[:, None, None], (n, *W_SHAPE)).copy(),
        "a_head": np.broadcast_to(-i[:, None, None], (n, *A_SHAPE)).copy(),
        "reward": i,
        "discount": i + 0.5,
        "done": (i % 2).astype(np.float32),
        "next_obs_cond": np.repeat(i[:, None] + 1, D, 1),
    }


def _buf(capacity: int) -> MacroReplayBuffer:
    return MacroReplayBuffer(capacity, D, W_SHAPE, A_SHAPE)


def test_wrap_around_order_and_contents() -> None:
    buf = _buf(5)
    buf.add_batch(**_items(0, 3))
    assert len(buf) == 3
    buf.add_batch(**_items(3, 4))  # items 3,4 fill slots 3,4; items 5,6 wrap to slots 0,1
    assert len(buf) == 5
    np.testing.assert_array_equal(buf._data["reward"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buf._data["w"][:, 0, 0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buf._data["a_head"][:, 1, 1], [-5, -6, -2, -3, -4])
    assert buf._ptr == 2


def test_batch_larger_than_capacity_keeps_last_items() -> None:
    buf = _buf(4)
    buf.add_batch(**_items(0, 1))
    buf.add_batch(**_items(1, 10))
    ref = _buf(4)
    for i in range(11):
        ref.add_batch(**_items(i, 1))
    assert len(buf) == 4 and buf._ptr == ref._ptr == 3
    for name, arr in buf._data.items():
        np.testing.assert_array_equal(arr, ref._data[name])
    assert sorted(buf._data["reward"].tolist()) == [7, 8, 9, 10]


def test_torch_inputs_and_bad_shapes() -> None:
    buf = _buf(8)
    buf.add_batch(**{k: torch.from_numpy(v) for k, v in _items(0, 3).items()})
    assert len(buf) == 3
    bad = _items(0, 3)
    bad["w"] = bad["w"][:, :3]
    with pytest.raises(DsrlError):
        buf.add_batch(**bad)
    with pytest.raises(DsrlError):
        _buf(2).sample(1, np.random.default_rng(0))


def test_sample_shapes_device_and_row_consistency() -> None:
    buf = _buf(16)
    buf.add_batch(**_items(0, 10))
    batch = buf.sample(32, np.random.default_rng(0), device="cpu")
    assert isinstance(batch, MacroBatch)
    assert batch.obs_cond.shape == (32, D) and batch.next_obs_cond.shape == (32, D)
    assert batch.w.shape == (32, *W_SHAPE) and batch.a_head.shape == (32, *A_SHAPE)
    assert batch.reward.shape == batch.discount.shape == batch.done.shape == (32,)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in batch)
    idx = batch.reward
    assert (idx < 10).all()  # only filled slots are drawn
    torch.testing.assert_close(batch.obs_cond[:, 0], idx)
    torch.testing.assert_close(batch.w[:, 3, 1], idx)
    torch.testing.assert_close(batch.next_obs_cond[:, 2], idx + 1)
    torch.testing.assert_close(batch.done, idx % 2)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    buf = _buf(6)
    buf.add_batch(**_items(0, 4))
    state = buf.state_dict()
    assert state["obs_cond"].shape[0] == 4  # only the filled part is saved
    buf.add_batch(**_items(4, 5))  # wrapped buffer
    path = tmp_path / "replay.pt"
    torch.save(buf.state_dict(), path)
    loaded = _buf(6)
    loaded.load_state_dict(torch.load(path, weights_only=True))
    assert len(loaded) == len(buf) == 6 and loaded._ptr == buf._ptr
    a = buf.sample(20, np.random.default_rng(1))
    b = loaded.sample(20, np.random.default_rng(1))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    with pytest.raises(DsrlError):
        _buf(7).load_state_dict(buf.state_dict())


def _assert_rows_consistent(batch: MacroBatch, size: int) -> None:
    """Every field of each drawn row belongs to the same stored transition (encoded by _items)."""
    idx = batch.reward
    assert (idx < size).all()
    torch.testing.assert_close(batch.obs_cond, idx[:, None].expand(-1, D))
    torch.testing.assert_close(batch.w, idx[:, None, None].expand(-1, *W_SHAPE))
    torch.testing.assert_close(batch.a_head, -idx[:, None, None].expand(-1, *A_SHAPE))
    torch.testing.assert_close(batch.discount, idx + 0.5)
    torch.testing.assert_close(batch.done, idx % 2)
    torch.testing.assert_close(batch.next_obs_cond, idx[:, None].expand(-1, D) + 1)


def test_sample_many_draws_independent_consistent_batches() -> None:
    buf = _buf(64)
    buf.add_batch(**_items(0, 50))
    batches = buf.sample_many(5, 16, np.random.default_rng(0))
    assert len(batches) == 5 and all(b.reward.shape == (16,) for b in batches)
    for b in batches:
        _assert_rows_consistent(b, 50)
    # One draw of 80 indices split in 5: the batches differ and together cover much of the buffer.
    assert len({tuple(b.reward.tolist()) for b in batches}) == 5
    assert len(set(torch.cat([b.reward for b in batches]).tolist())) > 30
    # sample() is a batch of one.
    one = buf.sample(16, np.random.default_rng(0))
    torch.testing.assert_close(one.reward, batches[0].reward)


def test_packed_gather_matches_per_field_gather() -> None:
    """The one-block (pinned on CUDA) gather used off the CPU, run here on the CPU without pinning."""
    buf = _buf(32)
    buf.add_batch(**_items(0, 20))
    idx = np.random.default_rng(3).integers(0, 20, size=48)
    packed = buf._gather_packed(idx, torch.device("cpu"), pin=False)
    for name, got in zip(MacroBatch._fields, packed, strict=True):
        np.testing.assert_array_equal(got.numpy(), buf._data[name][idx])
    batch = MacroBatch(*packed)
    _assert_rows_consistent(batch, 20)


def test_state_dict_shares_memory_and_saves_only_filled_rows(tmp_path: Path) -> None:
    """A checkpoint of a large buffer neither copies it (resident memory) nor writes its empty capacity."""
    buf = _buf(100_000)
    buf.add_batch(**_items(0, 4))
    state = buf.state_dict()
    for name, arr in buf._data.items():
        assert np.shares_memory(state[name].numpy(), arr)
    path = tmp_path / "replay.pt"
    torch.save(state, path)
    assert path.stat().st_size < 20_000  # 4 rows, not 100,000
    loaded = _buf(100_000)
    loaded.load_state_dict(torch.load(path, weights_only=True))
    for name, arr in buf._data.items():
        np.testing.assert_array_equal(loaded._data[name][:4], arr[:4])
