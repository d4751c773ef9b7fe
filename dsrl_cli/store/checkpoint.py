"""Torch files that never execute code on load: `weights_only=True` and atomic writes."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO

import torch

from dsrl_cli.errors import BadInput, with_path


def save_torch(path: Path, obj: Any) -> None:
    """Write `obj` to a temporary file beside `path`, then rename: readers see the old file or the new one.

    The temporary file is removed on every failure (a full disk must not stay full of our leftovers), and a
    failed write is re-raised as the `OSError` (e.g. ENOSPC) naming `path`: torch's writer turns it into an
    anonymous RuntimeError ("unexpected pos ...").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer: _Writer | None = None
    try:
        with open(tmp, "wb") as fh:
            writer = _Writer(fh)
            torch.save(obj, writer)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        failed = exc if isinstance(exc, OSError) else (writer.error if writer is not None else None)
        if failed is not None:
            raise with_path(failed, path) from None
        raise


class _Writer:
    """The file object torch writes through, remembering the OSError a write raised."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            self.error = exc
            raise


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def load_torch(path: Path, map_location: str | torch.device = "cpu") -> Any:
    path = Path(path)
    if not path.exists():
        raise BadInput(f"checkpoint not found: {path}")
    if not path.is_file():
        raise BadInput(f"{path} is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a refused pickle, a truncated file, a foreign format
        raise BadInput(_load_error(path, exc)) from exc


def _load_error(path: Path, exc: BaseException) -> str:
    """Our own line: torch's advice to retry with weights_only=False would mean running the file's code."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"refused to load {path}: it names Python code ({refused.group(1)}), and dsrl loads only "
                "tensors and plain data (loading it would run that code)")
    if isinstance(exc, pickle.UnpicklingError) or "zip archive" in text:
        return f"cannot read checkpoint {path}: not a torch file, or a truncated one"
    first = text.splitlines()[0] if text else ""
    return f"cannot read checkpoint {path}: {type(exc).__name__}: {first}"
