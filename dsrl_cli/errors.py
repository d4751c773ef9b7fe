"""Known failures. The CLI turns these into one stderr line and an exit code."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class DsrlError(Exception):
    """A runtime failure we understand (exit 1)."""

    exit_code = 1


class BadInput(DsrlError):
    """Bad user input: unknown task, inconsistent shapes, missing upstream artifact, bad file (exit 2)."""

    exit_code = 2


# Storage failures a user can act on (free space, mount read-write, fix permissions): one line, exit 1.
STORAGE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def disk_full(path: str | os.PathLike[str], below: int = 1 << 20) -> bool:
    """Less than `below` bytes free where `path` (or its nearest existing parent) lives."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < below
    except OSError:
        return False


def with_path(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """`exc` naming `path` when it names no file (a failed write() or fsync() does not)."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc


def storage_error_line(exc: BaseException, fallback: str | os.PathLike[str] | None = None) -> str | None:
    """`no space left on device at PATH` (and the like) for a storage failure, else None.

    Libraries that wrap the OSError (h5py, lmdb, torch) are recognised when the store's disk is full.
    """
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        code, where = exc.errno, (exc.filename if exc.filename is not None else fallback)
    elif "No space left on device" in str(exc) or (fallback is not None and disk_full(fallback)):
        code, where = errno.ENOSPC, fallback
    else:
        return None
    line = STORAGE_ERRNOS[code]
    if where is not None:
        line += f" at {Path(os.fsdecode(where))}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        line += "; free some space and rerun (a partial run resumes from its last checkpoint)"
    return line
