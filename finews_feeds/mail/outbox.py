"""The outbox worker: acts on subscribe forms after they were answered and sends transactional mail.

The web app never talks to SMTP, and never looks at an address's state: ``POST /subscribe``
validates the form and queues one outbox row, the same for every address (see
:meth:`Store.queue_subscribe`), and wakes this worker. The worker runs in the daemon, in two
threads of its own (not the web server's pool; one for forms, one for mail, so a stalled server
holds up no form), and:

- acts on a subscribe row (:meth:`Store.accept_subscribe`: the subscriber made or updated and
  a confirmation mail queued, or for an address already active the link to its manage page,
  unless the address had its three mails this hour);
- sends a mail row through the SMTP transport (build the message, then send it) and records
  `sent` only after the server's 250. A 5xx is `failed`; a 4xx or no connection is tried again
  after ``outbox.backoff_seconds`` × 2ⁿ (at most ``outbox.max_backoff_seconds``), and a mail
  still not accepted ``outbox.lifetime_hours`` after it was queued is `expired`, and logged.

This is Postfix's queue in small: every row has its attempts and the time of its next one,
rows live in the database so a restart loses none, and while the server is unreachable the
other mails wait for the failed one's next attempt instead of each spending a timeout on it
(Postfix marks the destination dead). Several daemons may share one PostgreSQL database: a row
is leased to one worker at a time (:meth:`Store.claim_outbox`), and a worker that dies leaves
its lease to run out (``outbox.lease_seconds``), after which another takes the row. The one
window for a duplicate is a crash between the server's 250 and the commit of `sent`: the next
attempt sends it again with the same Message-ID.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ..clock import iso, utc_now
from ..config import Config
from ..errors import FinewsError, SubscriberError
from ..logs import subscriber_event
from ..models import Site
from ..site.jekyll import resolve_site
from .confirmation import ConfirmationRenderer
from .delivery import confirmation_message, confirmation_message_id, envelope_sender, manage_message
from .mailer import ConnectionFailure, PermanentFailure, SmtpTransport, TemporaryFailure
from .store import OutboxRow, Store, new_owner

log = logging.getLogger(__name__)

#: Confirmation mails one address gets per hour, however many clients ask for it.
CONFIRMATIONS_PER_HOUR = 3
#: Finished rows are kept this long (for an operator to look at), then deleted.
KEEP_FINISHED = timedelta(days=7)
#: How often the worker deletes old finished rows and expires rows past their lifetime.
SWEEP_EVERY = timedelta(minutes=10)
#: Wait before a subscribe form that met a concurrent insert of the same address is acted on again.
RETRY_FORM = timedelta(seconds=1)
FORM_KINDS = ("subscribe",)
MAIL_KINDS = ("confirm", "manage")
#: Who a mail of each kind is still wanted for: a confirmation while the address is pending, the link
#: to the manage page while it is active.
WANTED_STATUS = {"confirm": "pending", "manage": "active"}
#: What a subscribe form came to, as logged (the address only at DEBUG, see logs.subscriber_event).
SUBSCRIBE_OUTCOMES = {
    "confirm": "subscribe: confirmation mail queued",
    "manage": "subscribe: already an active subscriber; the link to the manage page queued",
    "limited": f"subscribe: {CONFIRMATIONS_PER_HOUR} subscription mails this hour already; none sent",
}
#: What a sent mail of each kind is logged as.
SENT_EVENTS = {"confirm": "confirmation mail sent", "manage": "manage-link mail sent"}


def _log_expired(row: OutboxRow, attempts: int, now: datetime, error: str) -> None:
    log.error("outbox: gave up on the %s mail to %s after %d attempts over %s (outbox.lifetime_hours): %s",
              row.kind, row.email, attempts, now - row.created_at, error,
              extra={"kind": row.kind, "address": row.email, "attempts": attempts,
                     "queued_seconds": round((now - row.created_at).total_seconds())})


def backoff(config: Config, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failure (1 for the first): doubled each time, capped."""
    first = config.outbox.backoff_seconds
    seconds = min(config.outbox.max_backoff_seconds, first * 2 ** min(max(attempts - 1, 0), 40))
    return timedelta(seconds=seconds)


class OutboxWorker:
    """Works through the outbox in its own thread: :meth:`start`, :meth:`wake` after queueing,
    :meth:`stop` and :meth:`join`.

    :meth:`run_once` does what is due now and returns; tests call it directly.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        transport_factory: Callable[[], SmtpTransport],
        clock: Callable[[], datetime] = utc_now,
        owner: str | None = None,
        site: Site | None = None,
    ) -> None:
        self.config = config
        # Loaded at start, so a broken confirm template in digest.templates stops the daemon at once.
        self.confirmations = ConfirmationRenderer(config, site or resolve_site(config))
        self.store = store
        self.transport_factory = transport_factory
        self.clock = clock
        self.owner = owner or new_owner()
        self.lease = timedelta(seconds=config.outbox.lease_seconds)
        self.lifetime = timedelta(hours=config.outbox.lifetime_hours)
        self._wake_forms = threading.Event()
        self._wake_mail = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: While the SMTP server is unreachable: mails wait until this time (one failed mail's next attempt).
        self._down_until: datetime | None = None
        self._swept: datetime | None = None

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._loop, args=(FORM_KINDS, self._wake_forms), name="outbox-forms", daemon=True),
            threading.Thread(target=self._loop, args=(MAIL_KINDS, self._wake_mail), name="outbox-mail", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Something was queued: look now instead of at the next poll (safe from any thread, never blocks)."""
        self._wake_forms.set()
        self._wake_mail.set()

    def stop(self) -> None:
        """Ask the threads to end after the row in hand (a send in flight is finished and recorded)."""
        self._stop.set()
        self.wake()

    def join(self, timeout: float) -> bool:
        """Whether the threads have ended within ``timeout`` seconds. A send still going on then is
        left behind: its lease runs out and the next start sends it again, with its Message-ID."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def _loop(self, kinds: tuple[str, ...], wake: threading.Event) -> None:
        poll = self.config.outbox.poll_seconds
        while not self._stop.is_set():
            # Cleared before looking: a row queued after the look sets it again, so it is not missed.
            wake.clear()
            try:
                self.run_once(kinds)
                wait = self.seconds_to_next(kinds, poll)
            except FinewsError as exc:  # the database gone for a moment: look again later
                log.error("outbox: %s", exc.message)
                wait = poll
            except Exception:  # the worker must outlive any one bad row
                log.exception("outbox worker failed; trying again in %.0f s", poll)
                wait = poll
            wake.wait(wait)

    def seconds_to_next(self, kinds: tuple[str, ...], poll: float) -> float:
        """Seconds until a row of ``kinds`` comes due (at most ``poll``: other daemons' leases run out too)."""
        due = self.store.next_outbox_due(kinds)
        if due is not None and self._down_until is not None and kinds == MAIL_KINDS:
            due = max(due, self._down_until)
        if due is None:
            return poll
        return max(0.0, min(poll, (due - self.clock()).total_seconds()))

    # -- the work ------------------------------------------------------------------------------

    def run_once(self, kinds: tuple[str, ...] = FORM_KINDS + MAIL_KINDS) -> int:
        """Act on every row of ``kinds`` due now (forms first), one at a time; returns how many were taken."""
        taken = 0
        if set(kinds) & set(FORM_KINDS):
            taken += self._accept_due()
        if set(kinds) & set(MAIL_KINDS):
            self._sweep()
            taken += self._send_due()
        return taken

    def _accept_due(self) -> int:
        taken = 0
        while not self._stop.is_set():
            rows = self.store.claim_outbox(self.owner, self.clock(), self.lease, FORM_KINDS, limit=1)
            if not rows:
                break
            taken += 1
            self._accept(rows[0])
        return taken

    def _send_due(self) -> int:
        transport: SmtpTransport | None = None
        taken = 0
        try:
            while not self._stop.is_set():
                now = self.clock()
                if self._down_until is not None and now < self._down_until:
                    break
                if transport is None:
                    # Before the claim: a bad [smtp] setting then leaves no row leased. It connects
                    # only when it sends.
                    transport = self.transport_factory()
                # One row per claim: the lease then covers a single send, however slow the server.
                rows = self.store.claim_outbox(self.owner, now, self.lease, MAIL_KINDS, limit=1)
                if not rows:
                    break
                taken += 1
                self._send(rows[0], transport)
        finally:
            if transport is not None:
                transport.close()
        return taken

    def _sweep(self) -> None:
        now = self.clock()
        if self._swept is not None and now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for row in self.store.expire_outbox(now - self.lifetime, now):
            _log_expired(row, row.attempts, now, row.last_error or "never tried")
        purged = self.store.purge_outbox(now - KEEP_FINISHED)
        if purged:
            log.info("outbox: deleted %d rows finished more than %d days ago", purged, KEEP_FINISHED.days,
                     extra={"deleted": purged})

    def _accept(self, row: OutboxRow) -> None:
        now = self.clock()
        try:
            outcome = self.store.accept_subscribe(row, self.owner, now, confirmation_message_id(self.config),
                                                  CONFIRMATIONS_PER_HOUR)
        except SubscriberError as exc:
            self.store.defer_outbox(row.id, self.owner, exc.message, now + RETRY_FORM, now)
            return
        if outcome in MAIL_KINDS:
            self._wake_mail.set()
        if outcome == "lost":
            log.warning("subscribe: another worker took this form over (outbox.lease_seconds)")
        else:
            subscriber_event(log, SUBSCRIBE_OUTCOMES[outcome], row.email, outcome=outcome)

    def _fail_later(self, row: OutboxRow, error: str, now: datetime) -> datetime | None:
        """Record a temporary failure; the time of the next attempt, or None when the mail expired."""
        if now - row.created_at >= self.lifetime:
            self.store.finish_outbox(row.id, self.owner, "expired", now, error)
            _log_expired(row, row.attempts + 1, now, error)
            return None
        next_at = now + backoff(self.config, row.attempts + 1)
        self.store.defer_outbox(row.id, self.owner, error, next_at, now)
        log.warning("outbox: %s mail to %s not sent (%s); attempt %d, next at %s", row.kind, row.email, error,
                    row.attempts + 1, iso(next_at),
                    extra={"kind": row.kind, "address": row.email, "attempts": row.attempts + 1, "next_at": iso(next_at)})
        return next_at

    def _send(self, row: OutboxRow, transport: SmtpTransport) -> None:
        now = self.clock()
        sub = self.store.get_subscriber(row.email)
        if sub is None or sub.status != WANTED_STATUS.get(row.kind):
            # Confirmed through an earlier mail, unsubscribed since, or gone: this one is no longer wanted.
            status = sub.status if sub is not None else "removed"
            self.store.finish_outbox(row.id, self.owner, "skipped", now, f"subscriber is {status}")
            return
        try:
            if row.kind == "manage":
                msg = manage_message(self.config, sub.email, sub.name, row.message_id, now, self.confirmations)
            else:
                msg = confirmation_message(self.config, sub.email, sub.name, row.message_id, now, self.confirmations,
                                           sub.categories, sub.tags)
        except (ValueError, TypeError, UnicodeError, LookupError) as exc:
            error = f"cannot build the message: {exc}"
            log.error("outbox: %s mail to %s: %s", row.kind, row.email, error,
                      extra={"kind": row.kind, "address": row.email})
            self.store.finish_outbox(row.id, self.owner, "failed", now, error)
            return
        try:
            transport.send(msg, sender=envelope_sender(self.config, sub.email), recipients=(sub.email,))
        except PermanentFailure as exc:
            log.error("outbox: %s mail to %s refused, not retried: %s", row.kind, row.email, exc.message,
                      extra={"kind": row.kind, "address": row.email, "code": exc.code})
            self.store.finish_outbox(row.id, self.owner, "failed", self.clock(), exc.message)
            return
        except TemporaryFailure as exc:
            next_at = self._fail_later(row, exc.message, self.clock())
            if next_at is not None and (isinstance(exc, ConnectionFailure) or exc.code == 421):
                # No server to talk to: the other mails wait for this one's next attempt.
                self._down_until = next_at
            return
        except FinewsError as exc:  # refused login, no STARTTLS, a bad DKIM key: nothing can go out
            next_at = self._fail_later(row, exc.message, self.clock())
            if next_at is not None:
                self._down_until = next_at
            return
        self._down_until = None
        if self.store.finish_outbox(row.id, self.owner, "sent", self.clock()):
            subscriber_event(log, SENT_EVENTS.get(row.kind, "mail sent"), row.email, kind=row.kind,
                             attempts=row.attempts + 1)
        else:
            log.warning("outbox: %s mail to %s was sent after its lease ran out (outbox.lease_seconds)",
                        row.kind, row.email, extra={"kind": row.kind, "address": row.email})
