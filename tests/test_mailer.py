"""The SMTP transport against a real SMTP server on loopback."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dkim
import pytest
import smtp_fakes
from aiosmtpd.smtp import AuthResult, LoginPassword
from smtp_fakes import Sink, TricklingServer, free_port, make_config, outcome_within, running, wait_until

from finews_feeds.errors import ConfigError, DeliveryError
from finews_feeds.mail.mailer import (
    ConnectionFailure,
    PermanentFailure,
    SendDeadlineExceeded,
    SmtpTransport,
    TemporaryFailure,
    transport_from_config,
)
from finews_feeds.mail.message import build_message


def message(to: str = "reader@example.org", n: int = 1) -> Any:
    return build_message(
        subject=f"测试 {n}", html=f"<p>正文 {n}</p>", text=f"正文 {n}", sender="finews <digest@news.example.org>",
        to=to, message_id=f"<m{n}@news.example.org>", date=datetime(2022, 4, 21, 7, 30, tzinfo=UTC),
        headers={"List-Unsubscribe": "<https://x.example.org/u/t>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                 "List-Id": "finews <digest.news.example.org>"},
    )


@pytest.fixture(autouse=True, params=[False, True], ids=["command-by-command", "pipelining"])
def pipelining(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test against the aiosmtpd sink twice: a server without PIPELINING, and one that offers it."""
    if request.param:
        def offering(sink: Sink, *args: Any, **kwargs: Any) -> Any:
            sink.pipelining = True
            return smtp_fakes.running(sink, *args, **kwargs)

        monkeypatch.setattr(sys.modules[__name__], "running", offering)
    return bool(request.param)


def test_a_message_takes_two_writes_with_pipelining_and_four_without(pipelining: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    plain_send = smtplib.SMTP.send

    def counted(self: smtplib.SMTP, data: Any) -> None:
        writes.append(data if isinstance(data, bytes) else data.encode())
        plain_send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", counted)
    sink = Sink()
    with running(sink) as port, transport(port) as smtp:
        smtp.connect()
        writes.clear()
        smtp.send(message("a@example.org"))
        sent = list(writes)
    assert [r.rcpt_tos for r in sink.messages] == [["a@example.org"]]
    if pipelining:
        assert sent[0] == b"MAIL FROM:<digest@news.example.org>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
        assert len(sent) == 2 and sent[1].endswith(b"\r\n.\r\n")
    else:
        assert [w.split(b":")[0].lower() for w in sent[:3]] == [b"mail from", b"rcpt to", b"data\r\n"]
        assert len(sent) == 4


def test_lines_that_start_with_a_dot_are_stuffed_and_read_back_whole() -> None:
    sink = Sink()
    text = ".starts with a dot\n..two\nmiddle . dot\n."
    msg = build_message(subject="s", html="<p>x</p>", text=text, sender="d@news.example.org", to="a@example.org",
                        message_id="<dot@news.example.org>", date=datetime(2022, 4, 21, tzinfo=UTC))
    raw = b"X-Dots: yes\r\n" + msg.as_bytes()
    raw = raw.replace(b"\r\n\r\n", b"\r\n\r\n.a\r\n..b\r\n", 1)  # dots at the start of body lines
    with running(sink) as port, transport(port) as smtp:
        smtp.send(raw, sender="d@news.example.org", recipients=("a@example.org",))
    assert sink.messages[0].data.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") == raw


def test_a_server_that_takes_data_after_refusing_the_recipient_gets_no_message_and_the_connection_closes() -> None:
    """A broken server answers 354 to a pipelined DATA whose RCPT it refused: the client must not send the body."""
    after: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"220 broken ESMTP\r\n")
            reader.readline()  # EHLO
            conn.sendall(b"250-broken\r\n250 PIPELINING\r\n")
            for reply in (b"250 OK", b"550 5.1.1 no such user", b"354 go ahead"):
                reader.readline()
                conn.sendall(reply + b"\r\n")
            after.append(reader.read())  # until the client closes the connection

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    smtp = transport(int(listener.getsockname()[1]))
    with pytest.raises(PermanentFailure) as caught:
        smtp.send(message("gone@example.org"))
    server.join(10)
    listener.close()
    assert caught.value.message == "550 5.1.1 no such user (at RCPT TO gone@example.org)"
    assert after == [b""]  # not a byte of the message, and the connection closed
    assert smtp._smtp is None


def transport(port: int, **kwargs: Any) -> SmtpTransport:
    kwargs.setdefault("security", "none")
    kwargs.setdefault("timeout", 5.0)
    return SmtpTransport("127.0.0.1", port, **kwargs)


def test_sends_the_message_bytes_with_its_envelope_over_one_connection() -> None:
    sink = Sink()
    with running(sink) as port, transport(port) as smtp:
        smtp.send(message("a@example.org", 1))
        smtp.send(message("b@example.org", 2))
        assert smtp.connections == 1
    assert [(r.mail_from, r.rcpt_tos) for r in sink.messages] == [
        ("digest@news.example.org", ["a@example.org"]), ("digest@news.example.org", ["b@example.org"])]
    got = sink.messages[0].message
    assert (got["Message-ID"], got["To"], got["Subject"]) == ("<m1@news.example.org>", "a@example.org", "测试 1")
    assert len(sink.connections) == 1


def test_a_550_for_one_recipient_is_permanent_and_the_connection_goes_on() -> None:
    sink = Sink(rcpt_replies={"gone@example.org": "550 5.1.1 <gone@example.org>: no such user"})
    with running(sink) as port, transport(port) as smtp:
        with pytest.raises(PermanentFailure) as caught:
            smtp.send(message("gone@example.org"))
        smtp.send(message("ok@example.org"))
        assert smtp.connections == 1
    assert caught.value.code == 550
    assert caught.value.message == "550 5.1.1 <gone@example.org>: no such user (at RCPT TO gone@example.org)"
    assert [r.rcpt_tos for r in sink.messages] == [["ok@example.org"]]


@pytest.mark.parametrize("reply", ["451 4.3.0 try again later", "452 4.2.2 mailbox full"])
def test_a_4xx_reply_is_temporary(reply: str) -> None:
    sink = Sink(data_replies=[reply])
    with running(sink) as port, transport(port) as smtp:
        with pytest.raises(TemporaryFailure) as caught:
            smtp.send(message())
        assert not isinstance(caught.value, ConnectionFailure)
        smtp.send(message())
        assert smtp.connections == 1
    assert caught.value.code == int(reply[:3])
    assert len(sink.messages) == 1


def test_a_421_closes_the_connection_and_the_next_send_reconnects() -> None:
    sink = Sink(data_replies=["421 4.7.0 too busy, closing"])
    with running(sink) as port, transport(port) as smtp:
        with pytest.raises(TemporaryFailure, match=r"421 4\.7\.0 too busy"):
            smtp.send(message())
        smtp.send(message())
        assert smtp.connections == 2
    assert len(sink.messages) == 1


def test_a_connection_the_server_closed_while_idle_is_reopened_without_a_failure() -> None:
    sink = Sink(drop_after=2)
    with running(sink) as port, transport(port) as smtp:
        for n in range(5):
            smtp.send(message(f"r{n}@example.org", n))
        assert smtp.connections == 3
    assert [r.rcpt_tos[0] for r in sink.messages] == [f"r{n}@example.org" for n in range(5)]


def test_a_connection_dropped_before_the_250_is_a_connection_failure() -> None:
    sink = Sink(drop_data_of={1})
    with running(sink) as port, transport(port) as smtp:
        with pytest.raises(ConnectionFailure):
            smtp.send(message())
        smtp.send(message())
    assert len(sink.messages) == 2  # the first was stored: the one window for a duplicate


def test_an_address_that_is_not_ascii_goes_with_smtputf8_and_raw_utf8_headers() -> None:
    sink = Sink()
    with running(sink) as port, transport(port) as smtp:
        smtp.send(message("用户@例子.中国"))
    received = sink.messages[0]
    assert received.rcpt_tos == ["用户@例子.中国"]
    assert "To: 用户@例子.中国\r\n".encode() in received.data
    with running(Sink(), enable_SMTPUTF8=False) as port, transport(port) as smtp, \
            pytest.raises(PermanentFailure, match="the server does not support SMTPUTF8"):
        smtp.send(message("用户@例子.中国"))


def test_no_server_is_a_connection_failure() -> None:
    with transport(free_port()) as smtp, pytest.raises(ConnectionFailure, match="cannot connect to SMTP server"):
        smtp.send(message())


def test_a_server_slower_than_the_timeout_is_a_connection_failure() -> None:
    sink = Sink(delay=2.0)
    with running(sink) as port, transport(port, timeout=0.5) as smtp, pytest.raises(ConnectionFailure):
        smtp.send(message())


#: The per-message deadline of the trickling-server tests, and how much longer a send may take before the
#: test calls it hung: generous, since other tests load this 2-core machine (a hung send never returns).
DEADLINE = 1.0
HUNG_AFTER = DEADLINE + 15.0


@pytest.mark.parametrize(("stage", "at"), [
    ("greeting", "connect"), ("ehlo", "EHLO"), ("mail", "MAIL"), ("data", "DATA"),
])
def test_a_server_that_trickles_its_reply_is_a_temporary_failure_at_the_send_deadline(stage: str, at: str) -> None:
    with TricklingServer(stage) as server:
        # One byte every 0.05 s: no read ever waits the 5 s timeout.
        smtp = transport(server.port, timeout=5.0, send_deadline=DEADLINE)
        failure = outcome_within(HUNG_AFTER, lambda: smtp.send(message()))
        assert isinstance(failure, SendDeadlineExceeded) and isinstance(failure, TemporaryFailure)
        assert isinstance(failure, ConnectionFailure)  # retried, and the message may have been stored: resent as is
        assert failure.message == (f"no complete reply from SMTP server 127.0.0.1:{server.port} within "
                                   f"smtp.send_deadline_seconds = 1 s (at {at})")
        # The connection is in an unknown state: dropped (no QUIT), and the next message opens a new one.
        assert wait_until(lambda: server.closed_by_client == 1, timeout=10)
        assert smtp.connections == (1 if stage in ("mail", "data") else 0)  # connections that got through EHLO
        assert len(server.stored) == (1 if stage == "data" else 0)


def test_the_deadline_covers_reconnecting_after_the_server_closed_the_idle_connection() -> None:
    with TricklingServer("greeting", prompt_connections=1) as server:
        smtp = transport(server.port, timeout=5.0, send_deadline=DEADLINE)
        smtp.send(message("a@example.org", 1))
        # The server closed that connection; the one the transport opens again for this message trickles.
        failure = outcome_within(HUNG_AFTER, lambda: smtp.send(message("b@example.org", 2)))
        assert isinstance(failure, SendDeadlineExceeded)
        assert failure.message.endswith("(at connect)")
        assert (server.connections, len(server.stored)) == (2, 1)


def test_closing_on_a_server_that_trickles_its_quit_reply_ends_at_the_deadline() -> None:
    with TricklingServer("quit") as server:
        smtp = transport(server.port, timeout=5.0, send_deadline=DEADLINE)
        smtp.send(message())
        assert outcome_within(HUNG_AFTER, smtp.close) is None
        assert len(server.stored) == 1


def test_starttls_is_required_when_configured() -> None:
    with running(Sink()) as port, transport(port, security="starttls") as smtp, \
            pytest.raises(DeliveryError, match="does not offer STARTTLS"):
        smtp.send(message())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"digest", b"pw")
    return AuthResult(success=ok, handled=False)


def test_starttls_and_login_with_the_password(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    sink = Sink()
    with running(sink, tls_context=server_tls, require_starttls=True, auth_required=True,
                 authenticator=_authenticator) as port:
        with transport(port, security="starttls", username="digest", password="pw", ssl_context=client_tls) as smtp:
            smtp.send(message())
        with transport(port, security="starttls", username="digest", password="wrong", ssl_context=client_tls) as bad, \
                pytest.raises(DeliveryError, match="refused the login of digest"):
            bad.send(message())
        untrusted = transport(port, security="starttls", username="digest", password="pw")
        with pytest.raises(DeliveryError, match="TLS with SMTP server"):
            untrusted.send(message())
    assert len(sink.messages) == 1


def test_the_deadline_holds_inside_starttls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    with TricklingServer("data", tls=server_tls) as server:
        smtp = transport(server.port, security="starttls", timeout=5.0, send_deadline=DEADLINE,
                         ssl_context=ssl.create_default_context(cafile=str(cert)))
        failure = outcome_within(HUNG_AFTER, lambda: smtp.send(message()))
        assert isinstance(failure, SendDeadlineExceeded)
        assert failure.message.endswith("(at DATA)")
        assert len(server.stored) == 1


def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    from aiosmtpd.controller import Controller

    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=server_tls, ready_timeout=10)
    controller.start()
    try:
        with transport(port, security="tls", ssl_context=ssl.create_default_context(cafile=str(cert))) as smtp:
            smtp.send(message())
    finally:
        controller.stop()
    assert len(sink.messages) == 1


def test_dkim_signature_verifies_and_covers_the_list_unsubscribe_headers(tmp_path: Path) -> None:
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                            capture_output=True).stdout
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    sink = Sink()
    with running(sink) as port:
        config = make_config(port, smtp={"dkim_selector": "s1", "dkim_domain": "news.example.org",
                                         "dkim_key_file": str(key)})
        with transport_from_config(config) as smtp:
            smtp.send(message())
    data = sink.messages[0].data

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"s1._domainkey.news.example.org." else b""

    assert dkim.verify(data, dnsfunc=dns)
    signature = data.split(b"DKIM-Signature:", 1)[1].split(b"\r\n\r\n", 1)[0]
    signed = signature.split(b"h=", 1)[1].split(b";", 1)[0].replace(b"\r\n", b"").replace(b" ", b"").lower()
    for header in (b"list-unsubscribe", b"list-unsubscribe-post", b"list-id", b"from", b"subject", b"message-id"):
        assert header in signed.split(b":")
    tampered = data.replace(b"https://x.example.org/u/t", b"https://evil.example/u/t")
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_config_errors_for_half_set_dkim_and_a_missing_password() -> None:
    with pytest.raises(ConfigError, match="DKIM needs all of"):
        transport_from_config(make_config(25, smtp={"dkim_selector": "s1"}))
    with pytest.raises(ConfigError, match="FINEWS_SMTP_PASSWORD is not set"):
        transport_from_config(make_config(25, smtp={"username": "digest"}))
    assert transport_from_config(make_config(0, smtp={"security": "tls"})).port == 465


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_the_dkim_rsa_signature_made_by_openssl_is_the_one_dkimpy_makes(tmp_path: Path, algorithm: str) -> None:
    import hashlib

    import dkim.crypto

    from finews_feeds.mail import mailer

    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True, capture_output=True)
    private = dkim.crypto.parse_pem_private_key(key.read_bytes())
    for text in (b"", b"a header block", "一封信".encode() * 500):
        ours = mailer._openssl_rsa_sign(dkim.HashThrough(hashlib.new(algorithm, text)), private)
        theirs = mailer._DKIMPY_RSA_SIGN(dkim.HashThrough(hashlib.new(algorithm, text)), private)
        assert ours == bytes(theirs) and len(ours) == 256
    assert dkim.RSASSA_PKCS1_v1_5_sign is mailer._openssl_rsa_sign
