"""The walk: which files of a Jekyll site are posts, with their sizes and mtimes.

Apart from the collector because it is the first thing a build does and the one that takes
longest on a large warm site (a stat of every file): this module imports nothing heavy, so a
build can start the walk in a child process before it imports the rest (see
:func:`scan_elsewhere`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import marshal
import os
import re
import stat as stat_module
from collections.abc import Callable
from operator import attrgetter
from typing import NamedTuple

from . import forks
from .models import Site

log = logging.getLogger(__name__)

#: A scan's result: paths (relative to the site, with `/`), sizes and mtimes in nanoseconds.
Columns = tuple[list[str], list[int], list[int]]



class Entry(NamedTuple):
    """A candidate post file: path relative to the site (with `/`), size, mtime."""

    path: str
    size: int
    mtime_ns: int


def walk(site: Site) -> list[Entry]:
    """Every file Jekyll would read as a post: under any `_posts/` folder (and its subfolders),
    outside `_site`, `_drafts`, dot-folders and other `_` folders, named YYYY-MM-DD-slug.ext."""
    paths, sizes, mtimes = scan(site)
    return list(map(Entry, paths, sizes, mtimes))


def _post_names(extensions: tuple[str, ...], separator: str) -> re.Pattern[str]:
    """Names of post files inside a listing joined by ``separator`` (a character no name of it
    holds): with a newline, ``^``/``$`` anchors make it twice as fast as lookarounds for NUL."""
    endings = "|".join(re.escape(e) for e in extensions)
    if separator == "\n":
        return re.compile(rf"^\d{{2,4}}-\d{{1,2}}-\d{{1,2}}-.+?(?i:{endings})$", re.MULTILINE)
    return re.compile(rf"(?<![^\x00])\d{{2,4}}-\d{{1,2}}-\d{{1,2}}-[^\x00]+?(?i:{endings})(?![^\x00])")


#: A posts folder's part of a scan: the folder (relative to the site, ending in `/`), then the
#: paths, sizes and mtimes of its post files.
Chunk = tuple[str, list[str], list[int], list[int]]


def scan(site: Site, share: tuple[float, float] = (0.0, 1.0)) -> Columns:
    """:func:`walk` as three columns (path, size, mtime_ns), for the cache's warm runs; see
    :func:`scan_folders` for ``share``."""
    return flatten(scan_folders(site, share))


def flatten(chunks: list[Chunk]) -> Columns:
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for _, chunk_paths, chunk_sizes, chunk_mtimes in chunks:
        paths += chunk_paths
        sizes += chunk_sizes
        mtimes += chunk_mtimes
    return paths, sizes, mtimes


def merge(first: list[Chunk], second: list[Chunk]) -> list[Chunk]:
    """The shares ``(0, x)`` and ``(x, 1)`` of one scan as one: folder by folder, in the order
    of the first (the share that finds subfolders of posts folders), so that the result is
    what one process scanning it all gets, whatever ``x``: the cache compares scans in order."""
    rest = {chunk[0]: chunk for chunk in second}
    merged: list[Chunk] = []
    for folder, paths, sizes, mtimes in first:
        more = rest.pop(folder, None)
        merged.append((folder, paths + more[1], sizes + more[2], mtimes + more[3]) if more else
                      (folder, paths, sizes, mtimes))
    merged.extend(chunk for chunk in second if chunk[0] in rest)
    return merged


def scan_folders(site: Site, share: tuple[float, float] = (0.0, 1.0)) -> list[Chunk]:
    """The post files of each posts folder, with their sizes and mtimes.

    A `_posts` folder of 100,000 files is filtered with one regex over its listing and stat'ed
    by ``map``, so the per-file work stays in C; other folders are few and small. With
    ``share`` (``(lo, hi)``), only that part of each folder's post files is stat'ed and listed,
    so that processes can share the work (:func:`merge` puts the shares together).
    """
    extensions = tuple(e.lower() for e in site.extensions)
    chunks: list[Chunk] = []
    # (folder, path relative to the site, inside a _posts folder: its share of the files)
    pending: list[tuple[str, str, tuple[float, float] | None]] = [(site.source, "", None)]
    while pending:
        folder, rel, in_posts = pending.pop()
        try:
            if in_posts is not None:
                chunks.append(_scan_posts_folder(folder, rel, extensions, pending, in_posts))
                continue
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if (name[0] in ".#_" and name != "_posts") or name[-1] == "~" or (not rel and name in ("node_modules", "vendor")):
                        continue
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):  # a symlinked folder could loop
                            pending.append((entry.path, rel + name + "/", share if name == "_posts" else None))
        except OSError as exc:
            log.warning("%s: cannot list folder: %s", folder, exc.strerror)
    return chunks


def _scan_posts_folder(
    folder: str,
    rel: str,
    extensions: tuple[str, ...],
    pending: list[tuple[str, str, tuple[float, float] | None]],
    share: tuple[float, float] = (0.0, 1.0),
) -> Chunk:
    listing = os.listdir(folder)
    joined = "\n".join(listing)
    if joined.count("\n") == len(listing) - 1 or not listing:
        found = _post_names(extensions, "\n").findall(joined)
    else:  # a name with a newline in it
        found = _post_names(extensions, "\x00").findall("\x00".join(listing))
    lo, hi = share
    candidates = found if share == (0.0, 1.0) else found[round(lo * len(found)) : round(hi * len(found))]
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            stats = list(map(functools.partial(os.stat, dir_fd=fd), candidates))
        except OSError:  # a file vanished since the listing: go one by one
            stats, kept = [], []
            for name in candidates:
                with contextlib.suppress(OSError):
                    stats.append(os.stat(name, dir_fd=fd))
                    kept.append(name)
            candidates = kept
        if not all(map(stat_module.S_ISREG, map(attrgetter("st_mode"), stats))):
            pairs = [(n, st) for n, st in zip(candidates, stats, strict=True) if stat_module.S_ISREG(st.st_mode)]
            candidates, stats = [n for n, _ in pairs], [st for _, st in pairs]
        # Subfolders of a _posts folder hold posts too; they are rare, so stat what is left.
        if len(found) != len(listing) and lo == 0.0 < hi:  # the first share looks for them
            taken = set(found)
            for name in listing:
                if name in taken or name[0] in ".#_":
                    continue
                with contextlib.suppress(OSError):
                    if stat_module.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        # Found by the first share only, and listed by it whole.
                        pending.append((os.path.join(folder, name), rel + name + "/", (0.0, 1.0)))
    finally:
        os.close(fd)
    return (rel, list(map(rel.__add__, candidates)), list(map(attrgetter("st_size"), stats)),
            list(map(attrgetter("st_mtime_ns"), stats)))


def read_file(path: str, size: int) -> bytes:
    """The bytes of ``path``, ``size`` (from the scan) being what it probably holds: with the
    bare file descriptor calls, a third cheaper than ``open().read()`` for 100,000 small files."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks = [os.read(fd, max(size, 0) + 1)]
        while len(chunks[-1]) and (len(chunks) > 1 or len(chunks[0]) > size):  # it grew since
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks) if len(chunks) > 1 else chunks[0]
    finally:
        os.close(fd)


def scan_elsewhere(site: Site, here: float = 0.0) -> Callable[[], Columns]:
    """Start :func:`scan` in a forked child; the returned function gives its result (or scans
    here, when forking is unsafe or the child failed). With ``here``, the returned function
    scans that share of the files itself (the child the rest): for a caller that has other
    work first, and then time to wait."""
    child = forks.start(lambda: marshal.dumps(scan_folders(site, (here, 1.0)))) if forks.can_fork() else None
    if child is None:
        return lambda: scan(site)

    def result() -> Columns:
        mine = scan_folders(site, (0.0, here)) if here else None
        data = child.result()
        if data is not None:
            with contextlib.suppress(ValueError, EOFError, TypeError):
                theirs = [(str(rel), list(paths), list(sizes), list(mtimes)) for rel, paths, sizes, mtimes in marshal.loads(data)]
                return flatten(merge(mine, theirs) if mine is not None else theirs)
        log.warning("scanning the site in a child process failed; scanning here")
        return scan(site)

    return result
