"""The subscriber store and ledger: one suite, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from smtp_fakes import database_url, postgres_available
from sqlalchemy import text

from finews_feeds.errors import StoreError, SubscriberError
from finews_feeds.mail.migrations import LATEST
from finews_feeds.mail.store import Store, Subscriber, new_owner

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
DAY = date(2026, 2, 28)

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ]),
]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as value:
        yield value


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store.open(url) as opened:
        yield opened


def test_open_creates_the_schema_at_the_latest_version_and_reopens_unchanged(url: str) -> None:
    with Store.open(url) as first:
        first.add_subscriber("a@example.org", now=T0)
    with Store.open(url) as again:
        with again.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM finews_schema")).scalar() == LATEST
            assert conn.execute(text("SELECT count(*) FROM finews_schema")).scalar() == 1
        assert [s.email for s in again.list_subscribers()] == ["a@example.org"]


def test_a_database_from_a_newer_release_is_refused(url: str) -> None:
    with Store.open(url) as first, first.engine.begin() as conn:
        conn.execute(text("UPDATE finews_schema SET version = :v"), {"v": LATEST + 1})
    with pytest.raises(StoreError, match=f"schema is version {LATEST + 1}, newer"):
        Store.open(url)


def test_sqlite_default_creates_its_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "var" / "sub" / "finews.sqlite3"
    with Store.open(f"sqlite:///{path}") as store:
        store.add_subscriber("a@example.org", now=T0)
    assert path.is_file()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_unsupported_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="only sqlite and postgresql"):
        Store.open("mysql://localhost/x")
    with pytest.raises(StoreError, match="is not a database URL"):
        Store.open("not a url")


def test_add_normalises_the_address_and_choices(store: Store) -> None:
    sub = store.add_subscriber(" Ann@Example.COM ", name="Ann\r\nBcc: x", categories=["yicai", "cailianshe", "yicai"],
                               tags=("A股",), now=T0)
    assert sub == Subscriber(
        id=sub.id, email="Ann@example.com", name="Ann  Bcc: x", status="pending", categories=("cailianshe", "yicai"),
        tags=("A股",), created_at=T0, confirmed_at=None, unsubscribed_at=None,
    )
    assert store.get_subscriber("ann@EXAMPLE.com") == sub


def test_email_is_unique_whatever_its_case(store: Store) -> None:
    store.add_subscriber("ann@example.com", now=T0)
    with pytest.raises(SubscriberError, match=r"Ann@example.com is already a subscriber \(status pending\)"):
        store.add_subscriber("Ann@Example.com", now=T0)
    assert len(store.list_subscribers()) == 1


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a b@example.org", "x@localhost", "x@foo.test"])
def test_invalid_addresses_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(SubscriberError):
        store.add_subscriber(bad, now=T0)
    assert store.list_subscribers() == []


def test_confirm_makes_pending_active_once(store: Store) -> None:
    store.add_subscriber("a@example.org", now=T0)
    sub = store.confirm("A@example.org", T0 + timedelta(hours=1))
    assert (sub.status, sub.confirmed_at) == ("active", T0 + timedelta(hours=1))
    assert store.confirm("a@example.org", T0 + timedelta(hours=2)).confirmed_at == T0 + timedelta(hours=1)
    with pytest.raises(SubscriberError, match=r"nobody@example\.org is not a subscriber"):
        store.confirm("nobody@example.org", T0)


def test_unsubscribe_is_idempotent_and_keeps_the_first_time(store: Store) -> None:
    store.add_subscriber("a@example.org", confirmed=True, now=T0)
    first = store.unsubscribe("a@example.org", T0 + timedelta(days=1))
    again = store.unsubscribe("A@EXAMPLE.ORG", T0 + timedelta(days=2))
    assert first is not None and again is not None
    assert (again.status, again.unsubscribed_at) == ("unsubscribed", T0 + timedelta(days=1))
    assert store.unsubscribe("nobody@example.org", T0) is None


def test_adding_an_unsubscribed_address_again_resubscribes_it(store: Store) -> None:
    store.add_subscriber("a@example.org", confirmed=True, now=T0)
    store.unsubscribe("a@example.org", T0)
    sub = store.add_subscriber("a@example.org", tags=["A股"], now=T0 + timedelta(days=3))
    assert (sub.status, sub.tags, sub.unsubscribed_at, sub.created_at) == ("pending", ("A股",), None, T0)


def test_list_filters_by_status_and_counts(store: Store) -> None:
    store.add_subscriber("p@example.org", now=T0)
    store.add_subscriber("a@example.org", confirmed=True, now=T0)
    store.add_subscriber("u@example.org", confirmed=True, now=T0)
    store.unsubscribe("u@example.org", T0)
    assert [s.email for s in store.list_subscribers()] == ["p@example.org", "a@example.org", "u@example.org"]
    assert [s.email for s in store.list_subscribers("active")] == ["a@example.org"]
    assert [s.email for s in store.active_subscribers()] == ["a@example.org"]
    assert store.count_subscribers() == {"pending": 1, "active": 1, "unsubscribed": 1, "bounced": 0}
    with pytest.raises(SubscriberError, match="unknown status 'gone'"):
        store.list_subscribers("gone")


def test_remove_deletes_the_subscriber_and_their_ledger(store: Store) -> None:
    store.add_subscriber("a@example.org", confirmed=True, now=T0)
    store.prepare_day(DAY, T0)
    store.remove_subscriber("A@example.org")
    assert store.get_subscriber("a@example.org") is None
    assert store.ledger(DAY) == []
    with pytest.raises(SubscriberError, match="is not a subscriber"):
        store.remove_subscriber("a@example.org")


def test_prepare_day_gives_each_active_subscriber_one_pending_row(store: Store) -> None:
    store.add_subscriber("a@example.org", confirmed=True, now=T0)
    store.add_subscriber("p@example.org", now=T0)
    assert store.prepare_day(DAY, T0) == 1
    assert store.prepare_day(DAY, T0) == 0
    store.add_subscriber("b@example.org", confirmed=True, now=T0)
    assert store.prepare_day(DAY, T0) == 1
    assert [(d.email, d.state, d.attempts) for d in store.ledger(DAY)] == [
        ("a@example.org", "pending", 0), ("b@example.org", "pending", 0)]


def test_a_run_claims_each_open_row_once_and_a_new_run_takes_what_is_left(store: Store) -> None:
    for name in "abc":
        store.add_subscriber(f"{name}@example.org", confirmed=True, now=T0)
    store.prepare_day(DAY, T0)
    run1 = new_owner()
    claims = []
    while (claim := store.claim_next(DAY, run1, T0)) is not None:
        claims.append(claim)
    assert [c.subscriber.email for c in claims] == ["a@example.org", "b@example.org", "c@example.org"]
    a, b, c = (cl.subscriber.id for cl in claims)
    store.mark_sending(DAY, a, "<m-a@x>", T0)
    store.mark_sent(DAY, a, T0)
    store.mark_sending(DAY, b, "<m-b@x>", T0)  # then the process dies
    store.mark_temporary(DAY, c, "451 try later", T0)
    run2 = new_owner()
    again = [store.claim_next(DAY, run2, T0), store.claim_next(DAY, run2, T0), store.claim_next(DAY, run2, T0)]
    assert [(cl.delivery.email, cl.delivery.state, cl.delivery.message_id) if cl else None for cl in again] == [
        ("b@example.org", "sending", "<m-b@x>"), ("c@example.org", "failed-temporary", ""), None]
    assert store.ledger_counts(DAY) == {"pending": 0, "sending": 1, "sent": 1, "failed-temporary": 1,
                                        "failed-permanent": 0, "skipped": 0}


def test_the_ledger_counts_of_a_day_count_that_day_alone(store: Store) -> None:
    for name in "ab":
        store.add_subscriber(f"{name}@example.org", confirmed=True, now=T0)
    store.prepare_day(DAY, T0)
    store.prepare_day(DAY + timedelta(days=1), T0)
    sid = store.claim_next(DAY, new_owner(), T0).subscriber.id  # type: ignore[union-attr]
    store.mark_skipped(DAY, sid, "no posts for this selection", T0)
    assert store.ledger_counts(DAY) == {"pending": 1, "sending": 0, "sent": 0, "failed-temporary": 0,
                                        "failed-permanent": 0, "skipped": 1}
    assert store.ledger_counts(DAY + timedelta(days=1))["pending"] == 2
    assert store.ledger_counts(DAY - timedelta(days=1)) == dict.fromkeys(store.ledger_counts(DAY), 0)


def test_permanent_failures_bounce_the_subscriber_and_a_success_resets_the_count(store: Store) -> None:
    sid = store.add_subscriber("a@example.org", confirmed=True, now=T0).id
    days = [DAY + timedelta(days=i) for i in range(4)]
    for day in days:
        store.prepare_day(day, T0)
    assert store.mark_permanent(days[0], sid, "550 no", bounce_after=2, now=T0) is False
    store.mark_sent(days[1], sid, T0)
    assert store.mark_permanent(days[2], sid, "550 no", bounce_after=2, now=T0) is False
    assert store.mark_permanent(days[3], sid, "550 no", bounce_after=2, now=T0 + timedelta(days=3)) is True
    sub = store.get_subscriber("a@example.org")
    assert sub is not None
    assert (sub.status, sub.bounced_at, sub.permanent_failures) == ("bounced", T0 + timedelta(days=3), 2)
    assert [(d.state, d.last_error, d.attempts) for d in store.ledger(days[3])] == [("failed-permanent", "550 no", 1)]


def test_on_sqlite_only_one_owner_holds_a_day_until_it_releases_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/finews.sqlite3"
    with Store.open(url) as one, Store.open(url) as two:
        first, second = new_owner(), new_owner()
        assert one.try_claim_run(DAY, first, T0) is None
        assert two.try_claim_run(DAY, second, T0) == first
        assert two.try_claim_run(DAY + timedelta(days=1), second, T0) is None
        one.release_run(DAY, first, T0, finished=True)
        assert two.try_claim_run(DAY, second, T0) is None
        info = two.run_info(DAY)
        assert info is not None and (info["owner"], info["attempts"]) == (second, 2)


LEDGER_LEASE = timedelta(minutes=5)


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    with database_url("postgresql", tmp_path) as value:
        yield value


def active_day(store: Store, count: int) -> list[int]:
    ids = [store.add_subscriber(f"r{n}@example.org", confirmed=True, now=T0).id for n in range(count)]
    store.prepare_day(DAY, T0)
    return ids


def claimed(store: Store, owner: str, when: datetime, limit: int = 10) -> list[int]:
    return [c.subscriber.id for c in store.claim_batch(DAY, owner, when, limit=limit, lease=LEDGER_LEASE)]


needs_postgres = pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable")


@pytest.mark.postgres
@needs_postgres
def test_on_postgresql_workers_share_a_day_and_each_row_is_leased_to_one(pg_url: str) -> None:
    with Store.open(pg_url) as one, Store.open(pg_url) as two:
        a, b = new_owner(), new_owner()
        ids = active_day(one, 6)
        assert one.try_claim_run(DAY, a, T0) is None
        assert two.try_claim_run(DAY, b, T0) is None  # no whole-day claim: both send
        assert claimed(one, a, T0, limit=2) == ids[:2]
        assert claimed(two, b, T0, limit=2) == ids[2:4]
        assert claimed(one, a, T0, limit=10) == ids[4:]
        assert claimed(two, b, T0) == []
        # b has nothing to claim, but a holds 4 rows it has not finished: b waits for them.
        assert two.held_elsewhere(DAY, b, T0) == 4
        assert one.held_elsewhere(DAY, a, T0) == 2
        assert one.start_sending(DAY, ids[0], "<0@x>", T0, owner=a) == "active"
        one.mark_sent(DAY, ids[0], T0)
        assert two.start_sending(DAY, ids[1], "<1@x>", T0, owner=b) == "taken"  # a's row: nothing written
        assert [(d.state, d.message_id) for d in one.ledger(DAY)][:2] == [("sent", "<0@x>"), ("pending", "")]
        # a releases its day (it stops): its unfinished rows are b's to take at once.
        one.release_run(DAY, a, T0, finished=False)
        assert two.held_elsewhere(DAY, b, T0) == 0
        assert claimed(two, b, T0) == [ids[1], ids[4], ids[5]]


@pytest.mark.postgres
@needs_postgres
def test_on_postgresql_a_worker_that_stops_answering_loses_its_rows_when_its_lease_runs_out(pg_url: str) -> None:
    with Store.open(pg_url) as one, Store.open(pg_url) as two:
        a, b = new_owner(), new_owner()
        ids = active_day(one, 3)
        assert one.try_claim_run(DAY, a, T0) is None and two.try_claim_run(DAY, b, T0) is None
        assert claimed(one, a, T0) == ids
        assert one.start_sending(DAY, ids[0], "<0@x>", T0, owner=a) == "active"  # renews ids[0] to T0 + 5 min
        later = T0 + LEDGER_LEASE - timedelta(seconds=1)
        assert one.start_sending(DAY, ids[1], "<1@x>", later, owner=a) == "active"  # renewed to later + 5 min
        # a is alive (its session holds its lock) but silent: b waits while the leases last...
        assert claimed(two, b, T0 + LEDGER_LEASE - timedelta(seconds=2)) == []
        assert two.held_elsewhere(DAY, b, T0 + LEDGER_LEASE - timedelta(seconds=2)) == 3
        # ...and takes what has run out: ids[0] (`sending`, resent with its Message-ID) and ids[2].
        expired = T0 + LEDGER_LEASE
        [first, third] = two.claim_batch(DAY, b, expired, lease=LEDGER_LEASE)
        assert (first.subscriber.id, first.delivery.state, first.delivery.message_id) == (ids[0], "sending", "<0@x>")
        assert third.subscriber.id == ids[2]
        assert two.held_elsewhere(DAY, b, expired) == 1  # ids[1], renewed
        # a wakes up: the rows taken over are no longer its to send.
        assert one.start_sending(DAY, ids[2], "<2@x>", expired, owner=a) == "taken"
        assert one.start_sending(DAY, ids[2], "<2@x>", expired, owner=b) == "active"


@pytest.mark.postgres
@needs_postgres
def test_on_postgresql_the_rows_of_a_worker_whose_session_ended_are_taken_over_at_once(pg_url: str) -> None:
    with Store.open(pg_url) as one, Store.open(pg_url) as two:
        a, b = new_owner(), new_owner()
        ids = active_day(one, 3)
        assert one.try_claim_run(DAY, a, T0) is None and two.try_claim_run(DAY, b, T0) is None
        assert claimed(one, a, T0) == ids
        assert one.start_sending(DAY, ids[0], "<0@x>", T0, owner=a) == "active"
        assert two.held_elsewhere(DAY, b, T0) == 3
        # What the server does when a's process dies: its session, and the lock with it, end.
        conn = one._run_connections.pop(DAY)
        conn.invalidate()
        conn.close()
        assert two.held_elsewhere(DAY, b, T0) == 0
        assert [(c.subscriber.id, c.delivery.state) for c in two.claim_batch(DAY, b, T0, lease=LEDGER_LEASE)] == [
            (ids[0], "sending"), (ids[1], "pending"), (ids[2], "pending")]


def test_a_claim_of_a_dead_process_is_taken_over(url: str) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    import socket

    owner = f"{socket.gethostname()}:{dead.stdout.strip()}:dead"
    if url.startswith("postgresql"):
        # The server frees a dead process's advisory lock with its connection.
        holder = Store.open(url)
        assert holder.try_claim_run(DAY, owner, T0) is None
        holder.close()
    else:
        with Store.open(url) as holder:
            assert holder.try_claim_run(DAY, owner, T0) is None
    with Store.open(url) as store:
        assert store.try_claim_run(DAY, new_owner(), T0) is None


def test_import_adds_new_addresses_only_and_twice_changes_nothing(store: Store) -> None:
    store.add_subscriber("old@example.org", confirmed=True, now=T0)
    store.unsubscribe("old@example.org", T0)
    rows = [
        Subscriber(0, "new@example.org", "New", "active", ("yicai",), (), T0, T0, None),
        Subscriber(0, "OLD@example.org", "", "active", (), (), T0, T0, None),
    ]
    assert store.import_subscribers(rows, T0) == (1, 1)
    before = store.list_subscribers()
    assert store.import_subscribers(rows, T0) == (0, 2)
    assert store.list_subscribers() == before
    assert [(s.email, s.status) for s in before] == [("old@example.org", "unsubscribed"), ("new@example.org", "active")]


def test_start_sending_checks_the_subscriber_in_the_same_commit(store: Store) -> None:
    a = store.add_subscriber("a@example.org", confirmed=True, now=T0).id
    b = store.add_subscriber("b@example.org", confirmed=True, now=T0).id
    store.prepare_day(DAY, T0)
    claims = store.claim_batch(DAY, new_owner(), T0, limit=10)
    assert [c.subscriber.status for c in claims] == ["active", "active"]
    store.unsubscribe("b@example.org", T0)
    assert store.start_sending(DAY, a, "<a@x>", T0) == "active"
    assert store.start_sending(DAY, b, "<b@x>", T0) == "unsubscribed"
    assert [(d.state, d.message_id, d.last_error) for d in store.ledger(DAY)] == [
        ("sending", "<a@x>", ""), ("skipped", "", "subscriber is unsubscribed")]


def test_an_older_schema_is_upgraded_step_by_step_keeping_its_data(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from finews_feeds.mail import migrations

    with Store.open(url) as old:
        old.add_subscriber("a@example.org", confirmed=True, now=T0)
    applied: list[int] = []

    def v_next(conn: object) -> None:
        applied.append(LATEST + 1)
        conn.execute(text("ALTER TABLE subscribers ADD COLUMN locale VARCHAR(20) DEFAULT 'zh-CN'"))  # type: ignore[attr-defined]

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, (LATEST + 1, v_next)])
    monkeypatch.setattr(migrations, "LATEST", LATEST + 1)
    with Store.open(url) as new:
        assert [s.email for s in new.active_subscribers()] == ["a@example.org"]
        with new.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM finews_schema")).scalar() == LATEST + 1
            assert conn.execute(text("SELECT locale FROM subscribers")).scalar() == "zh-CN"
    with Store.open(url):
        pass
    assert applied == [LATEST + 1]


# -- the outbox ---------------------------------------------------------------------------------

LEASE = timedelta(minutes=10)


def test_a_version_1_database_gets_the_outbox_and_keeps_its_subscribers(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from finews_feeds.mail import migrations

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        patch.setattr(migrations, "LATEST", 1)
        with Store.open(url) as old:
            old.add_subscriber("a@example.org", confirmed=True, now=T0)
            with old.engine.connect() as conn:
                assert not conn.dialect.has_table(conn, "outbox")
    with Store.open(url) as new:
        with new.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM finews_schema")).scalar() == LATEST
        assert [s.email for s in new.active_subscribers()] == ["a@example.org"]
        new.queue_subscribe("b@example.org", now=T0)
        assert [(r.kind, r.email, r.state) for r in new.outbox_rows()] == [("subscribe", "b@example.org", "queued")]


def test_a_version_2_ledger_gets_the_lease_column_and_keeps_its_rows(url: str) -> None:
    with Store.open(url) as old:
        old.add_subscriber("a@example.org", confirmed=True, now=T0)
        old.prepare_day(DAY, T0)
        with old.engine.begin() as conn:
            # A database from before version 3: no lease column.
            conn.execute(text("ALTER TABLE deliveries DROP COLUMN lease_until"))
            conn.execute(text("UPDATE finews_schema SET version = 2"))
    with Store.open(url) as new:
        with new.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM finews_schema")).scalar() == LATEST
        assert [(d.email, d.state) for d in new.ledger(DAY)] == [("a@example.org", "pending")]
        owner = new_owner()
        assert [c.subscriber.email for c in new.claim_batch(DAY, owner, T0)] == ["a@example.org"]


def test_a_version_4_database_gets_the_preference_columns_with_daily_defaults(url: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from finews_feeds.mail import migrations

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:4])
        patch.setattr(migrations, "LATEST", 4)
        with Store.open(url) as old, old.engine.begin() as conn:
            # Version 1 creates today's tables: take the columns of version 5 away to have a real version 4.
            for table, column in (("subscribers", "frequency"), ("subscribers", "weekday"),
                                  ("subscribers", "paused_until"), ("deliveries", "kind")):
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            conn.execute(text("INSERT INTO subscribers (email, email_key, name, status, categories, tags, created_at, "
                              "permanent_failures) VALUES ('a@example.org', 'a@example.org', '', 'active', '', '', "
                              ":t, 0)"), {"t": T0.replace(tzinfo=None)})
    with Store.open(url) as new:
        with new.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM finews_schema")).scalar() == LATEST
        [sub] = new.list_subscribers()
        assert (sub.email, sub.frequency, sub.weekday, sub.paused_until) == ("a@example.org", "daily", 0, None)
        assert new.prepare_day(DAY, T0) == 1
        assert [d.kind for d in new.ledger(DAY)] == ["daily"]


def _claim_plan(store: Store, day: date) -> str:
    """How the database reads the open rows of ``day`` for a claim (the query claim_batch runs)."""
    from finews_feeds.mail.migrations import OPEN_ROW

    query = (f"SELECT * FROM deliveries WHERE day = :d AND deliveries.{OPEN_ROW} AND (run_owner IS NULL OR "
             "run_owner != 'x') ORDER BY subscriber_id LIMIT 50")
    with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("SET LOCAL enable_seqscan = off"))  # a small table: ask what it could use
            return " ".join(str(r[0]) for r in conn.execute(text("EXPLAIN " + query), {"d": day}))
        return " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + query), {"d": day}))


def test_a_version_5_ledger_gets_the_index_of_open_rows_that_the_claim_reads(url: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from finews_feeds.mail import migrations

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5])
        patch.setattr(migrations, "LATEST", 5)
        with Store.open(url) as old:
            with old.engine.begin() as conn:
                conn.execute(text("DROP INDEX ix_deliveries_open"))
            old.add_subscriber("a@example.org", confirmed=True, now=T0)
            old.prepare_day(DAY, T0)
            assert "ix_deliveries_open" not in _claim_plan(old, DAY)
    with Store.open(url) as new:
        with new.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM finews_schema")).scalar() == LATEST
        assert "ix_deliveries_open" in _claim_plan(new, DAY)
        owner = new_owner()
        assert [c.subscriber.email for c in new.claim_batch(DAY, owner, T0)] == ["a@example.org"]


def test_a_large_day_is_counted_for_the_planner_as_soon_as_it_is_prepared(url: str) -> None:
    from finews_feeds.mail.store import ANALYZE_AFTER

    with Store.open(url) as store:
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO subscribers (email, email_key, name, status, categories, tags, created_at, "
                              "permanent_failures, frequency, weekday) VALUES (:e, :e, '', 'active', '', '', :t, 0, "
                              "'daily', 0)"),
                         [{"e": f"r{n}@example.org", "t": T0.replace(tzinfo=None)} for n in range(ANALYZE_AFTER)])
        assert store.prepare_day(DAY, T0) == ANALYZE_AFTER
        if store.dialect != "postgresql":
            return  # SQLite plans from its indexes alone (no ANALYZE has been run: none is needed)
        with store.engine.connect() as conn:
            counted = conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'deliveries' AND "
                                        "relnamespace = to_regnamespace(current_schema())")).scalar()
        assert counted == ANALYZE_AFTER


def test_a_subscribe_form_is_queued_as_given_and_claimed_by_one_worker_until_its_lease_runs_out(store: Store) -> None:
    row_id = store.queue_subscribe(" Ann@Example.COM ", name="Ann", categories=["yicai", "cailianshe"], tags=["A股"],
                                   now=T0)
    a, b = new_owner(), new_owner()
    assert store.claim_outbox(a, T0 - timedelta(seconds=1), LEASE) == []  # not due yet
    [row] = store.claim_outbox(a, T0, LEASE)
    assert (row.id, row.kind, row.email, row.payload, row.state, row.attempts, row.lease_owner, row.lease_until) == (
        row_id, "subscribe", "Ann@example.com", {"name": "Ann", "categories": ["cailianshe", "yicai"], "tags": ["A股"]},
        "queued", 0, a, T0 + LEASE)
    assert store.claim_outbox(b, T0 + LEASE - timedelta(seconds=1), LEASE) == []
    assert store.next_outbox_due() == T0 + LEASE  # when the lease runs out
    [taken] = store.claim_outbox(b, T0 + LEASE, LEASE)  # a worker that died: its row goes to another
    assert (taken.id, taken.lease_owner) == (row_id, b)
    # The first worker lost it: what it would record now is not written.
    assert store.defer_outbox(row_id, a, "x", T0, T0 + LEASE) is False
    assert store.finish_outbox(row_id, a, "done", T0 + LEASE) is False
    assert store.finish_outbox(row_id, b, "done", T0 + LEASE, "confirm") is True
    assert [(r.state, r.attempts, r.lease_owner, r.finished_at) for r in store.outbox_rows()] == [
        ("done", 1, None, T0 + LEASE)]
    assert store.next_outbox_due() is None


def test_a_deferred_row_comes_due_at_its_next_attempt_with_its_attempts_counted(store: Store) -> None:
    row_id = store.queue_mail("confirm", "a@example.org", "<m1@example.org>", now=T0)
    owner = new_owner()
    assert [r.id for r in store.claim_outbox(owner, T0, LEASE, kinds=("confirm",))] == [row_id]
    assert store.claim_outbox(owner, T0, LEASE, kinds=("subscribe",)) == []
    assert store.defer_outbox(row_id, owner, "451 later", T0 + timedelta(minutes=1), T0) is True
    assert store.next_outbox_due(("confirm",)) == T0 + timedelta(minutes=1)
    assert store.claim_outbox(owner, T0 + timedelta(seconds=59), LEASE) == []
    [again] = store.claim_outbox(owner, T0 + timedelta(minutes=1), LEASE)
    assert (again.id, again.attempts, again.last_error, again.message_id) == (row_id, 1, "451 later", "<m1@example.org>")
    assert store.finish_outbox(row_id, owner, "sent", T0 + timedelta(minutes=1))
    assert store.outbox_counts() == {"queued": 0, "done": 0, "sent": 1, "skipped": 0, "failed": 0, "expired": 0}


def test_accepting_a_form_depends_on_the_address_state_and_allows_three_mails_an_hour(store: Store) -> None:
    store.add_subscriber("active@example.org", confirmed=True, now=T0)
    store.add_subscriber("gone@example.org", confirmed=True, categories=["yicai"], now=T0)
    store.unsubscribe("gone@example.org", T0)
    owner = new_owner()

    def accept(email: str, when: datetime, **choices: list[str]) -> str:
        store.queue_subscribe(email, now=when, **choices)  # type: ignore[arg-type]
        [row] = store.claim_outbox(owner, when, LEASE, kinds=("subscribe",))
        return store.accept_subscribe(row, owner, when, f"<{row.id}@example.org>", per_hour=3)

    assert accept("new@example.org", T0, categories=["yicai"]) == "confirm"
    # An active address keeps its choices and gets the link to its manage page instead.
    assert accept("active@example.org", T0, categories=["yicai"]) == "manage"
    assert accept("gone@example.org", T0, tags=["A股"]) == "confirm"
    assert accept("New@example.org", T0 + timedelta(minutes=1), categories=["cailianshe"]) == "confirm"
    assert accept("new@example.org", T0 + timedelta(minutes=2)) == "confirm"
    assert accept("new@example.org", T0 + timedelta(minutes=3)) == "limited"
    assert accept("new@example.org", T0 + timedelta(minutes=61)) == "confirm"  # the first is an hour old
    assert accept("active@example.org", T0 + timedelta(minutes=2)) == "manage"
    assert accept("active@example.org", T0 + timedelta(minutes=3)) == "manage"
    assert accept("active@example.org", T0 + timedelta(minutes=4)) == "limited"
    subs = {s.email: (s.status, s.categories, s.tags) for s in store.list_subscribers()}
    assert subs == {"active@example.org": ("active", (), ()), "gone@example.org": ("pending", (), ("A股",)),
                    "new@example.org": ("pending", (), ())}
    mails = [(r.email, r.state, r.created_at) for r in store.outbox_rows("confirm")]
    assert mails == [("new@example.org", "queued", T0), ("gone@example.org", "queued", T0),
                     ("New@example.org", "queued", T0 + timedelta(minutes=1)),  # counted as one address
                     ("new@example.org", "queued", T0 + timedelta(minutes=2)),
                     ("new@example.org", "queued", T0 + timedelta(minutes=61))]
    assert [(r.email, r.created_at) for r in store.outbox_rows("manage")] == [
        ("active@example.org", T0 + timedelta(minutes=n)) for n in (0, 2, 3)]
    assert [r.last_error for r in store.outbox_rows("subscribe")] == [
        "confirm", "manage", "confirm", "confirm", "confirm", "limited", "confirm", "manage", "manage", "limited"]


def test_two_workers_claiming_at_once_never_get_the_same_row(url: str) -> None:
    with Store.open(url) as first, Store.open(url) as second:
        for n in range(60):
            first.queue_mail("confirm", f"r{n}@example.org", f"<{n}@example.org>", now=T0)
        claimed: dict[str, list[int]] = {"first": [], "second": []}
        start = threading.Barrier(2)

        def claim(store: Store, name: str) -> None:
            owner = new_owner()
            start.wait()
            while rows := store.claim_outbox(owner, T0, LEASE, limit=2):
                claimed[name].extend(row.id for row in rows)

        threads = [threading.Thread(target=claim, args=(first, "first")),
                   threading.Thread(target=claim, args=(second, "second"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    every = claimed["first"] + claimed["second"]
    assert sorted(every) == sorted(set(every))
    assert len(every) == 60


def test_old_rows_expire_and_finished_ones_are_purged(store: Store) -> None:
    old_id = store.queue_mail("confirm", "old@example.org", "<o@x>", now=T0)
    held_id = store.queue_mail("confirm", "held@example.org", "<h@x>", now=T0)
    store.queue_mail("confirm", "new@example.org", "<n@x>", now=T0 + timedelta(days=2))
    owner = new_owner()
    [held] = store.claim_outbox(owner, T0 + timedelta(days=3), LEASE, limit=1)  # the oldest due first
    assert held.id == old_id
    store.defer_outbox(old_id, owner, "451", T0 + timedelta(days=3), T0 + timedelta(days=3))
    [held] = store.claim_outbox(owner, T0 + timedelta(days=3), LEASE, limit=1)
    assert held.id == held_id
    expired = store.expire_outbox(T0 + timedelta(days=1), T0 + timedelta(days=3))
    assert [(r.email, r.last_error) for r in expired] == [("old@example.org", "451")]  # not the one in hand
    assert store.purge_outbox(T0 + timedelta(days=3)) == 0
    assert store.purge_outbox(T0 + timedelta(days=3, seconds=1)) == 1
    assert sorted((r.email, r.state) for r in store.outbox_rows()) == [
        ("held@example.org", "queued"), ("new@example.org", "queued")]


def test_removing_a_subscriber_removes_their_outbox_rows(store: Store) -> None:
    store.add_subscriber("a@example.org", now=T0)
    store.queue_mail("confirm", "A@example.org", "<a@x>", now=T0)
    store.queue_subscribe("b@example.org", now=T0)
    store.remove_subscriber("a@example.org")
    assert [r.email for r in store.outbox_rows()] == ["b@example.org"]


def test_a_batch_is_committed_sending_with_its_message_ids_and_the_inactive_ones_skipped(store: Store) -> None:
    for email in ("a@example.org", "b@example.org", "c@example.org", "d@example.org"):
        store.add_subscriber(email, confirmed=True, now=T0)
    store.prepare_day(DAY, T0)
    ids = {s.email: s.id for s in store.list_subscribers()}
    store.unsubscribe("b@example.org", T0)
    statuses = store.start_sending_batch(DAY, [(ids["a@example.org"], "<a@x>"), (ids["b@example.org"], "<b@x>"),
                                               (ids["c@example.org"], "<c@x>")], T0,
                                         skipped={ids["d@example.org"]: "no article matches"})
    assert statuses == {ids["a@example.org"]: "active", ids["b@example.org"]: "unsubscribed",
                        ids["c@example.org"]: "active"}
    assert [(d.email, d.state, d.message_id, d.last_error) for d in store.ledger(DAY)] == [
        ("a@example.org", "sending", "<a@x>", ""), ("b@example.org", "skipped", "", "subscriber is unsubscribed"),
        ("c@example.org", "sending", "<c@x>", ""), ("d@example.org", "skipped", "", "no article matches")]
    store.mark_permanent(DAY, ids["c@example.org"], "550 no", bounce_after=5, now=T0)
    store.start_sending_batch(DAY, [(ids["c@example.org"], "<c@x>")], T0)
    store.mark_sent_batch(DAY, [ids["a@example.org"], ids["c@example.org"]], T0 + timedelta(seconds=1))
    rows = {d.email: d for d in store.ledger(DAY)}
    assert [(rows[e].state, rows[e].attempts, rows[e].sent_at) for e in ("a@example.org", "c@example.org")] == [
        ("sent", 1, T0 + timedelta(seconds=1)), ("sent", 2, T0 + timedelta(seconds=1))]
    c = store.get_subscriber("c@example.org")
    assert c is not None and c.permanent_failures == 0  # a success resets the count, as mark_sent does
    store.mark_sent_batch(DAY, [], T0)  # nothing to commit


def test_a_batch_larger_than_an_in_list_is_committed_whole(store: Store) -> None:
    subscribers = [Subscriber(0, f"r{n:04d}@example.org", "", "active", (), (), T0, T0, None) for n in range(1203)]
    store.import_subscribers(subscribers, T0)
    store.prepare_day(DAY, T0)
    ids = [s.id for s in store.list_subscribers()]
    statuses = store.start_sending_batch(DAY, [(sid, f"<{sid}@x>") for sid in ids], T0)
    assert set(statuses.values()) == {"active"} and len(statuses) == 1203
    store.mark_sent_batch(DAY, ids, T0)
    assert store.ledger_counts(DAY)["sent"] == 1203


# -- the preference centre: daily or weekly, pauses, the subscriber's own data --------------------


def rows_by_address(store: Store, days: list[date]) -> dict[str, list[tuple[date, str]]]:
    found: dict[str, list[tuple[date, str]]] = {}
    for day in days:
        for row in store.ledger(day):
            found.setdefault(row.email, []).append((row.day, row.kind))
    return found


def test_weekly_subscribers_get_one_weekly_row_on_their_weekday_once_a_week_across_days_and_reruns(
        store: Store) -> None:
    first = date(2026, 3, 1)  # a Sunday: its digest arrives on Monday 2 March
    store.add_subscriber("daily@example.org", confirmed=True, now=T0)
    for email, weekday in (("monday@example.org", 0), ("thursday@example.org", 3)):
        store.add_subscriber(email, confirmed=True, now=T0)
        store.update_preferences(email, categories=(), tags=(), frequency="weekly", weekday=weekday)
    days = [first + timedelta(days=n) for n in range(16)]
    for day in days:
        run_at = datetime(day.year, day.month, day.day, 23, 30, tzinfo=UTC)
        arrives = (day + timedelta(days=1)).weekday()
        for _ in range(2):  # a rerun of the day adds nothing
            store.prepare_day(day, run_at, weekly_on=arrives)
        if day == date(2026, 3, 8):
            # Monday's weekly went out in the 8th's run; moved to Tuesday, the next is a week later, not tomorrow.
            store.update_preferences("monday@example.org", categories=(), tags=(), frequency="weekly", weekday=1)
    rows = rows_by_address(store, days)
    assert rows["daily@example.org"] == [(day, "daily") for day in days]
    assert rows["thursday@example.org"] == [(date(2026, 3, 4), "weekly"), (date(2026, 3, 11), "weekly")]
    assert rows["monday@example.org"] == [(date(2026, 3, 1), "weekly"), (date(2026, 3, 8), "weekly"),
                                          (date(2026, 3, 16), "weekly")]
    # Without weekly_on (a caller that sends no weekly digests) no weekly row is made.
    assert store.prepare_day(date(2026, 3, 23), T0) == 1


def test_a_paused_subscriber_gets_no_row_until_the_pause_ends_and_a_pause_since_preparing_skips_the_send(
        store: Store) -> None:
    store.add_subscriber("p@example.org", confirmed=True, now=T0)
    store.add_subscriber("q@example.org", confirmed=True, now=T0)
    paused = store.pause("p@example.org", T0 + timedelta(days=3))
    assert (paused.paused_until, paused.paused(T0), paused.paused(T0 + timedelta(days=3))) == (
        T0 + timedelta(days=3), True, False)
    for n in range(5):
        store.prepare_day(DAY + timedelta(days=n), T0 + timedelta(days=n), weekly_on=0)
    rows = rows_by_address(store, [DAY + timedelta(days=n) for n in range(5)])
    assert [day for day, _ in rows["p@example.org"]] == [DAY + timedelta(days=3), DAY + timedelta(days=4)]
    assert len(rows["q@example.org"]) == 5
    # Paused after the day was prepared: the row is skipped when its turn comes.
    later = DAY + timedelta(days=10)
    store.prepare_day(later, T0 + timedelta(days=10))
    q = store.get_subscriber("q@example.org")
    assert q is not None
    store.pause("q@example.org", T0 + timedelta(days=12))
    assert store.start_sending(later, q.id, "<m@example.org>", T0 + timedelta(days=10)) == "paused"
    assert [(d.email, d.state, d.last_error) for d in store.ledger(later) if d.email == "q@example.org"] == [
        ("q@example.org", "skipped", "subscriber is paused")]
    assert store.pause("q@example.org", None).paused_until is None
    # The same in a batch (what a send does).
    again = later + timedelta(days=1)
    store.prepare_day(again, T0 + timedelta(days=11))
    store.pause("q@example.org", T0 + timedelta(days=12))
    assert store.start_sending_batch(again, [(q.id, "<n@example.org>")], T0 + timedelta(days=11)) == {q.id: "paused"}
    assert [(d.state, d.last_error) for d in store.ledger(again) if d.email == "q@example.org"] == [
        ("skipped", "subscriber is paused")]


def test_preferences_are_checked_and_saved_and_a_resubscribe_from_the_link_needs_no_confirmation(
        store: Store) -> None:
    store.add_subscriber("a@example.org", confirmed=True, categories=["yicai"], now=T0)
    with pytest.raises(SubscriberError, match="frequency 'monthly' is not one of daily, weekly"):
        store.update_preferences("a@example.org", categories=(), tags=(), frequency="monthly", weekday=0)
    with pytest.raises(SubscriberError, match="weekday 7 is not 0"):
        store.update_preferences("a@example.org", categories=(), tags=(), frequency="weekly", weekday=7)
    with pytest.raises(SubscriberError, match=r"nobody@example\.org is not a subscriber"):
        store.update_preferences("nobody@example.org", categories=(), tags=(), frequency="daily", weekday=0)
    sub = store.update_preferences("A@example.org", categories=["cailianshe", "jrj"], tags=["IPO"],
                                   frequency="weekly", weekday=4)
    assert (sub.categories, sub.tags, sub.frequency, sub.weekday, sub.status) == (
        ("cailianshe", "jrj"), ("IPO",), "weekly", 4, "active")
    store.unsubscribe("a@example.org", T0 + timedelta(days=1))
    back = store.resubscribe("a@example.org", T0 + timedelta(days=2))
    assert (back.status, back.confirmed_at, back.unsubscribed_at, back.categories, back.frequency) == (
        "active", T0, None, ("cailianshe", "jrj"), "weekly")
    store.add_subscriber("p@example.org", now=T0)
    assert store.resubscribe("p@example.org", T0).status == "pending"  # only a confirmation makes it active


def everything_about(store: Store, sub: Subscriber) -> list[str]:
    """Every row of every table that holds the subscriber's id or address, named by table."""
    from finews_feeds.mail.migrations import METADATA

    found = []
    with store.engine.connect() as conn:
        for table in METADATA.sorted_tables:
            for row in conn.execute(table.select()):
                values = row._mapping
                if (values.get("subscriber_id") == sub.id or (table.name == "subscribers" and values["id"] == sub.id)
                        or any(isinstance(v, str) and sub.email.lower() in v.lower() for v in values.values())):
                    found.append(table.name)
    return found


def test_a_subscribers_data_holds_every_row_about_them_and_erasing_leaves_none(store: Store) -> None:
    store.add_subscriber("Ann@example.org", name="Ann", confirmed=True, categories=["yicai"], now=T0)
    store.add_subscriber("bob@example.org", confirmed=True, now=T0)
    ann = store.get_subscriber("ann@example.org")
    assert ann is not None
    store.prepare_day(DAY, T0)
    store.mark_sent(DAY, ann.id, T0 + timedelta(minutes=1))
    store.queue_subscribe("ann@example.org", name="Ann", categories=["cailianshe"], now=T0 + timedelta(hours=1))
    store.queue_mail("manage", "bob@example.org", "<b@example.org>", now=T0)
    data = store.subscriber_data("ANN@example.org", T0 + timedelta(days=1))
    assert data is not None
    assert list(data) == ["format", "exported_at", "subscriber", "deliveries", "events", "outbox"]
    assert (data["format"], data["exported_at"]) == ("finews-feeds subscriber data, version 1",
                                                     "2026-03-02T08:00:00+00:00")
    assert data["subscriber"] == {
        "id": ann.id, "email": "Ann@example.org", "email_key": "ann@example.org", "name": "Ann", "status": "active",
        "categories": ["yicai"], "tags": [], "created_at": "2026-03-01T08:00:00+00:00",
        "confirmed_at": "2026-03-01T08:00:00+00:00", "unsubscribed_at": None, "bounced_at": None,
        "permanent_failures": 0, "frequency": "daily", "weekday": 0, "paused_until": None,
    }
    assert [(d["day"], d["email"], d["state"], d["kind"], d["sent_at"]) for d in data["deliveries"]] == [
        ("2026-02-28", "Ann@example.org", "sent", "daily", "2026-03-01T08:01:00+00:00")]
    assert sorted(data["deliveries"][0]) == sorted([
        "day", "subscriber_id", "email", "state", "attempts", "last_error", "message_id", "run_owner", "lease_until",
        "created_at", "updated_at", "sent_at", "kind"])
    [queued] = data["outbox"]
    assert (queued["kind"], queued["email"], queued["payload"]) == (
        "subscribe", "ann@example.org", {"name": "Ann", "categories": ["cailianshe"], "tags": []})
    assert store.subscriber_data("nobody@example.org") is None

    assert sorted(everything_about(store, ann)) == ["deliveries", "outbox", "subscribers"]
    erased = store.erase_subscriber("ann@example.org")
    assert erased is not None and erased.email == "Ann@example.org"
    assert everything_about(store, ann) == []
    assert store.get_subscriber("ann@example.org") is None
    assert store.erase_subscriber("ann@example.org") is None
    bob = store.get_subscriber("bob@example.org")
    assert bob is not None and sorted(everything_about(store, bob)) == ["deliveries", "outbox", "subscribers"]
