"""RFC 5005 archived feeds (issue 17, item 1): the pages, their links, what a client walking
them recovers, what a build rewrites, and that a full page never changes."""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import atoma
import feedparser
import pytest
import w3c_check
from feed_checks import SITE_URL, TZ, atom_problems, body_of, json_feed_problems, make_post, make_site, rss_problems
from lxml import etree

from finews_feeds.config import build_config
from finews_feeds.errors import ConfigError
from finews_feeds.feeds.build import BuildReport, build_feeds, run_build
from finews_feeds.models import Post, PostSet
from finews_feeds.site.collector import collect_site

BASE = f"{SITE_URL}/feeds"
DEMO = Path(__file__).resolve().parent.parent / "demo-site"
ATOM = "{http://www.w3.org/2005/Atom}"
FH = "{http://purl.org/syndication/history/1.0}"
CATEGORIES = ("cailianshe", "stcn")


def post(n: int, **changes: object) -> Post:
    """Post ``n``, ``n`` minutes after the first; every third in stcn, the rest in cailianshe."""
    made = make_post(n, date=datetime(2022, 4, 1, 9, 0, tzinfo=TZ) + timedelta(minutes=n),
                     categories=(CATEGORIES[1] if n % 3 == 0 else CATEGORIES[0],), tags=(f"t{n % 2}",))
    return replace(made, **changes) if changes else made  # type: ignore[arg-type]


def build(out: Path, posts: Sequence[Post], full: bool = False, **feeds: object) -> BuildReport:
    config = build_config({"feeds": {"output": str(out), "limit": 5, "archive_page_size": 4, **feeds}})
    return build_feeds(PostSet(make_site(), posts, content=body_of), config, full=full)


def read(out: Path, url: str) -> bytes:
    assert url.startswith(BASE + "/"), url
    return (out / urllib.parse.unquote(url[len(BASE) + 1:])).read_bytes()


# --------------------------------------------------------------------------- walking clients

Walker = Callable[[Path, str], list[list[str]]]


def walk_feedparser(out: Path, url: str | None) -> list[list[str]]:
    """The entry ids of each document from the feed back through ``prev-archive`` (RSS or Atom)."""
    documents: list[list[str]] = []
    seen: set[str] = set()
    while url:
        assert url not in seen
        seen.add(url)
        parsed = feedparser.parse(read(out, url))
        assert not parsed.bozo, parsed.get("bozo_exception")
        documents.append([entry.id for entry in parsed.entries])
        url = next((link.href for link in parsed.feed.links if link.rel == "prev-archive"), None)
    return documents


def walk_atoma_atom(out: Path, url: str | None) -> list[list[str]]:
    documents: list[list[str]] = []
    while url:
        feed = atoma.parse_atom_bytes(read(out, url))
        documents.append([entry.id_ for entry in feed.entries])
        url = next((link.href for link in feed.links if link.rel == "prev-archive"), None)
    return documents


def walk_atoma_json(out: Path, url: str | None) -> list[list[str]]:
    """JSON Feed: ``next_url`` to older items."""
    documents: list[list[str]] = []
    seen: set[str] = set()
    while url:
        assert url not in seen
        seen.add(url)
        feed = atoma.parse_json_feed_bytes(read(out, url))
        documents.append([item.id_ for item in feed.items])
        url = feed.next_url
    return documents


def recovered(documents: list[list[str]]) -> Counter[str]:
    """What a client reconstructing the feed (RFC 5005 §4.2) keeps: the archive pages' entries,
    each page's distinct from every other's, and the feed's entries no page holds yet. Each post
    counted as many times as it is kept."""
    current, *archives = documents
    archived = [entry for page in archives for entry in page]
    kept = Counter(archived)
    kept.update(entry for entry in current if entry not in kept)
    return kept


WALKERS: dict[str, tuple[str, Walker]] = {
    "feedparser-atom": ("atom.xml", walk_feedparser),
    "feedparser-rss": ("rss.xml", walk_feedparser),
    "atoma-atom": ("atom.xml", walk_atoma_atom),
    "atoma-json": ("feed.json", walk_atoma_json),
}

POSTS = [post(n) for n in range(1, 24)]  # 23: 16 in cailianshe, 7 in stcn; 11 tagged t0, 12 t1


@pytest.mark.parametrize("client", sorted(WALKERS))
def test_a_client_walking_the_links_recovers_every_post_exactly_once(tmp_path: Path, client: str) -> None:
    build(tmp_path, POSTS)
    name, walk = WALKERS[client]
    for folder, posts in (("", POSTS), ("categories/cailianshe/", [p for p in POSTS if "cailianshe" in p.categories]),
                          ("categories/stcn/", [p for p in POSTS if "stcn" in p.categories])):
        documents = walk(tmp_path, f"{BASE}/{folder}{name}")
        assert len(documents) == 1 + len(posts) // 4
        assert recovered(documents) == Counter(p.id for p in posts)


def test_pages_are_full_oldest_first_and_the_feed_shows_what_no_page_holds(tmp_path: Path) -> None:
    build(tmp_path, POSTS)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("archive/*/atom.xml")) == [
        f"archive/{n}/atom.xml" for n in range(1, 6)]
    ids = [p.id for p in POSTS]  # oldest first
    for n in range(1, 6):
        assert walk_feedparser(tmp_path, f"{BASE}/archive/{n}/atom.xml")[0] == ids[(n - 1) * 4:n * 4][::-1]
    current = walk_feedparser(tmp_path, f"{BASE}/atom.xml")[0]
    assert current == ids[-5:][::-1]  # 23 - 20 = 3 not archived yet, within the 5 shown


def test_the_links_of_a_feed_and_of_its_pages(tmp_path: Path) -> None:
    build(tmp_path, POSTS, websub_hub="https://hub.example/")
    folder = f"{BASE}/categories/stcn"  # 7 posts: 1 full page

    def links(rel: str, tag: str, fmt: str) -> list[tuple[str | None, str | None, str | None]]:
        root = etree.fromstring((tmp_path / rel).read_bytes())
        return [(e.get("rel"), e.get("href"), e.get("type")) for e in root.iter(tag)
                if e.get("rel") not in ("alternate", None)]

    assert links("categories/stcn/atom.xml", f"{ATOM}link", "atom") == [
        ("self", f"{folder}/atom.xml", "application/atom+xml"), ("prev-archive", f"{folder}/archive/1/atom.xml",
                                                                "application/atom+xml"),
        ("hub", "https://hub.example/", None)]
    assert links("categories/stcn/archive/1/atom.xml", f"{ATOM}link", "atom") == [
        ("self", f"{folder}/archive/1/atom.xml", "application/atom+xml"),
        ("current", f"{folder}/atom.xml", "application/atom+xml"),
        ("next-archive", f"{folder}/archive/2/atom.xml", "application/atom+xml")]
    assert links("categories/stcn/archive/1/rss.xml", f"{ATOM}link", "rss") == [
        ("self", f"{folder}/archive/1/rss.xml", "application/rss+xml"),
        ("current", f"{folder}/rss.xml", "application/rss+xml"),
        ("next-archive", f"{folder}/archive/2/rss.xml", "application/rss+xml")]
    assert links("archive/3/rss.xml", f"{ATOM}link", "rss") == [
        ("self", f"{BASE}/archive/3/rss.xml", "application/rss+xml"), ("current", f"{BASE}/rss.xml", "application/rss+xml"),
        ("prev-archive", f"{BASE}/archive/2/rss.xml", "application/rss+xml"),
        ("next-archive", f"{BASE}/archive/4/rss.xml", "application/rss+xml")]
    page = json.loads((tmp_path / "archive/3/feed.json").read_bytes())
    assert (page["feed_url"], page["next_url"], page["_rfc5005"], "hubs" in page) == (
        f"{BASE}/feed.json", f"{BASE}/archive/2/feed.json",
        {"about": "https://www.rfc-editor.org/rfc/rfc5005", "archive": True, "current": f"{BASE}/feed.json",
         "prev_archive": f"{BASE}/archive/2/feed.json", "next_archive": f"{BASE}/archive/4/feed.json"}, False)
    assert "next_url" not in json.loads((tmp_path / "archive/1/feed.json").read_bytes())
    assert json.loads((tmp_path / "feed.json").read_bytes())["next_url"] == f"{BASE}/archive/5/feed.json"


def test_only_archive_pages_are_marked_fh_archive_and_carry_the_feeds_id(tmp_path: Path) -> None:
    build(tmp_path, POSTS)
    for rel in ("archive/1/atom.xml", "archive/5/rss.xml", "categories/cailianshe/archive/3/atom.xml"):
        root = etree.fromstring((tmp_path / rel).read_bytes())
        assert len(list(root.iter(f"{FH}archive"))) == 1
    for rel in ("atom.xml", "rss.xml", "categories/cailianshe/atom.xml", "tags/t0/atom.xml"):
        assert not list(etree.fromstring((tmp_path / rel).read_bytes()).iter(f"{FH}archive"))
    page = etree.fromstring((tmp_path / "archive/2/atom.xml").read_bytes())
    assert page.findtext(f"{ATOM}id") == f"{BASE}/atom.xml"


def test_every_document_passes_the_format_checks(tmp_path: Path) -> None:
    build(tmp_path, POSTS, tag_archives=True)
    checks = {"atom.xml": atom_problems, "rss.xml": rss_problems, "feed.json": json_feed_problems}
    checked = 0
    for path in tmp_path.rglob("*"):
        if path.name in checks:
            assert checks[path.name](path.read_bytes()) == [], path
            checked += 1
    assert checked == 3 * 5 + 3 * (5 + 4 + 1 + 2 + 3)  # 5 feeds; pages of the site, 2 categories and 2 tags


def test_a_page_says_when_its_entries_were_updated_not_when_it_was_built(tmp_path: Path) -> None:
    build(tmp_path, POSTS)
    page = etree.fromstring((tmp_path / "archive/2/atom.xml").read_bytes())
    assert page.findtext(f"{ATOM}updated") == "2022-04-01T09:08:00+08:00"
    rss = etree.fromstring((tmp_path / "archive/2/rss.xml").read_bytes())
    assert rss.findtext("channel/lastBuildDate") == "Fri, 01 Apr 2022 09:08:00 +0800"


# --------------------------------------------------------------------------- what a build rewrites


def by_feed(written: Sequence[str]) -> dict[tuple[str, str], list[str]]:
    """Written feed files by (feed folder, file name)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for rel in written:
        folder, _, name = rel.rpartition("/")
        if name not in ("atom.xml", "rss.xml", "feed.json"):
            continue
        feed = folder.partition("archive/")[0].rstrip("/") if folder.startswith("archive/") or "/archive/" in folder \
            else folder
        grouped.setdefault((feed, name), []).append(rel)
    return grouped


def test_a_new_post_rewrites_the_feed_and_at_most_one_page_per_feed(tmp_path: Path) -> None:
    posts = list(POSTS)
    build(tmp_path, posts)
    for n in range(24, 34):
        posts.append(post(n))
        before = {p: p.read_bytes() for p in tmp_path.rglob("archive/*/*")}
        report = build(tmp_path, posts)
        for files in by_feed(report.written).values():
            assert len(files) <= 2, files
            pages = [rel for rel in files if "archive/" in rel]
            # A page is written only when the post fills it: it is new.
            assert all(tmp_path / rel not in before for rel in pages), pages
        site_pages = [rel for rel in report.written if rel.startswith("archive/")]
        assert site_pages == ([f"archive/{n // 4}/{f}" for f in ("atom.xml", "feed.json", "rss.xml")] if n % 4 == 0 else [])
        assert all(p.read_bytes() == data for p, data in before.items())


def test_full_pages_keep_their_bytes_across_rebuilds_and_from_nothing(tmp_path: Path) -> None:
    build(tmp_path / "a", POSTS)
    pages = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("archive/*/*")}
    assert len(pages) == 3 * (5 + 4 + 1)
    report = build(tmp_path / "a", POSTS, full=True)
    assert not [rel for rel in report.written if "archive/" in rel]
    build(tmp_path / "b", [*POSTS, post(24), post(25)])
    for rel, data in pages.items():
        assert (tmp_path / "b" / rel).read_bytes() == data, rel


def test_an_edited_old_post_rewrites_only_its_page(tmp_path: Path) -> None:
    build(tmp_path, POSTS)
    edited = [replace(p, title="改过的标题", content_hash="h2") if p.slug == "NW0006" else p for p in POSTS]
    report = build(tmp_path, edited)
    # Post 6: the second page of the site (posts 5 to 8), the first of stcn (3, 6, 9, 12); no
    # feed shows it any more.
    assert report.written == [f"{page}/{name}" for page in ("archive/2", "categories/stcn/archive/1")
                              for name in ("atom.xml", "feed.json", "rss.xml")]
    assert "改过的标题" in (tmp_path / "archive/2/atom.xml").read_text(encoding="utf-8")


def test_a_retracted_old_post_is_in_no_document_and_later_pages_move_up(tmp_path: Path) -> None:
    build(tmp_path, POSTS)
    gone = post(6)
    kept = [p for p in POSTS if p.id != gone.id]
    report = build(tmp_path, kept)
    site_pages = sorted({rel.rsplit("/", 1)[0] for rel in report.written if rel.startswith("archive/")})
    assert site_pages == ["archive/2", "archive/3", "archive/4", "archive/5"]  # from its page on
    assert not any(gone.id.encode() in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    assert recovered(walk_feedparser(tmp_path, f"{BASE}/atom.xml")) == Counter(p.id for p in kept)
    # 22 posts: still 5 full pages. Three more gone: 19, 4 full pages, the fifth is removed; and
    # cailianshe's fourth (16 - 3 = 13 posts).
    report = build(tmp_path, [p for p in kept if p.slug not in ("NW0001", "NW0002", "NW0004")])
    assert not (tmp_path / "archive/5").exists() and not (tmp_path / "categories/cailianshe/archive/4").exists()
    assert report.files_removed == 6


def test_pages_left_by_a_build_whose_manifest_is_unreadable_are_removed_when_gone(tmp_path: Path) -> None:
    build(tmp_path, POSTS)
    (tmp_path / ".finews-manifest.json").write_bytes(b"garbage")
    build(tmp_path, POSTS[:16])  # 4 pages of the site, 2 of cailianshe (11 posts), 1 of stcn (5)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("archive/*")) == [
        "archive/1", "archive/2", "archive/3", "archive/4", "categories/cailianshe/archive/1",
        "categories/cailianshe/archive/2", "categories/stcn/archive/1"]


def test_tags_are_archived_only_when_asked(tmp_path: Path) -> None:
    build(tmp_path / "off", POSTS)
    assert not list((tmp_path / "off" / "tags").rglob("archive"))
    build(tmp_path / "on", POSTS, tag_archives=True)
    assert sorted(p.relative_to(tmp_path / "on").as_posix() for p in (tmp_path / "on" / "tags").rglob("archive/*")) == [
        "tags/t0/archive/1", "tags/t0/archive/2", "tags/t1/archive/1", "tags/t1/archive/2", "tags/t1/archive/3"]


def test_archives_off_writes_no_page_and_no_link(tmp_path: Path) -> None:
    build(tmp_path, POSTS, archives=False)
    assert not list(tmp_path.rglob("archive"))
    assert b"prev-archive" not in (tmp_path / "atom.xml").read_bytes()
    assert "next_url" not in json.loads((tmp_path / "feed.json").read_bytes())


def test_turning_archives_off_removes_the_pages(tmp_path: Path) -> None:
    build(tmp_path, POSTS)
    report = build(tmp_path, POSTS, archives=False)
    assert not list(tmp_path.rglob("archive"))
    assert report.files_removed == 3 * (5 + 4 + 1)


def test_a_page_size_above_a_feeds_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"feeds.archive_page_size = 60 is more than feeds.limit = 50"):
        build_config({"feeds": {"archive_page_size": 60}})
    with pytest.raises(ConfigError, match=r"feeds.archive_page_size = 30 is more than feeds.category_limit = 20"):
        build_config({"feeds": {"archive_page_size": 30, "category_limit": 20}})
    with pytest.raises(ConfigError, match=r"feeds.archive_page_size = -1"):
        build_config({"feeds": {"archive_page_size": -1}})
    build_config({"feeds": {"archive_page_size": 30, "tag_limit": 20}})  # tags not archived
    with pytest.raises(ConfigError, match=r"feeds.tag_limit = 20"):
        build_config({"feeds": {"archive_page_size": 30, "tag_limit": 20, "tag_archives": True}})
    build_config({"feeds": {"archive_page_size": 60, "archives": False}})


# --------------------------------------------------------------------------- through the collector


def write_post(site: Path, n: int, title: str | None = None) -> Path:
    moment = datetime(2022, 4, 1, 9, 0, tzinfo=TZ) + timedelta(minutes=n)
    path = site / "_posts" / f"{moment:%Y-%m-%d}-p{n:03d}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\ntitle: {title or f'标题{n}'}\ndate: {moment:%Y-%m-%d %H:%M:%S} +0800\n"
                    f"categories: {CATEGORIES[n % 2]}\n---\n<p>正文{n}</p>\n", encoding="utf-8")
    return path


def test_the_incremental_build_rewrites_the_pages_a_change_reaches(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for n in range(1, 24):  # 11 in cailianshe (even), 12 in stcn
        write_post(site, n)
    (site / "_config.yml").write_text(f"url: {SITE_URL}\n", encoding="utf-8")
    config = build_config({"site": {"source": str(site), "cache_dir": str(tmp_path / "cache")},
                           "feeds": {"output": str(tmp_path / "out"), "limit": 5, "archive_page_size": 4}})
    run_build(config)
    # Post 24 fills the site's sixth page and cailianshe's third.
    write_post(site, 24)
    report = run_build(config)
    assert report.incremental
    assert [rel for rel in report.written if "archive/" in rel] == [
        f"{page}/{name}" for page in ("archive/6", "categories/cailianshe/archive/3")
        for name in ("atom.xml", "feed.json", "rss.xml")]
    # An old post edited: its page of the site (post 3: page 1) and of stcn (its 2nd post: page 1).
    write_post(site, 3, title="改过的标题")
    report = run_build(config)
    assert report.incremental
    assert sorted({rel.rsplit("/", 1)[0] for rel in report.written}) == ["archive/1", "categories/stcn/archive/1"]
    assert "改过的标题" in (tmp_path / "out" / "archive/1/atom.xml").read_text(encoding="utf-8")
    # Removed: from its page on, in the site's feed and in stcn's; and the feeds that show it.
    (site / "_posts" / "2022-04-01-p003.md").unlink()
    report = run_build(config)
    assert report.incremental
    # The site's and stcn's feeds link to one page fewer; their pages move up from the first.
    assert sorted({rel.rpartition("/")[0] for rel in report.written}) == [
        "", "archive/1", "archive/2", "archive/3", "archive/4", "archive/5", "categories/stcn",
        "categories/stcn/archive/1", "categories/stcn/archive/2"]
    assert report.files_removed == 6  # archive/6 and categories/stcn/archive/3
    kept = recovered(walk_feedparser(tmp_path / "out", f"{BASE}/atom.xml"))
    assert sorted(kept) == sorted(f"{SITE_URL}/{CATEGORIES[n % 2]}/2022/04/01/p{n:03d}.html" for n in range(1, 25) if n != 3)
    assert set(kept.values()) == {1}
    assert not any(b"/p003" in path.read_bytes() for path in (tmp_path / "out").rglob("*.xml"))


def test_the_demo_sites_pages_hold_every_post_of_each_feed_once_in_order(tmp_path: Path) -> None:
    """The demo site (301 posts) through the collector: the site's feed and every category's."""
    config = build_config({"site": {"source": str(DEMO), "cache_dir": str(tmp_path / "cache")},
                           "feeds": {"output": str(tmp_path / "out"), "category_limit": 20}})
    report = run_build(config)
    out = tmp_path / "out"
    posts = list(reversed(collect_site(config).posts))  # oldest first
    slugs = json.loads((out / ".finews-manifest.json").read_bytes())["slugs"]["category"]
    feeds = {"": (posts, 50)} | {f"categories/{slug}/": ([p for p in posts if name in p.categories], 20)
                                 for name, slug in slugs.items()}
    pages = 0
    for folder, (shown, size) in feeds.items():
        for n in range(1, len(shown) // size + 1):
            assert walk_atoma_atom(out, f"{BASE}/{folder}archive/{n}/atom.xml")[0] == [
                p.id for p in shown[(n - 1) * size:n * size]][::-1]
            pages += 1
        assert not (out / folder / "archive" / str(len(shown) // size + 1)).exists()
        assert recovered(walk_feedparser(out, f"{BASE}/{folder}rss.xml")) == Counter(p.id for p in shown)
    assert pages > len(feeds) and report.rejected == []


# --------------------------------------------------------------------------- 100,000 posts


def big_site(count: int) -> list[Post]:
    """``count`` posts a minute apart, without categories or tags: only the site's feed, which
    holds them all (categories and tags are walked on the small site above)."""
    start = datetime(2020, 1, 1, tzinfo=TZ)
    return [make_post(n, date=start + timedelta(minutes=n), categories=(), tags=(), title=f"t{n}")
            for n in range(count)]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about a minute on a quiet machine; this one is shared by several agents
def test_100000_posts_walked_by_two_clients_and_one_new_post_touches_two_files(tmp_path: Path) -> None:
    """Atom by feedparser, JSON Feed by atoma (RSS is walked on the small site above: the same
    links). Summaries only, pages of 500: a client's parsing is most of the time."""
    settings = {"formats": ["atom", "json"], "full_content": False, "tags": False, "limit": 500,
                "archive_page_size": 0}
    build(tmp_path, big_site(99_999), **settings)
    # The 100,000th post fills page 200: the feeds, their browser page (feed.html) and that archive page are
    # written, and the feed list (its counts); nothing else.
    posts = big_site(100_000)
    report = build(tmp_path, posts, **settings)
    assert report.written == ["archive/200/atom.xml", "archive/200/feed.json", "atom.xml", "feed.html", "feed.json",
                              "index.html"]
    expected = Counter(p.id for p in posts)
    json_documents = walk_atoma_json(tmp_path, f"{BASE}/feed.json")
    assert len(json_documents) == 1 + 200
    assert recovered(json_documents) == expected
    assert recovered(walk_feedparser(tmp_path, f"{BASE}/atom.xml")) == expected
    report = build(tmp_path, big_site(100_001), **settings)
    assert report.written == ["atom.xml", "feed.html", "feed.json", "index.html"]


def test_a_damaged_feed_index_puts_no_post_on_a_page_of_a_feed_it_is_not_in(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    site = tmp_path / "site"
    for n in range(1, 24):
        write_post(site, n)
    (site / "_config.yml").write_text(f"url: {SITE_URL}\n", encoding="utf-8")
    config = build_config({"site": {"source": str(site), "cache_dir": str(tmp_path / "cache")},
                           "feeds": {"output": str(tmp_path / "out"), "limit": 5, "archive_page_size": 4}})
    run_build(config)
    clean = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("archive/*/*")}
    with sqlite3.connect(next((tmp_path / "cache").rglob("posts.sqlite3"))) as db:
        # As a flipped byte in the index would: post 2 (cailianshe) filed under stcn as well,
        # among stcn's oldest (its first page).
        db.execute("INSERT INTO terms SELECT 'category:stcn', neg_date, path FROM terms "
                   "WHERE key = 'site:' AND path LIKE '%p002.md'")
    run_build(config, full=True)
    assert "names posts of archive page 1 wrongly" in caplog.text
    assert {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("archive/*/*")} == clean


# --------------------------------------------------------------------------- the W3C feed validator


def test_the_w3c_feed_validator_finds_no_error_in_feeds_and_pages(tmp_path: Path) -> None:
    validator = w3c_check.load()
    if validator is None:
        pytest.skip("the W3C feed validator is not installed: set FINEWS_FEEDVALIDATOR (docs/feeds.md)")
    build(tmp_path, [replace(p, image="https://img.example/a.jpg", image_size=(640, 480)) if p.slug == "NW0002" else p
                     for p in POSTS], tag_archives=True)
    assert len(list(tmp_path.rglob("*.xml"))) == 2 * (5 + 5 + 4 + 1 + 2 + 3)
    found = w3c_check.messages(validator, tmp_path, BASE)
    assert {rel: errors for rel, (errors, _) in found.items() if errors} == {}
