"""Artifact store: keys, cache hit/miss, friendly names, partial resume, atomic manifest, safe loads."""

import json
import os
import threading

import pytest
import torch

from dsrl_cli.errors import BadInput
from dsrl_cli.store.checkpoint import load_torch, save_torch
from dsrl_cli.store.store import ArtifactStore, stage_key


def _finish(store, stage="pretrain", config=None, inputs=None, text="x"):
    run = store.begin(stage, config or {"a": 1}, inputs or {}, 1)
    if not run.cached:
        (run.dir / "base.ckpt").write_text(text)
        run.finish("base.ckpt", {"value": text}, {"task": "t"})
    return run


def test_key_depends_on_config_inputs_and_schema_only():
    k = stage_key("s", {"a": 1, "b": 2.0}, {"x": "k1"}, 1)
    assert k == stage_key("s", {"b": 2.0, "a": 1}, {"x": "k1"}, 1)  # order-free
    assert k != stage_key("s", {"a": 2, "b": 2.0}, {"x": "k1"}, 1)
    assert k != stage_key("s", {"a": 1, "b": 2.0}, {"x": "k2"}, 1)
    assert k != stage_key("s", {"a": 1, "b": 2.0}, {"x": "k1"}, 2)
    assert k != stage_key("t", {"a": 1, "b": 2.0}, {"x": "k1"}, 1)


def test_cache_hit_and_miss(store_root):
    store = ArtifactStore(store_root)
    first = _finish(store)
    assert not first.cached
    again = store.begin("pretrain", {"a": 1}, {}, 1)
    assert again.cached and again.artifact.summary == {"value": "x"}
    other = store.begin("pretrain", {"a": 2}, {}, 1)
    assert not other.cached and other.key != first.key


def test_friendly_name_points_at_newest(store_root):
    store = ArtifactStore(store_root)
    a = _finish(store, config={"a": 1}, text="one")
    b = _finish(store, config={"a": 2}, text="two")
    link = store_root / "base.ckpt"
    assert link.is_symlink() and link.read_text() == "two"
    assert store.resolve("base.ckpt").key == b.key
    # A cache hit re-points the friendly name at the reused artifact.
    _finish(store, config={"a": 1})
    assert link.read_text() == "one" and store.resolve(str(link)).key == a.key


def test_resolve_by_path_key_and_errors(store_root):
    store = ArtifactStore(store_root)
    run = _finish(store)
    assert store.resolve(run.key[:8]).key == run.key
    assert store.resolve(str(run.dir)).key == run.key
    assert store.resolve(str(run.dir / "base.ckpt"), stage="pretrain").key == run.key
    with pytest.raises(BadInput, match="expected a collect artifact"):
        store.resolve("base.ckpt", stage="collect")
    with pytest.raises(BadInput, match="not found"):
        store.resolve("dataset.h5", stage="collect")


def test_partial_run_resumes_and_force_recomputes(store_root):
    store = ArtifactStore(store_root)
    run = store.begin("pretrain", {"a": 1}, {}, 1)
    run.save_state({"w": torch.ones(2), "step_note": "s1"}, 10)
    run.save_state({"w": torch.full((2,), 2.0)}, 20)
    run.save_state({"w": torch.full((2,), 3.0)}, 30)
    assert len(list(run.checkpoint_dir.glob("state_*.pt"))) == 2  # keeps the last two
    # No manifest: a new run with the same key is not cached and sees the latest state.
    again = store.begin("pretrain", {"a": 1}, {}, 1)
    assert not again.cached
    state, step = again.load_state()
    assert step == 30 and torch.equal(state["w"], torch.full((2,), 3.0))
    assert store.partial_runs() == [run.dir]
    (again.dir / "base.ckpt").write_text("done")
    again.finish("base.ckpt", {}, {})
    assert not again.checkpoint_dir.exists()
    forced = store.begin("pretrain", {"a": 1}, {}, 1, force=True)
    assert not forced.cached and not (forced.dir / "manifest.json").exists()


def test_torn_checkpoint_falls_back_to_previous(store_root):
    store = ArtifactStore(store_root)
    run = store.begin("pretrain", {"a": 1}, {}, 1)
    run.save_state({"v": 1}, 1)
    (run.checkpoint_dir / "state_000000000002.pt").write_bytes(b"garbage")
    state, step = run.load_state()
    assert step == 1 and state == {"v": 1}


def test_manifest_written_last_and_is_json(store_root):
    store = ArtifactStore(store_root)
    run = _finish(store)
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["key"] == run.key and manifest["main_file"] == "base.ckpt"
    assert not [p for p in os.listdir(run.dir) if ".tmp" in p]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_load_refuses_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(BadInput, match="refused to load .*posix.system") as info:
        load_torch(path)
    assert "weights_only" not in str(info.value)  # torch's advice to rerun the file's code never leaks
    save_torch(tmp_path / "ok.pt", {"x": torch.zeros(1), "n": 3, "s": "a", "l": [1, 2]})
    assert load_torch(tmp_path / "ok.pt")["n"] == 3


def test_cache_hit_is_a_pure_read(store_root):
    store = ArtifactStore(store_root)
    _finish(store)
    link = store_root / "base.ckpt"
    before = (os.lstat(link).st_ino, os.lstat(link).st_mtime_ns)
    assert store.begin("pretrain", {"a": 1}, {}, 1).cached
    assert (os.lstat(link).st_ino, os.lstat(link).st_mtime_ns) == before  # the link was not re-created


def test_key_lock_lives_only_while_computing(store_root):
    store = ArtifactStore(store_root)
    run = store.begin("pretrain", {"a": 1}, {}, 1)
    lock = run.dir.with_name(f"{run.key}.lock")
    assert lock.exists() and run.lock is not None and run.lock.held
    (run.dir / "base.ckpt").write_text("x")
    run.finish("base.ckpt", {}, {})
    assert not lock.exists() and run.lock is None
    assert [p.name for p in run.dir.parent.iterdir()] == [run.key]


def test_begin_sweeps_what_killed_writers_left(store_root):
    store = ArtifactStore(store_root)
    run = store.begin("pretrain", {"a": 1}, {}, 1)
    run.save_state({"v": 1}, 1)
    (run.dir / ".base.ckpt.tmp-999999").write_text("half")
    (run.checkpoint_dir / ".state_000000000002.pt.tmp-999999").write_text("half")
    run.release()
    again = store.begin("pretrain", {"a": 1}, {}, 1)
    assert sorted(p.name for p in again.dir.rglob("*")) == ["checkpoints", "state_000000000001.pt"]
    again.release()


def test_save_torch_leaves_no_temp_file_when_the_write_fails(tmp_path, monkeypatch):
    def failing_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk trouble"):
        save_torch(tmp_path / "x.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_plain_files_and_folders_are_not_called_incomplete_runs(store_root, tmp_path):
    store = ArtifactStore(store_root)
    (tmp_path / "note.txt").write_text("x")
    with pytest.raises(BadInput, match="is a file but not part of an artifact"):
        store.resolve(str(tmp_path / "note.txt"))
    with pytest.raises(BadInput, match="is a folder but not an artifact"):
        store.resolve(str(tmp_path))
    run = store.begin("pretrain", {"a": 1}, {}, 1)
    run.save_state({"v": 1}, 1)
    with pytest.raises(BadInput, match="incomplete run"):
        store.resolve(str(run.dir))
    run.release()


def test_next_writer_sweeps_what_a_kill_while_publishing_left(store_root):
    store = ArtifactStore(store_root)
    done = _finish(store, config={"a": 1})
    stage_dir = done.dir.parent
    # A writer SIGKILLed after writing the manifest: its resume states and its lock file stay behind.
    (done.dir / "checkpoints").mkdir()
    (done.dir / "checkpoints" / "state_000000000010.pt").write_text("old")
    (stage_dir / f"{done.key}.lock").write_text("")
    assert store.begin("pretrain", {"a": 1}, {}, 1).cached  # a cache hit writes nothing
    assert (done.dir / "checkpoints").exists()
    busy = store.begin("pretrain", {"a": 3}, {}, 1)  # a live writer's lock is left alone
    other = threading.Thread(target=lambda: store.begin("pretrain", {"a": 2}, {}, 1).release())
    other.start()
    other.join()
    assert not (done.dir / "checkpoints").exists() and not (stage_dir / f"{done.key}.lock").exists()
    assert (stage_dir / f"{busy.key}.lock").exists()
    busy.release()
