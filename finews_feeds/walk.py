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


def _post_names(extensions: tuple[str, ...]) -> re.Pattern[str]:
    """Names of post files inside a NUL-joined listing (no file name holds a NUL)."""
    endings = "|".join(re.escape(e) for e in extensions)
    return re.compile(rf"(?<![^\x00])\d{{2,4}}-\d{{1,2}}-\d{{1,2}}-[^\x00]+?(?i:{endings})(?![^\x00])")


def scan(site: Site, share: tuple[float, float] = (0.0, 1.0)) -> tuple[list[str], list[int], list[int]]:
    """:func:`walk` as three columns (path, size, mtime_ns), for the cache's warm runs.

    A `_posts` folder of 100,000 files is filtered with one regex over its listing and stat'ed
    by ``map``, so the per-file work stays in C; other folders are few and small. With
    ``share`` (``(lo, hi)``), only that part of each folder's post files is stat'ed and listed,
    so that processes can share the work; the shares ``(0, x)`` and ``(x, 1)`` list every
    file once.
    """
    names_of_posts = _post_names(tuple(e.lower() for e in site.extensions))
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    # (folder, path relative to the site, inside a _posts folder: its share of the files)
    pending: list[tuple[str, str, tuple[float, float] | None]] = [(site.source, "", None)]
    while pending:
        folder, rel, in_posts = pending.pop()
        try:
            if in_posts is not None:
                _scan_posts_folder(folder, rel, names_of_posts, paths, sizes, mtimes, pending, in_posts)
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
    return paths, sizes, mtimes


def _scan_posts_folder(
    folder: str,
    rel: str,
    names_of_posts: re.Pattern[str],
    paths: list[str],
    sizes: list[int],
    mtimes: list[int],
    pending: list[tuple[str, str, tuple[float, float] | None]],
    share: tuple[float, float] = (0.0, 1.0),
) -> None:
    listing = os.listdir(folder)
    found = names_of_posts.findall("\x00".join(listing))
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
        paths.extend(map(rel.__add__, candidates))
        sizes.extend(map(attrgetter("st_size"), stats))
        mtimes.extend(map(attrgetter("st_mtime_ns"), stats))
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
    child = forks.start(lambda: marshal.dumps(scan(site, (here, 1.0)))) if forks.can_fork() else None
    if child is None:
        return lambda: scan(site)

    def result() -> Columns:
        mine = scan(site, (0.0, here)) if here else None
        data = child.result()
        if data is not None:
            with contextlib.suppress(ValueError, EOFError, TypeError):
                paths, sizes, mtimes = marshal.loads(data)
                if mine is not None:
                    return mine[0] + paths, mine[1] + sizes, mine[2] + mtimes
                return paths, sizes, mtimes
        log.warning("scanning the site in a child process failed; scanning here")
        return scan(site)

    return result
