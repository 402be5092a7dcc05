"""The walk: which files of a Jekyll site are posts, with their sizes and mtimes.

Apart from the collector because it is the first thing a build does and the one that takes
longest on a large warm site (a stat of every file): this module imports nothing heavy, so a
build can start the walk in a child process before it imports the rest (see
:func:`scan_elsewhere`). A daemon whose file watcher reports the paths that changed updates the
last scan with those alone (:func:`rescan`, with the walk's rules for one path, :func:`walked`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import marshal
import os
import re
import stat as stat_module
import threading
from array import array
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import NamedTuple

from .. import forks
from ..models import Site

log = logging.getLogger(__name__)

#: A scan's result: paths (relative to the site, with `/`), sizes and mtimes in nanoseconds.
Columns = tuple[list[str], list[int], list[int]]
#: What no path holds: the separator of the paths in a :class:`Scan`.
SEP = "\x00"


class Scan(NamedTuple):
    """A scan as a few big objects rather than 100,000 small ones: the paths, each followed by
    :data:`SEP`, and the sizes and mtimes as native 64-bit integers. One string and two byte
    strings go from a child process to its parent, into a file and back, and are compared with
    another scan's, at the speed of copying memory (see ``cache.compare_scans``)."""

    text: str
    sizes: bytes
    mtimes: bytes

    @property
    def files(self) -> int:
        return len(self.sizes) // 8

    def columns(self) -> Columns:
        return (self.text.split(SEP)[:-1], array("q", self.sizes).tolist(), array("q", self.mtimes).tolist())


def stamps(values: Iterable[int]) -> bytes:
    """``values`` as native signed 64-bit integers; an mtime past 2262 (``touch -d 3000-01-01``)
    wraps around, which still tells a change from no change."""
    listed = list(values)
    try:
        return array("q", listed).tobytes()
    except OverflowError:
        return array("q", [(v + (1 << 63)) % (1 << 64) - (1 << 63) for v in listed]).tobytes()


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


@functools.lru_cache(maxsize=32)
def _post_names(extensions: tuple[str, ...], separator: str) -> re.Pattern[str]:
    """Names of post files inside a listing joined by ``separator`` (a character no name of it
    holds): with a newline, ``^``/``$`` anchors make it twice as fast as lookarounds for NUL."""
    endings = "|".join(re.escape(e) for e in extensions)
    if separator == "\n":
        return re.compile(rf"^\d{{2,4}}-\d{{1,2}}-\d{{1,2}}-.+?(?i:{endings})$", re.MULTILINE)
    return re.compile(rf"(?<![^\x00])\d{{2,4}}-\d{{1,2}}-\d{{1,2}}-[^\x00]+?(?i:{endings})(?![^\x00])")


#: A posts folder's part of a scan: the folder (relative to the site, ending in `/`) and its
#: post files as a :class:`Scan`.
Chunk = tuple[str, Scan]
#: A posts folder as listed: its path, its path relative to the site (ending in `/`), the
#: names of its post files.
Listed = tuple[str, str, list[str]]


def scan(site: Site) -> Columns:
    """:func:`walk` as three columns (path, size, mtime_ns)."""
    return scan_text(site).columns()


def scan_text(site: Site) -> Scan:
    """:func:`scan` as a :class:`Scan`."""
    return flatten(scan_folders(site))


def scan_folders(site: Site) -> list[Chunk]:
    """The post files of each posts folder, with their sizes and mtimes (processes that share
    the work: :func:`scan_elsewhere`)."""
    root = site_root(site)
    return [(rel, stat_files(folder, rel, names, root)) for folder, rel, names in list_posts(site)]


def flatten(chunks: list[Chunk]) -> Scan:
    return Scan("".join(c.text for _, c in chunks), b"".join(c.sizes for _, c in chunks),
                b"".join(c.mtimes for _, c in chunks))


def merge(first: list[Chunk], second: list[Chunk]) -> list[Chunk]:
    """The shares ``(0, x)`` and ``(x, 1)`` of one listing as one scan, folder by folder, so
    that the result is what one process scanning it all gets, whatever ``x``: the cache
    compares scans in order."""
    rest = dict(second)
    merged: list[Chunk] = []
    for folder, part in first:
        more = rest.pop(folder, None)
        merged.append((folder, Scan(part.text + more.text, part.sizes + more.sizes, part.mtimes + more.mtimes)
                       if more is not None else part))
    merged.extend(chunk for chunk in second if chunk[0] in rest)
    return merged


def list_posts(site: Site) -> list[Listed]:
    """Every posts folder of the site (`_posts` anywhere outside `_` and dot folders, and the
    folders inside them) with the names of its post files, in the order of the listings: a
    `_posts` folder of 100,000 files is filtered with one regex over its listing, in C.
    A symlinked folder is entered by the rule of :func:`follows`."""
    extensions = tuple(e.lower() for e in site.extensions)
    root = site_root(site)
    listed: list[Listed] = []
    # (folder, path relative to the site, inside a _posts folder, reached through a symlinked folder)
    pending: list[Pending] = [(site.source, "", False, False)]
    while pending:
        folder, rel, in_posts, linked = pending.pop()
        try:
            if in_posts:
                listed.append((folder, rel, _post_files(folder, rel, extensions, pending, root, linked)))
                continue
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if (name[0] in ".#_" and name != "_posts") or name[-1] == "~" or (not rel and name in ("node_modules", "vendor")):
                        continue
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            pending.append((entry.path, rel + name + "/", name == "_posts", linked))
                        elif entry.is_symlink() and not linked and follows(root, entry.path, rel + name, extensions):
                            pending.append((entry.path, rel + name + "/", name == "_posts", True))
        except OSError as exc:
            log.warning("%s: cannot list folder: %s", folder, exc.strerror)
    return listed


#: A folder the walk is to list: its path, its path relative to the site (ending in `/`),
#: whether it is inside a posts folder, whether it was reached through a symlinked folder.
Pending = tuple[str, str, bool, bool]


def _post_files(folder: str, rel: str, extensions: tuple[str, ...], pending: list[Pending], root: str,
                linked: bool) -> list[str]:
    listing = os.listdir(folder)
    joined = "\n".join(listing)
    if joined.count("\n") == len(listing) - 1 or not listing:
        found: list[str] = _post_names(extensions, "\n").findall(joined)
    else:  # a name with a newline in it
        found = _post_names(extensions, "\x00").findall("\x00".join(listing))
    if len(found) != len(listing):
        # Folders inside a _posts folder hold posts too; they are rare, so stat what is left.
        taken = set(found)
        for name in listing:
            if name in taken or name[0] in ".#_":
                continue
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                mode = os.stat(path, follow_symlinks=False).st_mode
                if stat_module.S_ISDIR(mode):
                    pending.append((path, rel + name + "/", True, linked))
                elif stat_module.S_ISLNK(mode) and not linked and follows(root, path, rel + name, extensions):
                    pending.append((path, rel + name + "/", True, True))
    return found


# ---------------------------------------------------------------- symlinks (Jekyll's safe mode)


def site_root(site: Site) -> str:
    """The site's folder with every symlink resolved: what a symlink must stay inside."""
    return os.path.realpath(site.source)


def inside(root: str, path: str) -> str | None:
    """The real path of ``path`` (every symlink resolved) when it lies in the folder ``root``
    (a real path) or is it; None when it leads elsewhere, is broken or loops.

    Jekyll's ``EntryFilter#symlink_outside_site_source?`` in safe mode, made exact: Jekyll
    compares the real path with the site's unresolved path as strings, so `/srv/site-old/x`
    passes for the site `/srv/site`, and a site reached through a symlink refuses every link."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return None
    return real if real == root or real.startswith(root.rstrip(os.sep) + os.sep) else None


def follows(root: str, path: str, rel: str, extensions: tuple[str, ...]) -> bool:
    """Whether the walk goes into the symlink ``path`` (``rel`` from the site, with `/`),
    whose name the walk's rules let in: when it leads to a folder inside the site (``root``,
    :func:`site_root`) that the walk does not enter through real folders in the same role
    (posts folder or not), so that a link never lists a post twice nor loops back. The walk
    follows no symlinked folder inside a symlinked folder: one level, so nothing can loop."""
    if not os.path.isdir(path):
        return False  # a link to a file (the walk lists no file here), a broken link or a loop
    real = inside(root, path)
    if real is None:
        log.warning("%s: a symlink to a folder outside the site: not read", rel)
        return False
    target = os.path.relpath(real, root).replace(os.sep, "/")
    role = _entered(target.split("/") if target != "." else [], extensions)
    if role == _entered(rel.split("/"), extensions):
        log.debug("%s: a symlink to %s, which the walk reads anyway: not followed", rel, target)
        return False
    return True


def stat_files(folder: str, rel: str, names: list[str], root: str) -> Scan:
    """The files ``names`` of ``folder`` (``rel`` from the site) that are regular files, or
    symlinks to regular files inside the site's real folder ``root`` (:func:`site_root`), with
    their sizes and mtimes (a link's: its target's): stat'ed by ``map``, relative to the
    folder, without following links (as cheap, and a link is then told by its mode)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("%s: cannot list folder: %s", folder, exc.strerror)
        return Scan("", b"", b"")
    try:
        try:
            stats = list(map(functools.partial(os.stat, dir_fd=fd, follow_symlinks=False), names))
        except OSError:  # a file vanished since the listing: go one by one
            stats, kept = [], []
            for name in names:
                with contextlib.suppress(OSError):
                    stats.append(os.stat(name, dir_fd=fd, follow_symlinks=False))
                    kept.append(name)
            names = kept
    finally:
        os.close(fd)
    if not all(map(stat_module.S_ISREG, map(attrgetter("st_mode"), stats))):
        pairs = []
        for name, info in zip(names, stats, strict=True):
            if stat_module.S_ISLNK(info.st_mode):
                found = _linked_file(root, os.path.join(folder, name), rel + name)
                if found is not None:
                    pairs.append((name, found))
            elif stat_module.S_ISREG(info.st_mode):
                pairs.append((name, info))
        names, stats = [n for n, _ in pairs], [st for _, st in pairs]
    # The folder once per file, in one join: no string per path is made here.
    text = rel + (SEP + rel).join(names) + SEP if names else ""
    return Scan(text, stamps(map(attrgetter("st_size"), stats)), stamps(map(attrgetter("st_mtime_ns"), stats)))


def _linked_file(root: str, path: str, rel: str) -> os.stat_result | None:
    """The stat of the file a symlinked post file leads to, when it is a regular file inside
    the site (``root``); else None, with a warning for a target outside the site."""
    real = inside(root, path)
    if real is None:
        log.warning("%s: a symlink to a file outside the site (or a broken one): not read", rel)
        return None
    with contextlib.suppress(OSError):
        info = os.stat(real)
        if stat_module.S_ISREG(info.st_mode):
            return info
    return None


def walked(site: Site, rel: str) -> bool:
    """Whether :func:`list_posts` lists the path ``rel`` (relative to the site, with `/`) as a
    post file, from its name alone: the walk's rules for one path (whether the file exists and
    is a regular file, and the symlinks on the way, the caller checks: :func:`rescan`)."""
    *folders, name = rel.split("/")
    extensions = tuple(e.lower() for e in site.extensions)
    return bool(name) and _entered(folders, extensions) is True and _post_names(extensions, SEP).fullmatch(name) is not None


def entered(site: Site, rel: str) -> bool:
    """Whether the walk goes into the folder ``rel`` (relative to the site, with `/`): whether
    posts can come or go with it."""
    return _entered(rel.split("/"), tuple(e.lower() for e in site.extensions)) is not None


def _entered(folders: list[str], extensions: tuple[str, ...]) -> bool | None:
    """None when the walk does not go into ``folders``; else whether they are in a posts folder."""
    inside = False
    for depth, folder in enumerate(folders):
        if not folder:
            return None
        if inside:
            # A folder inside a posts folder whose name looks like a post is taken for one.
            if folder[0] in ".#_" or _post_names(extensions, SEP).fullmatch(folder):
                return None
        elif folder == "_posts":
            inside = True
        elif folder[0] in ".#_" or folder[-1] == "~" or (depth == 0 and folder in ("node_modules", "vendor")):
            return None
    return inside


def rescan(site: Site, last: Scan, paths: Iterable[str]) -> Scan | None:
    """``last`` with ``paths`` (relative to the site) looked at again: what a scan finds now if
    only those files changed since ``last`` (a file watcher's report). A path the walk lists
    that is a regular file now gets its new size and mtime, or comes last if it is new; any
    other goes. None for more than :data:`RESCAN_MOST` paths (a walk is then as quick)."""
    wanted = sorted(set(paths))
    if len(wanted) > RESCAN_MOST:
        return None
    text, sizes, mtimes = last.text, bytearray(last.sizes), bytearray(last.mtimes)
    added: list[tuple[str, int, int]] = []
    root = site_root(site)
    for rel in wanted:
        found = _stat_walked(site, rel, root)
        key = rel + SEP
        if text.startswith(key):
            at = 0
        else:
            at = text.find(SEP + key)
            at += 1 if at >= 0 else 0  # past the separator before it
        if at >= 0:
            index = text.count(SEP, 0, at)
            if found is None:
                text = text[:at] + text[at + len(key):]
                del sizes[8 * index : 8 * index + 8]
                del mtimes[8 * index : 8 * index + 8]
            else:
                sizes[8 * index : 8 * index + 8] = stamps([found[0]])
                mtimes[8 * index : 8 * index + 8] = stamps([found[1]])
        elif found is not None:
            added.append((rel, *found))
    text += "".join(rel + SEP for rel, _, _ in added)
    sizes += stamps(size for _, size, _ in added)
    mtimes += stamps(mtime for _, _, mtime in added)
    return Scan(text, bytes(sizes), bytes(mtimes))


#: :func:`rescan` looks again at this many paths at most.
RESCAN_MOST = 200


def _stat_walked(site: Site, rel: str, root: str) -> tuple[int, int] | None:
    """The size and mtime of ``rel`` if the walk would list it now, else None: the walk's
    rules for symlinks (:func:`follows`, :func:`stat_files`) applied to one path (``root``:
    :func:`site_root`)."""
    if not walked(site, rel):
        return None
    extensions = tuple(e.lower() for e in site.extensions)
    path = site.source
    linked = False
    *folders, name = rel.split("/")
    try:
        for depth, folder in enumerate(folders):
            path = os.path.join(path, folder)
            mode = os.lstat(path).st_mode
            if stat_module.S_ISDIR(mode):
                continue
            if not (stat_module.S_ISLNK(mode) and not linked and follows(root, path, "/".join(folders[: depth + 1]), extensions)):
                return None
            linked = True
        path = os.path.join(path, name)
        info = os.lstat(path)
    except OSError:
        return None
    found = _linked_file(root, path, rel) if stat_module.S_ISLNK(info.st_mode) else info
    return (found.st_size, found.st_mtime_ns) if found is not None and stat_module.S_ISREG(found.st_mode) else None


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


def scan_elsewhere(site: Site, here: float = 0.0) -> Callable[[], Scan]:
    """Start :func:`scan_text` in a forked child; the returned function gives its result (or
    scans here, when forking is unsafe or the child failed).

    With ``here``, the returned function stats that share of the files itself (the child the
    rest): for a caller that has other work first, and then time to wait. The child lists the
    site and hands this process its share's names over a second pipe, so that the site is
    listed once (the shares cannot overlap however files come and go) and not here."""
    if not forks.can_fork():
        return lambda: scan_text(site)
    if not here:
        return _whole(site, forks.start(lambda: _dump(scan_folders(site))))
    handover, handing = os.pipe()

    def work() -> bytes:
        os.close(handover)
        listed = list_posts(site)
        cuts = [round(here * len(names)) for _, _, names in listed]
        # From a thread: the share may be more than a pipe holds, and this process has its
        # own share to stat meanwhile.
        sender = threading.Thread(target=_send, args=(handing, marshal.dumps(
            [(folder, rel, SEP.join(names[:cut])) for (folder, rel, names), cut in zip(listed, cuts, strict=True)])))
        sender.start()
        root = site_root(site)
        mine = [(rel, stat_files(folder, rel, names[cut:], root)) for (folder, rel, names), cut in zip(listed, cuts, strict=True)]
        sender.join()
        return _dump(mine)

    child = forks.start(work)
    os.close(handing)
    if child is None:
        os.close(handover)
        return lambda: scan_text(site)

    def result() -> Scan:
        with os.fdopen(handover, "rb") as pipe:
            given = pipe.read()
        mine: list[Chunk] | None = None
        root = site_root(site)
        with contextlib.suppress(ValueError, EOFError, TypeError):
            mine = [(str(rel), stat_files(str(folder), str(rel), str(names).split(SEP) if names else [], root))
                    for folder, rel, names in marshal.loads(given)]
        theirs = _chunks_of(child)
        if mine is not None and theirs is not None:
            return flatten(merge(mine, theirs))
        log.warning("scanning the site in a child process failed; scanning here")
        return scan_text(site)

    return result


def _whole(site: Site, child: forks.Child | None) -> Callable[[], Scan]:
    def result() -> Scan:
        chunks = _chunks_of(child)
        if chunks is not None:
            return flatten(chunks)
        log.warning("scanning the site in a child process failed; scanning here")
        return scan_text(site)

    return result


def _dump(chunks: list[Chunk]) -> bytes:
    return marshal.dumps([(rel, tuple(part)) for rel, part in chunks])


def _chunks_of(child: forks.Child | None) -> list[Chunk] | None:
    data = child.result() if child is not None else None
    if data is not None:
        with contextlib.suppress(ValueError, EOFError, TypeError):
            return [(str(rel), Scan(*part)) for rel, part in marshal.loads(data)]
    return None


def _send(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError), os.fdopen(fd, "wb") as pipe:  # the parent may have stopped
        pipe.write(data)
