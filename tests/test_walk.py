"""The walk, and its rules for one path (a file watcher's report) (finews_feeds/site/walk.py)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from finews_feeds.config import build_config
from finews_feeds.models import Site
from finews_feeds.site import walk
from finews_feeds.site.collector import collect
from finews_feeds.site.jekyll import resolve_site


def site_at(root: Path) -> Site:
    return resolve_site(build_config({"site": {"source": str(root)}}))


def as_dict(entries: list[walk.Entry]) -> dict[str, tuple[int, int]]:
    return {entry.path: (entry.size, entry.mtime_ns) for entry in entries}


def walked_paths(site: Site) -> list[str]:
    return [entry.path for entry in walk.walk(site)]


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
        assert {rel for rel in files if walk.walked(site, rel)} == set(walked_paths(site))
    finally:
        shutil.rmtree(root)


def test_a_post_through_a_symlinked_folder_is_not_walked(tmp_path: Path) -> None:
    (tmp_path / "real" / "_posts").mkdir(parents=True)
    (tmp_path / "real" / "_posts" / "2022-01-01-a.md").write_text("x", encoding="utf-8")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    site = site_at(tmp_path)
    assert walked_paths(site) == ["real/_posts/2022-01-01-a.md"]
    assert walk.stat_post(site, "link/_posts/2022-01-01-a.md") is None
    assert walk.stat_post(site, "real/_posts/2022-01-01-a.md") == walk.walk(site)[0]


_CHANGES = st.lists(st.tuples(st.sampled_from(["write", "grow", "remove", "folder"]),
                              st.sampled_from(["_posts/2022-01-0%d-p.md", "a/_posts/2022-02-0%d-q.md", "_posts/x%d.md",
                                               "_drafts/2022-01-0%d-d.md", "_posts/sub/2022-03-0%d-s.md"]),
                              st.integers(1, 4)), max_size=12)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_CHANGES)
def test_the_changed_paths_stated_one_by_one_are_what_a_new_walk_finds(changes: list[tuple[str, str, int]]) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        for rel in ("_posts/2022-01-01-p.md", "_posts/2022-01-02-p.md", "a/_posts/2022-02-01-q.md", "_posts/x1.md"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("first", encoding="utf-8")
        site = site_at(root)
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
        now = as_dict(walk.walk(site))
        for rel in touched:
            entry = walk.stat_post(site, rel)
            assert (entry.size, entry.mtime_ns) == now[rel] if entry is not None else rel not in now
    finally:
        shutil.rmtree(root)


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


# --------------------------------------------------------------------------- symlinks (issue 12, item 8)


POST = "---\ntitle: t\n---\n<p>x</p>\n"


def write(path: Path, text: str = POST) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def link(path: Path, target: Path | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def found_one_by_one(site: Site, paths: list[str]) -> dict[str, tuple[int, int]]:
    return as_dict([entry for entry in map(functools.partial(walk.stat_post, site), paths) if entry is not None])


def test_a_post_file_linked_to_a_file_outside_the_site_is_not_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = write(tmp_path / "outside" / "secret.md", "---\ntitle: secret\n---\n<p>password</p>\n")
    root = tmp_path / "site"
    write(root / "_posts" / "2022-01-01-real.md")
    link(root / "_posts" / "2022-01-02-leak.md", secret)
    link(root / "_posts" / "2022-01-03-relative-leak.md", "../../outside/secret.md")
    site = site_at(root)
    assert walked_paths(site) == ["_posts/2022-01-01-real.md"]
    assert sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING") == [
        "_posts/2022-01-02-leak.md: a symlink to a file outside the site (or a broken one): not read",
        "_posts/2022-01-03-relative-leak.md: a symlink to a file outside the site (or a broken one): not read",
    ]
    assert list(found_one_by_one(site, ["_posts/2022-01-02-leak.md", "_posts/2022-01-03-relative-leak.md"])) == []
    collected = collect(site, None, datetime(2030, 1, 1, tzinfo=UTC))
    assert [p.path for p in collected.posts] == ["_posts/2022-01-01-real.md"]
    assert collected.errors == []


def test_a_post_file_linked_to_a_file_inside_the_site_is_a_post(tmp_path: Path) -> None:
    root = tmp_path / "site"
    shared = write(root / "shared" / "text.md", "---\ntitle: shared\n---\n<p>same</p>\n")
    link(root / "_posts" / "2022-01-01-linked.md", "../shared/text.md")
    site = site_at(root)
    scanned = as_dict(walk.walk(site))
    info = shared.stat()
    assert scanned == {"_posts/2022-01-01-linked.md": (info.st_size, info.st_mtime_ns)}
    assert found_one_by_one(site, ["_posts/2022-01-01-linked.md"]) == scanned
    assert [p.title for p in collect(site, None, datetime(2030, 1, 1, tzinfo=UTC)).posts] == ["shared"]


def test_nothing_under_a_folder_linked_outside_the_site_is_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "outside"
    write(outside / "2022-01-01-o.md")
    write(outside / "_posts" / "2022-01-01-o.md")
    root = tmp_path / "site"
    write(root / "_posts" / "2022-01-01-real.md")
    link(root / "_posts" / "more", outside)  # a folder inside a posts folder
    link(root / "news" / "_posts", outside)  # a posts folder itself
    link(root / "elsewhere", outside)  # a folder that could hold posts folders
    write(outside / "LICENSE")
    link(root / "LICENSE", outside / "LICENSE")  # not a post file, nor a folder: no warning either
    link(root / "_posts" / "README", outside / "LICENSE")
    site = site_at(root)
    assert walked_paths(site) == ["_posts/2022-01-01-real.md"]
    assert {r.getMessage() for r in caplog.records if r.levelname == "WARNING"} == {
        f"{rel}: a symlink to a folder outside the site: not read"
        for rel in ("_posts/more", "news/_posts", "elsewhere")}
    assert list(found_one_by_one(site, ["_posts/more/2022-01-01-o.md", "news/_posts/2022-01-01-o.md",
                                       "elsewhere/_posts/2022-01-01-o.md"])) == []


def test_a_folder_linked_inside_the_site_is_read_once(tmp_path: Path) -> None:
    root = tmp_path / "site"
    write(root / "archive" / "2019" / "2019-01-01-old.md")
    write(root / "archive" / "2019" / "deeper" / "2019-01-02-older.md")
    link(root / "_posts" / "2019", "../archive/2019")  # posts kept elsewhere in the site
    write(root / "blog" / "_posts" / "2022-01-01-b.md")
    link(root / "mirror", "blog")  # the same posts folder again: read once, by its real path
    link(root / "_posts" / "again", ".")  # a loop: the posts folder itself
    site = site_at(root)
    expected = ["_posts/2019/2019-01-01-old.md", "_posts/2019/deeper/2019-01-02-older.md", "blog/_posts/2022-01-01-b.md"]
    assert sorted(walked_paths(site)) == expected
    candidates = [*expected, "mirror/_posts/2022-01-01-b.md", "_posts/again/2019/2019-01-01-old.md",
                  "archive/2019/2019-01-01-old.md"]
    assert found_one_by_one(site, candidates) == as_dict(walk.walk(site))


@pytest.mark.timeout(60)
def test_symlink_loops_do_not_hang_the_walk(tmp_path: Path) -> None:
    root = tmp_path / "site"
    write(root / "_posts" / "2022-01-01-a.md")
    link(root / "_posts" / "up", "..")  # the site: entered once as a posts folder, no deeper link followed
    link(root / "x" / "to-y", "../y")
    link(root / "y" / "to-x", "../x")
    link(root / "_posts" / "x", "../x")
    link(root / "_posts" / "2022-01-02-self.md", "2022-01-02-self.md")  # a link to itself
    link(root / "_posts" / "l1", "l2")
    link(root / "_posts" / "l2", "l1")
    link(root / "_posts" / "2022-01-03-ring.md", "2022-01-04-ring.md")
    link(root / "_posts" / "2022-01-04-ring.md", "2022-01-03-ring.md")
    site = site_at(root)
    assert sorted(walked_paths(site)) == ["_posts/2022-01-01-a.md"]
    candidates = ["_posts/2022-01-01-a.md", "_posts/up/_posts/2022-01-01-a.md", "_posts/x/to-y/to-x/2022-01-01-a.md",
                  "_posts/2022-01-02-self.md", "_posts/l1/2022-01-01-a.md", "_posts/2022-01-03-ring.md"]
    assert found_one_by_one(site, candidates) == as_dict(walk.walk(site))


_BASE = ["_posts/2022-01-01-p.md", "_posts/sub/2022-01-02-s.md", "a/_posts/2022-01-03-a.md", "arch/2022-01-04-r.md",
         "arch/deep/2022-01-05-d.md", "_hidden/2022-01-06-h.md", "shared/text.md"]
_LINK_FOLDERS = st.sampled_from(["", "_posts", "_posts/sub", "a", "a/_posts", "arch", "_hidden", "new"])
_LINK_NAMES = st.sampled_from(["l", "_posts", "m", "2022-01-09-l.md", "2022-01-10-m.md", ".dot"])
_LINK_TARGETS = st.sampled_from(["OUT", "OUT/f.md", "OUT/2022-01-01-o.md", "OUT/_posts", "ROOT", ".", "..", "_posts",
                                 "_posts/sub", "a", "a/_posts", "arch", "arch/deep", "_hidden", "shared/text.md",
                                 "_posts/2022-01-01-p.md", "arch/2022-01-04-r.md", "missing", "SELF", "l", "m"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_LINK_FOLDERS, _LINK_NAMES, _LINK_TARGETS), min_size=2, max_size=6), _TREES)
def test_the_rules_for_one_path_list_what_the_walk_lists_with_symlinks(
        links: list[tuple[str, str, str]], tree: list[tuple[list[str], str]]) -> None:
    top = Path(tempfile.mkdtemp())
    try:
        root, outside = top / "site", top / "outside"
        write(outside / "f.md")
        write(outside / "_posts" / "2022-01-01-o.md")
        write(outside / "2022-01-01-o.md")
        for rel in _BASE:
            write(root / rel)
        for folders, name in tree[:4]:
            folder = root.joinpath(*folders)
            if any(p.is_file() or p.is_symlink() for p in [folder, *folder.parents] if root in p.parents):
                continue
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / name).exists() and not (folder / name).is_symlink():
                write(folder / name)
        for at, name, target in links:
            folder = root / at if at else root
            if any(p.is_file() or p.is_symlink() for p in [folder, *folder.parents] if root in p.parents):
                continue
            folder.mkdir(parents=True, exist_ok=True)
            place = folder / name
            if place.exists() or place.is_symlink():
                continue
            if target.startswith("OUT"):
                place.symlink_to(outside / target[4:] if target != "OUT" else outside)
            elif target == "ROOT":
                place.symlink_to(root)
            elif target == "SELF":
                place.symlink_to(place.name)
            else:
                place.symlink_to(os.path.relpath(root / target, folder) if target not in (".", "..") else target)
        site = site_at(root)
        scanned = as_dict(walk.walk(site))
        # Every path a file could be reached by, through one or two links: each must be found or
        # left out by the rules for one path exactly as the walk finds or leaves it out.
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()]
        linked = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink()]
        tails = {"/".join(rel.split("/")[i:]) for rel in files for i in range(len(rel.split("/")))}
        tails |= {"2022-01-01-o.md", "_posts/2022-01-01-o.md", "f.md"}
        candidates = sorted(set(files) | set(scanned) | {f"{a}/{t}" for a in linked for t in tails}
                            | {f"{a}/{b.rsplit('/', 1)[-1]}/{t}" for a in linked for b in linked for t in tails})
        assert found_one_by_one(site, candidates) == {rel: scanned[rel] for rel in candidates if rel in scanned}
        through = [rel for rel in scanned if any(rel.startswith(a + "/") or rel == a for a in linked)]
        event("a post through a symlink" if through else "no post through a symlink")
        assert set(scanned) <= set(candidates)
        for rel in scanned:  # nothing outside the site
            assert str(Path(os.path.realpath(root / rel))).startswith(str(Path(os.path.realpath(root))) + os.sep)
    finally:
        shutil.rmtree(top)
