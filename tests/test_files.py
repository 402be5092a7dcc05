"""atomic_write: the whole new file or the old one, nothing written when nothing changed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from finews_feeds.files import atomic_write


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A strict umask, as on a hardened server: the mode asked for must still be the file's."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_writes_a_new_file_and_replaces_an_old_one(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    assert atomic_write(path, b"<rss>one</rss>") is True
    assert path.read_bytes() == b"<rss>one</rss>"
    assert atomic_write(path, b"<rss>two, longer</rss>") is True
    assert path.read_bytes() == b"<rss>two, longer</rss>"
    assert atomic_write(path, b"", durable=True) is True
    assert path.read_bytes() == b""
    assert os.listdir(tmp_path) == ["feed.xml"]


def test_unchanged_bytes_are_not_rewritten_and_the_file_keeps_its_time_stamp(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(b"<rss>same</rss>")
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = path.stat()
    assert atomic_write(path, b"<rss>same</rss>") is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Same size, other bytes: written.
    assert atomic_write(path, b"<rss>SAME</rss>") is True
    assert path.read_bytes() == b"<rss>SAME</rss>"
    assert path.stat().st_mtime_ns != before.st_mtime_ns


def test_the_mode_is_the_one_asked_for_whatever_the_umask(tmp_path: Path, umask_077: None) -> None:
    shared, private = tmp_path / "shared.xml", tmp_path / "private.csv"
    atomic_write(shared, b"a")
    atomic_write(private, b"b", mode=0o600)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    # A rewrite sets the mode again (the file is new, not the old one changed in place).
    os.chmod(shared, 0o666)
    atomic_write(shared, b"c")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644


def test_the_temporary_file_is_removed_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "feed.xml"
    target.mkdir()  # a folder in the way: the rename over it fails after the data is written
    with pytest.raises(IsADirectoryError):
        atomic_write(target, b"<rss/>")
    assert os.listdir(tmp_path) == ["feed.xml"]
    assert target.is_dir()


def test_a_missing_folder_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nope" / "feed.xml", b"<rss/>")
    assert os.listdir(tmp_path) == []


def test_a_temporary_name_left_by_a_dead_process_with_this_id_is_not_reused(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    left = tmp_path / f".feed.xml.{os.getpid()}.tmp"
    left.write_bytes(b"half a fe")
    assert atomic_write(path, b"<rss>whole</rss>", durable=True) is True
    assert path.read_bytes() == b"<rss>whole</rss>"
    assert left.read_bytes() == b"half a fe"  # not ours to remove: the writer's sweep removes it
    assert sorted(os.listdir(tmp_path)) == [left.name, "feed.xml"]
