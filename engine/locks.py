"""Exclusive locks between processes: an flock on a small file, for a run directory and a token-cache build.

The kernel drops an flock when the process holding it dies, however it dies (kill -9 included), so a
lock is never stale and nobody waits for a dead holder. What the file holds ("<pid> <purpose>") is only
for the message the next process prints; the lock is the flock itself.

A lock file is never deleted while in use: a process that opened the old file would hold a lock on a
name nobody else can see. When a whole folder goes away (a deleted run), `acquire` notices that the
file it locked is no longer the one at its path and raises FileNotFoundError.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

# How often a cancellable wait looks whether it should give up.
POLL_S = 0.2


class WaitCancelled(Exception):
    """A wait for a lock was given up because the caller was asked to stop (see FileLock.acquire)."""


class FileLock:
    """An exclusive flock on `path`, created if missing. `purpose` says to the next process what holds it."""

    def __init__(self, path: Path, purpose: str) -> None:
        self.path, self.purpose = Path(path), purpose
        self.holder = ""  # "<pid> <purpose>" of the process that held it when acquire last found it taken
        self._fd: int | None = None

    def acquire(self, wait: Callable[[str], object] | None = None, cancelled: Callable[[], bool] | None = None) -> bool:
        """Take the lock. If another process holds it: False at once, or, with `wait`, call
        wait(holder) and block until it is free. FileNotFoundError if the file's folder is gone.
        With `cancelled`, the wait looks every POLL_S whether to give up and raises WaitCancelled if so
        (a run asked to stop while another process builds the cache it needs)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
                if wait is None:
                    os.close(fd)
                    return False
                wait(self.holder)
                _wait_for(fd, cancelled)
            if not _same_file(fd, self.path):  # its folder was removed or renamed while we waited
                raise FileNotFoundError(2, "lock file removed", str(self.path))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.purpose}".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _wait_for(fd: int, cancelled: Callable[[], bool] | None) -> None:
    if cancelled is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if cancelled():
                raise WaitCancelled from None
            time.sleep(POLL_S)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def split_holder(holder: str) -> tuple[str, str]:
    """(pid, purpose) of a holder string; purpose is "" for a file written before purposes existed."""
    pid, _, purpose = holder.partition(" ")
    return pid or "?", purpose
