"""The feed build: collect the posts, plan the feeds, render the changed ones, write, clean up.

Incremental: each feed's signature is a hash of everything it shows (its header, its entries'
ids, metadata and content hashes, the options). A feed whose signature matches the manifest of
the last build, and whose files are all there, is not rendered at all; so after one new post
only the feeds that contain it are rendered. Many feeds to render (a cold build) are spread
over worker processes.
"""

from __future__ import annotations

import concurrent.futures
import gc
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import feeds as feedmod
from .config import Config
from .feeds import EntryData, FeedOptions, FeedPlan, FeedSpec
from .models import Collection, ContentSource, FileError, Post, Site
from .writer import FeedRecord, Manifest, OutputDir, load_manifest, save_manifest

log = logging.getLogger(__name__)

#: Bump when the rendered output changes for the same input, so old manifests do not match.
RENDER_VERSION = "2"
#: Feeds to render from which worker processes pay off (starting one costs ~0.3 s).
PARALLEL_FROM = 200


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
    written: list[str] = field(default_factory=list)  #: relative paths written, sorted

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


# --------------------------------------------------------------------------- signatures


def post_fingerprint(post: Post) -> bytes:
    """Every field of a post that a feed shows, with its content hash."""
    return "\x1f".join((
        post.id, post.url, post.content_hash, post.title, post.slug, post.date.isoformat(),
        post.updated.isoformat() if post.updated else "", "\x1e".join(post.categories), "\x1e".join(post.tags),
        post.summary, post.image or "", post.author or "", post.source, post.excerpt or "", post.description or "",
    )).encode("utf-8", "surrogatepass") + b"\x1d"


def signatures(plan: FeedPlan, options: FeedOptions) -> dict[str, str]:
    """spec key -> signature of everything the feed would show."""
    base = f"{RENDER_VERSION}\x1d{options.fingerprint()}\x1d".encode()
    cache: dict[str, bytes] = {}
    out: dict[str, str] = {}
    for spec in plan.specs:
        digest = hashlib.blake2b(base, digest_size=16)
        digest.update(spec.header().encode("utf-8", "surrogatepass"))
        for post in plan.entries[spec.key]:
            fingerprint = cache.get(post.path)
            if fingerprint is None:
                fingerprint = cache[post.path] = post_fingerprint(post)
            digest.update(fingerprint)
        out[spec.key] = digest.hexdigest()
    return out


def listings_signature(plan: FeedPlan, options: FeedOptions, newest: dict[str, datetime | None]) -> str:
    """Everything the OPML, index page and head snippets show."""
    digest = hashlib.blake2b(f"{RENDER_VERSION}\x1d{options.fingerprint()}\x1d".encode(), digest_size=16)
    for spec in plan.specs:
        moment = newest.get(spec.key)
        digest.update(f"{spec.header()}\x1f{plan.counts.get(spec.key, 0)}\x1f{moment.isoformat() if moment else ''}\x1d"
                      .encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- rendering


@dataclass(slots=True)
class _Job:
    """What a renderer (this process or a worker) needs."""

    options: FeedOptions
    out_root: str
    content: ContentSource


@dataclass(slots=True)
class _Result:
    key: str
    written: list[str]
    unchanged: list[str]


class _Renderer:
    """Renders and writes feeds; remembers each post's entry data, as a post is in several feeds."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.out = OutputDir(job.out_root)
        self.memo: dict[str, EntryData] = {}

    def entry(self, post: Post) -> EntryData:
        data = self.memo.get(post.path)
        if data is None:
            data = self.memo[post.path] = feedmod.entry_data(post, self.job.options, self.job.content)
        return data

    def run(self, spec: FeedSpec, posts: Sequence[Post]) -> _Result:
        entries = [self.entry(post) for post in posts]
        result = _Result(spec.key, [], [])
        for rel, data in feedmod.render_feed(spec, self.job.options, entries).items():
            (result.written if self.out.write(rel, data) else result.unchanged).append(rel)
        return result


_WORKER: _Renderer | None = None


def _init_worker(options: FeedOptions, out_root: str, site: Site, bodies: str | None) -> None:
    global _WORKER
    _WORKER = _Renderer(_Job(options, out_root, _open_content(site, bodies)))


def _work(batch: list[tuple[FeedSpec, list[Post]]]) -> list[_Result]:
    assert _WORKER is not None
    return [_WORKER.run(spec, posts) for spec, posts in batch]


def _portable_content(content: ContentSource) -> tuple[Site, str | None] | None:
    """How a spawned worker opens the same content source, or None when it cannot. The
    collector's cached source holds a SQLite connection per thread, which must not cross
    processes: the worker opens its own on the same file."""
    from .cache import CachedContent

    if isinstance(content, CachedContent):
        return content.site, str(content.bodies.path) if content.bodies is not None else None
    return None


def _open_content(site: Site, bodies: str | None) -> ContentSource:
    from .cache import Bodies, CachedContent

    return CachedContent(site, Bodies(Path(bodies)) if bodies is not None else None)


def _batches(work: Sequence[tuple[FeedSpec, list[Post]]], count: int) -> list[list[tuple[FeedSpec, list[Post]]]]:
    # Largest feeds first, dealt round-robin into a few batches per worker, so the workers
    # finish together.
    ordered = sorted(work, key=lambda item: -len(item[1]))
    n = max(1, min(len(ordered), count * 8))
    return [ordered[i::n] for i in range(n)]


def render_all(work: Sequence[tuple[FeedSpec, list[Post]]], job: _Job, workers: int | None = None) -> Iterator[_Result]:
    """Render and write every feed in ``work``, in worker processes when there are many."""
    count = workers if workers is not None else (os.cpu_count() or 1)
    portable = _portable_content(job.content) if count > 1 and len(work) >= PARALLEL_FROM else None
    if portable is None:
        renderer = _Renderer(job)
        for spec, posts in work:
            yield renderer.run(spec, posts)
        return
    # fork when this is the only thread (the CLI): spawned workers import everything again
    # (0.3 s each). Not in the daemon: forking while its scheduler and web threads hold locks
    # can deadlock the child.
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
    with concurrent.futures.ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker,
                                                initargs=(job.options, job.out_root, *portable)) as pool:
        for results in pool.map(_work, _batches(work, count)):
            yield from results


# --------------------------------------------------------------------------- the build


def output_folder(config: Config) -> Path:
    return Path(config.feeds.output)


def build_feeds(collection: Collection, config: Config, *, full: bool = False, workers: int | None = None) -> BuildReport:
    """Write the feeds of ``collection`` into ``config.feeds.output``; see the module doc.
    Builds of the same output folder run one after the other."""
    out = OutputDir(output_folder(config))
    with out.lock():
        return _build(collection, config, out, full=full, workers=workers)


def _build(collection: Collection, config: Config, out: OutputDir, *, full: bool, workers: int | None) -> BuildReport:
    started = time.perf_counter()
    report = BuildReport(output=str(out.root), posts=len(collection.posts), rejected=list(collection.errors))
    options = FeedOptions.from_config(collection.site, config.feeds)
    old = load_manifest(out)
    plan = feedmod.plan_feeds(collection.posts, collection.site, options, old.slugs)
    _complete(plan, collection)
    sigs = signatures(plan, options)

    manifest = Manifest(options=options.fingerprint(), slugs=plan.slugs)
    work: list[tuple[FeedSpec, list[Post]]] = []
    for spec in plan.specs:
        files = [spec.path(fmt) for fmt in options.formats]
        record = old.feeds.get(spec.key)
        manifest.feeds[spec.key] = FeedRecord(sigs[spec.key], files)
        if (not full and record is not None and record.signature == sigs[spec.key] and record.files == files
                and all(out.exists(f) for f in files)):
            report.feeds_unchanged += 1
            report.files_unchanged += len(files)
        else:
            work.append((spec, plan.entries[spec.key]))

    job = _Job(options, str(out.root), collection.content)
    for result in render_all(work, job, workers):
        report.files_written += len(result.written)
        report.files_unchanged += len(result.unchanged)
        report.written.extend(result.written)
        if result.written:
            report.feeds_written += 1
        else:
            report.feeds_unchanged += 1

    newest = {spec.key: (plan.entries[spec.key][0].date.astimezone(options.timezone)
                         if plan.entries[spec.key] else None) for spec in plan.specs}
    manifest.listings_signature = listings_signature(plan, options, newest)
    if (not full and manifest.listings_signature == old.listings_signature and old.listings
            and all(out.exists(f) for f in old.listings)):
        # Same feeds, counts and dates: the listings would come out byte for byte the same.
        manifest.listings = list(old.listings)
        report.files_unchanged += len(old.listings)
    else:
        for rel, data in feedmod.render_listings(plan.specs, options, plan.counts, newest).items():
            manifest.listings.append(rel)
            if out.write(rel, data):
                report.files_written += 1
                report.written.append(rel)
            else:
                report.files_unchanged += 1

    current = manifest.all_files()
    for rel in sorted(old.all_files() - current):
        if out.remove(rel):
            report.files_removed += 1
    report.feeds_removed = sum(1 for key in old.feeds if key not in manifest.feeds)
    save_manifest(out, manifest)

    report.feeds = len(plan.specs)
    report.written.sort()
    report.seconds = time.perf_counter() - started
    return report


def _complete(plan: FeedPlan, collection: Collection) -> None:
    """Render the bodies of the posts the feeds show, if the collector left them for later."""
    pending = {post.path: post for posts in plan.entries.values() for post in posts if not post.rendered}
    if not pending:
        return
    done = {post.path: post for post in collection.complete(list(pending.values()))}
    for key, posts in plan.entries.items():
        plan.entries[key] = [done.get(post.path, post) for post in posts]


def run_build(config: Config, *, full: bool = False, now: datetime | None = None, workers: int | None = None) -> BuildReport:
    """Collect the site of ``config`` and build its feeds (the `build` command and the daemon)."""
    from .collector import collect_site

    started = time.perf_counter()
    collection = collect_site(config, now)
    collected = time.perf_counter()
    # The 100,000 posts just loaded are not garbage: kept out of the collector's sight during
    # the build, each of its collections would otherwise walk them (a tenth of a rebuild).
    gc.freeze()
    try:
        report = build_feeds(collection, config, full=full, workers=workers)
    finally:
        gc.unfreeze()
    report.seconds = time.perf_counter() - started
    report.collect_seconds = collected - started
    log.info("feeds built: %s", report.summary())
    return report
