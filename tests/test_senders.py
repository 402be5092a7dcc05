"""Sender processes (issue 14): a run's messages built and sent by processes of their own, against a real
aiosmtpd server, and what must not change when they are: everyone once, failures recorded as on
threads, a sender process that dies loses no subscriber, the rate limit held across processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from smtp_fakes import Sink, make_collection, make_config, wait_until
from test_delivery import run_cli, write_config

from finews_feeds.config import Config
from finews_feeds.errors import ConfigError, DeliveryError, ErrorRecord, FinewsError
from finews_feeds.mail.delivery import DeliveryReport, send_digest, sender_processes
from finews_feeds.mail.mailer import transport_from_config
from finews_feeds.mail.senders import PROCESSES_FROM_MESSAGES, RateLimiter
from finews_feeds.mail.store import Store, Subscriber

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)


@pytest.fixture
def sink() -> Sink:
    return Sink(pipelining=True)


def fill(store: Store, count: int) -> list[str]:
    emails = [f"r{n:03d}@example.org" for n in range(count)]
    store.import_subscribers([Subscriber(0, e, "", "active", (), (), T0, T0, None) for e in emails], T0)
    return emails


def send(config: Config, store: Store, **options: Any) -> DeliveryReport:
    return send_digest(config, store, lambda: transport_from_config(config), DAY, make_collection(),
                       lambda: datetime.now(UTC), cores=2, **options)


def copies(sink: Sink) -> dict[str, list[str]]:
    """recipient -> the Message-IDs of the messages it got."""
    return {rcpt: [str(m.message["Message-ID"]) for m in msgs] for rcpt, msgs in sink.by_recipient().items()}


def test_two_sender_processes_send_everyone_one_message_and_the_report_names_them(
        sink: Sink, port: int, store: Store) -> None:
    emails = fill(store, 150)
    report = send(make_config(port, smtp={"processes": 2}), store)
    assert (report.sent, report.connections, report.processes, report.ok) == (150, 3, 2, True)
    assert report.timing_line().endswith("over 3 SMTP connections from 2 sender processes")
    got = copies(sink)
    assert sorted(got) == emails and all(len(ids) == 1 for ids in got.values())
    # Each message was built in a sender process from the row's Message-ID, as on threads.
    assert {d.email: d.message_id for d in store.ledger(DAY)} == {rcpt: ids[0] for rcpt, ids in got.items()}
    assert {d.state for d in store.ledger(DAY)} == {"sent"}
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("processes", [1, 2])
def test_refusals_and_retries_are_recorded_the_same_from_sender_processes_as_from_threads(
        sink: Sink, port: int, store: Store, processes: int) -> None:
    emails = fill(store, 120)
    sink.rcpt_replies = {emails[7]: "550 5.1.1 no such user"}
    sink.data_replies = ["451 4.3.0 try again", "451 4.3.0 try again"]
    report = send(make_config(port, smtp={"processes": processes}), store)
    assert report.processes == (2 if processes == 2 else 0)
    assert (report.sent, report.retried, dict(report.failed)) == (
        119, 2, {"permanent: 550 5.1.1 no such user": 1})
    assert report.permanent_failures == [(emails[7], "550 5.1.1 no such user (at RCPT TO r007@example.org)")]
    states = {d.email: d.state for d in store.ledger(DAY)}
    assert states.pop(emails[7]) == "failed-permanent" and set(states.values()) == {"sent"}
    assert sorted(copies(sink)) == sorted(set(emails) - {emails[7]})


def test_an_error_that_ends_the_run_in_a_sender_process_comes_back_as_itself(
        sink: Sink, port: int, store: Store) -> None:
    fill(store, 120)
    # The server offers no STARTTLS: each connection refuses to go on in the clear.
    config = make_config(port, smtp={"processes": 2, "security": "starttls"})
    with pytest.raises(DeliveryError) as threads:
        send_digest(config, store, lambda: transport_from_config(config), DAY, make_collection(),
                    lambda: datetime.now(UTC))
    store.release_run(DAY, "", T0, finished=False)
    with pytest.raises(DeliveryError) as processes:
        send(config, store)
    assert processes.value.message == threads.value.message and "STARTTLS" in processes.value.message
    assert processes.value.exit_code == DeliveryError.exit_code
    assert sink.messages == []


def test_a_sender_process_killed_mid_send_loses_nobody_and_resends_only_its_messages_in_flight(
        sink: Sink, port: int, store: Store) -> None:
    emails = fill(store, 150)
    sink.delay = 0.01
    # The 40th message's 250 is held back while a sender process is killed: the server has
    # messages whose outcome the ledger never gets.
    sink.hold_message, sink.hold_seconds = 40, 3.0
    config = make_config(port, smtp={"processes": 2})
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["report"] = send(config, store)
        except DeliveryError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: len(sink.messages) >= 40 and len(multiprocessing.active_children()) == 2)
    victim = multiprocessing.active_children()[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(60)
    error = outcome["error"]
    assert f"{victim.name} ended (exit code -9)" in error.message and "same Message-ID" in (error.hint or "")
    left = {d.email: d.message_id for d in store.ledger(DAY) if d.state == "sending"}
    assert left  # the killed process's messages in flight: unknown whether the server took them

    sink.hold_message = None
    again = send(config, store)
    assert again.ok and again.resent == len(left)
    got = copies(sink)
    assert sorted(got) == emails
    twice = {rcpt: ids for rcpt, ids in got.items() if len(ids) > 1}
    # Only rows left `sending` go out twice, and with the Message-ID they had.
    assert set(twice) <= set(left), (twice, left)
    assert all(ids == [left[rcpt]] * 2 for rcpt, ids in twice.items())
    assert len(sink.messages) == len(emails) + len(twice)
    assert {d.state for d in store.ledger(DAY)} == {"sent"}


def test_the_rate_limit_is_one_slot_for_the_limiters_of_every_process() -> None:
    shared = multiprocessing.get_context("spawn").Value("d", 0.0)
    waits: list[float] = []
    clock = [100.0]
    first = RateLimiter(4.0, lambda: clock[0], waits.append, shared=shared)
    second = RateLimiter(4.0, lambda: clock[0], waits.append, shared=shared)
    first.wait()
    second.wait()
    first.wait()
    assert waits == [0.25, 0.5]
    clock[0] = 200.0  # long after: the next slot is now
    second.wait()
    assert waits == [0.25, 0.5] and shared.value == 200.25


@pytest.mark.parametrize(("setting", "messages", "connections", "cores", "expected"), [
    (0, PROCESSES_FROM_MESSAGES, 8, 4, 4),  # automatic: one a core of the run's share
    (0, PROCESSES_FROM_MESSAGES, 8, 1, 1),  # a worker among as many as the cores: its own threads
    (0, PROCESSES_FROM_MESSAGES - 1, 8, 4, 1),
    (1, 100_000, 8, 4, 1),
    (3, 150, 8, 1, 3),
    (4, 150, 3, 4, 3),  # never more processes than connections to share out
    (2, 10, 1, 2, 1),
])
def test_how_many_processes_a_send_gets(setting: int, messages: int, connections: int, cores: int,
                                        expected: int) -> None:
    config = make_config(25, smtp={"processes": setting})
    assert sender_processes(config, messages, connections, cores) == expected


def test_a_negative_number_of_processes_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^smtp.processes = -1: must not be negative$"):
        make_config(25, smtp={"processes": -1})


def test_an_error_record_restores_the_class_message_hint_and_exit_code() -> None:
    restored = ErrorRecord.of(DeliveryError("login refused", hint="check the password")).restore()
    assert type(restored) is DeliveryError
    assert (restored.message, restored.hint, restored.exit_code) == ("login refused", "check the password", 8)
    bug = ErrorRecord.of(KeyError("x")).restore()
    assert type(bug) is FinewsError and bug.message == "KeyError: 'x'"


def _children(pid: int) -> list[int]:
    """The sender processes of ``pid``: its multiprocessing children, not the resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc")
def test_sender_processes_end_by_themselves_when_their_run_is_killed(
        sink: Sink, port: int, store: Store, tmp_path: Path) -> None:
    fill(store, 150)
    sink.delay = 0.02
    config = tmp_path / "finews.toml"
    write_config(config, port, f"sqlite:///{tmp_path}/var/finews.sqlite3")
    proc = run_cli(config, "digest", "--date", "2022-04-20", "--send", "--out", str(tmp_path / "out"), wait=False,
                   env={"FINEWS_SMTP_PROCESSES": "2"})
    try:
        assert wait_until(lambda: len(_children(proc.pid)) == 2 and len(sink.messages) >= 10, timeout=60)
        children = _children(proc.pid)
        proc.kill()
        proc.wait(30)
        # Their pipe closed: each finishes the message it is on and ends, no SIGTERM needed.
        assert wait_until(lambda: not any(_running(pid) for pid in children), timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    sent = {d.email for d in store.ledger(DAY) if d.state == "sent"}
    assert sent and sent <= set(sink.by_recipient())
