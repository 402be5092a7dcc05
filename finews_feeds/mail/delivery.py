"""Send a day's digest to every active subscriber exactly once, whatever fails on the way (a weekly
subscriber, on their weekday, the week's: see :meth:`Store.prepare_day`).

The ledger (see :mod:`store`) holds one row per (day, subscriber). A run:

1. claims the day: on SQLite only one process sends it at a time; on PostgreSQL any number of
   workers share it, each ledger row leased to one of them (see :mod:`store`, docs/delivery.md);
2. gives each active subscriber without a row a `pending` one;
3. takes the open rows one by one (each at most once per run), and for each: commits
   `sending` before the message goes out, sends it, commits `sent` after the server's 250.
   A 5xx is `failed-permanent`, never retried; a 4xx or a connection error is retried with
   exponential backoff up to ``smtp.max_retries`` times, then left `failed-temporary` for the
   next run.

So a run sends only to those not yet sent, and running it again sends nothing. The one window
for a duplicate is a crash between the server's 250 and the commit of `sent`: that message is
still `sending`, and the next run sends it again with the same Message-ID (at most the run's
window of messages per crash, one on a single connection: docs/delivery.md; mail clients show
each once).
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import Policy
from email.utils import make_msgid, parseaddr
from typing import Any, Protocol
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from ..config import Config, check_public_url
from ..errors import DeliveryError, StoreError, SubscriberError
from ..models import Post, Posts, Site
from ..site.collector import collect_site
from ..site.jekyll import resolve_site
from .confirmation import ConfirmationRenderer
from .digest import (
    DigestRenderer,
    Recipient,
    Selection,
    Variant,
    arrival_day,
    posts_of_day,
    posts_of_week,
    web_base_url,
)
from .mailer import ConnectionFailure, PermanentFailure, SmtpTransport, TemporaryFailure, transport_from_config
from .message import build_message, domain_of, format_address, message_id
from .reports import unsubscribe_subject, verp_address
from .senders import (
    PROCESSES_FROM_MESSAGES,
    Job,
    Outcome,
    ProcessSenders,
    RateLimiter,
    Senders,
    ThreadSenders,
)
from .store import Claim, Store, new_owner
from .tokens import make_token, secret_of

log = logging.getLogger(__name__)

#: How often a run waiting for another process's claim on the day looks again.
CLAIM_POLL_SECONDS = 1.0
#: Rows claimed per transaction (and most rows skipped in one commit).
CLAIM_BATCH = 50


class Renderer(Protocol):
    """What delivery needs of :class:`DigestRenderer` (tests may pass their own)."""

    def render(self, day: date, posts: Sequence[Post], selection: Selection) -> Variant | None: ...


@dataclass
class DeliveryReport:
    day: date
    #: Ledger rows of the day after this run prepared them.
    total: int = 0
    #: Rows this run found open (pending, sending, failed-temporary).
    open: int = 0
    sent: int = 0
    #: Sent by an earlier run.
    already_sent: int = 0
    #: Failed permanently in an earlier run (never retried).
    failed_before: int = 0
    #: Messages left `sending` by a crashed run and sent again with their Message-ID.
    resent: int = 0
    #: Retries after a temporary failure.
    retried: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: "permanent: <reply>" / "temporary: <reply>" -> count
    failed: Counter[str] = field(default_factory=Counter)
    permanent_failures: list[tuple[str, str]] = field(default_factory=list)
    temporary_failures: list[tuple[str, str]] = field(default_factory=list)
    bounced: list[str] = field(default_factory=list)
    #: Set when a stop request ended the run early.
    stopped: bool = False
    #: Why the run gave up (the server unreachable), or "".
    aborted: str = ""
    #: Who held the day's claim when this run did not wait for it, or "".
    busy: str = ""
    #: How long the run took, from its claim to its end (the CLI and the logs show it).
    seconds: float = 0.0
    #: SMTP connections the run used at once.
    connections: int = 0
    #: Sender processes that built and sent the messages (0: the run's own process did).
    processes: int = 0

    @property
    def ok(self) -> bool:
        return not self.permanent_failures and not self.aborted

    @property
    def rate(self) -> float:
        """Messages sent a second over the run's whole duration (claim, rendering and commits included)."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def timing_line(self) -> str:
        """How long the run took and how fast it sent (printed before :meth:`summary_lines`)."""
        return (f"digest {self.day}: {self.sent} sent in {self.seconds:.1f} s ({self.rate:.0f} msgs/s) over "
                f"{self.connections} SMTP connection{'s' if self.connections != 1 else ''}"
                + (f" from {self.processes} sender processes" if self.processes else ""))

    def fields(self) -> dict[str, object]:
        """The counts of the run, as the fields of a JSON log line."""
        return {
            "day": self.day.isoformat(), "sent": self.sent, "skipped": sum(self.skipped.values()),
            "retried": self.retried, "failed": sum(self.failed.values()), "already_sent": self.already_sent,
            "resent": self.resent, "total": self.total, "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1), "connections": self.connections, "processes": self.processes,
            "failed_by_reason": dict(self.failed),
        }

    def summary_lines(self) -> list[str]:
        lines = [
            f"digest {self.day}: sent {self.sent}, skipped {sum(self.skipped.values())}, "
            f"retried {self.retried}, failed {sum(self.failed.values())}"
            + (f", already sent before {self.already_sent}" if self.already_sent else "")
            + (f", failed permanently before {self.failed_before}" if self.failed_before else "")
            + (f", resent after a crash {self.resent}" if self.resent else ""),
        ]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  skipped {count}: {reason}")
        for reason, count in sorted(self.failed.items()):
            lines.append(f"  failed {count}: {reason}")
        for email, error in self.permanent_failures:
            lines.append(f"  permanent failure {email}: {error}")
        for email, error in self.temporary_failures:
            lines.append(f"  not sent yet (retried next run) {email}: {error}")
        for email in self.bounced:
            lines.append(f"  now bounced: {email}")
        if self.stopped:
            lines.append("  stopped before the end: run again to send the rest")
        if self.aborted:
            lines.append(f"  gave up: {self.aborted}; run again to send the rest")
        if self.busy:
            lines.append(f"  not sent: another process is sending this digest ({self.busy})")
        return lines


#: How often a send in progress says how far it is in the log (and the CLI off a terminal).
PROGRESS_LOG_SECONDS = 10.0


class SendProgress:
    """How far a send is: written by the run's ledger thread, read by anyone (the daemon's /healthz,
    the CLI's progress line). Rate and ETA count from the first message's start, so the claim,
    the wait for another sender and the rendering of the first variant do not skew them."""

    def __init__(self, day: date, clock: Callable[[], float] = time.monotonic) -> None:
        self.day = day
        self.clock = clock
        self.total = 0
        self.done = 0
        self.sent = 0
        self.started: float | None = None
        self._lock = threading.Lock()

    def begin(self, total: int) -> None:
        with self._lock:
            self.total, self.done, self.sent, self.started = total, 0, 0, self.clock()

    def update(self, done: int, sent: int) -> None:
        with self._lock:
            self.done, self.sent = done, sent

    def snapshot(self) -> dict[str, Any]:
        """``day``, ``done`` (subscribers dealt with) of ``total`` (open at the start), ``sent``,
        ``seconds`` since the start, ``rate`` (messages dealt with a second) and ``eta_seconds`` (None
        until there is a rate)."""
        with self._lock:
            total, done, sent, started = self.total, self.done, self.sent, self.started
        seconds = self.clock() - started if started is not None else 0.0
        rate = done / seconds if seconds > 0 and done else 0.0
        eta = round((total - done) / rate, 1) if rate else None
        return {"day": self.day.isoformat(), "done": done, "total": total, "sent": sent,
                "seconds": round(seconds, 3), "rate": round(rate, 1), "eta_seconds": eta}

    def line(self) -> str:
        """One line for a log or a terminal: ``digest 2022-04-20: 1200/20000, 812 msgs/s, about 21 s left``."""
        figures = self.snapshot()
        text = f"digest {figures['day']}: {figures['done']}/{figures['total']}"
        if figures["rate"]:
            text += f", {figures['rate']:.0f} msgs/s"
        if figures["eta_seconds"] is not None:
            text += f", about {_duration(figures['eta_seconds'])} left"
        return text


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def list_id(config: Config, site: Site) -> str:
    """``digest.list_id``, else ``<site title> digest <digest.<site host>>``, the host in its ASCII
    (IDNA) form: the id is what list filters match, and it must be plain ASCII (RFC 2919)."""
    if config.digest.list_id:
        return config.digest.list_id
    host = (urlsplit(site.url).hostname or "localhost").lower()
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        host = "localhost"
    return f"{site.title} digest <digest.{host}>".strip()


def unsubscribe_url(config: Config, token: str) -> str:
    return f"{web_base_url(config)}/unsubscribe/{token}"


def confirm_url(config: Config, token: str) -> str:
    return f"{web_base_url(config)}/confirm/{token}"


def manage_url(config: Config, secret: str, email: str) -> str:
    """``email``'s preference centre: a signed link that does not expire (see :mod:`.tokens`)."""
    return f"{web_base_url(config)}/manage/{make_token(secret, 'manage', email)}"


def list_headers(config: Config, site: Site, unsubscribe: str, token: str = "") -> dict[str, str]:
    """The bulk-mail headers Gmail and Yahoo require (RFC 2369, RFC 8058, RFC 2919). A mailto
    is offered only for ``digest.unsubscribe_mailbox``: a request mailed where nobody acts on
    it would leave the subscriber subscribed. Its subject carries the subscriber's signed
    unsubscribe ``token`` (:func:`.reports.unsubscribe_subject`), which the mailbox reader
    (:mod:`.mailbox`) acts on: a From address alone is too easily forged to act on."""
    mailbox = config.digest.unsubscribe_mailbox
    mailto = f"mailto:{mailbox}?subject={quote(unsubscribe_subject(token))}"
    return {
        "List-Unsubscribe": f"<{unsubscribe}>" + (f", <{mailto}>" if mailbox else ""),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": list_id(config, site),
    }


class FoldedHeader(str):
    """A header written as given, folded only after its commas, never as RFC 2047 encoded-words.

    The email package encodes any header word longer than a line, and a signed unsubscribe URL
    is longer than a line: receivers read List-Unsubscribe URIs literally, so an encoded one is
    no unsubscribe link at all.
    """

    name: str

    def __new__(cls, name: str, value: str) -> FoldedHeader:
        if not value.isascii() or "\r" in value or "\n" in value:
            raise ValueError(f"{name}: expected one line of ASCII, got {value!r}")
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + f",{policy.linesep} ".join(self.split(", ")) + policy.linesep


def digest_message(
    config: Config, site: Site, variant: Variant, secret: str, email: str, name: str, msg_id: str, when: datetime
) -> EmailMessage:
    """The message of one subscriber: personal unsubscribe token in both the header and the body, and the
    link to their manage page in the body."""
    token = make_token(secret, "unsubscribe", email)
    unsubscribe = unsubscribe_url(config, token)
    html, text = variant.personalize(Recipient(email=email, name=name, unsubscribe_url=unsubscribe,
                                               manage_url=manage_url(config, secret, email)))
    headers = list_headers(config, site, unsubscribe, token)
    msg = build_message(
        subject=variant.subject, html=html, text=text, sender=config.digest.from_, to=format_address(name, email),
        reply_to=config.digest.reply_to, message_id=msg_id, date=when, headers=headers,
    )
    _keep_whole(msg, "List-Unsubscribe", "Message-ID", known={"List-Unsubscribe": headers["List-Unsubscribe"],
                                                              "Message-ID": msg_id})
    return msg


#: Values whose header reads back exactly as given, so :func:`_keep_whole` need not parse them back
#: through the header registry: a text of visible ASCII words with single spaces, no encoded word;
#: a Message-ID without spaces or nested brackets.
_PLAIN_VALUES = {"List-Unsubscribe": re.compile(r"[!-~]+(?: [!-~]+)*"), "Message-ID": re.compile(r"<[!-;=?-~]+>")}


def _keep_whole(msg: EmailMessage, *names: str, known: dict[str, str] | None = None) -> None:
    """Write these headers on one line each (plus folds after commas): a Message-ID folded onto its own line
    is read with a leading space by some parsers, and an encoded List-Unsubscribe is no link at all.

    ``known``: the values the headers were set from; a plain one is used as it is instead of being
    parsed back (the registry's parse of a Message-ID is a quarter of a message's build)."""
    for name in names:
        given = (known or {}).get(name)
        plain = _PLAIN_VALUES.get(name)
        if given is not None and plain is not None and plain.fullmatch(given) and "=?" not in given:
            value = given
        else:
            value = str(msg[name] or "")
        if value and value.isascii():
            msg.replace_header(name, FoldedHeader(name, value))


def _sleeper(stop: threading.Event | None) -> Callable[[float], None]:
    if stop is None:
        return time.sleep

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


#: Open rows per SMTP connection: a run opens one connection per this many rows to send, up to
#: ``smtp.connections``. A connection costs a TCP (and TLS) handshake and a login, which 50
#: messages amortise; and a small send (under 100 rows) keeps one connection and the strict
#: one-at-a-time order of a single sender (each message's retries before the next message).
MESSAGES_PER_CONNECTION = 50
#: Messages committed `sending` ahead per connection: enough that a connection always finds its
#: next message ready while the ledger commits, and the bound of the duplicate window (below).
WINDOW_PER_CONNECTION = 16
#: Longest an outcome waits for its group commit (Postgres's commit_delay idea, on our side):
#: outcomes that come back meanwhile share one commit.
GROUP_COMMIT_SECONDS = 0.02
#: Longest the ledger thread waits for an outcome before it looks for due retries again.
_POLL_SECONDS = 0.05


class _Run:
    """One run: a ledger thread (the caller's) and its senders (connection threads, in this process or in
    sender processes: :mod:`.senders`); :func:`send_digest` is its only user.

    The ledger thread claims rows, renders each selection's variant once, commits a batch of rows
    `sending` (the subscribers' statuses read in the same transaction), queues them for the
    connections, and commits their outcomes in groups: everything that came back while the
    previous commit ran goes in the next. At most ``window`` messages are committed `sending`
    without their outcome committed: that is the duplicate window after a crash. A temporary
    failure goes back to the ledger thread, which commits it `failed-temporary` and hands the
    message out again after its backoff (committing `sending` again first), so its connection
    goes on with other messages meanwhile. A run with one connection keeps a single sender's
    order: its window is one message, and a retry waits out its backoff before anything else.
    """

    def __init__(self, config: Config, store: Store, senders: Senders, connections: int, day: date, site: Site,
                 posts: list[Post], renderer: Renderer, now: Callable[[], datetime], owner: str,
                 stop: threading.Event | None, sleep: Callable[[float], None], report: DeliveryReport,
                 progress: Callable[[int, int], None] | None, tracker: SendProgress, wait: bool = True) -> None:
        self.config = config
        #: How long the rows this worker claims or starts stay its own (PostgreSQL, several workers).
        self.lease = timedelta(seconds=config.digest.lease_seconds)
        #: Whether to wait for rows other workers hold (to take them over if those workers fail).
        self.wait = wait
        self.store = store
        self.senders = senders
        self.day = day
        self.site = site
        self.posts = posts
        self.renderer = renderer
        self.now = now
        self.owner = owner
        self.stop = stop
        self.sleep = sleep
        self.report = report
        self.progress = progress
        self.tracker = tracker
        self.logged_at = time.monotonic()
        self.domain = domain_of(config.digest.from_)
        self.variants: dict[str, Variant | None] = {}
        self.serial = connections == 1
        window = 1 if self.serial else connections * WINDOW_PER_CONNECTION
        if config.smtp.rate_per_second > 0:
            # No more than about a second of messages ahead: a stop drains what is committed `sending`.
            window = min(window, max(connections, int(config.smtp.rate_per_second)))
        self.window = window
        self.batch = 1 if self.serial else max(1, window // 2)
        self.done = 0
        self.fatal: BaseException | None = None

    # -- the ledger thread ---------------------------------------------------------------------

    def variant(self, selection: Selection) -> Variant | None:
        key = selection.key()
        if key not in self.variants:
            self.variants[key] = self.renderer.render(self.day, self.posts, selection)
        return self.variants[key]

    def fields(self, email: str, **more: object) -> dict[str, object]:
        """The fields of a log line about one subscriber's message."""
        return {"day": self.day.isoformat(), "address": email, **more}

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def finished_one(self, count: int = 1) -> None:
        if not count:
            return
        self.done += count
        self.tracker.update(self.done, self.report.sent)
        if self.progress is not None:
            self.progress(self.done, self.report.open)
        if time.monotonic() - self.logged_at >= PROGRESS_LOG_SECONDS:
            self.logged_at = time.monotonic()
            log.info("%s", self.tracker.line(), extra=self.tracker.snapshot())

    def prepare(self, claim: Claim, skipped: dict[int, str]) -> Job | None:
        """The job of a claimed row, or None when the row is skipped (its reason put in ``skipped``)."""
        sub, row = claim.subscriber, claim.delivery
        if sub.status != "active":
            skipped[sub.id] = f"subscriber is {sub.status}"
            return None
        variant = self.variant(selection_of(claim))
        if variant is None:
            skipped[sub.id] = "no article matches the subscriber's categories and tags"
            return None
        if row.state == "sending":
            # A crashed run may have had this accepted: same Message-ID, so it is recognisably one message.
            log.warning("%s: resending the %s digest left `sending` by an interrupted run (%s)",
                        sub.email, self.day, row.message_id, extra=self.fields(sub.email))
            self.report.resent += 1
        return Job(claim, variant, row.message_id or message_id(self.day, sub.email, self.domain))

    def start(self, jobs: list[Job], skipped: dict[int, str]) -> int:
        """Commit ``jobs`` `sending` (and ``skipped``) in one transaction, then queue the active ones."""
        if jobs:
            # A run whose claim went with its database session must not send on (another may have the day).
            self.store.check_claim(self.day)
        statuses = self.store.start_sending_batch(
            self.day, [(job.claim.subscriber.id, job.msg_id) for job in jobs], self.now(), skipped, owner=self.owner,
            lease=self.lease)
        for reason in skipped.values():
            self.report.skipped[reason] += 1
        finished = len(skipped)
        started: list[Job] = []
        for job in jobs:
            status = statuses[job.claim.subscriber.id]
            if status == "taken":
                # Its lease ran out while this worker was slow, and another worker has the row now.
                log.info("%s: left to the worker that took it over", job.claim.subscriber.email,
                         extra=self.fields(job.claim.subscriber.email))
                continue
            if status != "active":
                self.report.skipped[f"subscriber is {status}"] += 1
                finished += 1
                continue
            started.append(job)
        self.senders.put(started)
        self.finished_one(finished)
        return len(started)

    def run(self) -> bool:
        """Send every open row; True when the run went through its whole list."""
        try:
            return self.loop()
        finally:
            self.senders.close()

    def loop(self) -> bool:
        claims: deque[Claim] = deque()
        exhausted = False
        retries: list[tuple[float, int, Job]] = []  # (due on the monotonic clock, order, job)
        order = 0
        #: Messages committed `sending` whose outcome is not committed yet (the duplicate window).
        outstanding = 0
        #: Outcomes back from the connections, for the next group commit; since when the first waits.
        uncommitted: list[Outcome] = []
        first_at = 0.0
        while True:
            halted = self.stopping() or bool(self.report.aborted) or self.fatal is not None
            # Refill a whole batch at a time: one commit for many rows.
            while not halted and self.window - outstanding >= self.batch:
                jobs: list[Job] = []
                skipped: dict[int, str] = {}
                while retries and len(jobs) < self.batch and retries[0][0] <= time.monotonic():
                    jobs.append(heapq.heappop(retries)[2])
                while len(jobs) < self.batch and len(skipped) < CLAIM_BATCH:
                    if not claims and not exhausted:
                        got = self.store.claim_batch(self.day, self.owner, self.now(), limit=CLAIM_BATCH,
                                                     lease=self.lease)
                        exhausted = not got
                        claims.extend(got)
                    if not claims:
                        break
                    job = self.prepare(claims.popleft(), skipped)
                    if job is not None:
                        jobs.append(job)
                if not jobs and not skipped:
                    break
                outstanding += self.start(jobs, skipped)
                halted = self.stopping()
            if outstanding == 0:
                if self.fatal is not None:
                    raise self.fatal
                if not halted and not retries and exhausted and not claims and self.others_hold():
                    exhausted = False  # look again: what the others held may be free now
                    continue
                if halted or not retries:
                    complete = exhausted and not claims and not retries
                    self.report.stopped = self.stopping() and not complete
                    for _, _, job in retries:  # stopped or given up while waiting for a retry: next run's
                        self.report.failed[f"temporary: {_reason(job.error)}"] += 1
                        self.report.temporary_failures.append((job.claim.subscriber.email, job.error))
                    return complete and not halted
                # Only retries left, none due yet: wait for the first.
                self.sleep(max(0.0, retries[0][0] - time.monotonic()))
                continue
            if outstanding > len(uncommitted):
                wait = _POLL_SECONDS
                if retries:
                    wait = min(wait, max(0.0, retries[0][0] - time.monotonic()))
                if uncommitted:
                    wait = min(wait, max(0.0, first_at + GROUP_COMMIT_SECONDS - time.monotonic()))
                came = self.senders.collect(wait)
                if came and not uncommitted:
                    first_at = time.monotonic()
                uncommitted += came
            # Group commit: a batch's worth, or what waited long enough, or all there is to wait for.
            if uncommitted and (self.serial or len(uncommitted) >= self.batch or outstanding == len(uncommitted)
                                or time.monotonic() - first_at >= GROUP_COMMIT_SECONDS):
                outcomes, uncommitted = uncommitted, []
                outstanding -= len(outcomes)
                for job, backoff in self.record(outcomes):
                    order += 1
                    if self.serial:
                        self.sleep(backoff)
                        heapq.heappush(retries, (float("-inf"), order, job))
                    else:
                        heapq.heappush(retries, (time.monotonic() + backoff, order, job))

    def others_hold(self) -> bool:
        """Whether to wait for rows other workers hold (PostgreSQL): True after a pause when some do and
        this run waits, so that it takes over the rows of a worker that dies (at once) or stops
        answering (when its lease runs out) instead of leaving them to the next run."""
        held = self.store.held_elsewhere(self.day, self.owner, self.now())
        if not held:
            return False
        if not self.wait:
            self.report.busy = f"{held} messages held by other workers"
            return False
        self.sleep(CLAIM_POLL_SECONDS)
        return not self.stopping()

    def record(self, outcomes: list[Outcome]) -> list[tuple[Job, float]]:
        """Commit ``outcomes`` (the `sent` ones in one transaction); returns the jobs to retry, with their backoff."""
        if not outcomes:
            return []
        now = self.now()
        sent = [o.job.claim.subscriber.id for o in outcomes if o.kind == "sent"]
        self.store.mark_sent_batch(self.day, sent, now)
        self.report.sent += len(sent)
        finished = len(sent)
        retry: list[tuple[Job, float]] = []
        retries = self.config.smtp.max_retries
        for outcome in outcomes:
            job, sub = outcome.job, outcome.job.claim.subscriber
            if outcome.kind == "sent":
                continue
            if outcome.kind == "unbuildable":
                log.error("%s: %s", sub.email, outcome.error, extra=self.fields(sub.email))
                self.store.mark_permanent(self.day, sub.id, outcome.error, 0, now)
                self.report.failed[f"permanent: {_reason(outcome.error)}"] += 1
                self.report.permanent_failures.append((sub.email, outcome.error))
                finished += 1
            elif outcome.kind == "permanent":
                bounced = self.store.mark_permanent(self.day, sub.id, outcome.error, self.config.smtp.bounce_after,
                                                    now)
                log.error("%s: permanent failure, not retried: %s", sub.email, outcome.error,
                          extra=self.fields(sub.email, code=outcome.code))
                self.report.failed[f"permanent: {_reason(outcome.error)}"] += 1
                self.report.permanent_failures.append((sub.email, outcome.error))
                if bounced:
                    log.warning("%s: marked bounced after %d permanent failures", sub.email,
                                self.config.smtp.bounce_after, extra=self.fields(sub.email))
                    self.report.bounced.append(sub.email)
                finished += 1
            elif outcome.kind == "lost":
                # Its sender process died: the server may have taken it, so it stays `sending` (the
                # next run sends it again, same Message-ID) and this run ends.
                if self.fatal is None:
                    self.fatal = outcome.exc
            elif outcome.kind == "fatal":
                # The run cannot go on (login refused, no STARTTLS): nothing was sent to this one.
                self.store.mark_temporary(self.day, sub.id, outcome.error, now)
                if self.fatal is None:
                    self.fatal = outcome.exc
            else:
                self.store.mark_temporary(self.day, sub.id, outcome.error, now)
                job.error = outcome.error
                attempt = job.attempt - 1
                if attempt >= retries or self.stopping() or self.report.aborted:
                    log.error("%s: temporary failure, left for the next run: %s", sub.email, outcome.error,
                              extra=self.fields(sub.email, code=outcome.code, attempts=job.attempt))
                    self.report.failed[f"temporary: {_reason(outcome.error)}"] += 1
                    self.report.temporary_failures.append((sub.email, outcome.error))
                    if outcome.connection and attempt >= retries and not self.stopping() and not self.report.aborted:
                        self.report.aborted = f"the SMTP server failed {retries + 1} times in a row: {outcome.error}"
                    finished += 1
                    continue
                backoff = self.config.smtp.retry_backoff * 2**attempt
                log.warning("%s: temporary failure (%s); retry %d of %d in %.1fs", sub.email, outcome.error,
                            attempt + 1, retries, backoff,
                            extra=self.fields(sub.email, code=outcome.code, wait_seconds=backoff))
                self.report.retried += 1
                retry.append((job, backoff))
        self.finished_one(finished)
        return retry


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Composer:
    """A run's attempt: build one job's message (on its first attempt), wait for the rate limit, send it,
    and say how it went. Called on each connection's thread, in the run's process or a sender process."""

    def __init__(self, config: Config, site: Site, now: Callable[[], datetime], limiter: RateLimiter) -> None:
        self.config = config
        self.site = site
        self.now = now
        self.limiter = limiter
        self.secret = secret_of(config)

    def __call__(self, transport: SmtpTransport, job: Job) -> Outcome:
        sub = job.claim.subscriber
        job.attempt += 1
        if job.msg is None:
            try:
                job.msg = digest_message(self.config, self.site, job.variant, self.secret, sub.email, sub.name,
                                         job.msg_id, self.now())
            except (ValueError, TypeError, UnicodeError, LookupError) as exc:
                # Something in this subscriber's data the message cannot hold: theirs alone, not a bounce.
                return Outcome(job, "unbuildable", f"cannot build the message: {exc}")
        self.limiter.wait()
        try:
            transport.send(job.msg, sender=envelope_sender(self.config, sub.email), recipients=(sub.email,))
        except PermanentFailure as exc:
            return Outcome(job, "permanent", exc.message, exc.code)
        except TemporaryFailure as exc:
            return Outcome(job, "temporary", exc.message, exc.code, connection=isinstance(exc, ConnectionFailure))
        except DeliveryError as exc:
            return Outcome(job, "fatal", exc.message, exc=exc)
        return Outcome(job, "sent")


@dataclass(frozen=True)
class _SenderSetup:
    """What a sender process needs to build and send a run's messages (pickled to it): the config's
    transport and a composer on the real clock."""

    config: Config
    site: Site

    def attempt(self, limiter: RateLimiter) -> _Composer:
        return _Composer(self.config, self.site, _utc_now, limiter)

    def transport(self) -> SmtpTransport:
        return transport_from_config(self.config)


def sender_processes(config: Config, messages: int, connections: int, cores: int) -> int:
    """The processes that build and send a send of ``messages`` on ``connections`` (``smtp.processes``;
    automatic: one per core of the ``cores`` this run has): 1 is the run's own, more are sender
    processes, never more than the connections they share."""
    wanted = config.smtp.processes
    if wanted == 0:
        wanted = cores if messages >= PROCESSES_FROM_MESSAGES else 1
    return max(1, min(wanted, connections))


def selection_of(claim: Claim) -> Selection:
    """What a ledger row sends: the subscriber's categories and tags, the day's digest or (a `weekly` row) the week's."""
    sub = claim.subscriber
    return Selection(frozenset(sub.categories), frozenset(sub.tags), weekly=claim.delivery.kind == "weekly")


def _stopped(exc: StoreError, day: date) -> StoreError:
    """``exc`` saying which send it stopped, and that running it again is safe."""
    return type(exc)(f"the send of the {day} digest stopped: {exc.message}",
                     hint="run the same command again: every step is committed on its own, so the ledger is "
                          "consistent and only those not yet sent get the digest")


def _reason(message: str) -> str:
    """A failure grouped by its reply: the code and text, without the stage and address."""
    return message.split(" (at ", 1)[0][:120]


def send_digest(
    config: Config,
    store: Store,
    transport_factory: Callable[[], SmtpTransport],
    day: date,
    collection: Posts,
    now: Callable[[], datetime],
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    renderer: Renderer | None = None,
    sleep: Callable[[float], None] | None = None,
    wait: bool = True,
    tracker: SendProgress | None = None,
    cores: int = 0,
) -> DeliveryReport:
    """Send ``day``'s digest to every active subscriber who has not had it yet.

    ``cores``: how many CPU cores a large send's sender processes may use (``smtp.processes``, see
    :mod:`.senders`; they take their connections from the config, not from ``transport_factory``);
    0: none, the run's own threads send.

    ``stop`` set: the message in flight is finished and recorded, then the run returns.
    ``wait``: when another process is sending this day, wait for it (then send what it left);
    otherwise return at once with ``report.busy`` naming it. ``progress(done, total)`` is called
    after each group commit (after each subscriber on one connection); ``tracker`` is kept up to
    date with the figures of the send (for /healthz), and they are logged every 10 s. Raises :class:`DeliveryError` when the run cannot go on at all
    (login refused, ...); the ledger keeps everything done until then.
    """
    secret_of(config)  # fail before claiming anything when FINEWS_SECRET_KEY is missing
    check_public_url(config)  # Config objects made in code are not validated on the way in
    sleep = sleep or _sleeper(stop)
    report = DeliveryReport(day=day)
    zone = ZoneInfo(config.digest.timezone) if config.digest.timezone else collection.site.timezone
    posts = posts_of_day(collection, day, zone)
    renderer = renderer or DigestRenderer(config, collection.site, collection.content,
                                          week=lambda last: posts_of_week(collection, last, zone))

    started = time.monotonic()
    owner = new_owner()
    announced = False
    while True:
        holder = store.try_claim_run(day, owner, now())
        if holder is None:
            break
        if not wait:
            report.busy = holder
            return report
        if not announced:
            log.info("the %s digest is being sent by %s; waiting for it to finish", day, holder,
                     extra={"day": day.isoformat()})
            announced = True
        sleep(CLAIM_POLL_SECONDS)
        if stop is not None and stop.is_set():
            report.stopped = True
            return report

    finished = False
    transports: list[SmtpTransport] = []
    try:
        # Weekly subscribers are due when the mail arrives on their weekday.
        store.prepare_day(day, now(), weekly_on=arrival_day(day, config.digest.covers).weekday())
        counts = store.ledger_counts(day)
        report.total = sum(counts.values())
        report.already_sent = counts["sent"]
        report.failed_before = counts["failed-permanent"]
        report.open = counts["pending"] + counts["sending"] + counts["failed-temporary"]
        pool = max(1, min(config.smtp.connections, report.open // MESSAGES_PER_CONNECTION))
        senders: Senders
        if cores and (count := sender_processes(config, report.open, pool, cores)) > 1:
            senders = ProcessSenders(_SenderSetup(config, collection.site), count, pool, config.smtp.rate_per_second)
            report.processes = count
        else:
            transports = [transport_factory() for _ in range(pool)]
            limiter = RateLimiter(config.smtp.rate_per_second, lambda: now().timestamp(), sleep)
            senders = ThreadSenders(transports, _Composer(config, collection.site, now, limiter))
        tracker = tracker or SendProgress(day)
        run = _Run(config, store, senders, pool, day, collection.site, posts, renderer, now, owner, stop, sleep, report,
                   progress, tracker, wait)
        report.connections = pool
        tracker.begin(report.open)
        if progress is not None:
            progress(0, report.open)
        finished = run.run()
    except BaseException as exc:
        for transport in transports:
            transport.close()
        try:
            store.release_run(day, owner, now(), finished=False)
        except StoreError as release:
            # The error that ended the run is the one to report; a claim left behind is taken over.
            log.debug("the claim on the %s digest was not released: %s", day, release.message)
        if isinstance(exc, StoreError):
            raise _stopped(exc, day) from None
        raise
    try:
        store.release_run(day, owner, now(), finished=finished)
    except StoreError as exc:
        raise _stopped(exc, day) from None
    report.seconds = time.monotonic() - started
    # (the duration, rate and connections are fields of this line: its text is what operators grep for)
    log.info("digest %s: sent %d, skipped %d, failed %d", day, report.sent, sum(report.skipped.values()),
             sum(report.failed.values()), extra=report.fields())
    return report


def confirmation_message(config: Config, email: str, name: str, msg_id: str, when: datetime,
                         renderer: ConfirmationRenderer | None = None, categories: Sequence[str] = (),
                         tags: Sequence[str] = ()) -> EmailMessage:
    """The double opt-in message to ``email``, with a signed confirm link (its 7 days count from now),
    from the confirm templates (``renderer``: one made for the config's site when not given)."""
    secret = secret_of(config)
    link = confirm_url(config, make_token(secret, "confirm", email))
    mail = (renderer or ConfirmationRenderer(config, resolve_site(config))).render(
        email, name, link, categories, tags, manage_url(config, secret, email))
    msg = build_message(
        subject=mail.subject, html=mail.html, text=mail.text, sender=config.digest.from_,
        to=format_address(name, email), reply_to=config.digest.reply_to, message_id=msg_id, date=when,
    )
    _keep_whole(msg, "Message-ID")
    return msg


def manage_message(config: Config, email: str, name: str, msg_id: str, when: datetime,
                   renderer: ConfirmationRenderer | None = None) -> EmailMessage:
    """The mail with the link to ``email``'s manage page (an active subscriber submitted the form again)."""
    link = manage_url(config, secret_of(config), email)
    mail = (renderer or ConfirmationRenderer(config, resolve_site(config))).render_manage(email, name, link)
    msg = build_message(
        subject=mail.subject, html=mail.html, text=mail.text, sender=config.digest.from_,
        to=format_address(name, email), reply_to=config.digest.reply_to, message_id=msg_id, date=when,
    )
    _keep_whole(msg, "Message-ID")
    return msg


def confirmation_message_id(config: Config) -> str:
    """A new Message-ID for a confirmation mail, in the sender's domain."""
    return make_msgid("confirm", domain=domain_of(config.digest.from_))


def envelope_sender(config: Config, recipient: str = "") -> str:
    """MAIL FROM (the Return-Path) of a message to ``recipient``: ``bounces.address`` with the
    recipient encoded in it (VERP) when set, else the From address."""
    if not config.bounces.address:
        return parseaddr(config.digest.from_)[1]
    if config.bounces.verp and recipient:
        return verp_address(config.bounces.address, recipient)
    return config.bounces.address


def send_confirmation(
    config: Config, store: Store | None, transport: SmtpTransport, email: str, now: datetime | None = None
) -> str:
    """Send the double opt-in message with a signed confirm link; returns its Message-ID.

    With a store, only a known, pending subscriber gets one (the name comes from there).
    Raises a :class:`SendFailure` from the transport when the server refuses it.
    """
    when = now or datetime.now(UTC)
    secret_of(config)
    name = ""
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    if store is not None:
        sub = store.get_subscriber(email)
        if sub is None:
            raise SubscriberError(f"{email} is not a subscriber")
        if sub.status != "pending":
            raise SubscriberError(f"{sub.email} is {sub.status}, not waiting for confirmation")
        email, name, categories, tags = sub.email, sub.name, sub.categories, sub.tags
    msg_id = confirmation_message_id(config)
    msg = confirmation_message(config, email, name, msg_id, when, categories=categories, tags=tags)
    transport.send(msg, sender=envelope_sender(config, email), recipients=(email,))
    return msg_id


def send_day(
    config: Config,
    day: date,
    now: Callable[[], datetime],
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    collect: Callable[[Config], Posts] | None = None,
    tracker: SendProgress | None = None,
    cores: int | None = None,
) -> DeliveryReport:
    """Collect the site, open the store and SMTP from config, and send ``day``'s digest (the CLI's ``--send``);
    ``cores``: this send's share of the machine's cores for sender processes (default: all of them)."""
    secret_of(config)
    collection = (collect or collect_site)(config)
    with Store.open(config.database.url) as store:
        return send_digest(config, store, lambda: transport_from_config(config), day, collection, now, stop, progress,
                           tracker=tracker, cores=cores or os.cpu_count() or 1)
