"""Acting on a parsed report (:mod:`.reports`): whom it is about, and what the store records.

Whom, most trusted first:

1. a signed unsubscribe token (the original's ``List-Unsubscribe``, a mailed request's subject):
   only we can make one, so it cannot name someone else;
2. the VERP address the report came back to (``bounces+ann=example.org@...``): survives reports
   that mangle or leave out everything else;
3. the delivery ledger, by the original's Message-ID: works for feedback loops that redact the
   recipient (Microsoft's and others');
4. the recipient the report states.

A mailed unsubscribe request is acted on only with a valid token (1): its From address is too
easily forged to unsubscribe someone by. A provider's unsubscribe event (an authenticated webhook)
names its recipient, which is believed. A report about an address that is no subscriber is
recorded nowhere (there is no one to act on) and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..config import Config
from ..errors import TokenError
from ..logs import subscriber_event
from .reports import Report
from .store import Store
from .tokens import read_token

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one finding of a report did."""

    kind: str  #: the finding's kind (reports.KINDS)
    email: str  #: the subscriber it was attributed to ("" when nobody could be)
    result: str  #: store.EVENT_OUTCOMES, or "unidentified"
    how: str = ""  #: which clue named the subscriber: token, verp, message-id, recipient


def _token_email(secret: str, tokens: tuple[str, ...]) -> str:
    for token in tokens:
        try:
            return read_token(secret, "unsubscribe", token)
        except TokenError:
            continue
    return ""


def identify(report: Report, secret: str, sent_to: Callable[[str], str | None]) -> list[tuple[str, str]]:
    """(address, how) for each finding of ``report``; ("", "") for one nobody can be named for."""
    by_token = _token_email(secret, report.tokens)
    by_ledger = ""
    if report.original_message_id and not (by_token or report.verp):
        by_ledger = sent_to(report.original_message_id) or ""
    shared = [(by_token, "token"), (report.verp, "verp"), (by_ledger, "message-id")]
    out: list[tuple[str, str]] = []
    for finding in report.findings:
        if report.format == "unsubscribe":
            # A mailed request: anyone can write any From, so only our signed token names someone.
            out.append((by_token, "token") if by_token else ("", ""))
            continue
        # We send one recipient per message, so the message's own clues name everyone it reports on.
        candidates = [*shared, (finding.recipient, "recipient")] if len(report.findings) == 1 else [
            (finding.recipient, "recipient"), *shared]
        out.append(next(((a.lower(), how) for a, how in candidates if a), ("", "")))
    return out


def apply_report(config: Config, store: Store, report: Report, source: str, now: datetime) -> list[Outcome]:
    """Record each finding of ``report`` and act on it (bounced, unsubscribed); one transaction each."""
    secret = config.secret_key
    outcomes: list[Outcome] = []
    for finding, (email, how) in zip(report.findings, identify(report, secret, store.sent_to), strict=True):
        if not email:
            log.warning("%s report %s: cannot tell which subscriber it is about (%s)", report.format,
                        report.report_id, finding.kind, extra={"report": report.report_id})
            outcomes.append(Outcome(finding.kind, "", "unidentified"))
            continue
        result = store.record_event(
            email, finding.kind, f"{report.report_id} {email} {finding.kind}", source, status=finding.status,
            detail=finding.detail, message_id=report.original_message_id, bounce_after=config.smtp.bounce_after,
            soft_weight=config.bounces.soft_weight, window_days=config.bounces.window_days, now=now)
        if result in ("bounced", "unsubscribed"):
            subscriber_event(log, f"{result} by a {finding.kind} report ({report.format}, via {source})", email)
        else:
            log.info("%s report %s (%s): %s", report.format, report.report_id, finding.kind, result,
                     extra={"report": report.report_id, "outcome": result})
        outcomes.append(Outcome(finding.kind, email, result, how))
    return outcomes
