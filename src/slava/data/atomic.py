"""Files replaced whole or not at all: write beside the target, fsync, rename over it.

Every output a long job rewrites (checkpoint pointers, summaries, screening
tables, a records file with a half-written image dropped) goes through
``write_atomic``, so a kill or a full disk leaves the old file or the new
one, never a mix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Replace ``path`` with what ``write(tmp)`` puts in a temporary file beside it.

    The temporary file is fsynced, renamed over ``path`` and the directory
    fsynced; on any error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never a mix."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    write_atomic(path, lambda tmp: tmp.write_bytes(data))
