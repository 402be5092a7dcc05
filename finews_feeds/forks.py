"""Work shared with forked children: the walk, the cold parse and the feed rendering each give a
share to a child and do the rest here.

A child inherits everything (the posts, the plan: nothing is pickled over) and sends back one
piece of bytes. Work is cut into numbered pieces handed out by :class:`Tickets`: whichever
process is free takes the next, so all finish together. Forking is only safe while this
process runs a single thread: with other threads (the daemon's scheduler and web server) a lock
held at the fork can deadlock the child, so callers check :func:`can_fork` and otherwise do the
work here or in spawned workers.
"""

from __future__ import annotations

import os
import sys
import threading
from array import array
from collections.abc import Callable, Iterator


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


class Tickets:
    """The numbers ``0 .. count - 1``, each handed out once to whichever of this process and its
    forked children asks next (:meth:`take`): pieces of work go to whoever is free, so the
    processes finish together however the pieces differ in cost, and this process can do some
    other work first.

    The numbers wait in a pipe that every process reads, 4 bytes at a time (a read of a pipe is
    atomic). They are all written before any is read: at most :data:`LIMIT` of them, 4,096
    bytes, one page, the least a pipe holds."""

    LIMIT = 1024

    def __init__(self, count: int) -> None:
        if not 0 <= count <= self.LIMIT:
            raise ValueError(f"{count} tickets: at most {self.LIMIT}")
        self._read, write = os.pipe()
        try:
            data = memoryview(array("I", range(count)).tobytes())
            while data:  # a signal can cut a write short
                data = data[os.write(write, data):]
        finally:
            os.close(write)  # the readers see the end of the pipe once the numbers are taken

    def take(self) -> Iterator[int]:
        """The numbers this process gets, until none is left."""
        while True:
            data = os.read(self._read, 4)
            if len(data) < 4:
                return
            yield int.from_bytes(data, sys.byteorder)

    def close(self) -> None:
        os.close(self._read)

    @classmethod
    def per_ticket(cls, items: int, least: int = 1) -> int:
        """How many of ``items`` pieces of work to give per ticket: ``least``, or more when
        there would be more tickets than :data:`LIMIT`."""
        return max(least, -(-items // cls.LIMIT))
