"""How far a send is: the figures of a send in progress, the log line, the final report's timing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from smtp_fakes import SECRET, Sink, make_collection, make_config, running
from test_delivery import write_config

from finews_feeds.mail import delivery
from finews_feeds.mail.delivery import DeliveryReport, SendProgress, send_digest
from finews_feeds.mail.mailer import transport_from_config
from finews_feeds.mail.store import Store, Subscriber
from finews_feeds.service.daemon import DaemonStatus, send_result

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_figures_of_a_send_in_progress_give_its_rate_and_time_left() -> None:
    clock = Clock()
    progress = SendProgress(DAY, clock)
    assert progress.snapshot() == {"day": "2022-04-20", "done": 0, "total": 0, "sent": 0, "seconds": 0.0,
                                   "rate": 0.0, "eta_seconds": None}
    progress.begin(20_000)
    assert progress.line() == "digest 2022-04-20: 0/20000"
    clock.now += 4.0
    progress.update(3_000, 2_990)
    assert progress.snapshot() == {"day": "2022-04-20", "done": 3000, "total": 20000, "sent": 2990, "seconds": 4.0,
                                   "rate": 750.0, "eta_seconds": 22.7}
    assert progress.line() == "digest 2022-04-20: 3000/20000, 750 msgs/s, about 23 s left"
    progress.update(3_100, 3_090)
    clock.now += 96.0  # 100 s in, 31 a second: 9 min 8 s left
    assert progress.line() == "digest 2022-04-20: 3100/20000, 31 msgs/s, about 9 min 05 s left"


def test_the_final_report_says_how_long_and_how_fast() -> None:
    report = DeliveryReport(day=DAY, sent=20_000, seconds=16.0, connections=8, resent=3,
                            failed=Counter({"temporary: 451 later": 2}))
    assert report.rate == 1250.0
    assert report.timing_line() == "digest 2022-04-20: 20000 sent in 16.0 s (1250 msgs/s) over 8 SMTP connections"
    fields = report.fields()
    assert (fields["rate"], fields["connections"], fields["failed_by_reason"], fields["resent"]) == (
        1250.0, 8, {"temporary: 451 later": 2}, 3)
    assert DeliveryReport(day=DAY, connections=1).timing_line() == (
        "digest 2022-04-20: 0 sent in 0.0 s (0 msgs/s) over 1 SMTP connection")
    result = send_result(report, T0)
    assert (result["seconds"], result["rate"], result["connections"], result["failed_by_reason"]) == (
        16.0, 1250.0, 8, {"temporary: 451 later": 2})


def test_the_daemon_status_shows_the_send_in_progress_and_nothing_once_it_ends() -> None:
    clock = Clock()
    status = DaemonStatus(started_at=T0)
    assert status.snapshot(0.0)["send_running"] is None
    progress = SendProgress(DAY, clock)
    progress.begin(1000)
    status.send_started(progress)
    clock.now += 2.0
    progress.update(500, 499)
    assert status.snapshot(0.0)["send_running"] == {"day": "2022-04-20", "done": 500, "total": 1000, "sent": 499,
                                                    "seconds": 2.0, "rate": 250.0, "eta_seconds": 2.0}
    status.send_started(None)
    assert status.snapshot(0.0)["send_running"] is None


def test_a_send_keeps_its_tracker_up_to_date_and_logs_its_progress(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "PROGRESS_LOG_SECONDS", 0.0)  # every group commit, not every 10 s
    sink = Sink()
    emails = [f"r{n:03d}@example.org" for n in range(120)]
    with running(sink) as port, Store.open(f"sqlite:///{tmp_path}/db.sqlite3") as store:
        store.import_subscribers([Subscriber(0, e, "", "active", (), (), T0, T0, None) for e in emails], T0)
        config = make_config(port)
        tracker = SendProgress(DAY)
        with caplog.at_level(logging.INFO, logger="finews_feeds.mail.delivery"):
            report = send_digest(config, store, lambda: transport_from_config(config), DAY, make_collection(),
                                 lambda: T0, tracker=tracker)
    figures = tracker.snapshot()
    assert (figures["done"], figures["total"], figures["sent"], report.sent, report.connections) == (120, 120, 120,
                                                                                                   120, 2)
    lines = [r for r in caplog.records if r.getMessage().startswith("digest 2022-04-20: ") and "/120" in r.getMessage()]
    assert lines and lines[-1].getMessage().startswith("digest 2022-04-20: 120/120")
    assert lines[-1].__dict__["done"] == 120 and lines[-1].__dict__["total"] == 120
    dones = [r.__dict__["done"] for r in lines]
    assert dones == sorted(dones)


def test_the_send_command_prints_how_long_it_took_before_its_summary(tmp_path: Path) -> None:
    sink = Sink()
    with running(sink) as port:
        db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
        config = tmp_path / "finews.toml"
        write_config(config, port, db)
        with Store.open(db) as store:
            store.add_subscriber("a@example.org", confirmed=True, now=T0)
        env = {**os.environ, "FINEWS_SECRET_KEY": SECRET}
        env.pop("FINEWS_CONFIG", None)
        proc = subprocess.run([sys.executable, "-m", "finews_feeds", "--config", str(config), "digest", "--date",
                               "2022-04-20", "--send", "--out", str(tmp_path / "out")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    timing, summary = proc.stdout.splitlines()[-2:]
    assert timing.startswith("digest 2022-04-20: 1 sent in ") and timing.endswith(" over 1 SMTP connection")
    assert summary == "digest 2022-04-20: sent 1, skipped 0, retried 0, failed 0"
    assert "sending" not in proc.stderr  # no bar off a terminal
