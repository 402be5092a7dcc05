"""The walk's rules for one path, and a scan updated from a file watcher's paths (finews_feeds/walk.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finews_feeds import walk
from finews_feeds.config import build_config
from finews_feeds.models import Site
from finews_feeds.site import resolve_site


def site_at(root: Path) -> Site:
    return resolve_site(build_config({"site": {"source": str(root)}}))


def as_dict(scan: walk.Scan) -> dict[str, tuple[int, int]]:
    paths, sizes, mtimes = scan.columns()
    return dict(zip(paths, zip(sizes, mtimes, strict=True), strict=True))


# Weighted towards what makes posts (a `_posts` folder, a dated name), so that most trees hold some.
_FOLDERS = st.sampled_from(["_posts"] * 6 + ["a", "a", "_x", ".h", "#t", "b~", "node_modules", "vendor", "_drafts",
                                             "_site", "2022-01-01-d.md", "新闻"])
_NAMES = st.sampled_from(["2022-01-01-x.md"] * 4 + ["2022-1-1-y.markdown", "x.md", ".2022-01-01-z.md", "2022-01-01-w.txt",
                                                    "2022-01-01-v.HTML", "2022-01-01-新闻.md", "22-01-01-u.md",
                                                    "2022-01-01-.md", "2022-01-01-t.md~"])
_TREES = st.lists(st.tuples(st.lists(_FOLDERS, max_size=4), _NAMES), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TREES)
def test_the_rules_for_one_path_list_what_the_walk_lists(tree: list[tuple[list[str], str]]) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        files = set()
        for folders, name in tree:
            folder = root.joinpath(*folders)
            if any(p.is_file() for p in [folder, *folder.parents] if root in p.parents):
                continue  # a file already stands where this folder would go
            folder.mkdir(parents=True, exist_ok=True)
            if (folder / name).is_dir():
                continue
            (folder / name).write_text("x", encoding="utf-8")
            files.add("/".join([*folders, name]))
        site = site_at(root)
        assert {rel for rel in files if walk.walked(site, rel)} == set(walk.scan(site)[0])
    finally:
        shutil.rmtree(root)


def test_a_post_through_a_symlinked_folder_is_not_walked(tmp_path: Path) -> None:
    (tmp_path / "real" / "_posts").mkdir(parents=True)
    (tmp_path / "real" / "_posts" / "2022-01-01-a.md").write_text("x", encoding="utf-8")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    site = site_at(tmp_path)
    assert walk.scan(site)[0] == ["real/_posts/2022-01-01-a.md"]
    empty = walk.Scan("", b"", b"")
    rescanned = walk.rescan(site, empty, ["link/_posts/2022-01-01-a.md", "real/_posts/2022-01-01-a.md"])
    assert rescanned is not None and rescanned.columns()[0] == ["real/_posts/2022-01-01-a.md"]


_CHANGES = st.lists(st.tuples(st.sampled_from(["write", "grow", "remove", "folder"]),
                              st.sampled_from(["_posts/2022-01-0%d-p.md", "a/_posts/2022-02-0%d-q.md", "_posts/x%d.md",
                                               "_drafts/2022-01-0%d-d.md", "_posts/sub/2022-03-0%d-s.md"]),
                              st.integers(1, 4)), max_size=12)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_CHANGES)
def test_a_scan_updated_from_the_changed_paths_is_what_a_new_walk_finds(changes: list[tuple[str, str, int]]) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        for rel in ("_posts/2022-01-01-p.md", "_posts/2022-01-02-p.md", "a/_posts/2022-02-01-q.md", "_posts/x1.md"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("first", encoding="utf-8")
        site = site_at(root)
        before = walk.scan_text(site)
        touched = []
        for action, pattern, n in changes:
            rel = pattern % n
            path = root / rel
            touched.append(rel)
            if action == "remove":
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            elif action == "folder":  # the path becomes a folder: not a post file
                if path.is_file():
                    path.unlink()
                path.mkdir(parents=True, exist_ok=True)
            else:
                if path.is_dir():
                    shutil.rmtree(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as handle:
                    handle.write("more" if action == "grow" else "")
                os.utime(path, ns=(n * 10**9, (n + len(touched)) * 10**9))
        rescanned = walk.rescan(site, before, touched)
        assert rescanned is not None
        assert as_dict(rescanned) == as_dict(walk.scan_text(site))
        assert rescanned.files == len(as_dict(rescanned))
    finally:
        shutil.rmtree(root)


def test_too_many_paths_ask_for_a_walk(tmp_path: Path) -> None:
    site = site_at(tmp_path)
    paths = [f"_posts/2022-01-01-{i}.md" for i in range(walk.RESCAN_MOST + 1)]
    assert walk.rescan(site, walk.Scan("", b"", b""), paths) is None
    assert walk.rescan(site, walk.Scan("", b"", b""), paths[:-1]) == walk.Scan("", b"", b"")


@pytest.mark.parametrize(("rel", "expected"), [
    ("_posts/2022-04-20-a.md", True), ("cailianshe/_posts/2022-04-20-a.md", True),
    ("_posts/sub/2022-04-20-a.md", True), ("_posts/_sub/2022-04-20-a.md", False),
    ("_drafts/2022-04-20-a.md", False), ("_site/_posts/2022-04-20-a.md", False), ("node_modules/_posts/2022-04-20-a.md", False),
    ("x/node_modules/_posts/2022-04-20-a.md", True), ("a~/_posts/2022-04-20-a.md", False), ("_posts/a~/2022-04-20-a.md", True),
    ("_posts/2022-04-20-a.txt", False), ("_posts/2022-04-20-a.MD", True), ("2022-04-20-a.md", False), ("_posts//2022-04-20-a.md", False),
])
def test_the_rules_for_one_path(tmp_path: Path, rel: str, expected: bool) -> None:
    assert walk.walked(site_at(tmp_path), rel) is expected


@pytest.mark.parametrize(("rel", "expected"), [
    ("cailianshe", True), ("cailianshe/_posts", True), ("_posts/sub", True), ("_posts/_sub", False), ("_feeds/tags", False),
    (".git/objects", False), ("_site", False), ("node_modules", False), ("x/node_modules", True), ("_posts/2022-04-20-a.md", False),
])
def test_which_folders_the_walk_goes_into(tmp_path: Path, rel: str, expected: bool) -> None:
    assert walk.entered(site_at(tmp_path), rel) is expected
