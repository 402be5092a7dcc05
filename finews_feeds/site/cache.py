"""The post cache: one SQLite file per site remembering what each post file said.

A build must not read 100,000 files again because one was added, nor hold 100,000 posts in
memory to find the fifty each feed shows. So what each file said is kept here, keyed by its
size and mtime, with an index of the feeds each post belongs to; a build asks which feeds
changed since the generation it last built at, and for the newest posts of those feeds.

Tables:

- ``meta``: the layout version, the fingerprint of the code and of the site settings that shape
  a post (another one empties the cache), the cache's id (new with every emptied cache), its
  generation (one more for each run that changes a file) and the last scan of the site.
- ``files``: per file, its size and mtime when it was read, and what it said: a post (its
  front, marshalled), a rejection (the reason) or unpublished; with a CRC-32 of the data.
- ``terms``: per post, the feeds it belongs to (``site:``, ``category:NAME``, ``tag:NAME``: a
  feed's key), ordered newest first within each feed.
- ``touched``: the feeds whose posts changed in each generation.
- ``bodies``: a post's rendered body, stored on first use and dropped with any change of its file;
  with what its Liquid looked up (other posts' URLs), checked again when it is read.
- ``names``: per post, its file name without the ending (`2022-04-20-slug`), for Liquid's
  ``{% post_url %}`` (:meth:`PostCache.named`); ``{% link %}`` asks ``files`` (:meth:`PostCache.url_at`).

Every row is a fact that holds on its own ("this file, at this size and mtime, says this"), so
each batch is written in its own transaction and a run killed half-way leaves a cache right
about everything it holds. The last scan is the exception, a summary of the rows: it is dropped
before any row changes and kept again only by the last transaction of a run that walked the
whole site. A damaged file (a checksum that does not match, SQLite finding a page malformed)
is removed and the cache starts empty, with one warning (:class:`CacheDamaged`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import marshal
import operator
import os
import sqlite3
import tempfile
import uuid
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from pathlib import Path
from typing import Any

from ..models import FileError, Site
from .posts import Body, Front, Outcome
from .walk import Entry, Scan

log = logging.getLogger(__name__)

#: Bump when the layout of the tables or of a stored front or body changes (2: the ``names``
#: table; fronts with the author's email and URI and ``excerpt_only``; bodies with references;
#: 3: fronts with the image's size).
FORMAT = 3
NAME = "posts.sqlite3"
#: Generations of ``touched`` kept: a build further behind than this renders every feed.
KEEP_GENERATIONS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
    status TEXT NOT NULL,  -- 'post', 'rejected' or 'unpublished'
    data BLOB NOT NULL,    -- a post's front (marshal), a rejection's reason (UTF-8) or nothing
    crc INTEGER NOT NULL   -- CRC-32 of data
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS terms (key TEXT NOT NULL, neg_date REAL NOT NULL, path TEXT NOT NULL,
                                  PRIMARY KEY (key, neg_date, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS touched (generation INTEGER NOT NULL, key TEXT NOT NULL,
                                    PRIMARY KEY (generation, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bodies (path TEXT PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names (name TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (name, path)) WITHOUT ROWID;
"""
_TABLES = ("meta", "files", "terms", "touched", "bodies", "names")

#: What the cache records of one file: path, size, mtime, status, data (see ``files``), and the
#: post's date and feeds (None for a file that is not a post).
Row = tuple[str, int, int, str, bytes, float | None, tuple[str, ...]]


class CacheDamaged(Exception):
    """The cache file cannot be trusted."""


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` says the cache file is damaged: a checksum that does not match, or SQLite
    finding the file malformed (its plain ``DatabaseError``; a locked or full disk is an
    ``OperationalError``, a closed connection a ``ProgrammingError``: not damage)."""
    return (isinstance(exc, CacheDamaged) or type(exc) is sqlite3.DatabaseError
            # A flipped bit in a row's header can make a blob a text that is not UTF-8.
            or (isinstance(exc, sqlite3.OperationalError) and "decode" in str(exc)))


def row_of(entry: Entry, outcome: Outcome) -> Row:
    """What to record of ``entry``, which gave ``outcome`` when read."""
    if isinstance(outcome, Front):
        return (entry.path, entry.size, entry.mtime_ns, "post", _pack_front(outcome), outcome.date.timestamp(),
                outcome.feed_keys())
    if isinstance(outcome, FileError):
        return entry.path, entry.size, entry.mtime_ns, "rejected", outcome.message.encode("utf-8"), None, ()
    return entry.path, entry.size, entry.mtime_ns, "unpublished", b"", None, ()


_FRONT = ("slug", "title", "date", "updated", "categories", "tags", "permalink", "url", "excerpt", "description",
          "image", "author", "source", "author_email", "author_uri", "excerpt_only", "image_size")


def _pack_front(front: Front) -> bytes:
    values: list[Any] = [getattr(front, name) for name in _FRONT]
    values[2] = front.date.timestamp()
    values[3] = front.updated.timestamp() if front.updated else None
    return marshal.dumps(tuple(values))


def _unpack_front(path: str, data: bytes, site: Site) -> Front:
    values = list(marshal.loads(data))
    if len(values) != len(_FRONT):
        raise ValueError("a stored front of another shape")
    values[2] = datetime.fromtimestamp(values[2], site.timezone)
    values[3] = datetime.fromtimestamp(values[3], site.timezone) if values[3] is not None else None
    return Front(path, *values)


def _pack_body(body: Body) -> bytes:
    return marshal.dumps((body.html.encode("utf-8"), body.summary, body.image, body.source, body.content_hash,
                          body.references))


def _unpack_body(data: bytes) -> Body:
    html, summary, image, source, content_hash, references = marshal.loads(data)
    return Body(html.decode("utf-8"), summary, image, source, content_hash,
                tuple((kind, argument, found) for kind, argument, found in references))


def name_of(path: str) -> str:
    """A post's name for ``{% post_url %}``: its file name without the ending."""
    return path.rpartition("/")[2].rpartition(".")[0]


def _seal(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest() + data


def _unseal(raw: bytes) -> bytes:
    data = raw[16:]
    if len(raw) < 16 or hashlib.blake2b(data, digest_size=16).digest() != raw[:16]:
        raise CacheDamaged("the last scan does not match its checksum")
    return data


def pack_scan(scan: Scan) -> bytes:
    """A walk's files in the form the cache keeps them: loaded and compared in a few
    milliseconds at 100,000 posts, where loading every row takes a fifth of a second."""
    return marshal.dumps(("\x00".join(scan.paths), array("q", scan.sizes).tobytes(), array("q", scan.mtimes).tobytes()))


@dataclass(frozen=True, slots=True)
class Changes:
    """How the files of a walk differ from what the cache holds."""

    read: list[Entry]  #: new files, and files whose size or mtime changed: to read
    removed: list[str]  #: paths the cache holds that the walk did not find


class PostCache:
    """The cache of one site (see the module doc): one connection, for one thread. ``path``
    None: a cache for this run only (no cache folder), in a temporary folder removed with it,
    so that worker processes can open it as they open any other."""

    def __init__(self, path: Path | None, fingerprint: str, site: Site) -> None:
        self._temporary = tempfile.TemporaryDirectory(prefix="finews-cache-") if path is None else None
        self.path = path if path is not None else Path(self._temporary.name) / NAME  # type: ignore[union-attr]
        self.site = site
        self.fingerprint = fingerprint
        self._db = self._open()

    # -- opening --------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # A power cut may lose the last transactions, never break the file: what they
            # recorded is read again from the files.
            db.execute("PRAGMA synchronous=NORMAL")
            return self._prepare(db)
        except (sqlite3.DatabaseError, CacheDamaged) as exc:
            if not is_damage(exc):
                raise
            db.close()
            self._remove(exc)
            return self._open()

    def _prepare(self, db: sqlite3.Connection) -> sqlite3.Connection:
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint:
            if meta:
                log.info("%s: made by another version or with other site settings; starting afresh", self.path)
            with _transaction(db):
                for table in _TABLES:
                    db.execute(f"DELETE FROM {table}")
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("fingerprint", self.fingerprint), ("id", uuid.uuid4().hex), ("generation", 0)])
        return db

    def _remove(self, exc: Exception) -> None:
        log.warning("%s: damaged (%s); starting afresh", self.path, exc)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def discard(self, exc: Exception) -> None:
        """Start afresh in place of a damaged file (one warning)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._remove(exc)
        self._db = self._open()

    def close(self) -> None:
        self._db.close()
        if self._temporary is not None:
            self._temporary.cleanup()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the cache for a run that reads the site and then relies on what changed: two
        runs that record at once would each think it saw all of a generation."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def id(self) -> str:
        """Names this cache's history: new whenever it starts empty."""
        return str(self._meta("id"))

    @property
    def generation(self) -> int:
        return int(self._meta("generation"))

    # -- what changed ---------------------------------------------------------------------------

    def changes(self, scan: Scan, packed: bytes) -> Changes:
        """How ``scan`` (packed by :func:`pack_scan`) differs from what is recorded."""
        last = self._meta("scan")
        if last is not None:
            data = _unseal(last)
            if data == packed:
                return Changes([], [])
            try:
                text, sizes, mtimes = marshal.loads(data)
                paths = text.split("\x00") if text else []
                known = dict(zip(paths, zip(array("q", sizes), array("q", mtimes), strict=True), strict=True))
            except (ValueError, EOFError, TypeError) as exc:
                raise CacheDamaged(f"the last scan is unreadable ({exc})") from None
        else:
            known = {path: (size, mtime) for path, size, mtime in self._db.execute("SELECT path, size, mtime FROM files")}
        # Compared column against column by C-level maps: a Python loop over 100,000 files
        # was a tenth of a rebuild.
        differ = list(map(operator.ne, map(known.get, scan.paths), zip(scan.sizes, scan.mtimes, strict=True)))
        read = list(map(Entry, compress(scan.paths, differ), compress(scan.sizes, differ), compress(scan.mtimes, differ)))
        listed = set(scan.paths)
        return Changes(read, [path for path in known if path not in listed])

    def stats(self, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The size and mtime recorded for each of ``paths`` the cache holds."""
        return {path: (size, mtime) for path, size, mtime in self._rows("SELECT path, size, mtime FROM files", paths)}

    # -- recording ------------------------------------------------------------------------------

    def begin(self) -> int:
        """Start a run that changes files; returns the generation its records carry. The last
        scan goes first: until the run ends, it no longer sums up the rows."""
        with _transaction(self._db):
            generation = self.generation + 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (generation,))
            self._db.execute("DELETE FROM meta WHERE key = 'scan'")
            self._db.execute("DELETE FROM touched WHERE generation <= ?", (generation - KEEP_GENERATIONS,))
        return generation

    def record(self, generation: int, rows: Sequence[Row]) -> None:
        """Record what files said (one transaction): the feeds they belonged to and belong to
        now are touched in ``generation``."""
        with _transaction(self._db):
            touched = self._drop([row[0] for row in rows])
            # In key order: a fifth cheaper than as they come (B-tree pages filled in turn).
            self._db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                                 sorted((path, size, mtime, status, data, zlib.crc32(data))
                                        for path, size, mtime, status, data, _, _ in rows))
            self._db.executemany("INSERT OR IGNORE INTO terms VALUES (?, ?, ?)",
                                 sorted((key, -date, path) for path, _, _, _, _, date, keys in rows if date is not None
                                        for key in keys))
            self._db.executemany("INSERT OR IGNORE INTO names VALUES (?, ?)",
                                 sorted((name_of(row[0]), row[0]) for row in rows if row[3] == "post"))
            touched.update(key for row in rows for key in row[6])
            self._touch(generation, touched)

    def finish(self, generation: int, removed: Sequence[str], packed: bytes | None) -> None:
        """End the run of ``generation``: forget the ``removed`` files, and keep the scan
        (``packed``) when every file it lists is recorded as it is there."""
        with _transaction(self._db):
            self._touch(generation, self._drop(removed))
            if packed is not None:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('scan', ?)", (_seal(packed),))

    def _drop(self, paths: Sequence[str]) -> set[str]:
        """Remove what is recorded of ``paths``; the feeds their posts belonged to."""
        touched: set[str] = set()
        terms: list[tuple[str, float, str]] = []
        known: list[tuple[str]] = []
        for path, status, data, crc in self._rows("SELECT path, status, data, crc FROM files", paths):
            known.append((path,))
            if status == "post":
                front = self._front(path, data, crc)
                keys = front.feed_keys()
                touched.update(keys)
                terms.extend((key, -front.date.timestamp(), path) for key in keys)
        # Only the paths recorded before: a cold run (every path new) deletes nothing.
        self._db.executemany("DELETE FROM terms WHERE key = ? AND neg_date = ? AND path = ?", terms)
        self._db.executemany("DELETE FROM files WHERE path = ?", known)
        self._db.executemany("DELETE FROM bodies WHERE path = ?", known)
        self._db.executemany("DELETE FROM names WHERE name = ? AND path = ?", [(name_of(path), path) for (path,) in known])
        return touched

    def _touch(self, generation: int, keys: set[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO touched VALUES (?, ?)", [(generation, key) for key in keys])

    def store_bodies(self, bodies: Sequence[tuple[Entry, Body]]) -> None:
        """Keep rendered bodies, each only while its file has the size and mtime it was read at."""
        with _transaction(self._db):
            current = self.stats([entry.path for entry, _ in bodies])
            rows = []
            for entry, body in bodies:
                if current.get(entry.path) == (entry.size, entry.mtime_ns):
                    data = _pack_body(body)
                    rows.append((entry.path, data, zlib.crc32(data)))
            self._db.executemany("INSERT OR REPLACE INTO bodies VALUES (?, ?, ?)", rows)

    # -- reading --------------------------------------------------------------------------------

    def _rows(self, query: str, paths: Sequence[str]) -> list[tuple[Any, ...]]:
        """``query`` (a SELECT) for the rows of ``paths``, a few thousand at a time (SQLite
        takes at most 32,766 values a statement)."""
        rows: list[tuple[Any, ...]] = []
        where = " AND " if " WHERE " in query else " WHERE "
        for i in range(0, len(paths), 5000):
            part = paths[i : i + 5000]
            rows.extend(self._db.execute(f"{query}{where}path IN ({','.join('?' * len(part))})", part).fetchall())
        return rows

    def _front(self, path: str, data: bytes, crc: int) -> Front:
        if zlib.crc32(data) != crc:
            raise CacheDamaged(f"what is recorded of {path} does not match its checksum")
        try:
            return _unpack_front(path, data, self.site)
        except (ValueError, EOFError, TypeError, OverflowError) as exc:
            raise CacheDamaged(f"what is recorded of {path} is unreadable ({exc})") from None

    def touched_since(self, generation: int) -> set[str] | None:
        """The feeds whose posts changed after ``generation``; None when the cache cannot tell
        (that generation is in the future or no longer kept)."""
        current = self.generation
        if generation > current or generation < current - KEEP_GENERATIONS + 1:
            return None
        return {key for (key,) in self._db.execute("SELECT DISTINCT key FROM touched WHERE generation > ?", (generation,))}

    def feeds(self, until: float | None) -> dict[str, tuple[int, float]]:
        """Every feed with posts dated up to ``until`` (POSIX time; every post when None): its
        post count and its newest post's date."""
        bound = -until if until is not None else float("-inf")
        return {key: (count, -neg) for key, count, neg in self._db.execute(
            "SELECT key, count(*), min(neg_date) FROM terms WHERE neg_date >= ? GROUP BY key", (bound,))}

    def newest(self, key: str, until: float | None, limit: int) -> list[str]:
        """The paths of the ``limit`` newest posts of the feed ``key`` dated up to ``until``,
        newest first (then by path)."""
        bound = -until if until is not None else float("-inf")
        rows = self._db.execute("SELECT neg_date, path FROM terms WHERE key = ? AND neg_date >= ? "
                                "ORDER BY neg_date, path LIMIT ?", (key, bound, limit)).fetchall()
        # The index has no checksum of its own: each post it names is checked against its
        # checksummed front, so a damaged row cannot put a post in a feed it is not in.
        fronts = self.fronts([path for _, path in rows])
        for neg_date, path in rows:
            front = fronts.get(path)
            if front is None or key not in front.feed_keys() or -neg_date != front.date.timestamp():
                raise CacheDamaged(f"the index of feed {key} names {path} wrongly")
        return [path for _, path in rows]

    def versions(self, key: str, until: float | None) -> list[tuple[str, str]]:
        """Every post of the feed ``key`` dated up to ``until``, newest first (then by path), with
        its version: its date and its file's size and mtime, as the walk saw them (a file that
        changes is read again, and what the feeds show of a post comes from its file and the
        site's settings). Not checked against the fronts as :meth:`newest` is: the posts of a
        page that is rendered are, when loaded."""
        bound = -until if until is not None else float("-inf")
        return [(path, f"{-neg_date!r}:{size}:{mtime}") for neg_date, path, size, mtime in self._db.execute(
            "SELECT t.neg_date, t.path, f.size, f.mtime FROM terms t JOIN files f ON f.path = t.path "
            "WHERE t.key = ? AND t.neg_date >= ? ORDER BY t.neg_date, t.path", (key, bound))]

    def between(self, start: float, end: float) -> list[str]:
        """The paths of the posts dated in [start, end), newest first (then by path)."""
        return [path for (path,) in self._db.execute(
            "SELECT path FROM terms WHERE key = 'site:' AND neg_date > ? AND neg_date <= ? ORDER BY neg_date, path",
            (-end, -start))]

    def next_after(self, moment: float) -> float | None:
        """The date of the first post dated after ``moment``, if any (a future post)."""
        row = self._db.execute("SELECT -max(neg_date) FROM terms WHERE key = 'site:' AND neg_date < ?",
                               (-moment,)).fetchone()
        return float(row[0]) if row[0] is not None else None

    def fronts(self, paths: Sequence[str]) -> dict[str, Front]:
        """The fronts recorded for those of ``paths`` that are posts."""
        return {path: self._front(path, data, crc)
                for path, data, crc in self._rows("SELECT path, data, crc FROM files WHERE status = 'post'", paths)}

    def url_at(self, path: str) -> str | None:
        """The site-relative URL (permalink) of the post at ``path``, if it is one."""
        front = self.fronts([path]).get(path)
        return front.permalink if front is not None else None

    def named(self, prefix: str) -> list[Front]:
        """The posts whose names (:func:`name_of`) start with ``prefix``, oldest first (then
        by path): Jekyll's order of posts, in which ``{% post_url %}`` takes the first match."""
        paths = [path for (path,) in self._db.execute(
            "SELECT path FROM names WHERE name >= ? AND name < ? ORDER BY path", (prefix, prefix + "\U0010ffff"))]
        return sorted(self.fronts(paths).values(), key=lambda front: (front.date.timestamp(), front.path))

    def entries(self, paths: Sequence[str]) -> dict[str, Entry]:
        return {path: Entry(path, size, mtime) for path, (size, mtime) in self.stats(paths).items()}

    def bodies(self, paths: Sequence[str]) -> dict[str, Body]:
        """The stored bodies of those of ``paths`` that have one."""
        out = {}
        for path, data, crc in self._rows("SELECT path, data, crc FROM bodies", paths):
            if zlib.crc32(data) != crc:
                raise CacheDamaged(f"the stored body of {path} does not match its checksum")
            try:
                body = _unpack_body(data)
            except (ValueError, EOFError, TypeError, UnicodeDecodeError) as exc:
                raise CacheDamaged(f"the stored body of {path} is unreadable ({exc})") from None
            if hashlib.blake2b(body.html.encode("utf-8"), digest_size=12).hexdigest() != body.content_hash:
                raise CacheDamaged(f"the stored body of {path} does not match its hash")
            out[path] = body
        return out

    def rejected(self) -> list[FileError]:
        """Every file recorded as rejected, by path."""
        return [FileError(path, bytes(data).decode("utf-8", "replace")) for path, data in
                self._db.execute("SELECT path, data FROM files WHERE status = 'rejected' ORDER BY path")]


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
