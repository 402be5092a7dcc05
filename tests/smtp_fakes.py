"""A real SMTP server on loopback (aiosmtpd) that can misbehave, and small fixtures for delivery tests.

Shared by test_mailer.py, test_delivery.py and the subprocess the kill test starts.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller

from finews_feeds.config import Config, build_config
from finews_feeds.models import Post, PostSet, Site

SECRET = "test-secret-key-0123456789"
ZONE = ZoneInfo("Asia/Shanghai")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Sink:
    """aiosmtpd handler: records what it accepts; the fields below make it misbehave."""

    messages: list[Received] = field(default_factory=list)
    #: address -> reply to RCPT TO (e.g. "550 5.1.1 no such user")
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    #: replies given to the next DATA commands instead of accepting (consumed one by one)
    data_replies: list[str] = field(default_factory=list)
    #: close the connection at MAIL FROM once this many messages were accepted on it
    drop_after: int | None = None
    #: close the connection instead of answering the DATA of this message number (1-based, counted over
    #: all accepted messages), after storing it: the client cannot know it was accepted
    drop_data_of: set[int] = field(default_factory=set)
    #: seconds to wait before answering each DATA
    delay: float = 0.0
    #: message number (1-based) whose 250 is held back for `hold_seconds` (the kill test kills meanwhile)
    hold_message: int | None = None
    hold_seconds: float = 0.0
    #: offer PIPELINING (RFC 2920) in the EHLO reply, as Postfix, Exim and Haraka do
    pipelining: bool = False
    connections: set[Any] = field(default_factory=set)
    per_session: dict[Any, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if not self.pipelining:
            return responses
        # aiosmtpd reads commands line by line from a buffer, so it answers pipelined ones in order.
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.connections.add(session.peer)
        if self.drop_after is not None and self.per_session.get(session.peer, 0) >= self.drop_after:
            server.transport.close()
            return "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content),
                                          session.peer))
            number = len(self.messages)
        self.per_session[session.peer] = self.per_session.get(session.peer, 0) + 1
        if number in self.drop_data_of:
            server.transport.close()
            return "421 gone"
        if number == self.hold_message:
            await asyncio.sleep(self.hold_seconds)
        return "250 Message accepted"

    def by_recipient(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for received in self.messages:
            for rcpt in received.rcpt_tos:
                out.setdefault(rcpt.lower(), []).append(received)
        return out


@contextmanager
def running(sink: Sink, port: int = 0, **smtp_options: Any) -> Iterator[int]:
    """Serve ``sink`` on ``port`` (default: a free one) on loopback (``smtp_options`` go to aiosmtpd's
    SMTP); yields the port."""
    port = port or free_port()
    smtp_options.setdefault("enable_SMTPUTF8", True)
    controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=10, **smtp_options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def make_config(port: int, db_url: str = "sqlite:///:memory:", **sections: dict[str, Any]) -> Config:
    values: dict[str, dict[str, Any]] = {
        "site": {"source": ".", "url": "https://news.example.org", "title": "finews 财经新闻",
                 "timezone": "Asia/Shanghai"},
        "smtp": {"host": "127.0.0.1", "port": port, "security": "none", "rate_per_second": 0.0,
                 "retry_backoff": 0.01, "max_retries": 3, "timeout": 5.0, "bounce_after": 2},
        "digest": {"from": "finews <digest@news.example.org>", "reply_to": "editor@news.example.org"},
        "web": {"public_url": "https://subscribe.example.org"},
        "database": {"url": db_url},
    }
    for name, keys in sections.items():
        values.setdefault(name, {}).update(keys)
    return build_config(values, {"FINEWS_SECRET_KEY": SECRET})


def make_site() -> Site:
    return Site(
        source=".", url="https://news.example.org", title="finews 财经新闻", timezone=ZONE, language="zh-CN",
        permalink="/:categories/:year/:month/:day/:title:output_ext", category_url="/category/{slug}.html",
        tag_url="", future=False, encoding="utf-8", summary_chars=120, extensions=(".md",),
    )


def make_post(slug: str, title: str, when: datetime, category: str, tags: tuple[str, ...] = ()) -> Post:
    url = f"https://news.example.org/{category}/{when:%Y/%m/%d}/{slug}.html"
    return Post(
        path=f"_posts/{when:%Y-%m-%d}-{slug}.md", slug=slug, title=title, date=when, updated=None,
        categories=(category,), tags=tags, permalink=url.removeprefix("https://news.example.org"), url=url, id=url,
        summary=f"{title}的摘要。", image=None, author=None, source=category,
    )


def make_collection() -> PostSet:
    """Three posts on 2022-04-20 (Shanghai): two in cailianshe (one tagged A股), one in yicai."""
    posts = [
        make_post("n1", "央行开展逆回购操作", datetime(2022, 4, 20, 9, 30, tzinfo=ZONE), "cailianshe", ("A股",)),
        make_post("n2", "沪指收涨0.5%", datetime(2022, 4, 20, 15, 5, tzinfo=ZONE), "cailianshe"),
        make_post("n3", "一财快讯：人民币汇率", datetime(2022, 4, 20, 20, 0, tzinfo=ZONE), "yicai"),
    ]
    return PostSet(make_site(), posts, content=lambda post: f"<p>{post.title}正文。</p>")


def wait_until(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return True
    except Exception:
        return False


@contextmanager
def database_url(kind: str, folder: Any) -> Iterator[str]:
    """A fresh, isolated database: a SQLite file under ``folder``, or a new PostgreSQL schema dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder}/var/finews.sqlite3"
        return
    import secrets

    import psycopg

    schema = f"finews_test_{secrets.token_hex(6)}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


class TricklingServer:
    """A hand-written SMTP server on loopback that answers promptly except at ``stage``, where its reply
    comes one byte every ``interval`` seconds and never ends (continuation lines, ``250-still working``).

    Each byte arrives well within any per-read timeout, so only a deadline on the whole message ends
    the client's wait. Stages: ``greeting``, ``ehlo``, ``mail``, ``data`` (the reply after the message's
    final dot: the message is stored, the client cannot know it), ``quit``. The first ``prompt_connections``
    connections answer promptly throughout and are closed by the server after one message (an idle
    connection the server ended).
    """

    STAGES = ("greeting", "ehlo", "mail", "data", "quit")

    def __init__(self, stage: str, interval: float = 0.05, prompt_connections: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        assert stage in self.STAGES, stage
        #: Offer STARTTLS with this server context (the trickling then happens inside TLS).
        self.tls = tls
        self.stage = stage
        self.interval = interval
        self.prompt_connections = prompt_connections
        self.stored: list[bytes] = []
        self.connections = 0
        #: Connections whose client closed them (the server never closes one while trickling).
        self.closed_by_client = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> TricklingServer:
        thread = threading.Thread(target=self._accept, name="trickling-smtp", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.connections += 1
                prompt = self.connections <= self.prompt_connections
            thread = threading.Thread(target=self._serve, args=(conn, prompt), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _reply(self, conn: socket.socket, text: str, stage: str, prompt: bool) -> bool:
        """Send a reply (``text`` has no line end); False when the client went away."""
        if prompt or stage != self.stage:
            conn.sendall(text.encode() + b"\r\n")
            return True
        code = text[:3]
        while not self._stop.is_set():
            for byte in f"{code}-still working\r\n".encode():
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return False
                if self._stop.wait(self.interval):
                    return False
        return False

    def _serve(self, conn: socket.socket, prompt: bool) -> None:
        reader = conn.makefile("rb")
        secure = False
        try:
            if not self._reply(conn, "220 trickle.example ESMTP", "greeting", prompt):
                return self._gone()
            while not self._stop.is_set():
                line = reader.readline()
                if not line:
                    return self._gone()
                verb = line[:4].upper()
                if verb == b"EHLO":
                    offer = b"250-STARTTLS\r\n" if self.tls is not None and not secure else b""
                    conn.sendall(b"250-trickle.example\r\n250-8BITMIME\r\n" + offer)
                    ok = self._reply(conn, "250 SMTPUTF8", "ehlo", prompt)
                elif verb == b"STAR" and self.tls is not None:
                    conn.sendall(b"220 go ahead\r\n")
                    reader.close()
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    reader = conn.makefile("rb")
                    secure, ok = True, True
                elif verb == b"MAIL":
                    ok = self._reply(conn, "250 OK", "mail", prompt)
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        chunk = reader.readline()
                        if not chunk:
                            return self._gone()
                        data += chunk
                    with self._lock:
                        self.stored.append(data)
                    ok = self._reply(conn, "250 accepted", "data", prompt)
                    if prompt:
                        return None
                elif verb == b"QUIT":
                    return None if self._reply(conn, "221 bye", "quit", prompt) else self._gone()
                else:  # HELO, RCPT, RSET, NOOP
                    conn.sendall(b"250 OK\r\n")
                    ok = True
                if not ok:
                    return self._gone()
        except OSError:
            return self._gone()
        finally:
            reader.close()
            conn.close()
        return None

    def _gone(self) -> None:
        if not self._stop.is_set():
            with self._lock:
                self.closed_by_client += 1


def outcome_within(seconds: float, call: Any) -> Any:
    """Run ``call()`` in a thread: what it returned, or the exception it raised. Fails the test when it is
    still running after ``seconds`` (the thread is left behind, a daemon)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="bounded-call", daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return outcome[0]

@contextmanager
def stalled(port: int = 0) -> Iterator[int]:
    """A server on ``port`` (default: a free one) that accepts connections and never says a word:
    an SMTP server hung before its greeting. Leaving the block closes every connection it holds."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()
