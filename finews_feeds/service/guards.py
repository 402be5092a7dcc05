"""What the web app refuses before it does any work: too many requests from one client
(:class:`RateLimiter`), bodies over the size limit (:class:`BodyLimitMiddleware`) and a
browser's cross-site POST (:func:`cross_site`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from urllib.parse import urlsplit

from cachetools import TTLCache
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


def _too_large(limit: int) -> Response:
    return Response(f"request body larger than {limit} bytes\n", status_code=413, media_type="text/plain",
                    headers={"Connection": "close"})


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
