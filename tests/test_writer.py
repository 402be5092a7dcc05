from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from finews_feeds.errors import BuildError
from finews_feeds.feeds.writer import (
    MANIFEST,
    FeedRecord,
    Manifest,
    OutputDir,
    load_manifest,
    record_intent,
    save_manifest,
)


def test_a_new_file_is_written_readable_by_a_web_server(tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "out")
    assert out.write("tags/财经/rss.xml", b"<rss/>") is True
    path = tmp_path / "out" / "tags" / "财经" / "rss.xml"
    assert path.read_bytes() == b"<rss/>"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_unchanged_bytes_are_not_rewritten_so_the_mtime_stays(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.write("rss.xml", b"same")
    path = tmp_path / "rss.xml"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    inode = path.stat().st_ino
    assert out.write("rss.xml", b"same") is False
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert path.stat().st_ino == inode


def test_changed_bytes_replace_the_file_and_leave_no_temporary_file(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.write("rss.xml", b"old")
    assert out.write("rss.xml", b"new!") is True
    assert (tmp_path / "rss.xml").read_bytes() == b"new!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rss.xml"]


def test_a_failed_write_keeps_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = OutputDir(tmp_path)
    out.write("rss.xml", b"old complete file")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(BuildError, match="No space left on device"):
        out.write("rss.xml", b"new file")
    assert (tmp_path / "rss.xml").read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rss.xml"]


@pytest.mark.parametrize("rel", ["../x.xml", "/etc/x.xml", "a/../../x.xml", "", ".", "a/./b", "a//b", "a\\..\\b", "x\x00"])
def test_paths_that_could_leave_the_output_folder_are_refused(tmp_path: Path, rel: str) -> None:
    out = OutputDir(tmp_path / "out")
    with pytest.raises(BuildError, match="refusing to write"):
        out.write(rel, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlink_inside_the_output_folder_does_not_lead_a_write_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tags").symlink_to(outside)
    out = OutputDir(tmp_path / "out")
    with pytest.raises(BuildError, match="leads outside the output folder"):
        out.write("tags/x/rss.xml", b"x")
    assert list(outside.iterdir()) == []


def test_remove_deletes_the_file_and_the_folders_it_leaves_empty(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.write("tags/a/rss.xml", b"1")
    out.write("tags/a/atom.xml", b"2")
    out.write("tags/b/rss.xml", b"3")
    assert out.remove("tags/a/rss.xml") is True
    assert (tmp_path / "tags" / "a").is_dir()
    assert out.remove("tags/a/atom.xml") is True
    assert not (tmp_path / "tags" / "a").exists()
    assert (tmp_path / "tags" / "b" / "rss.xml").exists()
    assert out.remove("tags/a/atom.xml") is False
    assert out.remove("../escape") is False
    assert tmp_path.is_dir()


def test_an_output_path_that_is_a_file_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildError):
        OutputDir(tmp_path / "file")


def test_the_manifest_round_trips(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    manifest = Manifest("opts", {"tag": {"a/b": "a-b"}}, {"tag:a/b": FeedRecord("sig", ["tags/a-b/rss.xml"])}, ["index.html"])
    save_manifest(out, manifest)
    assert load_manifest(out) == manifest
    assert manifest.all_files() == {"tags/a-b/rss.xml", "index.html"}


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"version": 99}', b'{"version": 1, "feeds": 3}'])
def test_a_broken_or_foreign_manifest_is_trusted_for_nothing(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / MANIFEST).write_bytes(raw)
    assert load_manifest(OutputDir(tmp_path)) == Manifest(interrupted=True, unreadable=True)


def test_an_intent_left_behind_distrusts_the_manifest_and_lists_its_files(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    manifest = Manifest("opts", {}, {"site:": FeedRecord("sig", ["rss.xml"])}, ["index.html"])
    save_manifest(out, manifest)
    record_intent(out, ["tags/new/rss.xml", "rss.xml"])
    loaded = load_manifest(out)
    assert loaded.interrupted and not loaded.unreadable
    assert [record.signature for record in loaded.feeds.values()] == ["", ""]
    assert loaded.all_files() == {"rss.xml", "index.html", "tags/new/rss.xml"}
    save_manifest(out, manifest, written=False)
    assert load_manifest(out) == manifest


def test_no_manifest_is_an_empty_one(tmp_path: Path) -> None:
    assert load_manifest(OutputDir(tmp_path)) == Manifest()


def test_the_build_lock_makes_a_second_build_wait(tmp_path: Path) -> None:
    import threading

    out = OutputDir(tmp_path)
    entered = threading.Event()
    order: list[str] = []

    def second() -> None:
        with OutputDir(tmp_path).lock():
            order.append("second")

    with out.lock():
        thread = threading.Thread(target=lambda: (entered.set(), second()))
        thread.start()
        entered.wait()
        thread.join(0.3)
        assert thread.is_alive()
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]
