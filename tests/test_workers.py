"""Several workers share one day's send on PostgreSQL (issue 14): real worker processes (the CLI), a real
aiosmtpd server, and the faults that matter: a worker killed, a worker that stops answering."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from smtp_fakes import SECRET, Sink, database_url, postgres_available, wait_until
from sqlalchemy import text

from finews_feeds.config import Config, build_config
from finews_feeds.errors import ConfigError
from finews_feeds.mail.delivery import MESSAGES_PER_CONNECTION, WINDOW_PER_CONNECTION, DeliveryReport
from finews_feeds.mail.store import Store, Subscriber
from finews_feeds.mail.workers import check_workers, merge_reports

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent
ARGS = ("digest", "--date", "2022-04-20", "--send")

needs_postgres = pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable")


@dataclass
class GatedSink(Sink):
    """Answers no DATA until ``gate`` is set (if there is one)."""

    gate: threading.Event | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        while self.gate is not None and not self.gate.is_set():
            await asyncio.sleep(0.05)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def sink() -> GatedSink:
    return GatedSink()


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[str]:
    with database_url("postgresql", tmp_path) as url:
        yield url


def write_config(path: Path, port: int, db: str, timeout: float = 10, **digest: float) -> Path:
    deadline = digest.pop("send_deadline_seconds", 60)
    extra = "".join(f"{key} = {value}\n" for key, value in digest.items())
    path.write_text(f"""
[site]
source = "{ROOT / 'demo-site'}"
cache_dir = "{path.parent / 'cache'}"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
rate_per_second = 0
retry_backoff = 0.01
timeout = {timeout}
send_deadline_seconds = {deadline}
[digest]
from = "finews <digest@news.example.org>"
{extra}[web]
public_url = "https://subscribe.example.org"
[database]
url = "{db}"
""", encoding="utf-8")
    return path


def fill(url: str, count: int) -> list[str]:
    emails = [f"r{n:03d}@example.org" for n in range(count)]
    with Store.open(url) as store:
        store.import_subscribers([Subscriber(0, e, "", "active", (), (), T0, T0, None) for e in emails], T0)
    return emails


def cli(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FINEWS_SECRET_KEY": SECRET}
    env.pop("FINEWS_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "finews_feeds", "--config", str(config), *args,
                             "--out", str(config.parent / "out")], cwd=config.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def owners(url: str) -> dict[str, str]:
    """email -> the worker (host:pid:random) that last claimed its row."""
    with Store.open(url) as store, store.engine.connect() as conn:
        return {email: owner for email, owner in conn.execute(text("SELECT email, run_owner FROM deliveries"))}


def states(url: str) -> set[str]:
    with Store.open(url) as store:
        return {d.state for d in store.ledger(DAY)}


def window(open_rows: int) -> int:
    """The most messages one worker keeps committed `sending` without their outcome (docs/delivery.md)."""
    pool = max(1, min(Config().smtp.connections, open_rows // MESSAGES_PER_CONNECTION))
    return 1 if pool == 1 else pool * WINDOW_PER_CONNECTION


def copies(sink: Sink) -> dict[str, list[str]]:
    """recipient -> the Message-IDs of the messages it got."""
    return {rcpt: [str(m.message["Message-ID"]) for m in msgs] for rcpt, msgs in sink.by_recipient().items()}


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
@pytest.mark.parametrize("workers", [2, 3])
def test_n_worker_processes_share_the_day_and_send_everyone_exactly_once(
        sink: Sink, port: int, pg: str, tmp_path: Path, workers: int) -> None:
    # No 250 until a second worker has claimed rows: the first holds its window (half the list) meanwhile,
    # however long the others take to start on this shared machine.
    sink.gate = threading.Event()
    emails = fill(pg, 200)
    config = write_config(tmp_path / "finews.toml", port, pg, timeout=250, send_deadline_seconds=280)
    proc = cli(config, *ARGS, "--workers", str(workers))
    try:
        # Generous: spawned workers import and collect the site first, slowly on a loaded machine.
        assert wait_until(lambda: len(set(owners(pg).values()) - {None}) >= 2, timeout=200)
    finally:
        sink.gate.set()
    code, output = finish(proc)
    assert code == 0, output
    assert "digest 2022-04-20: sent 200, skipped 0, retried 0, failed 0" in output, output
    assert {rcpt: len(ids) for rcpt, ids in copies(sink).items()} == dict.fromkeys(emails, 1)
    assert states(pg) == {"sent"}
    # The rows were shared: more than one worker claimed some.
    assert len(set(owners(pg).values())) >= 2
    again = cli(config, *ARGS, "--workers", str(workers))
    assert finish(again)[0] == 0 and len(sink.messages) == 200


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
def test_a_worker_killed_in_the_middle_has_its_rows_taken_over_at_once_and_everyone_gets_one_message(
        sink: Sink, port: int, pg: str, tmp_path: Path) -> None:
    sink.delay = 0.01
    # The 250 of the 30th message is held back; its worker is killed meanwhile: the server has the
    # message, the ledger says `sending`.
    sink.hold_message, sink.hold_seconds = 30, 120.0
    emails = fill(pg, 150)
    config = write_config(tmp_path / "finews.toml", port, pg)
    procs = [cli(config, *ARGS), cli(config, *ARGS)]
    try:
        assert wait_until(lambda: len(sink.messages) >= 30, timeout=90)
        held = sink.messages[29].rcpt_tos[0]
        owner = owners(pg)[held]
        victim = next(p for p in procs if f":{p.pid}:" in owner)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        [survivor] = [p for p in procs if p is not victim]
        code, output = finish(survivor)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, output
    found = re.search(r"resent after a crash (\d+)", output)
    assert found, output
    resent = int(found.group(1))
    got = copies(sink)
    assert set(got) == set(emails)
    # The duplicate window: the messages the killed worker had committed `sending` (at most its window),
    # taken over at once and sent again with their Message-IDs; the held one among them.
    twice = {rcpt: ids for rcpt, ids in got.items() if len(ids) > 1}
    assert held in twice and len(twice) <= resent <= window(150), (twice, resent)
    assert all(len(ids) == 2 and len(set(ids)) == 1 for ids in twice.values()), twice
    assert states(pg) == {"sent"}


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
def test_a_worker_that_stops_answering_loses_its_rows_when_its_lease_runs_out(
        sink: Sink, port: int, pg: str, tmp_path: Path) -> None:
    sink.delay = 0.02
    emails = fill(pg, 100)
    # A short lease: it must outlast one message's deadline (short here too) and the time a worker's
    # window of messages committed `sending` waits for its connections on this loaded machine.
    config = write_config(tmp_path / "finews.toml", port, pg, lease_seconds=20, send_deadline_seconds=2)
    first = cli(config, *ARGS)
    second = None
    try:
        assert wait_until(lambda: len(sink.messages) >= 20, timeout=90)
        first.send_signal(signal.SIGSTOP)  # alive, its session open, but silent
        stopped_at = len(sink.messages)
        second = cli(config, *ARGS)
        # The second worker waits for the first one's leases to run out, then sends the rest.
        code, output = finish(second)
        assert code == 0, output
        first.send_signal(signal.SIGCONT)
        first_code, first_output = finish(first)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    assert first_code == 0, first_output
    got = copies(sink)
    assert set(got) == set(emails)
    twice = {rcpt: ids for rcpt, ids in got.items() if len(ids) > 1}
    # At most the messages the first worker had committed `sending` when it stopped (its window: it
    # sends those when it resumes), each with one Message-ID; none of the rows it had only claimed.
    assert len(twice) <= window(100) and all(len(set(ids)) == 1 for ids in twice.values()), twice
    assert sum(len(ids) - 1 for ids in twice.values()) <= window(100), twice
    assert len(sink.messages) - stopped_at >= len(emails) - stopped_at
    assert states(pg) == {"sent"}


def test_more_than_one_worker_on_sqlite_is_refused_with_what_to_do(tmp_path: Path) -> None:
    config = build_config({"database": {"url": f"sqlite:///{tmp_path}/finews.sqlite3"}}, {"FINEWS_SECRET_KEY": SECRET})
    check_workers(config, 1)
    with pytest.raises(ConfigError) as caught:
        check_workers(config, 2)
    assert caught.value.message == (
        f"--workers 2: several workers need PostgreSQL; with SQLite (database.url = "
        f"'sqlite:///{tmp_path}/finews.sqlite3') one process sends a day's digest")
    assert caught.value.hint == ("run without --workers, or keep the subscribers in PostgreSQL to send from several "
                                 "processes")
    assert caught.value.exit_code == 2


def test_the_workers_reports_add_up_and_the_ledger_before_is_the_earliest_seen() -> None:
    one = DeliveryReport(DAY, total=10, open=10, sent=6, already_sent=0, resent=1, retried=2)
    one.skipped["subscriber is unsubscribed"] += 1
    two = DeliveryReport(DAY, total=10, open=4, sent=3, already_sent=6, seconds=2.5)
    two.failed["permanent: 550 no"] += 1
    two.permanent_failures.append(("x@example.org", "550 no"))
    merged = merge_reports(DAY, [one, two])
    assert (merged.total, merged.open, merged.sent, merged.already_sent, merged.resent, merged.retried,
            merged.seconds) == (10, 10, 9, 0, 1, 2, 2.5)
    assert merged.summary_lines() == [
        "digest 2022-04-20: sent 9, skipped 1, retried 2, failed 1, resent after a crash 1",
        "  skipped 1: subscriber is unsubscribed",
        "  failed 1: permanent: 550 no",
        "  permanent failure x@example.org: 550 no",
    ]
