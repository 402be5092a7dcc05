"""The collector's cache: a second run over an unchanged site only stats files.

One folder per site under ``cache_dir`` holds

- ``index.pickle``: a fingerprint (code + the site settings that shape a post) and, per file
  relative path, its size, mtime and what parsing gave (a post, a rejection, or "unpublished");
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
import multiprocessing
import os
import pickle
import sqlite3
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import collector, markup
from .collector import Entry, Parsed, is_visible, read_entry, rerender, sort_key, walk
from .models import Collection, FileError, Post, Site

log = logging.getLogger(__name__)

#: Bump when the layout of the index changes.
FORMAT = 1
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


def load_index(folder: Path, expected: str) -> dict[str, tuple[int, int, Outcome]]:
    path = folder / "index.pickle"
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # a corrupt cache must never stop a run
        log.warning("%s: unreadable cache index (%s); rebuilding", path, exc.__class__.__name__)
        return {}
    if not (isinstance(data, tuple) and len(data) == 2 and data[0] == expected and isinstance(data[1], dict)):
        log.info("%s: cache is for other settings or another version; rebuilding", path)
        return {}
    return data[1]


def save_index(folder: Path, print_: str, index: dict[str, tuple[int, int, Outcome]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".index-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump((print_, index), handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp, folder / "index.pickle")
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
    # spawn, not fork: the daemon calls this with scheduler and server threads running.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker, initargs=(site,)) as pool:
        for batch in pool.map(_work, chunks):
            yield from batch


# ---------------------------------------------------------------- collect


def _collection(site: Site, outcomes: Iterable[Outcome], now: datetime, content: Any) -> Collection:
    posts: list[Post] = []
    errors: list[FileError] = []
    for outcome in outcomes:
        if isinstance(outcome, Post):
            if is_visible(outcome, site, now):
                posts.append(outcome)
        elif isinstance(outcome, FileError):
            errors.append(outcome)
    posts.sort(key=sort_key)
    errors.sort(key=lambda e: e.path)
    for error in errors:
        log.warning("%s: %s", error.path, error.message)
    return Collection(site=site, posts=posts, errors=errors, content=content)


def collect_uncached(site: Site, now: datetime) -> Collection:
    """Read every file; bodies are rendered again from the files when asked for."""
    outcomes = [read_entry(entry, site) for entry in walk(site)]
    return _collection(
        site,
        (o.post if isinstance(o, Parsed) else o for o in outcomes),
        now,
        CachedContent(site, None),
    )


def collect_cached(site: Site, cache_dir: Path, now: datetime, workers: int | None = None) -> Collection:
    """Read only files whose size or mtime changed since the last run; keep the cache in step."""
    folder = site_folder(cache_dir, site)
    print_ = fingerprint(site)
    old = load_index(folder, print_)
    index: dict[str, tuple[int, int, Outcome]] = {}
    changed: list[Entry] = []
    for entry in walk(site):
        known = old.get(entry.path)
        if known is not None and known[0] == entry.size and known[1] == entry.mtime_ns:
            index[entry.path] = known
        else:
            changed.append(entry)
    removed = [path for path in old if path not in index]
    bodies: Bodies | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        bodies = Bodies(folder / "bodies.sqlite3")
        if not old:
            _reset(bodies)
        bodies.connect()
    except (OSError, sqlite3.Error) as exc:
        log.warning("%s: cache unusable (%s); reading without it", folder, exc)
        bodies = None

    if changed or removed or not old:
        rows: list[tuple[str, str, bytes]] = []
        gone: list[str] = list(removed)
        for entry, outcome, html in parse_all(changed, site, workers):
            index[entry.path] = (entry.size, entry.mtime_ns, outcome)
            if isinstance(outcome, Post) and html is not None:
                rows.append((entry.path, outcome.content_hash, html))
            else:
                gone.append(entry.path)
            if bodies is not None and len(rows) >= 2000:
                _write_bodies(bodies, rows, ())
                rows = []
        if bodies is not None:
            if not _write_bodies(bodies, rows, gone):
                bodies = None
            else:
                try:
                    save_index(folder, print_, index)
                except OSError as exc:
                    log.warning("%s: cannot write the cache index (%s)", folder, exc)
    return _collection(site, (value[2] for value in index.values()), now, CachedContent(site, bodies))


def _write_bodies(bodies: Bodies, rows: Sequence[tuple[str, str, bytes]], removed: Sequence[str]) -> bool:
    try:
        bodies.write(rows, removed)
        return True
    except sqlite3.Error as exc:
        log.warning("%s: cannot write cached bodies (%s)", bodies.path, exc)
        return False


def _reset(bodies: Bodies) -> None:
    """Start a fresh bodies file (the old one may be corrupt or for other settings)."""
    bodies.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(bodies.path) + suffix)
