"""The versioned schema of the subscriber store.

The database records its schema version in ``finews_schema``; :func:`upgrade` applies the steps
it has not seen, in order, inside one locked transaction, so two daemons starting at once on one
PostgreSQL database do not both create the tables. A later version appends a step (ALTER
statements written out in full) and never edits an earlier one: a database created by any
release can be brought forward.

The :data:`METADATA` tables describe the current schema and are what :mod:`store` queries.

A table that holds anything about one subscriber names them in a ``subscriber_id`` column (the
subscriber's id) or an ``email_key`` column (the lower-cased address): the subscriber's own data
download and "delete everything" (:meth:`Store.subscriber_data`, :meth:`Store.erase_subscriber`)
find their rows in every table by these two names, so a table added later is covered without
further code.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    inspect,
    select,
    text,
)

from ..errors import StoreError


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes stored as UTC on both databases (SQLite keeps no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps aware times only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


METADATA = MetaData()

schema_table = Table(
    "finews_schema",
    METADATA,
    Column("version", Integer, nullable=False),
)

subscribers = Table(
    "subscribers",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),
    # Lower-cased address: the unique key, so Ann@X.org and ann@x.org are one subscriber.
    Column("email_key", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("categories", Text, nullable=False, default=""),
    Column("tags", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("confirmed_at", UtcDateTime),
    Column("unsubscribed_at", UtcDateTime),
    Column("bounced_at", UtcDateTime),
    # Permanent (5xx) failures since the last successful send.
    Column("permanent_failures", Integer, nullable=False, default=0),
    # daily or weekly (version 5).
    Column("frequency", String(8), nullable=False, default="daily", server_default="daily"),
    # The weekday a weekly digest arrives, 0 = Monday (version 5).
    Column("weekday", Integer, nullable=False, default=0, server_default="0"),
    # No digest is prepared for the subscriber before this time (version 5).
    Column("paused_until", UtcDateTime),
    Index("ix_subscribers_status", "status"),
)

runs = Table(
    "runs",
    METADATA,
    Column("day", Date, primary_key=True),
    # host:pid:random of the process sending this day's digest now; NULL when none is.
    Column("owner", String(200)),
    Column("started_at", UtcDateTime, nullable=False),
    Column("heartbeat_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("attempts", Integer, nullable=False, default=0),
)

#: Ledger states of a row still to be sent, and that condition as SQL text. The claim's query and the
#: partial index behind it use this one text: the planners (PostgreSQL's, SQLite's) take a partial
#: index only for a query that states the index's own condition, which a bound parameter does not.
OPEN_STATES = ("pending", "sending", "failed-temporary")
OPEN_ROW = "state IN (" + ", ".join(f"'{state}'" for state in OPEN_STATES) + ")"

deliveries = Table(
    "deliveries",
    METADATA,
    Column("day", Date, primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("message_id", String(255), nullable=False, default=""),
    # The run (owner) that last claimed this row: a run claims each row at most once.
    Column("run_owner", String(200)),
    # Until when run_owner holds the row (PostgreSQL, several workers): another worker takes it after
    # that, or as soon as the owner's session is gone. NULL: nobody holds it. (Version 3.)
    Column("lease_until", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime),
    # daily (the day's digest) or weekly (the seven days ending with `day`) (version 5).
    Column("kind", String(8), nullable=False, default="daily", server_default="daily"),
    Index("ix_deliveries_day_state", "day", "state"),
    # The open rows of a day in claiming order (version 6): without it each batch's claim walks past
    # every row already sent, a time that grows with the list (3 ms at 20,000; at a million, most
    # of a second a batch).
    Index("ix_deliveries_open", "day", "subscriber_id", postgresql_where=text(OPEN_ROW), sqlite_where=text(OPEN_ROW)),
)

#: The outbox: work the web app hands to the daemon's worker (subscribe requests) and the
#: transactional mail it sends (confirmations), each row retried with backoff until done or too old
#: (Postfix's queue: attempts, the next attempt's time, a lifetime).
outbox = Table(
    "outbox",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # "subscribe" (a form to act on) or "confirm" (a confirmation mail to send).
    Column("kind", String(20), nullable=False),
    Column("email", String(320), nullable=False),
    # Lower-cased address: what the per-address limit on confirmation mails counts by.
    Column("email_key", String(320), nullable=False),
    # JSON of what the kind needs (a subscribe request's name, categories and tags).
    Column("payload", Text, nullable=False, default=""),
    # Fixed when the mail is queued, so a resend after a crash is recognisably the same message.
    Column("message_id", String(255), nullable=False, default=""),
    # queued, then done (a request acted on), sent, skipped, failed (5xx) or expired (past the lifetime).
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    # The worker sending it now and until when; another takes it over once the lease has run out.
    Column("lease_owner", String(200)),
    Column("lease_until", UtcDateTime),
    Column("last_error", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Index("ix_outbox_due", "state", "next_attempt_at"),
    Index("ix_outbox_address", "email_key", "kind", "created_at"),
)


#: What came back about a subscriber after the SMTP session (bounces, complaints, mailed
#: unsubscribe requests), one row per report and recipient, append-only. ``key`` makes processing
#: idempotent: the same report read twice (a mailbox poll that died before flagging it, a
#: webhook retried) finds its row and changes nothing.
events = Table(
    "events",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The report's id (its Message-ID, a provider's event id, or a hash of its bytes) and the recipient.
    Column("key", String(512), nullable=False, unique=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False),
    # hard, soft, delayed, complaint or unsubscribe (reports.KINDS).
    Column("kind", String(16), nullable=False),
    # Where it came from: imap, mailgun, file.
    Column("source", String(16), nullable=False),
    Column("status", String(16), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
    # The Message-ID of our message the report is about, when it says.
    Column("message_id", String(255), nullable=False, default=""),
    # How much it counts towards smtp.bounce_after (0 for a second report about one message).
    Column("weight", Float, nullable=False, default=0.0),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_events_subscriber", "subscriber_id", "created_at"),
)


def _v1(conn: Connection) -> None:
    """Subscribers, per-day runs and the delivery ledger."""
    METADATA.create_all(conn, tables=[subscribers, runs, deliveries])


def _v2(conn: Connection) -> None:
    """The outbox (subscribe requests and confirmation mail, sent by the daemon's worker)."""
    METADATA.create_all(conn, tables=[outbox])


def _v3(conn: Connection) -> None:
    """The ledger row's lease, so that several workers share one day's send (issue 14)."""
    # _v1 creates the tables from the current METADATA, so a database created by this release has the
    # column already; one created before it gets it here.
    if "lease_until" not in {column["name"] for column in inspect(conn).get_columns("deliveries")}:
        kind = "TIMESTAMP WITHOUT TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
        conn.execute(text(f"ALTER TABLE deliveries ADD COLUMN lease_until {kind}"))


def _v4(conn: Connection) -> None:
    """Bounce, complaint and unsubscribe reports (the events table)."""
    METADATA.create_all(conn, tables=[events])


def _v5(conn: Connection) -> None:
    """The preference centre: daily or weekly on a weekday, a pause; the ledger row's kind.

    Version 1 creates its tables from the current :data:`METADATA`, so a database made new has
    these columns already: only those missing are added.
    """
    stamp = "TIMESTAMP WITHOUT TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    wanted = {
        "subscribers": [("frequency", "VARCHAR(8) NOT NULL DEFAULT 'daily'"),
                        ("weekday", "INTEGER NOT NULL DEFAULT 0"),
                        ("paused_until", stamp)],
        "deliveries": [("kind", "VARCHAR(8) NOT NULL DEFAULT 'daily'")],
    }
    inspector = inspect(conn)
    for table, columns in wanted.items():
        have = {column["name"] for column in inspector.get_columns(table)}
        for name, kind in columns:
            if name not in have:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))


def _v6(conn: Connection) -> None:
    """The ledger's partial index of open rows, which the claim of each batch reads (issue 14)."""
    for index in deliveries.indexes:
        if index.name == "ix_deliveries_open":
            index.create(conn, checkfirst=True)


#: (version, step); append only.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
    (5, _v5),
    (6, _v6),
]
LATEST = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    """The schema version recorded in the database; 0 for an empty one."""
    if not conn.dialect.has_table(conn, "finews_schema"):
        return 0
    version = conn.execute(select(schema_table.c.version)).scalar()
    return int(version or 0)


def upgrade(conn: Connection) -> int:
    """Bring the schema to :data:`LATEST` inside the caller's transaction; returns the version before."""
    if conn.dialect.name == "postgresql":
        # Serialises concurrent first starts; released at the end of the transaction.
        conn.execute(text("SELECT pg_advisory_xact_lock(4662871, 0)"))
    before = current_version(conn)
    if before > LATEST:
        raise StoreError(
            f"the database schema is version {before}, newer than this finews-feeds knows ({LATEST})",
            hint="upgrade finews-feeds, or point database.url at another database",
        )
    if before == 0:
        METADATA.create_all(conn, tables=[schema_table])
        conn.execute(schema_table.insert().values(version=0))
    for version, step in MIGRATIONS:
        if version > before:
            step(conn)
            conn.execute(schema_table.update().values(version=version))
    return before
