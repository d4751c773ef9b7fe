"""The one artifact store every stage uses.

Layout under the root (default `./artifacts`):

    objects/<stage>/<key>/manifest.json   written last: its presence means "complete"
    objects/<stage>/<key>/<main file>      e.g. base.ckpt, dataset.h5, stage2.ckpt
    objects/<stage>/<key>/checkpoints/     periodic resume states of a partial run
    <friendly name>                        symlink to the newest complete artifact's main file

The key hashes the stage, its resolved configuration minus cosmetic fields, the keys of its inputs and
the schema version (like DVC's stage hash), so an unchanged rerun is a cache hit and any change that
could alter the result gives a new key. The rule (tests/test_cache_keys.py walks every config field):
changing a field either changes the key or leaves every stored byte identical, where "stored" is the
main file, the manifest's summary and log.jsonl, minus the run facts named in `RUN_FACTS` below.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsrl_cli.errors import STORAGE_ERRNOS, BadInput, DsrlError, with_path
from dsrl_cli.store import lock as key_lock
from dsrl_cli.store.checkpoint import load_torch, save_torch
from dsrl_cli.utils.console import console

MANIFEST = "manifest.json"
CHECKPOINT_DIR = "checkpoints"
KEY_LENGTH = 16

# stage -> (friendly name, main file inside the artifact folder)
FRIENDLY_NAMES: dict[str, str] = {
    "collect": "dataset.h5",
    "pretrain": "base.ckpt",
    "train-qa": "qa.ckpt",
    "alias": "alias.pt",
    "distill-qw": "qw.ckpt",
    "warmstart": "stage1.ckpt",
    "online": "stage2.ckpt",
    "eval": "eval.json",
}
_STAGE_BY_FRIENDLY = {name: stage for stage, name in FRIENDLY_NAMES.items()}
_KEY_RE = re.compile(r"^[0-9a-f]{4,64}$")
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})  # the store cannot be written at all

# The only stored fields (in a manifest, its summary or a log.jsonl record) that may differ between two
# runs under one key: they describe how a run went, not what it produced. Wall-clock time and speeds, and
# where an alias run found its rows (computed now or read from the shared LMDB cache, and that cache's path).
RUN_FACTS = frozenset({"created", "seconds", "computed", "from_cache", "cache"})
RUN_FACT_SUFFIXES = ("_per_s",)


def is_run_fact(name: str) -> bool:
    return name in RUN_FACTS or name.endswith(RUN_FACT_SUFFIXES)


def without_run_facts(record: Any) -> Any:
    """`record` with every run fact removed, at any depth: what must be identical under one key."""
    if isinstance(record, dict):
        return {k: without_run_facts(v) for k, v in record.items() if not is_run_fact(str(k))}
    if isinstance(record, (list, tuple)):
        return [without_run_facts(v) for v in record]
    return record


def _canonical(obj: Any) -> Any:
    """JSON-stable form: sorted dicts, tuples as lists, floats that round-trip exactly."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return repr(obj)
        return float(repr(obj))
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stage_key(stage: str, config: dict[str, Any], inputs: dict[str, str], schema: int) -> str:
    payload = json.dumps(
        {"stage": stage, "config": _canonical(config), "inputs": _canonical(inputs), "schema": schema},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def write_text_atomic(path: Path, text: str) -> None:
    """Temporary file beside `path`, fsync, rename; the temporary file never outlives a failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise with_path(exc, path) from None
        raise


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(_canonical(data), indent=2, sort_keys=True))


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, where empty (a folder with anything in it stays)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _sweep_dead_links(root: Path, name: str) -> None:
    """Remove `.NAME.link-PID-*` symlinks left by processes killed between creating and renaming them."""
    for path in root.glob(f".{name}.link-*"):
        try:
            pid = int(path.name.split(".link-", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _is_temp(path: Path) -> bool:
    """A leftover of an interrupted atomic write (ours: `.NAME.tmp-PID`; the log's rewrite: `NAME.tmp`)."""
    return (path.name.startswith(".") and ".tmp-" in path.name) or path.suffix == ".tmp"


def _sweep_temp(folder: Path) -> None:
    """Remove interrupted writes' leftovers in a run folder (only while holding its key lock)."""
    for sub in (folder, folder / CHECKPOINT_DIR):
        if not sub.is_dir():
            continue
        for path in sub.iterdir():
            if _is_temp(path) and path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()


def find_nonfinite(obj: Any, where: str = "") -> str | None:
    """Where the first NaN / inf in `obj` (tensors, arrays, numbers, nested dicts and lists) is, else None."""
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            return where or "tensor"
        return None
    if isinstance(obj, np.ndarray):
        if np.issubdtype(obj.dtype, np.inexact) and not bool(np.isfinite(obj).all()):
            return where or "array"
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "value")
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = find_nonfinite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = find_nonfinite(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _nonfinite_in_file(path: Path) -> str | None:
    """Checks torch files (zip archives: weights, aliases); other main files carry no weights."""
    if not zipfile.is_zipfile(path):
        return None
    return find_nonfinite(load_torch(path))


@dataclass(frozen=True)
class Artifact:
    key: str
    stage: str
    dir: Path
    manifest: dict[str, Any]

    @property
    def main_path(self) -> Path:
        return self.dir / self.manifest["main_file"]

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest.get("meta", {})

    @property
    def summary(self) -> dict[str, Any]:
        return self.manifest.get("summary", {})

    def input_key(self, name: str) -> str | None:
        return self.manifest.get("inputs", {}).get(name)


@dataclass
class StageRun:
    """One stage execution bound to its key: a cache hit (`cached`) or a (possibly resumed) work folder."""

    store: ArtifactStore
    stage: str
    key: str
    dir: Path
    config: dict[str, Any]
    inputs: dict[str, str]
    schema: int
    cached: bool
    artifact: Artifact | None = None
    started: float = field(default_factory=time.time)
    lock: key_lock.FileLock | None = None  # held from begin() until finish() for a run that computes

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / CHECKPOINT_DIR

    def save_state(self, state: dict[str, Any], step: int, keep: int = 2) -> Path:
        """Periodic resume state; only plain data and tensors (loaded back with weights_only=True)."""
        path = self.checkpoint_dir / f"state_{step:012d}.pt"
        save_torch(path, {"step": step, "state": state})
        for old in sorted(self.checkpoint_dir.glob("state_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_state(self) -> tuple[dict[str, Any] | None, int]:
        if not self.checkpoint_dir.is_dir():
            return None, 0
        for path in sorted(self.checkpoint_dir.glob("state_*.pt"), reverse=True):
            try:
                blob = load_torch(path)
            except BadInput:
                continue  # a torn write from a killed run: fall back to the previous state
            return blob["state"], int(blob["step"])
        return None, 0

    def finish(self, main_file: str, summary: dict[str, Any], meta: dict[str, Any] | None = None) -> Artifact:
        """Publish: check for NaN / inf, write the manifest, drop resume states, point the friendly name."""
        try:
            main = self.dir / main_file
            if not main.exists():
                raise RuntimeError(f"stage {self.stage} did not write its main file {main_file}")
            bad = find_nonfinite(summary, "summary") or _nonfinite_in_file(main)
            if bad:
                # Never publish a diverged run: no manifest, so the friendly name keeps its previous target.
                name = FRIENDLY_NAMES.get(self.stage, "its friendly name")
                raise DsrlError(f"{self.stage} run {self.key} produced NaN or inf ({bad}); not published, {name} "
                                f"is unchanged (the unpublished run is in {self.dir})")
            manifest = {
                "key": self.key,
                "stage": self.stage,
                "schema": self.schema,
                "config": self.config,
                "inputs": self.inputs,
                "main_file": main_file,
                "summary": summary,
                "meta": meta or {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - self.started, 3),
            }
            _sweep_temp(self.dir)  # a killed write before a resume may have left one inside the result
            _write_json_atomic(self.dir / MANIFEST, manifest)
            # Only now are the resume states no longer needed: a kill before this line resumes from them.
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            artifact = Artifact(self.key, self.stage, self.dir, json.loads((self.dir / MANIFEST).read_text()))
            self.store.point_friendly_name(artifact)
            self.artifact = artifact
            return artifact
        finally:
            self.release()

    def release(self) -> None:
        """Let the next writer of this key in (finish() does it; a failed run's process exit does it too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        # A file where the store folder (or one of its parents) should be: say so before anything is tried.
        for path in (self.root, *self.root.parents):
            if path.exists() or path.is_symlink():
                if not path.is_dir():
                    where = "" if path == self.root else f" ({path} is a file)"
                    raise BadInput(f"artifact store {self.root} is not a folder{where}; pass --artifacts DIR")
                break

    # -- writing -------------------------------------------------------------------------------
    def begin(
        self,
        stage: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        schema: int,
        force: bool = False,
    ) -> StageRun:
        """A cache hit (a pure read: nothing is written) or the run folder, with this key's lock held.

        A second process with the same key waits for the first one's lock, then reuses its result (even
        with `--force`: that result was computed after this command started).
        """
        key = stage_key(stage, config, inputs, schema)
        folder = self.root / "objects" / stage / key
        if not force and (folder / MANIFEST).is_file():
            return self._cache_hit(stage, key, folder, config, inputs, schema)
        # Folders this run creates; a run that fails before writing anything removes them again (bad input
        # found after begin, e.g. an unreadable upstream file, leaves the store as it was).
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock_path = folder.with_name(f"{key}.lock")
        lock = key_lock.acquire(lock_path, on_wait=lambda: console.print(
            f"waiting for another process computing {stage} {key} (lock {lock_path})"))
        lock.on_release = lambda: _remove_empty(created)
        try:
            if (not force or lock.waited) and (folder / MANIFEST).is_file():
                lock.release()
                return self._cache_hit(stage, key, folder, config, inputs, schema)
            for trash in folder.parent.glob(f".trash-{key}-*"):
                shutil.rmtree(trash, ignore_errors=True)  # a --force run killed while deleting
            if force and folder.exists():
                # Move aside first so a crash mid-delete never leaves a half-removed folder with a manifest.
                trash = folder.with_name(f".trash-{key}-{os.getpid()}-{time.time_ns()}")
                os.replace(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            _sweep_temp(folder)  # what killed writers left: we hold the key, no one else writes here
            self.sweep_stage(stage)
        except BaseException:
            lock.release()
            raise
        return StageRun(self, stage, key, folder, config, inputs, schema, cached=False, lock=lock)

    def sweep_stage(self, stage: str) -> list[Path]:
        """Remove what writers of `stage` killed while publishing left: the lock files no one holds and the
        resume states inside complete artifacts (a kill between the manifest and their removal). A cache
        hit never writes, so the next writer of the stage does this; returns what it removed."""
        stage_dir = self.root / "objects" / stage
        removed: list[Path] = []
        stale = {p.stem for p in stage_dir.glob("*.lock")}
        stale |= {m.parent.name for m in stage_dir.glob(f"*/{CHECKPOINT_DIR}") if (m.parent / MANIFEST).is_file()}
        for key in sorted(stale):
            lock_path = stage_dir / f"{key}.lock"
            existed = lock_path.exists()
            if not existed:
                with contextlib.suppress(OSError):
                    lock_path.touch(exist_ok=True)
            lock = key_lock.try_acquire(lock_path)
            if lock is None:
                continue  # a live writer holds it
            with lock:  # releasing deletes the lock file
                done = stage_dir / key
                if (done / MANIFEST).is_file() and (done / CHECKPOINT_DIR).is_dir():
                    shutil.rmtree(done / CHECKPOINT_DIR, ignore_errors=True)
                    removed.append(done / CHECKPOINT_DIR)
                if existed:
                    removed.append(lock_path)
        return removed

    def _cache_hit(self, stage: str, key: str, folder: Path, config: dict[str, Any], inputs: dict[str, str],
                   schema: int) -> StageRun:
        artifact = self._read(folder)
        self.point_friendly_name(artifact, reading=True)
        return StageRun(self, stage, key, folder, config, inputs, schema, cached=True, artifact=artifact)

    def point_friendly_name(self, artifact: Artifact, reading: bool = False) -> None:
        """Point the stage's friendly name at `artifact` (no write when it already does).

        `reading`: a cache hit, which must work on a read-only store; failing to re-point is then a warning.
        """
        name = FRIENDLY_NAMES.get(artifact.stage)
        if name is None:
            return
        link = self.root / name
        target = os.path.relpath(artifact.main_path, self.root)
        with contextlib.suppress(OSError):
            if os.readlink(link) == target:
                return
        _sweep_dead_links(self.root, name)
        tmp = self.root / f".{name}.link-{os.getpid()}-{time.time_ns()}"
        try:
            os.symlink(target, tmp)
            os.replace(tmp, link)  # atomic swap: readers see the old or the new target, never none
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not isinstance(exc, OSError):
                raise
            if reading and exc.errno in STORAGE_ERRNOS:
                console.print(f"note: could not point {link} at {artifact.key} ({STORAGE_ERRNOS[exc.errno]}); "
                              "using the artifact anyway", markup=False)
                return
            raise with_path(exc, link) from None

    # -- reading -------------------------------------------------------------------------------
    def _read(self, folder: Path) -> Artifact:
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise BadInput(f"{folder} is an incomplete run (no manifest); rerun its stage to finish it")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"manifest {manifest_path} is damaged ({type(exc).__name__}); rerun its stage with "
                           "--force to recompute it") from exc
        problem = _manifest_problem(manifest, folder)
        if problem:
            raise BadInput(f"manifest {manifest_path} is damaged ({problem}); rerun its stage with --force to "
                           "recompute it")
        return Artifact(manifest["key"], manifest["stage"], folder, manifest)

    def resolve(self, ref: str | Path, stage: str | None = None, hint: str | None = None) -> Artifact:
        """Find an artifact by friendly name, path (file or folder, symlinks followed) or key prefix."""
        ref_str = str(ref)
        candidates: list[Path] = []
        path = Path(ref_str)
        if path.exists():
            candidates.append(path)
        elif not path.is_absolute() and (self.root / ref_str).exists():
            candidates.append(self.root / ref_str)
        elif ref_str in FRIENDLY_NAMES.values() or ref_str in FRIENDLY_NAMES:
            name = FRIENDLY_NAMES.get(ref_str, ref_str)
            candidates.append(self.root / name)
        if candidates and not candidates[0].exists():
            raise BadInput(f"artifact {ref_str} not found in {self.root}{self._hint(stage, hint)}")
        if candidates:
            real = candidates[0].resolve()
            if real.is_dir():
                folder = real
                if not (folder / MANIFEST).exists() and not _looks_like_run(folder):
                    raise BadInput(f"{ref_str} is a folder but not an artifact (no {MANIFEST} in it); pass an "
                                   f"artifact's file, folder, key or friendly name{self._hint(stage, hint)}")
            else:
                folder = real.parent
                if not (folder / MANIFEST).exists() and not _looks_like_run(folder):
                    raise BadInput(f"{ref_str} is a file but not part of an artifact (no {MANIFEST} beside it); "
                                   f"pass an artifact's file, folder, key or friendly name{self._hint(stage, hint)}")
            artifact = self._read(folder)
        elif _KEY_RE.match(ref_str):
            matches = sorted((self.root / "objects").glob(f"*/{ref_str}*"))
            matches = [m for m in matches if (m / MANIFEST).is_file()]
            if not matches:
                raise BadInput(f"no artifact with key {ref_str} in {self.root}{self._hint(stage, hint)}")
            if len({m.name for m in matches}) > 1:
                raise BadInput(f"key prefix {ref_str} is ambiguous in {self.root}")
            artifact = self._read(matches[0])
        else:
            raise BadInput(f"artifact {ref_str} not found in {self.root}{self._hint(stage, hint)}")
        if stage is not None and artifact.stage != stage:
            raise BadInput(f"{ref_str} is a {artifact.stage} artifact, expected a {stage} artifact")
        return artifact

    def resolve_default(self, ref: str | None, stage: str, hint: str) -> Artifact:
        """The explicit reference when given, else the friendly name of `stage` in this store."""
        return self.resolve(ref if ref else FRIENDLY_NAMES[stage], stage=stage, hint=hint)

    @staticmethod
    def _hint(stage: str | None, hint: str | None) -> str:
        if hint:
            return f"; {hint}"
        return ""

    def list(self) -> list[Artifact]:
        return self.scan()[0]

    def scan(self) -> tuple[list[Artifact], list[tuple[Path, str]]]:
        """Complete artifacts (oldest first) and folders whose manifest is damaged, with the reason."""
        out: list[Artifact] = []
        damaged: list[tuple[Path, str]] = []
        objects = self.root / "objects"
        if not objects.is_dir():
            return out, damaged
        for manifest in sorted(objects.glob(f"*/*/{MANIFEST}")):
            try:
                out.append(self._read(manifest.parent))
            except BadInput as exc:
                damaged.append((manifest.parent, str(exc)))
        out.sort(key=lambda a: str(a.manifest.get("created", "")))
        return out, damaged

    def partial_runs(self) -> list[Path]:
        objects = self.root / "objects"
        if not objects.is_dir():
            return []
        return sorted(p for p in objects.glob("*/*") if p.is_dir() and not (p / MANIFEST).exists()
                      and not p.name.startswith("."))

    def friendly_targets(self) -> dict[str, str]:
        out = {}
        for name in FRIENDLY_NAMES.values():
            link = self.root / name
            if link.is_symlink() and link.exists():
                out[name] = str(link.resolve().parent.name)
        return out


def _manifest_problem(manifest: Any, folder: Path) -> str | None:
    """Why a parsed manifest cannot describe an artifact in `folder`, else None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for name in ("key", "stage", "main_file"):
        if not isinstance(manifest.get(name), str) or not manifest[name]:
            return f"no {name}"
    for name in ("summary", "meta", "inputs", "config"):
        if not isinstance(manifest.get(name, {}), dict):
            return f"{name} is not an object"
    main = manifest["main_file"]
    if Path(main).name != main:
        return f"main_file {main!r} is not a file name"
    if not (folder / main).is_file():
        return f"its main file {main} is missing"
    return None


def _looks_like_run(folder: Path) -> bool:
    """A run folder of some store (objects/<stage>/<key>): without a manifest, an unfinished run."""
    return folder.parent.parent.name == "objects" and bool(_KEY_RE.match(folder.name))


def friendly_stage(name: str) -> str | None:
    return _STAGE_BY_FRIENDLY.get(name)


__all__ = [
    "Artifact",
    "ArtifactStore",
    "FRIENDLY_NAMES",
    "StageRun",
    "READ_ONLY_ERRNOS",
    "RUN_FACTS",
    "find_nonfinite",
    "friendly_stage",
    "is_run_fact",
    "load_torch",
    "save_torch",
    "stage_key",
    "without_run_facts",
    "write_text_atomic",
]
