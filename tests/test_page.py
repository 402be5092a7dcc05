"""The browser view of a feed (issue 17, item 3): the page the build writes next to each feed's
files, and the daemon answering a feed URL with it when a browser asks (Accept with q-values),
the feed itself to readers; seen by headless Chromium at 375 and 1280 px when it is installed
(FINEWS_UPDATE_SCREENSHOTS=1 also writes docs/feed-page-*.png)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import feedparser
import httpx
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from smtp_fakes import free_port, make_collection, make_config, make_post, make_site, wait_until

from finews_feeds.config import load_config
from finews_feeds.feeds.build import build_feeds, run_build
from finews_feeds.feeds.page import page_for, page_path, render_page
from finews_feeds.feeds.plan import FeedOptions, plan_feeds
from finews_feeds.feeds.render import entry_data
from finews_feeds.mail.store import Store
from finews_feeds.models import PostSet
from finews_feeds.service.static import media_ranges, prefers_html, quality
from finews_feeds.service.web import create_app

ROOT = Path(__file__).resolve().parents[1]

#: Accept headers as sent (2025): browsers, then feed readers and fetchers.
BROWSERS = {
    "chromium": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
                "application/signed-exchange;v=b3;q=0.7",
    "firefox": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "safari": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}
READERS = {
    "feedparser": feedparser.http.ACCEPT_HEADER,
    "netnewswire": "application/rss+xml, application/atom+xml, application/feed+json, application/xml, text/xml",
    "curl": "*/*",
    "none": "",
    "tie": "text/html, application/rss+xml",
    "html refused": "text/html;q=0, */*",
}


def options() -> FeedOptions:
    site = make_site()
    config = make_config(1)
    return FeedOptions.from_config(site, config.feeds)


def test_the_page_shows_the_feed_its_entries_and_how_to_subscribe() -> None:
    collection = make_collection()
    opts = options()
    feeds = plan_feeds(collection.posts, collection.site, opts)
    spec = next(s for s in feeds.specs if s.key == "category:cailianshe")
    entries = [entry_data(p, opts, collection.content) for p in feeds.entries[spec.key]]
    files = render_page(spec, opts, entries)
    assert list(files) == ["categories/cailianshe/index.html"]
    html = files["categories/cailianshe/index.html"].decode()
    base = "https://news.example.org/feeds/categories/cailianshe"
    assert re.findall(r'<link rel="alternate" type="([^"]+)" title="[^"]+" href="([^"]+)">', html) == [
        ("application/rss+xml", f"{base}/rss.xml"), ("application/atom+xml", f"{base}/atom.xml"),
        ("application/feed+json", f"{base}/feed.json")]
    assert f'<input id="feed-url" type="text" readonly value="{base}/rss.xml"' in html
    assert '<button id="copy" type="button" hidden>复制</button>' in html  # shown by the script only
    assert re.findall(r'<a href="([^"]+)" type="[^"]+">([^<]+)</a>', html) == [
        (f"{base}/rss.xml", "RSS"), (f"{base}/atom.xml", "Atom"), (f"{base}/feed.json", "JSON Feed"),
        ("https://news.example.org/feeds/feeds.opml", "OPML（全部订阅源）")]
    assert re.findall(r'<h2><a href="([^"]+)">([^<]+)</a></h2>', html) == [
        ("https://news.example.org/cailianshe/2022/04/20/n2.html", "沪指收涨0.5%"),
        ("https://news.example.org/cailianshe/2022/04/20/n1.html", "央行开展逆回购操作")]
    assert "<time>2022-04-20 15:05</time></div>" in html  # the feed's own category is not repeated
    assert "<h1>finews 财经新闻 · cailianshe</h1>" in html
    assert "这是一个订阅源。" in html
    assert render_page(spec, opts, entries) == files  # the same bytes from the same input


def test_the_page_escapes_what_it_shows() -> None:
    site = make_site()
    hostile = make_post("x", '<script>alert(1)</script>"', make_collection().posts[0].date, '<b>"cat"</b>')
    opts = options()
    feeds = plan_feeds([hostile], site, opts)
    spec = next(s for s in feeds.specs if s.kind == "category")
    html = render_page(spec, opts, [entry_data(hostile, opts, None)])[page_path(spec)].decode()
    assert "<script>alert" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in html
    assert html.count("<script>") == 1  # the copy button's


def test_pages_are_written_next_to_each_feed_and_only_when_they_change(tmp_path: Path) -> None:
    config = make_config(1, feeds={"output": str(tmp_path / "feeds")})
    collection = make_collection()
    report = build_feeds(collection, config)
    out = tmp_path / "feeds"
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
    assert pages == ["_feeds_head.html", "_feeds_head_tags.html", "categories/cailianshe/index.html",
                     "categories/yicai/index.html", "feed.html", "index.html", "tags/a股/index.html"]
    assert {"feed.html", "categories/yicai/index.html"} <= set(report.written)
    assert "央行开展逆回购操作" in (out / "feed.html").read_text(encoding="utf-8")
    before = {p: (out / p).stat().st_mtime_ns for p in pages}
    again = build_feeds(collection, config, full=True)
    assert again.files_written == 0
    assert {p: (out / p).stat().st_mtime_ns for p in pages} == before
    # A new yicai post: its feeds' pages change, the other category's page does not.
    later = make_post("n4", "港股收盘", max(p.date for p in collection.posts), "yicai")
    third = build_feeds(PostSet(collection.site, [*collection.posts, later], collection.content), config)
    assert {"feed.html", "categories/yicai/index.html"} <= set(third.written)
    assert "categories/cailianshe/index.html" not in third.written
    assert [page_for(p) for p in ("rss.xml", "categories/a/atom.xml", "tags/b/feed.json", "categories/a/index.html",
                                  "archive/1/rss.xml", "categories/a/archive/2/atom.xml", "feeds.opml")] == [
        "feed.html", "categories/a/index.html", "tags/b/index.html", None, None, None, None]


@contextmanager
def serving(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    output = tmp_path / "feeds"
    config = make_config(1, feeds={"output": str(output)})
    build_feeds(make_collection(), config)
    with Store.open(f"sqlite:///{tmp_path}/db.sqlite3") as store:
        server = uvicorn.Server(uvicorn.Config(create_app(config, store=store), host="127.0.0.1", port=free_port(),
                                               log_config=None, lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        assert wait_until(lambda: server.started, timeout=10)
        try:
            yield f"http://127.0.0.1:{server.config.port}", output
        finally:
            server.should_exit = True
            thread.join(10)


FEEDS = {"/feeds/rss.xml": ("feed.html", "rss.xml", "application/rss+xml; charset=utf-8"),
         "/feeds/categories/yicai/atom.xml": ("categories/yicai/index.html", "categories/yicai/atom.xml",
                                              "application/atom+xml; charset=utf-8"),
         "/feeds/tags/a%E8%82%A1/feed.json": ("tags/a股/index.html", "tags/a股/feed.json",
                                              "application/feed+json; charset=utf-8")}


def test_a_browser_gets_the_page_and_a_reader_the_feed_at_the_same_url(tmp_path: Path) -> None:
    with serving(tmp_path) as (base, output), httpx.Client(base_url=base, timeout=10) as client:
        for url, (page, feed, media) in FEEDS.items():
            for name, accept in BROWSERS.items():
                answer = client.get(url, headers={"Accept": accept})
                assert (url, name, answer.headers["content-type"]) == (url, name, "text/html; charset=utf-8")
                assert answer.content == (output / page).read_bytes()
                assert answer.headers["vary"] == "Accept, Accept-Encoding"
            for name, accept in READERS.items():
                answer = client.get(url, headers={"Accept": accept} if accept else {})
                assert (url, name, answer.headers["content-type"]) == (url, name, media)
                assert answer.content == (output / feed).read_bytes()
                assert answer.headers["vary"] == "Accept, Accept-Encoding"
            # Each has its own validator, and a browser revalidates its page.
            page_tag = client.get(url, headers={"Accept": BROWSERS["firefox"]}).headers["etag"]
            assert page_tag != client.get(url).headers["etag"]
            revalidated = client.get(url, headers={"Accept": BROWSERS["firefox"], "If-None-Match": page_tag})
            assert (revalidated.status_code, revalidated.headers["vary"]) == (304, "Accept, Accept-Encoding")
        assert feedparser.parse(f"{base}/feeds/atom.xml").version == "atom10"
        # Archive documents, listings and pages themselves are not negotiated.
        for url in ("/feeds/feeds.opml", "/feeds/", "/feeds/categories/yicai/"):
            answer = client.get(url, headers={"Accept": BROWSERS["chromium"]})
            assert (url, answer.headers["vary"]) == (url, "Accept-Encoding")


def test_without_a_page_a_browser_gets_the_feed_with_its_stylesheet(tmp_path: Path) -> None:
    with serving(tmp_path) as (base, output), httpx.Client(base_url=base, timeout=10) as client:
        (output / "categories" / "yicai" / "index.html").unlink()  # as left by a build before issue 17
        answer = client.get("/feeds/categories/yicai/rss.xml", headers={"Accept": BROWSERS["chromium"]})
    assert answer.headers["content-type"] == "application/rss+xml; charset=utf-8"
    assert b'<?xml-stylesheet type="text/xsl" href="../../feed.xsl"?>' in answer.content


def test_accept_q_values_decide_as_rfc_9110_says() -> None:
    assert media_ranges("text/html;level=1;q=0.5, */*; Q=0.1,foo") == [("text/html", 0.5), ("*/*", 0.1)]
    ranges = media_ranges("text/*;q=0.3, text/html;q=0.7, */*;q=0.5")
    assert [quality(ranges, m) for m in ("text/html", "text/xml", "image/png")] == [0.7, 0.3, 0.5]
    assert quality(media_ranges("text/html;q=x"), "text/html") == 0.0
    assert [prefers_html(a) for a in BROWSERS.values()] == [True] * len(BROWSERS)
    assert [prefers_html(a) for a in READERS.values()] == [False] * len(READERS)
    assert prefers_html("application/rss+xml;q=0.5, text/html;q=0.6")
    assert not prefers_html("text/html;q=0.6, application/rss+xml;q=0.6")


TYPES = st.sampled_from(["text/html", "text/*", "*/*", "application/xml", "application/rss+xml", "text/xml",
                         "application/feed+json", "image/png", "application/xhtml+xml"])
RANGES = st.lists(st.tuples(TYPES, st.sampled_from([None, "0", "0.1", "0.5", "0.9", "1", "1.0", "bad"])), max_size=6)


def header_of(ranges: list[tuple[str, str | None]]) -> str:
    return ", ".join(name if q is None else f"{name};q={q}" for name, q in ranges)


@given(RANGES)
def test_the_order_of_the_ranges_does_not_matter(ranges: list[tuple[str, str | None]]) -> None:
    assert prefers_html(header_of(ranges)) == prefers_html(header_of(list(reversed(ranges))))


@given(RANGES)
def test_html_is_chosen_only_when_some_range_accepts_it_and_adding_a_feed_type_first_never_makes_it_chosen(
        ranges: list[tuple[str, str | None]]) -> None:
    header = header_of(ranges)
    if prefers_html(header):
        assert any(name in ("text/html", "text/*", "*/*") for name, _ in ranges)
    assert not prefers_html(header_of([("application/rss+xml", None), *ranges]))


# -- in a real browser --------------------------------------------------------------------------

chromium_only = pytest.mark.skipif(
    not any(os.path.exists(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")),
    reason="Chromium is not installed")


@chromium_only
@pytest.mark.slow
def test_chromium_following_a_feed_link_sees_the_page_at_375_and_1280_px(tmp_path: Path) -> None:
    from test_digest_render import PROBE, Chromium

    browser = Chromium()
    try:
        with serving(tmp_path) as (base, _output):
            for width, mobile in ((375, True), (1280, False)):
                session = browser.open(f"{base}/feeds/categories/cailianshe/rss.xml", width, 900, mobile=mobile)
                shown = browser.evaluate(session, "[document.contentType, document.querySelector('h1').textContent,"
                                                  " document.getElementById('copy').hidden,"
                                                  " document.getElementById('feed-url').value,"
                                                  " document.querySelectorAll('ol li').length]")
                assert shown == ["text/html", "finews 财经新闻 · cailianshe", False,
                                 "https://news.example.org/feeds/categories/cailianshe/rss.xml", 2]
                scroll, right, inner = browser.evaluate(session, PROBE)
                assert (scroll, inner) == (width, width) and right <= width
                shot = tmp_path / f"feed-page-{width}.png"
                browser.screenshot(session, shot)
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.close()


@chromium_only
@pytest.mark.skipif(os.environ.get("FINEWS_UPDATE_SCREENSHOTS") != "1", reason="set FINEWS_UPDATE_SCREENSHOTS=1")
def test_write_feed_page_screenshots(tmp_path: Path) -> None:
    """docs/feed-page-mobile.png and docs/feed-page-desktop.png, of the demo site's 财联社 feed."""
    from test_digest_render import Chromium

    config = load_config(ROOT / "config" / "finews.toml", {"FINEWS_SECRET_KEY": "x" * 32},
                         {"site": {"source": str(ROOT / "demo-site")}, "feeds": {"output": str(tmp_path / "feeds")}})
    run_build(config, parallel=False)
    browser = Chromium()
    try:
        with Store.open(f"sqlite:///{tmp_path}/db.sqlite3") as store:
            server = uvicorn.Server(uvicorn.Config(create_app(config, store=store), host="127.0.0.1",
                                                   port=free_port(), log_config=None, lifespan="off"))
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            assert wait_until(lambda: server.started, timeout=10)
            try:
                for width, height, mobile, name in ((375, 1100, True, "mobile"), (1280, 800, False, "desktop")):
                    url = f"http://127.0.0.1:{server.config.port}/feeds/categories/cailianshe/rss.xml"
                    session = browser.open(url, width, height, mobile=mobile)
                    browser.screenshot(session, ROOT / "docs" / f"feed-page-{name}.png")
            finally:
                server.should_exit = True
                thread.join(10)
    finally:
        browser.close()


def test_no_pages_with_feeds_pages_false_and_those_written_before_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "feeds"
    build_feeds(make_collection(), make_config(1, feeds={"output": str(out)}))
    assert (out / "categories" / "yicai" / "index.html").is_file()
    report = build_feeds(make_collection(), make_config(1, feeds={"output": str(out), "pages": False}))
    assert report.files_removed == 4  # the site's feed.html and three folders' index.html
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html")) == [
        "_feeds_head.html", "_feeds_head_tags.html", "index.html"]
