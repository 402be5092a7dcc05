"""The collector: keep the post cache in step with the site's files, and hand out whole posts.

One way through, for every command: walk the site (or look at the paths a file watcher
reported), ask the cache what differs, read those files' fronts (on several cores when there
are many), record them; then hand out posts, rendering a body the first time a post is shown
and storing it. :class:`Collection` is what the build, the digest and ``check`` read from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import markdown_it

from .. import parallel, urls
from ..config import Config
from ..models import FileError, Post, Site
from . import cache as cache_module
from . import frontmatter, limits, liquid, markup, posts
from .cache import CacheDamaged, Changes, PostCache, is_damage, pack_scan, row_of
from .jekyll import resolve_site
from .markup import encode_path
from .posts import MARKDOWN_EXTENSIONS as _MARKDOWN_ENDINGS
from .posts import Body, Front, Outcome, read_entry, relative_path, render_entry, whole
from .walk import Entry, inside, rules_of, scan, site_root, stat_post

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Files to read (or bodies to render) from which a pool of worker processes pays for itself.
PARALLEL_FROM = 500


def _code_version() -> str:
    digest = hashlib.blake2b(digest_size=8)
    # What decides a front, a body or a rejection, and how they are stored.
    for module in (posts, frontmatter, markup, limits, urls, cache_module, liquid):
        with contextlib.suppress(OSError, TypeError):
            digest.update(Path(str(module.__file__)).read_bytes())
    digest.update(markdown_it.__version__.encode())
    digest.update(importlib.metadata.version("python-liquid").encode())
    return digest.hexdigest()


@functools.cache
def _code() -> str:
    return _code_version()


def fingerprint(site: Site) -> str:
    """Changes whenever the code or a site setting that shapes a post changes."""
    settings = {f.name: getattr(site, f.name) for f in dataclasses.fields(site) if f.name not in ("future", "category_order")}
    settings["timezone"] = str(site.timezone)
    text = repr((_code(), sorted((k, repr(v)) for k, v in settings.items())))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class SiteLinks:
    """What Liquid's ``{% link %}`` and ``{% post_url %}`` find in a site (:class:`liquid.Links`):
    posts from the post cache, pages and other files from the site's folder as Jekyll reads them."""

    def __init__(self, cache: PostCache, site: Site) -> None:
        self.cache = cache
        self.site = site

    def _site_path(self, path: str) -> str:
        prefix = self.site.collections_dir.strip("/")
        return f"{prefix}/{path}" if prefix else path

    def link(self, path: str) -> str | None:
        """Jekyll's ``Link`` tag: the item whose ``relative_path`` is ``path`` (a file's also with a
        leading `/`)."""
        found = self.cache.url_at(self._site_path(path))
        return found if found is not None else page_url(self.site, path.lstrip("/") if path.startswith("/") else path)

    def post_url(self, name: str) -> str | None:
        """Jekyll's ``PostComparer``: the first post, by date, whose relative path is
        `_posts/PATH/DATE-SLUG.ext` or `PATH/_posts/DATE-SLUG.ext`."""
        match = re.match(r"^(.+/)*(\d+-\d+-\d+)-(.*)$", name.removeprefix("/"))
        if match is None:
            return None
        folder, day, slug = match.group(1) or "", match.group(2), match.group(3)
        # Jekyll puts the folder into its pattern as written; here it is matched literally, so
        # that a template cannot make a pattern that backtracks for ever.
        basename = f"{day}-{re.escape(slug)}\\.[^.]+"
        folder = re.escape(folder)
        pattern = re.compile(f"^_posts/{folder}{basename}|^{folder}_posts/?{basename}")
        for front in self.cache.named(f"{day}-{slug}"):
            if pattern.match(relative_path(front.path, self.site)):
                return front.permalink
        return None


#: Jekyll's permalink styles that give a page its output ending (``Utils.add_permalink_suffix``).
_ENDING_STYLES = ("date", "ordinal", "none")


def page_url(site: Site, rel: str) -> str | None:
    """The URL Jekyll gives the page or static file at ``rel`` (from the site), if its reader
    reads it: a file with front matter is a page (its ``permalink``, or `/path/name.html`,
    `/path/` for an index), any other a static file (its path)."""
    rules = rules_of(site)
    *folders, name = rel.split("/")
    parent = ""
    for folder in folders:
        if not folder or folder == "_posts" or not rules.folder(folder, parent + folder):
            return None
        parent += folder + "/"
    full = os.path.join(site.source, *rel.split("/"))
    if not name or not rules.admits(name, rel) or not os.path.isfile(full) or inside(site_root(site), full) is None:
        return None
    try:
        with open(full, "rb") as handle:
            head = handle.read(frontmatter_limit(site))
    except OSError:
        return None
    if not re.match(rb"---[ \t]*\r?\n", head):
        return encode_path("/" + rel)
    data: Mapping[str, Any] = {}
    with contextlib.suppress(Exception):
        data, _ = frontmatter.split_front_matter(frontmatter.decode(head, site.encoding), site.limits)
    permalink = data.get("permalink")
    if isinstance(permalink, str) and permalink.strip():
        return encode_path(permalink.strip() if permalink.startswith("/") else "/" + permalink.strip())
    stem, ext = os.path.splitext(name)
    output = ".html" if ext.lower() in _MARKDOWN_ENDINGS or ext.lower() in (".html", ".htm") else ext
    path = "/" + parent
    if output != ".html":
        return encode_path(path + stem + output)
    if stem == "index":
        return encode_path(path)
    style = str(site.config.get("permalink") or "date")
    suffix = (output if style in _ENDING_STYLES or style.endswith(":output_ext") else "/" if style == "pretty" or style.endswith("/")
              else "")
    return encode_path(path + stem + suffix)


def frontmatter_limit(site: Site) -> int:
    """Bytes read of a page for its front matter."""
    return site.limits.chars * 4 + 1024


def cache_file(cache_dir: Path, site: Site) -> Path:
    """The cache of one site (several sites can share a cache folder)."""
    key = hashlib.blake2b(os.path.abspath(site.source).encode(), digest_size=6).hexdigest()
    return cache_dir / f"site-{key}" / cache_module.NAME


def open_cache(site: Site, cache_dir: Path | None) -> PostCache:
    """The site's cache in ``cache_dir``; in memory without one, or when the folder cannot be
    written (a run then reads every file)."""
    if cache_dir is not None:
        try:
            return PostCache(cache_file(cache_dir, site), fingerprint(site), site)
        except (OSError, sqlite3.Error) as exc:
            log.warning("%s: cache unusable (%s); reading without it", cache_dir, exc)
    return PostCache(None, fingerprint(site), site)


class Collection:
    """The posts of a site as of ``now`` (posts dated later are left out unless the site
    publishes future posts), through its cache."""

    def __init__(self, site: Site, cache: PostCache, now: datetime, *, parallel: bool = True) -> None:
        self.site = site
        self.cache = cache
        self.now = now
        self.parallel = parallel
        #: the cache's generation once the site was read: what a build built at
        self.generation = cache.generation
        #: files read this time (new or changed)
        self.read = 0

    @property
    def until(self) -> float | None:
        """The latest date shown (POSIX time); None when the site publishes future posts."""
        return None if self.site.future else self.now.timestamp()

    def _read(self, read: Callable[[], T]) -> T:
        """``read()`` from the cache; a cache found damaged on the way is started afresh, the
        site read into it again, and ``read`` tried once more."""
        try:
            return read()
        except (CacheDamaged, sqlite3.DatabaseError) as exc:
            if not is_damage(exc):
                raise
            self.cache.discard(exc)
            self.read += _refresh(self.cache, self.site, self.now, None, self.parallel).read
            self.generation = self.cache.generation
            return read()

    @property
    def errors(self) -> list[FileError]:
        """Every file rejected, by path."""
        return self._read(self.cache.rejected)

    @property
    def posts(self) -> list[Post]:
        """Every post shown, newest first (renders every body not rendered yet: `check`)."""
        return self._read(lambda: self._posts_of(self.cache.newest("site:", self.until, -1)))

    def feeds(self, until: float | None) -> dict[str, tuple[int, float]]:
        return self._read(lambda: self.cache.feeds(until))

    def newest(self, key: str, until: float | None, limit: int) -> list[str]:
        return self._read(lambda: self.cache.newest(key, until, limit))

    def versions(self, key: str, until: float | None) -> list[tuple[str, str]]:
        return self._read(lambda: self.cache.versions(key, until))

    def changed_since(self, cache_id: str, generation: int, due: float | None) -> set[str] | None:
        """The feeds whose posts changed since the run of ``cache_id`` at ``generation``, or
        came due since ``due`` (the first post then in the future); None when the cache cannot
        tell (another cache, a generation no longer kept)."""
        if cache_id != self.cache.id:
            return None
        changed = self.cache.touched_since(generation)
        until = self.until
        if changed is not None and due is not None and until is not None and due <= until:
            came = self.cache.between(due, until + 1e-6)
            changed |= {key for front in self.cache.fronts(came).values() for key in front.feed_keys()}
        return changed

    def next_due(self) -> float | None:
        """When the first post dated after ``now`` comes due (None: none, or all are shown)."""
        until = self.until
        return self.cache.next_after(until) if until is not None else None

    def between(self, start: datetime, end: datetime) -> list[Post]:
        """The posts dated in [start, end), newest first."""
        return self._read(lambda: self._posts_of(self.cache.between(start.timestamp(), end.timestamp())))

    def posts_of(self, paths: Sequence[str]) -> list[Post]:
        """The posts at ``paths``, whole, in that order; a body not rendered yet is rendered
        (on several cores when there are many) and stored."""
        return self._read(lambda: self._posts_of(paths))

    def _bodies(self, paths: Sequence[str]) -> dict[str, Body]:
        """The stored bodies of ``paths`` whose Liquid lookups still answer as they did."""
        bodies = self.cache.bodies(paths)
        links = SiteLinks(self.cache, self.site)
        return {path: body for path, body in bodies.items()
                if not body.references or liquid.references_hold(body.references, links)}

    def _posts_of(self, paths: Sequence[str]) -> list[Post]:
        fronts = self.cache.fronts(paths)
        bodies = self._bodies(paths)
        missing = [fronts[path] for path in dict.fromkeys(paths) if path in fronts and path not in bodies]
        if missing:
            bodies.update(self._render(missing))
            unrendered = [front.path for front in missing if front.path not in bodies]
            if unrendered:  # a file rejected when rendered (a Liquid error) is no post any more
                still = self.cache.fronts(unrendered)
                fronts = {path: front for path, front in fronts.items() if path not in unrendered or path in still}
        return [whole(fronts[path], bodies.get(path) or _no_body(fronts[path])) for path in paths if path in fronts]

    def close(self) -> None:
        self.cache.close()

    def content(self, post: Post) -> str:
        """The rendered HTML of ``post``."""
        return self._read(lambda: self._content(post))

    def contents(self, posts: Sequence[Post]) -> dict[str, str]:
        """The rendered HTML of each of ``posts``, by path (one query for all)."""
        return self._read(lambda: self._contents(posts))

    def _contents(self, posts: Sequence[Post]) -> dict[str, str]:
        bodies = self._bodies([post.path for post in posts])
        html = {path: body.html for path, body in bodies.items()}
        for post in posts:
            if bodies.get(post.path) is None or bodies[post.path].content_hash != post.content_hash:
                html[post.path] = self._content(post)
        return html

    def _content(self, post: Post) -> str:
        body = self._bodies([post.path]).get(post.path)
        if body is None or body.content_hash != post.content_hash:
            front = self.cache.fronts([post.path]).get(post.path)
            body = self._render([front]).get(post.path) if front is not None else None
        return body.html if body is not None else ""

    def _render(self, fronts: Sequence[Front]) -> dict[str, Body]:
        """Render and store the bodies of ``fronts`` (by this process and workers, each storing
        what it rendered); the bodies, read back."""
        batches = parallel.batched(fronts, 4) if len(fronts) >= PARALLEL_FROM else [fronts]
        task = functools.partial(_render_batch, _Job(self.site, self.cache.path, self.cache.fingerprint))
        failed = [item for results in parallel.run(task, batches, parallel=self.parallel) for item in results]
        if failed:
            generation = self.cache.begin()
            self.cache.record(generation, [row_of(entry, outcome) for entry, outcome in failed])
            self.cache.finish(generation, [], None)
        return self._bodies([front.path for front in fronts])


def _no_body(front: Front) -> Body:
    return Body(html="", summary="", image=None, source=None, content_hash="")


@dataclass(frozen=True, slots=True)
class _Job:
    """What a batch needs to open the cache in any process (a connection must not cross a fork)."""

    site: Site
    path: Path
    fingerprint: str


def _read_batch(job: _Job, generation: int, entries: Sequence[Entry]) -> list[FileError]:
    """Read ``entries`` and record them (in this process, one transaction); the rejections."""
    rows = [row_of(entry, read_entry(entry, job.site)) for entry in entries]
    cache = PostCache(job.path, job.fingerprint, job.site)
    try:
        cache.record(generation, rows)
    finally:
        cache.close()
    return [FileError(path, data.decode("utf-8", "replace")) for path, _, _, status, data, _, _ in rows
            if status == "rejected"]


def _render_batch(job: _Job, fronts: Sequence[Front]) -> list[tuple[Entry, Outcome]]:
    """Render the bodies of ``fronts`` and store them; the files that are no longer posts."""
    done: list[tuple[Entry, Body]] = []
    failed: list[tuple[Entry, Outcome]] = []
    cache = PostCache(job.path, job.fingerprint, job.site)
    links = SiteLinks(cache, job.site)
    for front in fronts:
        entry, outcome = render_entry(front, job.site, links)
        if isinstance(outcome, Body):
            if entry is not None:
                done.append((entry, outcome))
        else:
            # Changed since it was read, and no longer a post: shown without its body this time,
            # recorded as what it is now by the caller (its feeds are touched).
            log.warning("%s: %s", front.path, outcome.message if outcome is not None else "no longer published",
                        extra={"file": front.path})
            if entry is not None:
                failed.append((entry, outcome))
    try:
        cache.store_bodies(done)
    finally:
        cache.close()
    return failed


def refresh(cache: PostCache, site: Site, now: datetime, *, touched: Iterable[str] | None = None,
            parallel: bool = True) -> Collection:
    """Bring ``cache`` in step with the site's files and return the collection as of ``now``.
    ``touched``: every path (relative to the site) that may have changed since the last run,
    when a file watcher knows them: only those are looked at. A damaged cache is started
    afresh (one warning) and the site read again. The caller holds the cache (``cache.hold``)."""
    try:
        return _refresh(cache, site, now, touched, parallel)
    except (CacheDamaged, sqlite3.DatabaseError) as exc:
        if not is_damage(exc):
            raise
        cache.discard(exc)
        return _refresh(cache, site, now, None, parallel)


def _refresh(cache: PostCache, site: Site, now: datetime, touched: Iterable[str] | None, use_pool: bool) -> Collection:
    packed: bytes | None = None
    if cache.generation == 0:
        touched = None  # an empty cache (new, or started afresh): only a walk fills it
    if touched is None:
        walked = scan(site, parallel=use_pool)
        packed = pack_scan(walked)
        changes = cache.changes(walked, packed)
    else:
        paths = sorted(set(touched))
        found = {path: stat_post(site, path) for path in paths}
        known = cache.stats(paths)
        changes = Changes([entry for entry in found.values() if entry is not None
                           and known.get(entry.path) != (entry.size, entry.mtime_ns)],
                          [path for path, entry in found.items() if entry is None and path in known])
    collection = Collection(site, cache, now, parallel=use_pool)
    if changes.read or changes.removed:
        generation = cache.begin()
        batches = parallel.batched(changes.read, 4) if len(changes.read) >= PARALLEL_FROM else [changes.read]
        task = functools.partial(_read_batch, _Job(site, cache.path, cache.fingerprint), generation)
        for rejected in parallel.run(task, batches, parallel=use_pool):
            for error in rejected:
                # Logged when found, not at every run: a daemon would repeat it every few minutes.
                log.warning("%s: %s", error.path, error.message, extra={"file": error.path})
        cache.finish(generation, changes.removed, packed)
        collection.read = len(changes.read)
    elif packed is not None:
        cache.finish(cache.generation, [], packed)  # a scan missing since a watcher's run: kept again
    collection.generation = cache.generation
    return collection


def collect(site: Site, cache_dir: Path | None = None, now: datetime | None = None, *,
            touched: Iterable[str] | None = None, parallel: bool = True) -> Collection:
    """The posts of ``site`` as of ``now``; with ``cache_dir``, unchanged files are not read again."""
    cache = open_cache(site, cache_dir)
    with cache.hold():
        return refresh(cache, site, now if now is not None else datetime.now(UTC), touched=touched, parallel=parallel)


def collect_site(config: Config, now: datetime | None = None, *, touched: Iterable[str] | None = None,
                 parallel: bool = True) -> Collection:
    """:func:`collect` for the site and cache folder of ``config``."""
    return collect(resolve_site(config), cache_folder(config), now, touched=touched, parallel=parallel)


def cache_folder(config: Config) -> Path | None:
    return Path(config.site.cache_dir) if config.site.cache_dir else None


def summarize(collection: Collection) -> dict[str, Any]:
    """What `check` prints: posts, errors, categories and tags with counts, date range."""
    shown = collection.posts
    categories: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    for post in shown:
        categories.update(post.categories)
        tags.update(post.tags)
    order = collection.site.category_order
    return {
        "posts": [
            {
                "path": p.path,
                "url": p.url,
                "id": p.id,
                "title": p.title,
                "date": p.date.isoformat(),
                "categories": list(p.categories),
                "tags": list(p.tags),
                "summary": p.summary,
                "image": p.image,
                "source": p.source,
            }
            for p in shown
        ],
        "errors": [{"path": e.path, "message": e.message} for e in collection.errors],
        "categories": dict(sorted(categories.items(), key=lambda kv: (order.get(kv[0], 1000), -kv[1], kv[0]))),
        "tags": dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))),
        "first_date": min(p.date for p in shown).isoformat() if shown else None,
        "last_date": max(p.date for p in shown).isoformat() if shown else None,
    }


def write_json(summary: Mapping[str, Any], out: TextIO) -> None:
    """``summary`` as indented JSON, written a megabyte at a time: at 100,000 posts the document
    is ~100 MB, and one string of it (plus its encoded copy) would triple the memory of `check`."""
    pieces: list[str] = []
    size = 0
    for piece in json.JSONEncoder(ensure_ascii=False, indent=2).iterencode(summary):
        pieces.append(piece)
        size += len(piece)
        if size > 1 << 20:
            out.write("".join(pieces))
            pieces.clear()
            size = 0
    pieces.append("\n")
    out.write("".join(pieces))
    out.flush()
