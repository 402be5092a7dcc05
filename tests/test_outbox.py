"""The outbox worker against a real SMTP server (aiosmtpd on loopback) that stalls, refuses, answers
4xx and 5xx, and recovers; across a restart; and two workers on one database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from smtp_fakes import Sink, database_url, free_port, make_config, postgres_available, running, stalled, wait_until

from finews_feeds.config import Config
from finews_feeds.mail.mailer import transport_from_config
from finews_feeds.mail.outbox import OutboxWorker, backoff
from finews_feeds.mail.store import Store, new_owner

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ]),
]


@dataclass
class Clock:
    """A wall clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as value:
        yield value


def config_for(port: int, url: str, **outbox: Any) -> Config:
    return make_config(port, url, smtp={"timeout": 5.0}, outbox=outbox)


def worker_for(config: Config, store: Store, clock: Clock | None = None) -> OutboxWorker:
    if clock is None:
        return OutboxWorker(config, store, lambda: transport_from_config(config))
    return OutboxWorker(config, store, lambda: transport_from_config(config), clock=clock)


def confirm_rows(store: Store) -> list[tuple[str, str, int]]:
    return [(row.email, row.state, row.attempts) for row in store.outbox_rows("confirm")]


def test_a_confirmation_queued_while_the_server_stalls_then_refuses_is_sent_once_it_recovers(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    config = make_config(port, url, smtp={"timeout": 0.5},
                         outbox={"backoff_seconds": 0.05, "max_backoff_seconds": 0.2, "poll_seconds": 0.1})
    sink = Sink()
    with Store.open(url) as store:
        worker = worker_for(config, store)
        worker.start()
        try:
            with stalled(port):  # accepts, never greets: each attempt ends at the 0.5 s timeout
                store.queue_subscribe("reader@example.org", now=datetime.now(UTC))
                worker.wake()
                assert wait_until(lambda: store.outbox_rows("confirm") and store.outbox_rows("confirm")[0].attempts >= 2)
                [row] = store.outbox_rows("confirm")
                assert (row.state, "timed out" in row.last_error or "closed" in row.last_error) == ("queued", True), row
            # Nothing listens now: connections are refused.
            tried = store.outbox_rows("confirm")[0].attempts
            assert wait_until(lambda: store.outbox_rows("confirm")[0].attempts >= tried + 2)
            assert "refused" in store.outbox_rows("confirm")[0].last_error
            assert store.outbox_rows("confirm")[0].state == "queued"
            with running(sink, port=port):  # the server is back
                assert wait_until(lambda: store.outbox_rows("confirm")[0].state == "sent")
        finally:
            worker.stop()
            assert worker.join(10)
        [row] = store.outbox_rows("confirm")
        assert [m.rcpt_tos for m in sink.messages] == [["reader@example.org"]]
        assert sink.messages[0].message["Message-ID"] == row.message_id
        assert row.attempts >= 5 and row.last_error == "" and row.finished_at is not None


def test_a_4xx_is_retried_with_doubling_waits_up_to_the_cap_and_given_up_after_the_lifetime(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink(rcpt_replies={"slow@example.org": "451 4.7.1 greylisted, try later"})
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    clock = Clock()
    with running(sink) as port, Store.open(url) as store:
        config = config_for(port, url, backoff_seconds=60.0, max_backoff_seconds=300.0, lifetime_hours=1.0)
        worker = worker_for(config, store, clock)
        store.queue_subscribe("slow@example.org", now=clock())
        waits = []
        for _ in range(7):
            assert worker.run_once() >= 1
            [row] = store.outbox_rows("confirm")
            assert (row.state, row.last_error) == ("queued", "451 4.7.1 greylisted, try later (at RCPT TO slow@example.org)")
            waits.append((row.next_attempt_at - clock()).total_seconds())
            clock.now = row.next_attempt_at - timedelta(seconds=1)
            assert worker.run_once() == 0  # not before its time
            clock.now = row.next_attempt_at
        assert waits == [60, 120, 240, 300, 300, 300, 300]
        assert [backoff(config, n).total_seconds() for n in (1, 2, 3, 4, 50, 10_000)] == [60, 120, 240, 300, 300, 300]
        clock.now = T0 + timedelta(hours=1)
        with caplog.at_level(logging.ERROR, logger="finews_feeds.mail.outbox"):
            assert worker.run_once() == 1
        assert confirm_rows(store) == [("slow@example.org", "expired", 8)]
        assert "gave up on the confirm mail to slow@example.org after 8 attempts over 1:00:00" in caplog.text
        clock.now += timedelta(days=1)
        assert worker.run_once() == 0
    assert sink.messages == []


def test_a_5xx_fails_the_mail_at_once_and_it_is_never_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(rcpt_replies={"nobody@example.org": "550 5.1.1 no such user"})
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    clock = Clock()
    with running(sink) as port, Store.open(url) as store:
        worker = worker_for(config_for(port, url), store, clock)
        store.queue_subscribe("nobody@example.org", now=clock())
        store.queue_subscribe("somebody@example.org", now=clock())
        with caplog.at_level(logging.ERROR, logger="finews_feeds.mail.outbox"):
            assert worker.run_once() == 4
        clock.now += timedelta(days=1)
        assert worker.run_once() == 0
        assert confirm_rows(store) == [("nobody@example.org", "failed", 1), ("somebody@example.org", "sent", 1)]
    assert "confirm mail to nobody@example.org refused, not retried: 550 5.1.1 no such user" in caplog.text
    assert [m.rcpt_tos for m in sink.messages] == [["somebody@example.org"]]


def test_while_the_server_is_unreachable_one_mail_tries_for_all_and_the_rest_wait_for_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    clock = Clock()
    port = free_port()  # nothing listens
    sink = Sink()
    with Store.open(url) as store:
        worker = worker_for(config_for(port, url, backoff_seconds=60.0), store, clock)
        for n in range(5):
            store.queue_subscribe(f"r{n}@example.org", now=clock())
        assert worker.run_once() == 6  # five forms, then one mail: the server refused it
        assert sorted(a for _, _, a in confirm_rows(store)) == [0, 0, 0, 0, 1]
        clock.now += timedelta(seconds=30)
        assert worker.run_once() == 0  # the others wait for the failed one's next attempt
        clock.now += timedelta(seconds=30)
        assert worker.run_once() == 1
        assert sorted(a for _, _, a in confirm_rows(store)) == [0, 0, 0, 1, 1]
        clock.now += timedelta(seconds=60)
        with running(sink, port=port):
            assert worker.run_once() == 5
        assert {state for _, state, _ in confirm_rows(store)} == {"sent"}
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [f"r{n}@example.org" for n in range(5)]


def test_mail_queued_before_a_stop_is_sent_by_the_next_worker_after_a_restart(url: str) -> None:
    clock = Clock()
    port = free_port()
    sink = Sink()
    with Store.open(url) as store:  # the first daemon: the server is down
        config = config_for(port, url, backoff_seconds=60.0)
        first = worker_for(config, store, clock)
        first.start()
        for n in range(3):
            store.queue_subscribe(f"r{n}@example.org", now=clock())
        first.wake()
        assert wait_until(lambda: sum(a for _, _, a in confirm_rows(store)) == 1 and len(confirm_rows(store)) == 3)
        first.stop()
        assert first.join(10)
    clock.now += timedelta(minutes=1)
    with running(sink, port=port), Store.open(url) as store:  # the next start, the server back
        second = worker_for(config, store, clock)
        second.start()
        second.wake()
        try:
            assert wait_until(lambda: {state for _, state, _ in confirm_rows(store)} == {"sent"})
        finally:
            second.stop()
            assert second.join(10)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["r0@example.org", "r1@example.org", "r2@example.org"]


def test_a_mail_held_by_a_worker_that_died_is_sent_by_another_once_the_lease_runs_out(url: str) -> None:
    clock = Clock()
    sink = Sink()
    with running(sink) as port, Store.open(url) as store:
        config = config_for(port, url, lease_seconds=600.0)
        store.add_subscriber("a@example.org", now=clock())
        row_id = store.queue_mail("confirm", "a@example.org", "<held@news.example.org>", now=clock())
        assert [r.id for r in store.claim_outbox(new_owner(), clock(), timedelta(seconds=600))] == [row_id]
        # ... and that worker's process was killed in the middle of the send.
        other = worker_for(config, store, clock)
        clock.now += timedelta(seconds=599)
        assert other.run_once() == 0
        clock.now += timedelta(seconds=1)
        assert other.run_once() == 1
        assert confirm_rows(store) == [("a@example.org", "sent", 1)]
    assert [m.message["Message-ID"] for m in sink.messages] == ["<held@news.example.org>"]


def test_two_workers_on_one_database_send_every_confirmation_once(url: str) -> None:
    sink = Sink(delay=0.01)
    emails = [f"r{n:02d}@example.org" for n in range(30)]
    with running(sink) as port, Store.open(url) as one, Store.open(url) as two:
        config = config_for(port, url)
        for email in emails:
            one.queue_subscribe(email, now=datetime.now(UTC))
        workers = [worker_for(config, one), worker_for(config, two)]
        for worker in workers:
            worker.start()
        try:
            assert wait_until(lambda: len(sink.messages) >= 30 and one.outbox_counts()["queued"] == 0, timeout=60)
        finally:
            for worker in workers:
                worker.stop()
            assert all(worker.join(10) for worker in workers)
        assert {email: len(received) for email, received in sink.by_recipient().items()} == dict.fromkeys(emails, 1)
        assert {row.state for row in one.outbox_rows()} == {"done", "sent"}


def test_a_confirmation_no_longer_wanted_is_skipped_not_sent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    clock = Clock()
    sink = Sink()
    with running(sink) as port, Store.open(url) as store:
        worker = worker_for(config_for(port, url), store, clock)
        store.queue_subscribe("a@example.org", now=clock())
        store.queue_subscribe("a@example.org", now=clock())
        assert worker.run_once(("subscribe",)) == 2
        store.confirm("a@example.org", clock())  # the first mail's link was followed meanwhile
        assert worker.run_once() == 2
        assert [(r.state, r.last_error) for r in store.outbox_rows("confirm")] == [
            ("skipped", "subscriber is active"), ("skipped", "subscriber is active")]
    assert sink.messages == []
