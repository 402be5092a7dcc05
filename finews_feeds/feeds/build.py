"""The feed build: read what changed in the site, plan the feeds it reaches, render those whose
content changed, write them, remove the feeds that are gone.

A feed's signature is a hash of everything it shows (its header, its entries' ids, metadata and
content hashes, the options). The manifest of the last build (:mod:`.writer`) holds each feed's
signature and files, and the post cache's id and generation that build saw. The next build asks
the cache which feeds changed since that generation (posts added, edited, removed or come due)
and plans only those, then renders only the planned feeds whose signature moved: after one new
post, the four feeds it reaches out of two thousand. Anything that makes the last build's
record untrustworthy (``--full``, other settings, another cache, an interrupted build, a
missing file) plans and signs every feed; the writer still rewrites only files whose bytes
changed. Many feeds to render go to a pool of worker processes (:mod:`finews_feeds.parallel`).

Archive pages (:mod:`.plan`) are signed apart, each from its page number and its posts' paths
and versions (the cache's date, size and mtime of each file): a feed that changed has its pages
compared without loading their posts, and only a page whose signature moved is rendered. A new
post changes the feed and, when it fills a page, that one new page; an edited old post, its
page; a removed or back-dated one, its page and every later page (their posts move down a place).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .. import parallel
from ..config import Config
from ..models import ContentSource, FileError, Post, Posts, Site, feed_keys
from ..site.cache import CacheDamaged, PostCache, is_damage
from ..site.collector import Collection, cache_folder, open_cache, refresh
from ..site.jekyll import resolve_site
from . import render
from .gone import record_gone
from .hub import queue_written
from .page import FOLDER_PAGE, SITE_PAGE, page_path, render_page
from .plan import ARCHIVE_FOLDER, FEED_FOLDERS, FILE_NAMES, PAGE_SEPARATOR, FeedOptions, FeedPlan, FeedSpec, plan
from .writer import FeedRecord, Manifest, OutputDir, load_manifest, record_intent, save_manifest

log = logging.getLogger(__name__)

#: Bump when the rendered output changes for the same input, so old manifests do not match.
RENDER_VERSION = "5"
#: Feeds to render from which a pool of worker processes pays for itself.
PARALLEL_FROM = 100


@dataclass(slots=True)
class BuildReport:
    """What a build did, for the summary line, the daemon and the exit code."""

    output: str
    posts: int = 0
    feeds: int = 0  #: feeds that exist after the build
    feeds_written: int = 0  #: feeds with at least one file written
    feeds_unchanged: int = 0  #: feeds not rendered, or rendered to the same bytes
    feeds_removed: int = 0  #: feeds of categories or tags that no longer have posts
    files_written: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    rejected: list[FileError] = field(default_factory=list)  #: files the collector rejected
    seconds: float = 0.0  #: the whole build
    collect_seconds: float = 0.0  #: of which reading the site
    #: True when the build planned only the feeds that changed (the last build's record held)
    incremental: bool = False
    read: int = 0  #: files read (new or changed since the last run)
    written: list[str] = field(default_factory=list)  #: relative paths written, sorted
    #: categories and tags of the site (names), for the subscribe form
    categories: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    #: feed URLs queued for the WebSub hub (``feeds.websub_hub``)
    announced: int = 0

    def exit_code(self, strict: bool = False) -> int:
        """0, or 1 when ``strict`` and the collector rejected files."""
        return 1 if strict and self.rejected else 0

    def summary(self) -> str:
        return (
            f"posts: {self.posts}, feeds: {self.feeds} ({self.feeds_written} written, "
            f"{self.feeds_unchanged} unchanged, {self.feeds_removed} removed), "
            f"files: {self.files_written} written, {self.files_unchanged} unchanged, {self.files_removed} removed, "
            f"rejected files: {len(self.rejected)}, {self.seconds:.2f} s (collect {self.collect_seconds:.2f} s), "
            f"output: {self.output}"
        )

    def fields(self) -> dict[str, object]:
        """The summary as the fields of a JSON log line."""
        return {
            "posts": self.posts, "feeds": self.feeds, "feeds_written": self.feeds_written,
            "feeds_unchanged": self.feeds_unchanged, "feeds_removed": self.feeds_removed,
            "files_written": self.files_written, "files_unchanged": self.files_unchanged,
            "files_removed": self.files_removed, "rejected_files": len(self.rejected),
            "seconds": round(self.seconds, 3), "collect_seconds": round(self.collect_seconds, 3),
            "incremental": self.incremental, "output": self.output,
        }


# --------------------------------------------------------------------------- signatures


def post_fingerprint(post: Post) -> bytes:
    """Every field of a post that a feed shows, with its content hash."""
    return "\x1f".join((
        post.id, post.url, post.content_hash, post.title, post.slug, post.date.isoformat(),
        post.updated.isoformat() if post.updated else "", "\x1e".join(post.categories), "\x1e".join(post.tags),
        post.summary, post.image or "", post.author or "", post.source, post.excerpt or "", post.description or "",
        post.author_email or "", post.author_uri or "", "1" if post.excerpt_only else "",
        "x".join(map(str, post.image_size)) if post.image_size else "",
    )).encode("utf-8", "surrogatepass") + b"\x1d"


def signature(spec: FeedSpec, posts: Sequence[Post], options: FeedOptions) -> str:
    """Of everything the feed ``spec`` showing ``posts`` would be made of."""
    digest = hashlib.blake2b(f"{RENDER_VERSION}\x1d{options.fingerprint()}\x1d".encode(), digest_size=16)
    digest.update(spec.header().encode("utf-8", "surrogatepass"))
    # Not in the header (which the listings are signed by): the feed's link to its last page.
    digest.update(f"\x1d{spec.page_size}\x1f{spec.archived}\x1d".encode())
    for post in posts:
        digest.update(post_fingerprint(post))
    return digest.hexdigest()


def page_signature(page: FeedSpec, members: Sequence[tuple[str, str]], options: FeedOptions) -> str:
    """Of the archive page ``page`` holding ``members`` (path and version, see
    :meth:`~finews_feeds.models.Posts.versions`)."""
    digest = hashlib.blake2b(f"{RENDER_VERSION}\x1d{options.fingerprint()}\x1d".encode(), digest_size=16)
    digest.update(spec_text(page).encode("utf-8", "surrogatepass"))
    for path, version in members:
        digest.update(f"{path}\x1f{version}\x1e".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def spec_text(page: FeedSpec) -> str:
    return f"{page.header()}\x1d{page.page}\x1f{page.page_size}"


def listings_signatures(feeds: FeedPlan, options: FeedOptions) -> tuple[str, str]:
    """Of everything the OPML file, the head snippets and the stylesheet show (which feeds there
    are), and of everything the index page shows (also their counts and newest dates)."""
    base = f"{RENDER_VERSION}\x1d{options.fingerprint()}\x1d"
    headers = "\x1d".join(spec.header() for spec in feeds.specs)
    shown = "\x1d".join(f"{feeds.counts.get(spec.key, 0)}\x1f{moment.isoformat() if moment else ''}"
                        for spec, moment in ((spec, feeds.newest.get(spec.key)) for spec in feeds.specs))
    outline = hashlib.blake2b(f"{base}outline\x1d{headers}".encode("utf-8", "surrogatepass"), digest_size=16)
    index = hashlib.blake2b(f"{base}index\x1d{headers}\x1e{shown}".encode("utf-8", "surrogatepass"), digest_size=16)
    return outline.hexdigest(), index.hexdigest()


def plan_key(site: Site, options: FeedOptions) -> str:
    """Everything besides the posts that decides which feeds there are and what they show."""
    text = repr((RENDER_VERSION, dataclasses.astuple(site), options))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class _Job:
    """What rendering a feed needs, in this process or a worker."""

    site: Site
    cache_path: Path | None
    fingerprint: str
    options: FeedOptions
    out_root: str
    now: datetime


@dataclass(frozen=True, slots=True)
class _Result:
    key: str
    written: list[str]
    unchanged: list[str]


#: A feed to render with its posts, or an archive page with its posts' paths (newest first):
#: pages' posts are loaded by whoever renders them, a batch at a time, so that no process holds
#: every archived post at once.
Work = tuple[FeedSpec, list[Post] | tuple[str, ...]]


def _render_batch(job: _Job, batch: Sequence[Work], posts: Posts | None = None) -> list[_Result]:
    """Render and write ``batch``; a worker process reads bodies through its own connection."""
    own = posts is None
    collection = posts if posts is not None else Collection(
        job.site, PostCache(job.cache_path, job.fingerprint, job.site), job.now, parallel=False)
    try:
        out = OutputDir(job.out_root)
        batch = _with_posts(batch, collection)
        unique = list({post.path: post for _, shown in batch for post in shown}.values())
        if job.options.full_content and isinstance(collection, Collection):
            html = collection.contents(unique)  # one query for the batch, not one a post
            content: ContentSource = lambda post: html[post.path]  # noqa: E731
        else:
            content = collection.content
        # A post is in several feeds: its entry is made once.
        entries = {post.path: render.entry_data(post, job.options, content) for post in unique}
        results = []
        for spec, shown in batch:
            result = _Result(spec.key, [], [])
            data_of = [entries[p.path] for p in shown]
            # The feed's browser view (page.py) is written, and counted, with its files; archive
            # pages have none (they are documents for readers walking the history).
            files = render.render_feed(spec, job.options, data_of)
            if not spec.page:
                files.update(render_page(spec, job.options, data_of))
            for rel, data in files.items():
                (result.written if out.write(rel, data) else result.unchanged).append(rel)
            results.append(result)
        return results
    finally:
        if own and isinstance(collection, Collection):
            collection.close()


def _with_posts(batch: Sequence[Work], posts: Posts) -> list[tuple[FeedSpec, list[Post]]]:
    """``batch`` with the posts of its archive pages loaded (one query). The feed index the
    pages were cut from is not checked against the posts' checksummed fronts as a feed's newest
    are (:meth:`~finews_feeds.site.cache.PostCache.newest`): it is checked here, for what is shown."""
    wanted = list(dict.fromkeys(path for _, shown in batch if isinstance(shown, tuple) for path in shown))
    loaded = {post.path: post for post in posts.posts_of(wanted)} if wanted else {}
    ready = []
    for spec, shown in batch:
        if isinstance(shown, tuple):
            found = [loaded[path] for path in shown if path in loaded]
            if len(found) != len(shown) or any(spec.key not in feed_keys(post) for post in found):
                raise CacheDamaged(f"the index of feed {spec.key} names posts of archive page {spec.page} wrongly")
            ready.append((spec, found))
        else:
            ready.append((spec, shown))
    return ready


def _render_all(work: Sequence[Work], job: _Job, posts: Posts, use_pool: bool) -> Iterable[_Result]:
    if len(work) < PARALLEL_FROM or job.cache_path is None or not use_pool:
        return _render_batch(job, work, posts)
    # Largest feeds first, so the workers finish together.
    ordered = sorted(work, key=lambda item: -len(item[1]))
    return (result for results in parallel.run(functools.partial(_render_batch, job), parallel.batched(ordered))
            for result in results)


# --------------------------------------------------------------------------- the build


def run_build(config: Config, *, full: bool = False, now: datetime | None = None,
              touched: Iterable[str] | None = None, parallel: bool = True) -> BuildReport:
    """Build the feeds of the site of ``config`` into ``feeds.output`` (the `build` command and
    the daemon). ``touched``: the paths a file watcher reported since the last build, when it
    knows them (only those are looked at); ``parallel``: whether worker processes may be used.
    Builds of one output folder run one after the other."""
    started = time.perf_counter()
    moment = now if now is not None else datetime.now(UTC)
    site = resolve_site(config)
    out = OutputDir(Path(config.feeds.output))
    options = FeedOptions.from_config(site, config.feeds)
    with out.lock():
        cache = open_cache(site, cache_folder(config))
        try:
            try:
                report = _run(cache, site, options, out, moment, full=full, touched=touched, use_pool=parallel)
            except (CacheDamaged, sqlite3.DatabaseError) as exc:
                if not is_damage(exc):
                    raise
                cache.discard(exc)
                report = _run(cache, site, options, out, moment, full=full, touched=None, use_pool=parallel)
        finally:
            cache.close()
        if config.feeds.websub_hub:
            # Queued (durably) before the lock goes: the next build cannot come between a feed
            # written and its announcement. Sent later, off the build's path (hub.py).
            report.announced = queue_written(out.root, report.written, options.base_url, time.time())
    report.seconds = time.perf_counter() - started
    log.info("feeds built: %s", report.summary(), extra=report.fields())
    return report


def _run(cache: PostCache, site: Site, options: FeedOptions, out: OutputDir, now: datetime, *, full: bool,
         touched: Iterable[str] | None, use_pool: bool) -> BuildReport:
    started = time.perf_counter()
    # Held while the site is read and the feeds planned: another run recording meanwhile would
    # leave this one believing it saw a whole generation it saw half of.
    with cache.hold():
        collection = refresh(cache, site, now, touched=touched, parallel=use_pool)
        collected = time.perf_counter() - started
        prepared = _prepare(collection, site, options, out, full=full)
    prepared.report.collect_seconds = collected
    prepared.report.read = collection.read
    job = _Job(site, cache.path, cache.fingerprint, options, str(out.root), now)
    _write(prepared, out, job, collection, full=full, use_pool=use_pool)
    return prepared.report


def build_feeds(posts: Posts, config: Config, *, full: bool = False) -> BuildReport:
    """Build the feeds of ``posts`` (held in memory, or a collection already read) into
    ``feeds.output``, in this process."""
    started = time.perf_counter()
    out = OutputDir(Path(config.feeds.output))
    options = FeedOptions.from_config(posts.site, config.feeds)
    with out.lock():
        prepared = _prepare(posts, posts.site, options, out, full=full)
        job = _Job(posts.site, None, "", options, str(out.root), datetime.now(UTC))
        _write(prepared, out, job, posts, full=full, use_pool=False)
    prepared.report.seconds = time.perf_counter() - started
    return prepared.report


@dataclass(slots=True)
class _Prepared:
    """What a build will write: the plan, the feeds to render, the manifest it will leave."""

    feeds: FeedPlan
    work: list[Work]
    manifest: Manifest
    old: Manifest
    report: BuildReport


def _prepare(posts: Posts, site: Site, options: FeedOptions, out: OutputDir, *, full: bool) -> _Prepared:
    report = BuildReport(output=str(out.root))
    old = load_manifest(out)
    key = plan_key(site, options)
    changed = None
    if isinstance(posts, Collection) and not full and not old.interrupted and old.plan_key == key:
        changed = posts.changed_since(old.cache_id, old.generation, old.due)
    # Records whose files are all there; a feed is known when its own and its pages' are.
    present = {k for k, record in old.feeds.items() if all(map(out.exists, record.files))}
    incomplete = {k.partition(PAGE_SEPARATOR)[0] for k in old.feeds if k not in present}
    known = {k for k in present if PAGE_SEPARATOR not in k and k not in incomplete}
    feeds = plan(posts, site, options, posts.until, old.slugs, keys=changed, known=known)
    if changed is not None:
        # A feed whose posts did not change but whose last build left fewer pages on record
        # than it has (a record lost, say): planned with the rest.
        unrecorded = {spec.key for spec in feeds.specs if spec.key not in feeds.entries and any(
            spec.at(n).record_key not in present for n in range(1, spec.archived + 1))}
        if unrecorded:
            feeds = plan(posts, site, options, posts.until, old.slugs, keys=changed | unrecorded, known=known)
    report.incremental = changed is not None
    report.rejected = posts.errors
    report.posts = feeds.counts.get("site:", 0)
    report.categories = [spec.name for spec in feeds.specs if spec.kind == "category"]
    report.tags = [spec.name for spec in feeds.specs if spec.kind == "tag"]
    manifest = Manifest(options=options.fingerprint(), slugs=feeds.slugs, plan_key=key)
    if isinstance(posts, Collection):
        manifest.cache_id, manifest.generation, manifest.due = posts.cache.id, posts.generation, posts.next_due()
    work: list[Work] = []  #: archive pages to render, with their posts' paths newest first
    for spec in feeds.specs:
        files = [spec.path(fmt) for fmt in options.formats] + ([page_path(spec)] if options.formats and options.pages else [])
        if spec.key in feeds.entries:
            manifest.feeds[spec.key] = FeedRecord(signature(spec, feeds.entries[spec.key], options), files)
            for number, members in enumerate(feeds.pages.get(spec.key, ()), 1):
                page = spec.at(number)
                manifest.feeds[page.record_key] = FeedRecord(page_signature(page, members, options),
                                                             [page.path(fmt) for fmt in options.formats])
                if full or _stale(old, manifest, page.record_key, present):
                    work.append((page, tuple(path for path, _ in reversed(members))))
        else:
            manifest.feeds[spec.key] = FeedRecord(old.feeds[spec.key].signature, files)
            # Not planned: nothing in the feed changed, nor did its pages.
            for number in range(1, spec.archived + 1):
                record = old.feeds[spec.at(number).record_key]
                manifest.feeds[spec.at(number).record_key] = record
    manifest.outline_signature, manifest.listings_signature = listings_signatures(feeds, options)
    work[:0] = [(spec, feeds.entries[spec.key]) for spec in feeds.specs
                if spec.key in feeds.entries and (full or _stale(old, manifest, spec.key, present))]
    return _Prepared(feeds, work, manifest, old, report)


def _stale(old: Manifest, new: Manifest, key: str, present: set[str]) -> bool:
    record = old.feeds.get(key)
    return record is None or key not in present or record.signature != new.feeds[key].signature \
        or record.files != new.feeds[key].files


def _write(prepared: _Prepared, out: OutputDir, job: _Job, posts: Posts, *, full: bool, use_pool: bool) -> None:
    """Render and write the feeds to render and the listings that changed, remove what is gone,
    and save the manifest; the intent first, so that a build killed on the way is repaired by
    the next."""
    feeds, work, manifest, old, report = prepared.feeds, prepared.work, prepared.manifest, prepared.old, prepared.report
    if old.interrupted:
        # The last build did not finish (see the writer's module doc): every file it may have
        # left is known, and its temporary files go.
        old = _recovered(old, out)
        out.sweep_temporaries(old.all_files())
    parts = []
    for part, now, before in ((render.OUTLINE, manifest.outline_signature, old.outline_signature),
                              (render.INDEX_PAGE, manifest.listings_signature, old.listings_signature)):
        kept = [rel for rel in old.listings if (rel == render.INDEX) == (part == render.INDEX_PAGE)]
        if not full and now == before and kept and all(map(out.exists, kept)):
            manifest.listings.extend(kept)
            report.files_unchanged += len(kept)
        else:
            parts.append(part)
    gone = old.all_files() - manifest.all_files() - set(render.LISTING_FILES)
    if work or parts or gone:
        record_intent(out, [*manifest.all_files(), *render.LISTING_FILES])
    report.feeds = len(feeds.specs)
    rendered = {spec.record_key for spec, _ in work}
    report.files_unchanged += sum(len(record.files) for key, record in manifest.feeds.items() if key not in rendered)
    written = set()  # feeds with a file written, their archive pages' included
    for result in _render_all(work, job, posts, use_pool):
        report.files_written += len(result.written)
        report.files_unchanged += len(result.unchanged)
        report.written.extend(result.written)
        if result.written:
            written.add(result.key)
    report.feeds_written = len(written)
    report.feeds_unchanged = len(feeds.specs) - len(written)
    if parts:
        for rel, data in render.render_listings(feeds.specs, job.options, feeds.counts, feeds.newest, parts).items():
            manifest.listings.append(rel)
            if out.write(rel, data):
                report.files_written += 1
                report.written.append(rel)
            else:
                report.files_unchanged += 1
    removed = sorted(old.all_files() - manifest.all_files())
    for rel in removed:
        if out.remove(rel):
            report.files_removed += 1
    # Before the manifest: a build killed after this still left the record a 410 needs.
    record_gone(out, removed, manifest.all_files())
    report.feeds_removed = sum(1 for key in old.feeds if key not in manifest.feeds and PAGE_SEPARATOR not in key)
    save_manifest(out, manifest, written=bool(report.files_written or report.files_removed))
    report.written.sort()


def _recovered(old: Manifest, out: OutputDir) -> Manifest:
    """The intent an interrupted build left, or, for a manifest that could not be read at all,
    every feed and listing file found where a build writes them: all are candidates for removal,
    none is trusted."""
    if not old.unreadable:
        return old
    names = set(FILE_NAMES.values())
    found: dict[str, FeedRecord] = {"site:": FeedRecord("", [name for name in sorted(names | {SITE_PAGE})
                                                             if out.exists(name)])}
    folders = [f"{kind}/{folder}" for kind in FEED_FOLDERS for folder in out.folders(kind)]
    feed_folders = set(folders)  # these hold a page besides the feed's files; archive folders do not
    # Archive pages: <feed folder>/archive/<N>/, the site's under the output folder itself.
    folders += [f"{prefix}{ARCHIVE_FOLDER}/{page}" for prefix in ("", *(f"{folder}/" for folder in folders))
                for page in out.folders(f"{prefix}{ARCHIVE_FOLDER}") if page.isdigit()]
    for folder in folders:
        wanted = names | {FOLDER_PAGE} if folder in feed_folders else names
        files = [f"{folder}/{name}" for name in sorted(wanted) if out.exists(f"{folder}/{name}")]
        found[f"found:{folder}"] = FeedRecord("", files)
    found.update(old.feeds)  # an intent's files
    listings = [name for name in render.LISTING_FILES if out.exists(name)]
    return Manifest(old.options, old.slugs, found, listings, interrupted=True)
