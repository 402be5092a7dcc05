"""The web app: subscribe with double opt-in, one-click unsubscribe, the built feeds and digests, health.

Everything it touches comes in as an argument of :func:`create_app` (the config, the store, the
function that wakes the outbox worker, the health report, the clock), so tests run it on a real
server with real parts and the daemon wires it to its scheduler.

Rules that matter here:

- ``POST /subscribe`` does the same work for every address, whatever its state: it validates
  the form and queues one outbox row. Making the subscriber, deciding whether to mail and
  mailing happen later in the daemon's outbox worker (:mod:`outbox`), so neither the answer,
  its headers nor its timing tell whether an address is known, and no request waits on SMTP.
- ``GET /confirm/{token}`` and ``GET /unsubscribe/{token}`` change nothing (mail scanners
  prefetch links): they show a button, and only its ``POST`` confirms; the one-click
  ``POST`` with ``List-Unsubscribe=One-Click`` unsubscribes at once, with 200 and no redirect
  or cookie (RFC 8058).
- A browser's cross-site ``POST`` to ``/subscribe`` or ``/confirm/…`` gets 403 (Origin and
  Sec-Fetch-Site, :func:`cross_site`); the one-click unsubscribe is exempt, as mail providers
  send it from their own servers.
- Form bodies are UTF-8 or refused (400): never decoded with replacement characters or as
  Latin-1.
- No redirect is built from the Host header (Starlette's trailing-slash redirect is off).
- Pages that carry a token send ``Referrer-Policy: no-referrer`` so the token does not leak to
  the links on them.
- Feed files get their registered types, a weak ETag and Last-Modified from the file (the feed
  writer leaves unchanged files alone, so these stay put), 304 answers, and gzip compressed once
  per file version (:class:`GzipCache`), not once per request.
"""

from __future__ import annotations

import gzip
import html
import logging
import mimetypes
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import date, datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cachetools import TTLCache
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..clock import utc_now
from ..config import Config
from ..errors import FinewsError, SubscriberError, TokenError
from ..feeds.plan import FILE_NAMES
from ..feeds.render import OPML
from ..feeds.slugs import quote_path
from ..feeds.writer import MANIFEST, Manifest
from ..mail.digest import web_base_url
from ..mail.store import Store
from ..mail.subscribers import normalize_email
from ..mail.tokens import read_token, secret_of

log = logging.getLogger(__name__)

#: How long a confirm link stays valid.
CONFIRM_MAX_AGE = 7 * 24 * 3600
#: Most categories one subscribe form may choose (the form has one checkbox per category).
MAX_CHOICES = 100
ONE_CLICK = "One-Click"
#: Fields one form may have (the categories' checkboxes and a few more).
MAX_FIELDS = MAX_CHOICES + 10

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
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}
TOKEN_PAGE_HEADERS = {**PAGE_HEADERS, "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
DAY_PATTERN = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\.html)?")


# --------------------------------------------------------------------------- request guards


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window), on an injectable
    monotonic clock, remembering at most ``max_keys`` keys.

    The same work and memory per call however many clients there are: cachetools' TTLCache keeps
    each key's times of its counted events (at most ``limit``), forgets a key a window after its
    last counted event, and past ``max_keys`` forgets the least recently used one, both in
    amortised O(1) (it keeps its keys in expiry and in use order). A forgotten client starts
    afresh, which only someone with more addresses than ``max_keys`` could bring about.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float], max_keys: int = 50_000) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._events: TTLCache[str, tuple[float, ...]] = TTLCache(maxsize=max(1, max_keys), ttl=window, timer=clock)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Keys remembered now (expired ones may count until the next call drops them)."""
        return len(self._events)

    def allow(self, key: str) -> float:
        """0 when the event is allowed (and counted), else the seconds until it would be."""
        with self._lock:
            now = self.clock()
            events = tuple(t for t in self._events.get(key, ()) if now - t < self.window)
            if self.limit <= 0 or len(events) >= self.limit:
                return max(0.1, self.window - (now - events[0])) if events else self.window
            # Stored again, so the key lives a window past this event (its last counted one).
            self._events[key] = (*events, now)
            return 0.0


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``: by its Content-Length before reading, and by
    counting while reading (a chunked body has no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await _too_large(self.max_bytes)(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _BodyTooLarge:
            if started:
                raise
            await _too_large(self.max_bytes)(scope, receive, send)


class NegotiatedGZipMiddleware:
    """Starlette's GZipMiddleware, but ``gzip;q=0`` means no (it looks for the word "gzip" only)."""

    def __init__(self, app: ASGIApp, minimum_size: int = 500) -> None:
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size, compresslevel=6)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers", [])
            offered = b",".join(v for k, v in headers if k == b"accept-encoding").decode("latin-1")
            if offered and not accepts_gzip(offered):
                scope = {**scope, "headers": [(k, v) for k, v in headers if k != b"accept-encoding"]}
        await self.gzip(scope, receive, send)


def _too_large(limit: int) -> Response:
    return Response(f"request body larger than {limit} bytes\n", status_code=413, media_type="text/plain",
                    headers={"Connection": "close"})


# --------------------------------------------------------------------------- pages


def page(title: str, body: str, status: int = 200, headers: Mapping[str, str] = PAGE_HEADERS) -> HTMLResponse:
    """A small self-contained HTML page (no scripts, no outside resources)."""
    document = f"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{html.escape(title)}</title>
<style>
body{{font-family:-apple-system,"PingFang SC","Hiragino Sans GB","Microsoft YaHei","Noto Sans CJK SC",sans-serif;
max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.6;color:#222}}
h1{{font-size:1.5rem}} fieldset{{border:1px solid #ddd;margin:1rem 0}} label{{margin-right:1rem;white-space:nowrap}}
input[type=email],input[type=text]{{width:100%;max-width:24rem;padding:.4rem;font-size:1rem}}
button{{padding:.5rem 1.2rem;font-size:1rem;cursor:pointer}} .muted{{color:#666;font-size:.9rem}}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{body}
</body>
</html>
"""
    return HTMLResponse(document, status_code=status, headers=dict(headers))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return kind in ("application/x-www-form-urlencoded", "multipart/form-data")


def _not_utf8(where: str, exc: UnicodeDecodeError) -> HTTPException:
    byte = exc.object[exc.start:exc.start + 1].hex().upper()
    return HTTPException(400, f"{where} is not UTF-8 text (byte 0x{byte} cannot be read); send the form as UTF-8")


def _urlencoded(body: bytes) -> FormData:
    """An application/x-www-form-urlencoded body as fields, every name and value strict UTF-8.

    Starlette (as ``urllib.parse.unquote_plus``) turns undecodable percent-escapes into U+FFFD
    and raw bytes into Latin-1, so ``a%FF%FE@b.org`` would be stored as ``a\ufffd\ufffd@b.org``
    and a raw UTF-8 ``аdmin@`` as mojibake. Here the body and its escapes are read as Latin-1
    (one character per byte, so nothing is lost or changed), then each name and value, raw
    bytes and escapes alike, is decoded as UTF-8 and refused when it is not.
    """
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1",
                          max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise HTTPException(400, f"malformed form: {exc}") from None
    fields: list[tuple[str, str | UploadFile]] = []
    for raw_name, raw_value in pairs:
        try:
            name = raw_name.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8("a field name", exc) from None
        try:
            value = raw_value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(f"field {name!r}", exc) from None
        fields.append((name, value))
    return FormData(fields)


async def _read_form(request: Request) -> FormData:
    """The request's form; 400 for a body that is not a well-formed form of UTF-8 text fields."""
    if not _is_form(request):
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded or multipart/form-data)")
    charset = request.headers.get("content-type", "").lower().partition("charset=")[2].split(";")[0].strip(' "')
    if charset and charset not in ("utf-8", "utf8"):
        raise HTTPException(415, f"expected a form in UTF-8, not {charset}")
    body = await request.body()
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        return _urlencoded(body)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Starlette decodes a part that is not UTF-8 as Latin-1; a body that is UTF-8 as a whole
        # has only UTF-8 parts (cut at ASCII boundaries, UTF-8 stays UTF-8).
        raise _not_utf8("the form", exc) from None
    try:
        form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    except HTTPException:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"malformed form: {exc}") from None
    if any(isinstance(value, UploadFile) for _, value in form.multi_items()):
        raise HTTPException(400, "files are not accepted")
    return form


def origin_of(url: str) -> str:
    """The origin a browser sends for pages under ``url`` (scheme://host[:port], default port left out)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def cross_site(request: Request, allowed: AbstractSet[str]) -> str:
    """Why a state-changing POST is refused as a browser's cross-site request, or "".

    Django's CSRF origin check is the model (``CsrfViewMiddleware._origin_verified``): a
    browser names the page a POST comes from in ``Origin``, which pages cannot forge, and it
    must be this app's (``web.public_url``) or one of ``web.trusted_origins``. Without
    ``Origin``, ``Sec-Fetch-Site: cross-site`` (also browser-set) refuses it. A request with
    neither comes from no browser (a script, curl), which no other site can make a visitor's
    browser send, so it goes on as before.
    """
    origin = request.headers.get("origin")
    if origin is not None:
        if origin_of(origin) not in allowed:  # "null" (a sandboxed or privacy-hidden page) too
            return f"a form from {origin} cannot post here"
        return ""
    if request.headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return "a form from another site cannot post here"
    return ""


def _text_field(form: FormData, name: str, limit: int) -> str:
    values = form.getlist(name)
    if len(values) > 1:
        raise HTTPException(400, f"field {name!r} given more than once")
    value = values[0] if values else ""
    if not isinstance(value, str) or len(value) > limit or any(ch in value for ch in "\r\n\x00"):
        raise HTTPException(400, f"field {name!r} is not valid")
    return value.strip()


# --------------------------------------------------------------------------- files


def safe_file(root: Path, rel: str) -> Path | None:
    """The file ``rel`` names under ``root``, or None when it is outside, hidden or absent.

    Each segment is checked before touching the disk (``..``, empty, dot-files such as the
    build manifest and the writer's temporary files), then the resolved path must still lie in
    ``root`` so a symlink cannot lead out.
    """
    parts = rel.split("/")
    if parts and parts[-1] == "":
        parts[-1] = "index.html"
    if not parts or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        return None
    try:
        base = root.resolve()
        path = (base / Path(*parts)).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(base):
        return None
    if path.is_dir():
        path = path / "index.html"
    return path if path.is_file() else None


def media_type(path: Path) -> str:
    if path.name in MEDIA_TYPES:
        return MEDIA_TYPES[path.name]
    if path.suffix.lower() in SUFFIX_TYPES:
        return SUFFIX_TYPES[path.suffix.lower()]
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): gzip and identity share the tag."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in header.split(","))


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


class GzipCache:
    """Compressed copies of served files, keyed by path, mtime and size (so a rebuilt feed is
    compressed again once, not on every request). Feed readers poll the same few files all day."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[tuple[str, int, int], bytes] = {}
        self._size = 0
        self._lock = threading.Lock()

    def get(self, path: Path, mtime_ns: int, data: bytes) -> bytes:
        key = (str(path), mtime_ns, len(data))
        with self._lock:
            hit = self._entries.pop(key, None)
            if hit is not None:
                self._entries[key] = hit  # most recently used last
                return hit
        packed = gzip.compress(data, compresslevel=6, mtime=0)
        with self._lock:
            self._entries[key] = packed
            self._size += len(packed)
            for old in list(self._entries):
                if self._size <= self.max_bytes or old == key:
                    break
                self._size -= len(self._entries.pop(old))
        return packed


def file_response(request: Request, path: Path, cache_control: str, packed: GzipCache | None = None) -> Response:
    """The file with validators, or 304 when the client's copy is current; gzip from ``packed``."""
    try:
        stat = path.stat()
    except OSError:  # removed between the lookup and now (a rebuild dropped the feed)
        raise HTTPException(404) from None
    etag = f'W/"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {
        "ETag": etag,
        "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
        "Cache-Control": cache_control,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
    elif (since := request.headers.get("if-modified-since")) is not None:
        try:
            moment = parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            moment = None
        if moment is not None and moment.tzinfo is not None and int(stat.st_mtime) <= moment.timestamp():
            return Response(status_code=304, headers=headers)
    try:
        data = path.read_bytes()
    except OSError:
        raise HTTPException(404) from None
    if packed is not None and len(data) >= 500 and accepts_gzip(request.headers.get("accept-encoding", "")):
        data = packed.get(path, stat.st_mtime_ns, data)
        headers["Content-Encoding"] = "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(data))
        data = b""
    return Response(data, media_type=media_type(path), headers=headers)


# --------------------------------------------------------------------------- the app


def split_tags(text: str) -> tuple[str, ...]:
    """Tags typed into the form: separated by ASCII or Chinese commas (，、), trimmed, no repeats."""
    parts = re.split(r"[,，、]", text)
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def default_categories(config: Config) -> list[tuple[str, str]]:
    """The categories of the config, in their configured order, as (slug, display name)."""
    return [(slug, config.category_title(slug)) for slug in sorted(config.categories, key=lambda s: (config.category_order(s), s))]


def create_app(
    config: Config,
    *,
    store: Store,
    wake_outbox: Callable[[], None] = lambda: None,
    health: Callable[[], Mapping[str, Any]] = lambda: {"ok": True},
    categories: Callable[[], Sequence[tuple[str, str]]] | None = None,
    tags: Callable[[], AbstractSet[str]] | None = None,
    clock: Callable[[], datetime] = utc_now,
    monotonic: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The Starlette app.

    ``wake_outbox()`` tells the outbox worker that a subscribe form was queued (it must not
    block: it runs on the event loop). ``health()`` gives the body of ``/healthz``; its
    ``ok`` key (default true) chooses 200 or 503. ``categories()`` gives the choices of the
    subscribe form as (slug, display name); default: the config's categories. ``tags()`` gives the
    tags a subscriber may name (the form then has a tags field); default: no tags field.
    """
    secret = secret_of(config)
    output = Path(config.feeds.output)
    limiter = RateLimiter(config.web.subscribe_per_minute, 60.0, monotonic, config.web.rate_limit_clients)
    # (Per address, the outbox worker allows three confirmation mails an hour, whoever asks.)
    origins = frozenset({origin_of(web_base_url(config)), *(origin_of(o) for o in config.web.trusted_origins)})
    packed = GzipCache()
    choices = categories or (lambda: default_categories(config))

    slug_cache: dict[str, Any] = {"key": None, "slugs": {}}

    def category_slugs() -> dict[str, str]:
        """Category name -> folder of its feeds, from the last build's manifest (names are
        slugified, and two names that clash get distinct folders), re-read when it changes."""
        path = output / MANIFEST
        try:
            stat = path.stat()
        except OSError:
            return {}
        key = (stat.st_mtime_ns, stat.st_size)
        if slug_cache["key"] != key:
            try:
                manifest = Manifest.from_json(path.read_bytes())
            except OSError:
                return {}
            if manifest is None:
                return {}
            slug_cache["key"], slug_cache["slugs"] = key, dict(manifest.slugs.get("category", {}))
        return dict(slug_cache["slugs"])

    def feed_links() -> str:
        items: list[str] = []
        slugs = category_slugs()

        def add(label: str, folder: str) -> None:
            links = [
                f'<a href="/feeds/{html.escape(quote_path(folder + name), quote=True)}">{kind.upper()}</a>'
                for kind, name in FILE_NAMES.items()
                if (output / folder / name).is_file()
            ]
            if links:
                items.append(f"<li>{html.escape(label)}: {' · '.join(links)}</li>")

        add(config.site.title or "全部文章", "")
        for name, title in choices():
            add(title, f"categories/{slugs.get(name, name)}/")
        more = []
        if (output / OPML).is_file():
            more.append(f'<a href="/feeds/{OPML}">OPML（一次导入全部订阅源）</a>')
        if (output / "index.html").is_file():
            more.append('<a href="/feeds/">全部订阅源（含标签）</a>')
        extra = f"<p>{' · '.join(more)}</p>" if more else ""
        return (f"<ul>{''.join(items)}</ul>{extra}" if items else "<p class=muted>订阅源尚未生成。</p>" + extra)

    async def home(request: Request) -> Response:
        boxes = "".join(
            f'<label><input type="checkbox" name="category" value="{html.escape(slug, quote=True)}"> '
            f"{html.escape(title)}</label> "
            for slug, title in await run_in_threadpool(choices)
        )
        tags_field = (
            '<p><label for="tags">以及这些标签（可选，用逗号分隔，例如：A股, IPO）</label><br>'
            '<input type="text" id="tags" name="tags" maxlength="500"></p>\n'
            if tags is not None else ""
        )
        form = f"""<form method="post" action="/subscribe">
<p><label for="email">邮箱</label><br><input type="email" id="email" name="email" required maxlength="254" autocomplete="email"></p>
<p><label for="name">称呼（可选）</label><br><input type="text" id="name" name="name" maxlength="100" autocomplete="name"></p>
<fieldset><legend>只订阅这些栏目（不选即全部）</legend>{boxes}</fieldset>
{tags_field}<p><button type="submit">订阅每日精选</button></p>
</form>
<p class="muted">我们会发一封确认邮件；点击其中的链接后订阅才生效。每封邮件都有一键退订链接。</p>"""
        feeds = await run_in_threadpool(feed_links)
        return page("订阅每日精选", form + "<h2>订阅源</h2>" + feeds)

    def refuse_cross_site(request: Request) -> Response | None:
        reason = cross_site(request, origins)
        if not reason:
            return None
        log.info("%s %s refused: %s", request.method, request.url.path, reason)
        return page("请求被拒绝", f"<p>{html.escape(reason)}。请在本站的页面上提交。</p>", status=403,
                    headers=TOKEN_PAGE_HEADERS)

    async def subscribe(request: Request) -> Response:
        refused = refuse_cross_site(request)
        if refused is not None:
            return refused
        wait = limiter.allow(_client(request))
        if wait:
            response = page("请稍后再试", "<p>请求过于频繁，请稍后再试。</p>", status=429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        form = await _read_form(request)
        raw_email = _text_field(form, "email", 320)
        name = _text_field(form, "name", 100)
        chosen = form.getlist("category")
        allowed = {slug for slug, _ in await run_in_threadpool(choices)}
        if len(chosen) > MAX_CHOICES or any(not isinstance(c, str) or c not in allowed for c in chosen):
            raise HTTPException(400, "unknown category")
        chosen_tags = split_tags(_text_field(form, "tags", 500))
        if chosen_tags:
            known = await run_in_threadpool(tags) if tags is not None else frozenset()
            unknown = [t for t in chosen_tags if t not in known]
            if unknown or len(chosen_tags) > MAX_CHOICES:
                raise HTTPException(400, f"unknown tag: {unknown[0] if unknown else '(too many)'}")
        try:
            email = normalize_email(raw_email)
            # The one thing done for every address alike; the worker looks at its state afterwards.
            await run_in_threadpool(store.queue_subscribe, email, name, tuple(str(c) for c in chosen), chosen_tags,
                                    clock())
        except SubscriberError as exc:
            return page("邮箱地址无效", f"<p>{html.escape(exc.message)}</p><p><a href=\"/\">返回</a></p>", status=400)
        wake_outbox()
        return page(
            "请查收确认邮件",
            f"<p>如果 {html.escape(email)} 可以订阅，我们已向它发送了一封确认邮件。请点击邮件中的链接完成订阅。</p>",
        )

    def token_email(purpose: str, token: str, max_age: int | None = None) -> str:
        try:
            return read_token(secret, purpose, token, max_age)
        except TokenError as exc:
            raise HTTPException(400, exc.message) from None

    async def confirm_page(request: Request) -> Response:
        # GET and HEAD change nothing: mail scanners fetch every link of a message.
        token = request.path_params["token"]
        email = token_email("confirm", token, CONFIRM_MAX_AGE)
        form = f"""<p>确认用 {html.escape(email)} 订阅每日精选？</p>
<form method="post" action="/confirm/{html.escape(token, quote=True)}">
<button type="submit">确认订阅</button>
</form>"""
        return page("确认订阅", form, headers=TOKEN_PAGE_HEADERS)

    async def confirm(request: Request) -> Response:
        refused = refuse_cross_site(request)
        if refused is not None:
            return refused
        email = token_email("confirm", request.path_params["token"], CONFIRM_MAX_AGE)
        try:
            sub = await run_in_threadpool(store.confirm, email, clock())
        except SubscriberError:
            return page("链接已失效", "<p>这个确认链接对应的订阅已不存在，请重新订阅。</p><p><a href=\"/\">订阅</a></p>",
                        status=400, headers=TOKEN_PAGE_HEADERS)
        if sub.status != "active":
            return page("无法确认", "<p>这个地址已退订或无法投递。如需再次订阅，请重新提交订阅表单。</p><p><a href=\"/\">订阅</a></p>",
                        status=409, headers=TOKEN_PAGE_HEADERS)
        return page("订阅成功", f"<p>{html.escape(sub.email)} 将每天收到每日精选。</p>", headers=TOKEN_PAGE_HEADERS)

    async def unsubscribe_page(request: Request) -> Response:
        token = request.path_params["token"]
        email = token_email("unsubscribe", token)
        form = f"""<p>退订后，{html.escape(email)} 将不再收到每日精选。</p>
<form method="post" action="/unsubscribe/{html.escape(token, quote=True)}">
<input type="hidden" name="List-Unsubscribe" value="{ONE_CLICK}">
<button type="submit">确认退订</button>
</form>"""
        return page("退订每日精选", form, headers=TOKEN_PAGE_HEADERS)

    async def unsubscribe(request: Request) -> Response:
        email = token_email("unsubscribe", request.path_params["token"])
        form = await _read_form(request)
        if _text_field(form, "List-Unsubscribe", 20) != ONE_CLICK:
            raise HTTPException(400, "expected List-Unsubscribe=One-Click")
        await run_in_threadpool(store.unsubscribe, email, clock())
        log.info("unsubscribed %s", email)
        return page("已退订", f"<p>{html.escape(email)} 已退订，不会再收到每日精选。</p>", headers=TOKEN_PAGE_HEADERS)

    async def unsubscribe_help(request: Request) -> Response:
        return page("退订每日精选", "<p>请使用您收到的每日精选邮件底部的退订链接：每个链接只对应一个邮箱。</p>")

    async def feeds(request: Request) -> Response:
        rel = request.path_params.get("path", "")
        path = await run_in_threadpool(safe_file, output, rel or "index.html")
        if path is None or path.name == MANIFEST:
            raise HTTPException(404)
        return await run_in_threadpool(file_response, request, path, "public, max-age=300", packed)

    async def feeds_root(request: Request) -> Response:
        return RedirectResponse("/feeds/", status_code=301)

    async def digest_page(request: Request) -> Response:
        match = DAY_PATTERN.fullmatch(request.path_params["day"])
        if not match:
            raise HTTPException(404)
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            raise HTTPException(404) from None
        path = await run_in_threadpool(safe_file, output, f"digests/{day.isoformat()}.html")
        if path is None:
            raise HTTPException(404, f"no digest for {day.isoformat()}")
        return await run_in_threadpool(file_response, request, path, "public, max-age=3600", packed)

    async def healthz(request: Request) -> Response:
        report = dict(await run_in_threadpool(health))
        ok = bool(report.get("ok", True))
        report["ok"] = ok
        return JSONResponse(report, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 304:
            return Response(status_code=304, headers=exc.headers)
        titles = {400: "请求无效", 403: "请求被拒绝", 404: "找不到页面", 405: "不允许的方法", 413: "请求过大",
                  415: "请求格式不对"}
        title = titles.get(exc.status_code, "出错了")
        response = page(title, f"<p>{html.escape(str(exc.detail))}</p>", status=exc.status_code, headers=TOKEN_PAGE_HEADERS)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def finews_error(request: Request, exc: Exception) -> Response:
        # The database or the site unreachable for a moment: say so rather than a bare 500.
        message = exc.message if isinstance(exc, FinewsError) else str(exc)
        log.error("%s %s: %s", request.method, request.url.path, message)
        response = page("暂时无法处理", "<p>服务暂时不可用，请稍后再试。</p>", status=503, headers=TOKEN_PAGE_HEADERS)
        response.headers["Retry-After"] = "60"
        return response

    routes = [
        Route("/", home, methods=["GET"]),
        Route("/subscribe", subscribe, methods=["POST"]),
        Route("/confirm/{token}", confirm_page, methods=["GET"]),
        Route("/confirm/{token}", confirm, methods=["POST"]),
        Route("/unsubscribe", unsubscribe_help, methods=["GET"]),
        Route("/unsubscribe/{token}", unsubscribe_page, methods=["GET"]),
        Route("/unsubscribe/{token}", unsubscribe, methods=["POST"]),
        Route("/feeds", feeds_root, methods=["GET"]),
        Route("/feeds/{path:path}", feeds, methods=["GET"]),
        Route("/digests/{day}", digest_page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Response | Awaitable[Response]]] = {
        HTTPException: http_error,
        FinewsError: finews_error,
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(NegotiatedGZipMiddleware, minimum_size=500),
            Middleware(BodyLimitMiddleware, max_bytes=config.web.max_body_bytes),
        ],
        exception_handlers=handlers,
    )
    # Its redirect of /healthz/ to /healthz is an absolute URL built from the Host header (a
    # redirect to any host a client names); without it such paths are 404.
    app.router.redirect_slashes = False
    return app
