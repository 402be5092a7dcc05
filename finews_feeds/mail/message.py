"""The digest as an email message: pure functions from text to :class:`EmailMessage`, no I/O.

Delivery adds its own headers (List-Unsubscribe, List-Id, ...) through ``headers``, so the
builder stays the one place that decides how a header value is cleaned. Every value that can
come from data (a subject built from a post title, a subscriber's name) goes through
:func:`header_text`, because a CR or LF in a header value would let data add headers.

Speed: the stdlib builds a message through its header registry and writes bodies line by line,
about 8 ms for a 45 KB digest, far too slow for 10,000 subscribers. So the builder encodes the
headers itself (RFC 2047 words, folded at 78 columns) and stores them the way the parser does,
encodes the bodies with binascii, and :class:`DigestMessage` writes a body that is already in
wire form in one piece. The result is an ordinary :class:`EmailMessage`: reading a header parses
it as usual, headers set later go through the registry, and the bytes are what the stdlib
generator writes (a test compares them).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import struct
from collections.abc import Mapping
from datetime import date as Date
from datetime import datetime
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, getaddresses, parseaddr
from io import BytesIO

from ..config import LIST_ID

#: CRLF line endings: the bytes are what goes on the wire and what DKIM signs. Header values the
#: builder stores are already folded and encoded, so they are written as they are.
MESSAGE_POLICY = policy.SMTP.clone(refold_source="none")
#: Longest header line the builder writes when it can fold (RFC 5322's SHOULD).
MAX_HEADER_LINE = 78
#: Raw bytes per RFC 2047 encoded word: 36 make 48 base64 characters, 60 with the frame, so a word
#: fits on a header's first line after the longest name we write.
_WORD_BYTES = 36
_BASE64_LINE = 76
_NAME_WORD_BYTES = 45
_SIMPLE_ADDRESS = re.compile(
    r'(?:(?P<name>[^()<>\[\]:;@\\,."]*?)\s*<(?P<addr>[A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>|(?P<bare>[A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+))'
)
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")

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
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        return value  # already clean; isprintable() is False for every character the regex changes
    return _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()


@functools.lru_cache(maxsize=64)  # called with the same sender for every message
def domain_of(address: str) -> str:
    """The domain of an address such as ``finews <digest@example.com>`` (``localhost`` if none)."""
    _, email = parseaddr(header_text(address))
    return _clean_domain(email.rpartition("@")[2] if "@" in email else "")


def _clean_domain(domain: str) -> str:
    """``domain`` with only the characters a host name may have, lower-cased (``localhost`` if none is left)."""
    return _DOMAIN_JUNK.sub("", domain).strip(".-").lower() or "localhost"


def format_address(name: str, email: str) -> str:
    """``"Name" <email>`` with the name cleaned for a header; just the address when there is no name."""
    name = header_text(name)
    email = header_text(email)
    if not name:
        return email
    if not _SPECIALS.search(name):
        return f"{name} <{email}>"
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
    return f"<digest.{day:%Y%m%d}.{digest}@{_clean_domain(domain)}>"


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
    msg = DigestMessage(policy=MESSAGE_POLICY)
    _set(msg, "Subject", _unstructured("Subject", header_text(subject)))
    _set_address(msg, "From", sender)
    _set_address(msg, "To", to)
    if reply_to.strip():
        _set_address(msg, "Reply-To", reply_to)
    _set(msg, "Date", format_datetime(date))
    _set(msg, "Message-ID", header_text(message_id))
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"build_message: {name!r} is not a valid header name")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"build_message: {name} is set by the builder, not through headers")
        if name.lower() == "list-id":
            _set(msg, name, _list_id(header_text(value)))
        else:
            _set(msg, name, _unstructured(name, header_text(value)))
    # Set here, not left to the generator: its random boundary makes it scan the whole body for a
    # collision. This one cannot collide, as base64 lines never hold "-", and it keeps the bytes
    # of a message reproducible.
    boundary = f"=_finews_{hashlib.sha256(message_id.encode('utf-8', 'replace')).hexdigest()[:24]}"
    content_type = f'multipart/alternative;\r\n boundary="{boundary}"'
    msg.set_raw("MIME-Version", "1.0")
    msg.set_raw("Content-Type", content_type)
    parts = (_text_part("plain", text), _text_part("html", html))
    msg.set_payload(list(parts))
    msg._wire_parts = parts
    msg._wire_payloads = tuple(p._payload for p in parts)  # type: ignore[attr-defined]
    msg._wire_boundary = boundary
    msg._wire_content_type = content_type
    return msg


class DigestMessage(EmailMessage):
    """An :class:`EmailMessage` that serialises the shape :func:`build_message` gives it in one
    pass, writing the already-encoded bodies whole; any other shape (a part replaced, a body
    changed) goes through the stdlib generator. Both give the same bytes."""

    _wire_parts: tuple[EmailMessage, ...] | None = None
    _wire_payloads: tuple[str, ...] = ()
    _wire_boundary: str = ""
    _wire_content_type: str = ""

    def as_bytes(self, unixfrom: bool = False, policy: Policy | None = None) -> bytes:
        policy = self.policy if policy is None else policy
        if not unixfrom and policy.linesep == "\r\n" and self._is_wire_shape():
            return self._wire_bytes(policy)
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=policy).flatten(self, unixfrom=unixfrom)
        return out.getvalue()

    def __bytes__(self) -> bytes:
        return self.as_bytes()

    def _is_wire_shape(self) -> bool:
        parts = self._wire_parts
        payload = getattr(self, "_payload", None)
        if parts is None or not isinstance(payload, list) or tuple(payload) != parts:
            return False
        if self.preamble is not None or self.epilogue is not None:
            return False
        types = [v for k, v in self._headers if k.lower() == "content-type"]  # type: ignore[attr-defined]
        if len(types) != 1 or types[0] is not self._wire_content_type:
            return False
        return all(p._payload is w for p, w in zip(parts, self._wire_payloads, strict=True))  # type: ignore[attr-defined]

    def _wire_bytes(self, policy: Policy) -> bytes:
        nl = b"\r\n"
        out = [policy.fold_binary(name, value) for name, value in self.raw_items()]
        out.append(nl)
        dash = b"--" + self._wire_boundary.encode("ascii")
        for index, part in enumerate(self._wire_parts or ()):
            out.append((nl if index else b"") + dash + nl)
            out.extend(policy.fold_binary(name, value) for name, value in part.raw_items())
            out.append(nl)
            out.append(self._wire_payloads[index].encode("ascii"))
        out.append(nl + dash + b"--" + nl)
        return b"".join(out)


def _text_part(subtype: str, body: str) -> EmailMessage:
    part = DigestMessage(policy=MESSAGE_POLICY)
    part.set_raw("Content-Type", f'text/{subtype}; charset="utf-8"')
    # base64: CJK text is 3 bytes a character, which quoted-printable would triple again, and
    # binascii encodes far faster than the pure-Python quoted-printable encoder. MIME's
    # canonical line break in text is CRLF.
    part.set_raw("Content-Transfer-Encoding", "base64")
    wire = body.wire_form() if isinstance(body, WireText) else None
    part.set_payload(wire if wire is not None else _base64_body(body))
    return part


def _set(msg: EmailMessage, name: str, value: str) -> None:
    """Store an encoded, folded value the way the parser stores what it reads."""
    msg.set_raw(name, value)


def _encoded_words(text: str, limit: int = _WORD_BYTES) -> list[str]:
    """``text`` as RFC 2047 base64 encoded words of at most ``limit`` bytes (36: 60 characters; 45:
    72 characters), split between characters."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        width = len(char.encode("utf-8", "surrogatepass"))
        if size + width > limit and chunk:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(char)
        size += width
    if chunk:
        words.append("".join(chunk))
    return ["=?utf-8?b?" + base64.b64encode(w.encode("utf-8", "surrogatepass")).decode("ascii") + "?=" for w in words]


def _fold(name: str, tokens: list[str]) -> str:
    """Join tokens with spaces, breaking lines before a token that would pass 78 columns."""
    lines: list[str] = []
    line = ""
    width = len(name) + 2
    for token in tokens:
        if not line:
            line = token
        elif width + len(line) + 1 + len(token) > MAX_HEADER_LINE:
            lines.append(line)
            line, width = token, 1
        else:
            line += " " + token
    lines.append(line)
    return "\r\n ".join(lines)


@functools.lru_cache(maxsize=1024)  # the subject and list headers repeat for every subscriber
def _unstructured(name: str, value: str) -> str:
    if value.isascii() and "=?" not in value:
        return _fold(name, value.split(" ")) if value else ""
    # Encoded words hold spaces inside them; a line break only goes between words.
    return _fold(name, _encoded_words(value))


@functools.lru_cache(maxsize=64)
def _list_id(value: str) -> str:
    """A List-Id value: only its phrase is encoded (RFC 2919), the ``<id>`` stays plain ASCII for
    list filters (Gmail's ``list:``, procmail, Sieve) to match. A value not of that form is
    written as unstructured text (config validation keeps such values out of a real run)."""
    match = LIST_ID.fullmatch(value)
    if match is None:
        return _unstructured("List-Id", value)
    phrase = match["phrase"].strip()
    tokens = _display_name(phrase) if phrase else [""]
    # The id stays on the line of the phrase's last word (a line of up to ~120 characters, within
    # RFC 5322's 998): a filter that reads the header line by line still finds name and id together.
    tokens[-1] = f"{tokens[-1]} <{match['id']}>".lstrip()
    return _fold("List-Id", tokens)


def _display_name(name: str) -> list[str]:
    if name.isascii() and "=?" not in name:
        if _ATOM.fullmatch(name):
            return name.split(" ")
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    # One word as long as it can be (75 characters at most): Python's own address parser keeps
    # the space between two encoded words of a name, though RFC 2047 says to drop it.
    return _encoded_words(name, _NAME_WORD_BYTES)


def _set_address(msg: EmailMessage, name: str, value: str) -> None:
    """An address header: ``Name <addr>`` encoded here when the address is plain ASCII; anything
    unusual (several addresses, an international address) goes through the header registry."""
    value = header_text(value)
    encoded = _encoded_address(name, value)
    if encoded is None:
        msg[name] = _address_header(value)
    else:
        msg.set_raw(name, encoded)


@functools.lru_cache(maxsize=1024)  # From and Reply-To repeat for every subscriber
def _encoded_address(name: str, value: str) -> str | None:
    """The folded, encoded value of a one-address header; None when it needs the registry."""
    match = _SIMPLE_ADDRESS.fullmatch(value)
    if match:  # the usual `Name <addr>` or `addr`, without parsing it the long way
        display, email = (match["name"] or "").strip(), match["addr"] or match["bare"]
    else:
        display, email = parseaddr(value)
        if not (email.isascii() and "@" in email and " " not in email and len(getaddresses([value])) == 1):
            return None
    tokens = [*_display_name(display), f"<{email}>"] if display else [email]
    return _fold(name, tokens)


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


def _base64_body(body: str) -> str:
    """``body`` with CRLF line breaks and a final one, base64-encoded in lines of 76 characters
    (RFC 2045), each ended by CRLF: the wire form, which :class:`DigestMessage` writes as is."""
    return _encode_lines(_wire_text(_lines(body))).decode("ascii")


def _lines(text: str) -> str:
    """``text`` with LF line breaks (CR LF and lone CR too) and a final one: how a body is normalised."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def _wire_text(text: str) -> bytes:
    """Normalised text as it goes on the wire: UTF-8, CRLF line breaks (MIME's canonical form)."""
    return text.encode("utf-8").replace(b"\n", b"\r\n")


@functools.lru_cache(maxsize=512)
def _line_splitter(lines: int) -> struct.Struct:
    # Cuts an encoded string into lines in one C call: three times faster than slicing in a loop,
    # and far faster than base64.encodebytes, which encodes 57 bytes at a time in Python.
    return struct.Struct(f"{_BASE64_LINE}s" * lines)


# ---------------------------------------------------------------------------------------------
# Bodies prepared once, filled per subscriber
#
# A digest variant is the same for thousands of subscribers but for a few fields. Its base64 form
# is a function of its bytes in blocks of 57 (one 76-character line each), so the lines of any
# stretch that starts on a block boundary can be encoded once. A pad marker, placed by the
# template where spaces do not show (after the greeting's line break), is filled with as many
# spaces as bring the next stretch onto a block boundary: then only the few hundred bytes around
# each field are encoded per subscriber, and the result is the very bytes _base64_body would give.

_BLOCK = 57  # input bytes per 76-character base64 line


class WireText(str):
    """A filled-in body that carries what it needs to produce its own base64 wire form fast.

    It is an ordinary ``str`` for every other use; :func:`build_message` asks it for
    :meth:`wire_form`. Any string operation returns a plain ``str``, so a changed body can never
    be paired with a stale wire form."""

    _chunks: tuple[tuple[bytes | None, bytes], ...] = ()

    def wire_form(self) -> str | None:
        """The base64 body, lines of 76 characters each ended by CRLF; None when not prepared."""
        if not self._chunks:
            return None
        out: list[bytes] = []
        pending = bytearray()
        for lines, raw in self._chunks:
            if lines is not None:  # a stretch starting on a block boundary: its full lines are ready
                if len(pending) % _BLOCK:
                    return None  # cannot happen with a correct pad; be safe, not fast
                if pending:
                    out.append(_encode_lines(bytes(pending)))
                    pending.clear()
                out.append(lines)
            pending += raw
        if pending:
            out.append(_encode_lines(bytes(pending)))
        return b"".join(out).decode("ascii")


class PreparedBody:
    """A body with field markers and one optional pad marker, its constant stretches pre-encoded."""

    def __init__(self, template: str, fields: tuple[str, ...], pad: str = "") -> None:
        template = _lines(template)
        markers = [*fields, pad] if pad else list(fields)
        pieces = re.split("(" + "|".join(re.escape(m) for m in markers) + ")", template)
        self.pad = pad
        self.texts: tuple[str, ...] = tuple(pieces[0::2])
        self.markers: tuple[str, ...] = tuple(pieces[1::2])
        self.raw: tuple[bytes, ...] = tuple(_wire_text(t) for t in self.texts)
        ready: list[tuple[bytes | None, bytes]] = []
        for index, raw in enumerate(self.raw):
            aligned = index == 0 or (pad and self.markers[index - 1] == pad)
            if aligned:
                cut = len(raw) // _BLOCK * _BLOCK
                ready.append((_encode_lines(raw[:cut]) if cut else b"", raw[cut:]))
            else:
                ready.append((None, raw))
        self.ready = tuple(ready)

    def fill(self, values: Mapping[str, str]) -> WireText:
        """The body with each field marker replaced by ``values[marker]`` (already escaped as the
        body needs) and the pad marker by spaces."""
        texts, raws, ready = self.texts, self.raw, self.ready
        out = [texts[0]]
        chunks: list[tuple[bytes | None, bytes]] = [ready[0]]
        offset = len(raws[0])
        pending = b""
        usable = True
        for index, marker in enumerate(self.markers, start=1):
            if marker == self.pad:
                value = " " * (-(offset + len(pending)) % _BLOCK)
            else:
                value = values[marker]
                if "\n" in value or "\r" in value:
                    usable = False  # the byte count below would be off; fall back to plain encoding
            encoded = value.encode("utf-8")
            out.append(value)
            out.append(texts[index])
            lines, raw = ready[index]
            if lines is not None:
                chunks.append((None, pending + encoded))
                chunks.append((lines, raw))
                offset += len(pending) + len(encoded) + len(raws[index])
                pending = b""
            else:
                pending += encoded + raw
        if pending:
            chunks.append((None, pending))
        result = WireText("".join(out))
        if usable:
            result._chunks = tuple(chunks)
        return result


def _encode_lines(data: bytes) -> bytes:
    """``data`` in base64 lines of 76 characters (the last may be shorter), each ended by CRLF."""
    if not data:
        return b""
    encoded = binascii.b2a_base64(data, newline=False)
    full = len(encoded) // _BASE64_LINE
    lines = list(_line_splitter(full).unpack_from(encoded))
    if len(encoded) % _BASE64_LINE:
        lines.append(encoded[full * _BASE64_LINE :])
    return b"\r\n".join(lines) + b"\r\n"
