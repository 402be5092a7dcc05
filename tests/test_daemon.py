"""The real daemon as a subprocess (`finews-feeds --config F daemon`), with a temporary site, an
aiosmtpd sink and a digest run a few seconds ahead: feeds served and rebuilt when a post appears,
the digest sent once, SIGTERM in the middle of a send, a restart, two daemons on PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import feedparser
import httpx
import pytest
from aiosmtpd.controller import Controller
from feed_checks import atom_problems
from smtp_fakes import SECRET, Sink, database_url, free_port, postgres_available, running, wait_until
from test_archive import rows

from finews_feeds.config import build_config, load_config
from finews_feeds.mail.store import Store
from finews_feeds.service import daemon as daemon_module
from finews_feeds.service.daemon import Rebuilder, bind_socket, is_post_path
from finews_feeds.site.jekyll import resolve_site

pytestmark = pytest.mark.slow

DAY = date(2022, 4, 20)
ZONE = ZoneInfo("Asia/Shanghai")
EXECUTABLE = Path(sys.executable).parent / "finews-feeds"


def write_post(site: Path, category: str, slug: str, title: str, when: str) -> Path:
    path = site / category / "_posts" / f"{when[:10]}-{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'---\ntitle: "{title}"\ndate: {when} +0800\ncategories: {category}\ntags: [测试]\n---\n'
        f"<p>{title}的正文。市场人士表示，相关政策将陆续落地。</p>\n",
        encoding="utf-8",
    )
    return path


SITE_URL = "https://news.example.org"


def make_site(root: Path) -> Path:
    site = root / "site"
    site.mkdir()
    (site / "_config.yml").write_text(
        "title: 测试财经\nurl: https://news.example.org\ntimezone: Asia/Shanghai\n"
        "permalink: /:categories/:year/:month/:day/:title:output_ext\n",
        encoding="utf-8",
    )
    write_post(site, "cailianshe", "n1", "央行开展逆回购操作", "2022-04-20 09:30:00")
    write_post(site, "yicai", "n2", "人民币汇率小幅走高", "2022-04-20 15:05:00")
    return site


def later_send_at(hours: float) -> str:
    """A daily send time `hours` from now in Shanghai (so no run is due, or one is overdue)."""
    return (datetime.now(ZONE) + timedelta(hours=hours)).strftime("%H:%M")


def write_config(root: Path, site: Path, smtp_port: int, db: str, web_port: int, output: Path | None = None,
                 **digest: Any) -> Path:
    send_at = digest.get("send_at", later_send_at(6))
    path = root / "finews.toml"
    path.write_text(f"""
[site]
source = "{site}"
cache_dir = "{root / 'cache'}"
[feeds]
output = "{output or root / 'feeds'}"
[digest]
send_at = "{send_at}"
timezone = "Asia/Shanghai"
from = "finews <digest@news.example.org>"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
rate_per_second = 0
retry_backoff = 0.01
timeout = 10
[database]
url = "{db}"
[web]
host = "127.0.0.1"
port = {web_port}
public_url = "http://127.0.0.1:{web_port}"
[scheduler]
rebuild_every_minutes = 10
watch = true
misfire_grace_minutes = 720
""", encoding="utf-8")
    return path


class Daemon:
    """One daemon subprocess (`finews-feeds --config F [options] daemon [daemon options]`) and its address."""

    def __init__(self, config: Path, port: int, *daemon_args: str, options: tuple[str, ...] = (),
                 log_name: str = "daemon.log") -> None:
        self.port = port
        self.log = config.parent / log_name
        environment = {**os.environ, "FINEWS_SECRET_KEY": SECRET, "FINEWS_WEB_PORT": str(port)}
        environment.pop("FINEWS_CONFIG", None)
        with self.log.open("w", encoding="utf-8") as err:
            self.proc = subprocess.Popen([str(EXECUTABLE), "--config", str(config), *options, "daemon", *daemon_args],
                                         cwd=config.parent, env=environment, stdout=subprocess.DEVNULL, stderr=err)

    @classmethod
    def with_digest(cls, config: Path, port: int, *, after: float = 1.0, log_name: str = "daemon.log") -> Daemon:
        """A daemon that also runs the digest of DAY ``after`` seconds after it starts."""
        return cls(config, port, "--digest-in", str(after), "--digest-day", DAY.isoformat(), log_name=log_name)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(f"{self.base}/healthz", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return None

    def wait_ready(self) -> dict[str, Any]:
        def built() -> bool:
            health = self.health()
            return bool(health and health.get("last_build"))

        assert wait_until(built, timeout=60), self.output()
        health = self.health()
        assert health is not None
        return health

    def wait_sent(self) -> dict[str, Any]:
        """The last send result, once the digest run has finished."""
        def sent() -> bool:
            health = self.health()
            return bool(health and health.get("last_send"))

        assert wait_until(sent, timeout=60), self.output()
        health = self.health()
        assert health is not None
        return dict(health["last_send"])

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send ``sig``; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        return code, time.monotonic() - started

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def smtp_port(sink: Sink) -> Iterator[int]:
    with running(sink) as port:
        yield port


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def add_active(db: str, emails: list[str]) -> None:
    with Store.open(db) as store:
        for email in emails:
            store.add_subscriber(email, confirmed=True)


def per_recipient(sink: Sink) -> dict[str, int]:
    return {rcpt: len(msgs) for rcpt, msgs in sink.by_recipient().items()}


def ledger_states(db: str) -> list[str]:
    with Store.open(db) as store:
        return sorted(d.state for d in store.ledger(DAY))


def test_daemon_serves_feeds_rebuilds_on_a_new_post_confirms_subscribers_and_stops_on_sigterm(
    tmp_path: Path, sink: Sink, smtp_port: int, daemons: list[Daemon]
) -> None:
    site = make_site(tmp_path)
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    port = free_port()
    config = write_config(tmp_path, site, smtp_port, db, port)
    daemon = Daemon(config, port, options=("--log-format", "json"))
    daemons.append(daemon)
    health = daemon.wait_ready()
    assert health["ok"] is True
    assert health["scheduler"]["state"] == "running"
    assert sorted(health["scheduler"]["next_run_times"]) == ["digest", "rebuild"]
    assert (health["last_build"]["ok"], health["last_build"]["posts"]) == (True, 2)
    assert health["last_send"] is None

    with httpx.Client(base_url=daemon.base, timeout=5) as client:
        feed = client.get("/feeds/rss.xml")
        assert feed.headers["content-type"] == "application/rss+xml; charset=utf-8"
        assert "央行开展逆回购操作" in feed.text
        assert "沪指收涨" not in feed.text

        # A post saved into the site reaches the served feeds without a restart (watchdog).
        write_post(site, "cailianshe", "n3", "沪指收涨0.5%", "2022-04-20 20:00:00")
        assert wait_until(lambda: "沪指收涨0.5%" in client.get("/feeds/rss.xml").text, timeout=20), daemon.output()
        # The same build writes the category's feed too, a moment later (files are written one by one).
        assert wait_until(lambda: "沪指收涨0.5%" in client.get("/feeds/categories/cailianshe/atom.xml").text,
                          timeout=20), daemon.output()

        # Subscribing through the running daemon mails the confirm link through the configured SMTP.
        assert client.post("/subscribe", data={"email": "web@example.org", "category": "yicai"}).status_code == 200
        assert wait_until(lambda: "web@example.org" in per_recipient(sink), timeout=20), daemon.output()
        text = sink.by_recipient()["web@example.org"][0].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = next(w for w in text.split() if w.startswith(f"{daemon.base}/confirm/"))
        assert client.get(link.removeprefix(daemon.base)).status_code == 200  # the page with the button
        assert client.post(link.removeprefix(daemon.base)).status_code == 200  # the button
    with Store.open(db) as store:
        subscriber = store.get_subscriber("web@example.org")
        assert subscriber is not None and (subscriber.status, subscriber.categories) == ("active", ("yicai",))

    # No digest is due for hours: nothing but the confirmation was sent.
    assert per_recipient(sink) == {"web@example.org": 1}
    code, seconds = daemon.stop()
    assert code == 0, daemon.output()
    assert seconds < 5
    lines = [json.loads(line) for line in daemon.output().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert lines[-1]["message"] == "daemon stopped"


def test_subscribe_confirm_digest_one_click_unsubscribe_and_no_more_digests_through_the_daemon(
    tmp_path: Path, sink: Sink, smtp_port: int, daemons: list[Daemon]
) -> None:
    site = make_site(tmp_path)
    write_post(site, "yicai", "n4", "次日快讯：债市走强", "2022-04-21 10:00:00")
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    add_active(db, ["control@example.org"])
    port = free_port()
    config = write_config(tmp_path, site, smtp_port, db, port)

    daemon = Daemon(config, port, log_name="subscribe.log")
    daemons.append(daemon)
    daemon.wait_ready()
    with httpx.Client(base_url=daemon.base, timeout=5) as client:
        archive = client.get("/digests/")  # written at start, before any digest
        assert (archive.status_code, "还没有发出过每日精选。" in archive.text) == (200, True)
        assert client.post("/subscribe", data={"email": "reader@example.org", "category": "yicai"}).status_code == 200
        assert wait_until(lambda: "reader@example.org" in per_recipient(sink), timeout=20), daemon.output()
        text = sink.by_recipient()["reader@example.org"][0].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = next(w for w in text.split() if w.startswith(f"{daemon.base}/confirm/"))
        assert client.post(link.removeprefix(daemon.base)).status_code == 200
    assert daemon.stop()[0] == 0

    digest = Daemon.with_digest(config, port, log_name="digest.log")
    daemons.append(digest)
    assert digest.wait_sent()["sent"] == 2
    mail = sink.by_recipient()["reader@example.org"][1].message
    body = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "人民币汇率小幅走高" in body and "央行开展逆回购操作" not in body  # only the chosen category
    url = mail["List-Unsubscribe"].split("<", 1)[1].split(">", 1)[0]
    with httpx.Client(timeout=5) as client:
        assert client.get(url).status_code == 200  # a prefetch changes nothing
        done = client.post(url, content=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert (done.status_code, "location" in done.headers, "set-cookie" in done.headers) == (200, False, False)
    assert digest.stop()[0] == 0

    next_day = Daemon(config, port, "--digest-in", "1", "--digest-day", "2022-04-21", log_name="next.log")
    daemons.append(next_day)
    assert next_day.wait_sent()["sent"] == 1
    assert next_day.stop()[0] == 0
    assert per_recipient(sink) == {"reader@example.org": 2, "control@example.org": 2}


def test_the_digest_arrives_once_with_its_web_copy_served(
    tmp_path: Path, sink: Sink, smtp_port: int, daemons: list[Daemon]
) -> None:
    site = make_site(tmp_path)
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    emails = [f"r{n}@example.org" for n in range(4)]
    add_active(db, emails)
    port = free_port()
    config = write_config(tmp_path, site, smtp_port, db, port)
    daemon = Daemon.with_digest(config, port)
    daemons.append(daemon)
    result = daemon.wait_sent()
    assert (result["ok"], result["day"], result["sent"], result["failed"]) == (True, "2022-04-20", 4, 0)
    assert per_recipient(sink) == dict.fromkeys(emails, 1)
    message = sink.messages[0].message
    assert "2022年4月20日" in str(message["Subject"])
    assert message["List-Unsubscribe"].startswith(f"<{daemon.base}/unsubscribe/")
    with httpx.Client(base_url=daemon.base, timeout=5) as client:
        archived = client.get("/digests/2022-04-20")
        assert archived.status_code == 200
        assert "央行开展逆回购操作" in archived.text
        index = client.get("/digests/")
        assert [(href, line) for href, _, line, _ in rows(index.content)] == [
            ("2022-04-20.html", "2022年4月20日 星期三 · 共 2 篇")]
        feed = client.get("/digests/atom.xml")
        assert atom_problems(feed.content) == []
        assert [e.link for e in feedparser.parse(feed.content).entries] == [f"{SITE_URL}/feeds/digests/2022-04-20.html"]
    # Both parts of the mail lead to the archive.
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f"往期精选：{SITE_URL}/feeds/digests/" in text.splitlines()
    assert f'<a class="fl" href="{SITE_URL}/feeds/digests/"' in html
    assert daemon.stop()[0] == 0

    # A restart that runs the same day again sends nothing: see the catch-up test below.
    assert per_recipient(sink) == dict.fromkeys(emails, 1)


def test_the_daemon_sends_a_large_digest_from_sender_processes_everyone_once(
    tmp_path: Path, sink: Sink, smtp_port: int, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sender processes started from the daemon's scheduler thread, next to the web app's event loop.
    monkeypatch.setenv("FINEWS_SMTP_PROCESSES", "2")
    site = make_site(tmp_path)
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    emails = [f"r{n:03d}@example.org" for n in range(120)]
    add_active(db, emails)
    port = free_port()
    daemon = Daemon.with_digest(write_config(tmp_path, site, smtp_port, db, port), port)
    daemons.append(daemon)
    result = daemon.wait_sent()
    assert (result["ok"], result["sent"], result["connections"], result["processes"]) == (True, 120, 2, 2)
    assert per_recipient(sink) == dict.fromkeys(emails, 1)
    assert daemon.stop()[0] == 0


def test_a_daemon_started_after_the_send_time_catches_up_once(
    tmp_path: Path, sink: Sink, smtp_port: int, daemons: list[Daemon]
) -> None:
    site = make_site(tmp_path)
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    emails = ["a@example.org", "b@example.org"]
    add_active(db, emails)
    port = free_port()
    # Due a few minutes ago: the daemon was "down" at the send time.
    config = write_config(tmp_path, site, smtp_port, db, port, send_at=later_send_at(-0.1))
    for n in range(2):
        daemon = Daemon(config, port, "--digest-day", DAY.isoformat(), log_name=f"run{n}.log")
        daemons.append(daemon)
        result = daemon.wait_sent()
        assert result["sent"] == (2 if n == 0 else 0), daemon.output()
        assert "was missed; running it now" in daemon.output()
        assert daemon.stop()[0] == 0
    assert per_recipient(sink) == dict.fromkeys(emails, 1)


def test_a_digest_run_that_finds_the_smtp_server_down_is_retried_until_it_is_back(
    tmp_path: Path, sink: Sink, daemons: list[Daemon]
) -> None:
    site = make_site(tmp_path)
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    emails = ["a@example.org", "b@example.org", "c@example.org"]
    add_active(db, emails)
    smtp_port, port = free_port(), free_port()  # nothing listens on smtp_port yet
    config = write_config(tmp_path, site, smtp_port, db, port)
    daemon = Daemon(config, port, "--digest-in", "1", "--digest-day", DAY.isoformat(), "--retry-after", "1")
    daemons.append(daemon)
    failed = daemon.wait_sent()
    assert (failed["ok"], failed["attempt"]) == (False, 1), failed
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port, ready_timeout=10)
    controller.start()
    try:
        assert wait_until(lambda: len(sink.messages) == len(emails), timeout=60), daemon.output()
        assert wait_until(lambda: (daemon.health() or {}).get("last_send", {}).get("ok") is True, timeout=20)
        result = (daemon.health() or {})["last_send"]
        assert result["attempt"] >= 2 and result["sent"] == len(emails)
        assert "trying again at" in daemon.output()
        assert daemon.stop()[0] == 0
    finally:
        controller.stop()
    assert per_recipient(sink) == dict.fromkeys(emails, 1)


def test_sigterm_in_the_middle_of_a_send_and_a_restart_leave_everyone_with_one_message(
    tmp_path: Path, sink: Sink, smtp_port: int, daemons: list[Daemon]
) -> None:
    sink.delay = 0.25  # each DATA takes a quarter second: the signal lands mid-send
    site = make_site(tmp_path)
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    emails = [f"r{n:02d}@example.org" for n in range(12)]
    add_active(db, emails)
    port = free_port()
    config = write_config(tmp_path, site, smtp_port, db, port)
    daemon = Daemon.with_digest(config, port)
    daemons.append(daemon)
    assert wait_until(lambda: len(sink.messages) >= 3, timeout=60), daemon.output()
    code, seconds = daemon.stop()
    assert code == 0, daemon.output()
    assert seconds < 5
    first_run = len(sink.messages)
    assert 3 <= first_run < len(emails)
    # The message in flight was finished and recorded: nothing is left half-sent.
    states = ledger_states(db)
    assert states.count("sent") == first_run
    assert "sending" not in states
    assert "stopped before the end" in daemon.output()

    sink.delay = 0.0
    again = Daemon.with_digest(config, port, log_name="again.log")
    daemons.append(again)
    result = again.wait_sent()
    assert (result["sent"], result["already_sent"], result["resent"]) == (len(emails) - first_run, first_run, 0)
    assert again.stop()[0] == 0
    assert per_recipient(sink) == dict.fromkeys(emails, 1)
    assert ledger_states(db) == ["sent"] * len(emails)


def test_a_confirmation_accepted_while_smtp_is_down_is_delivered_after_a_restart(
    tmp_path: Path, sink: Sink, daemons: list[Daemon]
) -> None:
    site = make_site(tmp_path)
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    smtp_port = free_port()  # nothing listens there yet
    port = free_port()
    config = write_config(tmp_path, site, smtp_port, db, port)
    config.write_text(config.read_text(encoding="utf-8") + "[outbox]\nbackoff_seconds = 0.5\npoll_seconds = 1\n",
                      encoding="utf-8")
    daemon = Daemon(config, port, log_name="down.log")
    daemons.append(daemon)
    daemon.wait_ready()
    with httpx.Client(base_url=daemon.base, timeout=5) as client:
        assert client.post("/subscribe", data={"email": "early@example.org"}).status_code == 200

    def tried() -> bool:
        with Store.open(db) as store:
            return any(row.attempts >= 1 for row in store.outbox_rows("confirm"))

    assert wait_until(tried, timeout=30), daemon.output()
    assert daemon.stop()[0] == 0
    with Store.open(db) as store:
        [row] = store.outbox_rows("confirm")
        assert (row.email, row.state) == ("early@example.org", "queued")
        assert "refused" in row.last_error

    with running(sink, port=smtp_port):
        again = Daemon(config, port, log_name="up.log")
        daemons.append(again)
        assert wait_until(lambda: "early@example.org" in per_recipient(sink), timeout=30), again.output()
        assert again.stop()[0] == 0
    assert per_recipient(sink) == {"early@example.org": 1}
    assert sink.by_recipient()["early@example.org"][0].message["Message-ID"] == row.message_id
    with Store.open(db) as store:
        assert [(r.kind, r.state) for r in store.outbox_rows()] == [("subscribe", "done"), ("confirm", "sent")]


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable")
def test_two_daemons_on_one_postgresql_database_send_everyone_one_digest(
    tmp_path: Path, sink: Sink, smtp_port: int, daemons: list[Daemon]
) -> None:
    sink.delay = 0.02
    site = make_site(tmp_path)
    emails = [f"r{n:02d}@example.org" for n in range(40)]
    with database_url("postgresql", tmp_path) as db:
        add_active(db, emails)
        ports = [free_port(), free_port()]
        config = write_config(tmp_path, site, smtp_port, db, ports[0])
        pair = [Daemon.with_digest(config, port, after=2.0, log_name=f"daemon{n}.log") for n, port in enumerate(ports)]
        daemons.extend(pair)
        results = [d.wait_sent() for d in pair]
        # However the two interleave (one waits for the other's claim on the day, or they split it),
        # together they send each message once.
        assert sum(r["sent"] for r in results) == 40, results
        assert all(r["ok"] for r in results)
        assert per_recipient(sink) == dict.fromkeys(emails, 1)
        assert [d.stop()[0] for d in pair] == [0, 0]
        with Store.open(db) as store:
            assert {d.state for d in store.ledger(DAY)} == {"sent"}


def test_start_up_errors_are_one_line_with_an_exit_code(tmp_path: Path, smtp_port: int) -> None:
    site = make_site(tmp_path)
    port = free_port()
    config = write_config(tmp_path, site, smtp_port, f"sqlite:///{tmp_path}/var/finews.sqlite3", port)
    environment = {k: v for k, v in os.environ.items() if k not in ("FINEWS_SECRET_KEY", "FINEWS_CONFIG")}
    missing = subprocess.run([str(EXECUTABLE), "--config", str(config), "daemon"], env=environment,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: FINEWS_SECRET_KEY is not set")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        taken = subprocess.run([str(EXECUTABLE), "--config", str(config), "daemon"],
                               env={**environment, "FINEWS_SECRET_KEY": SECRET}, capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in taken.stderr
    # A broken template in digest.templates (the digest's or the confirmation mail's) stops the start.
    for name in ("digest.txt.j2", "confirm.html.j2"):
        templates = tmp_path / f"templates-{name}"
        templates.mkdir()
        (templates / name).write_text("{% if %}\n", encoding="utf-8")
        broken = subprocess.run([str(EXECUTABLE), "--config", str(config), "daemon"], capture_output=True, text=True,
                                env={**environment, "FINEWS_SECRET_KEY": SECRET, "FINEWS_DIGEST_TEMPLATES": str(templates)},
                                timeout=60)
        assert broken.returncode == 5
        assert broken.stderr.startswith("error: ") and f"{name}, line 1: " in broken.stderr.splitlines()[0]


def test_only_post_files_and_the_site_config_trigger_a_rebuild(tmp_path: Path) -> None:
    root = tmp_path
    site = resolve_site(build_config({"site": {"source": str(root)}}))
    yes = ["_posts/2022-04-20-a.md", "cailianshe/_posts/2022-04-20-b.html", "a/b/_posts/sub/2022-04-20-c.markdown",
           "_config.yml"]
    no = ["_posts/notes.txt", "_site/_posts/2022-04-20-a.md", "_drafts/2022-04-20-a.md", ".git/_posts/x.md",
          "about.md", "cailianshe/_posts/.2022-04-20-b.md.swp", "../elsewhere/_posts/2022-04-20-a.md",
          "sub/_config.yml", "_posts/_hidden/2022-04-20-a.md", "_posts/notes.md"]
    assert [is_post_path(site, str(root / p)) for p in yes] == [True] * len(yes)
    assert [is_post_path(site, str(root / p)) for p in no] == [False] * len(no)


def test_after_a_change_the_daemon_rebuilds_the_feeds_it_reaches_and_learns_the_categories_and_tags(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    config = load_config(write_config(tmp_path, site, 25, f"sqlite:///{tmp_path}/db.sqlite3", 8080),
                         {"FINEWS_SECRET_KEY": SECRET})
    daemon = daemon_module.Daemon(config)
    threading.Thread(target=daemon.stop.wait, daemon=True).start()  # a daemon has threads: no forking

    daemon._build_once()  # the first build plans every feed
    first = daemon.status.last_build
    assert first is not None and (first["ok"], first["incremental"], first["posts"]) == (True, False, 2)
    assert [name for name, _ in daemon.categories()] == ["cailianshe", "yicai"]
    assert daemon.tags() == {"测试"}

    new = write_post(site, "sina", "n3", "新浪新闻一则", "2022-04-20 21:00:00")
    new.write_text(new.read_text(encoding="utf-8").replace("tags: [测试]", "tags: [测试, 新标签]"), encoding="utf-8")
    daemon._build_once()
    added = daemon.status.last_build
    assert added is not None and (added["ok"], added["incremental"], added["posts"]) == (True, True, 3)
    assert [name for name, _ in daemon.categories()] == ["cailianshe", "sina", "yicai"]
    assert daemon.tags() == {"测试", "新标签"}
    assert "新浪新闻一则" in (tmp_path / "feeds" / "rss.xml").read_text(encoding="utf-8")
    assert "新浪新闻一则" in (tmp_path / "feeds" / "tags" / "新标签" / "atom.xml").read_text(encoding="utf-8")

    new.unlink()  # a removal: its category and tag go from the form too
    daemon._build_once()
    removed = daemon.status.last_build
    assert removed is not None and (removed["ok"], removed["incremental"], removed["posts"]) == (True, True, 2)
    assert [name for name, _ in daemon.categories()] == ["cailianshe", "yicai"]
    assert daemon.tags() == {"测试"}
    daemon.stop.set()


def test_the_daemon_stats_only_the_files_the_watcher_reported_and_walks_when_it_cannot_trust_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finews_feeds.site import walk

    site = make_site(tmp_path)
    config = load_config(write_config(tmp_path, site, 25, f"sqlite:///{tmp_path}/db.sqlite3", 8080),
                         {"FINEWS_SECRET_KEY": SECRET})
    daemon = daemon_module.Daemon(config)
    threading.Thread(target=daemon.stop.wait, daemon=True).start()  # a daemon has threads: no forking
    root = site.resolve()
    walks: list[int] = []
    list_posts = walk.list_posts
    monkeypatch.setattr(walk, "list_posts", lambda s: walks.append(1) or list_posts(s))
    rss = tmp_path / "feeds" / "rss.xml"

    daemon._build_once()
    assert walks and daemon.status.last_build["incremental"] is False  # type: ignore[index]

    # A new post the watcher reported: stat'ed alone, no walk.
    walks.clear()
    new = write_post(site, "sina", "n3", "只看报告的文件", "2022-04-20 21:00:00")
    assert daemon.note_file_event([str(new)])
    assert not daemon.note_file_event([str(site / "README.md")])
    daemon._build_once()
    assert walks == [] and daemon.status.last_build["incremental"] is True  # type: ignore[index]
    assert "只看报告的文件" in rss.read_text(encoding="utf-8")

    # Nothing reported (the interval job): a walk, which finds a post the watcher missed.
    missed = write_post(site, "sina", "n4", "监视器漏掉的文件", "2022-04-20 22:00:00")
    daemon._build_once()
    assert walks == [1] and daemon.status.last_build["incremental"] is True  # type: ignore[index]
    assert "监视器漏掉的文件" in rss.read_text(encoding="utf-8")

    # A folder of posts moved in reports no file of its own: a walk.
    walks.clear()
    moved = tmp_path / "elsewhere" / "_posts"
    moved.mkdir(parents=True)
    (moved / "2022-04-20-n5.md").write_text(missed.read_text(encoding="utf-8").replace("监视器漏掉的文件", "搬进来的文件"),
                                            encoding="utf-8")
    shutil.move(str(tmp_path / "elsewhere"), str(site / "moved"))
    assert not daemon.note_folder_event(root, [str(site / ".git" / "objects")])
    assert daemon.note_folder_event(root, [str(site / "moved")])
    daemon.note_file_event([str(new)])
    daemon._build_once()
    assert walks == [1]
    assert "搬进来的文件" in rss.read_text(encoding="utf-8")

    # A failed build: the paths it took are not in the cache, so the next build walks.
    walks.clear()
    latest = write_post(site, "sina", "n6", "失败之后的文件", "2022-04-20 23:00:00")
    daemon.note_file_event([str(latest)])
    monkeypatch.setattr("finews_feeds.service.daemon.run_build", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    daemon._build_once()
    assert daemon.status.last_build["ok"] is False  # type: ignore[index]
    monkeypatch.undo()
    monkeypatch.setattr(walk, "list_posts", lambda s: walks.append(1) or list_posts(s))
    daemon._build_once()
    assert walks == [1] and "失败之后的文件" in rss.read_text(encoding="utf-8")
    daemon.stop.set()


def test_a_rebuild_asked_for_during_a_build_runs_after_it_and_none_is_lost() -> None:
    started, release = threading.Event(), threading.Event()
    builds: list[int] = []

    def build() -> None:
        builds.append(len(builds))
        if len(builds) == 1:
            started.set()
            release.wait(10)

    rebuilder = Rebuilder(build, threading.Event())
    first = threading.Thread(target=rebuilder.request)
    first.start()
    assert started.wait(10)
    # Two requests while the first build runs: they return at once and make it go round once more.
    rebuilder.request()
    rebuilder.request()
    assert builds == [0]
    release.set()
    first.join(10)
    assert builds == [0, 1]
    rebuilder.request()
    assert builds == [0, 1, 2]
    stopped = threading.Event()
    stopped.set()
    Rebuilder(build, stopped).request()  # after a stop signal no new build starts
    assert builds == [0, 1, 2]


def test_the_listening_socket_says_tcp_so_responses_are_not_held_back_by_nagle() -> None:
    # asyncio turns Nagle off only for sockets whose proto is IPPROTO_TCP; with it on, the end of
    # each response waited for the client's delayed ACK (45 ms instead of 2 ms for a gzipped feed).
    with bind_socket("127.0.0.1", 0) as sock:
        assert (sock.family, sock.type, sock.proto) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        with socket.create_connection(sock.getsockname()), sock.accept()[0] as accepted:
            assert accepted.proto == socket.IPPROTO_TCP
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_healthz_is_503_with_the_reason_while_the_last_build_failed_and_200_once_one_succeeds(
    tmp_path: Path, smtp_port: int, daemons: list[Daemon]
) -> None:
    site = make_site(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder's parent should be\n", encoding="utf-8")
    port = free_port()
    config = write_config(tmp_path, site, smtp_port, f"sqlite:///{tmp_path}/var/finews.sqlite3", port,
                          output=blocker / "feeds")
    daemon = Daemon(config, port)
    daemons.append(daemon)
    daemon.wait_ready()
    with httpx.Client(base_url=daemon.base, timeout=5) as client:
        failed = client.get("/healthz")
        body = failed.json()
        assert (failed.status_code, body["ok"], body["last_build"]["ok"]) == (503, False, False), body
        error = f"cannot create the output folder {blocker / 'feeds'}: Not a directory"
        assert body["last_build"]["error"] == error
        assert body["problems"] == [f"the last feed build failed: {error}"]
        assert body["scheduler"]["state"] == "running" and body["build_running"] is None

        blocker.unlink()
        write_post(site, "sina", "n3", "修好之后的文章", "2022-04-20 21:00:00")  # the watcher asks for a rebuild
        assert wait_until(lambda: client.get("/healthz").status_code == 200, timeout=30), daemon.output()
        body = client.get("/healthz").json()
        assert (body["ok"], body["problems"], body["last_build"]["ok"], body["last_build"]["posts"]) == (
            True, [], True, 3)
    assert daemon.stop()[0] == 0


@dataclass
class Monotonic:
    """A monotonic clock the test moves by hand."""

    now: float = 500.0

    def __call__(self) -> float:
        return self.now


class HangingDaemon(daemon_module.Daemon):
    """The real daemon, whose feed build hangs until the test lets it go on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hanging = threading.Event()
        self.go_on = threading.Event()

    def _build(self) -> None:
        self.hanging.set()
        assert self.go_on.wait(60)
        super()._build()


def test_healthz_is_503_while_a_build_runs_past_the_limit_and_200_once_it_finishes(tmp_path: Path) -> None:
    import uvicorn
    from apscheduler.schedulers.background import BackgroundScheduler

    from finews_feeds.service.web import create_app

    site = make_site(tmp_path)
    port = free_port()
    path = write_config(tmp_path, site, 25, f"sqlite:///{tmp_path}/var/finews.sqlite3", port)
    path.write_text(path.read_text(encoding="utf-8").replace(
        "[scheduler]\n", "[scheduler]\nbuild_stuck_after_seconds = 1\n"), encoding="utf-8")
    config = load_config(path, {"FINEWS_SECRET_KEY": SECRET})
    monotonic = Monotonic()
    daemon = HangingDaemon(config, monotonic=monotonic)
    daemon.scheduler = BackgroundScheduler()
    daemon.scheduler.start()
    with Store.open(config.database.url) as store:
        app = create_app(config, store=store, health=daemon.health)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
        web = threading.Thread(target=server.run, daemon=True)
        web.start()
        build = threading.Thread(target=daemon.rebuilder.request, daemon=True)
        try:
            assert wait_until(lambda: server.started, timeout=10)
            build.start()
            assert daemon.hanging.wait(20)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                monotonic.now += 0.5
                young = client.get("/healthz")
                assert (young.status_code, young.json()["problems"]) == (200, [])
                assert young.json()["build_running"]["seconds"] == 0.5

                monotonic.now += 2.0
                stuck = client.get("/healthz")
                assert (stuck.status_code, stuck.json()["ok"]) == (503, False)
                assert stuck.json()["problems"] == [
                    "a feed build has been running for 2 s (longer than scheduler.build_stuck_after_seconds = 1)"]
                assert stuck.json()["build_running"]["seconds"] == 2.5
                assert stuck.json()["last_build"] is None

                daemon.go_on.set()
                build.join(60)
                assert not build.is_alive()
                done = client.get("/healthz")
                body = done.json()
                assert (done.status_code, body["problems"], body["build_running"]) == (200, [], None)
                assert (body["last_build"]["ok"], body["last_build"]["posts"]) == (True, 2)
        finally:
            daemon.go_on.set()
            daemon.stop.set()
            server.should_exit = True
            web.join(10)
            daemon.scheduler.shutdown(wait=False)
