"""WebSub push: telling the hub (``feeds.websub_hub``) which feeds changed, so it tells their
subscribers at once instead of them polling.

W3C WebSub (2018) leaves how a publisher informs its hub unspecified (section 6); every public
hub (Google's pubsubhubbub.appspot.com, Superfeedr, websub.flus.io, Switchboard) takes a form
POST ``hub.mode=publish&hub.url=<topic>``, answers 2xx (204) and fetches the topic itself. Some
take several ``hub.url`` values in one POST (Google's hub does); ``feeds.websub_batch`` says how
many to send at once (1 by default: every hub takes that). The topic is the feed's own URL, as
its ``rel="self"`` link gives it.

Announcements go through a durable queue, ``.finews-websub/queue.json`` in the output folder, written
atomically (:func:`finews_feeds.files.atomic_write`, synced) under a lock of its own:

- the build adds the URLs of the feed files it wrote (:func:`queue_written`), inside the build's
  lock, before its manifest, so a build that wrote a feed also queued its announcement; the CLI
  build has no database, and the queue must live where both the CLI and the daemon see it, so a
  file next to the manifest rather than the store's outbox;
- senders take what is due, POST it with no lock held, and then settle each URL: sent, retried
  later (a connection error, a timeout, 408, 429 or 5xx; the wait doubles from
  ``feeds.websub_retry_backoff`` up to an hour, and the URL stays queued however long the hub is
  down: at most one entry per feed file), or dropped when the hub refuses it for good (another
  4xx: logged with the status). A URL queued again while it was being sent keeps its newer
  entry (a sequence number tells them apart), so the hub is told after the newest change;
- the daemon's worker thread (:class:`HubWorker`) sends after each build and whenever a retry
  comes due, and at start whatever a stopped daemon left; ``finews-feeds build`` sends for at
  most ``feeds.websub_build_wait`` seconds and leaves the rest queued with a warning, for the
  daemon or ``finews-feeds websub``.

The pure part (queue entries, batches, request bodies, outcomes) is separate from the file and
the network (:class:`HubQueue`, :func:`post`), which tests replace or run for real against a hub
they start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from urllib.parse import urlencode

from ..config import FeedsConfig
from ..files import atomic_write
from .plan import FEED_FOLDERS, FILE_NAMES
from .slugs import join_url

#: The queue, relative to the output folder: in a folder of its own, as the build sweeps the
#: output folder's temporary files when it takes its lock (a queue being rewritten by the
#: daemon's worker at that moment would lose its new version); a dot-folder, never served.
QUEUE = ".finews-websub/queue.json"
QUEUE_LOCK = ".finews-websub/queue.lock"
QUEUE_VERSION = 1
#: The longest wait between two tries of one announcement.
MAX_BACKOFF = 3600.0
USER_AGENT = "finews-feeds (WebSub publisher)"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pure


@dataclass(frozen=True, slots=True)
class Pending:
    """One feed URL to announce."""

    url: str
    seq: int  #: bumped each time the URL is queued again
    queued: float  #: POSIX time it was first queued (for the logs)
    due: float  #: POSIX time of its next try
    attempts: int = 0  #: tries that failed


class Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"  #: try again later
    REFUSED = "refused"  #: the hub will not take it: dropped


def feed_urls(written: Iterable[str], base_url: str) -> list[str]:
    """The topic URLs of the current feed files among the relative paths ``written`` (pages,
    listings and archive documents are not topics)."""
    names = set(FILE_NAMES.values())
    urls = []
    for rel in written:
        parts = rel.split("/")
        if parts[-1] in names and (len(parts) == 1 or (len(parts) == 3 and parts[0] in FEED_FOLDERS)):
            urls.append(join_url(base_url, *parts))
    return sorted(set(urls))


def enqueue(queue: Sequence[Pending], urls: Iterable[str], now: float) -> list[Pending]:
    """``queue`` with ``urls`` due now: a URL already queued gets a new sequence number and is due
    now again (its first time is kept)."""
    by_url = {p.url: p for p in queue}
    for url in urls:
        old = by_url.get(url)
        by_url[url] = Pending(url, old.seq + 1 if old else 1, old.queued if old else now, now)
    return sorted(by_url.values(), key=lambda p: (p.due, p.url))


def due(queue: Sequence[Pending], now: float, batch: int) -> list[list[Pending]]:
    """The entries due at ``now``, in batches of at most ``batch`` URLs (oldest due first)."""
    ready = sorted((p for p in queue if p.due <= now), key=lambda p: (p.due, p.url))
    size = max(1, batch)
    return [ready[i:i + size] for i in range(0, len(ready), size)]


def next_due(queue: Sequence[Pending]) -> float | None:
    return min((p.due for p in queue), default=None)


def backoff(attempts: int, first: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``first``, doubled each time, at
    most :data:`MAX_BACKOFF`."""
    return min(first * 2.0 ** max(0, attempts - 1), MAX_BACKOFF)


def settle(queue: Sequence[Pending], tried: Sequence[Pending], outcome: Outcome, now: float,
           first_backoff: float) -> list[Pending]:
    """``queue`` after the try of ``tried`` ended with ``outcome``. An entry queued again since
    (another sequence number) is left as it is: it still has to be announced."""
    tried_seq = {p.url: p.seq for p in tried}
    out = []
    for entry in queue:
        if tried_seq.get(entry.url) != entry.seq:
            out.append(entry)
        elif outcome is Outcome.RETRY:
            attempts = entry.attempts + 1
            out.append(replace(entry, attempts=attempts, due=now + backoff(attempts, first_backoff)))
    return out


def publish_body(urls: Sequence[str]) -> bytes:
    """The form a hub takes: ``hub.mode=publish`` and one ``hub.url`` per topic."""
    return urlencode([("hub.mode", "publish"), *(("hub.url", url) for url in urls)]).encode("ascii")


def outcome_of(status: int | None) -> Outcome:
    """What an answer means: 2xx sent; no answer, 408, 429 or 5xx: try again; other: refused."""
    if status is not None and 200 <= status < 300:
        return Outcome.SENT
    if status is None or status in (408, 425, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.REFUSED


def encode(queue: Sequence[Pending]) -> bytes:
    entries = [{"url": p.url, "seq": p.seq, "queued": p.queued, "due": p.due, "attempts": p.attempts}
               for p in sorted(queue, key=lambda p: p.url)]
    return json.dumps({"version": QUEUE_VERSION, "pending": entries}, ensure_ascii=False, indent=1).encode("utf-8")


def decode(raw: bytes) -> list[Pending] | None:
    """The entries of a queue file; None when it cannot be read as one."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != QUEUE_VERSION:
            return None
        return [Pending(str(e["url"]), int(e["seq"]), float(e["queued"]), float(e["due"]), int(e["attempts"]))
                for e in data["pending"]]
    except (ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- the queue file


class HubQueue:
    """The queue file of the output folder ``folder``; each change is a read-modify-write under
    an exclusive lock (builds, the daemon's worker and ``finews-feeds websub`` may share it)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / QUEUE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / QUEUE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[Pending]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        entries = decode(raw)
        if entries is None:
            # Losing a damaged queue loses announcements, not feeds: the hub's subscribers
            # still poll. Say so once, and start a new one.
            log.warning("%s: unreadable WebSub queue; starting a new one", self.path)
            return []
        return entries

    def _write(self, entries: Sequence[Pending]) -> None:
        if entries or self.path.exists():
            atomic_write(self.path, encode(entries), durable=True)

    def pending(self) -> list[Pending]:
        with self._locked():
            return self._read()

    def add(self, urls: Sequence[str], now: float) -> None:
        if not urls:
            return
        with self._locked():
            self._write(enqueue(self._read(), urls, now))

    def settle(self, tried: Sequence[Pending], outcome: Outcome, now: float, first_backoff: float) -> None:
        with self._locked():
            self._write(settle(self._read(), tried, outcome, now, first_backoff))


def queue_written(folder: Path | str, written: Iterable[str], base_url: str, now: float) -> int:
    """Queue an announcement of every feed file among ``written`` (a build's); how many."""
    urls = feed_urls(written, base_url)
    HubQueue(folder).add(urls, now)
    return len(urls)


# --------------------------------------------------------------------------- sending

Sender = Callable[[str, Sequence[str], float], "int | None"]


def post(hub: str, urls: Sequence[str], timeout: float) -> int | None:
    """POST the announcement of ``urls`` to ``hub``; its status, or None when there was no answer."""
    request = urllib.request.Request(hub, data=publish_body(urls), method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("WebSub hub %s: %s", hub, getattr(exc, "reason", exc))
        return None


@dataclass(frozen=True, slots=True)
class HubSettings:
    """The ``[feeds]`` keys of WebSub."""

    hub: str
    batch: int = 1
    timeout: float = 10.0
    first_backoff: float = 30.0

    @classmethod
    def from_config(cls, feeds: FeedsConfig) -> HubSettings:
        return cls(feeds.websub_hub, feeds.websub_batch, feeds.websub_timeout, feeds.websub_retry_backoff)


@dataclass(slots=True)
class SendReport:
    sent: int = 0  #: URLs the hub took
    retried: int = 0  #: URLs whose try failed and that stay queued
    refused: int = 0  #: URLs the hub refused for good (dropped)
    left: int = 0  #: URLs still queued at the end


def send_due(queue: HubQueue, settings: HubSettings, now: Callable[[], float], send: Sender = post,
             stop: threading.Event | None = None) -> SendReport:
    """One pass: announce every URL due now, batch by batch, and settle each batch."""
    report = SendReport()
    for batch in due(queue.pending(), now(), settings.batch):
        if stop is not None and stop.is_set():
            break
        urls = [p.url for p in batch]
        status = send(settings.hub, urls, settings.timeout)
        outcome = outcome_of(status)
        queue.settle(batch, outcome, now(), settings.first_backoff)
        if outcome is Outcome.SENT:
            report.sent += len(urls)
            log.info("WebSub hub told of %d changed feeds", len(urls), extra={"urls": len(urls)})
        elif outcome is Outcome.RETRY:
            report.retried += len(urls)
            log.warning("WebSub hub %s did not take %d announcements (%s); trying again later", settings.hub,
                        len(urls), status if status is not None else "no answer")
        else:
            report.refused += len(urls)
            log.error("WebSub hub %s refused the announcement of %s (HTTP %s); dropped", settings.hub,
                      ", ".join(urls), status)
    report.left = len(queue.pending())
    return report


def send_until(queue: HubQueue, settings: HubSettings, deadline: float, *, now: Callable[[], float] = time.time,
               monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
               send: Sender = post) -> SendReport:
    """Announce what is queued, waiting for retries that come due, until nothing is queued or the
    monotonic clock passes ``deadline`` (the CLI: a bounded wait, then the rest stays queued)."""
    total = SendReport()
    while True:
        report = send_due(queue, settings, now, send)
        total.sent += report.sent
        total.retried += report.retried
        total.refused += report.refused
        total.left = report.left
        upcoming = next_due(queue.pending())
        if upcoming is None:
            return total
        wait = max(0.0, upcoming - now())
        if monotonic() + wait > deadline:
            return total
        sleep(wait)


class HubWorker:
    """The daemon's sender: a thread that announces what is queued at start (a restart left it),
    after each build (:meth:`wake`) and when a retry comes due, until :meth:`stop`."""

    def __init__(self, queue: HubQueue, settings: HubSettings, *, now: Callable[[], float] = time.time,
                 send: Sender = post) -> None:
        self.queue = queue
        self.settings = settings
        self.now = now
        self.send = send
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="websub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                send_due(self.queue, self.settings, self.now, self.send, self._stop)
                upcoming = next_due(self.queue.pending())
            except Exception:  # the queue's folder unwritable, a bug: logged, tried again later
                log.exception("WebSub announcements failed")
                upcoming = self.now() + self.settings.first_backoff
            wait = None if upcoming is None else max(0.0, upcoming - self.now())
            self._wake.wait(wait)


def announce_queued(feeds: FeedsConfig, wait: float) -> SendReport:
    """Announce what the queue of ``feeds.output`` holds, for at most ``wait`` seconds (``build``
    after writing, and ``finews-feeds websub``)."""
    queue = HubQueue(feeds.output)
    if not feeds.websub_hub:
        return SendReport(left=len(queue.pending()))
    return send_until(queue, HubSettings.from_config(feeds), time.monotonic() + wait)
