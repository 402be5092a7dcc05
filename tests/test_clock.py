"""The one wall clock: aware UTC, and the default of the mail modules that read the time."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from finews_feeds import clock
from finews_feeds.clock import utc_now
from finews_feeds.mail import outbox, store
from finews_feeds.mail.outbox import OutboxWorker
from finews_feeds.mail.store import Store


def test_utc_now_is_an_aware_utc_time_between_two_readings_of_the_system_clock() -> None:
    before = datetime.now(UTC)
    now = utc_now()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= after


def test_the_outbox_worker_reads_the_one_clock_by_default() -> None:
    assert inspect.signature(OutboxWorker).parameters["clock"].default is clock.utc_now
    assert outbox.utc_now is clock.utc_now


def test_the_store_takes_the_one_clock_when_no_time_is_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    monkeypatch.setattr(store, "utc_now", lambda: fixed)
    with Store.open(f"sqlite:///{tmp_path / 'db.sqlite3'}") as opened:
        assert opened.add_subscriber("a@example.org").created_at == fixed
        with pytest.raises(ValueError, match="aware"):
            opened.add_subscriber("b@example.org", now=datetime(2026, 3, 1, 8, 0))
