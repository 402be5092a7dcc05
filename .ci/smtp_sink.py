"""An SMTP sink on loopback for .ci/wheel-check: accepts every message and writes it to a folder.

    python .ci/smtp_sink.py --out DIR --port-file FILE

Listens on 127.0.0.1 at a free port (or --port), writes that port to FILE once it accepts connections, then
stores each message as DIR/N.eml (N = 1, 2, ...) with its envelope recipients in DIR/N.rcpt,
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.count += 1
            number = self.count
        (self.out / f"{number}.rcpt").write_text("\n".join(envelope.rcpt_tos) + "\n", encoding="utf-8")
        # Written last, under its final name only when whole: a reader never sees half a message.
        part = self.out / f"{number}.eml.part"
        part.write_bytes(bytes(envelope.content))
        part.rename(self.out / f"{number}.eml")
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = args.port or free_port()
    controller = Controller(Handler(args.out), hostname="127.0.0.1", port=port, ready_timeout=10,
                            enable_SMTPUTF8=True)
    controller.start()
    try:
        args.port_file.write_text(f"{port}\n", encoding="utf-8")
        stop.wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
