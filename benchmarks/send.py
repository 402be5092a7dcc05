"""Sending throughput: N subscribers to a local aiosmtpd sink (its own process), one reused SMTP
connection against one connection per message, measured in the same run, twice:

- the whole path (send_digest: ledger commits before DATA and after 250, personalising, building);
- the transport alone (the same N personalised messages built beforehand, no database), in plain
  SMTP and with STARTTLS (a self-signed certificate made for the run), where a new connection
  also costs a TLS handshake.

    .venv/bin/python benchmarks/send.py [--subscribers 10000] [--db sqlite|postgresql]

Prints messages per second for each and the ratios. Absolute figures depend on the machine (the
whole path is bound by two durable commits per message); the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from smtp_fakes import database_url, free_port, make_collection, make_config

from finews_feeds.mail.delivery import digest_message, send_digest
from finews_feeds.mail.digest import Selection
from finews_feeds.mail.mailer import SmtpTransport, transport_from_config
from finews_feeds.mail.message import message_id
from finews_feeds.mail.store import Store, Subscriber
from finews_feeds.mail.tokens import secret_of

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, tzinfo=UTC)


class ConnectionPerMessage(SmtpTransport):
    """Opens and closes a connection for every message, as a naive sender does."""

    def send(self, msg: EmailMessage | bytes, *, sender: str = "", recipients: tuple[str, ...] = ()) -> None:
        try:
            super().send(msg, sender=sender, recipients=recipients)
        finally:
            self.close()


SINK = """
import ssl, sys
from aiosmtpd.controller import Controller

class CountingSink:
    # Counts and drops what it accepts: 40,000 stored digests would only measure memory.
    def __init__(self):
        self.received = 0

    async def handle_DATA(self, server, session, envelope):
        self.received += 1
        return "250 Message accepted"

sink = CountingSink()
options = {{}}
if {cert!r}:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain({cert!r}, {key!r})
    options["tls_context"] = context
controller = Controller(sink, hostname="127.0.0.1", port={port}, ready_timeout=10, **options)
controller.start()
print("ready", flush=True)
for line in sys.stdin:
    print(sink.received, flush=True)
controller.stop()
"""


class SinkProcess:
    """aiosmtpd in a process of its own, so the sender does not share its interpreter lock;
    with a certificate it offers STARTTLS."""

    def __init__(self, cert: str = "", key: str = "") -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", SINK.format(port=self.port, cert=cert, key=key)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def received(self) -> int:
        """Messages accepted so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    n = args.subscribers

    sink = SinkProcess()
    port = sink.port
    try:
        with tempfile.TemporaryDirectory() as folder, database_url(args.db, folder) as url, Store.open(url) as store:
            config = make_config(port, url)
            # Half the subscribers choose a category: two variants rendered, as on a real list.
            store.import_subscribers([
                Subscriber(0, f"reader{i:05d}@example.org", f"读者{i}", "active", ("yicai",) if i % 2 else (), (),
                           T0, T0, None)
                for i in range(n)
            ], T0)
            collection = make_collection()
            modes = [
                ("one reused connection", lambda: transport_from_config(config)),
                ("one connection per message", lambda: ConnectionPerMessage("127.0.0.1", port, security="none")),
            ]
            whole: list[float] = []
            for offset, (label, factory) in enumerate(modes):
                day = date.fromordinal(DAY.toordinal() + offset)
                before = sink.received()
                started = time.perf_counter()
                report = send_digest(config, store, factory, day, collection, lambda: datetime.now(UTC),
                                     renderer=FixedDayRenderer(config))
                elapsed = time.perf_counter() - started
                assert report.sent == n and sink.received() - before == n, report.summary_lines()
                whole.append(n / elapsed)
                print(f"whole path, {label:28s} {n} messages in {elapsed:6.1f} s = {n / elapsed:6.0f} msgs/s")

            renderer = FixedDayRenderer(config)
            variants = {key: renderer.render(DAY, [], Selection(frozenset(key), frozenset()))
                        for key in [(), ("yicai",)]}
            secret = secret_of(config)
            messages = [
                digest_message(config, collection.site, variants[sub.categories], secret, sub.email, sub.name,  # type: ignore[arg-type]
                               message_id(DAY, sub.email, "news.example.org"), T0)
                for sub in store.list_subscribers()
            ]
            cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                            "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
            tls_sink = SinkProcess(str(cert), str(key))
            client_tls = ssl.create_default_context(cafile=str(cert))
            ratios: dict[str, float] = {}
            try:
                for security, target in (("none", sink), ("starttls", tls_sink)):
                    rates: list[float] = []
                    for label, cls in (("one reused connection", SmtpTransport),
                                       ("one connection per message", ConnectionPerMessage)):
                        transport = cls("127.0.0.1", target.port, security=security, ssl_context=client_tls)
                        before = target.received()
                        started = time.perf_counter()
                        for msg in messages:
                            transport.send(msg)
                        transport.close()
                        elapsed = time.perf_counter() - started
                        assert target.received() - before == n
                        rates.append(n / elapsed)
                        print(f"transport ({security:8s}), {label:28s} {n} messages in {elapsed:6.1f} s = "
                              f"{n / elapsed:6.0f} msgs/s, {transport.connections} connections")
                    ratios[security] = rates[0] / rates[1]
            finally:
                tls_sink.close()
            print(f"ratio reused / per message: whole path {whole[0] / whole[1]:.2f}x, transport "
                  f"{ratios['none']:.2f}x, transport with STARTTLS {ratios['starttls']:.2f}x ({args.db})")
    finally:
        sink.close()


class FixedDayRenderer:
    """The real renderer, always on the sample day's posts (the second pass sends "the next day")."""

    def __init__(self, config: object) -> None:
        from finews_feeds.mail.digest import DigestRenderer, posts_of_day

        collection = make_collection()
        self.renderer = DigestRenderer(config, collection.site, collection.content)  # type: ignore[arg-type]
        self.posts = posts_of_day(collection.posts, DAY, collection.site.timezone)

    def render(self, day: date, posts: object, selection: object) -> object:
        return self.renderer.render(day, self.posts, selection)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
