"""The daemon's schedule: one digest per local day across DST changes, catch-up of a missed run,
and jobs defined with explicit ids and a real misfire grace."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, available_timezones

from apscheduler.triggers.cron import CronTrigger
from hypothesis import given, settings
from hypothesis import strategies as st

from finews_feeds.config import build_config
from finews_feeds.service.scheduler import (
    DIGEST_JOB,
    DIGEST_NOW_JOB,
    REBUILD_JOB,
    REBUILD_NOW_JOB,
    DailyTrigger,
    catch_up_time,
    create_scheduler,
    latest_fire_time,
    next_fire_times,
    parse_send_at,
    retry_time,
    scheduler_status,
)

NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(times: list[datetime], zone: ZoneInfo) -> list[str]:
    return [t.astimezone(UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M %z") for t in times]


def test_spring_forward_in_new_york_keeps_one_digest_a_day_at_local_time() -> None:
    trigger = DailyTrigger(time(7, 30), NEW_YORK)
    fires = next_fire_times(trigger, datetime(2024, 3, 8, tzinfo=NEW_YORK), 4)
    assert local(fires, NEW_YORK) == [
        "2024-03-08 07:30 -0500",
        "2024-03-09 07:30 -0500",
        "2024-03-10 07:30 -0400",
        "2024-03-11 07:30 -0400",
    ]


def test_fall_back_in_new_york_keeps_one_digest_a_day_at_local_time() -> None:
    trigger = DailyTrigger(time(7, 30), NEW_YORK)
    fires = next_fire_times(trigger, datetime(2024, 11, 1, tzinfo=NEW_YORK), 4)
    assert local(fires, NEW_YORK) == [
        "2024-11-01 07:30 -0400",
        "2024-11-02 07:30 -0400",
        "2024-11-03 07:30 -0500",
        "2024-11-04 07:30 -0500",
    ]


def test_send_time_in_the_repeated_hour_is_not_sent_twice() -> None:
    start = datetime(2024, 11, 2, tzinfo=NEW_YORK)
    # Plain cron fires twice at 01:30 on 3 November: the reason for DailyTrigger.
    cron = CronTrigger(hour=1, minute=30, timezone=NEW_YORK)
    assert local(next_fire_times(cron, start, 3), NEW_YORK) == [
        "2024-11-02 01:30 -0400",
        "2024-11-03 01:30 -0400",
        "2024-11-03 01:30 -0500",
    ]
    fires = next_fire_times(DailyTrigger(time(1, 30), NEW_YORK), start, 3)
    assert local(fires, NEW_YORK) == [
        "2024-11-02 01:30 -0400",
        "2024-11-03 01:30 -0400",
        "2024-11-04 01:30 -0500",
    ]


def test_send_time_in_the_skipped_hour_is_not_skipped() -> None:
    fires = next_fire_times(DailyTrigger(time(2, 30), NEW_YORK), datetime(2024, 3, 9, tzinfo=NEW_YORK), 3)
    # 02:30 does not exist on 10 March; the run happens one hour later by the clock, that day.
    assert local(fires, NEW_YORK) == [
        "2024-03-09 02:30 -0500",
        "2024-03-10 03:30 -0400",
        "2024-03-11 02:30 -0400",
    ]


@settings(max_examples=40, deadline=None)
@given(
    zone_name=st.sampled_from(sorted(z for z in available_timezones() if "/" in z and not z.startswith("Etc/"))),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 1, 15, 30, 45, 59]),
    start_day=st.dates(date(2023, 1, 1), date(2026, 12, 31)),
)
def test_every_zone_gets_exactly_one_run_per_local_day(zone_name: str, hour: int, minute: int, start_day: date) -> None:
    zone = ZoneInfo(zone_name)
    start = datetime.combine(start_day, time(0, 0), zone)
    fires = next_fire_times(DailyTrigger(time(hour, minute), zone), start, 60)
    days = [f.astimezone(zone).date() for f in fires]
    assert days == [start_day + timedelta(days=i) for i in range(60)]
    assert all(b - a >= timedelta(hours=22) for a, b in pairwise(fires))


def test_a_daemon_started_after_the_send_time_catches_up_once() -> None:
    trigger = DailyTrigger(time(7, 30), SHANGHAI)
    grace = timedelta(minutes=720)
    started = datetime(2022, 4, 21, 9, 0, tzinfo=SHANGHAI)
    assert catch_up_time(trigger, started, grace) == datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI)
    # Before today's send time, yesterday's run is 23.5 hours old: past the grace, nothing to catch up.
    assert catch_up_time(trigger, datetime(2022, 4, 21, 7, 0, tzinfo=SHANGHAI), grace) is None
    assert catch_up_time(trigger, datetime(2022, 4, 21, 19, 31, tzinfo=SHANGHAI), grace) is None
    assert catch_up_time(trigger, datetime(2022, 4, 21, 19, 30, tzinfo=SHANGHAI), grace) == datetime(
        2022, 4, 21, 7, 30, tzinfo=SHANGHAI
    )


def test_latest_fire_time_is_the_run_a_late_start_stands_for() -> None:
    trigger = DailyTrigger(time(7, 30), NEW_YORK)
    assert latest_fire_time(trigger, datetime(2024, 3, 10, 12, 0, tzinfo=NEW_YORK)) == datetime(
        2024, 3, 10, 7, 30, tzinfo=NEW_YORK
    )
    assert latest_fire_time(trigger, datetime(2024, 3, 10, 7, 29, tzinfo=NEW_YORK)) == datetime(
        2024, 3, 9, 7, 30, tzinfo=NEW_YORK
    )


def test_parse_send_at_accepts_hh_mm_only() -> None:
    assert parse_send_at("07:30") == time(7, 30)
    assert parse_send_at("7:05") == time(7, 5)
    for bad in ("24:00", "07:60", "07:30:00", "0730"):
        try:
            parse_send_at(bad)
        except Exception as exc:
            assert "digest.send_at" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


def test_jobs_have_explicit_ids_a_long_grace_coalesce_and_one_instance() -> None:
    config = build_config({"digest": {"send_at": "07:30"}, "scheduler": {"rebuild_every_minutes": 10, "misfire_grace_minutes": 90}})
    clock = lambda: datetime(2022, 4, 21, 6, 0, tzinfo=SHANGHAI)  # noqa: E731
    at = datetime(2022, 4, 21, 6, 0, 5, tzinfo=SHANGHAI)
    scheduler = create_scheduler(config, SHANGHAI, rebuild=lambda: None, digest=lambda _: None, clock=clock, digest_at=at)
    scheduler.start(paused=True)
    try:
        jobs = {job.id: job for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)
    assert sorted(jobs) == sorted([REBUILD_JOB, REBUILD_NOW_JOB, DIGEST_JOB, DIGEST_NOW_JOB])
    for job in jobs.values():
        assert job.misfire_grace_time == 90 * 60
        assert job.coalesce is True
        assert job.max_instances == 1
    assert str(jobs[DIGEST_JOB].trigger) == "daily at 07:30 Asia/Shanghai"
    assert jobs[DIGEST_NOW_JOB].args == (at,)


def test_missed_digest_runs_at_start_with_the_time_it_was_due() -> None:
    zone = SHANGHAI
    now = datetime.now(zone)
    due = (now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    config = build_config({"digest": {"send_at": due.strftime("%H:%M")}, "scheduler": {"rebuild_every_minutes": 0}})
    calls: list[datetime] = []
    ran = threading.Event()

    def digest(fired: datetime) -> None:
        calls.append(fired)
        ran.set()

    scheduler = create_scheduler(config, zone, rebuild=lambda: None, digest=digest, clock=lambda: datetime.now(zone))
    scheduler.start()
    try:
        assert ran.wait(5)
        status = scheduler_status(scheduler)
    finally:
        scheduler.shutdown(wait=True)
    assert calls == [due]
    assert status["state"] == "running"
    # Next run: the same time tomorrow (a day later by the clock), never a second run today.
    # Written as every time for an operator is: UTC with a Z.
    assert status["next_run_times"][DIGEST_JOB] == (due + timedelta(days=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert REBUILD_JOB not in status["next_run_times"]


def test_a_failed_digest_run_is_retried_with_backoff_within_the_grace() -> None:
    fired = datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI)
    grace = timedelta(minutes=720)
    after = [retry_time(fired, fired + timedelta(minutes=1), n, 300.0, grace) for n in (1, 2, 3, 4, 5, 9)]
    assert [(a - fired - timedelta(minutes=1)).total_seconds() for a in after if a] == [
        300.0, 600.0, 1200.0, 1800.0, 1800.0, 1800.0]
    # A retry that would start later than the grace is not made: tomorrow's run takes over.
    assert retry_time(fired, fired + timedelta(hours=11, minutes=50), 1, 300.0, grace) == fired + timedelta(hours=11, minutes=55)
    assert retry_time(fired, fired + timedelta(hours=11, minutes=56), 1, 300.0, grace) is None
