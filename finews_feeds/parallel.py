"""The one way work runs on several cores: a process pool of ``concurrent.futures``.

Forked workers start in milliseconds and inherit the imports, but forking is only safe while
this process runs a single thread: with others (the daemon's scheduler, web server and mail
worker) a lock held at the fork can deadlock the child. So a pool is used only when the
process is single-threaded and there is enough work to pay for it; otherwise the work runs here.
Every task must be safe to run twice: if a worker dies, whatever it took is done again here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def can_fork() -> bool:
    """Whether forking a pool is safe now: this process runs one thread."""
    return hasattr(os, "fork") and threading.active_count() == 1


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run(task: Callable[[T], R], batches: Sequence[T], *, parallel: bool = True) -> Iterator[R]:
    """``task`` over ``batches``, in a pool of forked processes when ``parallel``, there are
    several batches and cores, and forking is safe; here otherwise. Results come in the order
    of ``batches``."""
    count = min(workers(), len(batches))
    if not parallel or count < 2 or not can_fork():
        yield from map(task, batches)
        return
    done = 0
    try:
        with concurrent.futures.ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork")) as pool:
            for result in pool.map(task, batches):
                done += 1
                yield result
    except concurrent.futures.process.BrokenProcessPool:
        log.warning("a worker process died; doing its share here")
        yield from map(task, batches[done:])


def batched(items: Sequence[T], count: int) -> list[Sequence[T]]:
    """``items`` cut into about ``count`` batches per worker, for pools whose workers finish
    together: a worker that is done takes the next batch."""
    size = max(1, -(-len(items) // max(1, workers() * count)))
    return [items[i : i + size] for i in range(0, len(items), size)]
