"""One writer per run directory: an OS file lock (fcntl.flock on RUN/.writer) held while a
command writes the run. A second writer is refused at once with the holder's pid; readers never
take it. The kernel drops the lock when the holder exits, however it exits (kill -9 included),
so a stale lock file never blocks anyone: only a live process holds the lock.

flock locks belong to an open file, so two writers in one process are refused like two processes.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

LOCK_FILE = ".writer"


class RunBusy(Exception):
    """Another process (or another writer in this one) is writing the run."""


class WriterLock:
    """Hold RUN/.writer exclusively until release() (or until the object or the process goes)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise RunBusy(f"run {self.root} is being written by {who}; wait for it to end (or stop it), "
                          "then try again") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Let go of the lock (idempotent). The pid stays in the file; only a held lock counts."""
        self._finalizer()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None


def holder(root: Path) -> int | None:
    """The pid of the process writing the run now, or None when nobody holds its lock."""
    path = Path(root) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        return None
    finally:
        os.close(fd)
