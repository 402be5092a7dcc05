"""The SMTP transport: sends one message at a time over one reused connection, and says how a send failed.

It knows nothing of subscribers or the ledger. Each failure is classified so delivery can
decide what to do:

- :class:`PermanentFailure`: a 5xx reply; sending the same message again will not help.
- :class:`TemporaryFailure`: a 4xx reply; try again later.
- :class:`ConnectionFailure`: no answer, refused or dropped connection, timeout. The message may
  or may not have been accepted if this happened after DATA; delivery resends it with the same
  Message-ID. :class:`SendDeadlineExceeded` is the one for a message that was not through within
  ``smtp.send_deadline_seconds``.

``smtp.timeout`` bounds each read and write on the socket, which a server trickling one byte a
second never reaches; so each message also has a deadline, covering the connect (and EHLO,
STARTTLS, login) when it needs one, MAIL, RCPT, DATA and the final reply. smtplib is given a
socket timeout shrunk to the time left before every read and write (replies are read through
:class:`_DeadlineReader` rather than the socket's buffered file, whose one ``readline`` would
make any number of reads). Past the deadline the connection is dropped without QUIT: it is in
an unknown state. Name resolution is the one step no socket timeout reaches.

The MAIL / RCPT / DATA steps are run one by one rather than through ``sendmail`` so that a
connection the server closed while idle (found out at MAIL, before any data went out) is
reopened and the message sent at once, without counting as a failure.
"""

from __future__ import annotations

import functools
import logging
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ..config import Config
from ..errors import ConfigError, DeliveryError
from .message import MESSAGE_POLICY

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)

#: Headers DKIM signs: the ones a receiver shows or acts on, the List-Unsubscribe pair included
#: (RFC 8058 requires it be covered, or one-click unsubscribe is ignored).
DKIM_HEADERS = (
    b"From", b"To", b"Subject", b"Date", b"Message-ID", b"Reply-To", b"MIME-Version", b"Content-Type",
    b"List-Unsubscribe", b"List-Unsubscribe-Post", b"List-Id",
)
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}


class SendFailure(DeliveryError):
    """One message was not accepted; ``code`` is the SMTP reply code (0 without one)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(SendFailure):
    """A 4xx reply: the server asks to try again later."""


class ConnectionFailure(TemporaryFailure):
    """The connection failed, was refused, dropped or timed out."""


class SendDeadlineExceeded(ConnectionFailure):
    """The server did not get through one message within ``smtp.send_deadline_seconds``."""


class PermanentFailure(SendFailure):
    """A 5xx reply: this message will never be accepted as it is."""


class DeadlinePassed(TimeoutError):
    """Raised instead of a read or write that would start after the deadline (an ``OSError``, as
    smtplib expects of its socket)."""


class Deadline:
    """When the message in progress must be through (``time.monotonic``); None between messages."""

    def __init__(self) -> None:
        self.at: float | None = None
        #: The step in progress, for the failure message: "connect", then each command's verb.
        self.stage = "connect"

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.stage = "connect"

    def clear(self) -> None:
        self.at = None

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def timeout(self, per_operation: float) -> float:
        """The socket timeout for the next read or write: ``per_operation``, or the time left if shorter."""
        if self.at is None:
            return per_operation
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("the send deadline has passed")
        return min(per_operation, left)


class _DeadlineReader:
    """What smtplib reads replies from (its ``file``): lines out of ``recv`` calls, each under the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline, per_operation: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._per_operation = per_operation
        self._buffer = bytearray()

    def readline(self, limit: int) -> bytes:
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0 or len(self._buffer) >= limit:
                size = end + 1 if end >= 0 else limit
                line = bytes(self._buffer[:size])
                del self._buffer[:size]
                return line
            self._sock.settimeout(self._deadline.timeout(self._per_operation))
            chunk = self._sock.recv(4096)
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            self._buffer += chunk

    def close(self) -> None:
        """smtplib closes the socket itself."""


class _DeadlineMixin(smtplib.SMTP):
    """smtplib with every read and write of the connection bounded by a shared :class:`Deadline`."""

    deadline: Deadline

    def _per_operation(self) -> float:
        return float(self.timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        self.deadline.stage = "connect"
        # (smtplib's hook for the connection, not in its stubs)
        sock: socket.socket = super()._get_socket(  # type: ignore[misc]
            host, port, self.deadline.timeout(self._per_operation()))
        return sock

    def putcmd(self, cmd: str, args: str = "") -> None:
        self.deadline.stage = cmd.split(" ", 1)[0].upper()
        super().putcmd(cmd, args)

    def send(self, s: ReadableBuffer | str) -> None:
        if self.sock:
            # sendall honours a timeout as the limit of the whole call, and a TLS write is one call.
            self.sock.settimeout(self.deadline.timeout(self._per_operation()))
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = _DeadlineReader(self.sock, self.deadline, self._per_operation())
        return super().getreply()

    def data(self, msg: ReadableBuffer | str) -> tuple[int, bytes]:
        """smtplib's DATA with the dots stuffed by ``bytes.replace``.

        smtplib stuffs them with a multi-line regular expression that visits every byte: about a
        millisecond for a 47 KB digest, a quarter of a send's time under the interpreter lock
        (py-spy, 10,000 subscribers); the same bytes come out of ``replace`` in microseconds."""
        if isinstance(msg, str):
            return super().data(msg)
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        return self._send_body(bytes(msg))

    def envelope(self, sender: str, options: list[str], recipients: tuple[str, ...]) -> list[tuple[str, int, bytes]]:
        """MAIL FROM, each RCPT TO and DATA in one write (RFC 2920 PIPELINING), then their replies in order
        as ``(command, code, text)``; the reading stops after a 421, with which the server closes.

        One round trip instead of one per command: with the body's, two a message instead of four
        (as Postfix's client does whenever the server offers it). Nothing of the body is sent here."""
        if any(option.upper() == "SMTPUTF8" for option in options):
            self.command_encoding = "utf-8"  # what smtplib's mail() does for that option
        extra = "".join(" " + option for option in options)
        commands = [("MAIL", f"MAIL FROM:{smtplib.quoteaddr(sender)}{extra}")]
        commands += [("RCPT", f"RCPT TO:{smtplib.quoteaddr(rcpt)}") for rcpt in recipients]
        commands.append(("DATA", "DATA"))
        if any("\r" in line or "\n" in line for _, line in commands):
            raise ValueError("command and arguments contain prohibited newline characters")
        self.deadline.stage = "MAIL"
        self.send("".join(line + "\r\n" for _, line in commands))
        replies: list[tuple[str, int, bytes]] = []
        for command, _ in commands:
            self.deadline.stage = command
            code, text = self.getreply()
            replies.append((command, code, text))
            if code == 421:
                break
        return replies

    def _send_body(self, data: bytes) -> tuple[int, bytes]:
        """The message after a 354 (RFC 5321 4.5.2: a line that starts with a dot gets one more), then its reply."""
        stuffed = (b"." + data if data.startswith(b".") else data).replace(b"\n.", b"\n..")
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        self.send(stuffed + b".\r\n")
        return self.getreply()


class _DeadlineSMTP(_DeadlineMixin):
    def __init__(self, host: str, port: int, *, deadline: Deadline, timeout: float, local_hostname: str | None) -> None:
        self.deadline = deadline
        super().__init__(host, port, local_hostname=local_hostname, timeout=timeout)


class _DeadlineSMTP_SSL(_DeadlineMixin, smtplib.SMTP_SSL):
    def __init__(self, host: str, port: int, *, deadline: Deadline, timeout: float, local_hostname: str | None,
                 context: ssl.SSLContext) -> None:
        self.deadline = deadline
        super().__init__(host, port, local_hostname=local_hostname, timeout=timeout, context=context)


_OPENSSL_KEYS: dict[tuple[int, int], rsa.RSAPrivateKey] = {}
_OPENSSL_KEYS_LOCK = threading.Lock()
_DIGESTS: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}


def _openssl_rsa_sign(hash: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's RSASSA-PKCS1-v1_5 signature of ``hash``, made by OpenSSL (``cryptography``).

    dkimpy signs with Python's own ``pow`` on 1024-bit halves of the key: about 4 ms a message on
    this machine (47 ms when it is busy), holding the interpreter lock, which made DKIM the limit of
    a send. OpenSSL makes the same signature (PKCS#1 v1.5 is deterministic: the very same bytes, a
    test compares them) in a fraction of that, outside the lock. dkimpy keeps everything else:
    canonicalisation, the header, the body hash."""
    digest = _DIGESTS.get(str(getattr(hash, "name", "")))
    if digest is None:
        return bytes(_DKIMPY_RSA_SIGN(hash, private_key))
    key_id = (private_key["modulus"], private_key["privateExponent"])
    with _OPENSSL_KEYS_LOCK:
        key = _OPENSSL_KEYS.get(key_id)
        if key is None:
            public = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
            key = rsa.RSAPrivateNumbers(
                p=private_key["prime1"], q=private_key["prime2"], d=private_key["privateExponent"],
                dmp1=private_key["exponent1"], dmq1=private_key["exponent2"], iqmp=private_key["coefficient"],
                public_numbers=public,
            ).private_key()
            _OPENSSL_KEYS[key_id] = key
    return key.sign(hash.digest(), padding.PKCS1v15(), Prehashed(digest))


@functools.lru_cache(maxsize=8)
def _parsed_pem_key(data: bytes) -> dict[str, int]:
    """dkimpy's parse of a PEM key, once per key rather than once per message (a fifth of a signature)."""
    return dict(_DKIMPY_PARSE_PEM(data))


# dkimpy looks both functions up in its own namespace at each signature; these give the same bytes.
_DKIMPY_RSA_SIGN = dkim.RSASSA_PKCS1_v1_5_sign
_DKIMPY_PARSE_PEM = dkim.parse_pem_private_key
dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign
dkim.parse_pem_private_key = _parsed_pem_key


@dataclass(frozen=True)
class DkimKey:
    selector: str
    domain: str
    private_key: bytes

    @classmethod
    def from_config(cls, config: Config) -> DkimKey | None:
        smtp = config.smtp
        given = [smtp.dkim_selector, smtp.dkim_domain, smtp.dkim_key_file]
        if not any(given):
            return None
        if not all(given):
            raise ConfigError("DKIM needs all of smtp.dkim_selector, smtp.dkim_domain and smtp.dkim_key_file",
                              hint="set the three, or none to send unsigned")
        try:
            key = Path(smtp.dkim_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"smtp.dkim_key_file = {smtp.dkim_key_file!r}: {exc.strerror}") from None
        if b"PRIVATE KEY" not in key:
            raise ConfigError(f"smtp.dkim_key_file = {smtp.dkim_key_file!r} is not a PEM private key")
        return cls(smtp.dkim_selector, smtp.dkim_domain, key)

    def sign(self, data: bytes) -> bytes:
        """``data`` with a DKIM-Signature header in front."""
        try:
            header: bytes = dkim.sign(
                data, self.selector.encode(), self.domain.encode(), self.private_key,
                include_headers=[h for h in DKIM_HEADERS if _has_header(data, h)],
            )
        except dkim.DKIMException as exc:
            raise ConfigError(f"DKIM signing failed: {exc}", hint="check smtp.dkim_key_file") from None
        return header + data


def _has_header(data: bytes, name: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(name.lower() + b":") or (b"\r\n" + name.lower() + b":") in head


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def _failure(code: int, reply: bytes | str, stage: str) -> SendFailure:
    message = f"{code} {_reply_text(reply)}".strip() + f" (at {stage})"
    if 500 <= code < 600:
        return PermanentFailure(message, code)
    return TemporaryFailure(message, code)


class SmtpTransport:
    """One SMTP connection, opened on first use, reused across messages, reopened after a drop."""

    def __init__(
        self,
        host: str,
        port: int = 0,
        security: str = "starttls",
        username: str = "",
        password: str = "",
        timeout: float = 30.0,
        send_deadline: float = 60.0,
        dkim: DkimKey | None = None,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if security not in DEFAULT_PORTS:
            raise ConfigError(f"smtp.security = {security!r}: expected none, starttls or tls")
        if username and not password:
            raise ConfigError(f"smtp.username = {username!r} but FINEWS_SMTP_PASSWORD is not set",
                              hint="set FINEWS_SMTP_PASSWORD in the environment, or clear smtp.username")
        self.host = host
        self.port = port or DEFAULT_PORTS[security]
        self.security = security
        self.username = username
        self.password = password
        self.timeout = timeout
        self.send_deadline = send_deadline
        self.dkim = dkim
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
        self._smtp: _DeadlineMixin | None = None
        self._deadline = Deadline()
        #: Connections opened so far (the benchmark and tests read it).
        self.connections = 0

    # -- connection ----------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def connect(self) -> _DeadlineMixin:
        if self._smtp is not None:
            return self._smtp
        where = f"{self.host}:{self.port}"
        smtp: _DeadlineMixin | None = None
        try:
            if self.security == "tls":
                smtp = _DeadlineSMTP_SSL(self.host, self.port, deadline=self._deadline, timeout=self.timeout,
                                         local_hostname=self.local_hostname, context=self._context())
            else:
                smtp = _DeadlineSMTP(self.host, self.port, deadline=self._deadline, timeout=self.timeout,
                                     local_hostname=self.local_hostname)
            smtp.ehlo()
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    smtp.close()
                    raise DeliveryError(f"SMTP server {where} does not offer STARTTLS",
                                        hint="set smtp.security = \"tls\" or \"none\" to match the server")
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP server {where} refused the login of {self.username}: "
                                f"{exc.smtp_code} {_reply_text(exc.smtp_error)}",
                                hint="check smtp.username and FINEWS_SMTP_PASSWORD") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"SMTP server {where}: {exc}") from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS with SMTP server {where} failed: {exc.reason or exc}",
                                hint="check smtp.security and the server's certificate") from None
        except smtplib.SMTPResponseException as exc:
            raise _failure(exc.smtp_code, exc.smtp_error, f"connect to {where}") from None
        except (smtplib.SMTPException, OSError) as exc:
            if smtp is not None:
                smtp.close()
            if self._deadline.passed():
                raise self._overdue() from None
            raise ConnectionFailure(f"cannot connect to SMTP server {where}: {exc or type(exc).__name__}") from None
        self._smtp = smtp
        self.connections += 1
        return smtp

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        self._deadline.start(self.send_deadline)
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
        finally:
            self._deadline.clear()

    def _overdue(self) -> SendDeadlineExceeded:
        return SendDeadlineExceeded(f"no complete reply from SMTP server {self.host}:{self.port} within "
                                    f"smtp.send_deadline_seconds = {self.send_deadline:g} s (at {self._deadline.stage})")

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending -------------------------------------------------------------------------------

    def send(self, msg: EmailMessage | bytes, *, sender: str = "", recipients: tuple[str, ...] = ()) -> None:
        """Send one message; the envelope comes from From and To unless given. Raises a :class:`SendFailure`."""
        if isinstance(msg, EmailMessage):
            if not sender:
                sender = parseaddr(str(msg["From"] or ""))[1]
            if not recipients:
                recipients = tuple(a for _, a in getaddresses([str(v) for v in msg.get_all("To", [])]) if a)
            # An address that is not ASCII cannot be written as RFC 2047 words: such a message goes
            # with SMTPUTF8 and raw UTF-8 headers (RFC 6532).
            utf8 = not all(a.isascii() for a in (sender, *recipients))
            try:
                data = msg.as_bytes(policy=MESSAGE_POLICY.clone(utf8=True) if utf8 else MESSAGE_POLICY)
            except (ValueError, TypeError, UnicodeError, LookupError) as exc:
                raise PermanentFailure(f"the message cannot be written out: {exc}") from None
        else:
            data = msg
        if not recipients:
            raise PermanentFailure("the message has no recipient")
        if self.dkim is not None:
            data = self.dkim.sign(data)
        self._deadline.start(self.send_deadline)
        try:
            self._send_once(data, sender, recipients, retry_idle_drop=True)
        except SendFailure:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            if self._deadline.passed():
                raise self._overdue() from None
            raise ConnectionFailure(f"connection to {self.host}:{self.port} failed: "
                                    f"{exc or type(exc).__name__}") from None
        finally:
            self._deadline.clear()

    def _send_once(self, data: bytes, sender: str, recipients: tuple[str, ...], retry_idle_drop: bool) -> None:
        reused = self._smtp is not None
        smtp = self.connect()
        options: list[str] = []
        if not data.isascii() or not (sender + "".join(recipients)).isascii():
            if any(not a.isascii() for a in (sender, *recipients)):
                if not smtp.has_extn("smtputf8"):
                    raise PermanentFailure("the address is not ASCII and the server does not support SMTPUTF8")
                options.append("SMTPUTF8")
            if smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        # One recipient only: with several, a DATA accepted after some refusals would have to be followed
        # by the message, to the others, where the command-by-command path sends nothing.
        pipelined = smtp.has_extn("pipelining") and len(recipients) == 1
        try:
            if pipelined:
                replies = smtp.envelope(sender, options, recipients)
            else:
                code, reply = smtp.mail(sender, options)
        except smtplib.SMTPServerDisconnected:
            # Nothing of this message went out: a server that closed an idle connection is no failure.
            self._drop()
            if reused and retry_idle_drop and not self._deadline.passed():
                log.debug("SMTP connection was closed by the server while idle; reconnecting")
                self._send_once(data, sender, recipients, retry_idle_drop=False)
                return
            raise
        if pipelined:
            self._check_envelope(smtp, replies, recipients)
            code, reply = smtp._send_body(data)
        else:
            if code != 250:
                raise self._refused(code, reply, "MAIL FROM")
            for rcpt in recipients:
                code, reply = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    raise self._refused(code, reply, f"RCPT TO {rcpt}")
            try:
                code, reply = smtp.data(data)
            except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
                raise self._refused(exc.smtp_code, exc.smtp_error, "DATA") from None
        if code != 250:
            raise self._refused(code, reply, "end of DATA")

    def _check_envelope(self, smtp: _DeadlineMixin, replies: list[tuple[str, int, bytes]],
                        recipients: tuple[str, ...]) -> None:
        """Raise the first refusal among the pipelined replies, as the command-by-command path would."""
        stages = ["MAIL FROM", *(f"RCPT TO {rcpt}" for rcpt in recipients), "DATA"]
        wanted = [(250,), *[(250, 251)] * len(recipients), (354,)]
        for (_, code, reply), stage, good in zip(replies, stages, wanted, strict=False):
            if code in good:
                continue
            if replies[-1][0] == "DATA" and replies[-1][1] == 354:
                # A server that took DATA despite the refusal now waits for a message; closing the
                # connection is the one way to be sure none is delivered.
                self._drop()
                raise _failure(code, reply, stage)
            raise self._refused(code, reply, stage)

    def _refused(self, code: int, reply: bytes | str, stage: str) -> SendFailure:
        """The failure of a refusal at ``stage``, with the connection left fit for the next message:
        after a 421 the server is closing it (dropped), after any other only this transaction ends (RSET)."""
        if code == 421:
            self._drop()
        else:
            self._reset()
        return _failure(code, reply, stage)

    def _reset(self) -> None:
        smtp = self._smtp
        if smtp is None:
            return
        try:
            code, _ = smtp.rset()
            if code != 250:
                self._drop()
        except (smtplib.SMTPException, OSError):
            self._drop()


def transport_from_config(config: Config) -> SmtpTransport:
    """The transport ``[smtp]`` describes (password from FINEWS_SMTP_PASSWORD)."""
    smtp = config.smtp
    return SmtpTransport(
        host=smtp.host,
        port=smtp.port,
        security=smtp.security,
        username=smtp.username,
        password=config.smtp_password,
        timeout=smtp.timeout,
        send_deadline=smtp.send_deadline_seconds,
        dkim=DkimKey.from_config(config),
    )
