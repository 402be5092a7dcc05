"""Logging: the set-up (called by the CLI only), plain lines or JSON objects on stderr; and how the
library logs a subscriber's steps.

Every line starts with its time in UTC with a ``Z`` and milliseconds (:func:`~finews_feeds.clock.iso`),
in text and JSON alike. A log call gives the facts a machine wants (the day, counts, seconds, the
address or file concerned) as ``extra={...}``; a JSON line carries them as fields beside
``message``, a text line only in its words.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from .clock import iso

#: The attributes every record has, and uvicorn's copy of its message with terminal colours;
#: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName",
                                                                              "color_message"}
#: Libraries that are chatty at INFO.
_NOISY = ("apscheduler.executors", "uvicorn.access", "mail.log", "watchdog")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


class TextFormatter(logging.Formatter):
    """``2026-12-02T03:30:00.123Z INFO finews_feeds.feeds.build: feeds built: ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso(record.created, "milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso(record.created, "milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def subscriber_event(logger: logging.Logger, message: str, address: str, **extra: Any) -> None:
    """Log one step of a subscriber (subscribe, confirm, unsubscribe) at INFO, naming the address only
    when ``logger`` logs at DEBUG: who subscribed is personal data, kept out of the logs unless an
    operator asks for it."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.info("%s: %s", message, address, extra={**extra, "address": address})
    else:
        logger.info("%s", message, extra=extra)
