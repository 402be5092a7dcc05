"""Lazy cold runs: posts read up to their bodies, bodies rendered when first shown.

A cold collect of many changed files (``cache.LAZY_FROM``, forced to 0 here) reads each post up
to its body only; ``Collection.complete`` renders the bodies of the posts a feed, digest or
summary shows, stores them and records them in the cache, so no later run renders them again.
Whatever is shown must be exactly what a full (eager) collect gives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from cache_fixtures import no_memo  # noqa: F401 - autouse in this module
from corpus_copy import MAKE_SITE

from finews_feeds.config import Config, build_config
from finews_feeds.feeds import build as buildmod
from finews_feeds.feeds import render as feedmod
from finews_feeds.feeds.writer import MANIFEST
from finews_feeds.mail.digest import render_day
from finews_feeds.models import Collection, FileError, Post, Site
from finews_feeds.site import cache
from finews_feeds.site.cache import Outcome, collect_cached, parse_all
from finews_feeds.site.collector import Entry, collect, collect_site, summarize, walk
from finews_feeds.site.jekyll import resolve_site

NOW = datetime(2022, 5, 1, tzinfo=UTC)
DAY = date(2022, 4, 20)
DATA = Path(__file__).parent / "data"
CATEGORIES = {"cailianshe": {"title": "财联社新闻", "order": 10}, "sina": {"title": "新浪财经"}}

#: Files the generated site lacks: front matter that fills body-derived fields, markdown,
#: no category, a rejected and an unpublished file.
EXTRA = {
    "_posts/2022-04-19-with-excerpt.md": (
        "---\ntitle: 有摘要\ndate: 2022-04-19 10:00:00 +0800\ncategories: yicai\nexcerpt: 前言里的摘要。\n---\n"
        "<p>正文第一段，不是摘要。</p>\n<p class=\"em_media\">（文章来源：第一财经）</p>\n"
    ),
    "_posts/2022-04-19-with-description.md": (
        "---\ntitle: 有描述\ndate: 2022-04-19 11:00:00 +0800\ncategories: [sina, 宏观]\ntags: [央行, 汇率]\n"
        "description: 描述文字。\nauthor: 张三\nlast_modified_at: 2022-04-21 08:00:00 +0800\n---\n"
        "<p>正文<img src=\"/img/body.jpg\">。</p>\n"
    ),
    "_posts/2022-04-19-with-image.md": (
        "---\ntitle: 有图\ndate: 2022-04-19 12:00:00 +0800\ncategories: cailianshe\nimage: /img/cover.png\n---\n"
        "<p>正文里另有一张图<img src=\"/img/other.jpg\">。</p>\n"
    ),
    "_posts/2022-04-19-no-category.md": (
        "---\ntitle: 无分类\ndate: 2022-04-19 13:00:00 +0800\n---\n<p>没有分类的文章。</p>\n"
    ),
    "_posts/2022-04-19-markdown.md": (
        "---\ntitle: Markdown 文章\ndate: 2022-04-19 14:00:00 +0800\ncategories: xinhua\n---\n"
        "# 标题\n\n第一段，有[链接](/x/y.html)。\n\n![图](/img/md.png)\n\n（文章来源：新华社）\n"
    ),
    "_posts/2022-04-19-broken.md": "---\ntitle: [\n---\n<p>坏的前言。</p>\n",
    "_posts/2022-04-19-draft.md": "---\ntitle: 草稿\npublished: false\n---\n<p>不发布。</p>\n",
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 generated posts, the generator's hostile files, and :data:`EXTRA` (never changed)."""
    root = tmp_path_factory.mktemp("lazy") / "site"
    subprocess.run([sys.executable, str(MAKE_SITE), "--seed", "1", "--posts", "60", "--edge-cases", str(root)],
                   check=True, stdout=subprocess.DEVNULL)
    for name, text in EXTRA.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def site_dir(base_site: Path, tmp_path: Path) -> Path:
    """A copy of the site that a test may edit."""
    return Path(shutil.copytree(base_site, tmp_path / "site"))


@pytest.fixture
def lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cold run is lazy, however few files changed."""
    monkeypatch.setattr(cache, "LAZY_FROM", 0)


@dataclasses.dataclass
class Reads:
    """Files parsed in this process: fully or up to their bodies (``_pack``), or finished
    (``_finish_front``: only the body of a file read up to it)."""

    packed: list[tuple[str, bool]] = dataclasses.field(default_factory=list)
    finished: list[str] = dataclasses.field(default_factory=list)

    def clear(self) -> None:
        self.packed.clear()
        self.finished.clear()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads()
    pack, finish = cache._pack, cache._finish_front

    def counting_pack(entry: Entry, site: Site, lazy: bool = False) -> tuple[Entry, Outcome, bytes | None]:
        seen.packed.append((entry.path, lazy))
        return pack(entry, site, lazy)

    def counting_finish(entry: Entry, post: Post, site: Site) -> tuple[Entry, Outcome, bytes | None]:
        seen.finished.append(entry.path)
        return finish(entry, post, site)

    monkeypatch.setattr(cache, "_pack", counting_pack)
    monkeypatch.setattr(cache, "_finish_front", counting_finish)
    return seen


# --------------------------------------------------------------------------- helpers


def config_of(root: Path, tmp: Path, name: str, *, cached: bool = True) -> Config:
    return build_config({
        "site": {"source": str(root), "cache_dir": str(tmp / f"cache-{name}") if cached else ""},
        "feeds": {"output": str(tmp / f"out-{name}")},
        "categories": CATEGORIES,
    })


def site_of(root: Path) -> Site:
    return resolve_site(config_of(root, root, "unused", cached=False))


def cold(root: Path, cache_dir: Path, workers: int | None = 1) -> Collection:
    cache.forget()
    return collect_cached(site_of(root), cache_dir, NOW, workers=workers)


def full(root: Path) -> Collection:
    """The reference: every file read and rendered, no cache."""
    return collect(site_of(root), None, NOW)


def unrendered(post: Post, site: Site) -> Post:
    """``post`` (fully parsed) as a read up to its body gives it."""
    return dataclasses.replace(
        post,
        summary=post.excerpt or post.description or "",
        image=image_of(post),
        source=site.category_title(post.categories[0]) if post.categories else site.title,
        content_hash="",
    )


def image_of(post: Post) -> str | None:
    """The front-matter image of the EXTRA post that names one; no other post names one."""
    return "https://finews.withounder.com/img/cover.png" if post.slug == "with-image" else None


def files_under(root: Path) -> dict[str, bytes]:
    """Every file a build wrote under ``root``, the manifest included; not the other hidden
    files of the build's own bookkeeping (its lock; any record naming its collector cache,
    which differs between two caches of the same site)."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    return {name: data for name, data in files.items() if not name.startswith(".") or name == MANIFEST}


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- 1. cold lazy collect, then complete


def test_site_has_what_the_tests_need(base_site: Path) -> None:
    reference = full(base_site)
    slugs = {p.slug for p in reference.posts}
    assert len(reference.posts) == 60 + 10 + 5  # generated, edge-case valid posts (not the future one), EXTRA posts
    assert {"with-excerpt", "with-description", "with-image", "no-category", "markdown",
            "edge-bom-crlf", "edge-control-chars", "edge-empty-body", "edge-huge"} <= slugs
    assert {e.path for e in reference.errors} >= {"_posts/2022-04-19-broken.md", "_posts/2022-04-20-edge-bad-yaml.md"}


def test_lazy_cold_collect_leaves_bodies_unrendered_with_front_matter_fields_only(
    site_dir: Path, tmp_path: Path, lazy: None, reads: Reads
) -> None:
    collection = cold(site_dir, tmp_path / "c")
    reference = full(site_dir)
    assert sorted(reads.packed) == sorted((e.path, True) for e in walk(collection.site))
    assert reads.finished == []
    assert [p.rendered for p in collection.posts] == [False] * len(reference.posts)
    assert {p.content_hash for p in collection.posts} == {""}
    assert collection.posts == [unrendered(p, collection.site) for p in reference.posts]
    assert collection.errors == reference.errors
    by_slug = {p.slug: p for p in collection.posts}
    assert (by_slug["with-excerpt"].summary, by_slug["with-excerpt"].source) == ("前言里的摘要。", "yicai")
    assert by_slug["with-description"].summary == "描述文字。"
    assert by_slug["with-image"].image == "https://finews.withounder.com/img/cover.png"
    assert by_slug["with-image"].source == "财联社新闻"
    assert by_slug["no-category"].source == collection.site.title
    assert by_slug["markdown"].summary == "" and by_slug["markdown"].image is None


def test_complete_equals_a_full_collect_post_for_post_and_in_content(
    site_dir: Path, tmp_path: Path, lazy: None, reads: Reads
) -> None:
    collection = cold(site_dir, tmp_path / "c")
    reference = full(site_dir)
    reads.clear()
    completed = collection.complete(collection.posts)
    assert completed == reference.posts
    assert all(p.rendered for p in completed)
    assert [collection.content(p) for p in completed] == [reference.content(p) for p in reference.posts]
    # Unchanged files: only their bodies were rendered, the front matter was not parsed again.
    assert sorted(reads.finished) == sorted(p.path for p in reference.posts)
    assert reads.packed == []
    by_slug = {p.slug: p for p in completed}
    assert by_slug["with-excerpt"].source == "第一财经"  # from the body's source line
    assert by_slug["with-description"].image == "https://finews.withounder.com/img/body.jpg"
    assert by_slug["with-image"].image == "https://finews.withounder.com/img/cover.png"  # front matter wins
    assert by_slug["markdown"].summary.startswith("标题") and by_slug["markdown"].source == "新华社"


def test_complete_keeps_the_order_given_and_leaves_rendered_posts_alone(
    site_dir: Path, tmp_path: Path, lazy: None, reads: Reads
) -> None:
    collection = cold(site_dir, tmp_path / "c")
    reference = {p.path: p for p in full(site_dir).posts}
    some = collection.posts[10:20][::-1] + collection.posts[:3]
    first = collection.complete(some)
    assert first == [reference[p.path] for p in some]
    reads.clear()
    again = collection.complete(first + collection.posts[3:5])
    assert again == [reference[p.path] for p in first + collection.posts[3:5]]
    assert sorted(reads.finished) == sorted(p.path for p in collection.posts[3:5])
    assert collection.complete([]) == []


def test_an_unrendered_post_still_gets_its_content(site_dir: Path, tmp_path: Path, lazy: None) -> None:
    collection = cold(site_dir, tmp_path / "c")
    reference = full(site_dir)
    assert [collection.content(p) for p in collection.posts] == [reference.content(p) for p in reference.posts]


# --------------------------------------------------------------------------- 2. completed posts are kept


def test_completed_posts_come_back_rendered_from_a_new_process_without_parsing(
    site_dir: Path, tmp_path: Path, lazy: None, reads: Reads
) -> None:
    collection = cold(site_dir, tmp_path / "c")
    completed = collection.complete(collection.posts)
    reads.clear()
    warm = cold(site_dir, tmp_path / "c")
    assert (reads.packed, reads.finished) == ([], [])
    assert warm.posts == completed == full(site_dir).posts
    assert all(p.rendered for p in warm.posts)
    # The bodies come from the bodies file: not even the file is needed any more.
    expected = {p.path: collection.content(p) for p in completed}
    for post in warm.posts:
        (site_dir / post.path).unlink()
    assert {p.path: warm.content(p) for p in warm.posts} == expected
    assert warm.complete(warm.posts) == warm.posts
    assert (reads.packed, reads.finished) == ([], [])


def test_only_the_completed_posts_are_kept_rendered(site_dir: Path, tmp_path: Path, lazy: None, reads: Reads) -> None:
    collection = cold(site_dir, tmp_path / "c")
    shown = collection.complete(collection.posts[5:12])
    reads.clear()
    warm = cold(site_dir, tmp_path / "c")
    assert (reads.packed, reads.finished) == ([], [])
    assert warm.posts[5:12] == shown
    assert [p.rendered for p in warm.posts] == [5 <= i < 12 for i in range(len(warm.posts))]
    assert warm.posts[:5] == collection.posts[:5] and warm.posts[12:] == collection.posts[12:]
    # The rest is completed later, once, and kept too.
    assert warm.complete(warm.posts) == full(site_dir).posts
    assert sorted(reads.finished) == sorted(p.path for i, p in enumerate(warm.posts) if not 5 <= i < 12)
    reads.clear()
    assert all(p.rendered for p in cold(site_dir, tmp_path / "c").posts)
    assert (reads.packed, reads.finished) == ([], [])


def test_completion_in_the_same_process_reaches_the_next_run(site_dir: Path, tmp_path: Path, lazy: None,
                                                             reads: Reads) -> None:
    collection = cold(site_dir, tmp_path / "c")
    completed = collection.complete(collection.posts)
    reads.clear()
    memo = collect_cached(site_of(site_dir), tmp_path / "c", NOW, workers=1)  # memo kept: no forget()
    assert memo.posts == completed
    assert (reads.packed, reads.finished) == ([], [])


# --------------------------------------------------------------------------- 3. a file edited in between


def test_a_file_edited_between_collect_and_complete_is_parsed_again_in_full(
    site_dir: Path, tmp_path: Path, lazy: None, reads: Reads
) -> None:
    collection = cold(site_dir, tmp_path / "c")
    target = next(p for p in collection.posts if p.slug == "with-excerpt")
    old_size = (site_dir / target.path).stat().st_size
    write(site_dir / target.path, "---\ntitle: 改过的标题\ndate: 2022-04-19 10:00:00 +0800\ncategories: yicai\n---\n"
                                  "<p>改过的正文，比原来的短。</p>\n")
    assert (site_dir / target.path).stat().st_size != old_size
    reads.clear()
    index = collection.posts.index(target)
    completed = collection.complete(collection.posts)
    assert reads.packed == [(target.path, False)]
    edited = completed[index]
    assert (edited.path, edited.title, edited.summary, edited.excerpt) == (target.path, "改过的标题", "改过的正文，比原来的短。", None)
    assert edited.rendered and edited.source == "yicai"
    assert collection.content(edited) == "<p>改过的正文，比原来的短。</p>"
    reference = full(site_dir)
    assert completed[:index] + completed[index + 1:] == [p for p in reference.posts if p.path != target.path]
    assert edited == next(p for p in reference.posts if p.path == target.path)
    # The next run sees the new size and reads the file again: the same post.
    reads.clear()
    again = cold(site_dir, tmp_path / "c")
    assert [path for path, _ in reads.packed] == [target.path]
    assert again.complete(again.posts) == reference.posts


def test_a_file_removed_or_unpublished_before_complete_is_shown_unrendered(
    site_dir: Path, tmp_path: Path, lazy: None, caplog: pytest.LogCaptureFixture
) -> None:
    collection = cold(site_dir, tmp_path / "c")
    gone, hidden = collection.posts[0], collection.posts[1]
    (site_dir / gone.path).unlink()
    write(site_dir / hidden.path, "---\ntitle: 撤下\npublished: false\n---\n")
    with caplog.at_level(logging.WARNING, logger="finews_feeds.site.cache"):
        completed = collection.complete(collection.posts[:3])
    assert completed[:2] == [gone, hidden]
    assert completed[2] == next(p for p in full(site_dir).posts if p.path == collection.posts[2].path)
    assert f"{gone.path}: cannot read: No such file or directory" in caplog.text
    assert f"{hidden.path}: no longer published" in caplog.text
    again = cold(site_dir, tmp_path / "c")
    assert gone.path not in {p.path for p in again.posts} and hidden.path not in {p.path for p in again.posts}


# --------------------------------------------------------------------------- 4. forked parse


Result = tuple[Entry, Outcome, bytes | None]


def results(items: Any, site: Site, workers: int, lazy: bool = False) -> set[Result]:
    out = list(parse_all(items, site, workers, lazy=lazy))
    assert len(out) == len(items)
    return set(out)


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[list[int]]:
    """Parse in forked children from one file on; the list counts the forked parses."""
    calls: list[int] = []
    original = cache._parse_forked

    def spy(items: Any, site: Site, count: int, lazy: bool) -> Iterator[Result]:
        calls.append(count)
        return original(items, site, count, lazy)

    monkeypatch.setattr(cache, "PARALLEL_FROM", 1)
    monkeypatch.setattr(cache, "_BATCH", 2)  # many batches, and a child's results in several packs
    monkeypatch.setattr(cache, "_PACK_EVERY", 3)
    monkeypatch.setattr(cache, "_parse_forked", spy)
    monkeypatch.setattr("finews_feeds.site.cache.threading.active_count", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="finews_feeds.site.cache"):
        yield calls
    assert "child process" not in caplog.text  # every share came back from its child


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("lazy_parse", [False, True], ids=["full", "lazy"])
def test_forked_parse_gives_the_same_outcomes_as_the_in_process_one(
    base_site: Path, forked: list[int], workers: int, lazy_parse: bool
) -> None:
    site = site_of(base_site)
    entries = walk(site)
    here = results(entries, site, 1, lazy_parse)
    assert forked == []
    there = results(entries, site, workers, lazy_parse)
    assert forked == [workers]
    assert there == here
    outcomes = [o for _, o, _ in here]
    assert any(isinstance(o, FileError) for o in outcomes)
    assert any(o is None for o in outcomes)
    assert "_posts/2022-04-19-draft.md" in {e.path for e, o, _ in here if o is None}
    posts = [o for o in outcomes if isinstance(o, Post)]
    assert posts and all(p.rendered is not lazy_parse for p in posts)
    assert all((html is None) is lazy_parse for _, o, html in here if isinstance(o, Post))


@pytest.mark.parametrize("workers", [2, 3])
def test_forked_finish_of_posts_read_up_to_their_bodies_gives_the_full_parse(
    base_site: Path, forked: list[int], workers: int
) -> None:
    site = site_of(base_site)
    entries = walk(site)
    fronts = [(e, o) for e, o, _ in results(entries, site, 1, True) if isinstance(o, Post)]
    eager = {(e, o, html) for e, o, html in results(entries, site, 1, False) if isinstance(o, Post)}
    assert results(fronts, site, 1) == eager
    assert results(fronts, site, workers) == eager
    assert forked == [workers]


@pytest.mark.parametrize("workers", [2, 3])
def test_what_a_failed_child_took_is_parsed_here(base_site: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture, workers: int) -> None:
    site = site_of(base_site)
    entries = walk(site)
    here = results(entries, site, 1)
    monkeypatch.setattr(cache, "PARALLEL_FROM", 1)
    monkeypatch.setattr(cache, "_BATCH", 1)
    monkeypatch.setattr("finews_feeds.site.cache.threading.active_count", lambda: 1)

    parent = os.getpid()
    pack_item = cache._pack_item
    calls: list[int] = []

    def only_here(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() != parent:
            raise RuntimeError("a child that dies after taking work")
        if not calls:
            time.sleep(0.3)  # the children take batches meanwhile
        calls.append(1)
        return pack_item(*args, **kwargs)

    monkeypatch.setattr(cache, "_pack_item", only_here)
    with caplog.at_level(logging.WARNING, logger="finews_feeds.site.cache"):
        assert results(entries, site, workers) == here
    assert caplog.text.count("parsing in a child process failed; parsing what it took here") == workers - 1


def test_forked_lazy_cold_collect_then_forked_complete_equals_a_full_collect(
    site_dir: Path, tmp_path: Path, lazy: None, forked: list[int]
) -> None:
    collection = cold(site_dir, tmp_path / "c", workers=2)
    assert forked == [2]
    assert not any(p.rendered for p in collection.posts)
    reference = full(site_dir)
    assert collection.posts == [unrendered(p, collection.site) for p in reference.posts]
    assert collection.errors == reference.errors
    completed = collection.complete(collection.posts)
    assert forked == [2, 2]
    assert completed == reference.posts
    assert [collection.content(p) for p in completed] == [reference.content(p) for p in reference.posts]
    assert cold(site_dir, tmp_path / "c", workers=2).posts == reference.posts


# --------------------------------------------------------------------------- 5. feeds


def build(config: Config, *, workers: int | None = 1) -> buildmod.BuildReport:
    cache.forget()
    return buildmod.run_build(config, now=NOW, workers=workers)


@pytest.mark.parametrize("reference_kind", ["uncached", "cached"])
def test_feeds_from_a_lazy_collection_are_byte_identical_to_feeds_from_a_full_one(
    site_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: Reads, reference_kind: str
) -> None:
    reference_config = config_of(site_dir, tmp_path, "full", cached=reference_kind == "cached")
    expected = build(reference_config)
    assert all(lazy is False for _, lazy in reads.packed)
    reads.clear()
    monkeypatch.setattr(cache, "LAZY_FROM", 0)
    lazy_config = config_of(site_dir, tmp_path, "lazy")
    report = build(lazy_config)
    assert reads.packed and all(lazy is True for _, lazy in reads.packed)
    assert reads.finished  # the shown posts were completed
    assert (report.posts, report.feeds, report.rejected) == (expected.posts, expected.feeds, expected.rejected)
    assert report.written == expected.written
    lazy_files = files_under(tmp_path / "out-lazy")
    full_files = files_under(tmp_path / "out-full")
    assert sorted(lazy_files) == sorted(full_files)
    assert MANIFEST in lazy_files and len(lazy_files) > 100
    assert lazy_files == full_files
    # The manifest too: same signatures, so a later build of either writes nothing.
    assert lazy_files[MANIFEST] == full_files[MANIFEST]
    reads.clear()
    again = build(lazy_config)
    assert (again.feeds_written, again.files_written, again.files_removed) == (0, 0, 0)
    assert (reads.packed, reads.finished) == ([], [])


def test_feeds_from_a_forked_lazy_collection_rendered_by_workers_are_byte_identical(
    site_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: list[int]
) -> None:
    build(config_of(site_dir, tmp_path, "full", cached=False))
    monkeypatch.setattr(cache, "LAZY_FROM", 0)
    monkeypatch.setattr(buildmod, "PARALLEL_FROM", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the collect's parse and completion fork too
    report = build(config_of(site_dir, tmp_path, "lazy"), workers=2)
    assert forked == [2, 2]  # the cold parse, then the completion of the shown posts
    assert report.feeds_written == report.feeds
    lazy_files = files_under(tmp_path / "out-lazy")
    assert lazy_files == files_under(tmp_path / "out-full")


def test_feeds_a_failed_render_child_took_are_rendered_here(
    site_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    build(config_of(site_dir, tmp_path, "full", cached=False))
    parent = os.getpid()
    run = buildmod._Renderer.run

    def only_here(self: Any, spec: Any, posts: Any) -> Any:
        if os.getpid() != parent:
            raise RuntimeError("a child that dies after taking feeds")
        return run(self, spec, posts)

    monkeypatch.setattr(buildmod._Renderer, "run", only_here)
    render_listings = feedmod.render_listings

    def slowly(*args: Any) -> Any:
        time.sleep(0.5)  # the children take feeds meanwhile (this process renders its listings first)
        return render_listings(*args)

    monkeypatch.setattr(feedmod, "render_listings", slowly)
    monkeypatch.setattr(buildmod, "PARALLEL_FROM", 1)
    monkeypatch.setattr("finews_feeds.forks.threading.active_count", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="finews_feeds.feeds.build"):
        report = build(config_of(site_dir, tmp_path, "forked"), workers=3)
    assert caplog.text.count("rendering feeds in a child process failed; rendering what it took here") == 2
    assert report.feeds_written == report.feeds
    assert files_under(tmp_path / "out-forked") == files_under(tmp_path / "out-full")


def test_a_lazy_build_then_an_edit_rewrites_the_same_files_as_a_full_build(
    site_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_config = config_of(site_dir, tmp_path, "full")
    build(full_config)
    monkeypatch.setattr(cache, "LAZY_FROM", 0)
    lazy_config = config_of(site_dir, tmp_path, "lazy")
    build(lazy_config)
    target = site_dir / "_posts" / "2022-04-19-with-image.md"
    write(target, target.read_text(encoding="utf-8").replace("正文里另有一张图", "正文改了，另有一张图"))
    monkeypatch.setattr(cache, "LAZY_FROM", 1000)
    expected = build(full_config)
    monkeypatch.setattr(cache, "LAZY_FROM", 0)
    report = build(lazy_config)
    assert report.written == expected.written and report.written
    assert files_under(tmp_path / "out-lazy") == files_under(tmp_path / "out-full")


# --------------------------------------------------------------------------- 6. summary (`check`), digest


def test_summary_of_a_lazy_collection_equals_that_of_a_full_one(site_dir: Path, tmp_path: Path, lazy: None) -> None:
    collection = cold(site_dir, tmp_path / "c")
    reference = full(site_dir)
    summary = summarize(collection)
    assert summary == summarize(reference)
    assert {p["source"] for p in summary["posts"]} >= {"第一财经", "新华社"}
    assert all(p.rendered for p in cold(site_dir, tmp_path / "c").posts)


def test_digest_of_a_lazy_collection_equals_that_of_a_full_one(site_dir: Path, tmp_path: Path, lazy: None) -> None:
    collector: Callable[[Config], Collection] = lambda config: collect_site(config, NOW)  # noqa: E731
    _, lazy_variant = render_day(config_of(site_dir, tmp_path, "lazy"), DAY, collector)
    _, full_variant = render_day(config_of(site_dir, tmp_path, "full", cached=False), DAY, collector)
    assert lazy_variant is not None and full_variant is not None
    assert lazy_variant.count == full_variant.count > 0
    assert (lazy_variant.subject, lazy_variant.html, lazy_variant.text) == (
        full_variant.subject, full_variant.html, full_variant.text)


# --------------------------------------------------------------------------- a body that fails to render

#: A link that markup.absolute_url cannot parse (urlsplit: "Invalid IPv6 URL"). A full read
#: rejects the file ("cannot be read (ValueError ...)"); a read up to the body does not see it.
BAD_LINK_POST = "---\ntitle: 坏链接\ndate: 2022-04-19 15:00:00 +0800\ncategories: cailianshe\n---\n" \
                '<p>正文<a href="ftp://[oops">链接</a>。</p>\n'


def test_a_body_that_fails_to_render_is_rejected_by_a_lazy_build_as_by_a_full_one(
    site_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (site_dir / "_posts" / "2022-04-19-bad-link.md").write_text(BAD_LINK_POST, encoding="utf-8")
    expected = build(config_of(site_dir, tmp_path, "full", cached=False))
    monkeypatch.setattr(cache, "LAZY_FROM", 0)
    lazy_config = config_of(site_dir, tmp_path, "lazy")
    report = build(lazy_config)
    assert report.rejected == expected.rejected
    assert files_under(tmp_path / "out-lazy") == files_under(tmp_path / "out-full")
    monkeypatch.setattr(cache, "LAZY_FROM", 1000)
    again = build(lazy_config)
    assert (again.rejected, again.files_written) == (expected.rejected, 0)
