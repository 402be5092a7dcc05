"""An SMTP sink for the sending benchmarks: accepts everything, keeps no bodies, and costs as little as
it can, so that what is measured is the sender.

aiosmtpd's own DATA handler reads the message line by line (a readuntil and a bytearray per line,
then a join): for a 40 KB digest that is ~600 awaits per message, and a sink built on it needs about
two cores to take 1,000 messages a second. This one reads DATA in large chunks up to the final
``<CRLF>.<CRLF>`` and looks only at the header block for the Message-ID. It counts messages, and
per recipient the Message-IDs it got, so a benchmark can say whether anyone got two copies (and
whether a second copy had the same Message-ID, i.e. a resend after a crash, which mail clients show
once). ``--delay`` holds each 250 that long (without blocking the other connections): a remote relay.

Run it on its own (one process, so it does not share the sender's interpreter lock):

    .venv/bin/python benchmarks/sink.py [--port 0] [--delay 0.05]

It prints ``ready PORT`` and then answers one line per line read on stdin: ``stats`` (a JSON object:
received, recipients, duplicated recipients, duplicates with the same Message-ID, the sink's CPU
seconds) or ``reset``. ``--ceiling`` instead measures the sink's own ceiling: a plain smtplib client,
several processes of threads with one connection each (32 in all by default), sends pre-built
digest-sized messages as fast as the sink takes them; it prints the rate and the sink's CPU time per
message. :class:`SinkProcess` is how ``send.py`` drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import resource
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

#: How much DATA one read takes; a digest is 40-90 KB.
CHUNK = 256 * 1024
MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(?:\r\n[ \t]+)?(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class Counts:
    """What the sink accepted: a count, and the Message-IDs per recipient (no bodies)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.ids: defaultdict[str, list[bytes]] = defaultdict(list)

    def add(self, recipients: list[str], message_id: bytes) -> None:
        with self.lock:
            self.received += 1
            for rcpt in recipients:
                self.ids[rcpt.lower()].append(message_id)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            duplicated = [ids for ids in self.ids.values() if len(ids) > 1]
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {
                "received": self.received,
                "recipients": len(self.ids),
                # Recipients who got more than one message, and those whose copies all had one Message-ID.
                "duplicated": len(duplicated),
                "duplicated_same_id": sum(1 for ids in duplicated if len(set(ids)) == 1),
                "extra_copies": sum(len(ids) - 1 for ids in duplicated),
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }

    def reset(self) -> None:
        with self.lock:
            self.received = 0
            self.ids.clear()


class WholeDataSMTP(SMTP):
    """aiosmtpd's SMTP with a DATA that reads in chunks and never builds the message."""

    counts: Counts
    delay: float

    # MAIL and RCPT without aiosmtpd's RFC 5322 address parser (email._header_value_parser: ~15% of
    # the sink's CPU); the senders measured here send plain addresses in angle brackets.
    async def smtp_MAIL(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        self.envelope.mail_from = _address(arg, "FROM:")
        await self.push("250 OK")

    async def smtp_RCPT(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push("503 Error: need MAIL command")
            return
        self.envelope.rcpt_tos.append(_address(arg, "TO:"))
        await self.push("250 OK")

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = bytearray()
        # The client sends nothing after the final dot until it has our reply, so the data read
        # ends exactly at the terminator.
        while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
            chunk = await self._reader.read(CHUNK)
            if not chunk:
                return
            data += chunk
        end = data.find(b"\r\n\r\n")
        found = MESSAGE_ID.search(data, 0, end if end >= 0 else len(data))
        self.counts.add(list(self.envelope.rcpt_tos), found.group(1) if found else b"")
        if self.delay:
            await asyncio.sleep(self.delay)
        self._set_post_data_state()
        await self.push("250 OK")


def _address(arg: str, prefix: str) -> str:
    """The address of ``FROM:<a@b> SIZE=1`` / ``TO:<a@b>``."""
    rest = arg[len(prefix):] if arg[: len(prefix)].upper() == prefix else arg
    return rest.strip().split(" ", 1)[0].strip("<>")


class Pipelining:
    """aiosmtpd's handler hook that offers PIPELINING (RFC 2920), as Postfix, Exim and Haraka do:
    aiosmtpd reads commands line by line from a buffer, so it answers pipelined ones in order."""

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class SinkController(Controller):
    def __init__(self, counts: Counts, delay: float, port: int) -> None:
        self.counts, self.delay = counts, delay
        super().__init__(Pipelining(), hostname="127.0.0.1", port=port, ready_timeout=10)

    def factory(self) -> SMTP:
        server = WholeDataSMTP(self.handler, hostname="sink.local", data_size_limit=None)
        server.counts, server.delay = self.counts, self.delay
        return server


def serve(port: int, delay: float) -> None:
    """Run the sink until stdin closes, answering ``stats`` and ``reset``."""
    if port == 0:
        # aiosmtpd's controller connects to its port to check it is up, so it needs the number first.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
    counts = Counts()
    controller = SinkController(counts, delay, port)
    controller.start()
    print("ready", port, flush=True)
    for line in sys.stdin:
        if line.strip() == "reset":
            counts.reset()
            print("ok", flush=True)
        else:
            print(json.dumps(counts.stats()), flush=True)
    controller.stop()


class SinkProcess:
    """The sink in a process of its own."""

    def __init__(self, delay: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--delay", str(delay)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, port = self.proc.stdout.readline().split()
        assert ready == "ready"
        self.port = int(port)
        self.delay = delay

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._ask("stats"))
        return result

    def reset(self) -> None:
        self._ask("reset")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)

    def __enter__(self) -> SinkProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sample_message(size: int) -> bytes:
    """A message of about ``size`` bytes with 76-character lines, as a digest's quoted-printable body."""
    line = b"=E4=BB=8A=E6=97=A5=E8=B4=A2=E7=BB=8F=E8=A6=81=E9=97=BB abcdefghijklmnopqrstuvwxyz 0123456=\r\n"
    body = line * max(1, size // len(line))
    return (b"From: bench <bench@example.org>\r\nTo: r@example.org\r\nSubject: ceiling\r\n"
            b"Message-ID: <%d@bench>\r\nContent-Type: text/plain\r\n\r\n" % size) + body


def _client(port: int, threads: int, per_thread: int, message: bytes, start: Any) -> None:
    def work(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            start.wait()
            for i in range(per_thread):
                smtp.sendmail("bench@example.org", [f"r{n}-{i}@example.org"], message)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def ceiling(processes: int, threads: int, messages: int, size: int) -> None:
    """Drive a sink with ``processes`` × ``threads`` smtplib connections and print what it takes."""
    message = sample_message(size)
    per_thread = max(1, messages // (processes * threads))
    total = per_thread * processes * threads
    context = multiprocessing.get_context("spawn")
    with SinkProcess() as sink:
        start = context.Event()
        clients = [context.Process(target=_client, args=(sink.port, threads, per_thread, message, start))
                   for _ in range(processes)]
        for client in clients:
            client.start()
        time.sleep(1.0)  # every connection open before the clock starts
        before = sink.stats()
        started = time.perf_counter()
        start.set()
        for client in clients:
            client.join()
        elapsed = time.perf_counter() - started
        after = sink.stats()
    received = after["received"] - before["received"]
    cpu = after["cpu_seconds"] - before["cpu_seconds"]
    assert received == total, (received, total)
    print(f"sink ceiling: {total} messages of {len(message)} bytes over {processes * threads} connections "
          f"({processes} client processes x {threads} threads) in {elapsed:.2f} s = {total / elapsed:,.0f} msgs/s "
          f"wall (client included); sink CPU {cpu * 1e6 / total:.0f} us a message = "
          f"{total / cpu:,.0f} msgs per CPU second")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each 250 is held (a remote relay)")
    parser.add_argument("--ceiling", action="store_true", help="measure the sink's own ceiling and exit")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=40_000, help="bytes a message (the demo day's digest: ~40 KB)")
    args = parser.parse_args()
    if args.ceiling:
        ceiling(args.client_processes, max(1, args.connections // args.client_processes), args.messages, args.size)
    else:
        serve(args.port, args.delay)


if __name__ == "__main__":
    main()
