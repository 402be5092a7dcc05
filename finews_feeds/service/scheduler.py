"""When the daemon works: the feed rebuild interval and the daily digest, as APScheduler 3 jobs.

Jobs are defined from config at start with explicit ids, in a memory job store: APScheduler 3
cannot coordinate several daemons through a shared job store (its FAQ says jobs then run twice),
so exactly-once sending is the delivery ledger's job, and the scheduler only has to fire at least
once a day and never twice for the same day.

APScheduler's default ``misfire_grace_time`` of one second silently drops a run that starts a
little late (a busy thread pool, a suspended VM); we use ``scheduler.misfire_grace_minutes``.
A memory job store forgets the last run across restarts, so a daemon started after the send
time computes the run it missed and schedules it at once (:func:`catch_up_time`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..clock import iso
from ..config import Config
from ..errors import ConfigError

log = logging.getLogger(__name__)

REBUILD_JOB = "rebuild"
#: A rebuild asked for by the file watcher (or at start), on top of the interval.
REBUILD_NOW_JOB = "rebuild-now"
DIGEST_JOB = "digest"
#: A digest run at a fixed moment (the daemon's hidden --digest-in option, used by tests).
DIGEST_NOW_JOB = "digest-now"
#: Another attempt at a digest run that could not reach everyone (SMTP down, 4xx replies).
DIGEST_RETRY_JOB = "digest-retry"
#: Reading the bounces mailbox (bounces, complaints, mailed unsubscribe requests).
BOUNCES_JOB = "bounces"

STATE_NAMES = {0: "stopped", 1: "running", 2: "paused"}


def parse_send_at(text: str) -> time:
    """``digest.send_at`` (``HH:MM``) as a time of day."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text)
    if not match:
        raise ConfigError(f"digest.send_at = {text!r}: expected HH:MM, e.g. 07:30")
    return time(int(match.group(1)), int(match.group(2)))


def digest_zone(config: Config, site_zone: tzinfo) -> tzinfo:
    """Zone of the send time and of the digest's day: ``digest.timezone``, else the site's."""
    return ZoneInfo(config.digest.timezone) if config.digest.timezone else site_zone


class DailyTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 ships no types
    """Fires once per calendar day in ``zone`` at a local time of day.

    A plain ``CronTrigger`` fires twice on the day clocks fall back when the time lies in the
    repeated hour (01:30 in America/New_York on the first Sunday of November), and a digest must
    not be sent twice; here each local date has exactly one fire time: the first pass of a
    repeated time, and for a time that spring-forward removes, the same instant one hour later by
    the clock (as cron does). All comparisons are in UTC: aware datetimes that share a tzinfo
    compare by wall time and ignore ``fold``.
    """

    __slots__ = ("send_at", "zone")

    def __init__(self, send_at: time, zone: tzinfo) -> None:
        self.send_at = send_at
        self.zone = zone

    def fire_on(self, day: date) -> datetime:
        """The instant (UTC) of the run for local date ``day``."""
        return datetime.combine(day, self.send_at, self.zone).astimezone(UTC)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        # As APScheduler's own triggers: the first fire after the previous one (the scheduler
        # judges a late one against misfire_grace_time), else the first at or after now.
        start = now.astimezone(UTC)
        done_day: date | None = None
        if previous_fire_time is not None:
            previous = previous_fire_time.astimezone(UTC)
            start = min(start, previous + timedelta(microseconds=1))
            done_day = previous.astimezone(self.zone).date()
        day = start.astimezone(self.zone).date() - timedelta(days=1)
        while True:
            if done_day is None or day > done_day:
                fire = self.fire_on(day)
                if fire >= start:
                    return fire.astimezone(self.zone)
            day += timedelta(days=1)

    def __str__(self) -> str:
        return f"daily at {self.send_at:%H:%M} {self.zone}"

    def __repr__(self) -> str:
        return f"<DailyTrigger {self}>"


def digest_trigger(config: Config, zone: tzinfo) -> DailyTrigger:
    return DailyTrigger(parse_send_at(config.digest.send_at), zone)


def next_fire_times(trigger: BaseTrigger, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``start``, as the scheduler would compute them one
    after the other (each run's time is the next call's ``previous`` and ``now``)."""
    times: list[datetime] = []
    previous: datetime | None = None
    now = start
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        now = fire
    return times


def latest_fire_time(trigger: BaseTrigger, now: datetime, horizon: timedelta = timedelta(days=3)) -> datetime | None:
    """The last time ``trigger`` fired at or before ``now`` (looking back at most ``horizon``)."""
    latest: datetime | None = None
    for fire in next_fire_times(trigger, now - horizon, 10_000):
        if fire > now:
            break
        latest = fire
    return latest


def catch_up_time(trigger: BaseTrigger, now: datetime, grace: timedelta) -> datetime | None:
    """The run a daemon starting at ``now`` missed and may still make up, if any.

    A daemon down at 07:30 and started at 09:00 sends that morning's digest at once; one started
    after the grace has passed waits for the next day. A run that did happen is harmless to
    repeat: the delivery ledger makes it a no-op.
    """
    latest = latest_fire_time(trigger, now)
    if latest is None or now - latest > grace:
        return None
    return latest


def rebuild_trigger(config: Config) -> IntervalTrigger | None:
    minutes = config.scheduler.rebuild_every_minutes
    return IntervalTrigger(minutes=minutes) if minutes > 0 else None


def create_scheduler(
    config: Config,
    zone: tzinfo,
    *,
    rebuild: Callable[[], None],
    digest: Callable[[datetime], None],
    clock: Callable[[], datetime],
    digest_at: datetime | None = None,
) -> BackgroundScheduler:
    """A scheduler (not started) with the daemon's jobs.

    ``rebuild`` runs at start and every ``scheduler.rebuild_every_minutes``; ``digest`` is called
    with the time the run was scheduled for (the day it covers follows from that, not from the
    moment a late run happens to start). ``digest_at`` adds a one-off digest run at that moment.
    """
    grace = timedelta(minutes=config.scheduler.misfire_grace_minutes)
    now = clock()
    scheduler = BackgroundScheduler(
        timezone=zone,
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            # None would mean "however late"; 0 minutes means "on time only".
            "misfire_grace_time": max(1, int(grace.total_seconds())),
        },
        executors={"default": {"type": "threadpool", "max_workers": 4}},
    )
    trigger = digest_trigger(config, zone)

    def run_digest() -> None:
        # The cron run covers the day of the fire time it stands for, even when it starts late.
        started = clock()
        digest(latest_fire_time(trigger, started) or started)

    interval = rebuild_trigger(config)
    if interval is not None:
        scheduler.add_job(rebuild, interval, id=REBUILD_JOB, name="rebuild feeds")
    scheduler.add_job(rebuild, DateTrigger(now), id=REBUILD_NOW_JOB, name="rebuild feeds now")

    missed = catch_up_time(trigger, now, grace)
    if missed is not None:
        log.info("digest run of %s was missed; running it now", iso(missed), extra={"scheduled": iso(missed)})
        scheduler.add_job(run_digest, trigger, id=DIGEST_JOB, name="daily digest", next_run_time=missed)
    else:
        scheduler.add_job(run_digest, trigger, id=DIGEST_JOB, name="daily digest")
    if digest_at is not None:
        scheduler.add_job(digest, DateTrigger(digest_at), args=[digest_at], id=DIGEST_NOW_JOB, name="digest (one-off)")

    def missed_run(event: JobExecutionEvent) -> None:
        log.warning("job %s missed its run at %s (later than scheduler.misfire_grace_minutes)",
                    event.job_id, iso(event.scheduled_run_time), extra={"scheduled": iso(event.scheduled_run_time)})

    scheduler.add_listener(missed_run, EVENT_JOB_MISSED)
    return scheduler


def add_bounces_job(scheduler: BackgroundScheduler, config: Config, poll: Callable[[], None], now: datetime) -> bool:
    """Read the bounces mailbox at start and every ``bounces.poll_minutes``, when one is configured."""
    minutes = config.bounces.poll_minutes
    if not config.bounces.imap_host or minutes <= 0:
        return False
    scheduler.add_job(poll, IntervalTrigger(minutes=minutes), id=BOUNCES_JOB, name="read the bounces mailbox",
                      next_run_time=now)
    return True


def retry_time(fired: datetime, now: datetime, attempt: int, first: float, grace: timedelta) -> datetime | None:
    """When to try a digest run due at ``fired`` again after ``attempt`` failed tries: ``first``
    seconds, doubling up to half an hour; None once that is past the misfire grace (the run
    would not have started that late either, and the next day's run takes over)."""
    delay = min(first * 2 ** max(0, attempt - 1), 1800.0)
    at = now + timedelta(seconds=delay)
    return at if at - fired <= grace else None


def schedule_retry(scheduler: BackgroundScheduler, digest: Callable[..., None], fired: datetime, at: datetime,
                   attempt: int) -> None:
    scheduler.add_job(digest, DateTrigger(at), args=[fired], kwargs={"attempt": attempt}, id=DIGEST_RETRY_JOB,
                      name=f"digest retry {attempt}", replace_existing=True)


def request_rebuild(scheduler: BackgroundScheduler, rebuild: Callable[[], None], at: datetime) -> None:
    """Run ``rebuild`` at ``at``; a request made before an earlier one ran replaces it, so a burst
    of file events gives one rebuild."""
    scheduler.add_job(rebuild, DateTrigger(at), id=REBUILD_NOW_JOB, name="rebuild feeds now", replace_existing=True)


def scheduler_status(scheduler: BackgroundScheduler) -> dict[str, Any]:
    """State and next run times, for /healthz."""
    jobs = {
        job.id: iso(job.next_run_time) if job.next_run_time else None
        for job in scheduler.get_jobs()
    }
    return {"state": STATE_NAMES.get(scheduler.state, str(scheduler.state)), "next_run_times": jobs}
