"""End to end: the demo site, the sample post (golden files) and the edge-case site through
collector, feeds and writer; incremental rebuilds; the `build` command."""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest
from click.testing import CliRunner
from corpus_copy import MAKE_SITE
from feed_checks import atom_problems, json_feed_problems, rss_problems

from finews_feeds.cli import cli
from finews_feeds.config import Config, build_config
from finews_feeds.feeds import build as buildmod
from finews_feeds.feeds.writer import LOCK, MANIFEST
from finews_feeds.site import cache as cache_module
from finews_feeds.site import collector
from finews_feeds.site.collector import collect_site

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
DEMO = ROOT / "demo-site"
SAMPLE = DATA / "feeds" / "sample-site"
GOLDEN = DATA / "feeds" / "golden"
CATEGORIES = {"cailianshe": {"title": "财联社新闻", "order": 10}}
NEW_POST = """---
title: "新文章"
date: 2022-04-21 08:00:00 +0800
categories: cailianshe
tags: [财联社新闻, 全新标签]
---
<p>新文章正文。<img src="/img/a.jpg"></p>
"""


def config_for(site: Path, tmp: Path, **feeds: object) -> Config:
    # The demo site's authors are its sources, as config/finews.toml sets it (issue 18). Archive
    # pages (issue 17) are tested in test_archives.py, the demo site's among them: these tests
    # count the feeds' own files.
    return build_config({"site": {"source": str(site), "cache_dir": str(tmp / "cache")},
                         "feeds": {"output": str(tmp / "out"), "author_fallback": "source", "archives": False,
                                   **feeds},
                         "categories": CATEGORIES})


def files_under(root: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def parse(data: bytes) -> feedparser.FeedParserDict:
    # Sanitizing is feedparser's slow part and no part of well-formedness (bozo).
    return feedparser.parse(data, sanitize_html=False, resolve_relative_uris=False)


def check_every_file(out: Path) -> dict[str, list[str]]:
    """Parse and validate every feed under ``out``: {relative path: entry ids}."""
    ids: dict[str, list[str]] = {}
    for path in sorted(out.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        rel = path.relative_to(out).as_posix()
        if path.name in ("rss.xml", "atom.xml"):
            parsed = parse(data)
            assert parsed.bozo == 0, (path, parsed.get("bozo_exception"))
            problems = rss_problems(data) if path.name == "rss.xml" else atom_problems(data)
            assert problems == [], path
            ids[rel] = [e.id for e in parsed.entries]
        elif path.name == "feed.json":
            assert json_feed_problems(data) == [], path
            ids[rel] = [item["id"] for item in json.loads(data)["items"]]
    return ids


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, buildmod.BuildReport, Config]]:
    tmp = tmp_path_factory.mktemp("demo")
    config = config_for(DEMO, tmp)
    yield tmp / "out", buildmod.run_build(config), config


@pytest.fixture(scope="module")
def edge_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("edge") / "site"
    subprocess.run([sys.executable, str(MAKE_SITE), str(site), "--posts", "40", "--edge-cases"], check=True,
                   stdout=subprocess.DEVNULL)
    return site


# --------------------------------------------------------------------------- demo site


def test_demo_site_feeds_hold_the_right_entries_in_every_format(demo_build: tuple[Path, buildmod.BuildReport, Config]) -> None:
    out, report, config = demo_build
    posts = collect_site(config).posts
    manifest = json.loads((out / MANIFEST).read_bytes())
    slugs = manifest["slugs"]
    expected: dict[str, list[str]] = {"": [p.id for p in posts[:50]]}
    for kind, folder in (("category", "categories"), ("tag", "tags")):
        for name, slug in slugs[kind].items():
            chosen = [p.id for p in posts if name in (p.categories if kind == "category" else p.tags)]
            expected[f"{folder}/{slug}"] = chosen[:50]
    assert report.feeds == len(expected) == 94
    assert report.posts == 301 and report.rejected == []
    found = check_every_file(out)
    assert found == {f"{folder}/{name}".lstrip("/"): ids for folder, ids in expected.items()
                     for name in ("rss.xml", "atom.xml", "feed.json")}


def test_demo_site_writes_listings_and_category_display_names(demo_build: tuple[Path, buildmod.BuildReport, Config]) -> None:
    out, report, _ = demo_build
    assert sorted(p.name for p in out.iterdir()) == [
        LOCK, MANIFEST, "_feeds_head.html", "_feeds_head_tags.html", "atom.xml", "categories", "feed.html", "feed.json",
        "feed.xsl", "feeds.opml", "index.html", "rss.xml", "tags",
    ]
    parsed = parse((out / "categories" / "cailianshe" / "atom.xml").read_bytes())
    assert parsed.feed.title == "finews 财经新闻 · 财联社新闻"
    assert report.files_written == 94 * 4 + 5  # three formats and a page a feed, five listings


def test_a_rebuild_without_changes_writes_nothing_and_keeps_mtimes(demo_build: tuple[Path, buildmod.BuildReport, Config]) -> None:
    out, _, config = demo_build
    before = files_under(out)
    report = buildmod.run_build(config)
    assert (report.feeds_written, report.feeds_unchanged, report.files_written, report.files_removed) == (0, 94, 0, 0)
    assert files_under(out) == before
    full = buildmod.run_build(config, full=True)
    assert (full.feeds_written, full.files_written) == (0, 0)
    assert files_under(out) == before


# --------------------------------------------------------------------------- incremental


def test_one_new_post_rewrites_only_the_feeds_that_contain_it_then_its_removal_removes_its_tag(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    config = config_for(site, tmp_path)
    buildmod.run_build(config)
    post = site / "_posts" / "2022-04-21-new.md"
    post.write_text(NEW_POST, encoding="utf-8")

    report = buildmod.run_build(config)
    feeds = ["", "categories/cailianshe/", "tags/财联社新闻/", "tags/全新标签/"]
    assert report.written == sorted(
        [f"{f}{n}" for f in feeds for n in ("atom.xml", "feed.json", "rss.xml")]
        + [f"{f}index.html" for f in feeds[1:]] + ["feed.html"]  # the feeds' pages (page.py)
        + ["_feeds_head_tags.html", "feeds.opml", "index.html"]
    )
    assert (report.feeds_written, report.feeds_unchanged, report.feeds_removed) == (4, 91, 0)
    newest = parse((tmp_path / "out" / "tags" / "全新标签" / "rss.xml").read_bytes()).entries
    assert [e.title for e in newest] == ["新文章"]
    # Relative URLs in a post become absolute: readers ignore xml:base.
    item = json.loads((tmp_path / "out" / "tags" / "全新标签" / "feed.json").read_bytes())["items"][0]
    assert item["image"] == "https://finews.withounder.com/img/a.jpg"
    assert 'src="https://finews.withounder.com/img/a.jpg"' in item["content_html"]

    post.unlink()
    report = buildmod.run_build(config)
    assert (report.feeds_written, report.feeds_removed, report.files_removed) == (3, 1, 4)  # 3 formats and its page
    assert not (tmp_path / "out" / "tags" / "全新标签").exists()
    assert "feeds: 94 (3 written, 91 unchanged, 1 removed)" in report.summary()


def test_an_edited_post_rewrites_its_feeds(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    config = config_for(site, tmp_path)
    buildmod.run_build(config)
    target = site / "_posts" / "2022-04-20-NW202204202349219681.md"
    target.write_text(target.read_text(encoding="utf-8").replace("昨日下午", "昨天下午"), encoding="utf-8")
    report = buildmod.run_build(config)
    assert sorted({path.rsplit("/", 1)[0] for path in report.written if "/" in path}) == [
        "categories/cailianshe", "tags/财联社新闻",
    ]
    assert "昨天下午" in (tmp_path / "out" / "tags" / "财联社新闻" / "atom.xml").read_text(encoding="utf-8")


def test_worker_processes_write_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, str(MAKE_SITE), str(site), "--posts", "800", "--seed", "4"], check=True,
                   stdout=subprocess.DEVNULL)
    one = buildmod.run_build(config_for(site, tmp_path / "one"), parallel=False)
    both = buildmod.run_build(config_for(site, tmp_path / "two"))
    # Enough to read, render and write that every stage hands batches to a worker.
    assert both.read >= collector.PARALLEL_FROM and both.feeds_written >= buildmod.PARALLEL_FROM
    assert (one.feeds_written, one.files_written) == (both.feeds_written, both.files_written)
    assert published(tmp_path / "one" / "out") == published(tmp_path / "two" / "out")


def test_formats_dropped_from_the_config_are_removed(tmp_path: Path) -> None:
    buildmod.run_build(config_for(SAMPLE, tmp_path))
    report = buildmod.run_build(config_for(SAMPLE, tmp_path, formats=["atom"]))
    assert report.files_removed == 6
    assert sorted(p.name for p in (tmp_path / "out" / "tags" / "财联社新闻").iterdir()) == ["atom.xml", "index.html"]


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("name", ["rss.xml", "atom.xml", "feed.json", "categories/cailianshe/atom.xml", "feeds.opml",
                                  "_feeds_head.html"])
def test_sample_post_feeds_match_the_golden_files(tmp_path: Path, name: str) -> None:
    buildmod.run_build(config_for(SAMPLE, tmp_path))
    produced = (tmp_path / "out" / name).read_bytes()
    golden = GOLDEN / name.replace("/", "__")
    if os.environ.get("FINEWS_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(produced)
    assert produced == golden.read_bytes()


# --------------------------------------------------------------------------- edge cases


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.lstat().st_mtime_ns, p.lstat().st_size)
            for p in root.rglob("*") if not p.is_dir()}


def test_edge_case_site_stays_inside_the_output_folder_and_every_file_is_valid(tmp_path: Path, edge_site: Path) -> None:
    # The whole temporary tree, not only the output folder: a hostile slug or path that escaped
    # it would write next to it (its parent) or anywhere under the test's folder.
    work = tmp_path / "work"
    work.mkdir()
    site = work / "site"
    shutil.copytree(edge_site, site, symlinks=True)
    config = config_for(site, work)
    top = tmp_path
    before = _tree(top)
    report = buildmod.run_build(config)
    out = work / "out"
    created = {k: v for k, v in _tree(top).items() if before.get(k) != v}
    assert not [k for k in created if not k.startswith(("work/out/", "work/cache/"))]
    assert sorted(p.name for p in work.iterdir()) == ["cache", "out", "site"]
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
    tags = sorted(p.name for p in (out / "tags").iterdir())
    assert "tmp-pwned" in tags and "abs" in tags and "a-b" in tags
    assert not any(name in ("", ".", "..", "con") for name in tags)
    assert "etc" in {p.name for p in (out / "categories").iterdir()}
    assert len(check_every_file(out)) == report.feeds * 3
    assert {e.path for e in report.rejected} >= {"_posts/2022-04-20-edge-bad-yaml.md", "_posts/2022-04-20-edge-bad-date.md"}
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1
    atom = (out / "atom.xml").read_text(encoding="utf-8")
    assert "\x0b" not in atom and "\x1b" not in atom and "&lt;script&gt;" in atom and "<script>" not in atom


# --------------------------------------------------------------------------- the command


def _write_config(tmp_path: Path, site: Path, feeds: str = "") -> Path:
    path = tmp_path / "finews.toml"
    path.write_text(f'[site]\nsource = "{site}"\ncache_dir = "{tmp_path / "cache"}"\n\n[feeds]\noutput = "{tmp_path / "out"}"\n'
                    + feeds, encoding="utf-8")
    return path


def test_build_command_prints_the_summary_and_exits_0_even_with_rejected_files(tmp_path: Path, edge_site: Path) -> None:
    config = _write_config(tmp_path, DEMO)
    result = CliRunner().invoke(cli, ["--config", str(config), "build", "--site", str(edge_site)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("posts: ")
    assert "rejected files: " in result.stdout and "rejected files: 0" not in result.stdout
    assert "rejected _posts/2022-04-20-edge-bad-yaml.md: " in result.stderr


def test_build_command_strict_exits_1_on_rejected_files(tmp_path: Path, edge_site: Path) -> None:
    config = _write_config(tmp_path, edge_site)
    result = CliRunner().invoke(cli, ["--config", str(config), "build", "--strict"])
    assert result.exit_code == 1
    assert (tmp_path / "out" / "rss.xml").is_file()


def test_build_command_out_flag_overrides_the_config(tmp_path: Path) -> None:
    config = _write_config(tmp_path, SAMPLE)
    result = CliRunner().invoke(cli, ["--config", str(config), "build", "--out", str(tmp_path / "elsewhere"), "--full"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "tags" / "财联社新闻" / "feed.json").is_file()
    assert not (tmp_path / "out").exists()


def test_build_command_reports_an_unwritable_output_with_exit_4(tmp_path: Path) -> None:
    config = _write_config(tmp_path, SAMPLE)
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["--config", str(config), "build", "--out", str(tmp_path / "file" / "feeds")])
    assert result.exit_code == 4
    assert "error: cannot create the output folder" in result.stderr


def test_build_command_reports_a_missing_site_with_exit_3(tmp_path: Path) -> None:
    config = _write_config(tmp_path, tmp_path / "missing")
    result = CliRunner().invoke(cli, ["--config", str(config), "build"])
    assert result.exit_code == 3


def test_a_site_without_posts_still_gets_a_valid_empty_site_feed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "_posts").mkdir(parents=True)
    report = buildmod.run_build(config_for(site, tmp_path))
    assert (report.posts, report.feeds, report.feeds_written) == (0, 1, 1)
    assert check_every_file(tmp_path / "out") == {"rss.xml": [], "atom.xml": [], "feed.json": []}


# --------------------------------------------------------------------------- rebuild after new posts


def post_text(title: str, when: str, category: str = "cailianshe", tags: str = "[财联社新闻]") -> str:
    return f'---\ntitle: "{title}"\ndate: {when} +0800\ncategories: {category}\ntags: {tags}\n---\n<p>{title}的正文。</p>\n'


def same_as_a_full_build(site: Path, out: Path, tmp: Path) -> None:
    """``out`` holds byte for byte what a first build of ``site`` into a new folder writes (the
    build state aside: it names the cache it was made with)."""
    fresh = config_for(site, tmp)
    report = buildmod.run_build(fresh)
    assert not report.incremental
    assert published(out) == published(tmp / "out")


def copy_demo(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    return site


def test_new_posts_are_added_without_reading_the_site_and_give_the_files_of_a_full_build(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    config = config_for(site, tmp_path / "a")
    assert not buildmod.run_build(config).incremental
    posts = site / "_posts"
    # Newest of all, in the middle of a tag feed, older than every feed keeps (counts only),
    # a new category and a new tag, two posts at the same second (ordered by path).
    (posts / "2022-04-22-n1.md").write_text(post_text("最新", "2022-04-22 09:00:00"), encoding="utf-8")
    (posts / "2022-04-18-n2.md").write_text(post_text("中间", "2022-04-18 12:00:00", tags="[东方财富]"), encoding="utf-8")
    (posts / "2020-01-01-n3.md").write_text(post_text("很旧", "2020-01-01 08:00:00", "eastmoney"), encoding="utf-8")
    (posts / "2022-04-21-n4.md").write_text(post_text("新栏目", "2022-04-21 10:00:00", "newsource", "[全新标签, 新能源]"),
                                           encoding="utf-8")
    (posts / "2022-04-21-n5.md").write_text(post_text("同一秒", "2022-04-21 10:00:00", "newsource"), encoding="utf-8")
    report = buildmod.run_build(config)
    assert report.incremental
    assert report.posts == 306
    assert "categories/newsource/rss.xml" in report.written and "tags/全新标签/atom.xml" in report.written
    assert "categories/eastmoney/rss.xml" not in report.written  # the old post is past its limit
    same_as_a_full_build(site, tmp_path / "a" / "out", tmp_path / "b")
    again = buildmod.run_build(config)
    assert again.incremental and again.written == []


def test_a_new_post_in_existing_feeds_rewrites_the_index_page_but_not_the_outline_listings(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    out = tmp_path / "a" / "out"
    config = config_for(site, tmp_path / "a")
    buildmod.run_build(config)
    outline = ["feeds.opml", "_feeds_head.html", "_feeds_head_tags.html", "feed.xsl"]
    before = {name: (out / name).stat().st_mtime_ns for name in outline}
    (site / "_posts" / "2022-04-22-n1.md").write_text(post_text("最新", "2022-04-22 09:00:00"), encoding="utf-8")
    report = buildmod.run_build(config)
    assert report.incremental and "index.html" in report.written
    assert not set(outline) & set(report.written)
    assert {name: (out / name).stat().st_mtime_ns for name in outline} == before
    same_as_a_full_build(site, out, tmp_path / "b")
    # A post with a new tag starts a feed: the outline lists it.
    (site / "_posts" / "2022-04-22-n2.md").write_text(post_text("新标签", "2022-04-22 10:00:00", tags="[从未有过]"),
                                                     encoding="utf-8")
    report = buildmod.run_build(config)
    assert {"feeds.opml", "_feeds_head_tags.html", "index.html"} <= set(report.written)
    assert "从未有过" in (out / "feeds.opml").read_text(encoding="utf-8")
    # A removed outline file comes back though nothing else changed; so does a feed's file
    # (a feed the new post does not reach).
    (out / "feeds.opml").unlink()
    assert buildmod.run_build(config).written == ["feeds.opml"]
    (out / "categories" / "eastmoney" / "atom.xml").unlink()
    (site / "_posts" / "2022-04-22-n3.md").write_text(post_text("再一篇", "2022-04-22 11:00:00"), encoding="utf-8")
    report = buildmod.run_build(config)
    assert report.incremental and "categories/eastmoney/atom.xml" in report.written
    same_as_a_full_build(site, out, tmp_path / "c")


def test_an_edited_or_removed_post_rewrites_only_its_feeds_and_gives_the_files_of_a_full_build(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    config = config_for(site, tmp_path / "a")
    buildmod.run_build(config)
    target = sorted((site / "_posts").iterdir())[-1]
    target.write_text(target.read_text(encoding="utf-8").replace("title:", "title: 改过", 1), encoding="utf-8")
    edited = buildmod.run_build(config)
    assert edited.incremental and 0 < edited.feeds_written < 10
    same_as_a_full_build(site, tmp_path / "a" / "out", tmp_path / "b")
    target.unlink()
    removed = buildmod.run_build(config)
    assert removed.incremental and 0 < removed.feeds_written < 10
    same_as_a_full_build(site, tmp_path / "a" / "out", tmp_path / "c")
    assert buildmod.run_build(config).incremental


def test_a_new_rejected_or_unpublished_file_is_reported_and_changes_no_feed(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    config = config_for(site, tmp_path / "a")
    buildmod.run_build(config)
    (site / "_posts" / "2022-04-22-bad.md").write_text("---\ntitle: [\n---\n", encoding="utf-8")
    (site / "_posts" / "2022-04-22-off.md").write_text("---\ntitle: off\npublished: false\n---\n", encoding="utf-8")
    report = buildmod.run_build(config)
    assert report.incremental and report.written == []
    assert [e.path for e in report.rejected] == ["_posts/2022-04-22-bad.md"]


def test_a_future_post_waits_and_comes_out_on_its_day(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    config = config_for(site, tmp_path / "a")
    before = datetime(2022, 4, 25, tzinfo=UTC)
    buildmod.run_build(config, now=before)
    (site / "_posts" / "2022-05-01-later.md").write_text(post_text("未来", "2022-05-01 08:00:00"), encoding="utf-8")
    report = buildmod.run_build(config, now=before)
    assert report.incremental and report.written == [] and report.posts == 301
    assert buildmod.run_build(config, now=before).incremental
    due = buildmod.run_build(config, now=datetime(2022, 5, 2, tzinfo=UTC))
    assert due.incremental and due.posts == 302 and "rss.xml" in due.written
    same_as_a_full_build(site, tmp_path / "a" / "out", tmp_path / "b")


def test_bodies_rendered_by_another_command_between_builds_keep_the_next_build_incremental(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    config = config_for(site, tmp_path / "a")
    buildmod.run_build(config)
    collection = collect_site(config)
    assert len(collection.posts) == 301  # what `check` does: every body rendered
    (site / "_posts" / "2022-04-22-n1.md").write_text(post_text("最新", "2022-04-22 09:00:00"), encoding="utf-8")
    assert buildmod.run_build(config).incremental
    same_as_a_full_build(site, tmp_path / "a" / "out", tmp_path / "b")


def test_the_record_of_another_build_settings_or_cache_is_not_trusted(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    config = config_for(site, tmp_path / "a")
    buildmod.run_build(config)
    (site / "_posts" / "2022-04-22-n1.md").write_text(post_text("最新", "2022-04-22 09:00:00"), encoding="utf-8")
    # Other limits: another plan.
    assert not buildmod.run_build(config_for(site, tmp_path / "a", tag_limit=3)).incremental
    (site / "_posts" / "2022-04-22-n2.md").write_text(post_text("又一篇", "2022-04-22 10:00:00"), encoding="utf-8")
    # A manifest edited by hand (its checksum no longer holds).
    manifest = tmp_path / "a" / "out" / MANIFEST
    manifest.write_bytes(manifest.read_bytes().replace(b'"listings_signature":"', b'"listings_signature":"x'))
    assert not buildmod.run_build(config).incremental
    # A cache started afresh: not the one the last build saw.
    shutil.rmtree(tmp_path / "a" / "cache")
    (site / "_posts" / "2022-04-22-n3.md").write_text(post_text("第三篇", "2022-04-22 11:00:00"), encoding="utf-8")
    assert not buildmod.run_build(config).incremental
    same_as_a_full_build(site, tmp_path / "a" / "out", tmp_path / "b")


def test_full_flag_reads_the_whole_site(tmp_path: Path) -> None:
    site = copy_demo(tmp_path)
    config = config_for(site, tmp_path / "a")
    buildmod.run_build(config)
    assert not buildmod.run_build(config, full=True).incremental
    assert buildmod.run_build(config).incremental


# --------------------------------------------------------------------------- interrupted builds, damaged state
#
# A build may be killed at any moment (SIGKILL, a power cut, a full disk) and any file it keeps
# may be damaged; the next plain build must still write what a clean `--full` build of the same
# site writes, byte for byte, and leave nothing of the killed one behind.

# Runs the `finews-feeds` command line, dying (SIGKILL) or failing as a full disk does (ENOSPC)
# at the K-th rename of the run: every file the build writes, its intent and its manifest land by
# a rename, so K = 1, 2, ... visits every point of the write phase (the post cache is SQLite's to
# keep whole: its rows are written in transactions).
INTERRUPTER = """
import errno, os, signal, sys
K, MODE = int(sys.argv[1]), sys.argv[2]
calls = [0]
def interrupted(rename):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == K:
            if MODE == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return rename(*args, **kwargs)
    return call
os.replace, os.rename = interrupted(os.replace), interrupted(os.rename)
from finews_feeds.cli import main
sys.argv = ["finews-feeds", *sys.argv[3:]]
main()
"""
RETRACTED = "2022-04-21-retracted.md"


def published(out: Path) -> dict[str, bytes]:
    """What a build published: every file but its own bookkeeping (dot-files: manifest, state, lock)."""
    return {k: v[1] for k, v in files_under(out).items() if not any(part.startswith(".") for part in k.split("/"))}


def leftovers(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.name.endswith(".tmp")
                  or (p.is_dir() and not any(p.iterdir())))


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("small") / "site"
    subprocess.run([sys.executable, str(MAKE_SITE), str(site), "--posts", "40", "--seed", "2"], check=True,
                   stdout=subprocess.DEVNULL)
    return site


def test_a_build_killed_or_out_of_disk_at_any_write_is_repaired_by_the_next_plain_build(tmp_path: Path,
                                                                                        small_site: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(small_site, site)
    # Without the feeds' pages: they are files of a feed like its formats (the same records, the
    # same repair), and each one more write point costs this test a dozen builds.
    toml = _write_config(tmp_path, site, "pages = false\n")
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPTER, encoding="utf-8")
    retracted = site / "_posts" / RETRACTED
    # The retracted post reaches the site feed, its category's and a new tag's (a feed of its own).
    post = post_text("将被撤回的文章", "2022-04-21 08:00:00", tags="[撤回专用标签, 财联社新闻]")

    def build(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "finews_feeds", "--config", str(toml), "--log-level", "ERROR",
                               "build", *args], capture_output=True, text=True, cwd=tmp_path)

    assert build().returncode == 0
    shutil.copytree(tmp_path / "out", tmp_path / "start-out")
    shutil.copytree(tmp_path / "cache", tmp_path / "start-cache")
    without = published(tmp_path / "out")
    retracted.write_text(post, encoding="utf-8")
    assert build("--full").returncode == 0
    with_post = published(tmp_path / "out")
    assert with_post.keys() - without.keys() == {"tags/撤回专用标签/rss.xml", "tags/撤回专用标签/atom.xml",
                                                "tags/撤回专用标签/feed.json"}

    interrupted_while_writing = 0
    for mode in ("kill", "enospc"):
        for flags in (("--full",), ()):
            for k in range(1, 100):
                for name in ("out", "cache"):
                    shutil.rmtree(tmp_path / name)
                    shutil.copytree(tmp_path / f"start-{name}", tmp_path / name)
                retracted.write_text(post, encoding="utf-8")
                run = subprocess.run([sys.executable, str(script), str(k), mode, "--config", str(toml),
                                      "--log-level", "ERROR", "build", *flags], capture_output=True, cwd=tmp_path)
                if run.returncode == 0:
                    break  # fewer than k renames: every point was visited
                assert run.returncode == (-9 if mode == "kill" else 4), run.stderr
                if published(tmp_path / "out") not in (without, with_post):
                    interrupted_while_writing += 1
                # Retracted after the killed build (odd k), or kept (even k): either way the next
                # plain build, and the one after it, publish what a clean full build does.
                keep = k % 2 == 0
                if not keep:
                    retracted.unlink()
                for _ in range(2):
                    again = build()
                    assert again.returncode == 0, again.stderr
                    assert published(tmp_path / "out") == (with_post if keep else without), (mode, flags, k)
                assert leftovers(tmp_path / "out") == [], (mode, flags, k)
                assert again.stdout.startswith(f"posts: {41 if keep else 40}, ") and " 0 written" in again.stdout
    assert interrupted_while_writing >= 8  # the renames visited did fall between the feeds' writes


def _damaged(data: bytes, how: str) -> bytes:
    rng = random.Random(f"{how}:{len(data)}")
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "garbage":
        return rng.randbytes(max(len(data), 64))
    if how == "bit flips":
        if not data:
            return b"\x01"
        flipped = bytearray(data)
        for _ in range(8):
            at = rng.randrange(len(flipped))
            flipped[at] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    assert how == "huge length"  # what a length prefix read from random bytes may say
    return b"\xff" * 8 + data[8:]


def _state_files(tmp: Path) -> list[str]:
    out = [p.relative_to(tmp).as_posix() for p in sorted((tmp / "out").iterdir())
           if p.name.startswith(".") and p.name != LOCK]
    kept = [p.relative_to(tmp).as_posix() for p in sorted((tmp / "cache").rglob("*")) if p.is_file()]
    return out + kept


@pytest.mark.parametrize("how", ["truncated", "garbage", "bit flips", "huge length"])
@pytest.mark.parametrize("path", ["command line", "daemon"])
def test_a_damaged_state_or_cache_file_is_discarded_and_rebuilt_never_trusted(tmp_path: Path, small_site: Path, how: str,
                                                                          path: str, caplog: pytest.LogCaptureFixture) -> None:
    site = tmp_path / "site"
    shutil.copytree(small_site, site)
    config = config_for(site, tmp_path)
    posts = site / "_posts"
    buildmod.run_build(config)
    # A second build after a new post leaves the rest of what builds keep: a journal, a scan,
    # the quick rebuild's state.
    (posts / "2022-04-21-a.md").write_text(post_text("第一篇新文章", "2022-04-21 08:00:00"), encoding="utf-8")
    assert buildmod.run_build(config).incremental
    files = _state_files(tmp_path)
    assert {MANIFEST, cache_module.NAME} <= {Path(f).name for f in files}
    for name in ("out", "cache"):
        shutil.copytree(tmp_path / name, tmp_path / f"start-{name}")
    reference = {}
    for retract in (False, True):
        # The site as it will be: the new post kept, or retracted (its tag feed then goes).
        (posts / "2022-04-21-b.md").write_text(post_text("第二篇新文章", "2022-04-21 09:00:00", tags="[单篇标签]"),
                                               encoding="utf-8")
        if retract:
            (posts / "2022-04-21-b.md").unlink()
        buildmod.run_build(config_for(site, tmp_path / f"reference-{retract}"), full=True)
        reference[retract] = published(tmp_path / f"reference-{retract}" / "out")

    for damaged in files:
        for retract in (False, True):
            for name in ("out", "cache"):
                shutil.rmtree(tmp_path / name)
                shutil.copytree(tmp_path / f"start-{name}", tmp_path / name)
            (posts / "2022-04-21-b.md").write_text(post_text("第二篇新文章", "2022-04-21 09:00:00", tags="[单篇标签]"),
                                                   encoding="utf-8")
            if retract:
                # The post and its own tag feed were published by a build the damaged state forgot.
                buildmod.run_build(config)
                (posts / "2022-04-21-b.md").unlink()
            gc.collect()  # closes the last build's SQLite connections, as the end of its process would
            target = tmp_path / damaged
            if not target.exists():
                continue  # SQLite's -wal and -shm files go with the last connection
            target.write_bytes(_damaged(target.read_bytes(), how))
            caplog.clear()
            if path == "daemon":
                # As the daemon does: the paths its watcher reported looked at, no walk.
                report = buildmod.run_build(config, touched=["_posts/2022-04-21-b.md"])
            else:
                report = buildmod.run_build(config)
            assert published(tmp_path / "out") == reference[retract], (damaged, retract)
            assert len([r for r in caplog.records if r.levelname == "WARNING"]) <= 1, (damaged, caplog.text)
            # Rebuilt: the next build finds everything in order and has nothing to say.
            caplog.clear()
            again = buildmod.run_build(config)
            assert (again.files_written, again.files_removed) == (0, 0), damaged
            assert published(tmp_path / "out") == reference[retract], (damaged, retract)
            assert [r for r in caplog.records if r.levelname == "WARNING"] == [], (damaged, caplog.text)
            assert report.posts == again.posts
