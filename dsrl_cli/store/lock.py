"""One writer per artifact key: an exclusive OS file lock (`fcntl.flock`) held while a run computes.

The lock lives in a small file next to the run folder (`objects/<stage>/<key>.lock`). A second process
with the same key blocks on it, and once the first one publishes (or dies: the kernel drops a dead
process's locks) it reads the result instead of computing it again. The holder deletes the file before
letting go; a waiter that then wakes up on the deleted file sees that its path now names another file
(or none) and locks again, so two processes never both believe they hold the lock.

Locks are per open file, so a second `acquire` of the same path in one process also waits. A run that
failed with an exception never reached `finish()`; its lock is still held by this thread, and the next
`acquire` of the same path on the same thread takes it over (the failed run is over: stages run one at a
time per thread). `release_all()` drops whatever this process still holds (the CLI calls it at the end).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path

# path -> (thread ident, lock) for every lock this process holds
_HELD: dict[str, tuple[int, FileLock]] = {}
_HELD_GUARD = threading.Lock()


class FileLock:
    def __init__(self, path: Path, fd: int, waited: bool) -> None:
        self.path = path
        self._fd: int | None = fd
        self.waited = waited  # True when another process held it first
        self.on_release: Callable[[], None] | None = None  # runs after the lock file is gone, while still held

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Delete the lock file (while still holding it, so no one can lock the old inode after us) and unlock."""
        if self._fd is None:
            return
        with _HELD_GUARD:
            entry = _HELD.get(str(self.path))
            if entry is not None and entry[1] is self:
                del _HELD[str(self.path)]
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):  # e.g. already gone; the lock itself still goes away below
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)
            if self.on_release is not None:
                self.on_release()
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(path: Path, on_wait: Callable[[], None] | None = None) -> FileLock:
    """Exclusive lock on `path` (created if missing); calls `on_wait()` once before blocking on another holder."""
    path = Path(path)
    with _HELD_GUARD:
        stale = _HELD.get(str(path))
    if stale is not None and stale[0] == threading.get_ident():
        stale[1].release()  # a failed run of this thread left it: that run is over
    waited = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a failed run's cleanup removed the empty folder meanwhile
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                lock = FileLock(path, fd, waited)
                with _HELD_GUARD:
                    _HELD[str(path)] = (threading.get_ident(), lock)
                return lock
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder deleted this file while we waited: lock the new one


def try_acquire(path: Path) -> FileLock | None:
    """The lock on an existing `path` when no one (no process, no thread here) holds it, else None."""
    path = Path(path)
    with _HELD_GUARD:
        if str(path) in _HELD:
            return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            raise BlockingIOError  # replaced meanwhile: leave it to its new holder
    except OSError:
        os.close(fd)
        return None
    lock = FileLock(path, fd, waited=False)
    with _HELD_GUARD:
        _HELD[str(path)] = (threading.get_ident(), lock)
    return lock


def release_all() -> None:
    """Release every lock this process holds (runs that failed before publishing)."""
    with _HELD_GUARD:
        locks = [lock for _, lock in _HELD.values()]
    for lock in locks:
        lock.release()


def held_paths() -> list[str]:
    with _HELD_GUARD:
        return sorted(_HELD)
