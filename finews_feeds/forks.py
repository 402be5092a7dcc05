"""Work shared with forked children: the walk, the cold parse and the feed rendering each give a
share to a child and do the rest here.

A child inherits everything (the posts, the plan: nothing is pickled over) and sends back one
piece of bytes. Forking is only safe while this process runs a single thread: with other
threads (the daemon's scheduler and web server) a lock held at the fork can deadlock the child,
so callers check :func:`can_fork` and otherwise do the work here or in spawned workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def can_fork() -> bool:
    """Whether :func:`start` may fork now."""
    return hasattr(os, "fork") and threading.active_count() == 1


class Child:
    """A forked child computing some bytes; :meth:`result` waits for them."""

    def __init__(self, pid: int, read_end: int) -> None:
        self.pid = pid
        self.read_end = read_end
        self.done = False

    def result(self) -> bytes | None:
        """The child's bytes, or None when it failed (the caller then does its share itself)."""
        self.done = True
        with os.fdopen(self.read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        return data if status == 0 and data else None

    def abandon(self) -> None:
        """Reap the child without its result (the caller stopped early)."""
        if not self.done:
            self.done = True
            os.close(self.read_end)
            os.waitpid(self.pid, 0)


def start(work: Callable[[], bytes]) -> Child | None:
    """Run ``work`` in a forked child; None when forking failed (do the work here then)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # pragma: no cover - the child; coverage does not follow it
        code = 1
        try:
            os.close(read_end)
            data = work()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            code = 0
        finally:
            # No clean-up of what belongs to the parent (its SQLite connections, its files).
            os._exit(code)
    os.close(write_end)
    return Child(pid, read_end)
