"""Sending a large digest over a pool of SMTP connections: each subscriber still gets exactly one message."""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from smtp_fakes import (
    PG_CONNINFO,
    Sink,
    database_url,
    make_collection,
    make_config,
    postgres_available,
    wait_until,
)
from test_delivery import run_cli, write_config

from finews_feeds.config import Config
from finews_feeds.mail.delivery import MESSAGES_PER_CONNECTION, WINDOW_PER_CONNECTION, DeliveryReport, send_digest
from finews_feeds.mail.mailer import transport_from_config
from finews_feeds.mail.message import message_id
from finews_feeds.mail.store import Store, Subscriber

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)


def add(store: Store, count: int) -> list[str]:
    emails = [f"r{n:04d}@example.org" for n in range(count)]
    store.import_subscribers([Subscriber(0, e, "", "active", (), (), T0, T0, None) for e in emails], T0)
    return emails


def send(config: Config, store: Store, **kwargs: Any) -> DeliveryReport:
    kwargs.setdefault("now", lambda: T0)
    return send_digest(config, store, lambda: transport_from_config(config), DAY, make_collection(), **kwargs)


def counts(sink: Sink) -> dict[str, int]:
    return {rcpt: len(msgs) for rcpt, msgs in sink.by_recipient().items()}


def test_a_large_send_opens_one_connection_per_fifty_messages_up_to_the_limit(
        sink: Sink, port: int, store: Store) -> None:
    emails = add(store, 3 * MESSAGES_PER_CONNECTION)
    report = send(make_config(port, smtp={"connections": 8}), store)
    assert (report.sent, report.connections, report.ok) == (150, 3, True)
    assert len({r.peer for r in sink.messages}) == 3
    assert counts(sink) == dict.fromkeys(emails, 1)
    assert {d.state for d in store.ledger(DAY)} == {"sent"}
    assert {r.rcpt_tos[0]: r.message["Message-ID"] for r in sink.messages} == {
        e: message_id(DAY, e, "news.example.org") for e in emails}
    again = send(make_config(port, smtp={"connections": 8}), store)
    assert (again.sent, again.already_sent, again.connections) == (0, 150, 1)


def test_the_connection_limit_caps_the_pool(sink: Sink, port: int, store: Store) -> None:
    add(store, 6 * MESSAGES_PER_CONNECTION)
    report = send(make_config(port, smtp={"connections": 2}), store)
    assert (report.sent, report.connections) == (300, 2)
    assert len({r.peer for r in sink.messages}) == 2


def test_a_temporary_failure_waits_off_its_connection_and_is_retried_later_in_the_run(
        sink: Sink, port: int, store: Store) -> None:
    emails = add(store, 2 * MESSAGES_PER_CONNECTION)
    sink.data_replies[:] = ["451 4.7.1 greylisted, try again later"]
    report = send(make_config(port, smtp={"connections": 2, "retry_backoff": 0.3}), store)
    assert (report.sent, report.retried, dict(report.failed)) == (100, 1, {})
    assert counts(sink) == dict.fromkeys(emails, 1)
    ledger = store.ledger(DAY)
    retried = [d.email for d in ledger if d.attempts == 2]
    assert len(retried) == 1 and {d.attempts for d in ledger if d.email not in retried} == {1}
    # While it waited out its backoff, the connections went on with the other messages.
    order = [r.rcpt_tos[0] for r in sink.messages]
    assert order.index(retried[0]) > 20


def test_a_temporary_failure_past_the_retries_is_left_for_the_next_run_without_holding_the_others(
        sink: Sink, port: int, store: Store) -> None:
    emails = add(store, 2 * MESSAGES_PER_CONNECTION)
    sink.rcpt_replies[emails[3]] = "452 4.2.2 mailbox full"
    config = make_config(port, smtp={"connections": 2, "retry_backoff": 0.05, "max_retries": 2})
    report = send(config, store)
    assert (report.sent, report.retried, dict(report.failed), report.aborted) == (
        99, 2, {"temporary: 452 4.2.2 mailbox full": 1}, "")
    assert [(d.state, d.attempts) for d in store.ledger(DAY) if d.email == emails[3]] == [("failed-temporary", 3)]
    del sink.rcpt_replies[emails[3]]
    again = send(config, store)
    assert (again.sent, again.already_sent) == (1, 99)
    assert counts(sink) == dict.fromkeys(emails, 1)


def test_connections_dropped_by_the_server_are_reopened_each_on_its_own(sink: Sink, port: int, store: Store) -> None:
    emails = add(store, 3 * MESSAGES_PER_CONNECTION)
    sink.drop_after = 7
    report = send(make_config(port, smtp={"connections": 3}), store)
    assert (report.sent, report.retried) == (150, 0)
    assert counts(sink) == dict.fromkeys(emails, 1)
    assert len(sink.connections) >= 150 // 7


def test_the_rate_limit_holds_across_all_connections(sink: Sink, port: int, store: Store) -> None:
    add(store, 2 * MESSAGES_PER_CONNECTION)
    waits: list[float] = []
    # The clock stands still: each message's slot is its place in one shared schedule, whoever sends it.
    report = send(make_config(port, smtp={"connections": 2, "rate_per_second": 4.0}), store,
                  sleep=waits.append)
    assert (report.sent, report.connections) == (100, 2)
    assert sorted(waits) == [n * 0.25 for n in range(1, 100)]


def test_someone_who_unsubscribes_during_a_pool_send_gets_nothing_after_it(sink: Sink, port: int, store: Store) -> None:
    emails = add(store, 4 * MESSAGES_PER_CONNECTION)
    leaver = emails[-1]

    def progress(done: int, total: int) -> None:
        if done and store.get_subscriber(leaver).status == "active":  # type: ignore[union-attr]
            store.unsubscribe(leaver, T0)

    report = send(make_config(port, smtp={"connections": 2}), store, progress=progress)
    assert (report.sent, dict(report.skipped)) == (199, {"subscriber is unsubscribed": 1})
    assert leaver not in counts(sink)
    assert [(d.state, d.last_error) for d in store.ledger(DAY) if d.email == leaver] == [
        ("skipped", "subscriber is unsubscribed")]


def test_a_stop_finishes_what_is_committed_sending_and_a_rerun_sends_the_rest(
        sink: Sink, port: int, store: Store) -> None:
    import threading

    emails = add(store, 4 * MESSAGES_PER_CONNECTION)
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= 50:
            stop.set()

    config = make_config(port, smtp={"connections": 2})
    report = send(config, store, stop=stop, progress=progress)
    assert report.stopped and 50 <= report.sent < 200
    states = {d.state for d in store.ledger(DAY)}
    assert states == {"sent", "pending"}  # nothing left `sending`: what was committed went out
    rest = send(config, store)
    assert (rest.sent, rest.resent, rest.already_sent) == (200 - report.sent, 0, report.sent)
    assert counts(sink) == dict.fromkeys(emails, 1)


# -- killed with SIGKILL at random points of a pool send, through the CLI ------------------------


def advisory_locks() -> int:
    """Advisory locks held on the test server: a sending run holds one for as long as its session lives."""
    with psycopg.connect(PG_CONNINFO) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
        return int(row[0]) if row else 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kind", [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ]),
])
def test_a_pool_send_killed_at_a_random_point_and_rerun_sends_everyone_once_but_the_window(
        sink: Sink, port: int, tmp_path: Path, kind: str, seed: int) -> None:
    chance = random.Random(seed)
    count = 6 * MESSAGES_PER_CONNECTION
    with database_url(kind, tmp_path) as db:
        config = tmp_path / "finews.toml"
        write_config(config, port, db)
        with Store.open(db) as store:
            emails = add(store, count)
            store.add_subscriber("pending@example.org", now=T0)
        args = ("digest", "--date", "2022-04-20", "--send", "--out", str(tmp_path / "out"))
        kill_after = chance.randrange(1, count - 20)
        proc = run_cli(config, *args, wait=False)
        try:
            assert wait_until(lambda: len(sink.messages) >= kill_after, timeout=120), (
                proc.stderr.read() if proc.stderr else "")
            time.sleep(chance.uniform(0, 0.05))  # anywhere: mid-DATA, mid-commit, between batches
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        if kind == "postgresql":
            # A COMMIT the server had whole when the client died still completes: read the ledger once
            # the killed run's session is gone (its advisory lock with it).
            wait_until(lambda: not advisory_locks(), timeout=10)
        with Store.open(db) as store:
            left_sending = {d.email for d in store.ledger(DAY) if d.state == "sending"}
        window = min(8, count // MESSAGES_PER_CONNECTION) * WINDOW_PER_CONNECTION
        assert len(left_sending) <= window
        before = len(sink.messages)
        again = run_cli(config, *args)
        out = again.stdout.read() if again.stdout else ""
        assert again.returncode == 0, out + (again.stderr.read() if again.stderr else "")
        assert f"resent after a crash {len(left_sending)}" in out or not left_sending, out
        received = sink.by_recipient()
        assert set(received) == set(emails)
        twice = {email for email, copies in received.items() if len(copies) > 1}
        # A duplicate only where the killed run had committed `sending` and not yet `sent`: the window.
        assert twice <= left_sending
        assert all(len(copies) <= 2 for copies in received.values())
        for email, copies in received.items():
            assert {c.message["Message-ID"] for c in copies} == {message_id(DAY, email, "news.example.org")}
        with Store.open(db) as store:
            assert {d.state for d in store.ledger(DAY)} == {"sent"}
        assert len(sink.messages) - before == count - (before - len(twice))


def test_a_bug_in_a_connection_thread_ends_the_run_with_its_error_and_a_rerun_sends_everyone_once(
        sink: Sink, port: int, store: Store) -> None:
    from email.message import EmailMessage

    from smtp_fakes import outcome_within

    from finews_feeds.mail.mailer import SmtpTransport

    class Broken(SmtpTransport):
        def send(self, msg: EmailMessage | bytes, *, sender: str = "", recipients: tuple[str, ...] = ()) -> None:
            raise RuntimeError("a bug")

    emails = add(store, 2 * MESSAGES_PER_CONNECTION)
    config = make_config(port, smtp={"connections": 2})
    result = outcome_within(60, lambda: send_digest(config, store, lambda: Broken("127.0.0.1", port, security="none"),
                                                    DAY, make_collection(), lambda: T0))
    assert isinstance(result, RuntimeError) and str(result) == "a bug"
    assert store.try_claim_run(DAY, "next-run", T0) is None  # the claim was released
    store.release_run(DAY, "next-run", T0, finished=False)
    assert send(config, store).sent == 100
    assert counts(sink) == dict.fromkeys(emails, 1)
