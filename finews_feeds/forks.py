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

import logging
import marshal
import os
import sys
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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


def share(batches: Sequence[Sequence[T]], children: int, here: Callable[[T], R], there: Callable[[], Callable[[T], R]],
          pack: Callable[[list[R]], bytes], unpack: Callable[[bytes], list[R]], on_failure: Callable[[], None],
          first: Callable[[], None] | None = None, pack_every: int = 1000) -> Iterator[R]:
    """Every item of ``batches`` done, by this process (``here``) and ``children`` forked
    children, each taking the next batch when it is free (:class:`Tickets`); results in any
    order. A child makes its worker with ``there()`` (in the child: its own connections, say)
    and packs its results with ``pack`` every ``pack_every`` items, as it goes, so that once
    the batches run out the parent waits for the last few only; the parent reads them with
    ``unpack``. ``first`` runs here while the children start. A child that fails is reported
    with ``on_failure`` and the batches it took are done here."""
    tickets = Tickets(len(batches))

    def child() -> bytes:
        work = there()
        numbers: list[int] = []
        packed: list[bytes] = []
        results: list[R] = []
        for number in tickets.take():
            numbers.append(number)
            results.extend(map(work, batches[number]))
            if len(results) >= pack_every:
                packed.append(pack(results))
                results = []
        packed.append(pack(results))
        return marshal.dumps((numbers, packed))

    started: list[Child | None] = []
    try:
        started = [start(child) for _ in range(children)]
        if first is not None:
            first()
        done: set[int] = set()
        for number in tickets.take():
            done.add(number)
            yield from map(here, batches[number])
        while started:
            theirs = _results_of(started.pop(0), unpack)
            if theirs is None:
                on_failure()
                continue
            done.update(theirs[0])
            yield from theirs[1]
        for number in range(len(batches)):
            if number not in done:  # taken by a child that failed
                yield from map(here, batches[number])
    finally:
        tickets.close()
        for left in started:  # only when the caller stopped early
            if left is not None:
                left.abandon()


def _results_of(child: Child | None, unpack: Callable[[bytes], list[R]]) -> tuple[list[int], list[R]] | None:
    """The batches a child took and what it made of them; None when it failed."""
    data = child.result() if child is not None else None
    if data is None:
        return None
    try:
        numbers, packed = marshal.loads(data)
        return [int(number) for number in numbers], [result for part in packed for result in unpack(part)]
    except (ValueError, EOFError, TypeError, IndexError) as exc:
        log.warning("unreadable results from a child process (%s)", exc)
        return None
