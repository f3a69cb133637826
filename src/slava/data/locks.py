"""One writer per output: an exclusive ``flock`` on a lock file beside it.

Every command that appends to or resumes an output (``teach`` records,
``screen`` tables, ``train`` run directories) holds this lock for its whole
run. A second writer is refused at once with the holder's PID instead of
interleaving lines, duplicating records or deleting the first one's work. The
kernel drops the lock when the holder exits, even after ``kill -9``, so a stale
lock file never blocks a rerun; the file is left in place, because unlinking a
lock file while another process waits on it would let two writers in.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from slava.errors import SlavaError


class OutputLocked(SlavaError):
    """Another process is writing the same output."""


def lock_path_for(output: str | Path) -> Path:
    """The lock file of ``output``: ``.<name>.lock`` beside it (hidden, so image listings skip it)."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


class OutputLock:
    """Exclusive, non-blocking lock on ``output`` for as long as it is held; a context manager."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.path = lock_path_for(self.output).absolute()
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock, or raise ``OutputLocked`` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(f"{self.output} is being written by another process (PID {holder}; lock "
                               f"{self.path.name}); wait for it to finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_output(output: str | Path) -> OutputLock:
    """Acquire and return the lock of ``output``; use as ``with lock_output(path): ...``."""
    return OutputLock(output).acquire()
