"""Reading the bounces mailbox over IMAP (``imaplib``): bounces, complaints and mailed unsubscribe
requests, each acted on and then put away.

One poll (:func:`poll_mailbox`): log in (IMAPS, STARTTLS or plain, ``bounces.imap_security``),
select ``bounces.imap_folder``, and for each unseen message not marked as skipped: fetch it
without setting ``\\Seen`` (``BODY.PEEK[]``), parse it (:mod:`.reports`), record what it says
(:mod:`.bounces`, each finding committed in its own transaction), and only then move it to
``bounces.imap_done_folder`` (or flag it ``\\Seen``). A poll that dies between the commit and the
move leaves the message unseen: the next poll reads it again, and the store, keyed by the
report's id, finds it recorded already, so nothing counts twice.

A message that is no report (an out-of-office reply, a person writing in) is flagged with the
keyword ``$FinewsSkipped`` and left unseen for a person: later polls pass over it. Messages larger
than :data:`MAX_MESSAGE_BYTES` are skipped the same way, unread.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..clock import utc_now
from ..config import Config
from ..errors import MailboxError, StoreError
from .bounces import apply_report
from .reports import parse_report
from .store import Store

log = logging.getLogger(__name__)

#: The keyword on messages a poll did not understand; they stay unseen for a person.
SKIPPED = "$FinewsSkipped"
#: Reports are small; a message larger than this is no report we read (its text is not fetched).
MAX_MESSAGE_BYTES = 5 * 1024 * 1024
#: Messages handled per poll at most: a flood is worked through over several polls, not in one.
MAX_PER_POLL = 1000
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


@dataclass
class MailboxReport:
    """What one poll did."""

    read: int = 0
    #: Findings by their outcome ("hard: bounced", "complaint: unsubscribed", ...).
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Messages left unseen for a person (not a report, or too large).
    skipped: int = 0
    #: Messages that failed (the store unreachable, ...): left unseen and read again next time.
    failed: int = 0

    def summary(self) -> str:
        done = ", ".join(f"{outcome} {n}" for outcome, n in sorted(self.outcomes.items()))
        return (f"bounces mailbox: read {self.read}, left for a person {self.skipped}, failed {self.failed}"
                + (f" ({done})" if done else ""))


def _port(config: Config) -> int:
    if config.bounces.imap_port:
        return config.bounces.imap_port
    return 993 if config.bounces.imap_security == "tls" else 143


def connect(config: Config, context: ssl.SSLContext | None = None) -> imaplib.IMAP4:
    """A logged-in IMAP connection as ``[bounces]`` says; :class:`MailboxError` when that fails."""
    host, port, security = config.bounces.imap_host, _port(config), config.bounces.imap_security
    where = f"{host}:{port}"
    context = context or ssl.create_default_context()
    try:
        conn: imaplib.IMAP4
        if security == "tls":
            conn = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=config.bounces.imap_timeout)
        else:
            conn = imaplib.IMAP4(host, port, timeout=config.bounces.imap_timeout)
            if security == "starttls":
                conn.starttls(ssl_context=context)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"cannot connect to the bounces mailbox at {where} ({security}): {exc}",
                           hint="check bounces.imap_host, imap_port and imap_security") from None
    try:
        conn.login(config.bounces.imap_username, config.imap_password)
    except (OSError, imaplib.IMAP4.error) as exc:
        _logout(conn)
        raise MailboxError(f"the bounces mailbox at {where} refused the login of "
                           f"{config.bounces.imap_username!r}: {_said(exc)}",
                           hint="check bounces.imap_username and FINEWS_IMAP_PASSWORD") from None
    return conn


def _said(exc: BaseException) -> str:
    text = str(exc)
    return text[2:-1] if text.startswith(("b'", 'b"')) else text


def _logout(conn: imaplib.IMAP4) -> None:
    with contextlib.suppress(OSError, imaplib.IMAP4.error):
        conn.logout()


def _check(result: tuple[str, Sequence[Any]], what: str) -> Sequence[Any]:
    status, data = result
    if status != "OK":
        raise MailboxError(f"the bounces mailbox refused {what}: {data!r}")
    return data


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Folder:
    """The selected folder and how to put a message away in it."""

    def __init__(self, conn: imaplib.IMAP4, config: Config) -> None:
        self.conn = conn
        self.done = config.bounces.imap_done_folder
        capabilities = {str(c).upper() for c in conn.capabilities}
        self.move = "MOVE" in capabilities
        self.uidplus = "UIDPLUS" in capabilities
        if self.done:
            # CREATE of an existing folder fails; that is the answer wanted.
            conn.create(_quote(self.done))
        _check(conn.select(_quote(config.bounces.imap_folder)), f"to open the folder {config.bounces.imap_folder!r}")

    def waiting(self) -> list[str]:
        data = _check(self.conn.uid("SEARCH", "UNSEEN", "UNKEYWORD", SKIPPED), "to search for unseen messages")
        first = data[0] if data else b""
        return first.decode("ascii", "replace").split() if isinstance(first, bytes) else []

    def size(self, uid: str) -> int:
        data = _check(self.conn.uid("FETCH", uid, "(RFC822.SIZE)"), "to give a message's size")
        for item in data:
            found = _SIZE.search(item if isinstance(item, bytes) else b"")
            if found:
                return int(found.group(1))
        return 0

    def fetch(self, uid: str) -> bytes | None:
        data = _check(self.conn.uid("FETCH", uid, "(BODY.PEEK[])"), "to give a message")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        return None  # gone meanwhile (another poller, a person)

    def skip(self, uid: str) -> None:
        _check(self.conn.uid("STORE", uid, "+FLAGS", f"({SKIPPED})"), "to mark a message")

    def put_away(self, uid: str) -> None:
        if not self.done:
            _check(self.conn.uid("STORE", uid, "+FLAGS", "(\\Seen)"), "to flag a message seen")
            return
        _check(self.conn.uid("STORE", uid, "+FLAGS", "(\\Seen)"), "to flag a message seen")
        if self.move:
            _check(self.conn.uid("MOVE", uid, _quote(self.done)), f"to move a message to {self.done!r}")
            return
        _check(self.conn.uid("COPY", uid, _quote(self.done)), f"to copy a message to {self.done!r}")
        _check(self.conn.uid("STORE", uid, "+FLAGS", "(\\Deleted)"), "to delete a message")
        if self.uidplus:
            _check(self.conn.uid("EXPUNGE", uid), "to expunge a message")
        else:
            _check(self.conn.expunge(), "to expunge")


def process_files(config: Config, store: Store, messages: list[tuple[str, bytes]],
                  now: Callable[[], datetime] = utc_now) -> list[str]:
    """Act on saved report messages (name, bytes), as a poll would; one line per message saying what it did."""
    lines: list[str] = []
    for name, data in messages:
        parsed = parse_report(data, config.bounces.address)
        if not parsed.understood:
            lines.append(f"{name}: not a report ({parsed.format}); nothing done")
            continue
        outcomes = apply_report(config, store, parsed, "file", now())
        said = "; ".join(f"{o.kind} {o.email or '(nobody identified)'}: {o.result}" for o in outcomes)
        lines.append(f"{name}: {parsed.format} {parsed.report_id}: {said}")
    return lines


def run_bounces(config: Config, *, once: bool, stop: threading.Event, now: Callable[[], datetime] = utc_now,
                echo: Callable[[str], None] = print) -> MailboxReport:
    """Read the mailbox once, or every ``bounces.poll_minutes`` until ``stop`` is set (the CLI's
    ``bounces``); returns the last poll's report. A failed poll in the loop is logged and tried
    again at the next interval; with ``once`` it raises."""
    minutes = config.bounces.poll_minutes or 10
    with Store.open(config.database.url) as store:
        while True:
            try:
                report = poll_mailbox(config, store, now=now, stop=stop)
                echo(report.summary())
            except MailboxError as exc:
                if once:
                    raise
                log.error("%s", exc.message)
                report = MailboxReport(failed=1)
            if once or stop.wait(minutes * 60):
                return report


def poll_mailbox(config: Config, store: Store, *, now: Callable[[], datetime] = utc_now,
                 context: ssl.SSLContext | None = None, stop: threading.Event | None = None) -> MailboxReport:
    """Read the unseen messages of the bounces mailbox once and act on them (see the module's text).

    Raises :class:`MailboxError` when the mailbox cannot be reached or refuses a command; what
    was done until then is committed and put away.
    """
    if not config.bounces.imap_host:
        raise MailboxError("bounces.imap_host is not set: there is no bounces mailbox to read",
                           hint="set bounces.imap_host, imap_username and FINEWS_IMAP_PASSWORD (docs/bounces.md)")
    report = MailboxReport()
    conn = connect(config, context)
    try:
        folder = _Folder(conn, config)
        for uid in folder.waiting()[:MAX_PER_POLL]:
            if stop is not None and stop.is_set():
                break
            if folder.size(uid) > MAX_MESSAGE_BYTES:
                log.warning("bounces mailbox: message %s is larger than %d bytes; left for a person", uid,
                            MAX_MESSAGE_BYTES)
                folder.skip(uid)
                report.skipped += 1
                continue
            data = folder.fetch(uid)
            if data is None:
                continue
            report.read += 1
            parsed = parse_report(data, config.bounces.address)
            if not parsed.understood:
                log.info("bounces mailbox: %s (%s) is no report; left for a person", parsed.report_id,
                         parsed.subject[:80], extra={"report": parsed.report_id})
                folder.skip(uid)
                report.skipped += 1
                continue
            try:
                outcomes = apply_report(config, store, parsed, "imap", now())
            except StoreError as exc:
                # The database away: this message and the rest stay unseen for the next poll.
                report.failed += 1
                raise MailboxError(f"bounces mailbox: {parsed.report_id} not recorded ({exc.message}); it and the "
                                   "rest are read again at the next poll") from None
            for outcome in outcomes:
                report.outcomes[f"{outcome.kind}: {outcome.result}"] += 1
            # Only now, after the store's commits: a crash before this reads it again, harmlessly.
            folder.put_away(uid)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"the bounces mailbox connection failed: {_said(exc)}",
                           hint="what was read before is recorded; the rest is read at the next poll") from None
    finally:
        _logout(conn)
    log.info("%s", report.summary(), extra={"read": report.read, "skipped": report.skipped, "failed": report.failed})
    return report
