"""The feed build: collect the posts, plan the feeds, render the changed ones, write, clean up.

Incremental: each feed's signature is a hash of everything it shows (its header, its entries'
ids, metadata and content hashes, the options). A feed whose signature matches the manifest of
the last build, and whose files are all there, is not rendered at all; so after one new post
only the feeds that contain it are rendered. Many feeds to render (a cold build) are shared
with a forked child (spawned workers next to the daemon's threads).

After only new posts, a build does not read the site at all: it updates the plan it kept (see
"rebuild after new posts" below) with what the collector's cache says was added.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import gc
import hashlib
import logging
import marshal
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo

from .. import forks
from ..config import Config
from ..models import Collection, ContentSource, FileError, Post, Site, sort_key
from .writer import FeedRecord, Manifest, OutputDir, load_manifest, record_intent, save_manifest

if TYPE_CHECKING:
    from ..site.cache import Changes
    from . import render as feeds
    from .render import EntryData, FeedOptions, FeedPlan, FeedSpec

# feeds (feedgen, lxml, jinja2) and the collector are imported where used: a quick rebuild
# starts its walk of the site in a child process before it needs them (see rebuild_added).

log = logging.getLogger(__name__)

#: Bump when the rendered output changes for the same input, so old manifests do not match.
RENDER_VERSION = "2"
#: Feeds to render from which spawned worker processes pay off (starting one costs ~0.3 s).
PARALLEL_FROM = 200
#: ... and from which a forked child does in a quick rebuild (a few milliseconds to start
#: there): the four feeds a new post usually reaches take two processes half the time of one.
#: A process holding a whole site's posts forks slower, and waits for PARALLEL_FROM.
FORK_FROM = 2


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
    #: True when the build read only the posts added since the last one (see "rebuild after
    #: new posts" below); False when it read the whole site.
    quick: bool = False
    written: list[str] = field(default_factory=list)  #: relative paths written, sorted
    added: list[Post] = field(default_factory=list)  #: the posts a quick build put in the feeds

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


def signatures(plan: FeedPlan, options: FeedOptions, known: Mapping[str, str] | None = None) -> dict[str, str]:
    """spec key -> signature of everything the feed would show; ``known`` gives those of
    feeds known to show the same as when they were signed."""
    base = f"{RENDER_VERSION}\x1d{options.fingerprint()}\x1d".encode()
    cache: dict[str, bytes] = {}
    out: dict[str, str] = {}
    for spec in plan.specs:
        if known is not None and spec.key in known:
            out[spec.key] = known[spec.key]
            continue
        digest = hashlib.blake2b(base, digest_size=16)
        digest.update(spec.header().encode("utf-8", "surrogatepass"))
        for post in plan.entries[spec.key]:
            fingerprint = cache.get(post.path)
            if fingerprint is None:
                fingerprint = cache[post.path] = post_fingerprint(post)
            digest.update(fingerprint)
        out[spec.key] = digest.hexdigest()
    return out


def listings_signatures(plan: FeedPlan, options: FeedOptions, newest: dict[str, datetime | None]) -> tuple[str, str]:
    """Of everything the OPML file, the head snippets and the stylesheet show (the feeds, not
    their counts and dates), and of everything the index page shows."""
    base = f"{RENDER_VERSION}\x1d{options.fingerprint()}\x1d"
    headers = "\x1d".join(spec.header() for spec in plan.specs)
    shown = "\x1d".join(f"{plan.counts.get(spec.key, 0)}\x1f{moment.isoformat() if moment else ''}"
                        for spec, moment in zip(plan.specs, map(newest.get, (spec.key for spec in plan.specs)), strict=True))
    outline = hashlib.blake2b(f"{base}outline\x1d{headers}".encode("utf-8", "surrogatepass"), digest_size=16)
    index = hashlib.blake2b(f"{base}index\x1d{headers}\x1e{shown}".encode("utf-8", "surrogatepass"), digest_size=16)
    return outline.hexdigest(), index.hexdigest()


# --------------------------------------------------------------------------- rendering


@dataclass(slots=True)
class _Job:
    """What a renderer (this process or a worker) needs."""

    options: FeedOptions
    out_root: str
    content: ContentSource
    #: Set when a worker died: its feeds were rendered again here, but the temporary file it
    #: was writing, if any, is still in that feed's folder.
    worker_failed: bool = False


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
            from . import render as feedmod

            data = self.memo[post.path] = feedmod.entry_data(post, self.job.options, self.job.content)
        return data

    def run(self, spec: FeedSpec, posts: Sequence[Post]) -> _Result:
        from . import render as feedmod

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
    from ..site.cache import CachedContent

    if isinstance(content, CachedContent):
        return content.site, str(content.bodies.path) if content.bodies is not None else None
    return None


def _open_content(site: Site, bodies: str | None) -> ContentSource:
    from ..site.cache import Bodies, CachedContent

    return CachedContent(site, Bodies(Path(bodies)) if bodies is not None else None)


def _batches(work: Sequence[tuple[FeedSpec, list[Post]]], count: int) -> list[list[tuple[FeedSpec, list[Post]]]]:
    # Largest feeds first, dealt round-robin into a few batches per worker, so the workers
    # finish together.
    ordered = sorted(work, key=lambda item: -len(item[1]))
    n = max(1, min(len(ordered), count * 8))
    return [ordered[i::n] for i in range(n)]


def render_all(work: Sequence[tuple[FeedSpec, list[Post]]], job: _Job, workers: int | None = None,
               fork_from: int | None = None, first: Callable[[], None] | None = None) -> Iterator[_Result]:
    """Render and write every feed in ``work``, in worker processes when there are many
    (forked ones from ``fork_from`` feeds, by default :data:`PARALLEL_FROM`). ``first``, if
    given, is called in this process before it renders any feed: forked workers start
    meanwhile."""
    count = workers if workers is not None else (os.cpu_count() or 1)
    forking = forks.can_fork()
    enough = len(work) >= (fork_from if forking and fork_from is not None else PARALLEL_FROM)
    portable = _portable_content(job.content) if count > 1 and enough else None
    if portable is not None and forking:
        yield from _render_forked(work, job, min(count, len(work)), portable, first)
        return
    if first is not None:
        first()
    if portable is None:
        renderer = _Renderer(job)
        for spec, posts in work:
            yield renderer.run(spec, posts)
        return
    # Spawned, not forked, when other threads run (the daemon's scheduler and web server):
    # forking while they hold locks can deadlock the child.
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker,
                                                initargs=(job.options, job.out_root, *portable)) as pool:
        for results in pool.map(_work, _batches(work, count)):
            yield from results


def _render_forked(work: Sequence[tuple[FeedSpec, list[Post]]], job: _Job, count: int,
                   portable: tuple[Site, str | None], first: Callable[[], None] | None) -> Iterator[_Result]:
    """:func:`render_all` over this process and ``count - 1`` forked children, each taking the
    next feeds, largest first, when it is free (:func:`~finews_feeds.forks.share`). A child
    has the posts already (no pickling them over) and writes its files itself; it sends back
    only what it wrote."""
    ordered = sorted(work, key=lambda item: -len(item[1]))
    size = forks.Tickets.per_ticket(len(ordered))

    def there() -> Callable[[tuple[FeedSpec, list[Post]]], _Result]:
        # Its own connection to the bodies file: SQLite's must not cross a fork.
        renderer = _Renderer(_Job(job.options, job.out_root, _open_content(*portable)))
        return lambda item: renderer.run(*item)

    renderer = _Renderer(job)
    yield from forks.share(
        [ordered[i : i + size] for i in range(0, len(ordered), size)], count - 1, lambda item: renderer.run(*item), there,
        lambda done: marshal.dumps([(r.key, r.written, r.unchanged) for r in done]),
        lambda data: [_Result(key, written, unchanged) for key, written, unchanged in marshal.loads(data)],
        functools.partial(_worker_failed, job), first)


def _worker_failed(job: _Job) -> None:
    log.warning("rendering feeds in a child process failed; rendering what it took here")
    job.worker_failed = True


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
    from . import render as feedmod

    options = feedmod.FeedOptions.from_config(collection.site, config.feeds)
    old = load_manifest(out)
    plan = feedmod.plan_feeds(collection.posts, collection.site, options, old.slugs)
    _complete(plan, collection)
    listing = feedmod.ListingCache()
    manifest = _write(plan, options, collection.content, out, old, report, full=full, workers=workers,
                      listing=listing)
    if collection.cursor is not None:
        folders = FeedFolders(out, {}).now(plan, ())
        state = FeedState.of(plan, plan_key(collection.site, options), collection.cursor, manifest, collection.due,
                             listing.dump(), folders)
        save_state(out, state)
    report.seconds = time.perf_counter() - started
    return report


def _write(plan: FeedPlan, options: FeedOptions, content: ContentSource, out: OutputDir, old: Manifest,
           report: BuildReport, *, full: bool, workers: int | None, same: Iterable[str] = (),
           present: Callable[[str], bool] | None = None, listing: feeds.ListingCache | None = None,
           fork_from: int | None = None) -> Manifest:
    """Render and write what changed in ``plan`` since the build of ``old``, remove what is
    gone, and save the new manifest (returned). ``same``: keys of feeds known to show what they
    showed in that build (their signatures are taken from ``old``); ``present``: tells whether
    a file of ``old`` is still there, if the caller found out already (else it is stat'ed);
    ``listing``: what the last index page was made of (see ``feeds.ListingCache``), updated;
    ``fork_from``: as for :func:`render_all`."""
    from . import render as feedmod

    if old.interrupted:
        # The last build did not finish (see the writer's module doc): none of its signatures
        # is trusted, every file it may have left is known, and its temporary files go.
        old = _recovered(old, out)
        out.sweep_temporaries(old.all_files())
    exists = present or out.exists
    sigs = signatures(plan, options, {key: old.feeds[key].signature for key in same if key in old.feeds})
    manifest = Manifest(options=options.fingerprint(), slugs=plan.slugs)
    work: list[tuple[FeedSpec, list[Post]]] = []
    for spec in plan.specs:
        files = [spec.path(fmt) for fmt in options.formats]
        record = old.feeds.get(spec.key)
        manifest.feeds[spec.key] = FeedRecord(sigs[spec.key], files)
        if (not full and record is not None and record.signature == sigs[spec.key] and record.files == files
                and all(map(exists, files))):
            report.feeds_unchanged += 1
            report.files_unchanged += len(files)
        else:
            work.append((spec, plan.entries[spec.key]))

    newest = {spec.key: (plan.entries[spec.key][0].date.astimezone(options.timezone)
                         if plan.entries[spec.key] else None) for spec in plan.specs}
    manifest.outline_signature, manifest.listings_signature = listings_signatures(plan, options, newest)
    # Listings whose signature is the last build's would come out byte for byte the same: the
    # outline (OPML, head snippets) after any new post that starts no feed, the index page
    # when no feed's count or newest date moved either.
    parts = []
    for part, signature, before in ((feedmod.OUTLINE, manifest.outline_signature, old.outline_signature),
                                    (feedmod.INDEX_PAGE, manifest.listings_signature, old.listings_signature)):
        kept = [rel for rel in old.listings if (rel == feedmod.INDEX) == (part == feedmod.INDEX_PAGE)]
        if not full and signature == before and kept and all(map(exists, kept)):
            manifest.listings.extend(kept)
            report.files_unchanged += len(kept)
        else:
            parts.append(part)
    listings: dict[str, bytes] = {}
    intent = work or parts or not old.all_files() <= manifest.all_files() | set(feedmod.LISTING_FILES)
    if intent:
        record_intent(out, [*manifest.all_files(), *feedmod.LISTING_FILES])

    def render_listings() -> None:
        # While forked workers start on the feeds (render_all calls this first).
        if parts:
            listings.update(feedmod.render_listings(plan.specs, options, plan.counts, newest, parts, listing))

    job = _Job(options, str(out.root), content)
    for result in render_all(work, job, workers, fork_from, first=render_listings):
        report.files_written += len(result.written)
        report.files_unchanged += len(result.unchanged)
        report.written.extend(result.written)
        if result.written:
            report.feeds_written += 1
        else:
            report.feeds_unchanged += 1
    if job.worker_failed:
        # A dead worker's feeds were written here, so their folders are among those written.
        out.sweep_temporaries(report.written)
    for rel, data in listings.items():
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
    save_manifest(out, manifest, written=bool(report.files_written or report.files_removed))

    report.feeds = len(plan.specs)
    report.written.sort()
    return manifest


def _recovered(old: Manifest, out: OutputDir) -> Manifest:
    """The intent an interrupted build left, or, for a manifest that could not be read at all,
    every feed and listing file found where a build writes them: all are candidates for removal,
    none is trusted."""
    from . import render as feedmod

    if not old.unreadable:
        return old
    names = set(feedmod.FILE_NAMES.values())
    found: dict[str, FeedRecord] = {"site:": FeedRecord("", [name for name in sorted(names) if out.exists(name)])}
    for kind in feedmod.FEED_FOLDERS:
        with contextlib.suppress(OSError):
            for folder in sorted(os.scandir(out.root / kind), key=lambda e: e.name):
                if folder.is_dir(follow_symlinks=False):
                    files = [f"{kind}/{folder.name}/{name}" for name in sorted(names) if out.exists(f"{kind}/{folder.name}/{name}")]
                    found[f"found:{kind}/{folder.name}"] = FeedRecord("", files)
    listings = [name for name in feedmod.LISTING_FILES if out.exists(name)]
    found.update((key, record) for key, record in old.feeds.items())  # an intent's files
    return Manifest(old.options, old.slugs, found, listings, interrupted=True)


class FeedFolders:
    """Whether the files of the last build are all there, told from the mtimes of the feeds'
    folders: a file created, removed or renamed in a folder moves its mtime, so a folder whose
    mtime is the one the last build saw after writing holds what that build left (one stat for
    a feed's three files; otherwise they are stat'ed one by one)."""

    def __init__(self, out: OutputDir, recorded: Mapping[str, int]) -> None:
        self.out = out
        self.recorded = recorded
        self.seen: dict[str, int | None] = {}

    def _mtime(self, folder: str) -> int | None:
        try:
            return os.stat(os.path.join(self.out.root, folder)).st_mtime_ns
        except OSError:
            return None

    def __call__(self, rel: str) -> bool:
        folder = rel.rpartition("/")[0]
        if folder and folder in self.recorded:
            if folder not in self.seen:
                self.seen[folder] = self._mtime(folder)
            if self.seen[folder] == self.recorded[folder]:
                return True
        return self.out.exists(rel)

    def now(self, plan: FeedPlan, written: Iterable[str]) -> dict[str, int]:
        """The mtimes to record after a build of ``plan`` that wrote ``written``."""
        changed = {rel.rpartition("/")[0] for rel in written}
        folders: dict[str, int] = {}
        for spec in plan.specs:
            folder = spec.folder
            known = self.seen.get(folder)
            if known is not None and folder not in changed and known == self.recorded.get(folder):
                folders[folder] = known
            elif folder and (mtime := self._mtime(folder)) is not None:
                folders[folder] = mtime
        return folders


# --------------------------------------------------------------------------- rebuild after new posts
#
# A build keeps its plan (which posts each feed shows, how many each category and tag has, and
# the shown posts themselves) next to the manifest, with the collector cache's cursor. The next
# build asks the cache what changed since that cursor; when it is only new posts, the plan is
# updated with them and no other post is read: on a site of 100,000 posts this is most of a
# rebuild. Anything else (an edited or deleted post, a post coming due, other settings) reads
# the whole site as before. Both ways end in :func:`feeds.assemble_plan` and :func:`_write`.

STATE = ".finews-state.marshal"
#: The posts the feeds show, apart from the rest of the state (see :class:`StoredPosts`).
STATE_POSTS = ".finews-state-posts.marshal"
STATE_VERSION = 4
#: Posts no feed shows any more that the posts file may hold beyond as many as the feeds show.
STATE_POSTS_SLACK = 1000
#: The share of the files a quick rebuild stats itself, after its imports and reading its state
#: and the cache's file list, while a child started first stats the rest.
QUICK_SHARE = 0.5


def plan_key(site: Site, options: FeedOptions) -> str:
    """Everything besides the posts that a plan depends on."""
    text = repr((RENDER_VERSION, STATE_VERSION, dataclasses.astuple(site), options))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _manifest_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class StoredPosts(NamedTuple):
    """Where the shown posts of a state are: ``STATE_POSTS`` up to ``size`` bytes, a file named
    ``token`` (its first record) holding ``paths``. A new post is appended to it rather than the
    7,000 posts that feeds show written again (a fifth of a rebuild after one post); once it holds
    twice as many posts as the feeds show it is written anew."""

    token: str
    size: int
    paths: frozenset[str]


@dataclass(slots=True)
class FeedState:
    """The plan of the last build, as a build after new posts needs it."""

    key: str  #: :func:`plan_key`
    cursor: tuple[str, int, int]  #: the collector cache's cursor the plan was made at
    manifest: str  #: digest of the manifest written with it (another build since: not valid)
    due: float | None  #: POSIX time the earliest future post left out comes due
    counts: dict[str, int]  #: feed key -> posts in its category or tag (the site's: all)
    entries: dict[str, list[str]]  #: feed key -> paths of the posts it shows, in order
    posts: list[Post]  #: every post some feed shows, rendered (loaded: perhaps some more)
    listing: Any  #: ``feeds.ListingCache.dump()`` of the index page written with it
    folders: dict[str, int]  #: feed folder -> its mtime after the build (see :class:`FeedFolders`)
    stored: StoredPosts | None = None  #: where its posts are (loaded), or were (to be saved)

    @classmethod
    def of(cls, plan: FeedPlan, key: str, cursor: tuple[str, int, int], manifest: Manifest,
           due: datetime | None, listing: Any, folders: dict[str, int],
           stored: StoredPosts | None = None) -> FeedState:
        shown = {post.path: post for posts in plan.entries.values() for post in posts}
        return cls(key, tuple(cursor), _manifest_digest(manifest.to_json()),  # type: ignore[arg-type]
                   due.timestamp() if due is not None else None, dict(plan.counts),
                   {k: [p.path for p in posts] for k, posts in plan.entries.items()}, list(shown.values()), listing,
                   folders, stored)


def save_state(out: OutputDir, state: FeedState) -> None:
    from ..site.cache import pack_record, sealed, to_columns

    stored = state.stored
    new = [post for post in state.posts if stored is None or post.path not in stored.paths]
    if stored is not None and len(stored.paths) + len(new) <= 2 * len(state.posts) + STATE_POSTS_SLACK:
        try:
            with open(out.root / STATE_POSTS, "r+b") as handle:
                handle.truncate(stored.size)  # whatever a build that failed before its state left
                handle.seek(stored.size)
                if new:
                    handle.write(pack_record(to_columns(new), 2))
                size = handle.tell()
            stored = StoredPosts(stored.token, size, stored.paths | {post.path for post in new})
        except OSError:
            stored = None
    else:
        stored = None
    if stored is None:
        posts = pack_record(to_columns(state.posts), 2)
        # Named after what it holds: the same posts give the same file, not written again.
        token = hashlib.blake2b(posts, digest_size=16).hexdigest()
        data = pack_record(token, 2) + posts
        out.write(STATE_POSTS, data)
        stored = StoredPosts(token, len(data), frozenset(post.path for post in state.posts))
    state.stored = stored
    # Version 2: without the references of later versions, which depend on reference counts,
    # the same state gives the same bytes, and an unchanged state file is not written again.
    data = marshal.dumps((STATE_VERSION, state.key, tuple(state.cursor), state.manifest, state.due, state.counts,
                          state.entries, state.listing, state.folders, stored.token, stored.size), 2)
    out.write(STATE, sealed(data))


def load_state(out: OutputDir, zone: ZoneInfo) -> FeedState | None:
    """The state of the last build of ``out``, if it is still the one of its manifest."""
    from ..site.cache import from_columns, read_records, unsealed
    from .writer import MANIFEST

    try:
        raw = (out.root / STATE).read_bytes()
    except OSError:
        return None
    try:
        version, key, cursor, manifest, due, counts, entries, listing, folders, token, size = \
            marshal.loads(unsealed(raw))
        if version != STATE_VERSION or manifest != _manifest_digest((out.root / MANIFEST).read_bytes()):
            return None
        with open(out.root / STATE_POSTS, "rb") as handle:
            data = handle.read(size)
        records = read_records(data) if len(data) == size else []
        if not records or records[0] != token:
            return None
        posts = {post.path: post for columns in records[1:] for post in from_columns(columns, zone)}
        return FeedState(key, tuple(cursor), manifest, due, counts, entries, list(posts.values()), listing,
                         folders, StoredPosts(token, size, frozenset(posts)))
    except OSError:
        return None
    except (ValueError, EOFError, TypeError, OverflowError) as exc:
        log.warning("%s: damaged build state (%s); reading the whole site", out.root, exc)
        return None


def _insert(bucket: list[Post], post: Post, limit: int) -> None:
    """Put ``post`` in its place in ``bucket`` (the collector's order), cut at ``limit``."""
    if limit <= 0:
        return
    bisect.insort(bucket, post, key=sort_key)
    del bucket[limit:]


def _build_added(state: FeedState, changes: Changes, site: Site, config: Config, out: OutputDir, now: datetime,
                 workers: int | None) -> BuildReport | None:
    """:func:`_build` for a site that only gained posts since ``state``; None when that is
    not the case (the caller then reads the whole site)."""
    from . import render as feedmod

    started = time.perf_counter()
    options = feedmod.FeedOptions.from_config(site, config.feeds)
    limit = now.timestamp()
    if (changes.changed_posts or state.key != plan_key(site, options)
            or (not site.future and state.due is not None and state.due <= limit)):
        return None
    by_path = {post.path: post for post in state.posts}
    try:
        buckets = {key: [by_path[path] for path in paths] for key, paths in state.entries.items()}
    except KeyError:
        return None
    due = state.due
    counts = Counter(state.counts)
    touched: set[str] = set()
    shown: list[Post] = []
    for post in changes.added:
        moment = post.date.timestamp()
        if not site.future and moment > limit:
            due = moment if due is None else min(due, moment)
            continue
        shown.append(post)
        keys = [("site:", options.limit)]
        keys += [(f"category:{name}", options.category_limit) for name in post.categories]
        if options.tags:
            keys += [(f"tag:{name}", options.tag_limit) for name in post.tags]
        for key, most in keys:
            counts[key] += 1
            touched.add(key)
            _insert(buckets.setdefault(key, []), post, most)

    def named(kind: str) -> dict[str, list[Post]]:
        prefix = f"{kind}:"
        return {key[len(prefix):]: posts for key, posts in buckets.items() if key.startswith(prefix)}

    def counted(kind: str) -> dict[str, int]:
        prefix = f"{kind}:"
        return {key[len(prefix):]: n for key, n in counts.items() if key.startswith(prefix)}

    old = load_manifest(out)
    if old.interrupted:
        return None
    plan = feedmod.assemble_plan(site, options, buckets.get("site:", []), counts["site:"], named("category"),
                                 named("tag"), counted("category"), counted("tag"), old.slugs)
    report = BuildReport(output=str(out.root), posts=counts["site:"], rejected=list(changes.errors), quick=True,
                         added=shown)
    # A feed no new post went to shows what it showed: its slug stays (assign_slugs keeps
    # earlier ones), its settings are the state's (plan_key), its posts are the same.
    same = [spec.key for spec in plan.specs if spec.key not in touched]
    listing = feedmod.ListingCache.load(state.listing)
    present = FeedFolders(out, state.folders)
    manifest = _write(plan, options, changes.content, out, old, report, full=False, workers=workers, same=same,
                      present=present, listing=listing, fork_from=FORK_FROM)
    # Without new posts the kept plan is still this one, and its cursor still a point of the
    # cache's history (what came after it changed no post): it stays as it is.
    if changes.added or _manifest_digest(manifest.to_json()) != state.manifest:
        save_state(out, FeedState.of(plan, state.key, changes.cursor, manifest,
                                     datetime.fromtimestamp(due, UTC) if due is not None else None, listing.dump(),
                                     present.now(plan, report.written), state.stored))
    report.seconds = time.perf_counter() - started
    return report


def rebuild_added(config: Config, now: datetime, workers: int | None = None,
                  touched: Iterable[str] | None = None) -> BuildReport | None:
    """The quick rebuild: the build of a site that only gained posts since the last build
    (see the module doc), without reading the others; None when that is not the case or
    cannot be told (no collector cache, no build state, anything else changed): the caller
    reads the whole site then (:func:`run_build` does both). ``touched``: every path that may
    have changed since the last build, when a file watcher knows them: those are stat'ed
    instead of every file of the site."""
    from ..site.jekyll import resolve_site
    from ..site.walk import scan_elsewhere, scan_text

    if not config.site.cache_dir:
        return None
    site = resolve_site(config)
    out = OutputDir(output_folder(config))
    with out.lock():
        if not (out.root / STATE).exists():
            return None
        started = time.perf_counter()
        # The stat of every file, most of this build, starts in a child now, while this
        # process imports the rest, reads the state and the cache's file list, and then
        # stats its own share.
        # With the watcher's paths, the walk is only what the cache falls back on.
        scanning = scan_elsewhere(site, here=QUICK_SHARE) if touched is None else functools.partial(scan_text, site)
        from ..site.cache import Cursor, collect_changes
        from . import render  # noqa: F401 - imported while the child lists the site, not after it

        state = load_state(out, site.timezone)
        if state is None:
            if touched is None:
                scanning()  # the child's result, or it is left behind
            return None
        changes = collect_changes(site, Path(config.site.cache_dir), Cursor(*state.cursor), workers, scanning, touched)
        if changes is None:
            return None
        collected = time.perf_counter() - started
        report = _build_added(state, changes, site, config, out, now, workers)
        if report is not None:
            report.collect_seconds = collected
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


#: The collector's generation-0 threshold during a build (Python's default is 700).
GC_THRESHOLD = 20_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    # A build allocates a few objects per post, nearly all of which live until it ends: at the
    # default threshold the collector runs every 700 of them and finds nothing to free (a
    # twentieth of a cold build, in this process and in every forked child).
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], GC_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_build(config: Config, *, full: bool = False, now: datetime | None = None, workers: int | None = None) -> BuildReport:
    """Build the feeds of the site of ``config``: the quick rebuild when only posts were added
    since the last build, else collect the whole site (the `build` command)."""
    with fewer_collections():
        return _run_build(config, full=full, now=now, workers=workers)


def _run_build(config: Config, *, full: bool, now: datetime | None, workers: int | None) -> BuildReport:
    started = time.perf_counter()
    moment = now if now is not None else datetime.now(UTC)
    if not full:
        quick = rebuild_added(config, moment, workers)
        if quick is not None:
            quick.seconds = time.perf_counter() - started
            log.info("feeds built: %s", quick.summary())
            return quick
    # Imported here, not above: the quick rebuild starts its child before this import.
    from ..site.collector import collect_site

    collection = collect_site(config, moment)
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
