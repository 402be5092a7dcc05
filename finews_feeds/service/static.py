"""The built feeds and digests as the web app serves them: Starlette's ``StaticFiles`` over
``feeds.output`` and what it lacks, and gzip negotiation for every answer.

``StaticFiles`` gives Last-Modified and an ETag from the file's stat, 304 for If-None-Match or
If-Modified-Since without reading the file, Range requests, and paths that cannot leave the
folder (``..`` normalised, and with ``follow_symlink=False`` every path resolved, symlinks
included, and refused unless it stays in the folder). :class:`FeedFiles` adds the rest, each
part where it is made, with the reason.
"""

from __future__ import annotations

import gzip
import mimetypes
import os
import threading
from pathlib import Path, PurePosixPath

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..feeds.gone import GONE, decode, feed_folder
from ..feeds.page import page_for
from ..feeds.plan import FILE_NAMES
from ..feeds.writer import MANIFEST

#: Smallest body worth compressing (as Starlette's GZipMiddleware).
GZIP_MINIMUM = 500

#: A current feed (and the listings): readers poll it and a rebuild changes it within minutes of
#: a new post, so caches keep it five minutes and then must ask again (ETag / Last-Modified make
#: that a 304). GitHub Pages and Netlify use 10 and 0 minutes for every file; a news site's readers
#: want the new post soon, hence the shorter time.
CURRENT_CACHE = "public, max-age=300, must-revalidate"
#: An archive document (RFC 5005 ``<feed folder>/archive/<N>/...``): a full page does not change
#: when posts are added, so caches keep it a week; not ``immutable`` and not a year, because a
#: retracted or back-dated old post rewrites its page and the later ones (docs/feeds.md), and a
#: retraction must leave caches within days. After the week a revalidation is a 304.
ARCHIVE_CACHE = "public, max-age=604800"
#: A feed that is gone (410): readers that see it stop polling; caches may keep the answer a day.
GONE_CACHE = "public, max-age=86400"

# Registered types that Python's mimetypes does not know (it calls rss.xml "application/xml").
MEDIA_TYPES = {
    FILE_NAMES["rss"]: "application/rss+xml; charset=utf-8",
    FILE_NAMES["atom"]: "application/atom+xml; charset=utf-8",
    FILE_NAMES["json"]: "application/feed+json; charset=utf-8",
}
SUFFIX_TYPES = {
    ".rss": "application/rss+xml; charset=utf-8",
    ".atom": "application/atom+xml; charset=utf-8",
    ".opml": "text/x-opml; charset=utf-8",
    # Browsers apply an xml-stylesheet only when it is served as XSL (or XML).
    ".xsl": "text/xsl; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


def media_type(name: str) -> str:
    """The Content-Type of a served file, by its name."""
    path = PurePosixPath(name)
    if path.name in MEDIA_TYPES:
        return MEDIA_TYPES[path.name]
    if path.suffix.lower() in SUFFIX_TYPES:
        return SUFFIX_TYPES[path.suffix.lower()]
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (``gzip;q=0`` refuses it)."""
    for item in header.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            quality = params.strip().removeprefix("q=")
            try:
                return not params.strip().startswith("q=") or float(quality) > 0
            except ValueError:
                return False
    return False


#: What a feed reader asks for: when none of these is preferred to text/html, a person is asking.
FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/feed+json", "application/xml", "text/xml",
              "application/json", "application/rdf+xml")


def media_ranges(header: str) -> list[tuple[str, float]]:
    """The media ranges of an Accept header with their q-values (RFC 9110 12.5.1), lower-cased; a
    range with a q-value that is not a number counts as q=0."""
    ranges = []
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if "/" not in name:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        ranges.append((name.lower(), quality))
    return ranges


def quality(ranges: list[tuple[str, float]], media: str) -> float:
    """The q-value ``ranges`` give ``media``: that of its most specific range (``type/sub``, then
    ``type/*``, then ``*/*``; RFC 9110 12.5.1), 0 when none covers it."""
    kind = media.split("/", 1)[0]
    best, found = -1, 0.0
    for name, q in ranges:
        rank = 3 if name == media else 2 if name == f"{kind}/*" else 1 if name == "*/*" else 0
        if rank > best and rank > 0:
            best, found = rank, q
        elif rank == best and rank > 0:
            found = max(found, q)
    return found


def prefers_html(accept: str) -> bool:
    """Whether an Accept header prefers ``text/html`` to every feed type: browsers
    (``text/html,…,application/xml;q=0.9,*/*;q=0.8``) do, feed readers (feed types first, or
    ``*/*`` alone, or nothing) do not; a tie goes to the feed."""
    ranges = media_ranges(accept)
    html = quality(ranges, "text/html")
    return html > 0 and html > max(quality(ranges, media) for media in FEED_TYPES)


def merged_vary(values: list[bytes]) -> bytes:
    """One Vary value naming each field once, in the order first named (``*`` alone wins)."""
    names: dict[str, str] = {}
    for value in values:
        for name in value.decode("latin-1").split(","):
            if name.strip():
                names.setdefault(name.strip().lower(), name.strip())
    if "*" in names:
        return b"*"
    return ", ".join(names.values()).encode("latin-1")


class NegotiatedGZipMiddleware:
    """Starlette's GZipMiddleware, but ``gzip;q=0`` means no (it looks for the word "gzip" only),
    and one Vary header per answer: its identity path appends ``Accept-Encoding`` to a Vary that
    already names it (``Vary: Accept-Encoding, Accept-Encoding``), and the feeds add ``Accept``."""

    def __init__(self, app: ASGIApp, minimum_size: int = GZIP_MINIMUM) -> None:
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size, compresslevel=6)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.gzip(scope, receive, send)
            return
        headers = scope.get("headers", [])
        offered = b",".join(v for k, v in headers if k == b"accept-encoding").decode("latin-1")
        if offered and not accepts_gzip(offered):
            scope = {**scope, "headers": [(k, v) for k, v in headers if k != b"accept-encoding"]}

        async def one_vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                vary = [value for key, value in raw if key.lower() == b"vary"]
                if vary:
                    kept = [(key, value) for key, value in raw if key.lower() != b"vary"]
                    message = {**message, "headers": [*kept, (b"vary", merged_vary(vary))]}
            await send(message)

        await self.gzip(scope, receive, one_vary)


class GzipCache:
    """Compressed copies of served files, keyed by path, mtime and size (so a rebuilt feed is
    compressed again once, not on every request). Feed readers poll the same few files all day."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[tuple[str, int, int], bytes] = {}
        self._size = 0
        self._lock = threading.Lock()

    def cached(self, path: Path, mtime_ns: int, size: int) -> bytes | None:
        """The compressed copy of this version of the file, if it was made (no need to read it)."""
        key = (str(path), mtime_ns, size)
        with self._lock:
            hit = self._entries.pop(key, None)
            if hit is not None:
                self._entries[key] = hit  # most recently used last
            return hit

    def get(self, path: Path, mtime_ns: int, data: bytes) -> bytes:
        """The compressed copy of this version of the file, made from ``data`` the first time."""
        hit = self.cached(path, mtime_ns, len(data))
        if hit is not None:
            return hit
        packed = gzip.compress(data, compresslevel=6, mtime=0)
        key = (str(path), mtime_ns, len(data))
        with self._lock:
            self._entries[key] = packed
            self._size += len(packed)
            for old in list(self._entries):
                if self._size <= self.max_bytes or old == key:
                    break
                self._size -= len(self._entries.pop(old))
        return packed


def is_archive(rel: str) -> bool:
    """Whether a served path is an archive document: ``archive/<N>/...`` in the site's folder or in
    a category's or tag's (``categories/<slug>/archive/<N>/...``)."""
    parts = rel.split("/")
    at = 0 if parts[0] == "archive" else 2 if len(parts) > 3 and parts[0] in ("categories", "tags") else -1
    return at >= 0 and len(parts) > at + 2 and parts[at] == "archive"


class GoneFolders:
    """The build's record of removed feed folders (:mod:`finews_feeds.feeds.gone`), read again
    only when the file changes."""

    def __init__(self, output: Path) -> None:
        self.path = output / GONE
        self._key: tuple[int, int] | None = None
        self._folders: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def folders(self) -> frozenset[str]:
        try:
            stat = self.path.stat()
        except OSError:
            return frozenset()
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key == self._key:
                return self._folders
        try:
            folders = decode(self.path.read_bytes())
        except OSError:
            return frozenset()
        with self._lock:
            self._key, self._folders = key, folders
        return folders

    def __contains__(self, rel: str) -> bool:
        folder = feed_folder(rel)
        return folder is not None and folder in self.folders()


class FeedFiles(StaticFiles):
    """``StaticFiles`` over ``feeds.output``, answering with ``cache_control`` (``archive_cache``
    for archive documents, when given) and gzip from ``packed``; with ``gone``, 410 for the files
    of a feed the build removed; with ``pages``, a current feed's page to a browser
    (:func:`prefers_html`), the feed to everyone else, and ``Vary: Accept, Accept-Encoding``."""

    def __init__(self, directory: str | os.PathLike[str], cache_control: str, packed: GzipCache, *,
                 archive_cache: str | None = None, gone: bool = False, pages: bool = False) -> None:
        # The folder may not exist yet: the daemon serves before its first build ends.
        super().__init__(directory=directory, check_dir=False, follow_symlink=False)
        self.cache_control = cache_control
        self.archive_cache = archive_cache
        self.packed = packed
        self.gone = GoneFolders(Path(directory)) if gone else None
        self.pages = pages

    async def check_config(self) -> None:
        # StaticFiles raises (a 500) while the folder is missing; until the first build every
        # path is a 404 instead.
        return None

    async def get_response(self, path: str, scope: Scope) -> Response:
        parts = PurePosixPath(path).parts
        # StaticFiles serves dot-files; never the build manifest nor the writer's temporary
        # files. (``..`` that would leave the folder survives its normalisation as a part too.)
        if any(part.startswith(".") and part != "." for part in parts) or (parts and parts[-1] == MANIFEST):
            raise HTTPException(404)
        # A folder is its index.html, when asked for with its slash: StaticFiles' html mode would
        # also redirect the slash-less form to an absolute URL made from the Host header.
        if path == "." or scope["path"].endswith("/"):
            path = os.path.join(path, "index.html")
        headers = Headers(scope=scope)
        # A current feed is two documents at one URL: the feed, and its page for a browser.
        page = page_for(PurePosixPath(path).as_posix()) if self.pages else None
        response = None
        if page is not None and prefers_html(headers.get("accept", "")):
            try:
                response = await super().get_response(page, scope)
            except HTTPException:
                response = None  # no page (written by builds since issue 17): the feed itself
        if response is None:
            try:
                response = await super().get_response(path, scope)
            except HTTPException as exc:
                if exc.status_code == 404 and self.gone is not None and PurePosixPath(path).as_posix() in self.gone:
                    raise HTTPException(410, "这个订阅源已停止：它的分类或标签已没有文章。请取消订阅。",
                                        headers={"Cache-Control": GONE_CACHE}) from None
                raise
        if page is not None:
            response.headers["Vary"] = "Accept, Accept-Encoding"
        if not isinstance(response, FileResponse) or response.stat_result is None:
            return response
        head = scope["method"] == "HEAD"
        zipped = response.stat_result.st_size >= GZIP_MINIMUM and accepts_gzip(headers.get("accept-encoding", ""))
        if "range" in headers or (head and not zipped):
            return response  # ranges of the identity bytes, and HEAD without reading the file
        stat = response.stat_result
        packed = self.packed.cached(Path(response.path), stat.st_mtime_ns, stat.st_size) if zipped else None
        if packed is not None:  # what feed readers ask for all day, answered without a thread
            return self._whole(response, packed, zipped, head)
        return await run_in_threadpool(self._read, response, zipped, head)

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        cache = self.cache_control
        if self.archive_cache is not None and self.directory is not None:
            # StaticFiles gives the resolved path (follow_symlink=False).
            rel = os.path.relpath(full_path, os.path.realpath(self.directory)).replace(os.sep, "/")
            if is_archive(rel):
                cache = self.archive_cache
        headers = {"Cache-Control": cache, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
        response = FileResponse(full_path, status_code=status_code, headers=headers, stat_result=stat_result,
                                media_type=media_type(str(full_path)))
        # StaticFiles compares the client's tags without their W/ to its own, strong, tag; with
        # no If-None-Match it compares If-Modified-Since to Last-Modified (If-None-Match wins,
        # RFC 9110 13.2.2: a reader sending both gets 200 when the tag moved, whatever the date).
        not_modified = self.is_not_modified(response.headers, Headers(scope=scope))
        # Weak, as the gzip and identity bodies share it (a strong tag names one sequence of
        # bytes, RFC 9110 8.8.1); so caches revalidate either body with it.
        response.headers["ETag"] = "W/" + response.headers["ETag"]
        return NotModifiedResponse(response.headers) if not_modified else response

    def _read(self, response: FileResponse, zipped: bool, head: bool) -> Response:
        """The file in one read, gzip compressed once per file version when ``zipped``.

        FileResponse streams a file in 64 KiB chunks, each read in a thread and sent as its own
        message (on a 200 KB feed: 590 answers per CPU second, against 1,040 this way), and
        GZipMiddleware would compress it on every request, streamed without a Content-Length.
        """
        assert response.stat_result is not None
        try:
            data = Path(response.path).read_bytes()
        except OSError:  # removed between the lookup and now (a rebuild dropped the feed)
            raise HTTPException(404) from None
        if zipped:
            data = self.packed.get(Path(response.path), response.stat_result.st_mtime_ns, data)
        return self._whole(response, data, zipped, head)

    def _whole(self, response: FileResponse, data: bytes, zipped: bool, head: bool) -> Response:
        """``data``, the file's body (gzip when ``zipped``), with the headers of ``response``."""
        headers = dict(response.headers.items())
        if zipped:
            headers.pop("accept-ranges", None)  # ranges are of the identity bytes
            headers["content-encoding"] = "gzip"
        headers["content-length"] = str(len(data))
        return Response(b"" if head else data, headers=headers)
