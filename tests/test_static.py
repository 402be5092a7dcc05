"""The feeds as HTTP clients and caches see them (issue 17, item 5), over real HTTP (uvicorn on a
free loopback port): one Vary header, Cache-Control for current and archive documents,
conditional GET with feedparser (ETag and date), 410 for a feed that is gone, and feed discovery
on the web app's pages."""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import feedparser
import httpx
import uvicorn
from smtp_fakes import free_port, make_collection, make_config, make_post, wait_until

from finews_feeds.config import Config
from finews_feeds.feeds.build import build_feeds
from finews_feeds.feeds.gone import GONE, decode, feed_folder, gone_after
from finews_feeds.mail.store import Store
from finews_feeds.models import PostSet
from finews_feeds.service.static import ARCHIVE_CACHE, CURRENT_CACHE, GONE_CACHE, is_archive, merged_vary
from finews_feeds.service.web import create_app


@dataclass
class Served:
    base: str
    config: Config
    output: Path


@contextmanager
def serving(tmp_path: Path, collection: PostSet | None = None) -> Iterator[Served]:
    output = tmp_path / "feeds"
    config = make_config(1, feeds={"output": str(output)})
    build_feeds(collection or make_collection(), config)
    with Store.open(f"sqlite:///{tmp_path}/db.sqlite3") as store:
        app = create_app(config, store=store)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None,
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        assert wait_until(lambda: server.started, timeout=10)
        try:
            yield Served(f"http://127.0.0.1:{server.config.port}", config, output)
        finally:
            server.should_exit = True
            thread.join(10)


def raw_headers(base: str, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]]]:
    """Status and header lines exactly as sent (httpx would join repeated fields)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, [(k.lower(), v) for k, v in response.getheaders()]
    finally:
        conn.close()


def test_every_answer_has_one_vary_header_naming_each_field_once(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        # A current feed is also its page for browsers (test_page.py): it varies on Accept too.
        expected = {"/feeds/rss.xml": "Accept, Accept-Encoding", "/feeds/categories/yicai/atom.xml": "Accept, Accept-Encoding",
                    "/feeds/feeds.opml": "Accept-Encoding", "/feeds/": "Accept-Encoding", "/": "Accept-Encoding",
                    "/feeds/nothing.xml": "Accept-Encoding"}
        for path, vary_expected in expected.items():
            for encoding in ("gzip", "identity", "gzip;q=0"):
                _status, headers = raw_headers(served.base, path, {"Accept-Encoding": encoding})
                vary = [value for key, value in headers if key == "vary"]
                assert (path, encoding, vary) == (path, encoding, [vary_expected])
    assert merged_vary([b"Accept-Encoding", b"accept, accept-encoding"]) == b"Accept-Encoding, accept"
    assert merged_vary([b"Accept", b"*"]) == b"*"


def test_current_feeds_are_cached_minutes_and_archive_documents_a_year(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        archive = served.output / "categories" / "cailianshe" / "archive" / "1"
        archive.mkdir(parents=True)
        (archive / "atom.xml").write_bytes((served.output / "categories" / "cailianshe" / "atom.xml").read_bytes())
        (served.output / "archive" / "3").mkdir(parents=True)
        (served.output / "archive" / "3" / "rss.xml").write_bytes((served.output / "rss.xml").read_bytes())
        with httpx.Client(base_url=served.base, timeout=10) as client:
            expected = {
                "/feeds/rss.xml": CURRENT_CACHE,
                "/feeds/categories/cailianshe/atom.xml": CURRENT_CACHE,
                "/feeds/feeds.opml": CURRENT_CACHE,
                "/feeds/": CURRENT_CACHE,
                "/feeds/categories/cailianshe/archive/1/atom.xml": ARCHIVE_CACHE,
                "/feeds/archive/3/rss.xml": ARCHIVE_CACHE,
            }
            got = {path: client.get(path).headers["cache-control"] for path in expected}
            assert got == expected
            revalidated = client.get("/feeds/archive/3/rss.xml",
                                     headers={"If-None-Match": client.get("/feeds/archive/3/rss.xml").headers["etag"]})
            assert (revalidated.status_code, revalidated.headers["cache-control"]) == (304, ARCHIVE_CACHE)
    assert CURRENT_CACHE == "public, max-age=300, must-revalidate"
    assert ARCHIVE_CACHE == "public, max-age=604800"
    assert [is_archive(p) for p in ("archive/1/rss.xml", "tags/a/archive/2/atom.xml", "categories/archive/rss.xml",
                                    "archive.xml", "tags/archive/archive/1/feed.json", "archive/rss.xml")] == [
        True, True, False, False, True, False]


def test_feedparser_conditional_get_by_etag_or_date_gets_304_until_a_rebuild_changes_the_feed(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        url = f"{served.base}/feeds/atom.xml"
        first = feedparser.parse(url)
        assert (first.status, len(first.entries)) == (200, 3)
        assert first.etag.startswith('W/"') and first.modified
        by_tag = feedparser.parse(url, etag=first.etag)
        by_date = feedparser.parse(url, modified=first.modified)  # many readers send only the date
        assert (by_tag.status, by_tag.entries, by_date.status, by_date.entries) == (304, [], 304, [])
        # A post added: the rebuild rewrites the file (a later mtime), both validators miss.
        base = make_collection()
        later = make_post("n4", "港股收盘", max(p.date for p in base.posts) + timedelta(hours=1), "yicai")
        path = served.output / "atom.xml"
        before = path.stat().st_mtime
        build_feeds(PostSet(base.site, [*base.posts, later], base.content), served.config)
        if path.stat().st_mtime - before < 1:  # Last-Modified has whole seconds
            os.utime(path, (before + 1, before + 1))
        again = feedparser.parse(url, etag=first.etag, modified=first.modified)
        assert (again.status, again.entries[0].title, len(again.entries)) == (200, "港股收盘", 4)
        assert again.etag != first.etag
        # An If-None-Match that matches wins over a date that does not (RFC 9110 13.2.2), and the
        # other way round.
        assert feedparser.parse(url, etag=again.etag, modified="Thu, 01 Jan 1970 00:00:00 GMT").status == 304
        assert feedparser.parse(url, etag=first.etag, modified=again.modified).status == 200


def test_a_category_feed_without_posts_answers_410_until_it_has_posts_again(tmp_path: Path) -> None:
    base = make_collection()
    with serving(tmp_path, base) as served, httpx.Client(base_url=served.base, timeout=10) as client:
        assert client.get("/feeds/categories/yicai/rss.xml").status_code == 200
        without = PostSet(base.site, [p for p in base.posts if p.categories != ("yicai",)], base.content)
        build_feeds(without, served.config)
        assert decode((served.output / GONE).read_bytes()) == {"categories/yicai"}
        for path in ("/feeds/categories/yicai/rss.xml", "/feeds/categories/yicai/atom.xml",
                     "/feeds/categories/yicai/feed.json", "/feeds/categories/yicai/",
                     "/feeds/categories/yicai/archive/1/atom.xml"):
            gone = client.get(path)
            assert (path, gone.status_code, gone.headers["cache-control"]) == (path, 410, GONE_CACHE)
            assert "这个订阅源已停止" in gone.text
        parsed = feedparser.parse(f"{served.base}/feeds/categories/yicai/atom.xml")
        assert parsed.status == 410
        # Never there, or not a feed folder: 404 as before.
        assert [client.get(p).status_code for p in ("/feeds/categories/never/rss.xml", "/feeds/.finews-gone.json",
                                                     "/feeds/nothing.xml")] == [404, 404, 404]
        assert client.get("/feeds/categories/cailianshe/rss.xml").status_code == 200
        # n1 keeps its tag: the tag's feed stays.
        assert client.get("/feeds/tags/a股/rss.xml").status_code == 200
        build_feeds(base, served.config)  # the category has a post again
        assert client.get("/feeds/categories/yicai/rss.xml").status_code == 200
        assert decode((served.output / GONE).read_bytes()) == frozenset()


def test_gone_folders_are_those_emptied_less_those_alive() -> None:
    assert [feed_folder(p) for p in ("categories/a/rss.xml", "tags/b/archive/1/atom.xml", "rss.xml",
                                     "digests/2022-04-20.html", "categories/x", "archive/1/rss.xml")] == [
        "categories/a", "tags/b", None, None, None, None]
    assert gone_after(["tags/old"], ["categories/a/rss.xml", "categories/a/atom.xml", "rss.xml"],
                      ["rss.xml", "tags/b/rss.xml"]) == ["categories/a", "tags/old"]
    assert gone_after(["tags/b"], [], ["tags/b/rss.xml"]) == []
    # A format dropped from feeds.formats removes files, not the feed.
    assert gone_after([], ["categories/a/feed.json"], ["categories/a/rss.xml"]) == []
    assert decode(b"not json") == decode(b'{"version": 9, "folders": ["tags/a"]}') == frozenset()
    assert decode(b'{"version": 1, "folders": ["tags/a", "../etc", "rss.xml"]}') == {"tags/a"}


def test_the_web_app_pages_carry_feed_discovery_links_for_the_site_and_its_categories(tmp_path: Path) -> None:
    with serving(tmp_path) as served, httpx.Client(base_url=served.base, timeout=10) as client:
        home = client.get("/").text
    head = home.split("</head>", 1)[0]
    links = [line for line in head.splitlines() if line.startswith('<link rel="alternate"')]
    assert links == (served.output / "_feeds_head.html").read_text(encoding="utf-8").splitlines()[:-1]
    hrefs = [line.split('href="', 1)[1].split('"', 1)[0] for line in links]
    assert hrefs == [f"https://news.example.org/feeds/{folder}{name}"
                     for folder in ("", "categories/cailianshe/", "categories/yicai/")
                     for name in ("rss.xml", "atom.xml", "feed.json")]
    assert '<link rel="outline" type="text/x-opml"' in head
    types = [line.split('type="', 1)[1].split('"', 1)[0] for line in links]
    assert types == ["application/rss+xml", "application/atom+xml", "application/feed+json"] * 3
