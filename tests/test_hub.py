"""WebSub push (issue 17, item 2): what is announced, the durable queue, retries with backoff,
batches, and the real thing against a hub server started by the test (``http.server`` on a free
port, recording each POST, answering 503 the first times when asked): the `build` command, the
`websub` command, and the daemon, stopped with announcements pending and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import feedparser
import httpx
import pytest
from smtp_fakes import SECRET, free_port, make_collection, make_config, wait_until

from finews_feeds.feeds.build import build_feeds
from finews_feeds.feeds.hub import (
    QUEUE,
    HubQueue,
    HubSettings,
    HubWorker,
    Outcome,
    Pending,
    backoff,
    decode,
    due,
    encode,
    enqueue,
    feed_urls,
    outcome_of,
    publish_body,
    send_due,
    send_until,
    settle,
)

ROOT = Path(__file__).resolve().parents[1]
EXECUTABLE = Path(sys.executable).parent / "finews-feeds"
BASE = "https://news.example.org/feeds"


# -- the pure part ------------------------------------------------------------------------------


def test_only_current_feed_files_are_announced_with_their_self_urls() -> None:
    written = ["rss.xml", "atom.xml", "feed.html", "index.html", "feeds.opml", "categories/yicai/feed.json",
               "categories/yicai/index.html", "tags/a股/rss.xml", "archive/3/rss.xml", "tags/a股/archive/1/atom.xml",
               "digests/2022-04-20.html"]
    assert feed_urls(written, BASE) == [f"{BASE}/atom.xml", f"{BASE}/categories/yicai/feed.json", f"{BASE}/rss.xml",
                                        f"{BASE}/tags/a%E8%82%A1/rss.xml"]


def test_the_request_is_a_publish_form_with_one_hub_url_per_feed() -> None:
    assert publish_body([f"{BASE}/rss.xml", f"{BASE}/tags/a%E8%82%A1/rss.xml"]) == (
        b"hub.mode=publish&hub.url=https%3A%2F%2Fnews.example.org%2Ffeeds%2Frss.xml"
        b"&hub.url=https%3A%2F%2Fnews.example.org%2Ffeeds%2Ftags%2Fa%25E8%2582%25A1%2Frss.xml")
    assert [outcome_of(s) for s in (200, 202, 204, None, 408, 429, 500, 503, 400, 404, 410)] == [
        Outcome.SENT, Outcome.SENT, Outcome.SENT, Outcome.RETRY, Outcome.RETRY, Outcome.RETRY, Outcome.RETRY,
        Outcome.RETRY, Outcome.REFUSED, Outcome.REFUSED, Outcome.REFUSED]


def test_the_queue_keeps_one_entry_a_url_and_a_newer_change_outlives_the_send_of_the_older() -> None:
    queue = enqueue([], ["b", "a"], 100.0)
    assert queue == [Pending("a", 1, 100.0, 100.0), Pending("b", 1, 100.0, 100.0)]
    taken = due(queue, 100.0, 1)
    assert taken == [[queue[0]], [queue[1]]]
    queue = enqueue(queue, ["a"], 105.0)  # "a" changed again while its first announcement was on its way
    assert settle(queue, taken[0], Outcome.SENT, 106.0, 30.0) == queue  # the newer one stays
    queue = settle(queue, taken[1], Outcome.SENT, 106.0, 30.0)
    assert queue == [Pending("a", 2, 100.0, 105.0)]
    assert due(queue, 104.0, 5) == [] and due(queue, 105.0, 5) == [queue]
    assert decode(encode(queue)) == queue
    assert decode(b"{") is None and decode(b'{"version": 2, "pending": []}') is None


def test_failures_back_off_doubling_up_to_an_hour_and_refusals_are_dropped() -> None:
    assert [backoff(n, 30.0) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    queue = enqueue([], ["a", "b"], 0.0)
    queue = settle(queue, queue, Outcome.RETRY, 10.0, 30.0)
    assert [(p.attempts, p.due) for p in queue] == [(1, 40.0), (1, 40.0)]
    queue = settle(queue, queue, Outcome.RETRY, 40.0, 30.0)
    assert [(p.attempts, p.due) for p in queue] == [(2, 100.0), (2, 100.0)]
    assert settle(queue, queue[:1], Outcome.REFUSED, 100.0, 30.0) == queue[1:]


# -- a hub ---------------------------------------------------------------------------------------


@dataclass
class Hub:
    """A hub that records each POST's form, and answers ``failing`` 503s before it takes any."""

    failing: int = 0
    status: int = 204
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def urls(self) -> list[str]:
        with self.lock:
            return sorted(url for form in self.requests for url in form.get("hub.url", []))


@contextmanager
def hub_server(hub: Hub, port: int = 0) -> Iterator[Hub]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            form = parse_qs(body.decode("ascii"))
            with hub.lock:
                if hub.refused < hub.failing:
                    hub.refused += 1
                    status = 503
                else:
                    assert self.headers["Content-Type"] == "application/x-www-form-urlencoded"
                    assert form["hub.mode"] == ["publish"]
                    hub.requests.append(form)
                    status = hub.status
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}/hub"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def all_feed_urls(output: Path) -> list[str]:
    rels = [p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()]
    return feed_urls(rels, BASE)


def test_a_failing_hub_gets_every_announcement_after_its_5xx_in_batches(tmp_path: Path) -> None:
    config = make_config(1, feeds={"output": str(tmp_path / "feeds")})
    build_feeds(make_collection(), config)
    urls = all_feed_urls(tmp_path / "feeds")
    assert len(urls) == 12  # the site, two categories and a tag, three formats each
    queue = HubQueue(tmp_path / "feeds")
    queue.add(urls, time.time())
    with hub_server(Hub(failing=2)) as hub:
        settings = HubSettings(hub.url, batch=5, timeout=5, first_backoff=0.05)
        report = send_until(queue, settings, time.monotonic() + 30)
    assert (report.sent, report.retried, report.refused, report.left) == (12, 10, 0, 0)
    assert hub.urls() == urls
    # The two batches the hub failed go again after their backoff, behind the third (recorded
    # are the POSTs it took).
    assert [len(form["hub.url"]) for form in hub.requests] == [2, 5, 5]
    assert queue.pending() == []


def test_an_announcement_the_hub_refuses_is_dropped_and_one_it_never_answers_stays_queued(tmp_path: Path) -> None:
    queue = HubQueue(tmp_path)
    queue.add([f"{BASE}/rss.xml"], time.time())
    with hub_server(Hub(status=400)) as hub:
        report = send_due(queue, HubSettings(hub.url, timeout=5), time.time)
    assert (report.sent, report.refused, report.left) == (0, 1, 0)
    queue.add([f"{BASE}/rss.xml"], time.time())
    port = free_port()  # nothing listens there
    report = send_due(queue, HubSettings(f"http://127.0.0.1:{port}/", timeout=2, first_backoff=60), time.time)
    assert (report.sent, report.retried, report.left) == (0, 1, 1)
    [entry] = queue.pending()
    assert entry.attempts == 1 and entry.due > time.time() + 50
    assert decode((tmp_path / QUEUE).read_bytes()) == [entry]


def test_the_worker_sends_what_is_queued_at_start_and_after_a_wake(tmp_path: Path) -> None:
    queue = HubQueue(tmp_path)
    queue.add([f"{BASE}/rss.xml"], time.time())
    with hub_server(Hub(failing=1)) as hub:
        worker = HubWorker(queue, HubSettings(hub.url, timeout=5, first_backoff=0.1))
        worker.start()
        try:
            assert wait_until(lambda: hub.urls() == [f"{BASE}/rss.xml"], timeout=20)
            queue.add([f"{BASE}/atom.xml"], time.time())
            worker.wake()
            assert wait_until(lambda: hub.urls() == [f"{BASE}/atom.xml", f"{BASE}/rss.xml"], timeout=20)
            assert wait_until(lambda: queue.pending() == [], timeout=20)
        finally:
            worker.stop()
            assert worker.join(10)


# -- the commands and the daemon ---------------------------------------------------------------


def environment() -> dict[str, str]:
    env = {**os.environ, "FINEWS_SECRET_KEY": SECRET}
    env.pop("FINEWS_CONFIG", None)
    return env


def write_config(root: Path, hub: str, web_port: int = 0, **feeds: object) -> Path:
    extra = "".join(f"{key} = {value!r}\n" if not isinstance(value, str) else f'{key} = "{value}"\n'
                    for key, value in feeds.items())
    path = root / "finews.toml"
    path.write_text(f"""
[site]
source = "{root / 'site'}"
cache_dir = "{root / 'cache'}"
url = "https://news.example.org"
[feeds]
output = "{root / 'feeds'}"
websub_hub = "{hub}"
websub_retry_backoff = 0.05
websub_timeout = 3.0
{extra}
[database]
url = "sqlite:///{root / 'db.sqlite3'}"
[web]
host = "127.0.0.1"
port = {web_port}
public_url = "http://127.0.0.1:{web_port}"
[scheduler]
rebuild_every_minutes = 10
watch = true
""", encoding="utf-8")
    return path


def make_site(root: Path) -> Path:
    site = root / "site"
    site.mkdir()
    (site / "_config.yml").write_text("title: 测试财经\nurl: https://news.example.org\ntimezone: Asia/Shanghai\n",
                                      encoding="utf-8")
    write_post(site, "cailianshe", "n1", "央行开展逆回购操作", "2022-04-20 09:30:00")
    write_post(site, "yicai", "n2", "人民币汇率小幅走高", "2022-04-20 15:05:00")
    return site


def write_post(site: Path, category: str, slug: str, title: str, when: str) -> None:
    path = site / category / "_posts" / f"{when[:10]}-{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'---\ntitle: "{title}"\ndate: {when} +0800\ncategories: {category}\n---\n<p>{title}。</p>\n',
                    encoding="utf-8")


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXECUTABLE), "--config", str(config), *args], capture_output=True, text=True,
                          env=environment(), cwd=config.parent, timeout=120)


SITE_URLS = sorted(f"{BASE}/{folder}{name}" for folder in ("", "categories/cailianshe/", "categories/yicai/")
                   for name in ("rss.xml", "atom.xml", "feed.json"))


@pytest.mark.slow
def test_build_announces_what_it_changed_and_only_that(tmp_path: Path) -> None:
    make_site(tmp_path)
    with hub_server(Hub(failing=1)) as hub:
        config = write_config(tmp_path, hub.url, websub_batch=20)
        first = run(config, "build")
        assert first.returncode == 0, first.stderr
        assert hub.urls() == SITE_URLS
        assert len(hub.requests) == 1  # one batch, after one 503
        assert f"websub: 9 feed URLs announced to {hub.url}" in first.stdout
        assert decode((tmp_path / "feeds" / QUEUE).read_bytes()) == []
        again = run(config, "build")
        assert (again.returncode, "websub" in again.stdout, len(hub.requests)) == (0, False, 1)
        write_post(tmp_path / "site", "yicai", "n3", "一财快讯", "2022-04-20 20:00:00")
        assert run(config, "build").returncode == 0
        assert hub.requests[-1]["hub.url"] == sorted(f"{BASE}/{folder}{name}" for folder in ("", "categories/yicai/")
                                                     for name in ("rss.xml", "atom.xml", "feed.json"))


@pytest.mark.slow
def test_build_leaves_announcements_queued_when_the_hub_is_down_and_the_websub_command_sends_them(
        tmp_path: Path) -> None:
    make_site(tmp_path)
    port = free_port()
    config = write_config(tmp_path, f"http://127.0.0.1:{port}/hub", websub_build_wait=0.5, websub_batch=4)
    built = run(config, "build")
    assert built.returncode == 0  # the build itself succeeded
    assert f"warning: 9 WebSub announcements left queued in {tmp_path / 'feeds' / QUEUE}" in built.stderr
    assert sorted(p.url for p in decode((tmp_path / "feeds" / QUEUE).read_bytes()) or []) == SITE_URLS
    down = run(config, "websub", "--wait", "0")
    assert down.returncode == 1 and "left queued" in down.stderr
    with hub_server(Hub(failing=1), port) as hub:
        sent = run(config, "websub", "--wait", "20")
        assert (sent.returncode, sent.stdout) == (0, f"websub: 9 feed URLs announced to {hub.url}\n")
        assert hub.urls() == SITE_URLS
        # Batches of at most 4: which URLs share one depends on when each failed try made it due.
        assert max(len(form["hub.url"]) for form in hub.requests) == 4
    assert decode((tmp_path / "feeds" / QUEUE).read_bytes()) == []
    unset = subprocess.run([str(EXECUTABLE), "websub", "--out", str(tmp_path / "feeds")], capture_output=True,
                           text=True, env=environment(), cwd=tmp_path)
    assert (unset.returncode, unset.stderr.splitlines()[0]) == (
        2, "error: feeds.websub_hub is not set: there is no hub to announce to")


@pytest.mark.slow
def test_announcements_pending_when_the_daemon_stops_are_sent_after_its_restart(tmp_path: Path) -> None:
    make_site(tmp_path)
    hub_port, web_port = free_port(), free_port()
    config = write_config(tmp_path, f"http://127.0.0.1:{hub_port}/hub", web_port, websub_batch=3)
    env = {**environment(), "FINEWS_WEB_PORT": str(web_port)}

    def start(log: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log).open("w") as err:
            return subprocess.Popen([str(EXECUTABLE), "--config", str(config), "daemon"], cwd=tmp_path, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err)

    def built() -> bool:
        try:
            return bool(httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=2).json().get("last_build"))
        except (httpx.HTTPError, ValueError):
            return False

    queue = HubQueue(tmp_path / "feeds")
    first = start("down.log")
    try:
        # The hub is down: the start-up build's announcements are tried and stay queued.
        assert wait_until(built, timeout=60), (tmp_path / "down.log").read_text()
        assert wait_until(lambda: any(p.attempts for p in queue.pending()), timeout=30)
        write_post(tmp_path / "site", "yicai", "n3", "一财快讯", "2022-04-20 20:00:00")  # a rebuild, more to say
        assert wait_until(lambda: len([p for p in queue.pending() if p.seq == 2]) == 6, timeout=30)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert sorted(p.url for p in queue.pending()) == SITE_URLS
    with hub_server(Hub(failing=1), hub_port) as hub:
        second = start("up.log")
        try:
            assert wait_until(lambda: hub.urls() == SITE_URLS, timeout=60), (tmp_path / "up.log").read_text()
            assert wait_until(lambda: queue.pending() == [], timeout=30)
            assert all(len(form["hub.url"]) <= 3 for form in hub.requests)
            # The daemon's own HTTP, as a reader and a browser see it.
            feed = f"http://127.0.0.1:{web_port}/feeds/categories/yicai/atom.xml"
            first_get = feedparser.parse(feed)
            assert (first_get.status, [e.title for e in first_get.entries]) == (200, ["一财快讯", "人民币汇率小幅走高"])
            assert feedparser.parse(feed, etag=first_get.etag).status == 304
            assert feedparser.parse(feed, modified=first_get.modified).status == 304
            page = httpx.get(feed, headers={"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"})
            assert (page.headers["content-type"], page.headers["vary"]) == ("text/html; charset=utf-8",
                                                                            "Accept, Accept-Encoding")
            assert "一财快讯" in page.text
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            if second.poll() is None:
                second.kill()
