"""The digest as an email message: pure functions from text to :class:`EmailMessage`, no I/O.

Delivery adds its own headers (List-Unsubscribe, List-Id, ...) through ``headers``, so the
builder stays the one place that decides how a header value is cleaned. Every value that can
come from data (a subject built from a post title, a subscriber's name) goes through
:func:`header_text`, because a CR or LF in a header value would let data add headers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import date as Date
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

#: CRLF line endings: the bytes are what goes on the wire and what DKIM signs.
MESSAGE_POLICY = policy.SMTP

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_SPACES = re.compile(r"\s{2,}")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII except ':' (RFC 5322 ftext)
_DOMAIN_JUNK = re.compile(r"[^A-Za-z0-9.-]+")
#: Headers the builder sets itself; ``headers`` must not replace them behind its back.
_OWN_HEADERS = frozenset(
    h.lower() for h in ("Subject", "From", "To", "Reply-To", "Date", "Message-ID", "MIME-Version", "Content-Type",
                        "Content-Transfer-Encoding")
)


def header_text(value: str) -> str:
    """``value`` as one header line: control characters (CR, LF, tab, ...) become one space."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()


def domain_of(address: str) -> str:
    """The domain of an address such as ``finews <digest@example.com>`` (``localhost`` if none)."""
    _, email = parseaddr(header_text(address))
    domain = email.rpartition("@")[2] if "@" in email else ""
    domain = _DOMAIN_JUNK.sub("", domain).strip(".-").lower()
    return domain or "localhost"


def format_address(name: str, email: str) -> str:
    """``"Name" <email>`` with the name cleaned for a header; just the address when there is no name."""
    name = header_text(name)
    email = header_text(email)
    if not name:
        return email
    try:
        # Not formataddr: it would RFC 2047-encode the name here, and the header would then
        # show the encoded word literally; the header registry encodes it when serialising.
        return str(Address(display_name=name, addr_spec=email))
    except (ValueError, IndexError):
        return email


def message_id(day: Date, email: str, domain: str) -> str:
    """A Message-ID stable per (digest day, subscriber): the same digest sent again is recognisably
    the same message, and the address is hashed so the id does not reveal it."""
    key = f"{day.isoformat()}\n{email.strip().lower()}".encode()
    digest = hashlib.sha256(key).hexdigest()[:32]
    domain = _DOMAIN_JUNK.sub("", domain).strip(".-").lower() or "localhost"
    return f"<digest.{day:%Y%m%d}.{digest}@{domain}>"


def build_message(
    *,
    subject: str,
    html: str,
    text: str,
    sender: str,
    to: str,
    reply_to: str = "",
    message_id: str,
    date: datetime,
    headers: Mapping[str, str] = {},  # read only; the shared contract fixes this signature
) -> EmailMessage:
    """A ``multipart/alternative`` message: text/plain first, text/html last (clients show the
    last part they can), both UTF-8; the subject is RFC 2047-encoded when it is not ASCII."""
    if date.tzinfo is None:
        raise ValueError("build_message: date must be timezone-aware")
    msg = EmailMessage(policy=MESSAGE_POLICY)
    msg["Subject"] = header_text(subject)
    msg["From"] = _address_header(sender)
    msg["To"] = _address_header(to)
    if reply_to.strip():
        msg["Reply-To"] = _address_header(reply_to)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = header_text(message_id)
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"build_message: {name!r} is not a valid header name")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"build_message: {name} is set by the builder, not through headers")
        msg[name] = header_text(value)
    # base64: CJK text is 3 bytes a character, which quoted-printable would triple again, and
    # binascii encodes far faster than the pure-Python quoted-printable encoder.
    msg.set_content(_lines(text), subtype="plain", charset="utf-8", cte="base64")
    msg.add_alternative(_lines(html), subtype="html", charset="utf-8", cte="base64")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # belongs to the top level only
    # Set here, not left to the generator: its random boundary makes it scan the whole body for a
    # collision. This one cannot collide, as base64 lines never hold "-", and it keeps the bytes
    # of a message reproducible.
    msg.set_boundary(f"=_finews_{hashlib.sha256(msg['Message-ID'].encode()).hexdigest()[:24]}")
    return msg


def _address_header(value: str) -> str:
    """An address header value, cleaned; a display name with non-ASCII text is kept whole so the
    header registry can encode it."""
    value = header_text(value)
    name, email = parseaddr(value)
    if not email or "@" not in email:
        return value
    if not name:
        return email
    try:
        return str(Address(display_name=name, addr_spec=email))
    except (ValueError, IndexError):
        return value


def _lines(body: str) -> str:
    # A body must end with a newline and use one kind of line break.
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    return body if body.endswith("\n") else body + "\n"
