"""Served feeds per CPU second of the web app: `/feeds/rss.xml` answered 200 with gzip, 200 without,
and 304 to If-None-Match, over one keep-alive connection.

    .venv/bin/python benchmarks/web.py [--posts 2000] [--seconds 2] [--rounds 5] [--root /dev/shm/finews-web]

Generates a site with the repository's make_site.py, builds its feeds with `finews-feeds build`,
then serves them from a uvicorn in a child process (the web app alone: no scheduler, no outbox) and
counts requests and the child's user + system CPU seconds. The kinds of request take turns, round
after round, so the machine's load falls on each alike; the median round is shown with the range.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import uvicorn

from finews_feeds.config import build_config
from finews_feeds.mail.store import Store
from finews_feeds.service.web import create_app

HERE = Path(__file__).resolve().parent
MAKE_SITE = HERE.parent / "tests" / "data" / "collector" / "make_site.py"
EXECUTABLE = Path(sys.executable).parent / "finews-feeds"
SECRET = "benchmark-secret-0123456789"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (a fair clock on a shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(feeds: Path, database: str, port: int) -> None:
    """The child: the web app on ``port``, serving ``feeds``."""
    config = build_config({"feeds": {"output": str(feeds)}, "database": {"url": database},
                           "web": {"port": port, "public_url": f"http://127.0.0.1:{port}"}},
                          {"FINEWS_SECRET_KEY": SECRET})
    with Store.open(database) as store:
        uvicorn.run(create_app(config, store=store), host="127.0.0.1", port=port, log_config=None,
                    access_log=False, lifespan="off", server_header=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round of one kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path("/dev/shm/finews-web"))
    parser.add_argument("--serve", nargs=3, metavar=("FEEDS", "DATABASE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), args.serve[1], int(args.serve[2]))
        return

    root: Path = args.root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    site, feeds, database = root / "site", root / "feeds", f"sqlite:///{root}/finews.sqlite3"
    subprocess.run([sys.executable, str(MAKE_SITE), str(site), "--posts", str(args.posts), "--seed", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    config = root / "finews.toml"
    config.write_text(f'[site]\nsource = "{site}"\ncache_dir = "{root / "cache"}"\n[feeds]\noutput = "{feeds}"\n',
                      encoding="utf-8")
    env = {**os.environ, "FINEWS_SECRET_KEY": SECRET}
    env.pop("FINEWS_CONFIG", None)
    subprocess.run([str(EXECUTABLE), "--config", str(config), "build"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    with Store.open(database):
        pass  # the schema, made before the child starts
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(feeds), database, str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    first = client.get("/feeds/rss.xml", headers={"Accept-Encoding": "identity"})
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            etag = first.headers["etag"]
            zipped = client.get("/feeds/rss.xml", headers={"Accept-Encoding": "gzip"})
            kinds = {
                "200 gzip": {"Accept-Encoding": "gzip"},
                "200 identity": {"Accept-Encoding": "identity"},
                "304": {"Accept-Encoding": "gzip", "If-None-Match": etag},
            }
            per_cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind, headers in kinds.items():
                    count, started, cpu = 0, time.perf_counter(), cpu_seconds(child.pid)
                    while time.perf_counter() - started < args.seconds:
                        client.get("/feeds/rss.xml", headers=headers)
                        count += 1
                    per_cpu[kind].append(count / max(1e-9, cpu_seconds(child.pid) - cpu))
    finally:
        child.terminate()
        child.wait(30)
    print(f"posts: {args.posts}; /feeds/rss.xml: {len(first.content)} bytes, "
          f"{zipped.headers.get('content-length')} gzipped; ETag {etag}")
    for kind, rates in per_cpu.items():
        print(f"  {kind:>12}: {statistics.median(rates):6.0f} requests per CPU second of the server "
              f"(rounds {min(rates):.0f}-{max(rates):.0f})")


if __name__ == "__main__":
    main()
