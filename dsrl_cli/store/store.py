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

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsrl_cli.errors import BadInput
from dsrl_cli.store.checkpoint import load_torch, save_torch

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


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(_canonical(data), fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
        if not (self.dir / main_file).exists():
            raise RuntimeError(f"stage {self.stage} did not write its main file {main_file}")
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
        # Resume states are no longer needed once the result exists.
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        _write_json_atomic(self.dir / MANIFEST, manifest)
        artifact = Artifact(self.key, self.stage, self.dir, json.loads((self.dir / MANIFEST).read_text()))
        self.store.point_friendly_name(artifact)
        self.artifact = artifact
        return artifact


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- writing -------------------------------------------------------------------------------
    def begin(
        self,
        stage: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        schema: int,
        force: bool = False,
    ) -> StageRun:
        key = stage_key(stage, config, inputs, schema)
        folder = self.root / "objects" / stage / key
        if folder.is_dir() and (folder / MANIFEST).is_file() and not force:
            artifact = self._read(folder)
            self.point_friendly_name(artifact)
            return StageRun(self, stage, key, folder, config, inputs, schema, cached=True, artifact=artifact)
        if force and folder.exists():
            # Move aside first so a crash mid-delete never leaves a half-removed folder with a manifest.
            trash = folder.with_name(f".trash-{key}-{os.getpid()}-{time.time_ns()}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return StageRun(self, stage, key, folder, config, inputs, schema, cached=False)

    def point_friendly_name(self, artifact: Artifact) -> None:
        name = FRIENDLY_NAMES.get(artifact.stage)
        if name is None:
            return
        link = self.root / name
        target = os.path.relpath(artifact.main_path, self.root)
        tmp = self.root / f".{name}.link-{os.getpid()}-{time.time_ns()}"
        os.symlink(target, tmp)
        os.replace(tmp, link)  # atomic swap: readers see the old or the new target, never none

    # -- reading -------------------------------------------------------------------------------
    def _read(self, folder: Path) -> Artifact:
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise BadInput(f"{folder} is an incomplete run (no manifest); rerun its stage to finish it")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(f"cannot read manifest {manifest_path}: {exc}") from exc
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
            folder = real if real.is_dir() and (real / MANIFEST).exists() else real.parent
            if not (folder / MANIFEST).exists() and real.is_dir():
                folder = real
            if not folder.exists():
                raise BadInput(f"artifact {ref_str} does not exist{self._hint(stage, hint)}")
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
        out: list[Artifact] = []
        objects = self.root / "objects"
        if not objects.is_dir():
            return out
        for manifest in sorted(objects.glob(f"*/*/{MANIFEST}")):
            try:
                out.append(self._read(manifest.parent))
            except BadInput:
                continue
        out.sort(key=lambda a: a.manifest.get("created", ""))
        return out

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


def friendly_stage(name: str) -> str | None:
    return _STAGE_BY_FRIENDLY.get(name)


__all__ = [
    "Artifact",
    "ArtifactStore",
    "FRIENDLY_NAMES",
    "StageRun",
    "RUN_FACTS",
    "friendly_stage",
    "is_run_fact",
    "load_torch",
    "save_torch",
    "stage_key",
    "without_run_facts",
]
