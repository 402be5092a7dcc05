"""The wall clock, in one place: where the time matters, functions take a clock or a moment as an argument.

Also the one way a moment is written for an operator (log lines, JSON logs, ``/healthz``, times
inside messages): UTC, ISO 8601 / RFC 3339 with a ``Z``. One zone whatever the machine's or the
site's: lines from several hosts sort as text, and log collectors read it without being told a
zone. The schedule's own zone is named where it matters ("daily at 07:30 Asia/Shanghai").
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def iso(moment: datetime | float, timespec: str = "seconds") -> str:
    """``moment`` (aware, or a POSIX timestamp) in UTC as ``2026-12-02T03:30:00Z``; ``timespec`` as
    :meth:`datetime.isoformat` (``milliseconds`` for log lines)."""
    if isinstance(moment, (int, float)):
        moment = datetime.fromtimestamp(moment, UTC)
    elif moment.tzinfo is None:
        raise ValueError("iso: the moment must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
