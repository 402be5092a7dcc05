"""The collector's cache: a second run over an unchanged site only stats files.

One folder per site under ``cache_dir`` holds

- ``index.marshal``: a fingerprint (code + the site settings that shape a post) and, per file
  relative path, its size, mtime and what parsing gave (a post as plain values, a rejection, or
  "unpublished"), posts stored newest first so an unchanged site needs no sort;
- ``bodies.sqlite3``: the rendered HTML of each post, zlib-compressed, read on demand by
  :class:`CachedContent` so bodies never sit in memory.

Both are written atomically (a renamed temp file, an SQLite transaction). Anything unreadable,
from another version or for other settings is discarded and rebuilt, never fatal; when the cache
folder cannot be written the run goes on without it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import marshal
import multiprocessing
import os
import sqlite3
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, BinaryIO

from . import collector, markup
from .collector import Entry, Parsed, read_entry, rerender, sort_key, walk
from .models import Collection, ContentSource, FileError, Post, Site

log = logging.getLogger(__name__)

#: Bump when the layout of the index changes.
FORMAT = 3
INDEX = "index.marshal"
BODIES = "bodies.sqlite3"
#: Parse in worker processes from this many changed files on (below it, start-up costs more).
PARALLEL_FROM = 1500
_CHUNK = 256

#: What a file gave: a post, a rejection, or None (unpublished).
Outcome = Post | FileError | None


def _code_version() -> str:
    digest = hashlib.blake2b(digest_size=8)
    for module in (collector, markup):
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


# ---------------------------------------------------------------- index

#: A post as stored: plain values only, so marshal (several times faster than pickle for
#: dataclasses) can load 100,000 of them in a fraction of a second. Dates are POSIX timestamps.
Row = tuple[Any, ...]
#: What the index keeps per file: size, mtime_ns, kind, payload (a Row, an error message, None).
Known = tuple[int, int, int, Any]
POST, ERROR, UNPUBLISHED = 0, 1, 2


def _stamp(moment: datetime) -> int | float:
    value = moment.timestamp()
    return int(value) if value.is_integer() else value


#: One object per distinct category list, tag list, source and author: marshal then writes a
#: reference instead of a copy, so the index loads faster and its posts share memory.
_SHARED: dict[Any, Any] = {}


def _shared(value: Any) -> Any:
    if len(_SHARED) > 200_000:
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def to_row(post: Post) -> Row:
    return (
        post.path, post.slug, post.title, _stamp(post.date), None if post.updated is None else _stamp(post.updated),
        _shared(post.categories), _shared(post.tags), post.permalink, post.url, post.summary, post.image,
        _shared(post.author), _shared(post.source), post.excerpt, post.description, post.content_hash,
    )


def from_row(row: Row, zone: tzinfo) -> Post:
    (path, slug, title, stamp, updated, categories, tags, permalink, url, summary, image, author, source,
     excerpt, description, content_hash) = row
    return Post(
        path, slug, title, _fromtimestamp(stamp, zone), None if updated is None else _fromtimestamp(updated, zone),
        categories, tags, permalink, url, url, summary, image, author, source, excerpt, description, content_hash,
    )


_fromtimestamp = datetime.fromtimestamp


_LENGTH = struct.Struct("<Q")
#: Entries per record: the index is written and read a record at a time, so neither side holds
#: the whole serialized index (70 MB at 100,000 posts) next to the objects.
_RECORD = 10_000


def load_index(folder: Path, expected: str) -> dict[str, Known]:
    """The index of ``folder`` if it was written by this code for these settings, else {}."""
    path = folder / INDEX
    files: dict[str, Known] = {}
    try:
        with open(path, "rb") as handle:
            header = _read_record(handle)
            if not (isinstance(header, tuple) and len(header) == 3 and header[0] == FORMAT):
                log.info("%s: cache from another version; rebuilding", path)
                return {}
            if header[1] != expected:
                log.info("%s: cache made with other site settings; rebuilding", path)
                return {}
            for _ in range(header[2]):
                files.update(_read_record(handle))
    except FileNotFoundError:
        return {}
    except Exception as exc:  # a corrupt cache must never stop a run
        log.warning("%s: unreadable cache index (%s); rebuilding", path, exc.__class__.__name__)
        return {}
    return files


def _read_record(handle: BinaryIO) -> Any:
    size = _LENGTH.unpack(handle.read(_LENGTH.size))[0]
    data = handle.read(size)
    if len(data) != size:
        raise EOFError("index file is truncated")
    return marshal.loads(data)


def save_index(folder: Path, print_: str, files: dict[str, Known]) -> None:
    """Write the index atomically: a reader sees the old file or the new one, never a mix."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".index-", dir=folder)
    try:
        items = list(files.items())
        chunks = [items[i : i + _RECORD] for i in range(0, len(items), _RECORD)]
        with os.fdopen(fd, "wb") as handle:
            records: list[Any] = [(FORMAT, print_, len(chunks)), *(dict(chunk) for chunk in chunks)]
            for record in records:
                data = marshal.dumps(record)
                handle.write(_LENGTH.pack(len(data)))
                handle.write(data)
        os.chmod(temp, 0o644)  # mkstemp makes it private; the bodies file next to it is not
        os.replace(temp, folder / INDEX)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


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
        try:
            row = self.connect().execute("SELECT html FROM bodies WHERE path = ? AND hash = ?", (path, content_hash)).fetchone()
            return zlib.decompress(row[0]).decode("utf-8") if row else None
        except (sqlite3.Error, zlib.error, UnicodeDecodeError) as exc:
            log.warning("%s: cannot read a cached body (%s)", self.path, exc)
            return None

    def write(self, rows: Iterable[tuple[str, str, bytes]], removed: Iterable[str]) -> None:
        connection = self.connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany("DELETE FROM bodies WHERE path = ?", ((p,) for p in removed))
            connection.executemany("INSERT OR REPLACE INTO bodies (path, hash, html) VALUES (?, ?, ?)", rows)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class CachedContent:
    """``Collection.content``: a post's HTML from the cache, else rendered again from its file."""

    def __init__(self, site: Site, bodies: Bodies | None) -> None:
        self.site = site
        self.bodies = bodies

    def __call__(self, post: Post) -> str:
        if self.bodies is not None:
            html = self.bodies.get(post.path, post.content_hash)
            if html is not None:
                return html
        return rerender(self.site, post)


# ---------------------------------------------------------------- parsing


def _pack(entry: Entry, site: Site) -> tuple[Entry, Outcome, bytes | None]:
    result = read_entry(entry, site)
    if isinstance(result, Parsed):
        return entry, result.post, zlib.compress(result.html.encode("utf-8"), 1)
    return entry, result, None


_WORKER_SITE: Site | None = None


def _init_worker(site: Site) -> None:
    global _WORKER_SITE
    _WORKER_SITE = site


def _work(entries: Sequence[Entry]) -> list[tuple[Entry, Outcome, bytes | None]]:
    assert _WORKER_SITE is not None
    return [_pack(entry, _WORKER_SITE) for entry in entries]


def parse_all(entries: Sequence[Entry], site: Site, workers: int | None = None) -> Iterator[tuple[Entry, Outcome, bytes | None]]:
    """Parse files, in worker processes when there are many (results in any order)."""
    count = workers if workers is not None else (os.cpu_count() or 1)
    if count < 2 or len(entries) < PARALLEL_FROM:
        for entry in entries:
            yield _pack(entry, site)
        return
    chunks = [entries[i : i + _CHUNK] for i in range(0, len(entries), _CHUNK)]
    # fork is cheapest, but forking a process with other threads running (the daemon's scheduler
    # and web server) can deadlock the child: spawn then.
    method = "fork" if threading.active_count() == 1 else "spawn"
    done = 0
    try:
        context = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker, initargs=(site,)) as pool:
            for batch in pool.map(_work, chunks):
                yield from batch
                done += 1
    except (concurrent.futures.process.BrokenProcessPool, OSError, RuntimeError) as exc:
        # e.g. spawn from a script without a `__main__` guard: slower, but never fatal.
        log.warning("parallel parse failed (%s); parsing in this process", exc.__class__.__name__)
        for chunk in chunks[done:]:
            for entry in chunk:
                yield _pack(entry, site)


# ---------------------------------------------------------------- collect

#: Per process, per site cache folder: the fingerprint, the index and the posts built from it,
#: so a daemon's repeated runs reuse post objects instead of loading them again.
_MEMO: dict[str, tuple[str, dict[str, Known], dict[str, Post]]] = {}
_MEMO_LOCK = threading.Lock()


def _finish(site: Site, posts: list[Post], errors: list[FileError], now: datetime, content: ContentSource) -> Collection:
    if not site.future:
        limit = now.timestamp()
        if posts and posts[0].date.timestamp() > limit:  # newest first: only the head can be future
            posts = [p for p in posts if p.date.timestamp() <= limit]
    errors.sort(key=lambda e: e.path)
    return Collection(site=site, posts=posts, errors=errors, content=content)


def collect_uncached(site: Site, now: datetime) -> Collection:
    """Read every file; bodies are rendered again from the files when asked for."""
    posts: list[Post] = []
    errors: list[FileError] = []
    for entry in walk(site):
        outcome = read_entry(entry, site)
        if isinstance(outcome, Parsed):
            posts.append(outcome.post)
        elif isinstance(outcome, FileError):
            log.warning("%s: %s", outcome.path, outcome.message)
            errors.append(outcome)
    posts.sort(key=sort_key)
    return _finish(site, posts, errors, now, CachedContent(site, None))


def collect_cached(site: Site, cache_dir: Path, now: datetime, workers: int | None = None) -> Collection:
    """Read only files whose size or mtime changed since the last run; keep the cache in step."""
    folder = site_folder(cache_dir, site)
    print_ = fingerprint(site)
    key = str(folder.resolve()) if folder.exists() else str(folder.absolute())
    with _MEMO_LOCK:
        memo = _MEMO.get(key)
    if memo is not None and memo[0] == print_ and (folder / INDEX).exists():
        old, built = memo[1], memo[2]
    else:
        old, built = load_index(folder, print_), {}
    try:
        return _collect(site, folder, print_, key, old, built, now, workers)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError) as exc:
        if not old:
            raise
        # An index that unpickles but holds rows of another shape: start over.
        log.warning("%s: cache index is inconsistent (%s); rebuilding", folder, exc)
        return _collect(site, folder, print_, key, {}, {}, now, workers)


def _collect(
    site: Site,
    folder: Path,
    print_: str,
    key: str,
    old: dict[str, Known],
    built: dict[str, Post],
    now: datetime,
    workers: int | None,
) -> Collection:
    entries = walk(site)
    changed: list[Entry] = []
    unchanged = 0
    get = old.get
    for entry in entries:
        known = get(entry.path)
        if known is not None and known[0] == entry.size and known[1] == entry.mtime_ns:
            unchanged += 1
        else:
            changed.append(entry)
    bodies = _open_bodies(folder, fresh=not old)
    zone = site.timezone
    errors: list[FileError] = []

    if not changed and unchanged == len(old) and old:
        # Nothing changed: the index is stored newest first, so no sort is needed either.
        posts: list[Post] = []
        append = posts.append
        for path, (_size, _mtime, kind, payload) in old.items():
            if kind == POST:
                post = built.get(path)
                append(post if post is not None else from_row(payload, zone))
            elif kind == ERROR:
                errors.append(FileError(path, payload))
        _remember(key, print_, old, posts)
        return _finish(site, posts, errors, now, CachedContent(site, bodies))

    seen = {entry.path for entry in entries}
    removed = [path for path in old if path not in seen]
    files: dict[str, Known] = {path: old[path] for path in seen if path in old}
    fresh: dict[str, Post] = {}
    rows: list[tuple[str, str, bytes]] = []
    gone: list[str] = list(removed)
    for entry, outcome, html in parse_all(changed, site, workers):
        if isinstance(outcome, Post):
            files[entry.path] = (entry.size, entry.mtime_ns, POST, to_row(outcome))
            fresh[entry.path] = outcome
            if html is not None:
                rows.append((entry.path, outcome.content_hash, html))
        else:
            if isinstance(outcome, FileError):
                # Logged when found, not at every run: a daemon would repeat it every few minutes.
                log.warning("%s: %s", outcome.path, outcome.message)
                files[entry.path] = (entry.size, entry.mtime_ns, ERROR, outcome.message)
            else:
                files[entry.path] = (entry.size, entry.mtime_ns, UNPUBLISHED, None)
            gone.append(entry.path)
        if bodies is not None and len(rows) >= 1000:
            bodies = _write_bodies(bodies, rows, ())
            rows = []
    if bodies is not None:
        bodies = _write_bodies(bodies, rows, gone)

    posts = []
    others: dict[str, Known] = {}
    for path, known in files.items():
        kind = known[2]
        if kind == POST:
            post = fresh.get(path) or built.get(path) or from_row(known[3], zone)
            posts.append(post)
        else:
            others[path] = known
            if kind == ERROR:
                errors.append(FileError(path, known[3]))
    posts.sort(key=sort_key)
    ordered = {post.path: files[post.path] for post in posts}
    ordered.update(others)
    if bodies is not None:
        try:
            save_index(folder, print_, ordered)
        except OSError as exc:
            log.warning("%s: cannot write the cache index (%s)", folder, exc)
    _remember(key, print_, ordered, posts)
    return _finish(site, posts, errors, now, CachedContent(site, bodies))


def _remember(key: str, print_: str, files: dict[str, Known], posts: list[Post]) -> None:
    with _MEMO_LOCK:
        _MEMO[key] = (print_, files, {post.path: post for post in posts})


def forget() -> None:
    """Drop what this process remembers of earlier runs (tests; a daemon never needs it)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def _open_bodies(folder: Path, fresh: bool) -> Bodies | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        bodies = Bodies(folder / BODIES)
        if fresh:
            _reset(bodies)
        bodies.connect()
        return bodies
    except (OSError, sqlite3.Error) as exc:
        log.warning("%s: cache unusable (%s); reading without it", folder, exc)
        return None


def _write_bodies(bodies: Bodies, rows: Sequence[tuple[str, str, bytes]], removed: Sequence[str]) -> Bodies | None:
    try:
        bodies.write(rows, removed)
        return bodies
    except sqlite3.Error as exc:
        log.warning("%s: cannot write cached bodies (%s); going on without the cache", bodies.path, exc)
        return None


def _reset(bodies: Bodies) -> None:
    """Start a fresh bodies file (the old one may be corrupt or for other settings)."""
    bodies.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(bodies.path) + suffix)
