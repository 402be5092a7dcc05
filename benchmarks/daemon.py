"""The daemon as an operator sees it: start-up, a new post reaching the served feed, feed requests,
and how fast SIGTERM ends it, idle and in the middle of a send.

    .venv/bin/python benchmarks/daemon.py [--posts 2000] [--subscribers 200] [--root /dev/shm/finews-daemon]

Generates a site with make_site.py, starts `finews-feeds daemon` (watch on) against an aiosmtpd
sink, and prints:
- seconds from start to the first build served (/healthz has a last build);
- seconds from a post file saved (the daemon idle) to its title in the served /feeds/rss.xml
  (watchdog + rebuild);
- feed requests per second over one keep-alive connection: 200 with gzip, and 304 answers to
  If-None-Match, with their ratio (what a conditional GET saves the server);
- seconds from SIGTERM to exit, idle and while the digest is being sent (slowed sink), and that the
  restart leaves each subscriber one message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from corpus import site_generator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
EXECUTABLE = Path(sys.executable).parent / "finews-feeds"
SECRET = "benchmark-secret-0123456789"


def wait(predicate: object, timeout: float = 300.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.perf_counter() - started
        time.sleep(0.02)
    raise SystemExit("timed out")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (a fair clock on a shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(base: str) -> dict[str, object] | None:
    try:
        return dict(httpx.get(f"{base}/healthz", timeout=2).json())
    except (httpx.HTTPError, ValueError):
        return None


def wait_quiet(base: str, quiet: float = 2.0) -> None:
    """Until the last build has stayed the last one for ``quiet`` seconds: the daemon is idle."""
    last, since = None, time.perf_counter()
    while time.perf_counter() - since < quiet:
        current = (health(base) or {}).get("last_build")
        if current != last:
            last, since = current, time.perf_counter()
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--root", type=Path, default=Path("/dev/shm/finews-daemon"))
    args = parser.parse_args()

    from smtp_fakes import Sink, free_port, running

    from finews_feeds.mail.store import Store

    root: Path = args.root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    site = root / "site"
    subprocess.run([sys.executable, str(site_generator()), str(site), "--posts", str(args.posts)], check=True,
                   stdout=subprocess.DEVNULL)
    posts = sorted(site.rglob("_posts/*.md"))
    day = max(post.name[:10] for post in posts)  # the new post goes last of the newest day: first in the feed
    db = f"sqlite:///{root}/var/finews.sqlite3"
    with Store.open(db) as store:
        for n in range(args.subscribers):
            store.add_subscriber(f"r{n:05d}@example.org", confirmed=True)

    sink = Sink()
    with running(sink) as smtp_port:
        port = free_port()
        send_at = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(hours=6)).strftime("%H:%M")
        config = root / "finews.toml"
        config.write_text(f"""
[site]
source = "{site}"
cache_dir = "{root / 'cache'}"
[feeds]
output = "{root / 'feeds'}"
[digest]
send_at = "{send_at}"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
rate_per_second = 0
[database]
url = "{db}"
[web]
port = {port}
[scheduler]
watch = true
""", encoding="utf-8")
        env = {**os.environ, "FINEWS_SECRET_KEY": SECRET}
        env.pop("FINEWS_CONFIG", None)
        base = f"http://127.0.0.1:{port}"

        def start(*extra: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([str(EXECUTABLE), "--config", str(config), "daemon", *extra], cwd=root, env=env,
                                    stderr=(root / "daemon.log").open("ab"))

        proc = start()
        ready = wait(lambda: bool((health(base) or {}).get("last_build")))
        print(f"posts: {len(posts)}, subscribers: {args.subscribers}")
        print(f"start to first build served: {ready:.2f} s")
        wait_quiet(base)  # a post saved to an idle daemon, not while a build runs or is due

        new = posts[-1].parent / f"{day}-NWBENCH0000001.md"
        new.write_text(f'---\ntitle: "基准测试新文章"\ndate: {day} 23:59:00 +0800\n---\n<p>正文。</p>\n',
                       encoding="utf-8")
        saved = time.perf_counter()
        with httpx.Client(base_url=base, timeout=10) as client:
            wait(lambda: "基准测试新文章" in client.get("/feeds/rss.xml").text)
            print(f"post saved to served in /feeds/rss.xml: {time.perf_counter() - saved:.2f} s")

            etag = client.get("/feeds/rss.xml").headers["etag"]
            rates, per_cpu = {}, {}
            for name, headers in (("200 gzip", {"Accept-Encoding": "gzip"}),
                                  ("304", {"Accept-Encoding": "gzip", "If-None-Match": etag})):
                count, started, cpu = 0, time.perf_counter(), cpu_seconds(proc.pid)
                while time.perf_counter() - started < 3.0:
                    client.get("/feeds/rss.xml", headers=headers)
                    count += 1
                rates[name] = count / (time.perf_counter() - started)
                per_cpu[name] = count / max(1e-9, cpu_seconds(proc.pid) - cpu)
            size = len(client.get("/feeds/rss.xml", headers={"Accept-Encoding": "identity"}).content)
            print(f"/feeds/rss.xml ({size} bytes), wall clock: {rates['200 gzip']:.0f} req/s with gzip, "
                  f"{rates['304']:.0f} req/s answered 304")
            print(f"  per CPU second of the daemon: {per_cpu['200 gzip']:.0f} with gzip, {per_cpu['304']:.0f} answered 304 "
                  f"(304 {per_cpu['304'] / per_cpu['200 gzip']:.1f}x cheaper)")

        started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        print(f"SIGTERM idle: exit {code} in {time.perf_counter() - started:.2f} s")

        sink.delay = 0.05
        proc = start("--digest-in", "1", "--digest-day", day)
        wait(lambda: len(sink.messages) >= args.subscribers // 4)
        started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        first = len(sink.messages)
        print(f"SIGTERM mid-send ({first} of {args.subscribers} sent): exit {code} in {time.perf_counter() - started:.2f} s")
        sink.delay = 0.0
        proc = start("--digest-in", "1", "--digest-day", day)
        wait(lambda: bool((health(base) or {}).get("last_send")))
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        counts: dict[str, int] = {}
        for received in sink.messages:
            for rcpt in received.rcpt_tos:
                counts[rcpt] = counts.get(rcpt, 0) + 1
        print(f"after restart: {len(counts)} subscribers got mail, each exactly once: "
              f"{set(counts.values()) == {1} and len(counts) == args.subscribers}")


if __name__ == "__main__":
    main()
