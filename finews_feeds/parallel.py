"""The one way work runs on several cores: this process and a ``concurrent.futures`` pool of
forked workers take the batches in turn.

Forked workers start in milliseconds and inherit the imports, but forking is only safe while
this process runs a single thread: with others (the daemon's scheduler, web server and mail
worker) a lock held at the fork can deadlock the child. So a pool is used only when the process
is single-threaded and there are several batches; otherwise the work runs here.

This process works too, beside one worker fewer than there are cores: as fast, and a worker
fewer to hold memory (each forked worker's resident pages count again: on a cold build of
20,000 posts, three processes held 274 MB where two hold 186 MB).
Every task must be safe to run twice: if a worker dies, whatever it had is done again here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

#: Batches queued per worker.
QUEUED = 2

T = TypeVar("T")
R = TypeVar("R")


def can_fork() -> bool:
    """Whether forking a pool is safe now: this process runs one thread."""
    return hasattr(os, "fork") and threading.active_count() == 1


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run(task: Callable[[T], R], batches: Sequence[T], *, parallel: bool = True) -> Iterator[R]:
    """``task`` over ``batches``, by this process and forked workers when ``parallel``, there are
    several batches and cores, and forking is safe; here otherwise. Results come as they are
    done, in no set order."""
    count = min(cores(), len(batches))
    if not parallel or count < 2 or not can_fork():
        yield from map(task, batches)
        return
    pending = deque(batches)
    running: dict[concurrent.futures.Future[R], T] = {}
    pool = concurrent.futures.ProcessPoolExecutor(count - 1, mp_context=multiprocessing.get_context("fork"))
    try:
        while pending or running:
            # A batch queued behind each worker's, so that none runs dry while this process
            # works on its own; no more, or the workers take what this process would have done.
            while pending and len(running) < QUEUED * (count - 1):
                batch = pending.popleft()
                running[pool.submit(task, batch)] = batch
            done = [future for future in running if future.done()]
            if not done and pending:
                # Nothing to hand back: this process takes a batch. Handing back first keeps
                # it from falling behind with what the caller does with results (recording
                # them), which only it can do.
                yield task(pending.popleft())
                continue
            if not done:
                done = list(concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED).done)
            for future in done:
                batch = running.pop(future)
                try:
                    result = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    log.warning("a worker process died; doing its share here")
                    pending.extendleft([batch, *running.values()])
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    yield from map(task, list(pending))
                    pending.clear()
                    return
                yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def batched(items: Sequence[T], per_core: int = 16) -> list[Sequence[T]]:
    """``items`` cut into about ``per_core`` batches a core, so that the processes finish
    together: whoever is done takes the next batch."""
    size = max(1, -(-len(items) // max(1, cores() * per_core)))
    return [items[i : i + size] for i in range(0, len(items), size)]
