"""Writing a file so that a reader sees the old contents or the new, never a part: one helper for every module."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

#: Ending of the temporary files :func:`atomic_write` leaves behind only if the process dies
#: mid-write (they start with a dot, so a sweep can find them: ``.NAME.PID.tmp``).
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = False) -> bool:
    """Replace the contents of ``path`` with ``data`` through a temporary file next to it and a
    rename, unless the file already holds exactly these bytes (then nothing is written, and its
    time stamp is kept, so readers' caches stay valid). Returns whether the file was written.

    ``mode`` is set whatever the umask. ``durable``: the file and its name are on disk when this
    returns (the file and its folder synced); without it a power cut may lose the new file, but a
    reader still never sees half of it. Failures are :class:`OSError`, for the caller to turn into
    its own error naming the file; the temporary file is removed.
    """
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, temp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        sync_folder(path.parent)
    return True


def sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (the new names are on disk when this returns)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path) -> tuple[int, str]:
    """A new file next to ``path``, open for writing: ``.NAME.PID.tmp``, else (that name is left
    by a dead process with the same id, or taken by a writer in another thread) one made by
    mkstemp, which costs a third of writing a small feed, hence not the first choice."""
    temp = f"{path.parent}/.{path.name}.{os.getpid()}{TEMP_SUFFIX}"
    try:
        return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), temp
    except FileExistsError:
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
