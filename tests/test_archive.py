"""The digest archive as files: the index pages, the Atom feed of the digests, the records beside
the web copies, and what `finews-feeds digest` writes (the static build)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import feedparser
import lxml.html
import pytest
from feed_checks import atom_problems
from test_digest import DAY, ROOT, SHANGHAI, config_for, make_post

from finews_feeds.config import Config
from finews_feeds.look import STYLESHEET, STYLESHEET_NAME
from finews_feeds.mail.archive import (
    ArchiveEntry,
    ArchiveOptions,
    Headline,
    archive_files,
    entry_from_html,
    publish,
    read_entries,
)
from finews_feeds.mail.digest import write_preview
from finews_feeds.models import Post, PostSet
from finews_feeds.site.jekyll import resolve_site

OPTIONS = ArchiveOptions(site_title="finews 财经新闻", site_url="https://news.example.org",
                         feeds_url="https://news.example.org/feeds", subscribe_url="https://subscribe.example.org/",
                         language="zh-CN", per_page=2, feed_limit=3)


def entry(day: date, count: int = 2) -> ArchiveEntry:
    headlines = tuple(Headline(f"{day.day}日标题{n}", f"https://news.example.org/{day}/{n}.html",
                               "财联社新闻" if n < 2 else "第一财经") for n in range(count))
    return ArchiveEntry(day, f"finews 每日精选 · {day.month}月{day.day}日 · {count}篇", count, headlines,
                        datetime(day.year, day.month, day.day, 20, 0, tzinfo=SHANGHAI))


def rows(document: bytes) -> list[tuple[str, str, str, list[str]]]:
    """(href, subject, date line, headlines) of each digest an index page lists."""
    root = lxml.html.document_fromstring(document)
    return [(item.find("a").get("href"), item.find("a").text_content(),
             " ".join(item.find_class("m")[0].text_content().split()),
             [li.text_content() for li in item.iter("li") if li is not item])
            for item in root.find_class("list")[0].iterchildren("li")]


def pager(document: bytes) -> list[tuple[str, str]]:
    root = lxml.html.document_fromstring(document)
    return [(a.get("href"), a.text_content()) for nav in root.find_class("pager") for a in nav.iter("a")]


DAYS = [date(2022, 4, 20) - timedelta(days=n) for n in range(5)]  # newest first


def test_five_digests_two_a_page_make_three_pages_newest_first_with_relative_links() -> None:
    files = archive_files([entry(d, count=1 + n % 3) for n, d in enumerate(DAYS)], OPTIONS)
    assert sorted(files) == ["atom.xml", "index.html", "page/2/index.html", "page/3/index.html", STYLESHEET_NAME]
    assert rows(files["index.html"]) == [
        ("2022-04-20.html", "finews 每日精选 · 4月20日 · 1篇", "2022年4月20日 星期三 · 共 1 篇", ["20日标题0"]),
        ("2022-04-19.html", "finews 每日精选 · 4月19日 · 2篇", "2022年4月19日 星期二 · 共 2 篇", ["19日标题0", "19日标题1"]),
    ]
    assert rows(files["page/2/index.html"]) == [
        ("../../2022-04-18.html", "finews 每日精选 · 4月18日 · 3篇", "2022年4月18日 星期一 · 共 3 篇",
         ["18日标题0", "18日标题1", "18日标题2"]),
        ("../../2022-04-17.html", "finews 每日精选 · 4月17日 · 1篇", "2022年4月17日 星期日 · 共 1 篇", ["17日标题0"]),
    ]
    assert [r[0] for r in rows(files["page/3/index.html"])] == ["../../2022-04-16.html"]
    assert pager(files["index.html"]) == [("page/2/", "较早 →")]
    assert pager(files["page/2/index.html"]) == [("../../", "← 较新"), ("../3/", "较早 →")]
    assert pager(files["page/3/index.html"]) == [("../2/", "← 较新")]
    page2 = lxml.html.document_fromstring(files["page/2/index.html"])
    assert [link.get("href") for link in page2.iter("link")] == ["../../atom.xml", f"../../{STYLESHEET_NAME}"]
    assert page2.findtext(".//h1") == "往期精选 · 第 2 页"
    assert page2.find_class("brand")[0].get("href") == "https://subscribe.example.org/"
    assert files[STYLESHEET_NAME] == STYLESHEET


def test_the_feed_of_the_digests_is_valid_atom_with_the_newest_ones_and_their_headlines() -> None:
    data = archive_files([entry(d) for d in DAYS], OPTIONS)["atom.xml"]
    assert atom_problems(data) == []
    parsed = feedparser.parse(data)
    assert parsed.bozo == 0
    assert parsed.feed.title == "finews 财经新闻 · 每日精选"
    assert [link.href for link in parsed.feed.links] == ["https://news.example.org/feeds/digests/atom.xml",
                                                         "https://news.example.org/feeds/digests/"]
    assert [e.id for e in parsed.entries] == [f"https://news.example.org/feeds/digests/{d}.html" for d in DAYS[:3]]
    assert [e.link for e in parsed.entries] == [e.id for e in parsed.entries]
    assert parsed.entries[0].title == "finews 每日精选 · 4月20日 · 2篇"
    assert parsed.entries[0].updated == "2022-04-20T20:00:00+08:00"
    assert parsed.feed.updated == "2022-04-20T20:00:00+08:00"
    assert parsed.entries[0].content[0].value == (
        "<p>2022年4月20日 星期三 · 共 2 篇</p><h3>财联社新闻</h3><ul>"
        '<li><a href="https://news.example.org/2022-04-20/0.html">20日标题0</a></li>'
        '<li><a href="https://news.example.org/2022-04-20/1.html">20日标题1</a></li></ul>'
        '<p><a href="https://news.example.org/feeds/digests/2022-04-20.html">阅读这期每日精选</a></p>')


def test_an_empty_archive_is_one_page_that_says_so_and_a_valid_feed_without_entries() -> None:
    files = archive_files([], OPTIONS)
    assert sorted(files) == ["atom.xml", "index.html", STYLESHEET_NAME]
    assert "还没有发出过每日精选。" in files["index.html"].decode()
    assert atom_problems(files["atom.xml"]) == []
    assert feedparser.parse(files["atom.xml"]).entries == []


def test_a_record_reads_back_as_written_and_a_damaged_or_foreign_one_as_missing() -> None:
    written = entry(DAY, count=3)
    assert ArchiveEntry.from_json(written.to_json(), DAY) == written
    assert ArchiveEntry.from_json(written.to_json(), DAY - timedelta(days=1)) is None
    for bad in (b"", b"{", b"[]", b'{"version": 1}', written.to_json().replace(b'"version": 1', b'"version": 9')):
        assert ArchiveEntry.from_json(bad, DAY) is None
    hostile = written.to_json().replace(b"https://news.example.org/2022-04-20/0.html", b"javascript:alert(1)")
    assert [h.title for h in ArchiveEntry.from_json(hostile, DAY).headlines] == ["20日标题1", "20日标题2"]


# -- the files, as the digest command and the daemon write them ---------------------------------


def site_posts(config: Config) -> PostSet:
    """Posts on 2022-04-18 (two), 2022-04-19 (none) and 2022-04-20 (three)."""
    posts: list[Post] = [make_post(1, hour=9), make_post(2, "jrj", hour=10, minute=30), make_post(3, hour=21),
                         make_post(4, day=date(2022, 4, 18), hour=8), make_post(5, "jrj", day=date(2022, 4, 18))]
    return PostSet(resolve_site(config), posts, content=lambda post: f"<p>{post.title}的正文。</p>")


def write_day(config: Config, day: date) -> list[str]:
    posts = site_posts(config)
    return list(write_preview(config, day, now=datetime(2022, 4, 21, tzinfo=UTC), collect=lambda _c: posts).written)


def test_each_digest_written_adds_its_record_and_the_archive_lists_every_web_copy(tmp_path: Path) -> None:
    config = config_for(ROOT / "demo-site", tmp_path)
    folder = tmp_path / "feeds" / "digests"
    assert write_day(config, date(2022, 4, 19)) == []  # no articles: no web copy, nothing in the archive
    first = write_day(config, date(2022, 4, 18))
    assert first == [str(folder / "2022-04-18.html"), str(folder / "2022-04-18.json"), str(folder / "index.html"),
                     str(folder / "atom.xml"), str(folder / STYLESHEET_NAME)]
    write_day(config, DAY)
    listed = rows((folder / "index.html").read_bytes())
    assert [(href, line) for href, _, line, _ in listed] == [("2022-04-20.html", "2022年4月20日 星期三 · 共 3 篇"),
                                                             ("2022-04-18.html", "2022年4月18日 星期一 · 共 2 篇")]
    # The headlines as the digest listed them: by category in the configured order, newest first.
    assert listed[0][3] == ["标题3", "标题1", "标题2"]
    assert [e.updated for e in read_entries(folder)] == [datetime(2022, 4, 20, 21, 0, tzinfo=SHANGHAI),
                                                         datetime(2022, 4, 18, 9, 0, tzinfo=SHANGHAI)]
    assert atom_problems((folder / "atom.xml").read_bytes()) == []
    # The same digest again changes no file of the archive.
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    assert write_day(config, DAY) == [str(folder / "2022-04-20.html")]  # said, not written again
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps


def test_pages_no_longer_made_and_stylesheets_of_other_versions_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "digests"
    folder.mkdir()
    for day in DAYS:
        (folder / f"{day}.html").write_text("<title>x</title>", encoding="utf-8")
        (folder / f"{day}.json").write_bytes(entry(day).to_json())
    (folder / "site.0123456789ab.css").write_text("old", encoding="utf-8")
    publish(folder, OPTIONS)
    assert (folder / "page" / "3" / "index.html").is_file()
    for day in DAYS[2:]:
        (folder / f"{day}.html").unlink()
    publish(folder, OPTIONS)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(".json")) == [
        ".archive.lock", "2022-04-19.html", "2022-04-20.html", "atom.xml", "index.html", STYLESHEET_NAME]


def test_a_web_copy_written_before_the_archive_is_listed_from_its_title_and_headlines(tmp_path: Path) -> None:
    config = config_for(ROOT / "demo-site", tmp_path)
    write_day(config, DAY)
    folder = tmp_path / "feeds" / "digests"
    recorded = read_entries(folder)[0]
    (folder / "2022-04-20.json").unlink()
    os.utime(folder / "2022-04-20.html", (1650456000, 1650456000))
    from_page = read_entries(folder)[0]
    assert from_page == ArchiveEntry(DAY, recorded.subject, 3, tuple(Headline(h.title, h.url) for h in recorded.headlines),
                                     datetime(2022, 4, 20, 12, 0, tzinfo=UTC))
    assert entry_from_html(DAY, b"<html><body><p>custom</p></body></html>", from_page.updated) == ArchiveEntry(
        DAY, "2022年4月20日 每日精选", 0, (), from_page.updated)


def test_a_web_copy_that_cannot_be_read_is_logged_and_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "digests"
    (folder / "2022-04-20.html").mkdir(parents=True)  # a folder by a web copy's name, and no record
    (folder / "2022-04-19.html").write_text("<title>十九日</title>", encoding="utf-8")
    assert [e.subject for e in read_entries(folder)] == ["十九日"]
    assert f"{folder / '2022-04-20.html'}: not in the digest archive" in caplog.text


def test_the_digest_command_writes_the_archive_of_the_demo_site(tmp_path: Path) -> None:
    out = tmp_path / "feeds"
    env = {**os.environ, "FINEWS_FEEDS_OUTPUT": str(out), "FINEWS_SITE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "finews_feeds", "digest", "--date", "2022-04-20"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder = out / "digests"
    assert done.stdout.splitlines()[2:] == [f"wrote {folder / name}" for name in (
        "2022-04-20.html", "2022-04-20.json", "index.html", "atom.xml", STYLESHEET_NAME)]
    listed = rows((folder / "index.html").read_bytes())
    assert [(href, line) for href, _, line, _ in listed] == [("2022-04-20.html", "2022年4月20日 星期三 · 共 31 篇")]
    assert atom_problems((folder / "atom.xml").read_bytes()) == []
    copy = (folder / "2022-04-20.html").read_text(encoding="utf-8")
    assert '<a class="fl" href="https://finews.withounder.com/feeds/digests/"' in copy
