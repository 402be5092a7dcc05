"""The collector's cache: hits, misses, invalidation, corruption, bodies on demand."""

from __future__ import annotations

import marshal
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cache_fixtures import no_memo  # noqa: F401 - autouse in this module
from hypothesis import given, settings
from hypothesis import strategies as st

from finews_feeds.config import build_config
from finews_feeds.models import Collection, Site
from finews_feeds.site import cache
from finews_feeds.site import walk as walkmod
from finews_feeds.site.cache import (
    BODIES,
    INDEX,
    collect_cached,
    fingerprint,
    from_columns,
    load_index,
    save_index,
    site_folder,
    to_columns,
)
from finews_feeds.site.collector import Entry, collect
from finews_feeds.site.jekyll import resolve_site
from finews_feeds.site.walk import scan, scan_elsewhere

NOW = datetime(2022, 5, 1, tzinfo=UTC)
CONFIG_YML = "title: finews\nurl: https://finews.withounder.com\n"


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
    """The paths parsed (cache misses), in the order parsed."""
    seen: list[str] = []
    original = cache._pack

    def counting(entry: Entry, site: Site, lazy: bool = False) -> Any:
        seen.append(entry.path)
        return original(entry, site, lazy)

    monkeypatch.setattr(cache, "_pack", counting)
    return seen


def site_of(root: Path, **values: Any) -> Site:
    return resolve_site(build_config({"site": {"source": str(root), **values}}))


def run(root: Path, cache_dir: Path, memo: bool = False, **values: Any) -> Collection:
    if not memo:
        cache.forget()
    return collect(site_of(root, **values), cache_dir, NOW)


def same(a: Collection, b: Collection) -> None:
    assert a.posts == b.posts
    assert a.errors == b.errors
    assert [a.content(p) for p in a.posts] == [b.content(p) for p in b.posts]


def test_warm_run_reads_no_file_and_gives_the_same_collection(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    cold = run(source, tmp_path / "c")
    assert len(parsed) == 7
    parsed.clear()
    warm = run(source, tmp_path / "c")
    assert parsed == []
    same(cold, warm)
    same(warm, collect(site_of(source), None, NOW))
    assert [p.title for p in warm.posts] == ["标题4", "标题3", "标题2", "标题1", "标题0"]
    assert [e.path for e in warm.errors] == ["_posts/2022-04-20-bad.md"]


def test_bodies_come_from_the_cache_not_the_files(source: Path, tmp_path: Path) -> None:
    run(source, tmp_path / "c")
    warm = run(source, tmp_path / "c")
    first = warm.posts[0]
    (source / first.path).unlink()
    assert warm.content(first) == '<p>正文4。</p>\n<p><a href="https://finews.withounder.com/">首页</a></p>'


def test_body_missing_from_the_cache_is_rendered_again(source: Path, tmp_path: Path) -> None:
    warm = run(source, tmp_path / "c")
    with sqlite3.connect(site_folder(tmp_path / "c", warm.site) / BODIES) as db:
        db.execute("DELETE FROM bodies")
    assert warm.content(warm.posts[0]) == '<p>正文4。</p>\n<p><a href="https://finews.withounder.com/">首页</a></p>'


def test_edited_file_is_parsed_again(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    run(source, tmp_path / "c")
    parsed.clear()
    write(source, "_posts/2022-04-22-p2.md", post("新标题", "<p>新的正文。</p>"))
    warm = run(source, tmp_path / "c")
    assert parsed == ["_posts/2022-04-22-p2.md"]
    edited = next(p for p in warm.posts if p.slug == "p2")
    assert (edited.title, edited.summary) == ("新标题", "新的正文。")
    assert warm.content(edited) == "<p>新的正文。</p>"
    same(warm, collect(site_of(source), None, NOW))


def test_same_size_edit_is_seen_through_the_mtime(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    write(source, "_posts/2022-04-22-p2.md", post("甲"), mtime=1_000_000_000_000_000_000)
    run(source, tmp_path / "c")
    parsed.clear()
    write(source, "_posts/2022-04-22-p2.md", post("乙"), mtime=1_000_000_001_000_000_000)
    warm = run(source, tmp_path / "c")
    assert parsed == ["_posts/2022-04-22-p2.md"]
    assert "乙" in [p.title for p in warm.posts]


def test_deleted_and_new_files(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    run(source, tmp_path / "c")
    parsed.clear()
    (source / "_posts/2022-04-21-p1.md").unlink()
    (source / "_posts/2022-04-20-bad.md").unlink()
    write(source, "more/_posts/2022-04-30-new.md", post("新文章"))
    warm = run(source, tmp_path / "c")
    assert parsed == ["more/_posts/2022-04-30-new.md"]
    assert [p.slug for p in warm.posts] == ["new", "p4", "p3", "p2", "p0"]
    assert warm.errors == []
    assert warm.posts[0].categories == ("more", "news")
    with sqlite3.connect(site_folder(tmp_path / "c", warm.site) / BODIES) as db:
        paths = sorted(row[0] for row in db.execute("SELECT path FROM bodies"))
    assert paths == sorted(p.path for p in warm.posts)


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
def test_a_site_setting_that_shapes_posts_invalidates_the_cache(
    source: Path, tmp_path: Path, parsed: list[str], change: dict[str, Any]
) -> None:
    run(source, tmp_path / "c")
    parsed.clear()
    changed = run(source, tmp_path / "c", **change)
    assert len(parsed) == 7
    same(changed, collect(site_of(source, **change), None, NOW))


def test_future_setting_does_not_need_a_reparse(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    write(source, "_posts/2030-01-01-future.md", post("未来"))
    run(source, tmp_path / "c")
    parsed.clear()
    with_future = run(source, tmp_path / "c", future=True)
    assert parsed == []
    assert with_future.posts[0].slug == "future"
    assert "future" not in [p.slug for p in run(source, tmp_path / "c").posts]


def test_category_title_change_reaches_the_source(source: Path, tmp_path: Path) -> None:
    run(source, tmp_path / "c")
    cache.forget()
    config = build_config({"site": {"source": str(source)}, "categories": {"news": {"title": "新闻"}}})
    titled = collect(resolve_site(config), tmp_path / "c", NOW)
    assert {p.source for p in titled.posts} == {"新闻"}


@pytest.mark.parametrize("garbage", [b"", b"not marshal at all", b"\x00" * 100,
                                     b"\xff" * 8 + b"a length prefix read as 2**64 - 1"])
def test_a_corrupt_index_is_discarded(source: Path, tmp_path: Path, parsed: list[str], garbage: bytes,
                                      caplog: pytest.LogCaptureFixture) -> None:
    cold = run(source, tmp_path / "c")
    (site_folder(tmp_path / "c", cold.site) / INDEX).write_bytes(garbage)
    parsed.clear()
    caplog.clear()
    again = run(source, tmp_path / "c")
    assert len(parsed) == 7
    same(cold, again)
    assert [r.levelname for r in caplog.records].count("WARNING") <= 2  # the damage, and the rejected post
    # Rebuilt: the next run reads nothing.
    parsed.clear()
    cache.forget()
    same(cold, run(source, tmp_path / "c"))
    assert parsed == []


def test_a_damaged_index_or_scan_is_not_trusted_by_the_changes_since_a_cursor(source: Path, tmp_path: Path) -> None:
    """The quick rebuild's way in (collect_changes): a damaged index or scan gives no answer
    (the caller then reads the whole site), never a crash or a wrong one."""
    cold = run(source, tmp_path / "c")
    assert cold.cursor is not None
    folder = site_folder(tmp_path / "c", cold.site)
    write(source, "_posts/2022-04-26-new.md", post("新"))
    for name, data in ((INDEX, b"\xff" * 8), (INDEX, b"\x00" * 12), (cache.SCAN, b"garbage" * 10)):
        kept = (folder / name).read_bytes()
        (folder / name).write_bytes(data)
        cache.forget()
        changes = cache.collect_changes(cold.site, tmp_path / "c", cold.cursor)
        assert changes is None or [p.slug for p in changes.added] == ["new"]
        (folder / name).write_bytes(kept)


def test_an_index_with_columns_of_another_shape_is_discarded(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    cold = run(source, tmp_path / "c")
    folder = site_folder(tmp_path / "c", cold.site)
    print_ = fingerprint(cold.site)
    index = load_index(folder, print_, cold.site.timezone)
    assert index is not None and len(index.posts) == 5 and len(index.stats) == 7
    assert index.others == {"_posts/2022-04-20-bad.md": cold.errors[0].message, "_posts/2022-04-20-off.md": None}
    path = folder / INDEX
    with open(path, "rb") as handle:
        records = [cache._read_record(handle) for _ in range(5 + len(cache.COLUMNS) - 1)]
    records[2] = records[2][:-1]  # one size short
    with open(path, "wb") as handle:
        for record in records:
            handle.write(cache.pack_record(record))
    parsed.clear()
    again = run(source, tmp_path / "c")
    assert len(parsed) == 7
    same(cold, again)


def test_a_truncated_index_is_discarded(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    cold = run(source, tmp_path / "c")
    index = site_folder(tmp_path / "c", cold.site) / INDEX
    index.write_bytes(index.read_bytes()[:-10])
    parsed.clear()
    same(cold, run(source, tmp_path / "c"))
    assert len(parsed) == 7


def test_posts_survive_the_column_round_trip(source: Path, tmp_path: Path) -> None:
    write(source, "_posts/2022-04-23-full.md", "---\ntitle: 全\ndate: 2022-04-23 10:00:00.5 +0800\nlast_modified_at: 2022-04-24\n"
          "author: 张三\nimage: /i.png\nexcerpt: 摘\ndescription: 述\ntags: [a, b]\n---\n正文\n")
    cold = run(source, tmp_path / "c")
    folder = site_folder(tmp_path / "c", cold.site)
    index = load_index(folder, fingerprint(cold.site), cold.site.timezone)
    assert index is not None
    assert index.posts == cold.posts
    full = next(p for p in index.posts if p.slug == "full")
    assert (full.date.microsecond, full.updated, full.id) == (500000, datetime(2022, 4, 24, tzinfo=cold.site.timezone), full.url)
    assert from_columns(to_columns(cold.posts), cold.site.timezone) == cold.posts
    save_index(tmp_path / "copy", "print", index)
    assert load_index(tmp_path / "copy", "print", cold.site.timezone) == index
    assert load_index(tmp_path / "copy", "other print", cold.site.timezone) is None


def test_the_setter_fallback_gives_the_same_posts(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cold = run(source, tmp_path / "c")
    monkeypatch.setattr(cache, "_DIRECT", False)
    assert from_columns(to_columns(cold.posts), cold.site.timezone) == cold.posts


def test_a_corrupt_bodies_file_is_discarded(source: Path, tmp_path: Path, parsed: list[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    cold = run(source, tmp_path / "c")
    folder = site_folder(tmp_path / "c", cold.site)
    (folder / INDEX).unlink()
    for name in os.listdir(folder):
        (folder / name).write_bytes(b"garbage" * 100)
    again = run(source, tmp_path / "c")
    same(cold, again)
    # Replaced, not given up on: the next run is warm, reads no file and says nothing.
    caplog.clear()
    parsed.clear()
    cache.forget()
    warm = run(source, tmp_path / "c")
    same(cold, warm)
    assert parsed == []
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    assert warm.content(warm.posts[0]).startswith("<p>正文4。</p>")


def test_an_unwritable_cache_folder_is_not_fatal(source: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    collection = run(source, blocker / "c")
    assert len(collection.posts) == 5
    assert collection.content(collection.posts[0]).startswith("<p>正文4。</p>")


def test_no_temporary_files_are_left_behind(source: Path, tmp_path: Path) -> None:
    cold = run(source, tmp_path / "c")
    names = sorted(os.listdir(site_folder(tmp_path / "c", cold.site)))
    assert [n for n in names if n.startswith(".")] == []
    assert INDEX in names and BODIES in names


def test_sites_sharing_a_cache_folder_do_not_mix(source: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "_posts").mkdir(parents=True)
    (other / "_config.yml").write_text(CONFIG_YML, encoding="utf-8")
    write(other, "_posts/2022-04-20-x.md", post("别的"))
    run(source, tmp_path / "c")
    assert [p.title for p in run(other, tmp_path / "c").posts] == ["别的"]
    assert len(run(source, tmp_path / "c").posts) == 5


def test_memo_in_one_process_sees_edits(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    first = run(source, tmp_path / "c", memo=True)
    parsed.clear()
    second = run(source, tmp_path / "c", memo=True)
    assert parsed == []
    assert second.posts[1] is first.posts[1]
    write(source, "_posts/2022-04-22-p2.md", post("改", "<p>改。</p>"))
    third = run(source, tmp_path / "c", memo=True)
    assert parsed == ["_posts/2022-04-22-p2.md"]
    assert [p.title for p in third.posts] == ["标题4", "标题3", "改", "标题1", "标题0"]
    # Later runs compare with the scan of the run before, in memory: a new file, a removed one,
    # an edit of the same size seen through its mtime, a rejected file fixed.
    write(source, "_posts/2022-04-26-new.md", post("新"))
    (source / "_posts/2022-04-20-p0.md").unlink()
    target = source / "_posts/2022-04-21-p1.md"
    target.write_text(target.read_text(encoding="utf-8").replace("标题1", "标题X"), encoding="utf-8")
    os.utime(target, ns=(5, 5))
    write(source, "_posts/2022-04-20-bad.md", post("修好"))
    parsed.clear()
    fourth = run(source, tmp_path / "c", memo=True)
    assert sorted(parsed) == ["_posts/2022-04-20-bad.md", "_posts/2022-04-21-p1.md", "_posts/2022-04-26-new.md"]
    same(fourth, collect(site_of(source), None, NOW))


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_cold_parse_gives_the_same_collection(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       workers: int) -> None:
    for i in range(40):
        write(source, f"_posts/2022-03-{i % 28 + 1:02d}-bulk{i}.md", post(f"批量{i}"))
    serial = run(source, tmp_path / "serial")
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # forked children, whatever pytest runs
    monkeypatch.setattr(cache, "PARALLEL_FROM", 10)
    monkeypatch.setattr(cache, "_CHUNK", 8)
    cache.forget()
    parallel = collect_cached(site_of(source), tmp_path / "parallel", NOW, workers=workers)
    same(serial, parallel)


def test_scanning_in_a_child_process_gives_the_same_columns(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    site = site_of(source)
    assert walkmod.scan_elsewhere(site)().columns() == scan(site)


@pytest.mark.parametrize("here", [0.0, 0.4])
def test_a_failed_child_scan_is_done_again_here(source: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                here: float) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    parent = os.getpid()
    list_posts = walkmod.list_posts

    def only_here(site: Site) -> Any:
        if os.getpid() != parent:
            raise RuntimeError("the child fails")
        return list_posts(site)

    monkeypatch.setattr(walkmod, "list_posts", only_here)
    site = site_of(source)
    assert walkmod.scan_elsewhere(site, here)().columns() == scan(site)
    assert "scanning the site in a child process failed" in caplog.text


def test_with_other_threads_running_the_scan_stays_in_this_process(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 3)
    monkeypatch.setattr(cache.os, "fork", lambda: pytest.fail("forked with threads running"))
    site = site_of(source)
    assert walkmod.scan_elsewhere(site)().columns() == scan(site)


def test_a_few_changes_go_to_the_journal_not_a_new_index(source: Path, tmp_path: Path, parsed: list[str]) -> None:
    cold = run(source, tmp_path / "c")
    folder = site_folder(tmp_path / "c", cold.site)
    before = (folder / INDEX).read_bytes()
    write(source, "_posts/2022-04-26-new.md", post("新"))
    write(source, "_posts/2022-04-22-p2.md", post("改", "<p>改。</p>"))
    (source / "_posts/2022-04-20-p0.md").unlink()
    write(source, "_posts/2022-04-21-p1.md", "---\ntitle: [\n---\n")
    changed = run(source, tmp_path / "c")
    assert (folder / INDEX).read_bytes() == before
    assert (folder / cache.JOURNAL).stat().st_size > 0
    parsed.clear()
    replayed = run(source, tmp_path / "c")
    assert parsed == []
    same(changed, replayed)
    same(replayed, collect(site_of(source), None, NOW))
    assert [p.title for p in replayed.posts] == ["新", "标题4", "标题3", "改"]
    assert [e.path for e in replayed.errors] == ["_posts/2022-04-20-bad.md", "_posts/2022-04-21-p1.md"]


def test_a_long_journal_is_folded_into_a_new_index(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "JOURNAL_LIMIT", 1)
    cold = run(source, tmp_path / "c")
    folder = site_folder(tmp_path / "c", cold.site)
    write(source, "_posts/2022-04-26-a.md", post("甲"))
    run(source, tmp_path / "c")
    assert (folder / cache.JOURNAL).exists()
    write(source, "_posts/2022-04-27-b.md", post("乙"))
    folded = run(source, tmp_path / "c")
    assert not (folder / cache.JOURNAL).exists()
    index = load_index(folder, fingerprint(cold.site), cold.site.timezone)
    assert index is not None and index.posts == folded.posts and index.posts[0].title == "乙"


@pytest.mark.parametrize("damage", ["torn", "foreign"])
def test_a_torn_or_foreign_journal_only_means_reading_those_files_again(
    source: Path, tmp_path: Path, parsed: list[str], damage: str
) -> None:
    cold = run(source, tmp_path / "c")
    folder = site_folder(tmp_path / "c", cold.site)
    cold_index = load_index(folder, fingerprint(cold.site), cold.site.timezone)
    assert cold_index is not None
    write(source, "_posts/2022-04-26-a.md", post("甲"))
    run(source, tmp_path / "c")
    write(source, "_posts/2022-04-27-b.md", post("乙"))
    run(source, tmp_path / "c")
    journal = folder / cache.JOURNAL
    raw = journal.read_bytes()
    if damage == "torn":
        journal.write_bytes(raw[:-3])
    else:
        save_index(folder, fingerprint(cold.site), cold_index)  # a new index: the journal names the old one
        journal.write_bytes(raw)
    parsed.clear()
    again = run(source, tmp_path / "c")
    assert sorted(parsed) == (["_posts/2022-04-27-b.md"] if damage == "torn"
                              else ["_posts/2022-04-26-a.md", "_posts/2022-04-27-b.md"])
    same(again, collect(site_of(source), None, NOW))
    parsed.clear()
    assert run(source, tmp_path / "c").posts == again.posts
    assert parsed == []



def test_a_journal_folded_by_another_process_gets_a_new_index_not_a_record(source: Path, tmp_path: Path) -> None:
    cold = run(source, tmp_path / "c")
    folder = site_folder(tmp_path / "c", cold.site)
    write(source, "_posts/2022-04-26-a.md", post("甲"))
    run(source, tmp_path / "c", memo=True)  # this process now holds an index with one journal record
    (folder / cache.JOURNAL).unlink()  # as another process's fold leaves it
    write(source, "_posts/2022-04-27-b.md", post("乙"))
    held = run(source, tmp_path / "c", memo=True)
    assert not (folder / cache.JOURNAL).exists()
    index = load_index(folder, fingerprint(cold.site), cold.site.timezone)
    assert index is not None and index.posts == held.posts and [p.title for p in held.posts[:2]] == ["乙", "甲"]


def test_scan_shares_list_every_file_once_and_a_child_scan_lists_them_all(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    for i in range(40):
        write(source, f"_posts/2022-03-{i % 28 + 1:02d}-x{i}.md", post(f"x{i}"))
    write(source, "_posts/sub/2022-03-01-deep.md", post("deep"))
    site = site_of(source)
    whole = scan(site)
    for here in (0.0, 0.3, 0.4, 0.5, 1.0):
        # In the order of one process's scan, whatever the share: the cache compares in order.
        assert scan_elsewhere(site, here)().columns() == whole
    assert "_posts/sub/2022-03-01-deep.md" in whole[0]


def test_read_file_reads_a_file_that_grew_or_shrank_since_the_scan(tmp_path: Path) -> None:
    from finews_feeds.site.walk import read_file

    path = tmp_path / "f"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert read_file(str(path), len(data)) == data
    assert read_file(str(path), 10) == data  # grew
    assert read_file(str(path), len(data) + 500) == data  # shrank
    assert read_file(str(path), 0) == data
    path.write_bytes(b"")
    assert read_file(str(path), 100) == b""


# ---------------------------------------------------------------- the last scan and collect_changes


def as_scan(columns: walkmod.Columns) -> walkmod.Scan:
    return walkmod.Scan("".join(p + walkmod.SEP for p in columns[0]), walkmod.stamps(columns[1]), walkmod.stamps(columns[2]))


def reference_changes(before: walkmod.Columns, now: walkmod.Columns) -> tuple[set[str], set[str], set[str]]:
    """What differs, compared by path (what compare_scans must agree with)."""
    old = dict(zip(before[0], zip(before[1], before[2], strict=True), strict=True))
    new = dict(zip(now[0], zip(now[1], now[2], strict=True), strict=True))
    changed = {path for path, stat in new.items() if old.get(path) != stat}
    return changed, set(new) - set(old), set(old) - set(new)


@st.composite
def two_scans(draw: st.DrawFn) -> tuple[walkmod.Columns, walkmod.Columns, bool]:
    """A scan, and a later one: some files gone, some changed, some new ones anywhere; with
    ``shuffled``, the files that stayed in another order too. Paths share beginnings and
    ends, and hold letters of all widths, to try the comparison of texts."""
    names = draw(st.lists(st.text("ab/é财", min_size=1, max_size=4), unique=True, max_size=30))
    stats = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=len(names), max_size=len(names)))
    before = [(name, *stat) for name, stat in zip(names, stats, strict=True)]
    later = []
    for name, size, mtime in before:
        fate = draw(st.sampled_from(["same", "same", "gone", "size", "mtime", "both"]))
        if fate != "gone":
            later.append((name, size + (fate in ("size", "both")), mtime + (fate in ("mtime", "both"))))
    shuffled = draw(st.booleans())
    if shuffled:
        later = draw(st.permutations(later))
    for new in draw(st.lists(st.text("ab/xé财", min_size=1, max_size=4).filter(lambda n: n not in names),
                             unique=True, max_size=5)):
        later.insert(draw(st.integers(0, len(later))), (new, 1, 1))

    def columns(rows: list[tuple[str, int, int]]) -> walkmod.Columns:
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    return columns(before), columns(later), shuffled


@settings(max_examples=300, deadline=None)
@given(two_scans())
def test_compare_scans_finds_what_a_comparison_by_path_finds(scans: tuple[walkmod.Columns, walkmod.Columns, bool]) -> None:
    before, now, _ = scans
    found = cache.compare_scans(as_scan(before), as_scan(now))
    assert found is not None
    changed, new_paths, removed = found
    expected = reference_changes(before, now)
    assert ({entry.path for entry in changed}, new_paths, removed) == expected
    assert len(changed) == len(expected[0])
    stats = dict(zip(now[0], zip(now[1], now[2], strict=True), strict=True))
    assert all(stats[entry.path] == (entry.size, entry.mtime_ns) for entry in changed)


def test_compare_scans_gives_up_on_a_file_listed_twice() -> None:
    assert cache.compare_scans(as_scan((["x"], [1], [1])), as_scan((["b", "a", "b"], [1, 1, 1], [1, 1, 1]))) is None


def test_compare_scans_tells_one_new_file_among_many_by_its_place() -> None:
    paths = [f"_posts/2022-01-01-n{i:05d}.md" for i in range(20000)]
    before = (paths, list(range(20000)), list(range(20000)))
    for place in (0, 7, 19999, 20000):
        now = ([*paths[:place], "_posts/2022-01-02-new.md", *paths[place:]], [*range(place), 5, *range(place, 20000)],
               [*range(place), 5, *range(place, 20000)])
        found = cache.compare_scans(as_scan(before), as_scan(now))
        assert found == ([Entry("_posts/2022-01-02-new.md", 5, 5)], {"_posts/2022-01-02-new.md"}, set())
    edited = (paths, list(range(20000)), [*range(12345), -1, *range(12346, 20000)])
    assert cache.compare_scans(as_scan(before), as_scan(edited)) == ([Entry(paths[12345], 12345, -1)], set(), set())


def changes_since(root: Path, cache_dir: Path, since: Any) -> cache.Changes | None:
    return cache.collect_changes(site_of(root), cache_dir, cache.Cursor(*since))


@pytest.fixture
def no_index_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """collect_changes must answer from the last scan, without reading the index's file list."""
    def refuse(*args: Any) -> None:
        raise AssertionError("the index was read")

    monkeypatch.setattr(cache, "_load_light", refuse)


def test_changes_since_a_collect_come_from_the_last_scan(source: Path, tmp_path: Path, no_index_read: None) -> None:
    first = run(source, tmp_path / "c")
    assert (site_folder(tmp_path / "c", first.site) / cache.SCAN).exists()
    assert first.cursor is not None
    nothing = changes_since(source, tmp_path / "c", first.cursor)
    assert nothing is not None and nothing.added == [] and not nothing.changed_posts
    assert [e.path for e in nothing.errors] == ["_posts/2022-04-20-bad.md"]
    write(source, "_posts/2022-04-26-new.md", post("新"))
    write(source, "_posts/2022-04-27-worse.md", "---\ntitle: [\n---\n")
    write(source, "_posts/2022-04-20-off.md", post("上线"))  # unpublished until now: a new post too
    added = changes_since(source, tmp_path / "c", first.cursor)
    assert added is not None and not added.changed_posts
    assert [p.title for p in added.added] == ["新", "上线"]
    assert [e.path for e in added.errors] == ["_posts/2022-04-20-bad.md", "_posts/2022-04-27-worse.md"]
    # From where that run left the cache, an edit of the same size is seen through its mtime.
    target = source / "_posts/2022-04-22-p2.md"
    target.write_text(target.read_text(encoding="utf-8").replace("标题2", "标题X"), encoding="utf-8")
    os.utime(target, ns=(1, 1))
    edited = changes_since(source, tmp_path / "c", added.cursor)
    assert edited is not None and edited.changed_posts and edited.added == []
    (source / "_posts/2022-04-23-p3.md").unlink()
    removed = changes_since(source, tmp_path / "c", edited.cursor)
    assert removed is not None and removed.changed_posts
    # The cache those runs left is the site's, read in full by the next collect.
    same(run(source, tmp_path / "c"), collect(site_of(source), None, NOW))


def test_changes_from_the_paths_a_watcher_reported_need_no_walk_unless_the_last_scan_is_gone(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(source, tmp_path / "c")
    assert first.cursor is not None
    walks: list[int] = []
    list_posts = walkmod.list_posts
    monkeypatch.setattr(walkmod, "list_posts", lambda site: walks.append(1) or list_posts(site))
    write(source, "_posts/2022-04-26-new.md", post("新"))
    write(source, "_posts/notes.md", "not a post")
    reported = ["_posts/2022-04-26-new.md", "_posts/notes.md", "_posts/2022-04-19-gone.md"]
    changes = cache.collect_changes(site_of(source), tmp_path / "c", cache.Cursor(*first.cursor), touched=reported)
    assert changes is not None and [p.title for p in changes.added] == ["新"] and not changes.changed_posts
    assert walks == []
    # The cache now holds the new post as a walk would have found it.
    assert cache.compare_scans(walkmod.scan_text(site_of(source)), cache.load_scan(
        site_folder(tmp_path / "c", first.site), cache.fingerprint(first.site)).scan) == ([], set(), set())
    # Without a last scan to start from, the reported paths are not enough: a walk.
    walks.clear()
    (site_folder(tmp_path / "c", first.site) / cache.SCAN).unlink()
    write(source, "_posts/2022-04-27-more.md", post("又一篇"))
    more = cache.collect_changes(site_of(source), tmp_path / "c", cache.Cursor(*changes.cursor), touched=[])
    assert more is not None and [p.title for p in more.added] == ["又一篇"] and walks == [1]


def test_changes_since_an_older_cursor_are_told_though_another_collect_came_between(
    source: Path, tmp_path: Path
) -> None:
    first = run(source, tmp_path / "c")
    assert first.cursor is not None
    write(source, "_posts/2022-04-26-a.md", post("甲"))
    run(source, tmp_path / "c")  # e.g. the digest: the new post is in the cache, its scan kept
    write(source, "_posts/2022-04-27-b.md", post("乙"))
    changes = changes_since(source, tmp_path / "c", first.cursor)
    assert changes is not None and [p.title for p in changes.added] == ["乙", "甲"]


@pytest.mark.parametrize("damage", ["garbage", "reordered", "other cursor", "missing"])
def test_a_damaged_or_stale_last_scan_gives_the_same_changes_and_is_kept_anew(
    source: Path, tmp_path: Path, damage: str
) -> None:
    for i in range(6):
        write(source, f"_posts/2022-03-0{i + 1}-x{i}.md", post(f"x{i}"))
    first = run(source, tmp_path / "c")
    assert first.cursor is not None
    path = site_folder(tmp_path / "c", first.site) / cache.SCAN
    version, print_, cursor, text, sizes, mtimes, others = marshal.loads(cache.unsealed(path.read_bytes()))
    if damage == "garbage":
        path.write_bytes(b"\x00garbage")
    elif damage == "reordered":
        columns = walkmod.Scan(text, sizes, mtimes).columns()
        backwards = as_scan((columns[0][::-1], columns[1][::-1], columns[2][::-1]))
        path.write_bytes(cache.sealed(marshal.dumps((version, print_, cursor, *backwards, others))))
    elif damage == "other cursor":
        path.write_bytes(cache.sealed(marshal.dumps((version, print_, (cursor[0], 99, 1), text, sizes, mtimes, others))))
    else:
        path.unlink()
    write(source, "_posts/2022-04-26-new.md", post("新"))
    changes = changes_since(source, tmp_path / "c", first.cursor)
    assert changes is not None and [p.title for p in changes.added] == ["新"] and not changes.changed_posts
    kept = cache.load_scan(path.parent, print_)
    assert kept is not None and kept.cursor == changes.cursor
    assert kept.scan.columns() == scan(site_of(source))


def test_bodies_rendered_after_the_last_scan_leave_it_usable(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_index_read: None
) -> None:
    monkeypatch.setattr(cache, "LAZY_FROM", 1)
    lazy = run(source, tmp_path / "c")
    assert lazy.cursor is not None and not any(p.rendered for p in lazy.posts)
    lazy.complete(lazy.posts[:2])  # "rendered only" records after the scan's position
    write(source, "_posts/2022-04-26-new.md", post("新"))
    changes = changes_since(source, tmp_path / "c", lazy.cursor)
    assert changes is not None and [p.title for p in changes.added] == ["新"] and not changes.changed_posts
    # ... and from that run's position, with more rendered after it, again.
    later = run(source, tmp_path / "c", memo=False)
    later.complete(later.posts)
    write(source, "_posts/2022-04-27-newer.md", post("更新"))
    again = changes_since(source, tmp_path / "c", changes.cursor)
    assert again is not None and [p.title for p in again.added] == ["更新"]


def test_a_name_with_a_newline_is_listed_as_before(source: Path) -> None:
    write(source, "_posts/2022-03-01-a\nb.md", post("换行"))
    write(source, "_posts/x\n2022-03-02-not.md", post("不是"))
    paths = scan(site_of(source))[0]
    assert "_posts/2022-03-01-a\nb.md" in paths
    assert not any("not.md" in p for p in paths)
    assert len(paths) == 8


def test_a_scan_keeps_an_mtime_past_2262_as_a_wrapped_value_that_still_tells_changes(tmp_path: Path) -> None:
    far = (1 << 64) + 12345  # `touch -d 3000-01-01` is past what 64 bits of nanoseconds hold
    packed = walkmod.Scan("a" + walkmod.SEP, walkmod.stamps([1]), walkmod.stamps([far]))
    assert packed.columns() == (["a"], [1], [12345])
    later = walkmod.Scan("a" + walkmod.SEP, walkmod.stamps([1]), walkmod.stamps([far + 1]))
    assert cache.compare_scans(packed, later) == ([Entry("a", 1, 12346)], set(), set())
    assert walkmod.stamps([-5, 1 << 63]) == walkmod.stamps([-5, -(1 << 63)])  # wraps, as C's int64 would
