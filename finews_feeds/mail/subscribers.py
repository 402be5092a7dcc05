"""Subscribers as CSV: import and export (addresses are checked by :mod:`.addresses`).

CSV columns: ``email`` (required), ``name``, ``status``, ``categories``, ``tags`` (comma
separated inside the field), ``created_at``, ``confirmed_at``, ``unsubscribed_at`` (ISO 8601),
``frequency`` (daily or weekly; default daily), ``weekday`` (of a weekly digest, 0 = Monday to
6 = Sunday; default 0), ``paused_until`` (ISO 8601; empty: not paused). An export imports back
to the same subscribers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..errors import SubscriberError
from ..files import atomic_write
from .addresses import MAX_NAME_CHARS, normalize_email, normalize_names
from .store import FREQUENCIES, Store, Subscriber

COLUMNS = ("email", "name", "status", "categories", "tags", "created_at", "confirmed_at", "unsubscribed_at",
           "frequency", "weekday", "paused_until")
IMPORT_STATUSES = ("pending", "active", "unsubscribed", "bounced")


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    message: str


@dataclass
class ImportReport:
    added: int = 0
    already_present: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)


def _parse_time(value: str, column: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SubscriberError(f"{column} {value!r} is not an ISO 8601 date and time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def parse_csv(text: str, now: datetime, confirmed: bool = False) -> tuple[list[Subscriber], list[BadRow]]:
    """Rows of a subscriber CSV file as subscribers, and the rows that cannot be imported.

    Without a ``status`` column a row is ``pending`` (``active`` with ``confirmed``), as with
    ``subscribers add``. A repeated address is a bad row naming the line of its first use.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "email" not in fields:
        raise SubscriberError("the CSV file has no `email` column in its first line",
                              hint=f"columns: {', '.join(COLUMNS)} (only email is required)")
    unknown = [f for f in fields if f and f not in COLUMNS]
    if unknown:
        raise SubscriberError(f"the CSV file has unknown columns: {', '.join(unknown)}",
                              hint=f"columns: {', '.join(COLUMNS)}")
    reader.fieldnames = fields
    good: list[Subscriber] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    start = 2
    for raw in reader:
        line = start
        start = reader.line_num + 1
        if None in raw:
            bad.append(BadRow(line, f"more fields than the {len(fields)} columns of the header"))
            continue
        row = {k: (v or "").strip() for k, v in raw.items() if k}
        if not any(row.values()):
            continue
        try:
            email = normalize_email(row.get("email", ""))
            if email.lower() in seen:
                raise SubscriberError(f"{email} is repeated (first on line {seen[email.lower()]})")
            status = row.get("status", "").lower() or ("active" if confirmed else "pending")
            if status not in IMPORT_STATUSES:
                raise SubscriberError(f"status {status!r} is not one of {', '.join(IMPORT_STATUSES)}")
            name = row.get("name", "")
            if len(name) > MAX_NAME_CHARS:
                raise SubscriberError(f"name is longer than {MAX_NAME_CHARS} characters")
            frequency = row.get("frequency", "").lower() or "daily"
            if frequency not in FREQUENCIES:
                raise SubscriberError(f"frequency {frequency!r} is not one of {', '.join(FREQUENCIES)}")
            weekday = row.get("weekday", "") or "0"
            if weekday not in ("0", "1", "2", "3", "4", "5", "6"):
                raise SubscriberError(f"weekday {weekday!r} is not 0 (Monday) to 6 (Sunday)")
            confirmed_at = _parse_time(row.get("confirmed_at", ""), "confirmed_at")
            unsubscribed_at = _parse_time(row.get("unsubscribed_at", ""), "unsubscribed_at")
            sub = Subscriber(
                id=0, email=email, name=name, status=status,
                categories=normalize_names(row.get("categories", ""), "category"),
                tags=normalize_names(row.get("tags", ""), "tag"),
                created_at=_parse_time(row.get("created_at", ""), "created_at") or now,
                confirmed_at=confirmed_at or (now if status == "active" else None),
                unsubscribed_at=unsubscribed_at or (now if status == "unsubscribed" else None),
                bounced_at=now if status == "bounced" else None,
                frequency=frequency, weekday=int(weekday),
                paused_until=_parse_time(row.get("paused_until", ""), "paused_until"),
            )
        except SubscriberError as exc:
            bad.append(BadRow(line, exc.message))
            continue
        seen[email.lower()] = line
        good.append(sub)
    return good, bad


def import_csv(store: Store, path: Path, now: datetime, confirmed: bool = False) -> ImportReport:
    """Import a CSV file: bad rows are reported by line, the rest go in in one transaction."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SubscriberError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise SubscriberError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                              hint="save the file as CSV UTF-8") from None
    except OSError as exc:
        raise SubscriberError(f"{path}: {exc.strerror}") from None
    good, bad = parse_csv(text, now, confirmed)
    added, present = store.import_subscribers(good, now)
    return ImportReport(added=added, already_present=present, bad_rows=bad)


def to_csv(subscribers: Sequence[Subscriber]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for sub in subscribers:
        writer.writerow([
            sub.email, sub.name, sub.status, ",".join(sub.categories), ",".join(sub.tags),
            sub.created_at.isoformat(),
            sub.confirmed_at.isoformat() if sub.confirmed_at else "",
            sub.unsubscribed_at.isoformat() if sub.unsubscribed_at else "",
            sub.frequency, str(sub.weekday), sub.paused_until.isoformat() if sub.paused_until else "",
        ])
    return out.getvalue()


def export_csv(store: Store, path: Path) -> int:
    """Write every subscriber to ``path`` (written whole, then moved into place); returns how many."""
    subs = store.list_subscribers()
    data = to_csv(subs)
    try:
        atomic_write(path, data.encode("utf-8"))
    except OSError as exc:
        raise SubscriberError(f"{path}: {exc.strerror}") from None
    return len(subs)
