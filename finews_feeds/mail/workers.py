"""``finews-feeds digest --send --workers N``: N local worker processes share one day's send.

Each worker is a whole sender (:func:`delivery.send_day` in a process of its own, started with
``spawn``, so nothing of this process's threads or open connections is inherited): it collects the
site, claims rows from the ledger and sends them. What keeps them apart is the ledger on PostgreSQL
(rows leased ``FOR UPDATE SKIP LOCKED``, see :mod:`store`), exactly as for workers on several
machines, so a worker that dies is no special case: the others take over its rows. This process
only starts them, shows the progress from the ledger, passes a stop request on, and adds up their
reports.

SQLite keeps one sender a day (its claim is the whole day), so more than one worker is refused
there rather than started to wait for each other: asking for N and getting one would hide that the
setting does nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.engine import make_url

from ..config import Config
from ..errors import ConfigError, ErrorRecord, FinewsError
from .delivery import DeliveryReport, SendProgress, send_day
from .migrations import OPEN_STATES
from .store import Store

log = logging.getLogger(__name__)

#: How often the progress is read from the ledger while workers send.
PROGRESS_SECONDS = 0.5


def merge_reports(day: date, reports: list[DeliveryReport]) -> DeliveryReport:
    """One report for a send shared by several workers: their counts added up; the ledger's state before
    the send is the earliest any of them saw (a later worker counts the others' messages as sent before)."""
    merged = DeliveryReport(day=day)
    if not reports:
        return merged
    merged.total = max(r.total for r in reports)
    merged.open = max(r.open for r in reports)
    merged.already_sent = min(r.already_sent for r in reports)
    merged.failed_before = min(r.failed_before for r in reports)
    for r in reports:
        merged.sent += r.sent
        merged.resent += r.resent
        merged.retried += r.retried
        merged.skipped.update(r.skipped)
        merged.failed.update(r.failed)
        merged.permanent_failures += r.permanent_failures
        merged.temporary_failures += r.temporary_failures
        merged.bounced += r.bounced
        merged.stopped = merged.stopped or r.stopped
        merged.aborted = merged.aborted or r.aborted
        merged.seconds = max(merged.seconds, r.seconds)
        merged.connections += r.connections
        merged.processes += r.processes
    return merged


def check_workers(config: Config, workers: int) -> None:
    """Refuse a number of workers the database cannot share a day between."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected 1 or more")
    if workers > 1 and make_url(config.database.url).get_backend_name() != "postgresql":
        raise ConfigError(
            f"--workers {workers}: several workers need PostgreSQL; with SQLite (database.url = "
            f"{config.database.url!r}) one process sends a day's digest",
            hint="run without --workers, or keep the subscribers in PostgreSQL to send from several processes")


def _worker(config: Config, day: date, results: Any, cores: int) -> None:
    """One worker process: send, then put its report (or what stopped it) on ``results``."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        results.put(send_day(config, day, lambda: datetime.now(UTC), stop, cores=cores))
    except FinewsError as exc:
        results.put(ErrorRecord.of(exc))


def send_day_workers(
    config: Config,
    day: date,
    workers: int,
    now: Callable[[], datetime],
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    tracker: SendProgress | None = None,
) -> DeliveryReport:
    """Send ``day``'s digest from ``workers`` processes (from this one when 1); their reports added up.
    ``tracker`` gets the figures of the send (with several workers: read from the ledger).

    Raises the first worker's error (a :class:`FinewsError` with its message, hint and exit code)
    once all have ended; a worker killed by a signal is reported in ``aborted`` unless the others
    finished its share.
    """
    check_workers(config, workers)
    if workers == 1:
        return send_day(config, day, now, stop, progress, tracker=tracker)
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    # The workers share this machine's cores: each starts sender processes (smtp.processes) on its share.
    cores = max(1, (os.cpu_count() or 1) // workers)
    procs = [context.Process(target=_worker, args=(config, day, results, cores), name=f"finews-worker-{n + 1}")
             for n in range(workers)]
    for proc in procs:
        proc.start()
    reports: list[DeliveryReport] = []
    failures: list[ErrorRecord] = []
    forwarded = False
    start_open: int | None = None
    with Store.open(config.database.url) as store:
        while True:
            try:
                item = results.get(timeout=PROGRESS_SECONDS)
                (reports if isinstance(item, DeliveryReport) else failures).append(item)
                continue
            except queue.Empty:
                pass
            if stop is not None and stop.is_set() and not forwarded:
                for proc in procs:
                    if proc.pid is not None and proc.is_alive():
                        proc.terminate()  # SIGTERM: the worker ends after the messages in flight
                forwarded = True
            if progress is not None:
                counts = store.ledger_counts(day)
                still = sum(counts[state] for state in OPEN_STATES)
                if start_open is None and any(counts.values()):
                    start_open = still
                    if tracker is not None:
                        tracker.begin(start_open)
                if start_open is not None:
                    if tracker is not None:
                        tracker.update(max(0, start_open - still), max(0, start_open - still))
                    progress(max(0, start_open - still), start_open)
            if not any(proc.is_alive() for proc in procs):
                break
        while True:
            try:
                item = results.get(timeout=0.1)
            except queue.Empty:
                break
            (reports if isinstance(item, DeliveryReport) else failures).append(item)
        for proc in procs:
            proc.join()
        left = sum(store.ledger_counts(day)[state] for state in ("pending", "sending"))
    report = merge_reports(day, reports)
    died = [f"{proc.name} ended by signal {-proc.exitcode}" for proc in procs
            if proc.exitcode is not None and proc.exitcode < 0]
    for line in died:
        log.error("%s", line, extra={"day": day.isoformat()})
    if failures:
        raise failures[0].restore()
    if died and left and not report.stopped:
        report.aborted = f"{', '.join(died)}; {left} messages not sent yet"
    report.seconds = time.monotonic() - started
    return report
