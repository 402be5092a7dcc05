"""The long-running service: scheduler, file watcher and web app in one process.

Threads: the main thread only waits for a signal; APScheduler's pool runs the rebuild and the
digest; uvicorn serves the web app from its own thread (so it installs no signal handlers of its
own: it would re-raise SIGTERM after its shutdown and the process would die by the signal
instead of exiting 0); watchdog's observer asks for a rebuild when a post file changes; the
outbox worker (:mod:`outbox`) acts on subscribe forms and sends confirmation mail.

On SIGTERM or SIGINT: the scheduler stops taking work, the delivery stop event is set so a send
in progress finishes the message in flight, records it and returns (the outbox worker too), the
web server closes, and the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path, PurePath
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..clock import iso, utc_now
from ..config import Config
from ..errors import ConfigError, FinewsError
from ..feeds.build import BuildReport, run_build
from ..feeds.hub import HubQueue, HubSettings, HubWorker
from ..mail.confirmation import ConfirmationRenderer
from ..mail.delivery import SendProgress, send_digest
from ..mail.digest import DigestRenderer, covered_day, publish_archive, write_preview
from ..mail.mailbox import poll_mailbox
from ..mail.mailer import transport_from_config
from ..mail.outbox import OutboxWorker
from ..mail.store import Store
from ..mail.tokens import secret_of
from ..models import Site
from ..site.collector import Collection, collect_site
from ..site.jekyll import resolve_site
from ..site.walk import entered, walked
from .scheduler import (
    add_bounces_job,
    create_scheduler,
    digest_zone,
    request_rebuild,
    retry_time,
    schedule_retry,
    scheduler_status,
)
from .web import create_app, default_categories

log = logging.getLogger(__name__)

#: Seconds the daemon gives a digest send to finish the message in flight after a stop signal.
STOP_TIMEOUT = 10.0
#: Seconds it waits for a feed build in progress before leaving it behind.
BUILD_WAIT = 3.0
#: Seconds between a file event and the rebuild it asks for (a burst of events gives one rebuild).
#: An editor's save (a write, a rename) takes milliseconds; a longer burst costs one more
#: rebuild at most (a request during a build makes it go round again), while every second
#: here is a second before readers see a new post.
WATCH_DEBOUNCE = 0.25
#: Seconds before a digest run that could not reach everyone is tried again (doubling each time).
RETRY_FIRST = 300.0
#: File watcher events that mean the content changed (opening a file to read it is not one).
CHANGE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})


@dataclass
class DaemonStatus:
    """The last build and send results and the build in progress, shared between the jobs and /healthz."""

    started_at: datetime
    last_build: dict[str, Any] | None = None
    last_send: dict[str, Any] | None = None
    #: The last read of the bounces mailbox (None until one ran, or when none is configured).
    last_bounces: dict[str, Any] | None = None
    builds: int = 0
    #: The build in progress: when it started (for the report) and its start on the monotonic clock.
    build_started_at: datetime | None = None
    build_started_mono: float | None = None
    #: The digest send in progress, if any (its figures in /healthz as ``send_running``).
    sending: SendProgress | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def build_started(self, at: datetime, mono: float) -> None:
        with self._lock:
            self.build_started_at, self.build_started_mono = at, mono

    def build_ended(self) -> None:
        with self._lock:
            self.build_started_at = self.build_started_mono = None

    def record_build(self, result: dict[str, Any]) -> None:
        with self._lock:
            self.last_build = result
            self.builds += 1

    def record_send(self, result: dict[str, Any]) -> None:
        with self._lock:
            self.last_send = result

    def record_bounces(self, result: dict[str, Any]) -> None:
        with self._lock:
            self.last_bounces = result

    def send_started(self, progress: SendProgress | None) -> None:
        with self._lock:
            self.sending = progress

    def snapshot(self, mono: float) -> dict[str, Any]:
        """The status at ``mono`` (the monotonic clock's now)."""
        with self._lock:
            running = None
            if self.build_started_at is not None and self.build_started_mono is not None:
                running = {"started_at": iso(self.build_started_at),
                           "seconds": round(mono - self.build_started_mono, 3)}
            sending = self.sending
            return {
                "started_at": iso(self.started_at),
                "builds": self.builds,
                "build_running": running,
                "send_running": sending.snapshot() if sending is not None else None,
                "last_build": self.last_build,
                "last_send": self.last_send,
                "last_bounces": self.last_bounces,
            }


def build_problems(snapshot: dict[str, Any], stuck_after: float) -> list[str]:
    """What is wrong with the feeds in a :meth:`DaemonStatus.snapshot`: a build running longer than
    ``stuck_after`` seconds (0: no limit), or a last build that failed (until one succeeds)."""
    problems: list[str] = []
    running = snapshot["build_running"]
    if running is not None and stuck_after > 0 and running["seconds"] > stuck_after:
        problems.append(f"a feed build has been running for {running['seconds']:.0f} s "
                        f"(longer than scheduler.build_stuck_after_seconds = {stuck_after:g})")
    last = snapshot["last_build"]
    if last is not None and not last.get("ok", True):
        problems.append(f"the last feed build failed: {last.get('error', 'unknown error')}")
    return problems


class Busy:
    """Counts the runs of a job in progress, so a stop can wait for them to end."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


class Rebuilder:
    """Runs feed builds one at a time, and never loses a request that arrives during one.

    The interval job, the start-up build and the file watcher all call :meth:`request`; a
    request made while a build runs makes that build go round once more, so a post saved in
    the middle of a build still reaches the feeds.
    """

    def __init__(self, build: Callable[[], object], stop: threading.Event) -> None:
        self._build = build
        self._stop = stop
        self._lock = threading.Lock()
        self._again = threading.Event()
        self._busy = Busy()

    def wait_idle(self, timeout: float) -> bool:
        return self._busy.wait_idle(timeout)

    def mark(self) -> None:
        self._again.set()

    def request(self) -> None:
        self._again.set()
        while self._again.is_set() and not self._stop.is_set():
            if not self._lock.acquire(blocking=False):
                return  # the build in progress sees the flag and goes round again
            try:
                with self._busy:
                    self._again.clear()
                    self._build()
            finally:
                self._lock.release()


def build_result(report: BuildReport, now: datetime) -> dict[str, Any]:
    return {
        "ok": True,
        "finished_at": iso(now),
        "posts": report.posts,
        "feeds": report.feeds,
        "feeds_written": report.feeds_written,
        "feeds_removed": report.feeds_removed,
        "rejected_files": len(report.rejected),
        "seconds": round(report.seconds, 3),
        "incremental": report.incremental,  # only the feeds that changed were planned
        "announced": report.announced,  # feed URLs queued for the WebSub hub
    }


def send_result(report: Any, now: datetime) -> dict[str, Any]:
    return {
        "ok": bool(report.ok),
        "day": report.day.isoformat(),
        "finished_at": iso(now),
        "sent": report.sent,
        "already_sent": report.already_sent,
        "resent": report.resent,
        "retried": report.retried,
        "skipped": sum(report.skipped.values()),
        "failed": sum(report.failed.values()),
        "stopped": report.stopped,
        "aborted": report.aborted,
        "busy": report.busy,
        "failed_by_reason": dict(report.failed),
        "seconds": round(report.seconds, 3),
        "rate": round(report.rate, 1),
        "connections": report.connections,
        "processes": report.processes,
    }


def is_post_path(site: Site, path: str) -> bool:
    """Whether a file event at ``path`` can change the feeds: a file the walk would list as a
    post (the walk's rules, :func:`~finews_feeds.site.walk.walked`), or the site's ``_config.yml``."""
    try:
        rel = PurePath(os.path.relpath(path, site.source)).as_posix()
    except ValueError:
        return False
    return rel == "_config.yml" or (not rel.startswith("../") and walked(site, rel))


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is a clear error before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and
    # without it a response's last segment waits ~40 ms for the client's delayed ACK (measured:
    # 45 ms instead of 2 ms for a 20 KB gzipped feed). Accepted sockets take both from this one.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="set web.host / web.port (or FINEWS_WEB_PORT) to a free address",
        ) from None
    return sock


class Daemon:
    """One daemon process; :meth:`run` blocks until a stop signal and returns the exit code."""

    def __init__(
        self,
        config: Config,
        *,
        digest_in: float | None = None,
        digest_day: date | None = None,
        retry_first: float = RETRY_FIRST,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        secret_of(config)  # links in mails and pages need it: fail at start, not at 07:30
        self.config = config
        self.clock = clock
        #: How long a build has run (for /healthz), unaffected by changes of the wall clock.
        self.monotonic = monotonic
        self.digest_day = digest_day
        self.digest_in = digest_in
        self.retry_first = retry_first
        self.site = resolve_site(config)
        # The mails' templates load now: a missing or broken one stops the start, not the 07:30 run.
        DigestRenderer(config, self.site, lambda _post: "")
        ConfirmationRenderer(config, self.site)
        self.zone: tzinfo = digest_zone(config, self.site.timezone)
        self.stop = threading.Event()  # the delivery stop event, and "take no new work"
        self.shutdown = threading.Event()
        self.status = DaemonStatus(started_at=clock())
        self.rebuilder = Rebuilder(self._build_once, self.stop)
        self.digests = Busy()
        self._categories: list[tuple[str, str]] = []
        self._tags: frozenset[str] = frozenset()
        self._categories_lock = threading.Lock()
        # What the file watcher reported since the last build began: post paths, and whether the
        # next build must walk the site all the same.
        self._touched: set[str] = set()
        self._walk_next = False
        self._touched_lock = threading.Lock()
        # WebSub announcements queued by builds (and left by the last run) go out from a thread
        # of their own, so neither a build nor the web server waits on the hub.
        self.hub = (HubWorker(HubQueue(config.feeds.output), HubSettings.from_config(config.feeds))
                    if config.feeds.websub_hub else None)

    def collect(self) -> Collection:
        # Two readers of one cold site (the start-up build and a caught-up digest) take turns:
        # the post cache's lock makes the second wait, and then read the warm cache.
        return collect_site(self.config, self.clock())

    # -- the watcher's findings ---------------------------------------------------------------

    def note_file_event(self, paths: list[str]) -> bool:
        """Record the post files of a file event for the next build; whether it concerns posts."""
        posts = [path for path in paths if is_post_path(self.site, path)]
        if not posts:
            return False
        rels = [PurePath(os.path.relpath(path, self.site.source)).as_posix() for path in posts]
        with self._touched_lock:
            if "_config.yml" in rels:
                self._walk_next = True
            self._touched.update(rels)
        return True

    def note_folder_event(self, root: Path, paths: list[str]) -> bool:
        """A folder created, moved or deleted: whether the walk goes into it (the next build then
        walks the site instead of trusting the paths reported)."""
        rels = [os.path.relpath(path, root) for path in paths]
        if not any(rel != ".." and not rel.startswith(".." + os.sep) and entered(self.site, PurePath(rel).as_posix())
                   for rel in rels):
            return False
        with self._touched_lock:
            self._walk_next = True
        return True

    def _take_touched(self) -> frozenset[str] | None:
        """The post paths reported since the last build, or None when it must walk the site:
        nothing reported (the interval job, a request from outside the watcher: the walk is the
        safety net for anything the watcher missed), a folder moved, the site's config changed,
        or the build before failed."""
        with self._touched_lock:
            touched = None if self._walk_next or not self._touched else frozenset(self._touched)
            self._touched.clear()
            self._walk_next = False
        return touched

    # -- jobs ----------------------------------------------------------------------------------

    def _build_once(self) -> None:
        self.status.build_started(self.clock(), self.monotonic())
        try:
            self._build()
        finally:
            self.status.build_ended()

    def _build(self) -> None:
        touched = self._take_touched()
        try:
            # When the watcher reported the paths, only those are looked at (no walk); the
            # build plans the feeds they reach. Worker processes are never forked here, next
            # to the daemon's threads (see finews_feeds.parallel).
            report = run_build(self.config, now=self.clock(), touched=touched)
        except FinewsError as exc:
            self._walk_after_failure()
            log.error("feed build failed: %s", exc.message)
            self.status.record_build({"ok": False, "finished_at": iso(self.clock()), "error": exc.message})
            return None
        except Exception as exc:
            self._walk_after_failure()
            log.exception("feed build failed")
            self.status.record_build({"ok": False, "finished_at": iso(self.clock()), "error": repr(exc)})
            return None
        self.status.record_build(build_result(report, self.clock()))
        self._remember_categories(report.categories, report.tags)
        if self.hub is not None and report.announced:
            self.hub.wake()  # the build queued them; the worker's thread sends

    def _walk_after_failure(self) -> None:
        # The paths this build took are not in the cache: the next one walks the site.
        with self._touched_lock:
            self._walk_next = True

    def _remember_categories(self, categories: Sequence[str], tags: Sequence[str]) -> None:
        """The subscribe form's choices: the site's categories (and the configured ones) and tags
        at the last build."""
        names = {*categories, *self.config.categories}
        ordered = sorted(names, key=lambda n: (self.config.category_order(n), n))
        with self._categories_lock:
            self._categories = [(name, self.site.category_title(name)) for name in ordered]
            self._tags = frozenset(tags)

    def categories(self) -> list[tuple[str, str]]:
        """Choices of the subscribe form: every category of the site, in the configured order."""
        with self._categories_lock:
            if self._categories:
                return list(self._categories)
        return default_categories(self.config)

    def tags(self) -> frozenset[str]:
        """Tags a subscriber may choose: those of the site's posts at the last build."""
        with self._categories_lock:
            return self._tags

    def digest(self, fired: datetime, attempt: int = 0) -> None:
        with self.digests:
            self._digest(fired, attempt)

    def _digest(self, fired: datetime, attempt: int) -> None:
        """The digest job: the day the run at ``fired`` covers, its web copy, then the sends.

        A run that could not reach everyone (the SMTP server down, login refused, 4xx replies past
        the retries) is tried again later the same day, within the misfire grace; the ledger
        makes each attempt send only what is still open.
        """
        if self.stop.is_set():
            return
        zone = self.zone if isinstance(self.zone, ZoneInfo) else ZoneInfo(str(self.zone))
        day = self.digest_day or covered_day(fired, zone, self.config.digest.covers)
        log.info("digest run for %s (scheduled %s)", day.isoformat(), iso(fired),
                 extra={"day": day.isoformat(), "scheduled": iso(fired), "attempt": attempt + 1})
        try:
            collection = self.collect()
            try:
                try:
                    write_preview(self.config, day, now=self.clock(), collect=lambda _config: collection)
                except (FinewsError, OSError) as exc:  # the archive page is a nicety; the mail is not
                    log.error("web copy of the %s digest not written: %s", day, exc, extra={"day": day.isoformat()})
                tracker = SendProgress(day)
                self.status.send_started(tracker)
                try:
                    report = send_digest(
                        self.config, self.store, lambda: transport_from_config(self.config), day, collection,
                        self.clock, self.stop, tracker=tracker, cores=os.cpu_count() or 1,
                    )
                finally:
                    self.status.send_started(None)
            finally:
                collection.close()
        except FinewsError as exc:
            log.error("digest %s not sent: %s", day, exc.message, extra={"day": day.isoformat()})
            self.status.record_send({"ok": False, "day": day.isoformat(), "finished_at": iso(self.clock()),
                                     "error": exc.message, "attempt": attempt + 1})
            self._retry(fired, attempt + 1)
            return
        except Exception as exc:
            log.exception("digest %s failed", day, extra={"day": day.isoformat()})
            self.status.record_send({"ok": False, "day": day.isoformat(), "finished_at": iso(self.clock()),
                                     "error": repr(exc), "attempt": attempt + 1})
            self._retry(fired, attempt + 1)
            return
        # send_digest logged the counts; said here is only what ends a run early.
        if report.stopped:
            log.warning("digest %s: stopped before the end; the next run sends the rest", day,
                        extra={"day": day.isoformat()})
        if report.aborted:
            log.error("digest %s: gave up: %s; trying again later", day, report.aborted, extra={"day": day.isoformat()})
        if report.busy:
            log.info("digest %s: another process is sending it (%s)", day, report.busy, extra={"day": day.isoformat()})
        self.status.record_send({**send_result(report, self.clock()), "attempt": attempt + 1})
        if (report.aborted or report.temporary_failures) and not report.stopped:
            self._retry(fired, attempt + 1)

    def poll_bounces(self) -> None:
        """The mailbox job: bounces, complaints and mailed unsubscribe requests (docs/bounces.md). A
        failure is logged and shown in /healthz; the next poll reads what this one left."""
        if self.stop.is_set():
            return
        try:
            result = poll_mailbox(self.config, self.store, now=self.clock, stop=self.stop)
        except FinewsError as exc:
            log.error("%s", exc.message)
            self.status.record_bounces({"ok": False, "finished_at": iso(self.clock()), "error": exc.message})
            return
        self.status.record_bounces({"ok": True, "finished_at": iso(self.clock()), "read": result.read,
                                    "skipped": result.skipped, "outcomes": dict(result.outcomes)})

    def _retry(self, fired: datetime, attempt: int) -> None:
        if self.stop.is_set():
            return
        grace = timedelta(minutes=self.config.scheduler.misfire_grace_minutes)
        at = retry_time(fired, self.clock(), attempt, self.retry_first, grace)
        if at is None:
            log.error("digest run of %s: giving up after %d attempts (past scheduler.misfire_grace_minutes)",
                      iso(fired), attempt, extra={"scheduled": iso(fired), "attempts": attempt})
            return
        log.info("digest run of %s: trying again at %s", iso(fired), iso(at),
                 extra={"scheduled": iso(fired), "retry_at": iso(at), "attempt": attempt + 1})
        schedule_retry(self.scheduler, self.digest, fired, at, attempt)

    def health(self) -> dict[str, Any]:
        """The body of /healthz: ``ok`` (false gives 503) unless ``problems`` names something wrong."""
        report = self.status.snapshot(self.monotonic())
        report["scheduler"] = scheduler_status(self.scheduler)
        problems: list[str] = []
        if report["scheduler"]["state"] != "running":
            problems.append(f"the scheduler is {report['scheduler']['state']}")
        if self.stop.is_set():
            problems.append("the daemon is stopping")
        problems += build_problems(report, self.config.scheduler.build_stuck_after_seconds)
        report["problems"] = problems
        report["ok"] = not problems
        return report

    # -- running -------------------------------------------------------------------------------

    def _watch(self) -> Any:
        root = Path(self.site.source).resolve()
        daemon = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in CHANGE_EVENTS or daemon.stop.is_set():
                    return
                paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "") or "") if p]
                if event.is_directory:
                    # A folder of posts created, moved or deleted: its files need not each
                    # report; the next build walks the site.
                    if event.event_type == "modified" or not daemon.note_folder_event(root, paths):
                        return
                elif not daemon.note_file_event(paths):
                    return
                log.debug("file event %s %s: rebuild", event.event_type, event.src_path)
                daemon.rebuilder.mark()
                when = daemon.clock() + timedelta(seconds=WATCH_DEBOUNCE)
                request_rebuild(daemon.scheduler, daemon.rebuilder.request, when)

        observer = Observer()
        observer.daemon = True
        observer.schedule(Handler(), str(root), recursive=True)
        observer.start()
        log.info("watching %s for post changes", root)
        return observer

    def run(self) -> int:
        config = self.config
        # One line per job added or removed (each file event replaces the rebuild job) is noise.
        logging.getLogger("apscheduler.scheduler").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        sock = bind_socket(config.web.host, config.web.port)
        self.store = Store.open(config.database.url)
        digest_at = self.clock() + timedelta(seconds=self.digest_in) if self.digest_in is not None else None
        self.scheduler = create_scheduler(
            config, self.zone, rebuild=self.rebuilder.request, digest=self.digest, clock=self.clock, digest_at=digest_at,
        )
        # The scheduler runs on the real clock, whatever the daemon's clock says (tests set it).
        add_bounces_job(self.scheduler, config, self.poll_bounces, utc_now())
        # Subscribe forms and confirmation mail go through the outbox, worked in a thread of its
        # own, so no web request ever waits on SMTP (the pool of the web server stays free).
        self.outbox = OutboxWorker(config, self.store, lambda: transport_from_config(config), clock=self.clock,
                                   site=self.site)
        app = create_app(config, store=self.store, wake_outbox=self.outbox.wake, health=self.health,
                         categories=self.categories, tags=self.tags, clock=self.clock, zone=self.zone)
        server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, lifespan="off", server_header=False, access_log=False,
            timeout_graceful_shutdown=3, proxy_headers=True,
        ))
        server_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)

        signals: list[int] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signals:
                # Asked twice: the operator wants out now.
                os._exit(1)
            signals.append(signum)
            self.shutdown.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        observer = None
        try:
            try:
                publish_archive(config, self.site)
            except OSError as exc:  # the archive is a nicety: the feeds and the mail go on
                log.error("digest archive not written: %s", exc)
            self.scheduler.start()
            self.outbox.start()
            if self.hub is not None:
                self.hub.start()
            server_thread.start()
            if config.scheduler.watch:
                try:
                    observer = self._watch()
                except OSError as exc:  # e.g. the inotify watch limit: the interval rebuild still runs
                    log.error("cannot watch %s for changes (%s); rebuilding every %d minutes only",
                              self.site.source, exc, config.scheduler.rebuild_every_minutes)
            host, port = sock.getsockname()[:2]
            log.info("daemon started: web on http://%s:%s, digest %s", host if ":" not in host else f"[{host}]", port,
                     self.scheduler.get_job("digest").trigger)
            while not self.shutdown.wait(0.5):
                if not server_thread.is_alive():
                    log.error("the web server stopped; exiting")
                    self.shutdown.set()
                    self.stop.set()
                    return_code = 1
                    break
            else:
                return_code = 0
            if signals:
                log.info("received %s: finishing the work in progress", signal.Signals(signals[0]).name)
            return self._stop(server, server_thread, observer, return_code)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, server: Any, server_thread: threading.Thread, observer: Any, return_code: int) -> int:
        self.stop.set()
        self.outbox.stop()
        if self.hub is not None:
            # An announcement in flight finishes (at most feeds.websub_timeout); what is left
            # stays queued for the next start.
            self.hub.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        if observer is not None:
            observer.stop()
        server.should_exit = True
        # No new runs; the ones in progress go on in the pool's threads.
        self.scheduler.shutdown(wait=False)
        # A send ends after the message in flight (the stop event): wait for that.
        if not self.digests.wait_idle(max(0.0, deadline - time.monotonic())):
            log.error("the digest send did not stop within %.0f s; exiting anyway", STOP_TIMEOUT)
            self._exit_now(1)
        # A feed build cannot be interrupted, but it writes each file atomically and the next
        # start builds again, so a long one (a cold build of a large site) is left behind.
        if not self.rebuilder.wait_idle(min(BUILD_WAIT, max(0.0, deadline - time.monotonic()))):
            log.warning("leaving the feed build in progress; the next start rebuilds")
            self._exit_now(return_code)
        server_thread.join(max(0.0, deadline - time.monotonic()))
        if not self.outbox.join(max(0.0, deadline - time.monotonic())):
            log.warning("leaving the outbox mail in flight; it is sent again after the restart")
            self._exit_now(return_code)
        if observer is not None:
            observer.join(max(0.0, deadline - time.monotonic()))
        self.store.close()
        log.info("daemon stopped")
        return return_code

    def _exit_now(self, code: int) -> None:
        """Exit without waiting for the pool's threads (the interpreter would join them), and
        without leaving the build's worker processes behind as orphans."""
        try:
            for child in multiprocessing.active_children():
                child.terminate()
            for child in multiprocessing.active_children():
                child.join(1.0)
            self.store.close()
        finally:
            log.info("daemon stopped")
            logging.shutdown()
            os._exit(code)


def run_daemon(config: Config, *, digest_in: float | None = None, digest_day: date | None = None,
               retry_first: float = RETRY_FIRST) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code (0 after a clean stop)."""
    return Daemon(config, digest_in=digest_in, digest_day=digest_day, retry_first=retry_first).run()
