"""Atomic file writes: a reader sees the old file or the whole new one, never a partial write.

Files get the permissions a plain ``open(path, "w")`` would give them (``0o666`` less the process umask), so a
shared folder (a lab's waveform cache, a results folder) stays readable to the group as its umask says;
``tempfile.mkstemp`` alone would leave every file ``0o600``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where Linux allows (``/proc``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` creates files with."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; rename it onto ``path`` when the block succeeds.

    The data is flushed and fsync'ed before the rename, so ``path`` never names a truncated file, even after a
    crash or a full disk (``OSError: [Errno 28] No space left on device`` leaves ``path`` as it was). The new
    file has mode :func:`default_file_mode` (honours the umask).

    Raises:
        OSError: the folder cannot be created or written (read-only, full disk), with the path in the message;
            the temporary file is removed and ``path`` is left untouched, also when the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
