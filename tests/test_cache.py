"""The post cache and the collector that keeps it: hits, misses, invalidation, damage, bodies on
demand, what changed since a generation, runs killed half-way."""

from __future__ import annotations

import os
import sqlite3
import threading
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from finews_feeds.config import build_config
from finews_feeds.models import Site
from finews_feeds.site import cache as cache_module
from finews_feeds.site import collector
from finews_feeds.site.cache import PostCache, pack_scan
from finews_feeds.site.collector import Collection, cache_file, collect, fingerprint, open_cache, refresh
from finews_feeds.site.jekyll import resolve_site
from finews_feeds.site.posts import Outcome
from finews_feeds.site.walk import Entry, read_file, scan, walk

NOW = datetime(2022, 5, 1, tzinfo=UTC)
CONFIG_YML = "title: finews\nurl: https://finews.withounder.com\n"
HOME = '<p><a href="https://finews.withounder.com/">首页</a></p>'


def write(root: Path, name: str, text: str, mtime: int | None = None) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def post(title: str, body: str = "<p>正文。</p>") -> str:
    return f"---\ntitle: {title}\ncategories: news\n---\n{body}\n"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "_config.yml").write_text(CONFIG_YML, encoding="utf-8")
    for i in range(5):
        write(root, f"_posts/2022-04-2{i}-p{i}.md", post(f"标题{i}", f"<p>正文{i}。</p>\n\n[首页](/)"))
    write(root, "_posts/2022-04-20-bad.md", "---\ntitle: [\n---\n")
    write(root, "_posts/2022-04-20-off.md", "---\ntitle: off\npublished: false\n---\n")
    return root


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose front was read (cache misses), in the order read."""
    seen: list[str] = []
    original = collector.read_entry

    def counting(entry: Entry, site: Site) -> Outcome:
        seen.append(entry.path)
        return original(entry, site)

    monkeypatch.setattr(collector, "read_entry", counting)
    return seen


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose body was rendered."""
    seen: list[str] = []
    original = collector.render_entry

    def counting(front: Any, site: Site, *links: Any) -> Any:
        seen.append(front.path)
        return original(front, site, *links)

    monkeypatch.setattr(collector, "render_entry", counting)
    return seen


def site_of(root: Path, **values: Any) -> Site:
    return resolve_site(build_config({"site": {"source": str(root), **values}}))


def run(root: Path, cache_dir: Path | None, **values: Any) -> Collection:
    return collect(site_of(root, **values), cache_dir, NOW)


def same(a: Collection, b: Collection) -> None:
    assert a.posts == b.posts
    assert a.errors == b.errors
    assert [a.content(p) for p in a.posts] == [b.content(p) for p in b.posts]


def db_of(cache_dir: Path, site: Site) -> sqlite3.Connection:
    return sqlite3.connect(cache_file(cache_dir, site))


# --------------------------------------------------------------------------- hits and misses


def test_a_warm_run_reads_no_file_and_gives_the_same_collection(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    cold = run(source, tmp_path / "c")
    assert len(parsed) == 7 and cold.read == 7
    parsed.clear()
    warm = run(source, tmp_path / "c")
    assert parsed == [] and warm.read == 0
    same(cold, warm)
    same(warm, run(source, None))
    assert [p.title for p in warm.posts] == ["标题4", "标题3", "标题2", "标题1", "标题0"]
    assert [e.path for e in warm.errors] == ["_posts/2022-04-20-bad.md"]


def test_a_body_is_rendered_when_first_shown_and_then_comes_from_the_cache(source: Path, tmp_path: Path,
                                                                            rendered: list[str]) -> None:
    cold = run(source, tmp_path / "c")
    assert rendered == []  # reading the site renders no body
    newest = cold.posts_of(["_posts/2022-04-24-p4.md"])[0]
    assert rendered == ["_posts/2022-04-24-p4.md"]
    assert (newest.summary, newest.content_hash != "") == ("正文4。", True)
    warm = run(source, tmp_path / "c")
    (source / newest.path).unlink()  # the body is the cache's now
    assert warm.content(newest) == f"<p>正文4。</p>\n{HOME}"
    assert warm.posts_of([newest.path]) == [newest]
    assert rendered == ["_posts/2022-04-24-p4.md"]


def test_a_body_missing_from_the_cache_is_rendered_again(source: Path, tmp_path: Path) -> None:
    warm = run(source, tmp_path / "c")
    first = warm.posts[0]
    with db_of(tmp_path / "c", warm.site) as db:
        db.execute("DELETE FROM bodies")
    assert warm.content(first) == f"<p>正文4。</p>\n{HOME}"


def test_an_edited_file_is_read_again_and_its_body_too(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    assert len(run(source, tmp_path / "c").posts) == 5  # every body rendered
    parsed.clear()
    write(source, "_posts/2022-04-22-p2.md", post("新标题", "<p>新的正文。</p>"))
    warm = run(source, tmp_path / "c")
    assert parsed == ["_posts/2022-04-22-p2.md"]
    edited = next(p for p in warm.posts if p.slug == "p2")
    assert (edited.title, edited.summary) == ("新标题", "新的正文。")
    assert warm.content(edited) == "<p>新的正文。</p>"
    same(warm, run(source, None))


def test_a_same_size_edit_is_seen_through_the_mtime(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    write(source, "_posts/2022-04-22-p2.md", post("甲"), mtime=1_000_000_000_000_000_000)
    run(source, tmp_path / "c")
    parsed.clear()
    write(source, "_posts/2022-04-22-p2.md", post("乙"), mtime=1_000_000_001_000_000_000)
    warm = run(source, tmp_path / "c")
    assert parsed == ["_posts/2022-04-22-p2.md"]
    assert "乙" in [p.title for p in warm.posts]


def test_an_mtime_past_2262_is_kept_and_still_tells_a_change(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    far = (1 << 63) + 12345  # `touch -d 2300-01-01` is past what 64 signed bits of nanoseconds hold
    write(source, "_posts/2022-04-22-p2.md", post("甲"), mtime=far)
    run(source, tmp_path / "c")
    parsed.clear()
    assert run(source, tmp_path / "c").read == 0
    write(source, "_posts/2022-04-22-p2.md", post("乙", "<p>乙的正文。</p>"), mtime=far + 1000)
    edited = run(source, tmp_path / "c")
    assert "乙" in [p.title for p in edited.posts]
    # Its body is stored like any other (the mtime it was read at compares equal, wrapped too).
    (source / "_posts/2022-04-22-p2.md").unlink()
    assert edited.content(next(p for p in edited.posts if p.title == "乙")) == "<p>乙的正文。</p>"


def test_deleted_and_new_files(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    assert len(run(source, tmp_path / "c").posts) == 5
    parsed.clear()
    (source / "_posts/2022-04-21-p1.md").unlink()
    (source / "_posts/2022-04-20-bad.md").unlink()
    write(source, "more/_posts/2022-04-30-new.md", post("新文章"))
    warm = run(source, tmp_path / "c")
    assert parsed == ["more/_posts/2022-04-30-new.md"]
    assert [p.slug for p in warm.posts] == ["new", "p4", "p3", "p2", "p0"]
    assert warm.errors == []
    assert warm.posts[0].categories == ("more", "news")
    with db_of(tmp_path / "c", warm.site) as db:
        kept = sorted(row[0] for row in db.execute("SELECT path FROM bodies"))
        files = sorted(row[0] for row in db.execute("SELECT path FROM files"))
    assert kept == sorted(p.path for p in warm.posts)
    assert "_posts/2022-04-21-p1.md" not in files and "_posts/2022-04-20-bad.md" not in files


def test_a_fixed_file_leaves_the_errors(source: Path, tmp_path: Path) -> None:
    run(source, tmp_path / "c")
    write(source, "_posts/2022-04-20-bad.md", post("修好了"))
    warm = run(source, tmp_path / "c")
    assert warm.errors == []
    assert "修好了" in [p.title for p in warm.posts]


@pytest.mark.parametrize(
    "change",
    [{"url": "https://other.example"}, {"timezone": "Asia/Tokyo"}, {"permalink": "pretty"}, {"summary_chars": 12}],
)
def test_a_site_setting_that_shapes_posts_empties_the_cache(
    source: Path, tmp_path: Path, parsed: list[str], change: dict[str, Any]
) -> None:
    before = run(source, tmp_path / "c").cache.id
    parsed.clear()
    changed = run(source, tmp_path / "c", **change)
    assert len(parsed) == 7
    assert changed.cache.id != before  # a build that saw the old cache renders every feed
    same(changed, run(source, None, **change))


def test_the_future_setting_needs_no_new_read(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    write(source, "_posts/2030-01-01-future.md", post("未来"))
    run(source, tmp_path / "c")
    parsed.clear()
    with_future = run(source, tmp_path / "c", future=True)
    assert parsed == []
    assert with_future.posts[0].slug == "future"
    assert "future" not in [p.slug for p in run(source, tmp_path / "c").posts]


def test_a_category_title_change_reaches_the_source(source: Path, tmp_path: Path) -> None:
    run(source, tmp_path / "c")
    config = build_config({"site": {"source": str(source)}, "categories": {"news": {"title": "新闻"}}})
    titled = collect(resolve_site(config), tmp_path / "c", NOW)
    assert {p.source for p in titled.posts} == {"新闻"}


def test_an_unwritable_cache_folder_is_not_fatal(source: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    collection = run(source, blocker / "c")
    assert len(collection.posts) == 5
    assert collection.content(collection.posts[0]).startswith("<p>正文4。</p>")


def test_sites_sharing_a_cache_folder_do_not_mix(source: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "_posts").mkdir(parents=True)
    (other / "_config.yml").write_text(CONFIG_YML, encoding="utf-8")
    write(other, "_posts/2022-04-20-x.md", post("别的"))
    run(source, tmp_path / "c")
    assert [p.title for p in run(other, tmp_path / "c").posts] == ["别的"]
    assert len(run(source, tmp_path / "c").posts) == 5


def test_a_parallel_read_gives_the_same_collection(source: Path, tmp_path: Path) -> None:
    for i in range(collector.PARALLEL_FROM):  # enough files for the reading to go to a worker too
        write(source, f"_posts/2022-03-{i % 28 + 1:02d}-bulk{i}.md", post(f"批量{i}", f"<p>第{i}篇。</p>"))
    serial = collect(site_of(source), tmp_path / "serial", NOW, parallel=False)
    both = collect(site_of(source), tmp_path / "parallel", NOW)
    assert both.read == collector.PARALLEL_FROM + 7
    same(serial, both)


def test_read_file_reads_a_file_that_grew_or_shrank_since_the_walk(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert read_file(str(path), len(data)) == data
    assert read_file(str(path), 10) == data  # grew
    assert read_file(str(path), len(data) + 500) == data  # shrank
    assert read_file(str(path), 0) == data
    path.write_bytes(b"")
    assert read_file(str(path), 100) == b""


def test_a_name_with_a_newline_is_listed_as_a_post(source: Path) -> None:
    write(source, "_posts/2022-03-01-a\nb.md", post("换行"))
    write(source, "_posts/x\n2022-03-02-not.md", post("不是"))
    paths = [entry.path for entry in walk(site_of(source))]
    assert "_posts/2022-03-01-a\nb.md" in paths
    assert not any("not.md" in p for p in paths)
    assert len(paths) == 8


# --------------------------------------------------------------------------- what changed since a generation


def test_the_feeds_touched_since_a_generation_are_those_of_the_posts_added_edited_or_removed(
    source: Path, tmp_path: Path
) -> None:
    first = run(source, tmp_path / "c")
    since = first.generation
    assert first.cache.touched_since(since) == set()
    write(source, "_posts/2022-04-26-new.md", "---\ntitle: 新\ncategories: other\ntags: [甲]\n---\n正文\n")
    second = run(source, tmp_path / "c")
    assert second.cache.touched_since(since) == {"site:", "category:other", "tag:甲"}
    # An edit that moves a post to another category touches both; a removal, what it was in.
    write(source, "_posts/2022-04-26-new.md", "---\ntitle: 新\ncategories: third\n---\n正文\n")
    (source / "_posts/2022-04-20-p0.md").unlink()
    third = run(source, tmp_path / "c")
    assert third.cache.touched_since(second.generation) == {"site:", "category:other", "tag:甲", "category:third",
                                                            "category:news"}
    assert third.cache.touched_since(since) == {"site:", "category:other", "tag:甲", "category:third", "category:news"}
    assert third.cache.touched_since(third.generation + 1) is None  # a generation this cache never had
    # An unpublished or rejected file that stays so touches no feed.
    write(source, "_posts/2022-04-20-off.md", "---\ntitle: still off\npublished: false\n---\n")
    assert run(source, tmp_path / "c").cache.touched_since(third.generation) == set()


def test_the_paths_a_watcher_reported_are_all_that_is_looked_at(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                parsed: list[str]) -> None:
    site = site_of(source)
    first = run(source, tmp_path / "c")
    walks: list[int] = []
    monkeypatch.setattr(collector, "scan", lambda s, **k: walks.append(1) or scan(s, **k))
    write(source, "_posts/2022-04-26-new.md", post("新"))
    (source / "_posts/2022-04-21-p1.md").unlink()
    parsed.clear()
    cache = open_cache(site, tmp_path / "c")
    with cache.hold():
        told = refresh(cache, site, NOW, touched=["_posts/2022-04-26-new.md", "_posts/2022-04-21-p1.md", "elsewhere.md"])
    assert walks == [] and parsed == ["_posts/2022-04-26-new.md"]
    assert [p.slug for p in told.posts] == ["new", "p4", "p3", "p2", "p0"]
    assert told.cache.touched_since(first.generation) == {"site:", "category:news"}
    # The last scan went with those changes: the next walk compares row by row, and finds nothing.
    parsed.clear()
    again = run(source, tmp_path / "c")
    assert walks == [1] and parsed == [] and again.read == 0
    same(again, run(source, None))


def test_a_run_killed_after_some_of_its_records_leaves_a_cache_right_about_them(source: Path, tmp_path: Path,
                                                                               parsed: list[str]) -> None:
    site = site_of(source)
    first = run(source, tmp_path / "c")
    write(source, "_posts/2022-04-26-a.md", post("甲"))
    write(source, "_posts/2022-04-27-b.md", post("乙"))
    (source / "_posts/2022-04-20-p0.md").unlink()
    cache = PostCache(cache_file(tmp_path / "c", site), fingerprint(site), site)
    generation = cache.begin()
    entry = next(e for e in walk(site) if e.path.endswith("-a.md"))
    cache.record(generation, [cache_module.row_of(entry, collector.read_entry(entry, site))])
    cache.close()  # killed here: "b" unread, "p0" not forgotten, the scan dropped
    parsed.clear()
    after = run(source, tmp_path / "c")
    assert parsed == ["_posts/2022-04-27-b.md"]
    assert [p.slug for p in after.posts] == ["b", "a", "p4", "p3", "p2", "p1"]
    assert after.cache.touched_since(first.generation) == {"site:", "category:news"}
    same(after, run(source, None))


def test_the_cache_is_held_by_one_run_at_a_time(source: Path, tmp_path: Path) -> None:
    site = site_of(source)
    first = open_cache(site, tmp_path / "c")
    second = open_cache(site, tmp_path / "c")
    order: list[str] = []
    with first.hold():
        waiter = threading.Thread(target=lambda: (second.hold().__enter__(), order.append("second")))
        waiter.start()
        waiter.join(0.3)
        order.append("first done")
    waiter.join(5)
    assert order == ["first done", "second"]


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("damage", ["garbage", "truncated", "a flipped checksum", "a stored front of another shape"])
def test_a_damaged_cache_is_started_afresh_with_one_warning(source: Path, tmp_path: Path, parsed: list[str],
                                                            caplog: pytest.LogCaptureFixture, damage: str) -> None:
    cold = run(source, tmp_path / "c")
    expected = (cold.posts, cold.errors, [cold.content(p) for p in cold.posts])  # bodies stored too
    cold.close()
    path = cache_file(tmp_path / "c", cold.site)
    if damage == "garbage":
        path.write_bytes(b"not a database" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    else:
        with sqlite3.connect(path) as db:
            if damage == "a flipped checksum":
                db.execute("UPDATE files SET crc = crc + 1 WHERE path = '_posts/2022-04-24-p4.md'")
            else:
                db.execute("UPDATE files SET data = X'e9' || data, crc = 0 WHERE path = '_posts/2022-04-24-p4.md'")
                db.execute("UPDATE files SET crc = 0")
    parsed.clear()
    caplog.clear()
    again = run(source, tmp_path / "c")
    assert (again.posts, again.errors, [again.content(p) for p in again.posts]) == expected
    assert [r.levelname for r in caplog.records].count("WARNING") <= 2  # the damage, and the rejected post
    assert len(parsed) == 7
    # Started afresh, not given up on: the next run reads nothing and says nothing.
    parsed.clear()
    caplog.clear()
    warm = run(source, tmp_path / "c")
    assert (warm.posts, warm.errors, [warm.content(p) for p in warm.posts]) == expected
    assert parsed == [] and [r for r in caplog.records if r.levelname == "WARNING"] == []


def test_a_body_that_does_not_match_its_hash_is_never_shown(source: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cold = run(source, tmp_path / "c")
    shown = cold.posts
    cold.close()
    with sqlite3.connect(cache_file(tmp_path / "c", cold.site)) as db:
        data, = db.execute("SELECT data FROM bodies WHERE path = '_posts/2022-04-24-p4.md'").fetchone()
        forged = data.replace("正文4".encode(), "伪造".encode())
        db.execute("UPDATE bodies SET data = ?, crc = ? WHERE path = '_posts/2022-04-24-p4.md'",
                   (forged, zlib.crc32(forged)))
    again = run(source, tmp_path / "c")
    assert again.posts == shown
    assert "伪造" not in again.content(again.posts[0])


def test_the_last_scan_goes_before_any_row_changes_and_comes_back_with_the_last(source: Path, tmp_path: Path) -> None:
    site = site_of(source)
    run(source, tmp_path / "c")
    cache = PostCache(cache_file(tmp_path / "c", site), fingerprint(site), site)
    found = scan(site)
    assert cache.changes(found, pack_scan(found)).read == []
    generation = cache.begin()
    with sqlite3.connect(cache_file(tmp_path / "c", site)) as db:
        assert db.execute("SELECT count(*) FROM meta WHERE key = 'scan'").fetchone() == (0,)
    cache.finish(generation, [], pack_scan(found))
    with sqlite3.connect(cache_file(tmp_path / "c", site)) as db:
        assert db.execute("SELECT count(*) FROM meta WHERE key = 'scan'").fetchone() == (1,)
    cache.close()


def test_a_damaged_index_of_feeds_puts_no_post_in_a_feed_it_is_not_in(source: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    cold = run(source, tmp_path / "c")
    expected = cold.posts
    cold.close()
    with sqlite3.connect(cache_file(tmp_path / "c", cold.site)) as db:
        # As a flipped byte in the index would: a post filed under a feed it is not in.
        db.execute("UPDATE terms SET key = 'category:nowhere' WHERE path = '_posts/2022-04-24-p4.md' AND key = 'site:'")
    again = run(source, tmp_path / "c")
    assert again.newest("category:nowhere", NOW.timestamp(), 10) == []
    assert "names _posts/2022-04-24-p4.md wrongly" in caplog.text
    assert again.posts == expected
