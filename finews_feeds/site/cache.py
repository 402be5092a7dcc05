"""The collector's cache: a second run over an unchanged site only stats files.

One folder per site under ``cache_dir`` holds

- ``index.marshal``: a fingerprint (code + the site settings that shape a post), the size and
  mtime of every file seen, the posts (newest first, stored by column) and the rejected or
  unpublished files;
- ``journal.marshal``: what changed since ``index.marshal`` was written, appended one record per
  run. Rewriting a 70 MB index because one post was added cost more than a second at 100,000
  posts; a record holds only the files that changed. Past :data:`JOURNAL_LIMIT` bytes the journal
  is folded into a new index;
- ``bodies.sqlite3``: the rendered HTML of each post, as UTF-8, read on demand by
  :class:`CachedContent` so bodies never sit in memory. Not compressed: zlib took a fifth of
  the time of rendering a body, and only the bodies that were shown are stored.

All are written atomically (a renamed temp file, a checksummed record, an SQLite transaction). Anything unreadable,
from another version or for other settings is discarded and rebuilt, never fatal; when the cache
folder cannot be written the run goes on without it.

Why columns: a warm run over 100,000 posts must build 100,000 :class:`Post` objects. Loading
one marshal record per field and setting each field of all posts with ``map`` keeps the work
in C; a frozen dataclass's ``__init__`` (or pickle) costs several times more.

A cold run (:data:`LAZY_FROM` files or more to read) reads posts up to their bodies only;
:class:`Completion` renders a body when a post is first shown and records it (a journal record
marked "rendered only"). :func:`collect_changes` answers what changed since a :class:`Cursor`
(an index and a journal position) from the files' sizes and mtimes alone: the quick rebuild of
:mod:`finews_feeds.build`.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import gc
import hashlib
import io
import logging
import marshal
import multiprocessing
import operator
import os
import sqlite3
import struct
import tempfile
import threading
import types
import uuid
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, tzinfo
from itertools import chain, compress, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from .. import forks, urls
from ..models import Collection, ContentSource, FileError, Post, Site, sort_key
from . import collector, limits, markup
from .collector import Parsed, read_entry, rerender
from .walk import SEP, Entry, Scan, rescan, scan_elsewhere, scan_text, walk

log = logging.getLogger(__name__)

#: Bump when the layout of the index or the bodies file changes.
FORMAT = 9
INDEX = "index.marshal"
JOURNAL = "journal.marshal"
SCAN = "scan.marshal"
#: Fold the journal into a new index past this size (each run reads the whole journal).
JOURNAL_LIMIT = 8 << 20
#: Write a new index instead of a journal record when this many files changed at once.
JOURNAL_FILES = 2000
BODIES = "bodies.sqlite3"
#: Parse in worker processes from this many changed files on (below it, start-up costs more).
PARALLEL_FROM = 1500
#: From this many changed files on (a cold run), read posts up to their bodies only and render
#: a body when a feed or digest first shows the post: feeds show a few thousand posts of a
#: site of 100,000, and the body is two thirds of the cost of a post.
LAZY_FROM = 1000
_CHUNK = 256
#: Files per batch of a forked parse: the processes finish within a batch of each other.
_BATCH = 16
#: A child packs its results for the parent every this many files.
_PACK_EVERY = 1000

#: What a file gave: a post, a rejection, or None (unpublished).
Outcome = Post | FileError | None


def _code_version() -> str:
    digest = hashlib.blake2b(digest_size=8)
    for module in (collector, markup, limits, urls):  # what decides a parsed post or its rejection
        file = getattr(module, "__file__", None)
        if file:
            with contextlib.suppress(OSError):
                digest.update(Path(file).read_bytes())
    digest.update(Path(__file__).read_bytes())
    import markdown_it

    digest.update(markdown_it.__version__.encode())
    return digest.hexdigest()


_CODE_VERSION: str | None = None


def fingerprint(site: Site) -> str:
    """Changes whenever the code or a site setting that shapes a parsed post changes."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        _CODE_VERSION = _code_version()
    settings = {f.name: getattr(site, f.name) for f in dataclasses.fields(site) if f.name not in ("future", "category_order")}
    settings["timezone"] = str(site.timezone)
    text = repr((FORMAT, _CODE_VERSION, sorted((k, repr(v)) for k, v in settings.items())))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def site_folder(cache_dir: Path, site: Site) -> Path:
    """The cache folder of one site (several sites can share a cache_dir)."""
    key = hashlib.blake2b(os.path.abspath(site.source).encode(), digest_size=6).hexdigest()
    return cache_dir / f"site-{key}"


# ---------------------------------------------------------------- posts by column

_FIELDS = [f for f in dataclasses.fields(Post)]
#: Stored columns: every field but `id` (always the URL); dates as POSIX timestamps.
COLUMNS = tuple(f.name for f in _FIELDS if f.name != "id")
_DATES = ("date", "updated")
#: One object per distinct category list, tag list, source and author: marshal then writes a
#: reference instead of a copy, so the index loads faster and its posts share memory.
_SHARED_FIELDS = ("categories", "tags", "author", "source")
_SHARED: dict[Any, Any] = {}
# Setting slots directly is only right while Post stays a plain slotted dataclass.
_SETTERS = {f.name: Post.__dict__.get(f.name) for f in _FIELDS}
_DIRECT = not hasattr(Post, "__post_init__") and all(isinstance(s, types.MemberDescriptorType) for s in _SETTERS.values())


def _stamp(moment: datetime | None) -> int | float | None:
    if moment is None:
        return None
    value = moment.timestamp()
    return int(value) if value.is_integer() else value


def to_columns(posts: Sequence[Post]) -> list[tuple[Any, ...]]:
    # Each column is made by C-level maps: a Python call per value and column cost a tenth of
    # a cold build.
    if len(_SHARED) > 200_000:
        _SHARED.clear()
    columns: list[tuple[Any, ...]] = []
    for name in COLUMNS:
        values: Iterable[Any] = map(attrgetter(name), posts)
        if name == "date":  # never None
            values = map(datetime.timestamp, values)
        elif name in _DATES:
            values = map(_stamp, values)
        elif name in _SHARED_FIELDS:
            shared = list(values)
            values = map(_SHARED.setdefault, shared, shared)
        columns.append(tuple(values))
    return columns


def from_columns(columns: Sequence[Sequence[Any]], zone: tzinfo) -> list[Post]:
    """Posts from stored columns (in :data:`COLUMNS` order)."""
    values = dict(zip(COLUMNS, columns, strict=True))
    count = len(values["path"])
    if any(len(column) != count for column in columns):
        raise ValueError("columns of different lengths")
    values["date"] = list(map(datetime.fromtimestamp, values["date"], repeat(zone, count)))
    values["updated"] = [None if u is None else datetime.fromtimestamp(u, zone) for u in values["updated"]]
    values["id"] = values["url"]
    if not _DIRECT:
        return [Post(**dict(zip(values, row, strict=True))) for row in zip(*values.values(), strict=True)]
    posts: list[Post] = list(map(object.__new__, repeat(Post, count)))
    for field in _FIELDS:
        setter = _SETTERS[field.name].__set__  # type: ignore[union-attr]
        deque(map(setter, posts, values[field.name]), maxlen=0)
    return posts


# ---------------------------------------------------------------- index


@dataclasses.dataclass
class Index:
    """What the cache knows of a site's files."""

    stats: dict[str, tuple[int, int]]  #: every file seen: size, mtime_ns
    posts: list[Post]  #: newest first
    others: dict[str, str | None]  #: rejected file -> message; unpublished file -> None
    #: Names the index file written last; journal records of another index are ignored.
    token: str = dataclasses.field(default="", compare=False)
    #: Bytes of the journal that belong to this index (what follows is torn or foreign).
    journal_end: int = dataclasses.field(default=0, compare=False)
    #: CRC-32 of the journal record that ends at ``journal_end`` (0 when there is none).
    last_crc: int = dataclasses.field(default=0, compare=False)
    #: The child process writing this index in the background, if any (see :func:`save_index`).
    pending: forks.Child | None = dataclasses.field(default=None, compare=False)

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.token, self.journal_end, self.last_crc)


class Cursor(NamedTuple):
    """A point in the history of a cache: its index file and the journal up to a record. What
    changed since a cursor is told by :func:`collect_changes`."""

    token: str
    journal_end: int
    last_crc: int


#: A record of the index (and of the build's state): length, CRC-32, then the marshalled value.
#: A damaged file is told by its checksums, never loaded: marshal reads a flipped bit in a
#: title as a different title.
_FRAME = struct.Struct("<QI")
#: A journal record: length, CRC-32, then the marshalled record.
_RECORD = struct.Struct("<QI")


def load_index(folder: Path, expected: str, zone: tzinfo) -> Index | None:
    """The index of ``folder`` if it was written by this code for these settings, else None."""
    # Loading makes a few hundred thousand tuples and posts, none of them garbage: collections
    # triggered on the way would only walk them again and again (a fifth of the load time).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_index(folder, expected, zone)
    finally:
        # Straight to the oldest generation: the first young collection after the load would
        # otherwise walk all of them (0.1 s at 100,000 posts). Nothing is kept out of reach.
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def _settle_folder(folder: Path) -> None:
    index = _PENDING.pop(os.path.abspath(folder), None)
    if index is not None:
        with contextlib.suppress(OSError):
            settle(index)


def _load_index(folder: Path, expected: str, zone: tzinfo) -> Index | None:
    path = folder / INDEX
    try:
        with open_index(folder, expected) as opened:
            if opened is None:
                return None
            handle, index, count = opened
            paths = list(index.stats)
            columns = [paths[:count], *(_read_record(handle) for _ in COLUMNS[1:])]
    except Exception as exc:  # a corrupt cache must never stop a run
        log.warning("%s: unreadable cache index (%s); rebuilding", path, exc.__class__.__name__)
        return None
    try:
        index.posts = from_columns(columns, zone)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        log.warning("%s: inconsistent cache index (%s); rebuilding", path, exc)
        return None
    _replay(folder, index, zone)
    return index


@contextlib.contextmanager
def open_index(folder: Path, expected: str) -> Iterator[tuple[BinaryIO, Index, int] | None]:
    """The index file of ``folder`` read up to its posts: the open file (at the first post
    column), the index without posts (sizes and mtimes of every file, rejected and unpublished
    files) and how many posts follow; None when there is no index of this code for these
    settings. Raises what reading a corrupt file raises."""
    _settle_folder(folder)
    path = folder / INDEX
    try:
        handle = open(path, "rb")  # noqa: SIM115 - handed to the caller inside this context
    except FileNotFoundError:
        yield None
        return
    with handle:
        header = _read_record(handle)
        if not (isinstance(header, tuple) and len(header) == 4 and header[0] == FORMAT):
            log.info("%s: cache from another version; rebuilding", path)
            yield None
            return
        if header[1] != expected:
            log.info("%s: cache made with other site settings; rebuilding", path)
            yield None
            return
        count, token = header[2], header[3]
        paths, sizes, mtimes, others = (_read_record(handle) for _ in range(4))
        if not (len(paths) == len(sizes) == len(mtimes) == count + len(others)):
            raise ValueError("columns of different lengths")
        index = Index(stats=dict(zip(paths, zip(sizes, mtimes, strict=True), strict=True)), posts=[],
                      others=dict(zip(paths[count:], others, strict=True)), token=str(token))
        yield handle, index, count


def _read_record(handle: BinaryIO) -> Any:
    """The next record of ``handle``; ValueError or EOFError when it is damaged or cut short."""
    head = handle.read(_FRAME.size)
    if len(head) != _FRAME.size:
        raise EOFError("record cut short")
    size, crc = _FRAME.unpack(head)
    # A length read from damaged bytes may be anything up to 2**64: never allocated.
    if size > _remaining(handle):
        raise EOFError("record cut short")
    data = handle.read(size)
    if zlib.crc32(data) != crc:
        raise ValueError("record checksum mismatch")
    return marshal.loads(data)


def _remaining(handle: BinaryIO) -> int:
    if isinstance(handle, io.BytesIO):
        return handle.getbuffer().nbytes - handle.tell()
    return os.fstat(handle.fileno()).st_size - handle.tell()


def pack_record(value: Any, version: int = marshal.version) -> bytes:
    """``value`` marshalled after its length and checksum: a record of the index file (and of
    the feed build's state), read back by :func:`read_records`."""
    data = marshal.dumps(value, version)
    return _FRAME.pack(len(data), zlib.crc32(data)) + data


def read_records(data: bytes) -> list[Any]:
    """Every record of ``data``; EOFError when the last one is cut short."""
    handle = io.BytesIO(data)
    records = []
    try:
        while handle.tell() < len(data):
            records.append(_read_record(handle))
    except struct.error:  # not even a whole length
        raise EOFError("record cut short") from None
    return records


def sealed(data: bytes) -> bytes:
    """``data`` after its digest, for a file read back whole by :func:`unsealed`."""
    return hashlib.blake2b(data, digest_size=16).digest() + data


def unsealed(raw: bytes) -> bytes:
    """What :func:`sealed` sealed; ValueError when ``raw`` is damaged."""
    data = raw[16:]
    if len(raw) < 16 or hashlib.blake2b(data, digest_size=16).digest() != raw[:16]:
        raise ValueError("checksum mismatch")
    return data


def save_index(folder: Path, print_: str, index: Index, background: bool = False) -> None:
    """Write the index atomically, a record at a time (no 70 MB string of the whole index), and
    start an empty journal for it. With ``background`` (a cold run, where writing 100,000 posts
    takes most of a second), a forked child writes it while this process goes on; whatever
    writes to the cache next waits for it (:func:`settle`)."""
    settle(index)
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    if background and forks.can_fork():

        def write() -> bytes:
            _write_index(folder, print_, index, token)
            return b"written"

        child = forks.start(write)
        if child is not None:
            index.token, index.journal_end, index.last_crc, index.pending = token, 0, 0, child
            _PENDING[os.path.abspath(folder)] = index
            return
    _write_index(folder, print_, index, token)
    index.token, index.journal_end, index.last_crc = token, 0, 0


#: Indexes being written in the background by this process, by folder: a read of the folder
#: waits for its write.
_PENDING: dict[str, Index] = {}


def settle(index: Index) -> None:
    """Wait for the background write of ``index``, if any. Raises OSError if it failed."""
    child, index.pending = index.pending, None
    if child is not None and child.result() is None:
        log.warning("writing the cache index in a child process failed")
        raise OSError("the cache index was not written")


def _write_index(folder: Path, print_: str, index: Index, token: str) -> None:
    paths = [post.path for post in index.posts] + list(index.others)
    records: Iterator[Any] = iter([
        (FORMAT, print_, len(index.posts), token),
        tuple(paths),
        tuple(index.stats[p][0] for p in paths),
        tuple(index.stats[p][1] for p in paths),
        tuple(index.others.values()),
        *to_columns(index.posts)[1:],
    ])
    fd, temp = tempfile.mkstemp(prefix=".index-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            for record in records:
                handle.write(pack_record(record))
        os.chmod(temp, 0o644)  # mkstemp makes it private; the bodies file next to it is not
        os.replace(temp, folder / INDEX)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # Left behind (a crash right here), the old journal names the old token and is ignored.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / JOURNAL)


# ---------------------------------------------------------------- journal
#
# A record says, for each file that changed in one run, what it is now: its size and mtime (or
# gone), and its post or rejection. Replaying a record twice gives the same index, and a lost
# record only leaves old sizes and mtimes behind, so those files are read again: a torn or
# foreign tail is dropped, never fatal.


def append_journal(folder: Path, index: Index, touched: Iterable[str], new_posts: Sequence[Post],
                   rendered_only: bool = False) -> bool:
    """Record in the journal what ``touched`` paths now are in ``index`` (``new_posts``: the
    posts among them); ``index`` must have been loaded from, or saved to, ``folder``. False when
    the journal there is no longer the one of ``index`` (another process wrote a new index).
    ``rendered_only``: the files did not change, only bodies were rendered (see
    :class:`Completion`): :func:`collect_changes` does not count them as changes."""
    settle(index)
    paths = sorted(touched)
    head = marshal.dumps((
        index.token,
        tuple(paths),
        tuple(index.stats.get(p) for p in paths),
        {p: index.others[p] for p in paths if p in index.others},
        rendered_only,
    ))
    # The posts follow the head, so that a reader after the files only (collect_changes)
    # skips them.
    data = _HEAD.pack(len(head)) + head + marshal.dumps(to_columns(new_posts))
    fd = os.open(folder / JOURNAL, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size < index.journal_end:
            return False
        # Another process may have appended since this index was read: its records are
        # dropped (its files are read again next run), never interleaved with this one.
        if size != index.journal_end:
            os.ftruncate(fd, index.journal_end)
        os.lseek(fd, index.journal_end, os.SEEK_SET)
        crc = zlib.crc32(data)
        written = os.write(fd, _RECORD.pack(len(data), crc) + data)
    finally:
        os.close(fd)
    index.journal_end += written
    index.last_crc = crc
    return True


_HEAD = struct.Struct("<I")


class _Record(NamedTuple):
    end: int  #: offset just after the record
    crc: int
    paths: tuple[str, ...]
    stats: tuple[tuple[int, int] | None, ...]
    rejected: dict[str, str | None]
    posts: bytes  #: the posts' columns, marshalled (see :meth:`columns`)
    rendered_only: bool

    def columns(self) -> list[tuple[Any, ...]]:
        columns: list[tuple[Any, ...]] = marshal.loads(self.posts)
        return columns


def _apply_files(index: Index, record: _Record) -> None:
    """What ``record`` says of its files (size and mtime, or gone; rejected or unpublished)
    put in ``index``; its posts are the caller's business."""
    for path, stat in zip(record.paths, record.stats, strict=True):
        index.others.pop(path, None)
        if stat is None:
            index.stats.pop(path, None)
        else:
            index.stats[path] = (stat[0], stat[1])
    index.others.update(record.rejected)
    index.journal_end, index.last_crc = record.end, record.crc


def _records(folder: Path, token: str) -> Iterator[_Record]:
    """The journal records of the index named ``token``, oldest first, up to the first torn,
    foreign or inconsistent one."""
    try:
        raw = (folder / JOURNAL).read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("%s: unreadable cache journal (%s); reading its files again", folder, exc.strerror)
        return
    offset = 0
    while offset + _RECORD.size <= len(raw):
        size, crc = _RECORD.unpack_from(raw, offset)
        data = raw[offset + _RECORD.size : offset + _RECORD.size + size]
        if len(data) != size or zlib.crc32(data) != crc:
            return
        try:
            head = _HEAD.unpack_from(data)[0]
            record_token, paths, stats, rejected, rendered_only = marshal.loads(data[_HEAD.size : _HEAD.size + head])
            columns = data[_HEAD.size + head :]
            if record_token != token:
                return
            if len(paths) != len(stats) or not isinstance(rejected, dict):
                raise ValueError("columns of different lengths")
        except (ValueError, TypeError, EOFError, OverflowError, struct.error) as exc:
            log.warning("%s: inconsistent cache journal (%s); reading its files again", folder, exc)
            return
        offset += _RECORD.size + size
        yield _Record(offset, crc, paths, stats, rejected, columns, bool(rendered_only))


def _replay(folder: Path, index: Index, zone: tzinfo) -> None:
    """Apply the journal records of ``index`` to it, oldest first."""
    state: set[str] = set()
    posts: dict[str, Post] = {}
    for record in _records(folder, index.token):
        try:
            added = from_columns(record.columns(), zone)
        except (ValueError, TypeError, OverflowError, EOFError) as exc:
            log.warning("%s: inconsistent cache journal (%s); reading its files again", folder, exc)
            break
        _apply_files(index, record)
        state.update(record.paths)
        for path in record.paths:
            posts.pop(path, None)
        posts.update((post.path, post) for post in added)
    if not state:
        return
    # A post rendered after it was read lazily comes back with the same date: it takes the old
    # one's place, so thousands of them need no sort of the whole index.
    kept: list[Post] = []
    for post in index.posts:
        if post.path in state:
            again = posts.get(post.path)
            if again is None or again.date != post.date:
                continue
            del posts[post.path]
            post = again
        kept.append(post)
    index.posts = insert_posts(kept, list(posts.values()))


def insert_posts(posts: list[Post], added: Sequence[Post]) -> list[Post]:
    """``posts`` (in :func:`sort_key` order) with ``added`` in their places; a few are inserted
    rather than sorting 100,000 posts again."""
    if len(added) > 64:
        posts.extend(added)
        posts.sort(key=sort_key)
        return posts
    for post in added:
        bisect.insort(posts, post, key=sort_key)
    return posts


# ---------------------------------------------------------------- bodies


class Bodies:
    """The SQLite file of rendered bodies, one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("CREATE TABLE IF NOT EXISTS bodies (path TEXT PRIMARY KEY, hash TEXT NOT NULL, html BLOB NOT NULL)")
            self._local.connection = connection
        return connection

    def get(self, path: str, content_hash: str) -> str | None:
        """The body stored for ``path`` if it is the one of ``content_hash``; None otherwise,
        and when the file is damaged (it is then started afresh, once)."""
        try:
            row = self.connect().execute("SELECT html FROM bodies WHERE path = ? AND hash = ?", (path, content_hash)).fetchone()
        except sqlite3.DatabaseError as exc:
            self.discard(exc)
            return None
        if row is None:
            return None
        html = bytes(row[0])
        # The hash names the rendered bytes: a damaged page of the file cannot pass for a body.
        if hashlib.blake2b(html, digest_size=12).hexdigest() != content_hash:
            self.discard(ValueError(f"the body of {path} does not match its hash"))
            return None
        return html.decode("utf-8")

    def discard(self, exc: Exception) -> None:
        """Start a fresh file in place of a damaged one (its bodies are rendered again when shown)."""
        if getattr(self._local, "discarded", False):
            return
        log.warning("%s: damaged (%s); starting it afresh", self.path, exc)
        self._local.discarded = True
        _reset(self)

    def write(self, rows: Iterable[tuple[str, str, bytes]], removed: Iterable[str]) -> None:
        connection = self.connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            cursor = connection.executemany("DELETE FROM bodies WHERE path = ?", ((p,) for p in removed))
            changes = max(cursor.rowcount, 0)
            cursor = connection.executemany("INSERT OR REPLACE INTO bodies (path, hash, html) VALUES (?, ?, ?)", rows)
            changes += max(cursor.rowcount, 0)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        if changes >= 256:
            # The command line ends without closing connections (see cli.main), so SQLite never
            # folds a big write-ahead log back into the file, and every later run that opens it
            # reads all of it again (tens of megabytes after a cold build).
            with contextlib.suppress(sqlite3.Error):
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class CachedContent:
    """``Collection.content``: a post's HTML from the cache, else rendered again from its file
    (and stored again, after a damaged bodies file was started afresh)."""

    def __init__(self, site: Site, bodies: Bodies | None) -> None:
        self.site = site
        self.bodies = bodies

    def __call__(self, post: Post) -> str:
        if self.bodies is None:
            return rerender(self.site, post)
        html = self.bodies.get(post.path, post.content_hash)
        if html is not None:
            return html
        html = rerender(self.site, post)
        if hashlib.blake2b(html.encode("utf-8"), digest_size=12).hexdigest() == post.content_hash:
            with contextlib.suppress(sqlite3.Error):
                self.bodies.write([(post.path, post.content_hash, html.encode("utf-8"))], ())
        return html


# ---------------------------------------------------------------- parsing


def _pack(entry: Entry, site: Site, lazy: bool = False) -> tuple[Entry, Outcome, bytes | None]:
    result = read_entry(entry, site, lazy=lazy)
    if isinstance(result, Parsed):
        html = result.html.encode("utf-8") if result.post.rendered else None
        return entry, result.post, html
    return entry, result, None


def _finish_front(entry: Entry, post: Post, site: Site) -> tuple[Entry, Outcome, bytes | None]:
    """:func:`_pack` for a file read up to its body into ``post``: unless it changed since
    (its size or mtime), only its body is rendered."""
    try:
        with open(os.path.join(site.source, entry.path), "rb") as handle:
            stat = os.fstat(handle.fileno())
            raw = handle.read() if (stat.st_size, stat.st_mtime_ns) == (entry.size, entry.mtime_ns) else None
    except OSError:
        raw = None
    if raw is None:
        return _pack(entry, site)
    try:
        parsed = collector.finish_post(post, raw, site)
    except Exception:  # whatever it is, the full parse reports it as that file's error
        return _pack(entry, site)
    return entry, parsed.post, parsed.html.encode("utf-8")


def _pack_item(item: Entry | tuple[Entry, Post], site: Site, lazy: bool) -> tuple[Entry, Outcome, bytes | None]:
    if isinstance(item, Entry):
        return _pack(item, site, lazy)
    return _finish_front(item[0], item[1], site)


_WORKER_SITE: Site | None = None


def _init_worker(site: Site) -> None:
    global _WORKER_SITE
    _WORKER_SITE = site


def _work(entries: Sequence[Entry | tuple[Entry, Post]], lazy: bool) -> list[tuple[Entry, Outcome, bytes | None]]:
    assert _WORKER_SITE is not None
    return [_pack_item(entry, _WORKER_SITE, lazy) for entry in entries]


def parse_all(
    entries: Sequence[Entry | tuple[Entry, Post]], site: Site, workers: int | None = None, *, lazy: bool = False
) -> Iterator[tuple[Entry, Outcome, bytes | None]]:
    """Parse files, in worker processes when there are many (results in any order); with
    ``lazy``, up to their bodies only. An entry given with its post read up to its body
    (``(entry, post)``) is finished: only its body is rendered."""
    count = workers if workers is not None else (os.cpu_count() or 1)
    if count < 2 or len(entries) < PARALLEL_FROM:
        for entry in entries:
            yield _pack_item(entry, site, lazy)
        return
    if forks.can_fork():
        yield from _parse_forked(entries, site, count, lazy)
        return
    # Forking a process with other threads running (the daemon's scheduler and web server) can
    # deadlock the child: a pool of spawned workers then.
    chunks = [entries[i : i + _CHUNK] for i in range(0, len(entries), _CHUNK)]
    done = 0
    try:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker, initargs=(site,)) as pool:
            for batch in pool.map(_work, chunks, repeat(lazy)):
                yield from batch
                done += 1
    except (concurrent.futures.process.BrokenProcessPool, OSError, RuntimeError) as exc:
        # e.g. spawn from a script without a `__main__` guard: slower, but never fatal.
        log.warning("parallel parse failed (%s); parsing in this process", exc.__class__.__name__)
        for chunk in chunks[done:]:
            for entry in chunk:
                yield _pack_item(entry, site, lazy)


def _parse_forked(
    items: Sequence[Entry | tuple[Entry, Post]], site: Site, count: int, lazy: bool
) -> Iterator[tuple[Entry, Outcome, bytes | None]]:
    """:func:`parse_all` over ``count`` processes: this one and ``count - 1`` forked children,
    each taking the next batch of files when it is free (:func:`~finews_feeds.forks.share`).
    A child sends its results back by column (see :func:`to_columns`): unpickling 10,000 posts
    here would take a core from the parsing."""
    size = forks.Tickets.per_ticket(len(items), _BATCH)
    work = functools.partial(_pack_item, site=site, lazy=lazy)
    yield from forks.share(
        [items[i : i + size] for i in range(0, len(items), size)], count - 1, work, lambda: work, _dump_results,
        functools.partial(_load_results, zone=site.timezone),
        lambda: log.warning("parsing in a child process failed; parsing what it took here"), pack_every=_PACK_EVERY)


def _dump_results(results: Sequence[tuple[Entry, Outcome, bytes | None]]) -> bytes:
    entries = tuple(tuple(entry) for entry, _, _ in results)
    posts = [outcome for _, outcome, _ in results if isinstance(outcome, Post)]
    # Per result: -1 unpublished, -2 rejected (its message follows), else nothing: the next post.
    kinds = tuple(0 if isinstance(o, Post) else -2 if isinstance(o, FileError) else -1 for _, o, _ in results)
    messages = tuple(o.message for _, o, _ in results if isinstance(o, FileError))
    htmls = tuple(html for _, o, html in results if isinstance(o, Post))
    return marshal.dumps((entries, kinds, messages, htmls, to_columns(posts)))  # type: ignore[arg-type]


def _load_results(data: bytes, zone: tzinfo) -> list[tuple[Entry, Outcome, bytes | None]]:
    entries, kinds, messages, htmls, columns = marshal.loads(data)
    posts = iter(from_columns(columns, zone))
    texts = iter(htmls)
    notes = iter(messages)
    out: list[tuple[Entry, Outcome, bytes | None]] = []
    for raw, kind in zip(entries, kinds, strict=True):
        entry = Entry(*raw)
        if kind == 0:
            out.append((entry, next(posts), next(texts)))
        elif kind == -2:
            out.append((entry, FileError(entry.path, next(notes)), None))
        else:
            out.append((entry, None, None))
    return out


# ---------------------------------------------------------------- collect

#: Per process, per site cache folder: the fingerprint and the index of the last run, so a
#: daemon's repeated runs reuse post objects instead of loading them again.
_MEMO: dict[str, tuple[str, Index, Scan | None]] = {}
_MEMO_LOCK = threading.Lock()


def _finish(site: Site, posts: list[Post], others: dict[str, str | None], now: datetime, content: ContentSource,
            completer: Completion | None = None, cursor: Cursor | None = None) -> Collection:
    limit = now.timestamp()
    due: datetime | None = None
    if not site.future and posts and posts[0].date.timestamp() > limit:  # newest first: only the head can be future
        due = min(p.date for p in posts if p.date.timestamp() > limit)
        posts = [p for p in posts if p.date.timestamp() <= limit]
    else:
        posts = list(posts)  # the caller's to change; the memo keeps its own
    errors = sorted((FileError(path, message) for path, message in others.items() if message is not None), key=lambda e: e.path)
    return Collection(site=site, posts=posts, errors=errors, content=content, completer=completer, cursor=cursor,
                      due=due)


def collect_uncached(site: Site, now: datetime) -> Collection:
    """Read every file; bodies are rendered again from the files when asked for."""
    posts: list[Post] = []
    others: dict[str, str | None] = {}
    for entry in walk(site):
        outcome = read_entry(entry, site)
        if isinstance(outcome, Parsed):
            posts.append(outcome.post)
        elif isinstance(outcome, FileError):
            log.warning("%s: %s", outcome.path, outcome.message)
            others[outcome.path] = outcome.message
    posts.sort(key=sort_key)
    return _finish(site, posts, others, now, CachedContent(site, None))


def collect_cached(site: Site, cache_dir: Path, now: datetime, workers: int | None = None) -> Collection:
    """Read only files whose size or mtime changed since the last run; keep the cache in step."""
    folder = site_folder(cache_dir, site)
    print_ = fingerprint(site)
    key = os.path.abspath(folder)
    with _MEMO_LOCK:
        memo = _MEMO.get(key)
    index: Index | None
    before: Scan | None = None
    if memo is not None and memo[0] == print_ and (folder / INDEX).exists():
        index, before = memo[1], memo[2]
        # Half the stat in a child when forking is safe (not next to a daemon's threads).
        scanned = scan_elsewhere(site, 0.5)()
    else:
        # Stat the files in another process while this one loads the index: both take about
        # half a second at 100,000 posts, and this machine has two cores. Without an index to
        # load, this process stats half the files itself.
        scanning = scan_elsewhere(site, 0.0 if (folder / INDEX).exists() else 0.5)
        index = load_index(folder, print_, site.timezone)
        scanned = scanning()
    old = index or Index({}, [], {})
    # A daemon's later runs compare with the scan of the run before (what its index holds) as
    # the quick rebuild does; others by path.
    compared = compare_scans(before, scanned) if before is not None else None
    if compared is not None:
        changed, _, removed = compared
    else:
        paths, sizes, mtimes = scanned.columns()
        # Compared column-wise in C: building a dict of the 100,000 new stats cost more than
        # the comparison itself.
        differ = list(map(operator.ne, map(old.stats.get, paths), zip(sizes, mtimes, strict=True)))
        changed = list(map(Entry, compress(paths, differ), compress(sizes, differ), compress(mtimes, differ)))
        seen = len(paths) - sum(1 for entry in changed if entry.path not in old.stats)
        removed = set() if seen == len(old.stats) else old.stats.keys() - set(paths)
    bodies = _open_bodies(folder, fresh=index is None)
    if index is not None and not changed and not removed:
        # Nothing changed: the index is stored newest first, so not even a sort is needed.
        _remember(key, print_, index, scanned)
        if bodies is not None and not (folder / SCAN).exists():  # a cache from before scans were kept
            save_scan(folder, print_, index.cursor, scanned, index.others)
        return _finish(site, index.posts, index.others, now, CachedContent(site, bodies),
                       Completion(site, folder, print_, index, bodies, workers), index.cursor)

    current = dict(old.stats)
    current.update((entry.path, (entry.size, entry.mtime_ns)) for entry in changed)
    for path in removed:
        del current[path]
    if len(current) != scanned.files:  # only if a scan ever listed a file twice
        paths, sizes, mtimes = scanned.columns()
        current = dict(zip(paths, zip(sizes, mtimes, strict=True), strict=True))
    stale = {entry.path for entry in changed} | removed
    posts = [post for post in old.posts if post.path not in stale]
    others = {path: message for path, message in old.others.items() if path not in stale}
    rows: list[tuple[str, str, bytes]] = []
    gone = list(removed)
    added: list[Post] = []
    lazy = bodies is not None and len(changed) >= LAZY_FROM
    for entry, outcome, html in parse_all(changed, site, workers, lazy=lazy):
        if isinstance(outcome, Post):
            added.append(outcome)
            if html is not None:
                rows.append((entry.path, outcome.content_hash, html))
        else:
            if isinstance(outcome, FileError):
                # Logged when found, not at every run: a daemon would repeat it every few minutes.
                log.warning("%s: %s", outcome.path, outcome.message)
            others[entry.path] = outcome.message if isinstance(outcome, FileError) else None
            gone.append(entry.path)
        if bodies is not None and len(rows) >= 1000:
            bodies = _write_bodies(bodies, rows, ())
            rows = []
    if bodies is not None:
        bodies = _write_bodies(bodies, rows, gone)
    posts = insert_posts(posts, added)
    journal = index is not None and len(stale) < JOURNAL_FILES and old.journal_end < JOURNAL_LIMIT
    index = Index(stats=current, posts=posts, others=others, token=old.token, journal_end=old.journal_end)
    if bodies is not None:
        try:
            if not (journal and append_journal(folder, index, stale, added)):
                save_index(folder, print_, index, background=lazy)
            if len(current) == scanned.files:
                save_scan(folder, print_, index.cursor, scanned, others)
        except OSError as exc:
            log.warning("%s: cannot write the cache index (%s)", folder, exc)
    _remember(key, print_, index, scanned if len(current) == scanned.files else None)
    return _finish(site, posts, others, now, CachedContent(site, bodies),
                   Completion(site, folder, print_, index, bodies, workers), index.cursor if bodies is not None else None)


class Completion:
    """``Collection.completer`` of a cached collection: renders the bodies of posts read up to
    their bodies only, stores them like any other (bodies file, index journal), and puts the
    rendered posts in the index, so no later run renders them again."""

    def __init__(self, site: Site, folder: Path, print_: str, index: Index, bodies: Bodies | None,
                 workers: int | None) -> None:
        self.site = site
        self.folder = folder
        self.print_ = print_
        self.index = index
        self.bodies: Bodies | None = bodies
        self.workers = workers
        self._lock = threading.Lock()  # a daemon's build and digest may complete at once

    def __call__(self, posts: Sequence[Post]) -> list[Post]:
        with self._lock:
            done = self._render([post for post in posts if not post.rendered])
        return [done.get(post.path, post) for post in posts]

    def _render(self, pending: Sequence[Post]) -> dict[str, Post]:
        index = self.index
        done: dict[str, Post] = {}
        if not pending:
            return done
        entries = [(Entry(post.path, *index.stats.get(post.path, (0, 0))), post) for post in pending]
        rows: list[tuple[str, str, bytes]] = []
        failed: dict[str, str | None] = {}
        for entry, outcome, html in parse_all(entries, self.site, self.workers):
            if isinstance(outcome, Post) and html is not None:
                done[entry.path] = outcome
                rows.append((entry.path, outcome.content_hash, html))
            else:
                # Rejected or unpublished when read in full (or changed meanwhile): shown
                # without its body this time, and no longer a post from the next run on.
                message = outcome.message if isinstance(outcome, FileError) else None
                log.warning("%s: %s", entry.path, message or "no longer published")
                failed[entry.path] = message
        if self.bodies is not None:
            self.bodies = _write_bodies(self.bodies, rows, failed)
        if self.bodies is None:
            return done  # not stored: its body is rendered again from the file when shown
        if failed:
            index.posts = [post for post in index.posts if post.path not in failed]
            index.others.update(failed)
            try:
                if not append_journal(self.folder, index, failed, []):
                    save_index(self.folder, self.print_, index)
            except OSError as exc:
                log.warning("%s: cannot write the cache index (%s)", self.folder, exc)
        if not rows:
            return done
        rendered = {path: done[path] for path, _, _ in rows}
        moved = False
        posts = index.posts
        for i, post in enumerate(posts):
            new = rendered.get(post.path)
            if new is not None:
                moved = moved or new.date != post.date
                posts[i] = new
        if moved:
            posts.sort(key=sort_key)
        try:
            if not (index.journal_end < JOURNAL_LIMIT
                    and append_journal(self.folder, index, rendered, list(rendered.values()), rendered_only=True)):
                save_index(self.folder, self.print_, index)
        except OSError as exc:
            log.warning("%s: cannot write the cache index (%s)", self.folder, exc)
        return done


@dataclasses.dataclass
class Changes:
    """What changed in a site since a :class:`Cursor`, from :func:`collect_changes`."""

    added: list[Post]  #: posts whose files were not posts at the cursor, newest first
    #: whether a file that was a post at the cursor changed or went (its old post, unknown
    #: here, may be in feeds: the caller must read every post again)
    changed_posts: bool
    errors: list[FileError]  #: every file rejected now
    cursor: Cursor  #: where the cache stands now
    content: ContentSource


def collect_changes(site: Site, cache_dir: Path, since: Cursor, workers: int | None = None,
                    scanning: Callable[[], Scan] | None = None,
                    touched: Iterable[str] | None = None) -> Changes | None:
    """What changed in the site since ``since``, reading only the files that changed and
    without loading the posts of the index: a rebuild after one new post on a site of 100,000
    posts then costs the stat of every file and little more. Records this run's changes in
    the cache like :func:`collect_cached`. None when the cache cannot tell (another index was
    written since, or the changes are too many for the journal): read the whole site then.
    ``scanning``: the scan of the site's files (:func:`scan_elsewhere`) if the caller started
    it already, so that it runs while the caller reads its own state. ``touched``: every path
    (relative to the site) that may have changed since the last scan, if the caller knows (a
    file watcher): only those are looked at again (:func:`~finews_feeds.walk.rescan`), when the
    last scan is at hand."""
    # As in load_index: the columns loaded are not garbage, and collections on the way would
    # walk them again and again.
    enabled = gc.isenabled()
    gc.disable()
    try:
        if scanning is None:  # with ``touched``, a walk is only the fallback: not started ahead
            scanning = scan_elsewhere(site) if touched is None else functools.partial(scan_text, site)
        return _collect_changes(site, cache_dir, since, workers, scanning, touched)
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def _collect_changes(site: Site, cache_dir: Path, since: Cursor, workers: int | None,
                     scanning: Callable[[], Scan], touched_paths: Iterable[str] | None) -> Changes | None:
    folder = site_folder(cache_dir, site)
    print_ = fingerprint(site)
    with _MEMO_LOCK:  # its journal position would be stale after this run's record
        _MEMO.pop(os.path.abspath(folder), None)
    # The stat of every file (most of this run) goes on in a child while the last scan, or
    # else the index's file list, is read here.
    found = _since_last_scan(folder, print_, since)
    touched: dict[str, bool] = {}
    posts_since: dict[str, Post] = {}
    if found is not None:
        light, last = found
        rescanned = rescan(site, last.scan, touched_paths) if touched_paths is not None else None
        now = rescanned if rescanned is not None else scanning()
        compared = compare_scans(last.scan, now)
        if compared is not None:
            changed, new_paths, removed = compared
            # A changed or removed file was a post at the cursor unless it was new since or
            # not a post then: nothing changed after the cursor but bodies (_since_last_scan).
            touched = {path: path not in new_paths and path not in light.others
                       for path in chain((entry.path for entry in changed), removed)}
            return _record_changes(folder, print_, site, light, now, changed, removed, touched, posts_since, workers)
        # A file listed twice where the scans differ (no walk does that): compared by path below.
        before = last.scan.columns()
        light.stats = dict(zip(before[0], zip(before[1], before[2], strict=True), strict=True))
    else:
        loaded = _load_light(folder, print_)
        history = _history(folder, loaded, since, site.timezone) if loaded is not None else None
        now = scanning()
        if loaded is None or history is None:
            return None
        light = loaded
        touched, posts_since = history
    paths, sizes, mtimes = now.columns()
    old = light.stats
    # Compared column-wise in C: a dict of the 100,000 new stats would cost more than this.
    differ = list(map(operator.ne, map(old.get, paths), zip(sizes, mtimes, strict=True)))
    changed = list(map(Entry, compress(paths, differ), compress(sizes, differ), compress(mtimes, differ)))
    seen = len(paths) - sum(1 for entry in changed if entry.path not in old)
    removed = set() if seen == len(old) else old.keys() - set(paths)
    # Whether each path was a post at the cursor: as it is now, unless it changed since.
    for path in [entry.path for entry in changed] + list(removed):
        touched.setdefault(path, path in old and path not in light.others)
    return _record_changes(folder, print_, site, light, now, changed, removed, touched, posts_since, workers,
                           rescanned=True)


def _record_changes(folder: Path, print_: str, site: Site, light: Index, now: Scan, changed: list[Entry],
                    removed: set[str], touched: dict[str, bool], posts_since: dict[str, Post], workers: int | None,
                    rescanned: bool = False) -> Changes | None:
    """The end of :func:`collect_changes`: read the files that changed, record them in the
    journal and keep this scan as the last one. ``light``: the index at the journal's end, its
    ``stats`` holding (at least) every changed or removed path as it was; ``touched``: each path
    changed since the caller's cursor, with whether it was a post there; ``posts_since``: the
    posts that changed paths were before this run; ``rescanned``: the last scan kept was not
    this run's starting point (it is saved even when nothing changed)."""
    if len(changed) + len(removed) >= JOURNAL_FILES or light.journal_end >= JOURNAL_LIMIT:
        return None
    old = light.stats
    bodies = _open_bodies(folder, fresh=False) if changed or removed else None
    rows: list[tuple[str, str, bytes]] = []
    gone = list(removed)
    added: list[Post] = []
    for path in removed:
        old.pop(path, None)
        light.others.pop(path, None)
        posts_since.pop(path, None)
    for entry, outcome, html in parse_all(changed, site, workers):
        old[entry.path] = (entry.size, entry.mtime_ns)
        light.others.pop(entry.path, None)
        posts_since.pop(entry.path, None)
        if isinstance(outcome, Post):
            added.append(outcome)
            posts_since[entry.path] = outcome
            if html is not None:
                rows.append((entry.path, outcome.content_hash, html))
        else:
            if isinstance(outcome, FileError):
                log.warning("%s: %s", outcome.path, outcome.message)
            light.others[entry.path] = outcome.message if isinstance(outcome, FileError) else None
            gone.append(entry.path)
    if bodies is not None:
        bodies = _write_bodies(bodies, rows, gone)
        try:
            if bodies is None or not append_journal(folder, light, [e.path for e in changed] + list(removed), added):
                return None
        except OSError as exc:
            log.warning("%s: cannot write the cache index (%s)", folder, exc)
            return None
    if changed or removed or rescanned:
        save_scan(folder, print_, light.cursor, now, light.others)
    errors = sorted((FileError(path, message) for path, message in light.others.items() if message is not None),
                    key=lambda e: e.path)
    new = sorted((posts_since[path] for path, was_post in touched.items() if not was_post and path in posts_since),
                 key=sort_key)
    return Changes(added=new, changed_posts=any(touched.values()), errors=errors, cursor=light.cursor,
                   # Bodies connects when a body is first asked for: often never, after no change.
                   content=CachedContent(site, bodies if bodies is not None else Bodies(folder / BODIES)))


# ---------------------------------------------------------------- the last scan
#
# Comparing 100,000 fresh stats with the index's by path (a dict lookup and a tuple per file,
# after building the dict) was a fifth of a rebuild after one new post. A site's files come
# back from the scan in the same order run after run, so the scan of the last run that wrote
# the cache is kept as it came (``scan.marshal``, with the journal position it describes) and
# compared with this one list against list, in C.


class LastScan(NamedTuple):
    cursor: Cursor  #: the cache's position this scan describes: its files are the index's there
    scan: Scan
    others: dict[str, str | None]  #: rejected (message) and unpublished (None) files there


def save_scan(folder: Path, print_: str, cursor: Cursor, scan: Scan, others: dict[str, str | None]) -> None:
    """Keep ``scan`` as the scan of the cache at ``cursor``; the caller's files there must be
    exactly these. Never fatal: without it the next run compares by path."""
    data = sealed(marshal.dumps((FORMAT, print_, tuple(cursor), *scan, dict(others))))
    temp = folder / f".{SCAN}.{os.getpid()}.tmp"
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, folder / SCAN)
    except OSError as exc:
        log.info("%s: cannot keep the scan (%s)", folder, exc.strerror)
        with contextlib.suppress(OSError):
            os.unlink(temp)


def load_scan(folder: Path, print_: str) -> LastScan | None:
    try:
        raw = (folder / SCAN).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s: cannot read the last scan (%s); comparing by path", folder / SCAN, exc.strerror)
        return None
    try:
        version, made_for, cursor, text, sizes, mtimes, others = marshal.loads(unsealed(raw))
        if (version != FORMAT or made_for != print_ or not isinstance(text, str) or not isinstance(sizes, bytes)
                or not isinstance(mtimes, bytes) or not isinstance(others, dict)
                or not len(sizes) == len(mtimes) == 8 * text.count(SEP) or (text and text[-1] != SEP)):
            return None
        return LastScan(Cursor(*cursor), Scan(text, sizes, mtimes), others)
    except (ValueError, EOFError, TypeError) as exc:
        log.warning("%s: damaged (%s); comparing by path", folder / SCAN, exc)
        with contextlib.suppress(OSError):
            os.unlink(folder / SCAN)
        return None


def _since_last_scan(folder: Path, print_: str, since: Cursor) -> tuple[Index, LastScan] | None:
    """The last scan, if the files at ``since`` are still its files, with the index at the
    journal's end (its ``stats`` empty: the scan has them); else None. From the earlier of the
    scan's position and ``since`` on, the journal may hold only bodies rendered since (records
    marked "rendered only")."""
    last = load_scan(folder, print_)
    if last is None:
        return None
    _settle_folder(folder)
    try:
        with open(folder / INDEX, "rb") as handle:
            header = _read_record(handle)
    except (OSError, ValueError, EOFError, TypeError, struct.error):
        return None  # the full read that follows warns and rebuilds
    token = last.cursor.token
    if not (isinstance(header, tuple) and len(header) == 4 and header[:2] == (FORMAT, print_)
            and header[3] == token == since.token):
        return None
    at_scan, at_since = last.cursor[1:], since[1:]
    seen_scan, seen_since = at_scan == (0, 0), at_since == (0, 0)
    end, crc = 0, 0
    for record in _records(folder, token):
        if (seen_scan or seen_since) and not record.rendered_only:
            return None
        end, crc = record.end, record.crc
        seen_scan = seen_scan or (end, crc) == at_scan
        seen_since = seen_since or (end, crc) == at_since
    if not (seen_scan and seen_since):
        return None
    return Index(stats={}, posts=[], others=dict(last.others), token=token, journal_end=end, last_crc=crc), last


def compare_scans(before: Scan, now: Scan) -> tuple[list[Entry], set[str], set[str]] | None:
    """What differs between two scans of a site: the files new or changed in ``now``, the
    paths of the new ones, the paths gone. None when the part that differs lists a file twice
    (no scan does: each folder is listed once).

    The files both scans begin with and end with, in the same order, are found by comparing
    the texts (memory against memory); only their sizes and mtimes are compared there, as byte
    strings. What lies between is compared by path: after one new post, that is one file."""
    text_before, text_now = before.text, now.text
    if text_now == text_before:
        start = tail_before = tail_now = len(text_now)
    else:
        # Back to the start of the first path not in both beginnings: the separators before
        # it are at the same places in both texts.
        start = text_before.rfind(SEP, 0, _common_length(text_before, text_now, True)) + 1
        end = _common_length(text_before, text_now, False, min(len(text_before), len(text_now)) - start)
        tail_before, tail_now = len(text_before) - end, len(text_now) - end
        if not all(at == start or text[at - 1] == SEP for at, text in ((tail_before, text_before), (tail_now, text_now))):
            # What precedes the common end differs: on to the next path, in both.
            step = text_before.find(SEP, tail_before) + 1 - tail_before
            tail_before, tail_now = tail_before + step, tail_now + step
    first = text_before.count(SEP, 0, start)  # files both begin with
    last = text_before.count(SEP, tail_before)  # files both end with
    count_before, count_now = before.files, now.files
    changed: list[int] = []
    for lo, hi, shift in ((0, first, 0), (count_now - last, count_now, count_before - count_now)):
        for column_now, column_before in ((now.sizes, before.sizes), (now.mtimes, before.mtimes)):
            part_now, part_before = column_now[8 * lo : 8 * hi], column_before[8 * (lo + shift) : 8 * (hi + shift)]
            if part_now != part_before:
                changed += compress(range(lo, hi), map(operator.ne, array("q", part_now), array("q", part_before)))
    middle_now = text_now[start:tail_now].split(SEP)[:-1]
    middle_before = text_before[start:tail_before].split(SEP)[:-1]
    stats_before = dict(zip(middle_before, zip(array("q", before.sizes[8 * first : 8 * (count_before - last)]),
                                               array("q", before.mtimes[8 * first : 8 * (count_before - last)]),
                                               strict=True), strict=True))
    if len(stats_before) != len(middle_before) or len(set(middle_now)) != len(middle_now):
        return None
    sizes, mtimes = array("q", now.sizes), array("q", now.mtimes)
    new_paths: set[str] = set()
    for i, path in enumerate(middle_now, first):
        stat = stats_before.pop(path, None)
        if stat is None:
            new_paths.add(path)
        if stat != (sizes[i], mtimes[i]):
            changed.append(i)
    # Paths of files changed in the common beginning or end (edits: rare) from a full split.
    paths = text_now.split(SEP) if any(i < first or i >= first + len(middle_now) for i in changed) else None
    entries = [Entry(paths[i] if paths is not None else middle_now[i - first], sizes[i], mtimes[i])
               for i in sorted(set(changed))]  # a file whose size and mtime both changed is found twice
    return entries, new_paths, set(stats_before)


def _common_length(a: str, b: str, forward: bool, most: int | None = None) -> int:
    """How many characters ``a`` and ``b`` have in common at their beginning (``forward``) or
    end, up to ``most``: blocks compared as slices (memcmp), then halved around a difference."""
    limit = min(len(a), len(b)) if most is None else most
    done = 0

    def same(lo: int, hi: int) -> bool:
        if forward:
            return a[lo:hi] == b[lo:hi]
        return a[len(a) - hi : len(a) - lo] == b[len(b) - hi : len(b) - lo]

    while done < limit:
        upto = min(limit, done + (1 << 16))
        if same(done, upto):
            done = upto
            continue
        while upto - done > 1:  # the first `done` are the same, the first `upto` are not
            middle = (done + upto) // 2
            if same(done, middle):
                done = middle
            else:
                upto = middle
        return done
    return done


def _load_light(folder: Path, expected: str) -> Index | None:
    """The index of ``folder`` without its posts, if it was written by this code for these
    settings (see :func:`open_index`)."""
    try:
        with open_index(folder, expected) as opened:
            return opened[1] if opened is not None else None
    except Exception as exc:  # a corrupt cache must never stop a run; the full read rebuilds it
        log.info("%s: unreadable cache index (%s)", folder / INDEX, exc.__class__.__name__)
        return None


def _history(folder: Path, index: Index, since: Cursor, zone: tzinfo) -> tuple[dict[str, bool], dict[str, Post]] | None:
    """Replay the journal onto ``index`` (sizes, mtimes and rejections only) and tell what
    changed after ``since``: each path changed since, with whether it was a post at the cursor,
    and the posts those paths are now. None when ``since`` is not a point of this journal."""
    if since.token != index.token:
        return None
    touched: dict[str, bool] = {}
    posts: dict[str, Post] = {}
    at_cursor = since.journal_end == 0 and since.last_crc == 0
    for record in _records(folder, index.token):
        after = at_cursor
        if after and not record.rendered_only:
            for path in record.paths:
                touched.setdefault(path, path in index.stats and path not in index.others)
                posts.pop(path, None)
        if after and (not record.rendered_only or any(path in posts or path in touched for path in record.paths)):
            try:
                added = from_columns(record.columns(), zone)
            except (ValueError, TypeError, EOFError, OverflowError):
                return None
            for post in added:
                if not record.rendered_only or post.path in touched:
                    posts[post.path] = post
        _apply_files(index, record)
        if record.end == since.journal_end:
            if record.crc != since.last_crc:
                return None
            at_cursor = True
    if not at_cursor:
        return None
    return touched, posts


def _remember(key: str, print_: str, index: Index, scanned: Scan | None) -> None:
    with _MEMO_LOCK:
        _MEMO[key] = (print_, index, scanned)


def forget() -> None:
    """Drop what this process remembers of earlier runs (tests; a daemon never needs it)."""
    for folder in list(_PENDING):
        _settle_folder(Path(folder))
    with _MEMO_LOCK:
        _MEMO.clear()


def _open_bodies(folder: Path, fresh: bool) -> Bodies | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        bodies = Bodies(folder / BODIES)
        if fresh:
            _reset(bodies)
        try:
            bodies.connect().execute("SELECT count(*) FROM bodies WHERE path = ''").fetchone()
        except sqlite3.DatabaseError as exc:
            bodies.discard(exc)
            bodies.connect()
        return bodies
    except (OSError, sqlite3.Error) as exc:
        log.warning("%s: cache unusable (%s); reading without it", folder, exc)
        return None


def _write_bodies(bodies: Bodies, rows: Sequence[tuple[str, str, bytes]], removed: Iterable[str]) -> Bodies | None:
    for attempt in range(2):
        try:
            bodies.write(rows, removed)
            return bodies
        except sqlite3.DatabaseError as exc:
            if attempt == 0 and not isinstance(exc, sqlite3.OperationalError):
                bodies.discard(exc)  # damaged: once more into a fresh file
                continue
            log.warning("%s: cannot write cached bodies (%s); going on without the cache", bodies.path, exc)
    return None


def _reset(bodies: Bodies) -> None:
    """Start a fresh bodies file (the old one may be corrupt or for other settings)."""
    bodies.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(bodies.path) + suffix)
