"""Reading what comes back after the SMTP session: delivery status notifications (DSN, RFC 3464),
complaint feedback reports (ARF, RFC 5965, and Microsoft's JMRP, which is ARF in all but its
MIME type), unsubscribe requests mailed to the ``List-Unsubscribe`` mailto, provider webhook
events (Mailgun, Postmark), and VERP addresses.

Pure: bytes (or a decoded JSON object) in, a :class:`Report` out, and :func:`parse_report` never
raises, whatever the bytes (a hypothesis test holds it to that): a mailbox that receives
bounces receives anything.

A report names its subscriber in several places, none of them always present: the VERP address
it was sent back to (:func:`verp_recipient`), the signed unsubscribe token in the original
message's ``List-Unsubscribe``, the original's Message-ID (which the delivery ledger knows), and
the recipient the report states (``Final-Recipient``, ``Original-Rcpt-To``...), which feedback
loops often redact. The report gathers them all; :mod:`.bounces` decides which to believe.

How a failure is classed (:func:`bounce_kind`): ``Action: failed`` with a 5.x.x status is a hard
bounce and with 4.x.x a soft one (the relay gave up on a temporary failure); ``Action: delayed``
is only a warning (the relay is still trying). Two 5.x.x families say nothing about the address
and count as soft: x.2.2 (mailbox full: RFC 3463 lets servers use either class for it) and x.7.x
(policy and security: the server refused *us* or this message, e.g. a blocklisted IP).
"""

from __future__ import annotations

import email
import email.parser
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

#: What one finding says happened to one recipient.
KINDS = ("hard", "soft", "delayed", "complaint", "unsubscribe")
#: Report formats: what the message (or webhook event) as a whole was recognised as.
FORMATS = ("dsn", "arf", "jmrp", "failed-recipients", "unsubscribe", "mailgun", "postmark", "unknown")
#: ARF feedback types that are a person's complaint (RFC 5965 section 7.3; auth-failure and dmarc
#: reports are about authentication, not about a subscriber, and not-spam is the opposite).
COMPLAINT_TYPES = ("abuse", "fraud", "virus")
#: Longest diagnostic text kept with an event.
MAX_DETAIL = 300
#: The shape of an itsdangerous token (payload.timestamp.signature, URL-safe base64).
TOKEN = r"[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}"
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_UNSUBSCRIBE_SUBJECT = re.compile(r"\bunsubscribe\s+(" + TOKEN + r")", re.IGNORECASE)
_UNSUBSCRIBE_URL = re.compile(r"/unsubscribe/(" + TOKEN + r")")
_MAILTO_TOKEN = re.compile(r"subject=unsubscribe(?:%20|\+|\s)(" + TOKEN + r")", re.IGNORECASE)
_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+")
_JMRP_SENDERS = ("staff@hotmail.com",)


@dataclass(frozen=True, slots=True)
class Finding:
    """One recipient's outcome as a report states it."""

    kind: str  #: one of :data:`KINDS`
    recipient: str = ""  #: as the report names it ("" when redacted)
    status: str = ""  #: enhanced status code, e.g. ``5.1.1``
    detail: str = ""  #: the remote server's words, or the feedback type


@dataclass(frozen=True, slots=True)
class Report:
    """What one report message (or webhook event) says, and every clue to whom it is about."""

    format: str  #: one of :data:`FORMATS`
    #: The report's own id: its Message-ID, a provider's event id, else a hash of its bytes; one report
    #: processed twice has the same id, which is what makes processing idempotent.
    report_id: str
    findings: tuple[Finding, ...] = ()
    #: The subscriber decoded from a VERP address the report was returned to ("" when none).
    verp: str = ""
    #: Message-ID of the message the report is about, in angle brackets ("" when not included).
    original_message_id: str = ""
    #: Signed unsubscribe tokens found: the original's List-Unsubscribe, or a mailed request's subject.
    tokens: tuple[str, ...] = ()
    sender: str = ""  #: the report's From, for logs
    subject: str = ""

    @property
    def understood(self) -> bool:
        return self.format != "unknown" and bool(self.findings)


def unsubscribe_subject(token: str) -> str:
    """The subject of the mailto in List-Unsubscribe: what a mail client sends back as is."""
    return f"unsubscribe {token}".strip()


def verp_address(bounce: str, recipient: str) -> str:
    """``bounce`` with ``recipient`` encoded in its local part, as Postfix's VERP (delimiters
    ``+=``): ``bounces@list.example`` and ``ann@example.org`` give
    ``bounces+ann=example.org@list.example``. A recipient that cannot be written so in plain
    ASCII (a quoted or non-ASCII local part) gets ``bounce`` itself."""
    local, _, domain = bounce.rpartition("@")
    r_local, _, r_domain = recipient.strip().rpartition("@")
    if not (local and domain and r_local and r_domain):
        return bounce
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+", r_local) or not re.fullmatch(r"[A-Za-z0-9.-]+", r_domain):
        return bounce
    return f"{local}+{r_local}={r_domain}@{domain}"


def verp_recipient(bounce: str, address: str) -> str:
    """The recipient encoded in ``address`` by :func:`verp_address` for ``bounce``, else ""."""
    local, _, domain = bounce.rpartition("@")
    a_local, _, a_domain = address.strip().strip("<>").rpartition("@")
    if not local or a_domain.lower() != domain.lower() or not a_local.lower().startswith(local.lower() + "+"):
        return ""
    # The recipient's domain holds no "=", so the last one separates it from the local part.
    r_local, sep, r_domain = a_local[len(local) + 1:].rpartition("=")
    if not sep or not r_local or "." not in r_domain:
        return ""
    return f"{r_local}@{r_domain}".lower()


def bounce_kind(action: str, status: str) -> str | None:
    """A DSN recipient's ``Action`` and ``Status`` as a finding kind; None for success and relays."""
    action = action.strip().lower()
    if action == "delayed":
        return "delayed"
    if action != "failed":
        return None
    match = _STATUS.search(status)
    if match is None:
        return "hard"
    klass, subject = match.group(1), match.group(2)
    if klass == "4" or subject == "7" or (subject, match.group(3)) == ("2", "2"):
        return "soft"
    return "hard" if klass == "5" else None


def normalize_message_id(value: str) -> str:
    """A Message-ID as ``<id>``, whatever brackets and folding it came with; "" for none."""
    inner = "".join(value.split()).strip("<>")
    return f"<{inner}>" if inner and "<" not in inner and ">" not in inner else ""


def _text(value: Any) -> str:
    """A header value as one line of text, whatever the parser made of it."""
    if value is None:
        return ""
    try:
        text = str(value)
    except Exception:  # a header object that cannot be shown (a broken encoded word)
        return ""
    return " ".join(text.split())


def _header(msg: Message, name: str) -> str:
    return _text(msg.get(name, ""))


def _headers(msg: Message, name: str) -> list[str]:
    return [_text(v) for v in (msg.get_all(name) or [])]


def _content_type(msg: Message) -> str:
    try:
        return msg.get_content_type()
    except Exception:
        return "text/plain"


def _param(msg: Message, name: str) -> str:
    try:
        value = msg.get_param(name)
    except Exception:
        return ""
    if isinstance(value, tuple):  # an RFC 2231 value: (charset, language, text)
        value = value[2]
    return _text(value).lower()


def _walk(msg: Message, depth: int = 0) -> Iterator[Message]:
    """Every part, attached messages included, to a bounded depth (a hostile report nests forever)."""
    yield msg
    if depth > 8:
        return
    payload = msg.get_payload()
    if isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from _walk(part, depth + 1)


def _body_text(msg: Message, limit: int = 200_000) -> str:
    payload: Any
    try:
        payload = msg.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload[:limit].decode("utf-8", "replace")
    raw = msg.get_payload()
    return raw[:limit] if isinstance(raw, str) else ""


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part: the email
    package parses them into messages, unless the part was not what it said (then its text is)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = _body_text(part)
    parser = email.parser.HeaderParser()
    return [parser.parsestr(chunk + "\n") for chunk in re.split(r"\r?\n\s*\r?\n", text) if chunk.strip()]


def _original(msg: Message) -> Message | None:
    """The returned original message or its headers (message/rfc822 or text/rfc822-headers)."""
    for part in _walk(msg):
        kind = _content_type(part)
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif kind == "text/rfc822-headers":
            return email.parser.HeaderParser().parsestr(_body_text(part))
    return None


def _address_field(value: str) -> str:
    """``rfc822; ann@example.org`` (a DSN's address type, RFC 3464 2.3.2) or a bare address, as the address."""
    addr_type, sep, rest = value.partition(";")
    if sep and addr_type.strip().lower() != "rfc822":
        return ""
    found = _ADDRESS.search(rest if sep else value)
    return found.group(0).lower() if found else ""


def _tokens(*texts: str) -> tuple[str, ...]:
    found: list[str] = []
    for text in texts:
        for pattern in (_UNSUBSCRIBE_URL, _MAILTO_TOKEN):
            found += [m.group(1) for m in pattern.finditer(text)]
    return tuple(dict.fromkeys(found))


def _detail(text: str) -> str:
    _, sep, rest = text.partition(";")  # "smtp; 550 5.1.1 ..." (the diagnostic type first)
    return " ".join((rest if sep else text).split())[:MAX_DETAIL]


def _dsn_findings(msg: Message) -> list[Finding]:
    findings: list[Finding] = []
    for part in _walk(msg):
        if _content_type(part) not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        for block in _field_blocks(part):
            action = _header(block, "Action")
            if not action:
                continue  # the per-message block
            kind = bounce_kind(action, _header(block, "Status"))
            if kind is None:
                continue
            recipient = _address_field(_header(block, "Original-Recipient")) or _address_field(
                _header(block, "Final-Recipient"))
            status = _STATUS.search(_header(block, "Status"))
            findings.append(Finding(kind, recipient, status.group(0) if status else "",
                                    _detail(_header(block, "Diagnostic-Code"))))
    return findings


def _arf_findings(msg: Message, original: Message | None) -> list[Finding]:
    findings: list[Finding] = []
    for part in _walk(msg):
        if _content_type(part) != "message/feedback-report":
            continue
        for block in _field_blocks(part):
            feedback = _header(block, "Feedback-Type").lower()
            if feedback not in COMPLAINT_TYPES:
                continue
            recipients = [_address_field(v) for v in _headers(block, "Original-Rcpt-To")
                          + _headers(block, "Removal-Recipient")]
            if not any(recipients) and original is not None:
                recipients = [_address_field(v) for v in _headers(original, "To")][:1]
            findings += [Finding("complaint", r, "", feedback) for r in (recipients or [""])]
    return findings


def _jmrp_findings(msg: Message, original: Message | None) -> list[Finding]:
    """Microsoft's JMRP: multipart/mixed, from staff@hotmail.com, the complained-of message attached
    with the complainant in X-HmXmrOriginalRecipient."""
    sender = _address_field(_header(msg, "From"))
    subject = _header(msg, "Subject").lower()
    if original is None or (sender not in _JMRP_SENDERS and not subject.startswith("complaint about message from")):
        return []
    recipient = _address_field(_header(original, "X-HmXmrOriginalRecipient"))
    if not recipient and not _header(original, "X-HmXmrOriginalRecipient"):
        return []
    return [Finding("complaint", recipient, "", "abuse")]


def _failed_recipients(msg: Message) -> list[Finding]:
    """Bounces that are no DSN (old Gmail, Exim without DSN parts) but name X-Failed-Recipients,
    which both write for permanent failures only."""
    recipients = [a for v in _headers(msg, "X-Failed-Recipients") for a in _ADDRESS.findall(v)]
    if not recipients:
        return []
    status = _STATUS.search(_body_text(msg) if not msg.is_multipart() else "")
    code = status.group(0) if status and status.group(1) == "5" else ""
    return [Finding("hard", r.lower(), code, "") for r in dict.fromkeys(recipients)]


def _report_id(msg: Message, data: bytes) -> str:
    return normalize_message_id(_header(msg, "Message-ID")) or "sha256:" + hashlib.sha256(data).hexdigest()


def parse_report(data: bytes, bounce_address: str = "") -> Report:
    """What the message ``data`` reports; ``bounce_address`` (``bounces.address``) decodes VERP.

    A message that is none of the known kinds is ``format="unknown"`` with no findings (an
    out-of-office reply, spam, a person's question): left for a person to read.
    """
    msg = email.message_from_bytes(data)
    report_id = _report_id(msg, data)
    original = _original(msg)
    subject, sender = _header(msg, "Subject"), _header(msg, "From")
    verp = ""
    if bounce_address:
        places = [_header(msg, name) for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")]
        if original is not None:
            places.append(_header(original, "Return-Path"))
        for place in places:
            for address in _ADDRESS.findall(place):
                verp = verp or verp_recipient(bounce_address, address)
    original_id = normalize_message_id(_header(original, "Message-ID")) if original is not None else ""
    tokens = _tokens(_header(original, "List-Unsubscribe")) if original is not None else ()
    common: dict[str, Any] = {"report_id": report_id, "verp": verp, "original_message_id": original_id,
                              "tokens": tokens, "sender": sender[:200], "subject": subject[:200]}
    report_type = _param(msg, "report-type") if _content_type(msg) == "multipart/report" else ""

    dsn = _dsn_findings(msg) if report_type in ("delivery-status", "") else []
    if dsn:
        return Report("dsn", findings=tuple(dsn), **common)
    arf = _arf_findings(msg, original)
    if arf:
        return Report("arf", findings=tuple(arf), **common)
    jmrp = _jmrp_findings(msg, original)
    if jmrp:
        return Report("jmrp", findings=tuple(jmrp), **common)
    failed = _failed_recipients(msg)
    if failed:
        return Report("failed-recipients", findings=tuple(failed), **common)
    request = _UNSUBSCRIBE_SUBJECT.search(subject)
    if request is not None and original is None:
        common["tokens"] = (request.group(1),)
        return Report("unsubscribe", findings=(Finding("unsubscribe", _address_field(sender)),), **common)
    return Report("unknown", **common)


def mailgun_report(event: Mapping[str, Any]) -> Report:
    """One Mailgun webhook event (the ``event-data`` object) as a report: ``failed`` (severity
    permanent or temporary), ``complained`` and ``unsubscribed``; any other event is ``unknown``."""
    name = str(event.get("event", "")).lower()
    event_id = str(event.get("id", ""))[:200]
    recipient = _address_field(str(event.get("recipient", "")))
    message = event.get("message")
    headers = message.get("headers") if isinstance(message, Mapping) else None
    original = normalize_message_id(str(headers.get("message-id", ""))) if isinstance(headers, Mapping) else ""
    status = event.get("delivery-status")
    status = status if isinstance(status, Mapping) else {}
    words = " ".join(str(status.get(k, "") or "") for k in ("code", "message", "description"))
    finding: Finding | None = None
    if name == "failed":
        severity = str(event.get("severity", "")).lower()
        code = _STATUS.search(words)
        kind = "soft" if severity == "temporary" else bounce_kind("failed", code.group(0) if code else "5.0.0")
        finding = Finding(kind or "hard", recipient, code.group(0) if code else "", _detail(words))
    elif name == "complained":
        finding = Finding("complaint", recipient, "", "abuse")
    elif name == "unsubscribed":
        finding = Finding("unsubscribe", recipient)
    return Report("mailgun" if finding else "unknown", report_id=f"mailgun:{event_id}",
                  findings=(finding,) if finding else (), original_message_id=original)


#: Postmark bounce types (its ``Type``) and what they are here; the others (AutoResponder,
#: AddressChange, Subscribe, ...) are no failure of delivery and are not acted on.
POSTMARK_KINDS = {
    "HardBounce": "hard", "BadEmailAddress": "hard",
    "SoftBounce": "soft", "Transient": "soft", "DnsError": "soft", "Blocked": "soft", "DMARCPolicy": "soft",
    "SpamComplaint": "complaint", "Unsubscribe": "unsubscribe",
}


def postmark_report(event: Mapping[str, Any]) -> Report:
    """One Postmark webhook body (``RecordType`` Bounce, SpamComplaint or SubscriptionChange) as a report.

    A SubscriptionChange is acted on only for ``ManualSuppression`` (the recipient left through
    Postmark's own unsubscribe link): its other reasons repeat a Bounce or SpamComplaint event
    Postmark sends as well, which must not count twice."""
    record = str(event.get("RecordType", ""))
    recipient = _address_field(str(event.get("Email", "") or event.get("Recipient", "")))
    finding: Finding | None = None
    if record in ("Bounce", "SpamComplaint"):
        kind = POSTMARK_KINDS.get(str(event.get("Type", "")))
        if kind is not None:
            words = f"{event.get('Description', '') or ''} {event.get('Details', '') or ''}"
            code = _STATUS.search(words)
            finding = Finding(kind, recipient, code.group(0) if code else "", _detail(words))
    elif (record == "SubscriptionChange" and event.get("SuppressSending") is True
          and event.get("SuppressionReason") == "ManualSuppression"):
        finding = Finding("unsubscribe", recipient, "", "ManualSuppression")
    event_id = str(event.get("ID", "") or "")[:200]
    if record == "SubscriptionChange":
        event_id = f"change:{event.get('MessageID', '')}:{event.get('ChangedAt', '')}"[:200]
    return Report("postmark" if finding else "unknown", report_id=f"postmark:{record}:{event_id}",
                  findings=(finding,) if finding else ())
