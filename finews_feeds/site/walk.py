"""The walk: which files of a Jekyll site are posts, with their sizes and mtimes.

Jekyll 4.3's reader (``Reader#read_directories``, ``EntryFilter``, ``PostReader``): post files
are ``YYYY-MM-DD-slug.ext`` files under the ``_posts`` folder of every folder the reader goes
into (and the folders inside it); the reader goes into no folder whose name starts with `.`,
`_`, `#` or `~`, ends with `~` or `.`, or that `_config.yml`'s ``exclude`` names, unless its
``include`` names it; with ``collections_dir`` set, only the ``_posts`` folders under it count.
Inside a ``_posts`` folder each file's path is judged as Jekyll's glob lists it (see
:class:`Rules`). Symlinks are followed only inside the site (Jekyll's safe mode, made exact:
see :func:`inside`). :func:`walk` lists them all; :func:`stat_post` applies the same rules to
one path, for a file watcher's report. A large site's walk is mostly the stat of every file:
each ``_posts`` listing is filtered with one regular expression and stat'ed by ``map``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import stat as stat_module
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

from ..models import Site
from ..parallel import run

log = logging.getLogger(__name__)


class Entry(NamedTuple):
    """A post file: path relative to the site (with `/`), size, mtime in nanoseconds."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Scan:
    """What a walk found, as three columns: 100,000 files stay three lists (made and compared by
    C-level maps), not 100,000 objects."""

    paths: list[str]  #: relative to the site, with `/`, in the order of the folders' listings
    sizes: list[int]
    mtimes: list[int]  #: nanoseconds (see :func:`int64`)

    def entries(self) -> list[Entry]:
        return list(map(Entry, self.paths, self.sizes, self.mtimes))


def scan(site: Site, *, parallel: bool = True) -> Scan:
    """Every file Jekyll would read as a post, with its size and mtime; on several cores for a
    large site (:data:`STAT_PARALLEL_FROM`)."""
    root = site_root(site)
    chunks = [(folder, rel, names[i : i + STAT_CHUNK]) for folder, rel, names in list_posts(site)
              for i in range(0, len(names), STAT_CHUNK)]
    task = functools.partial(_stat_chunk, root)
    if sum(len(names) for _, _, names in chunks) < STAT_PARALLEL_FROM:
        columns = list(map(task, enumerate(chunks)))
    else:
        columns = sorted(run(task, list(enumerate(chunks)), parallel=parallel))  # back in listing order
    return Scan([p for _, paths, _, _ in columns for p in paths], [n for _, _, sizes, _ in columns for n in sizes],
                [m for _, _, _, mtimes in columns for m in mtimes])


def walk(site: Site) -> list[Entry]:
    """:func:`scan` as entries."""
    return scan(site).entries()


#: Files from which the walk stats on several cores: 100,000 files take 0.16 s on two cores, 0.33 s
#: on one (a pool costs ~10 ms to start). Files a worker stats at a time:
STAT_PARALLEL_FROM = 20_000
STAT_CHUNK = 10_000


def _stat_chunk(root: str, item: tuple[int, tuple[str, str, list[str]]]) -> tuple[int, list[str], list[int], list[int]]:
    """:func:`stat_files` of one chunk of a folder, as columns (they cross between processes
    ten times faster than tuples of a named type)."""
    index, (folder, rel, names) = item
    return index, *stat_files(folder, rel, names, root)


@functools.lru_cache(maxsize=32)
def _post_names(extensions: tuple[str, ...], separator: str) -> re.Pattern[str]:
    """Names of post files inside a listing joined by ``separator`` (a character no name of it
    holds): with a newline, ``^``/``$`` anchors make it twice as fast as lookarounds for NUL."""
    endings = "|".join(re.escape(e) for e in extensions)
    if separator == "\n":
        return re.compile(rf"^\d{{2,4}}-\d{{1,2}}-\d{{1,2}}-.+?(?i:{endings})$", re.MULTILINE)
    return re.compile(rf"(?<![^\x00])\d{{2,4}}-\d{{1,2}}-\d{{1,2}}-[^\x00]+?(?i:{endings})(?![^\x00])")


# ---------------------------------------------------------------- Jekyll's EntryFilter


#: A name starting with one of these is "special" to Jekyll (``EntryFilter#special?``).
SPECIAL = "._#~"


@functools.lru_cache(maxsize=1024)
def _fnmatch(pattern: str) -> re.Pattern[str]:
    """Ruby's ``File.fnmatch?`` without flags, as ``EntryFilter#glob_include?`` calls it: `*`
    and `?` match `/` too, `[...]` (`!` or `^` negates), a backslash escapes; no braces."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[" and "]" in pattern[i + 1 :]:
            close = pattern.index("]", i + 1)
            body = pattern[i:close]
            i = close + 1
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\").replace("[", "\\[") + "]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def _head(pattern: str) -> str:
    """The literal text a pattern starts with (before its first wildcard)."""
    cut = min((i for i in (pattern.find(c) for c in "*?[\\") if i >= 0), default=len(pattern))
    return pattern[:cut]


def _glob_include(patterns: tuple[str, ...], rel: str, is_dir: bool) -> bool:
    """``EntryFilter#glob_include?``: whether a pattern names the path ``rel`` (from the site's
    folder, without a leading `/`): by glob, as a prefix of the path (so `draft` also names
    `drafts/` and `draft.md`), or, for a folder, with a trailing `/`."""
    for pattern in patterns:
        if rel.startswith(pattern) or (is_dir and pattern == rel + "/") or _fnmatch(pattern).fullmatch(rel):
            return True
    return False


def _compatible(pattern: str, prefix: str) -> bool:
    """Whether ``pattern`` could name some path that starts with ``prefix``."""
    head = _head(pattern)
    return head.startswith(prefix) or prefix.startswith(head)


@dataclass(frozen=True, slots=True)
class Rules:
    """Which folders and files Jekyll 4.3's reader lets in (``EntryFilter#filter``), from the
    site's settings. Patterns are as Jekyll joins them to the site's folder: one leading `/`
    dropped (``File.join``)."""

    extensions: tuple[str, ...]  #: lower case
    exclude: tuple[str, ...]  #: `exclude` less `include` (``site.exclude - site.include``)
    include: tuple[str, ...]
    collections_dir: str
    destination: str  #: relative to the site, without a trailing `/` ("": outside it)
    #: whether an `include` pattern could name a post file by its base name (a dated name)
    post_like_include: bool = False

    def included(self, entry: str) -> bool:
        """``EntryFilter#included?``: Jekyll matches the entry as it lists it (a name, or a path
        inside a `_posts` folder) as if it stood in the site's top folder, and its base name."""
        return _glob_include(self.include, entry, False) or _glob_include(self.include, entry.rpartition("/")[2], False)

    def admits(self, entry: str, rel: str, is_dir: bool = False) -> bool:
        """Whether ``EntryFilter#filter`` keeps ``entry`` (as Jekyll lists it), at ``rel`` from the
        site's folder: not ending in `.`, not excluded unless included, and then included or
        neither special (`.`, `_`, `#`, `~` first, of the entry or its base name) nor a backup (`~` last)."""
        if entry.endswith("."):
            return False
        included = self.included(entry)
        if not included and _glob_include(self.exclude, rel, is_dir):
            return False
        base = entry.rpartition("/")[2]
        return included or not (entry[0] in SPECIAL or (base != "" and base[0] in SPECIAL) or entry.endswith("~"))

    def folder(self, name: str, rel: str) -> bool:
        """Whether the reader goes into the folder ``name`` at ``rel`` (from the site's folder;
        `_posts` aside: see :meth:`reads_posts`)."""
        return rel != self.destination and self.admits(name, rel, True)

    def reads_posts(self, parent: str) -> bool:
        """Whether the `_posts` folder in ``parent`` (from the site's folder, "" or ending in `/`) is
        read: ``Reader#outside_configured_directory?``, a prefix of the folder's path as Jekyll
        writes it (`/coll...`; the top folder is "")."""
        if not self.collections_dir:
            return True
        return bool(parent) and ("/" + parent.rstrip("/")).startswith("/" + self.collections_dir)

    def may_include(self, prefix: str) -> bool:
        """Whether an `include` pattern could let in a post file whose entry starts with ``prefix``."""
        return self.post_like_include or any(_compatible(p, prefix) for p in self.include)

    def may_exclude(self, prefix: str) -> bool:
        """Whether an `exclude` pattern could name a path that starts with ``prefix``."""
        return any(_compatible(p, prefix) for p in self.exclude)


def rules_of(site: Site) -> Rules:
    return _rules(tuple(e.lower() for e in site.extensions), site.exclude, site.include, site.collections_dir,
                  site.destination)


@functools.lru_cache(maxsize=32)
def _rules(extensions: tuple[str, ...], exclude: tuple[str, ...], include: tuple[str, ...], collections_dir: str,
           destination: str) -> Rules:
    strip = functools.partial(re.compile("^/").sub, "")  # File.join(source, "/x") is source/x
    include = tuple(map(strip, include))
    return Rules(extensions, tuple(p for p in map(strip, exclude) if p not in include), include, collections_dir,
                 destination.strip("/"), any(not _head(p) or _head(p)[0].isdigit() for p in include))


#: A posts folder as listed: its path, its path relative to the site (ending in `/`), the
#: names of its post files.
Listed = tuple[str, str, list[str]]


def list_posts(site: Site) -> list[Listed]:
    """Every posts folder of the site (the `_posts` folder of each folder Jekyll's reader goes
    into, and the folders inside them) with the names of its post files, in the order of the
    listings: a `_posts` folder of 100,000 files is filtered with one regex over its listing,
    in C. A symlinked folder is entered by the rule of :func:`follows`."""
    rules = rules_of(site)
    root = site_root(site)
    listed: list[Listed] = []
    pending: list[Pending] = [(site.source, "", None, False)]
    while pending:
        folder, rel, sub, linked = pending.pop()
        try:
            if sub is not None:
                listed.append((folder, rel, _post_files(folder, rel, sub, rules, pending, root, linked)))
                continue
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            kind = _kind(name, rel, rules)
                            if kind is not None:
                                pending.append((entry.path, rel + name + "/", None if kind is _NOT_POSTS else kind,
                                                linked))
                        elif entry.is_symlink() and not linked:
                            kind = _kind(name, rel, rules)
                            if kind is not None and follows(root, entry.path, rel + name, rules):
                                pending.append((entry.path, rel + name + "/", None if kind is _NOT_POSTS else kind,
                                                True))
        except OSError as exc:
            log.warning("%s: cannot list folder: %s", folder, exc.strerror)
    return listed


def _kind(name: str, parent: str, rules: Rules) -> str | None:
    """How the reader treats the folder ``name`` in ``parent`` (outside posts folders): "" for
    a posts folder it reads, :data:`_NOT_POSTS` for a folder it goes into, None for neither
    (the ``sub`` of :data:`Pending`)."""
    if name == "_posts":
        return "" if rules.reads_posts(parent) else None
    return None if not rules.folder(name, parent + name) else _NOT_POSTS


#: The ``sub`` of a folder outside any posts folder (see :data:`Pending`): no path is this.
_NOT_POSTS = "\x00"

#: A folder the walk is to list: its path, its path relative to the site (ending in `/`), its
#: path inside its posts folder ("" for the `_posts` folder itself, else ending in `/`; None
#: outside posts folders), whether it was reached through a symlinked folder.
Pending = tuple[str, str, str | None, bool]


def _post_files(folder: str, rel: str, sub: str, rules: Rules, pending: list[Pending], root: str,
                linked: bool) -> list[str]:
    listing = os.listdir(folder)
    joined = "\n".join(listing)
    if joined.count("\n") == len(listing) - 1 or not listing:
        found: list[str] = _post_names(rules.extensions, "\n").findall(joined)
    else:  # a name with a newline in it
        found = _post_names(rules.extensions, "\x00").findall("\x00".join(listing))
    if len(found) != len(listing):
        # Folders inside a _posts folder hold posts too; they are rare, so stat what is left.
        taken = set(found)
        for name in listing:
            # Ruby's glob (`Dir["**/*"]`) lists nothing whose name starts with a dot; under a
            # first folder that is special, only a file `include` names is read. Jekyll's glob
            # follows no symlinked folder: inside one, no special folder is entered, so that a
            # link to a folder above never lists its `_posts` folder a second time.
            if (name in taken or name[0] == "." or (linked and name[0] in SPECIAL)
                    or (not sub and name[0] in SPECIAL and not rules.may_include(name + "/"))):
                continue
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                mode = os.stat(path, follow_symlinks=False).st_mode
                if stat_module.S_ISDIR(mode):
                    pending.append((path, rel + name + "/", sub + name + "/", linked))
                elif stat_module.S_ISLNK(mode) and not linked and follows(root, path, rel + name, rules):
                    pending.append((path, rel + name + "/", sub + name + "/", True))
    if found and (sub or rules.may_exclude(rel)):
        found = [name for name in found if rules.admits(sub + name, rel + name)]
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


def follows(root: str, path: str, rel: str, rules: Rules) -> bool:
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
    role = _entered(target.split("/") if target != "." else [], rules)
    if role == _entered(rel.split("/"), rules):
        log.debug("%s: a symlink to %s, which the walk reads anyway: not followed", rel, target)
        return False
    return True


def stat_files(folder: str, rel: str, names: list[str], root: str) -> tuple[list[str], list[int], list[int]]:
    """The files ``names`` of ``folder`` (``rel`` from the site) that are regular files, or
    symlinks to regular files inside the site's real folder ``root`` (:func:`site_root`), with
    their sizes and mtimes (a link's: its target's), as three columns: stat'ed by ``map``,
    relative to the folder, without following links (as cheap, and a link is then told by its
    mode)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("%s: cannot list folder: %s", folder, exc.strerror)
        return [], [], []
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
                if found is None:
                    continue
                info = found
            if stat_module.S_ISREG(info.st_mode):
                pairs.append((name, info))
        names, stats = [name for name, _ in pairs], [info for _, info in pairs]
    # Columns made by C-level maps, with no Python loop of their own (a fifth of a large walk).
    return ([rel + name for name in names], list(map(attrgetter("st_size"), stats)),
            list(map(int64, map(attrgetter("st_mtime_ns"), stats))))


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
    is a regular file, and the symlinks on the way, the caller checks: :func:`stat_post`)."""
    *folders, name = rel.split("/")
    rules = rules_of(site)
    at = _place(folders, rules)
    if at is None or at < 0 or not name or _post_names(rules.extensions, "\x00").fullmatch(name) is None:
        return False
    return rules.admits("/".join([*folders[at + 1 :], name]), rel)


def entered(site: Site, rel: str) -> bool:
    """Whether the walk goes into the folder ``rel`` (relative to the site, with `/`): whether
    posts can come or go with it."""
    return _place(rel.split("/"), rules_of(site)) is not None


def _entered(folders: list[str], rules: Rules) -> bool | None:
    """None when the walk does not go into ``folders``; else whether they are in a posts folder."""
    at = _place(folders, rules)
    return None if at is None else at >= 0


def _place(folders: list[str], rules: Rules) -> int | None:
    """None when the walk does not go into ``folders``; else the index of the posts folder they
    are in, or -1 outside any (the rules of :func:`list_posts` and :func:`_post_files`)."""
    posts = -1
    parent = ""
    for depth, folder in enumerate(folders):
        if not folder:
            return None
        if posts >= 0:
            if folder[0] == "." or (depth == posts + 1 and folder[0] in SPECIAL and not rules.may_include(folder + "/")):
                return None
            # A folder inside a posts folder whose name looks like a post is taken for one.
            if _post_names(rules.extensions, "\x00").fullmatch(folder):
                return None
        elif folder == "_posts":
            if not rules.reads_posts(parent):
                return None
            posts = depth
        elif not rules.folder(folder, parent + folder):
            return None
        parent += folder + "/"
    return posts


def stat_post(site: Site, rel: str, root: str | None = None) -> Entry | None:
    """The file ``rel`` (relative to the site, with `/`) as the walk would list it now, or None
    when it would not: the walk's rules, symlinks included (:func:`follows`), for one path (a file
    watcher's report). ``root``: :func:`site_root`, when the caller has it."""
    if not walked(site, rel):
        return None
    root = root if root is not None else site_root(site)
    rules = rules_of(site)
    path = site.source
    linked = False
    *folders, name = rel.split("/")
    posts = _place(folders, rules) or 0
    try:
        for depth, folder in enumerate(folders):
            if linked and depth > posts and folder[0] in SPECIAL:
                return None  # see _post_files
            path = os.path.join(path, folder)
            mode = os.lstat(path).st_mode
            if stat_module.S_ISDIR(mode):
                continue
            if not (stat_module.S_ISLNK(mode) and not linked and follows(root, path, "/".join(folders[: depth + 1]), rules)):
                return None
            linked = True
        path = os.path.join(path, name)
        info = os.lstat(path)
    except OSError:
        return None
    found = _linked_file(root, path, rel) if stat_module.S_ISLNK(info.st_mode) else info
    if found is None or not stat_module.S_ISREG(found.st_mode):
        return None
    return Entry(rel, found.st_size, int64(found.st_mtime_ns))


def int64(value: int) -> int:
    """``value`` as a signed 64-bit integer, as the cache keeps it: an mtime past 2262
    (``touch -d 2300-01-01``) wraps around, which still tells a change from no change."""
    return value if value < 1 << 63 else (value + (1 << 63)) % (1 << 64) - (1 << 63)


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
