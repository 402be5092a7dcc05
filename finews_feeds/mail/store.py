"""The subscriber store and the delivery ledger (SQLAlchemy 2, SQLite or PostgreSQL).

Every method is one short transaction, so a process killed at any point leaves the database
in the state of its last commit, and the ledger says exactly who has been sent what.

On SQLite every transaction starts with ``BEGIN IMMEDIATE``: a read that later writes would
otherwise fail with "database is locked" when another process wrote in between, instead of
waiting ``busy_timeout`` for its turn.

Run claims: on SQLite one sender per digest day, the ``runs`` row naming its owner (host, pid), and a
claim by someone else is taken over once that process is gone. On PostgreSQL any number of workers
share a day: each ledger row is claimed ``FOR UPDATE SKIP LOCKED`` and leased to one worker
(``deliveries.lease_until``), and a worker holds a session advisory lock named after itself, so the
others take its rows over as soon as its session ends (the process died) or, if it only stopped
answering, once its leases run out.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    Connection,
    Date,
    Engine,
    Integer,
    Row,
    Select,
    Table,
    and_,
    any_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from ..clock import utc_now
from ..errors import DatabaseConnectionLost, StoreError, SubscriberError
from .addresses import MAX_NAME_CHARS, normalize_email, normalize_names
from .migrations import (
    METADATA,
    OPEN_ROW,
    OPEN_STATES,
    UtcDateTime,
    deliveries,
    events,
    outbox,
    runs,
    subscribers,
    upgrade,
)

log = logging.getLogger(__name__)

STATUSES = ("pending", "active", "unsubscribed", "bounced")
#: How often a subscriber gets the digest: each day's, or the week's on their weekday.
FREQUENCIES = ("daily", "weekly")
#: Kinds of ledger row: a day's digest, or the digest of the seven days ending with the row's day.
DELIVERY_KINDS = ("daily", "weekly")
#: Ledger states of one (day, subscriber).
LEDGER_STATES = ("pending", "sending", "sent", "failed-temporary", "failed-permanent", "skipped")
#: States a run still has work for: `sending` is a message a crashed run may or may not have sent.
#: Rows a day's preparation adds before it has PostgreSQL's planner count them (see prepare_day).
ANALYZE_AFTER = 1000
#: How long a worker holds the ledger rows it claims (PostgreSQL) unless it renews them; the default
#: of ``digest.lease_seconds``, which explains the choice.
LEDGER_LEASE = timedelta(minutes=5)
#: A SQLite run claim whose owner has not written for this long is taken over even if its pid lives
#: (the pid may have been reused, or the owner is on another host sharing the file).
STALE_CLAIM = timedelta(minutes=15)
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: What the outbox holds: subscribe forms to act on, and confirmation mails to send.
#: ("manage": the link to the preference centre, for an active subscriber who submitted the form again.)
OUTBOX_KINDS = ("subscribe", "confirm", "manage")
#: The mails :meth:`Store.accept_subscribe` queues, counted together for the per-address hourly limit.
SUBSCRIBE_MAILS = ("confirm", "manage")
#: Outbox states: `queued` until done; `done` (a form acted on), `sent` (after the server's 250),
#: `skipped` (no longer needed), `failed` (a 5xx) and `expired` (past the queue's lifetime) are final.
OUTBOX_STATES = ("queued", "done", "sent", "skipped", "failed", "expired")
FINISHED_OUTBOX_STATES = OUTBOX_STATES[1:]
#: What a report recorded by :meth:`Store.record_event` did.
EVENT_OUTCOMES = ("recorded", "bounced", "unsubscribed", "duplicate", "unknown")
#: The values that end a worker's lease on an outbox row.
_RELEASED: dict[str, Any] = {"lease_owner": None, "lease_until": None}


def _now(now: datetime | None) -> datetime:
    """``now`` checked to be aware, or the clock's time when the caller passed none."""
    if now is None:
        return utc_now()
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return now


def _join(values: Sequence[str]) -> str:
    return json.dumps(list(values), ensure_ascii=False) if values else ""


def _split(value: str) -> tuple[str, ...]:
    return tuple(json.loads(value)) if value else ()


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: int
    email: str
    name: str
    status: str  #: pending, active, unsubscribed or bounced
    categories: tuple[str, ...]  #: chosen categories; with tags both empty = everything
    tags: tuple[str, ...]
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    bounced_at: datetime | None = None
    permanent_failures: int = 0
    frequency: str = "daily"  #: daily or weekly
    weekday: int = 0  #: the weekday a weekly digest arrives, 0 = Monday
    paused_until: datetime | None = None  #: nothing is sent before this time

    def paused(self, now: datetime) -> bool:
        return self.paused_until is not None and self.paused_until > now

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "email": self.email,
            "name": self.name,
            "status": self.status,
            "categories": list(self.categories),
            "tags": list(self.tags),
            "created_at": iso(self.created_at),
            "confirmed_at": iso(self.confirmed_at),
            "unsubscribed_at": iso(self.unsubscribed_at),
            "bounced_at": iso(self.bounced_at),
            "permanent_failures": self.permanent_failures,
            "frequency": self.frequency,
            "weekday": self.weekday,
            "paused_until": iso(self.paused_until),
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One ledger row: what happened to one subscriber's digest of one day."""

    day: date
    subscriber_id: int
    email: str
    state: str
    attempts: int
    last_error: str
    message_id: str
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    kind: str = "daily"  #: daily, or weekly (the seven days ending with ``day``)


@dataclass(frozen=True, slots=True)
class Claim:
    """A ledger row a run has taken, with its subscriber as it is now."""

    delivery: Delivery
    subscriber: Subscriber


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One outbox row: a subscribe form to act on or a mail to send, with its attempts."""

    id: int
    kind: str
    email: str
    payload: dict[str, Any]
    message_id: str
    state: str
    attempts: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_until: datetime | None
    last_error: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _subscriber(row: Row[Any]) -> Subscriber:
    m = row._mapping
    return Subscriber(
        id=m["id"], email=m["email"], name=m["name"], status=m["status"],
        categories=_split(m["categories"]), tags=_split(m["tags"]),
        created_at=m["created_at"], confirmed_at=m["confirmed_at"], unsubscribed_at=m["unsubscribed_at"],
        bounced_at=m["bounced_at"], permanent_failures=m["permanent_failures"],
        frequency=m["frequency"], weekday=m["weekday"], paused_until=m["paused_until"],
    )


def _delivery(row: Row[Any]) -> Delivery:
    m = row._mapping
    return Delivery(
        day=m["day"], subscriber_id=m["subscriber_id"], email=m["email"], state=m["state"],
        attempts=m["attempts"], last_error=m["last_error"], message_id=m["message_id"],
        created_at=m["created_at"], updated_at=m["updated_at"], sent_at=m["sent_at"], kind=m["kind"],
    )


def _outbox_row(row: Row[Any]) -> OutboxRow:
    m = row._mapping
    return OutboxRow(
        id=m["id"], kind=m["kind"], email=m["email"], payload=json.loads(m["payload"]) if m["payload"] else {},
        message_id=m["message_id"], state=m["state"], attempts=m["attempts"], next_attempt_at=m["next_attempt_at"],
        lease_owner=m["lease_owner"], lease_until=m["lease_until"], last_error=m["last_error"],
        created_at=m["created_at"], updated_at=m["updated_at"], finished_at=m["finished_at"],
    )


def _queue(conn: Connection, kind: str, email: str, payload: dict[str, Any], message_id: str, now: datetime) -> int:
    result = conn.execute(outbox.insert().values(
        kind=kind, email=email, email_key=email.lower(), payload=json.dumps(payload, ensure_ascii=False),
        message_id=message_id, state="queued", attempts=0, next_attempt_at=now, last_error="",
        created_at=now, updated_at=now))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _subscriber_values(address: str, name: str, categories: Iterable[str], tags: Iterable[str], confirmed: bool,
                       now: datetime) -> dict[str, Any]:
    """The columns a (re)subscription sets, as :meth:`Store.add_subscriber` and the outbox write them."""
    return {
        "email": address,
        "name": _clean_name(name),
        "categories": _join(normalize_names(categories, "category")),
        "tags": _join(normalize_names(tags, "tag")),
        "status": "active" if confirmed else "pending",
        "confirmed_at": now if confirmed else None,
        "unsubscribed_at": None,
        "bounced_at": None,
        "permanent_failures": 0,
        "paused_until": None,
    }


def new_owner() -> str:
    """A name for one run of one process: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # cannot tell from here; the staleness limit decides
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Subscribers and the delivery ledger. Open with :meth:`Store.open`; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._run_connections: dict[date, Connection] = {}
        self._lock = threading.Lock()
        self._schema_name = ""

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Store:
        """Open the database at ``url``, creating the SQLite folder and the schema, upgrading an old one."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StoreError(f"database.url = {url!r} is not a database URL",
                             hint="use sqlite:///var/finews.sqlite3 or postgresql+psycopg://user@host/db") from None
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"database.url = {url!r}: only sqlite and postgresql are supported")
        kwargs: dict[str, Any] = {}
        if backend == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the folder of {database}: {exc.strerror}") from None
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = create_engine(parsed, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise StoreError(f"database.url = {url!r}: {exc}") from None
        if backend == "sqlite":
            _sqlite_setup(engine)
        store = cls(engine)
        try:
            with engine.begin() as conn:
                before = upgrade(conn)
                if store.dialect == "postgresql":
                    store._schema_name = str(conn.execute(text("SELECT current_schema()")).scalar() or "")
        except OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the database {parsed.render_as_string(hide_password=True)}: "
                             f"{_reason(exc)}") from None
        if before == 0:
            log.info("created the subscriber database %s", parsed.render_as_string(hide_password=True))
        return store

    def close(self) -> None:
        for conn in list(self._run_connections.values()):
            conn.close()
        self._run_connections.clear()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise _store_error(exc) from None

    # -- subscribers ---------------------------------------------------------------------------

    def add_subscriber(
        self,
        email: str,
        name: str = "",
        categories: Iterable[str] = (),
        tags: Iterable[str] = (),
        confirmed: bool = False,
        now: datetime | None = None,
    ) -> Subscriber:
        """Add a subscriber (``pending``, or ``active`` when ``confirmed``).

        An address that unsubscribed or bounced is taken back with the new choices, since its owner
        asked again; an address already pending or active is a :class:`SubscriberError`.
        """
        now = _now(now)
        address = normalize_email(email)
        values = _subscriber_values(address, name, categories, tags, confirmed, now)
        with self._tx() as conn:
            existing = _find(conn, address)
            if existing is None:
                try:
                    conn.execute(subscribers.insert().values(email_key=address.lower(), created_at=now, **values))
                except IntegrityError:
                    raise SubscriberError(f"{address} is already a subscriber") from None
            elif existing.status in ("pending", "active"):
                raise SubscriberError(f"{address} is already a subscriber (status {existing.status})")
            else:
                conn.execute(subscribers.update().where(subscribers.c.id == existing.id).values(**values))
            row = conn.execute(select(subscribers).where(subscribers.c.email_key == address.lower())).one()
        return _subscriber(row)

    def get_subscriber(self, email: str) -> Subscriber | None:
        with self._tx() as conn:
            row = _find(conn, email)
        return _subscriber(row) if row else None

    def _require(self, conn: Connection, email: str) -> Row[Any]:
        row = _find(conn, email)
        if row is None:
            raise SubscriberError(f"{email.strip()} is not a subscriber")
        return row

    def confirm(self, email: str, now: datetime | None = None) -> Subscriber:
        """Make a pending subscriber active (double opt-in); other states stay as they are."""
        now = _now(now)
        with self._tx() as conn:
            row = self._require(conn, email)
            if row.status == "pending":
                conn.execute(subscribers.update().where(subscribers.c.id == row.id)
                             .values(status="active", confirmed_at=now))
            row = conn.execute(select(subscribers).where(subscribers.c.id == row.id)).one()
        return _subscriber(row)

    def unsubscribe(self, email: str, now: datetime | None = None) -> Subscriber | None:
        """Unsubscribe; idempotent (the first time is kept). None when the address is unknown."""
        now = _now(now)
        with self._tx() as conn:
            row = _find(conn, email)
            if row is None:
                return None
            if row.status != "unsubscribed":
                conn.execute(subscribers.update().where(subscribers.c.id == row.id)
                             .values(status="unsubscribed", unsubscribed_at=now))
            row = conn.execute(select(subscribers).where(subscribers.c.id == row.id)).one()
        return _subscriber(row)

    def set_selection(self, email: str, categories: Iterable[str] = (), tags: Iterable[str] = ()) -> Subscriber:
        """Change what a subscriber receives (both empty = everything)."""
        cats = _join(normalize_names(categories, "category"))
        tag_text = _join(normalize_names(tags, "tag"))
        with self._tx() as conn:
            row = self._require(conn, email)
            conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(categories=cats, tags=tag_text))
            row = conn.execute(select(subscribers).where(subscribers.c.id == row.id)).one()
        return _subscriber(row)

    def update_preferences(self, email: str, *, categories: Iterable[str], tags: Iterable[str], frequency: str,
                           weekday: int) -> Subscriber:
        """What the manage page saves: the selection (both empty = everything), daily or weekly, the weekday."""
        if frequency not in FREQUENCIES:
            raise SubscriberError(f"frequency {frequency!r} is not one of {', '.join(FREQUENCIES)}")
        if not 0 <= weekday <= 6:
            raise SubscriberError(f"weekday {weekday} is not 0 (Monday) to 6 (Sunday)")
        values = {"categories": _join(normalize_names(categories, "category")),
                  "tags": _join(normalize_names(tags, "tag")), "frequency": frequency, "weekday": weekday}
        return self._update(email, **values)

    def pause(self, email: str, until: datetime | None) -> Subscriber:
        """Send nothing to ``email`` before ``until`` (None: resume now)."""
        if until is not None and until.tzinfo is None:
            raise ValueError("until must be an aware datetime")
        return self._update(email, paused_until=until)

    def resubscribe(self, email: str, now: datetime | None = None) -> Subscriber:
        """An unsubscribed or bounced subscriber back to `active` from their manage link (the link, sent to
        their mailbox, is the proof a confirmation mail would ask for); other states stay as they are."""
        now = _now(now)
        with self._tx() as conn:
            row = self._require(conn, email)
            if row.status in ("unsubscribed", "bounced"):
                conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(
                    status="active", confirmed_at=row.confirmed_at or now, unsubscribed_at=None, bounced_at=None,
                    permanent_failures=0))
            row = conn.execute(select(subscribers).where(subscribers.c.id == row.id)).one()
        return _subscriber(row)

    def _update(self, email: str, **values: Any) -> Subscriber:
        with self._tx() as conn:
            row = self._require(conn, email)
            conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(**values))
            row = conn.execute(select(subscribers).where(subscribers.c.id == row.id)).one()
        return _subscriber(row)

    def subscriber_data(self, email: str, now: datetime | None = None) -> dict[str, Any] | None:
        """Everything stored about ``email`` (GDPR art. 15), as JSON-ready data; None when unknown.

        ``subscriber`` is their row; then, per table that names a subscriber (a ``subscriber_id`` or
        ``email_key`` column, see :mod:`.migrations`), a list of its rows under the table's name:
        ``deliveries`` (the ledger), ``outbox`` (forms and mails), and any table added later.
        """
        now = _now(now)
        with self._tx() as conn:
            row = _find(conn, email)
            if row is None:
                return None
            data: dict[str, Any] = {"format": EXPORT_FORMAT, "exported_at": now.isoformat(),
                                    "subscriber": _exported(subscribers.name, row)}
            for table, where in _personal_tables(row):
                order = [c for c in table.primary_key.columns] or list(table.columns)[:1]
                data[table.name] = [_exported(table.name, r) for r in conn.execute(
                    select(table).where(where).order_by(*order))]
        return data

    def erase_subscriber(self, email: str) -> Subscriber | None:
        """Delete ``email``'s row and every row of every table that names them (GDPR art. 17); the
        deleted subscriber, or None when unknown. One transaction: all of it goes, or nothing."""
        with self._tx() as conn:
            row = _find(conn, email)
            if row is None:
                return None
            for table, where in _personal_tables(row):
                conn.execute(table.delete().where(where))
            conn.execute(subscribers.delete().where(subscribers.c.id == row.id))
        return _subscriber(row)

    def remove_subscriber(self, email: str) -> Subscriber:
        """Delete a subscriber, their ledger and outbox rows (erasure); :class:`SubscriberError` if unknown."""
        removed = self.erase_subscriber(email)
        if removed is None:
            raise SubscriberError(f"{email.strip()} is not a subscriber")
        return removed

    def list_subscribers(self, status: str | None = None) -> list[Subscriber]:
        if status is not None and status not in STATUSES:
            raise SubscriberError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        query = select(subscribers).order_by(subscribers.c.id)
        if status is not None:
            query = query.where(subscribers.c.status == status)
        with self._tx() as conn:
            return [_subscriber(row) for row in conn.execute(query)]

    def active_subscribers(self) -> list[Subscriber]:
        return self.list_subscribers("active")

    def count_subscribers(self) -> dict[str, int]:
        return self._counts(subscribers.c.status, STATUSES)

    def _counts(self, column: Any, values: Sequence[str], *where: Any) -> dict[str, int]:
        """Rows by their value of ``column`` (of those matching ``where``), every one of ``values`` listed."""
        with self._tx() as conn:
            rows = conn.execute(select(column, func.count()).where(*where).group_by(column)).all()
        counts = dict.fromkeys(values, 0)
        counts.update({value: int(n) for value, n in rows})
        return counts

    def import_subscribers(self, rows: Sequence[Subscriber], now: datetime | None = None) -> tuple[int, int]:
        """Insert the subscribers whose address is not yet known, in one transaction.

        Known addresses are left exactly as they are (an old file must not resubscribe someone who
        left), which also makes importing a file twice change nothing. Returns (added, already present).
        """
        now = _now(now)
        added = present = 0
        with self._tx() as conn:
            known = {key for (key,) in conn.execute(select(subscribers.c.email_key))}
            for sub in rows:
                key = sub.email.lower()
                if key in known:
                    present += 1
                    continue
                known.add(key)
                conn.execute(subscribers.insert().values(
                    email=sub.email, email_key=key, name=_clean_name(sub.name), status=sub.status,
                    categories=_join(sub.categories), tags=_join(sub.tags),
                    created_at=sub.created_at or now, confirmed_at=sub.confirmed_at,
                    unsubscribed_at=sub.unsubscribed_at, bounced_at=sub.bounced_at, permanent_failures=0,
                    frequency=sub.frequency, weekday=sub.weekday, paused_until=sub.paused_until,
                ))
                added += 1
        return added, present

    # -- run claims ----------------------------------------------------------------------------

    def _advisory_key(self, day: date) -> tuple[int, int]:
        # Two ints: a constant for "finews digest day" mixed with the schema (tests and sites
        # sharing one PostgreSQL database use separate schemas), and the day.
        namespace = zlib.crc32(f"finews-digest:{self._schema_name}".encode()) & 0x7FFFFFFF
        return namespace, day.toordinal()

    def _worker_namespace(self) -> int:
        return zlib.crc32(f"finews-worker:{self._schema_name}".encode()) & 0x7FFFFFFF

    def try_claim_run(self, day: date, owner: str, now: datetime | None = None) -> str | None:
        """Start sending ``day``'s digest as ``owner``. None on success, else who holds the day now.

        SQLite: one sender a day (the ``runs`` row names it). PostgreSQL: any number of workers share
        the day, each row leased by :meth:`claim_batch`; a worker holds a session advisory lock named
        after itself on a connection of its own, so that the others can tell at once that it is gone
        (the server frees the lock with the session) and take its rows over without waiting for
        their leases to run out.
        """
        now = _now(now)
        if self.dialect == "postgresql":
            with self._lock:
                if day in self._run_connections:
                    return "another run in this process"
                try:
                    conn = self.engine.connect()
                except OperationalError as exc:
                    raise _store_error(exc) from None
                try:
                    conn.execute(text("SELECT pg_advisory_lock(:a, :b)"),
                                 {"a": self._worker_namespace(), "b": _owner_key(owner)})
                    conn.commit()
                except SQLAlchemyError as exc:
                    conn.close()
                    if isinstance(exc, OperationalError):
                        raise _store_error(exc) from None
                    raise
                self._run_connections[day] = conn
        with self._tx() as conn:
            if self.dialect == "postgresql":
                # Workers starting together: one inserts the day's row, the others count themselves in.
                conn.execute(pg_insert(runs).values(day=day, owner=owner, started_at=now, heartbeat_at=now,
                                                    attempts=0).on_conflict_do_nothing(index_elements=["day"]))
            row = conn.execute(select(runs).where(runs.c.day == day)).first()
            if row is None:
                conn.execute(runs.insert().values(day=day, owner=owner, started_at=now, heartbeat_at=now, attempts=1))
                return None
            if self.dialect != "postgresql" and row.owner and row.owner != owner:
                beat = row.heartbeat_at or row.started_at
                if _owner_alive(row.owner) and now - beat < STALE_CLAIM:
                    return str(row.owner)
                log.warning("taking over the %s digest run from %s, which is gone", day, row.owner)
            conn.execute(runs.update().where(runs.c.day == day).values(
                owner=owner, heartbeat_at=now, finished_at=None, attempts=runs.c.attempts + 1))
        return None

    def _heartbeat(self, conn: Connection, day: date, now: datetime, owner: str | None = None) -> None:
        """The day's claim is alive, in a commit that happens anyway: a slow, rate-limited run stays fresh.

        SQLite only, where one sender holds the day and :meth:`try_claim_run` reads the heartbeat to
        take over from a sender that is gone. Workers sharing a day on PostgreSQL are told apart by
        their leases and advisory locks instead; updating the day's one `runs` row from each worker's
        batch commits would make those commits wait for each other."""
        if self.dialect == "postgresql":
            return
        where = [runs.c.day == day, runs.c.owner == owner if owner is not None else runs.c.owner.is_not(None)]
        conn.execute(runs.update().where(*where).values(heartbeat_at=now))

    def release_run(self, day: date, owner: str, now: datetime | None = None, finished: bool = True) -> None:
        """Give up the claim; ``finished`` records that the run went through its whole list.

        The rows ``owner`` still leases and has not finished are handed back (another worker may take
        them at once): a run that stops sends nothing more.
        """
        now = _now(now)
        values: dict[str, Any] = {"owner": None, "heartbeat_at": now}
        if finished:
            values["finished_at"] = now
        try:
            with self._tx() as conn:
                conn.execute(runs.update().where(and_(runs.c.day == day, runs.c.owner == owner)).values(**values))
                if self.dialect == "postgresql":
                    conn.execute(deliveries.update().where(
                        deliveries.c.day == day, deliveries.c.run_owner == owner,
                        deliveries.c.state.in_(OPEN_STATES), deliveries.c.lease_until.is_not(None),
                    ).values(lease_until=None))
        finally:
            with self._lock:
                conn2 = self._run_connections.pop(day, None)
            if conn2 is not None:
                try:
                    conn2.execute(text("SELECT pg_advisory_unlock(:a, :b)"),
                                  {"a": self._worker_namespace(), "b": _owner_key(owner)})
                    conn2.commit()
                except SQLAlchemyError as exc:
                    # Only a session that is gone fails here, and the server freed its lock with it: nothing
                    # is left to undo, and this must not hide the error that ended the run.
                    log.debug("the claim on the %s digest went with its database session (%s)", day, _reason(exc))
                    conn2.invalidate()
                finally:
                    conn2.close()

    def check_claim(self, day: date) -> None:
        """Raise :class:`DatabaseConnectionLost` when the PostgreSQL session holding this worker's claim has
        ended (a server restart, a terminated backend): the other workers now count it as gone and take
        its rows, so it must not send on. A no-op on SQLite and without a claim."""
        conn = self._run_connections.get(day)
        if conn is None:
            return
        try:
            conn.execute(text("SELECT 1"))
            conn.commit()
        except SQLAlchemyError as exc:
            raise DatabaseConnectionLost(f"the database connection was lost (the session holding the claim on "
                                         f"the day ended: {_reason(exc)})") from None

    def _gone_owners(self, conn: Connection, day: date, owner: str, now: datetime) -> list[str]:
        """The other workers holding unexpired leases on ``day`` whose database session has ended."""
        holders = [str(name) for (name,) in conn.execute(
            select(deliveries.c.run_owner).distinct().where(
                deliveries.c.day == day, deliveries.c.state.in_(OPEN_STATES), deliveries.c.lease_until > now,
                deliveries.c.run_owner != owner))]
        if not holders:
            return []
        live = {int(key) for (key,) in conn.execute(
            text("SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = :a AND objsubid = 2 "
                 "AND granted"), {"a": self._worker_namespace()})}
        return [name for name in holders if _owner_key(name) not in live]

    def held_elsewhere(self, day: date, owner: str, now: datetime | None = None) -> int:
        """Open rows of ``day`` that other live workers hold now (PostgreSQL; always 0 on SQLite, where
        the day has one sender): a worker that has nothing left to claim waits for these, and takes
        over those whose worker dies or whose lease runs out."""
        if self.dialect != "postgresql":
            return 0
        now = _now(now)
        with self._tx() as conn:
            gone = self._gone_owners(conn, day, owner, now)
            count = conn.execute(select(func.count()).select_from(deliveries).where(
                deliveries.c.day == day, deliveries.c.state.in_(OPEN_STATES), deliveries.c.lease_until > now,
                deliveries.c.run_owner != owner, deliveries.c.run_owner.not_in(gone))).scalar()
        return int(count or 0)

    def run_info(self, day: date) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(select(runs).where(runs.c.day == day)).first()
        return dict(row._mapping) if row else None

    # -- ledger --------------------------------------------------------------------------------

    def prepare_day(self, day: date, now: datetime | None = None, weekly_on: int | None = None) -> int:
        """Give every subscriber due a digest in ``day``'s run and without a row a `pending` one; returns how many
        were added.

        Due: active and not paused at ``now``; daily subscribers every day, weekly ones when the run
        is on their weekday (``weekly_on``, 0 = Monday: the weekday the run's mail arrives, which
        the caller knows from ``digest.covers``; None: no weekly digests in this run). A weekly row
        (kind ``weekly``: the seven days ending with ``day``) is not added when the subscriber has
        one for any of the six days before, so a weekday changed after a weekly digest went out
        gives no second one that week. Rows are keyed by (day, subscriber) as before, so a rerun of
        the day adds nothing.
        """
        now = _now(now)
        c = subscribers.c
        have = select(deliveries.c.subscriber_id).where(deliveries.c.day == day)
        due = and_(c.status == "active", c.id.not_in(have), or_(c.paused_until.is_(None), c.paused_until <= now))
        kinds = [("daily", c.frequency != "weekly")]
        if weekly_on is not None:
            recent = select(deliveries.c.subscriber_id).where(
                deliveries.c.kind == "weekly", deliveries.c.day >= day - timedelta(days=6), deliveries.c.day < day)
            kinds.append(("weekly", and_(c.frequency == "weekly", c.weekday == weekly_on, c.id.not_in(recent))))
        added = 0
        columns = ["day", "subscriber_id", "email", "state", "attempts", "last_error", "message_id", "created_at",
                   "updated_at", "kind"]
        with self._tx() as conn:
            for kind, wanted in kinds:
                # One INSERT ... SELECT: the rows never leave the database (20,000 of them took 1.8 s as
                # an executemany from here on PostgreSQL, most of it spent rendering the statements).
                rows = select(literal(day, Date), c.id, c.email, literal("pending"), literal(0), literal(""),
                              literal(""), literal(now, UtcDateTime), literal(now, UtcDateTime),
                              literal(kind)).where(due, wanted)
                if self.dialect == "postgresql":
                    # Workers sharing the day prepare it at once: a row another one added meanwhile stays.
                    added += len(conn.execute(pg_insert(deliveries).from_select(columns, rows).on_conflict_do_nothing(
                        index_elements=["day", "subscriber_id"]).returning(deliveries.c.subscriber_id)).all())
                else:
                    added += conn.execute(deliveries.insert().from_select(columns, rows)).rowcount
        if added >= ANALYZE_AFTER and self.dialect == "postgresql":
            # Until autovacuum samples the new rows (a minute or more later) the planner takes the day
            # for a handful of rows and reads the whole day through the (day, state) index for every
            # batch's `subscriber_id IN (...)`: 26 ms a statement at 20,000 rows, which held a send on
            # PostgreSQL under 400 msgs/s. With the rows counted it takes the primary key (0.2 ms).
            with self._tx() as conn:
                conn.execute(text("ANALYZE deliveries"))
        return added

    def claim_next(self, day: date, owner: str, now: datetime | None = None) -> Claim | None:
        """Take the next open row of ``day`` this run has not taken yet (each row at most once per run)."""
        claims = self.claim_batch(day, owner, now, limit=1)
        return claims[0] if claims else None

    def claim_batch(self, day: date, owner: str, now: datetime | None = None, limit: int = 50,
                    lease: timedelta = LEDGER_LEASE) -> list[Claim]:
        """Take up to ``limit`` open rows of ``day`` this run has not taken yet, in subscriber order.

        Claiming marks a row as seen by this run (so a failed one is not retried in a loop); its
        state changes only in :meth:`start_sending`, which checks the subscriber again. On
        PostgreSQL the rows are read ``FOR UPDATE SKIP LOCKED`` and leased to ``owner`` for
        ``lease`` in the same transaction, so workers sharing the day never take one row at once;
        a row leased by another worker is taken only once its lease has run out or that worker's
        session is gone (see :meth:`try_claim_run`).
        """
        now = _now(now)
        conditions = [
            deliveries.c.day == day,
            literal_column(f"deliveries.{OPEN_ROW}", Boolean),  # as written, so that ix_deliveries_open serves it
            or_(deliveries.c.run_owner.is_(None), deliveries.c.run_owner != owner),
        ]

        def query(gone: list[str]) -> Select[Any]:
            if self.dialect != "postgresql":
                return select(deliveries).where(*conditions).order_by(deliveries.c.subscriber_id).limit(limit)
            leased_elsewhere = or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until <= now,
                                   deliveries.c.run_owner.in_(gone))
            return (select(deliveries).where(*conditions, leased_elsewhere).order_by(deliveries.c.subscriber_id)
                    .limit(limit).with_for_update(skip_locked=True))

        with self._tx() as conn:
            rows = conn.execute(query([])).all()
            if len(rows) < limit and self.dialect == "postgresql":
                # Rows leased to workers that are gone, only when the free rows run short: finding those
                # workers reads every open row of the day (2-4 ms at 20,000), too much for every batch.
                gone = self._gone_owners(conn, day, owner, now)
                if gone:
                    rows = conn.execute(query(gone)).all()
            if not rows:
                return []
            ids = [row.subscriber_id for row in rows]
            conn.execute(deliveries.update().where(deliveries.c.day == day, self._among(deliveries.c.subscriber_id, ids))
                         .values(run_owner=owner, lease_until=now + lease if self.dialect == "postgresql" else None))
            subs = {row.id: _subscriber(row) for row in conn.execute(select(subscribers)
                                                                      .where(self._among(subscribers.c.id, ids)))}
            self._heartbeat(conn, day, now, owner)
        return [Claim(_delivery(row), subs[row.subscriber_id]) for row in rows if row.subscriber_id in subs]

    def _among(self, column: Any, ids: list[int]) -> Any:
        """``column IN ids``; on PostgreSQL ``= ANY(array)``: one statement text for any number of ids,
        which psycopg and the server take from their caches instead of parsing a new IN list each batch
        (that parse was a fifth of the ledger process's time at 20,000 subscribers, py-spy)."""
        if self.dialect == "postgresql":
            return column == any_(bindparam(None, ids, type_=ARRAY(Integer)))
        return column.in_(ids)

    def mark_sending(self, day: date, subscriber_id: int, message_id: str, now: datetime | None = None) -> None:
        """Recorded and committed before DATA: if we die now, the next run resends with this Message-ID."""
        self._set(day, subscriber_id, now, state="sending", message_id=message_id)

    def start_sending(self, day: date, subscriber_id: int, message_id: str, now: datetime | None = None,
                      owner: str | None = None, lease: timedelta = LEDGER_LEASE) -> str:
        """:meth:`mark_sending` if the subscriber is still active and not paused, else record the row `skipped`.

        One transaction, so someone who unsubscribed a moment ago is not sent to. Returns the
        subscriber's status (``"active"`` when the message may go). With ``owner``, the row must
        still be that worker's (else nothing is written and ``"taken"`` is returned: its lease ran
        out and another worker has it), and on PostgreSQL its lease is renewed for ``lease``, so a
        message is never in flight on a lease about to run out.
        """
        now = _now(now)
        with self._tx() as conn:
            row = conn.execute(select(subscribers.c.status, subscribers.c.paused_until)
                               .where(subscribers.c.id == subscriber_id)).first()
            status = str(row.status) if row is not None else "removed"
            if status == "active" and row is not None and row.paused_until is not None and row.paused_until > now:
                status = "paused"  # since the day was prepared: nothing goes out until the pause ends
            if status == "active":
                values: dict[str, Any] = {"state": "sending", "message_id": message_id}
            else:
                values = {"state": "skipped", "last_error": f"subscriber is {status}"}
            where = [_key(day, subscriber_id)]
            if owner is not None:
                where.append(deliveries.c.run_owner == owner)
                if self.dialect == "postgresql":
                    values["lease_until"] = now + lease
            done = conn.execute(deliveries.update().where(*where).values(updated_at=now, **values))
            if owner is not None and not done.rowcount:
                return "taken"
            self._heartbeat(conn, day, now)
        return status

    def start_sending_batch(self, day: date, rows: Sequence[tuple[int, str]], now: datetime | None = None,
                            skipped: Mapping[int, str] | None = None, owner: str | None = None,
                            lease: timedelta = LEDGER_LEASE) -> dict[int, str]:
        """:meth:`start_sending` for many rows in one transaction (one commit, one fsync).

        ``rows`` are (subscriber id, Message-ID); each row whose subscriber is still active (and not
        paused) is committed `sending` with its Message-ID, any other `skipped` ("subscriber is
        <status>", the status ``paused`` for a pause).
        ``skipped`` (subscriber id -> reason) records rows the caller skips itself in the same
        commit. The statuses are read ``FOR SHARE`` on PostgreSQL (SQLite's write lock does the
        same): an unsubscribe that commits first is seen, one that comes later waits for this
        commit. Returns each row's subscriber status (``"active"``: its message may go).

        With ``owner`` (a worker sharing the day), only the rows still leased to it are written, their
        leases renewed for ``lease`` on PostgreSQL; any other is ``"taken"``: its lease ran out and
        another worker has it, so it must not be sent from here. The owned rows are locked first, so
        a worker claiming at the same moment skips them.
        """
        now = _now(now)
        ids = [sid for sid, _ in rows]
        with self._tx() as conn:
            taken: set[int] = set()
            if owner is not None:
                owned: set[int] = set()
                for chunk in _chunks(list({*ids, *(skipped or {})})):
                    mine = select(deliveries.c.subscriber_id).where(
                        deliveries.c.day == day, self._among(deliveries.c.subscriber_id, chunk),
                        deliveries.c.run_owner == owner)
                    if self.dialect == "postgresql":
                        mine = mine.with_for_update()
                    owned.update(int(sid) for (sid,) in conn.execute(mine))
                taken = {sid for sid in [*ids, *(skipped or {})] if sid not in owned}
                rows = [(sid, mid) for sid, mid in rows if sid not in taken]
                skipped = {sid: why for sid, why in (skipped or {}).items() if sid not in taken}
            renew: dict[str, Any] = {}
            if owner is not None and self.dialect == "postgresql":
                renew["lease_until"] = now + lease
            statuses: dict[int, str] = {}
            for chunk in _chunks(ids):
                query = (select(subscribers.c.id, subscribers.c.status, subscribers.c.paused_until)
                         .where(self._among(subscribers.c.id, chunk)))
                if self.dialect == "postgresql":
                    query = query.with_for_update(read=True)
                # Paused since the day was prepared: nothing goes out until the pause ends.
                statuses.update({int(sid): "paused" if status == "active" and until is not None and until > now
                                 else str(status) for sid, status, until in conn.execute(query)})
            sending = [{"d": day, "sid": sid, "mid": mid} for sid, mid in rows if statuses.get(sid) == "active"]
            skips = [{"d": day, "sid": sid, "why": f"subscriber is {statuses.get(sid, 'removed')}"}
                     for sid, _ in rows if statuses.get(sid) != "active"]
            skips += [{"d": day, "sid": sid, "why": why} for sid, why in (skipped or {}).items()]
            where = and_(deliveries.c.day == bindparam("d"), deliveries.c.subscriber_id == bindparam("sid"))
            if sending:
                conn.execute(deliveries.update().where(where).values(
                    state="sending", message_id=bindparam("mid"), updated_at=now, **renew), sending)
            if skips:
                conn.execute(deliveries.update().where(where).values(
                    state="skipped", last_error=bindparam("why"), updated_at=now), skips)
            self._heartbeat(conn, day, now)
        return {sid: "taken" if sid in taken else statuses.get(sid, "removed") for sid in ids}

    def mark_sent_batch(self, day: date, subscriber_ids: Sequence[int], now: datetime | None = None) -> None:
        """:meth:`mark_sent` for many rows in one transaction (a group commit). One row goes through
        :meth:`mark_sent` itself, so a subclass that wraps it sees every commit of a one-by-one send."""
        if len(subscriber_ids) == 1:
            self.mark_sent(day, subscriber_ids[0], now)
            return
        if not subscriber_ids:
            return
        now = _now(now)
        with self._tx() as conn:
            for chunk in _chunks(list(subscriber_ids)):
                conn.execute(deliveries.update().where(deliveries.c.day == day, self._among(deliveries.c.subscriber_id, chunk))
                             .values(state="sent", attempts=deliveries.c.attempts + 1, last_error="", sent_at=now,
                                     updated_at=now))
                conn.execute(subscribers.update().where(self._among(subscribers.c.id, chunk),
                                                        subscribers.c.permanent_failures != 0)
                             .values(permanent_failures=0))

    def mark_sent(self, day: date, subscriber_id: int, now: datetime | None = None) -> None:
        now = _now(now)
        with self._tx() as conn:
            conn.execute(deliveries.update().where(_key(day, subscriber_id)).values(
                state="sent", attempts=deliveries.c.attempts + 1, last_error="", sent_at=now, updated_at=now))
            conn.execute(subscribers.update().where(subscribers.c.id == subscriber_id).values(permanent_failures=0))

    def mark_temporary(self, day: date, subscriber_id: int, error: str, now: datetime | None = None) -> None:
        self._set(day, subscriber_id, now, state="failed-temporary", last_error=error,
                  attempts=deliveries.c.attempts + 1)

    def mark_permanent(self, day: date, subscriber_id: int, error: str, bounce_after: int,
                       now: datetime | None = None) -> bool:
        """Record a 5xx; returns True when this failure made the subscriber `bounced`."""
        now = _now(now)
        with self._tx() as conn:
            conn.execute(deliveries.update().where(_key(day, subscriber_id)).values(
                state="failed-permanent", attempts=deliveries.c.attempts + 1, last_error=error, updated_at=now))
            conn.execute(subscribers.update().where(subscribers.c.id == subscriber_id)
                         .values(permanent_failures=subscribers.c.permanent_failures + 1))
            row = conn.execute(select(subscribers.c.status, subscribers.c.permanent_failures)
                               .where(subscribers.c.id == subscriber_id)).one()
            if bounce_after > 0 and row.permanent_failures >= bounce_after and row.status == "active":
                conn.execute(subscribers.update().where(subscribers.c.id == subscriber_id)
                             .values(status="bounced", bounced_at=now))
                return True
        return False

    def mark_skipped(self, day: date, subscriber_id: int, reason: str, now: datetime | None = None) -> None:
        self._set(day, subscriber_id, now, state="skipped", last_error=reason)

    def _set(self, day: date, subscriber_id: int, now: datetime | None, **values: Any) -> None:
        with self._tx() as conn:
            conn.execute(deliveries.update().where(_key(day, subscriber_id)).values(updated_at=_now(now), **values))

    def ledger(self, day: date) -> list[Delivery]:
        with self._tx() as conn:
            rows = conn.execute(select(deliveries).where(deliveries.c.day == day).order_by(deliveries.c.subscriber_id))
            return [_delivery(row) for row in rows]

    def ledger_counts(self, day: date) -> dict[str, int]:
        return self._counts(deliveries.c.state, LEDGER_STATES, deliveries.c.day == day)

    # -- outbox --------------------------------------------------------------------------------

    def queue_subscribe(self, email: str, name: str = "", categories: Iterable[str] = (), tags: Iterable[str] = (),
                        now: datetime | None = None) -> int:
        """Queue a subscribe form for the worker; returns the row's id.

        This is all the web request does for an address, whatever its state (new, pending, active,
        unsubscribed): one insert, so neither the answer nor its timing says which it is. The
        worker acts on it after the answer (:meth:`accept_subscribe`).
        """
        address = normalize_email(email)
        payload = {
            "name": _clean_name(name),
            "categories": list(normalize_names(categories, "category")),
            "tags": list(normalize_names(tags, "tag")),
        }
        with self._tx() as conn:
            return _queue(conn, "subscribe", address, payload, "", _now(now))

    def queue_mail(self, kind: str, email: str, message_id: str, now: datetime | None = None,
                   payload: dict[str, Any] | None = None) -> int:
        """Queue one transactional mail of ``kind`` to ``email``; returns the row's id."""
        if kind not in OUTBOX_KINDS or kind == "subscribe":
            raise ValueError(f"unknown mail kind {kind!r}")
        with self._tx() as conn:
            return _queue(conn, kind, normalize_email(email), payload or {}, message_id, _now(now))

    def claim_outbox(self, owner: str, now: datetime, lease: timedelta, kinds: Sequence[str] = OUTBOX_KINDS,
                     limit: int = 1) -> list[OutboxRow]:
        """Take up to ``limit`` due rows of ``kinds`` for ``lease``, oldest due first.

        Two workers never hold one row: on PostgreSQL the rows are read ``FOR UPDATE SKIP
        LOCKED`` and leased in the same transaction, on SQLite the transaction holds the write
        lock. A worker that dies leaves its lease to run out; then another takes the row.
        """
        query = (
            select(outbox)
            .where(outbox.c.state == "queued", outbox.c.kind.in_(list(kinds)), outbox.c.next_attempt_at <= now,
                   _unleased(now))
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        until = now + lease
        with self._tx() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return []
            conn.execute(outbox.update().where(outbox.c.id.in_([row.id for row in rows]))
                         .values(lease_owner=owner, lease_until=until, updated_at=now))
        return [replace(_outbox_row(row), lease_owner=owner, lease_until=until) for row in rows]

    def finish_outbox(self, row_id: int, owner: str, state: str, now: datetime, note: str = "") -> bool:
        """Record the end of a row this worker holds (``sent`` only after the server's 250).

        False when the lease was lost (it ran out and another worker took the row): nothing is written.
        """
        if state not in FINISHED_OUTBOX_STATES:
            raise ValueError(f"unknown final outbox state {state!r}")
        with self._tx() as conn:
            done = conn.execute(outbox.update().where(*_held(row_id, owner)).values(
                state=state, attempts=outbox.c.attempts + 1, last_error=note, finished_at=now, updated_at=now,
                **_RELEASED))
        return bool(done.rowcount)

    def defer_outbox(self, row_id: int, owner: str, error: str, next_at: datetime, now: datetime) -> bool:
        """An attempt failed for now: try again at ``next_at`` (False when the lease was lost)."""
        with self._tx() as conn:
            done = conn.execute(outbox.update().where(*_held(row_id, owner)).values(
                attempts=outbox.c.attempts + 1, last_error=error, next_attempt_at=next_at, updated_at=now,
                **_RELEASED))
        return bool(done.rowcount)

    def accept_subscribe(self, request: OutboxRow, owner: str, now: datetime, message_id: str,
                         per_hour: int) -> str:
        """Act on a subscribe form in one transaction; returns what was done.

        A new, unsubscribed or bounced address becomes `pending` with the form's choices, a
        pending one gets the new choices; both get a confirmation mail queued. An active address
        is left as it is (a form is no proof of owning the address) and gets a mail with the link
        to its manage page instead, where its owner changes what they get. At most ``per_hour``
        of these mails an hour per address (counted over the outbox, so every daemon sharing the
        database counts the same). The outcomes: ``confirm`` or ``manage`` (that mail queued),
        ``limited`` (none: the address had ``per_hour`` already) and ``lost`` (the lease ran out
        and another worker has it).
        """
        payload = request.payload
        key = request.email.lower()
        try:
            with self._tx() as conn:
                held = conn.execute(select(outbox.c.id).where(*_held(request.id, owner))).first()
                if held is None:
                    return "lost"
                existing = _find(conn, request.email)
                values = _subscriber_values(request.email, str(payload.get("name", "")),
                                            payload.get("categories", ()), payload.get("tags", ()), False, now)
                if existing is None:
                    conn.execute(subscribers.insert().values(email_key=key, created_at=now, **values))
                elif existing.status in ("unsubscribed", "bounced"):
                    conn.execute(subscribers.update().where(subscribers.c.id == existing.id).values(**values))
                elif existing.status == "pending":
                    conn.execute(subscribers.update().where(subscribers.c.id == existing.id).values(
                        categories=values["categories"], tags=values["tags"]))
                outcome = "manage" if existing is not None and existing.status == "active" else "confirm"
                recent = conn.execute(select(func.count()).select_from(outbox).where(
                    outbox.c.email_key == key, outbox.c.kind.in_(SUBSCRIBE_MAILS),
                    outbox.c.created_at > now - timedelta(hours=1))).scalar()
                if int(recent or 0) >= per_hour:
                    outcome = "limited"
                else:
                    _queue(conn, outcome, request.email, {}, message_id, now)
                conn.execute(outbox.update().where(outbox.c.id == request.id).values(
                    state="done", attempts=outbox.c.attempts + 1, last_error=outcome, finished_at=now,
                    updated_at=now, **_RELEASED))
        except IntegrityError:
            # The same address inserted by another worker at the same moment: the caller tries again.
            raise SubscriberError(f"{request.email} was being added by another worker") from None
        return outcome

    def expire_outbox(self, created_before: datetime, now: datetime) -> list[OutboxRow]:
        """Give up on the queued rows older than ``created_before`` that nobody holds; returns them."""
        query = select(outbox).where(outbox.c.state == "queued", outbox.c.created_at < created_before, _unleased(now))
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self._tx() as conn:
            rows = conn.execute(query).all()
            if rows:
                conn.execute(outbox.update().where(outbox.c.id.in_([row.id for row in rows])).values(
                    state="expired", finished_at=now, updated_at=now, **_RELEASED))
        return [_outbox_row(row) for row in rows]

    def purge_outbox(self, finished_before: datetime) -> int:
        """Delete the finished rows older than ``finished_before``; returns how many."""
        with self._tx() as conn:
            done = conn.execute(outbox.delete().where(outbox.c.state != "queued",
                                                      outbox.c.finished_at < finished_before))
        return int(done.rowcount or 0)

    def next_outbox_due(self, kinds: Sequence[str] = OUTBOX_KINDS) -> datetime | None:
        """When the earliest queued row of ``kinds`` may be taken (its lease counted), or None."""
        held = and_(outbox.c.lease_until.is_not(None), outbox.c.lease_until > outbox.c.next_attempt_at)
        due = case((held, outbox.c.lease_until), else_=outbox.c.next_attempt_at)
        with self._tx() as conn:
            value = conn.execute(select(func.min(due, type_=UtcDateTime()))
                                 .where(outbox.c.state == "queued", outbox.c.kind.in_(list(kinds)))).scalar()
        return value if isinstance(value, datetime) else None

    def outbox_rows(self, kind: str | None = None) -> list[OutboxRow]:
        query = select(outbox).order_by(outbox.c.id)
        if kind is not None:
            query = query.where(outbox.c.kind == kind)
        with self._tx() as conn:
            return [_outbox_row(row) for row in conn.execute(query)]

    def outbox_counts(self) -> dict[str, int]:
        return self._counts(outbox.c.state, OUTBOX_STATES)

    # -- reports after the SMTP session (events) -------------------------------------------------

    def sent_to(self, message_id: str) -> str | None:
        """The address our message ``message_id`` (a digest or a confirmation mail) went to, or None."""
        if not message_id:
            return None
        with self._tx() as conn:
            found = conn.execute(select(subscribers.c.email).join(deliveries, deliveries.c.subscriber_id == subscribers.c.id)
                                 .where(deliveries.c.message_id == message_id).limit(1)).scalar()
            if found is None:
                found = conn.execute(select(outbox.c.email).where(outbox.c.message_id == message_id).limit(1)).scalar()
        return str(found) if found is not None else None

    def record_event(self, email: str, kind: str, key: str, source: str, *, status: str = "", detail: str = "",
                     message_id: str = "", bounce_after: int = 0, soft_weight: float = 0.5, window_days: int = 0,
                     now: datetime | None = None) -> str:
        """Record one report about ``email`` and act on it, in one transaction; returns one of
        :data:`EVENT_OUTCOMES`.

        ``key`` is the report's identity: a key seen before changes nothing (``duplicate``). A
        complaint or an unsubscribe request unsubscribes at once. A hard bounce counts 1 towards
        ``bounce_after``, a soft one ``soft_weight`` (a second report about the same message
        counts 0); an active subscriber is `bounced` once the permanent failures at send time
        plus the reports of the last ``window_days`` (0: all) since they last confirmed reach
        ``bounce_after`` (0: never). ``unknown``: no such subscriber, nothing recorded.
        """
        now = _now(now)
        try:
            with self._tx() as conn:
                row = _find(conn, email)
                if row is None:
                    return "unknown"
                if conn.execute(select(events.c.id).where(events.c.key == key)).first() is not None:
                    return "duplicate"
                weight = {"hard": 1.0, "soft": soft_weight}.get(kind, 0.0)
                if weight and message_id and conn.execute(select(events.c.id).where(
                        events.c.subscriber_id == row.id, events.c.message_id == message_id,
                        events.c.weight > 0)).first() is not None:
                    weight = 0.0
                conn.execute(events.insert().values(
                    key=key, subscriber_id=row.id, email=row.email, kind=kind, source=source, status=status[:16],
                    detail=detail, message_id=message_id[:255], weight=weight, created_at=now))
                if kind in ("complaint", "unsubscribe"):
                    if row.status in ("active", "pending"):
                        conn.execute(subscribers.update().where(subscribers.c.id == row.id)
                                     .values(status="unsubscribed", unsubscribed_at=now))
                        return "unsubscribed"
                    return "recorded"
                if not weight or row.status != "active" or bounce_after <= 0:
                    return "recorded"
                since = row.confirmed_at or row.created_at
                if window_days > 0:
                    since = max(since, now - timedelta(days=window_days))
                reported = conn.execute(select(func.coalesce(func.sum(events.c.weight), 0.0)).where(
                    events.c.subscriber_id == row.id, events.c.created_at >= since)).scalar()
                if row.permanent_failures + float(reported or 0.0) >= bounce_after:
                    conn.execute(subscribers.update().where(subscribers.c.id == row.id)
                                 .values(status="bounced", bounced_at=now))
                    return "bounced"
                return "recorded"
        except IntegrityError:
            # The same report recorded by another process in the same instant.
            return "duplicate"

    def subscriber_events(self, email: str) -> list[dict[str, Any]]:
        """The reports recorded about ``email``, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(select(events).where(events.c.subscriber_id.in_(
                select(subscribers.c.id).where(subscribers.c.email_key == email.strip().lower())))
                .order_by(events.c.id)).all()
        return [dict(row._mapping) for row in rows]


#: The first key of a subscriber's data download, naming its layout.
EXPORT_FORMAT = "finews-feeds subscriber data, version 1"
#: Columns holding JSON text, given in a download as the values they hold.
_JSON_COLUMNS = {"subscribers": ("categories", "tags"), "outbox": ("payload",)}


def _personal_tables(row: Row[Any]) -> list[tuple[Table, Any]]:
    """Every table but ``subscribers`` that names the subscriber of ``row``, with the condition that finds
    their rows: by ``subscriber_id``, else by ``email_key`` (the convention of :mod:`.migrations`)."""
    found: list[tuple[Table, Any]] = []
    for table in sorted(METADATA.tables.values(), key=lambda t: t.name):
        if table.name == subscribers.name:
            continue
        if "subscriber_id" in table.c:
            found.append((table, table.c.subscriber_id == row.id))
        elif "email_key" in table.c:
            found.append((table, table.c.email_key == row.email_key))
    return found


def _exported(table: str, row: Row[Any]) -> dict[str, Any]:
    """A row as JSON-ready data: times in ISO 8601, JSON text columns as what they hold."""
    out: dict[str, Any] = {}
    for key, value in row._mapping.items():
        if isinstance(value, datetime | date):
            value = value.isoformat()
        elif key in _JSON_COLUMNS.get(table, ()) and isinstance(value, str):
            value = json.loads(value) if value else ([] if table == "subscribers" else {})
        out[str(key)] = value
    return out


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's first line (SQLAlchemy's own adds the statement and a link)."""
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _store_error(exc: OperationalError) -> StoreError:
    if exc.connection_invalidated:
        return DatabaseConnectionLost(f"the database connection was lost ({_reason(exc)})")
    return StoreError(f"database error: {_reason(exc)}")


def _chunks(ids: list[int], size: int = 500) -> Iterator[list[int]]:
    """``ids`` in lists of at most ``size``: an IN list stays within SQLite's bound-parameter limit."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _key(day: date, subscriber_id: int) -> Any:
    return and_(deliveries.c.day == day, deliveries.c.subscriber_id == subscriber_id)


def _find(conn: Connection, email: str) -> Row[Any] | None:
    """The subscriber row of ``email``, found by its lower-cased form (the unique key)."""
    return conn.execute(select(subscribers).where(subscribers.c.email_key == email.strip().lower())).first()


def _owner_key(owner: str) -> int:
    """The second int of a worker's advisory lock: its name hashed (names are unique: host, pid, random)."""
    return zlib.crc32(owner.encode()) & 0x7FFFFFFF


def _held(row_id: int, owner: str) -> tuple[Any, ...]:
    """Conditions that outbox row ``row_id`` is still queued and leased to ``owner`` (its lease not lost)."""
    return outbox.c.id == row_id, outbox.c.lease_owner == owner, outbox.c.state == "queued"


def _unleased(now: datetime) -> Any:
    """An outbox row nobody holds at ``now``: never leased, or its lease ran out."""
    return or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now)


def _clean_name(name: str) -> str:
    # Names end up in a To header: no line breaks or other control characters.
    cleaned = "".join(ch if ch.isprintable() else " " for ch in name).strip()
    if len(cleaned) > MAX_NAME_CHARS:
        raise SubscriberError(f"name {cleaned[:20]!r}… is longer than {MAX_NAME_CHARS} characters")
    return cleaned


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself, as IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit of `sent` survives a power cut too, keeping duplicates to the one in-flight message.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
