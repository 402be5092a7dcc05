"""The web app: subscribe with double opt-in, one-click unsubscribe, the built feeds and digests, health.

Everything it touches comes in as an argument of :func:`create_app` (the config, the store, the
function that wakes the outbox worker, the health report, the clock), so tests run it on a real
server with real parts and the daemon wires it to its scheduler. Its parts: :mod:`.guards`
(rate limit, body limit, cross-site POSTs), :mod:`.forms` (reading forms), :mod:`.pages` (the
HTML templates) and :mod:`.static` (the feeds folder, served by Starlette's StaticFiles).

Rules that matter here:

- ``POST /subscribe`` does the same work for every address, whatever its state: it validates
  the form and queues one outbox row. Making the subscriber, deciding whether to mail and
  mailing happen later in the daemon's outbox worker (:mod:`outbox`), so neither the answer,
  its headers nor its timing tell whether an address is known, and no request waits on SMTP.
- ``/manage/{token}`` is the subscriber's preference centre (:mod:`.manage`): choices, daily or
  weekly, a pause, unsubscribe, their data and "delete everything", behind the signed link.
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
- The digest archive (``/digests/``, ``/digests/page/N/``, ``/digests/atom.xml``) is served
  from the files the digest job writes (:mod:`finews_feeds.mail.archive`), exactly as a static
  host would serve them; ``/static/site.<hash>.css``, the pages' one stylesheet, from memory,
  cached for a year (its name changes with its bytes).
- Feed files are served by Starlette's StaticFiles (Last-Modified, ETag and 304 from the file's
  stat; the feed writer leaves unchanged files alone, so these stay put) with their registered
  types, the ETag weak, and gzip compressed once per file version (:class:`GzipCache`), not
  once per request.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from ..clock import utc_now
from ..config import Config
from ..errors import FinewsError, SubscriberError, TokenError
from ..logs import subscriber_event
from ..look import STYLESHEET, STYLESHEET_HASH, STYLESHEET_NAME
from ..mail.addresses import normalize_email
from ..mail.archive import FOLDER as ARCHIVE_FOLDER
from ..mail.archive import date_text
from ..mail.confirmation import VALID_DAYS
from ..mail.digest import web_base_url
from ..mail.store import Store
from ..mail.tokens import read_token, secret_of
from .forms import MAX_CHOICES, read_form, split_tags, text_field
from .guards import BodyLimitMiddleware, RateLimiter, cross_site, origin_of
from .manage import manage_routes
from .pages import TOKEN_PAGE_HEADERS, FeedList, LatestDigest, SiteTitle, message, page
from .static import ARCHIVE_CACHE, CURRENT_CACHE, FeedFiles, GzipCache, NegotiatedGZipMiddleware
from .webhooks import mailgun_route, postmark_route

log = logging.getLogger(__name__)

#: How long a confirm link stays valid (the confirmation mail says so).
CONFIRM_MAX_AGE = VALID_DAYS * 24 * 3600
ONE_CLICK = "One-Click"
DAY_PATTERN = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\.html)?")
#: The stylesheet's name changes with its bytes, so a browser may keep it as long as it likes.
STYLESHEET_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": f'"{STYLESHEET_HASH}"',
                      "X-Content-Type-Options": "nosniff"}
#: Headlines of the newest digest shown under the subscribe form.
SAMPLE_HEADLINES = 3
ERROR_TITLES = {400: "请求无效", 403: "请求被拒绝", 404: "找不到页面", 405: "不允许的方法", 410: "订阅源已停止",
                413: "请求过大", 415: "请求格式不对"}


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


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
    site_title: str | None = None,
    zone: tzinfo | None = None,
) -> Starlette:
    """The Starlette app.

    ``wake_outbox()`` tells the outbox worker that a subscribe form was queued (it must not
    block: it runs on the event loop). ``health()`` gives the body of ``/healthz``; its
    ``ok`` key (default true) chooses 200 or 503. ``categories()`` gives the choices of the
    subscribe form as (slug, display name); default: the config's categories. ``tags()`` gives the
    tags a subscriber may name (the form then has a tags field); default: no tags field.
    ``site_title`` heads every page; default: ``site.title`` of the config (the daemon gives the
    site's, which may come from ``_config.yml``).
    ``zone`` is the one times are shown in (a pause's end); default: ``digest.timezone``, else
    ``site.timezone``, else Asia/Shanghai.
    """

    secret = secret_of(config)
    output = Path(config.feeds.output)
    limiter = RateLimiter(config.web.subscribe_per_minute, 60.0, monotonic, config.web.rate_limit_clients)
    # (Per address, the outbox worker allows three confirmation mails an hour, whoever asks.)
    origins = frozenset({origin_of(web_base_url(config)), *(origin_of(o) for o in config.web.trusted_origins)})
    packed = GzipCache()
    feed_files = FeedFiles(output, CURRENT_CACHE, packed, archive_cache=ARCHIVE_CACHE, gone=True, pages=True)
    digest_files = FeedFiles(output, "public, max-age=3600", packed)
    feed_list = FeedList(output)
    latest = LatestDigest(output / ARCHIVE_FOLDER)
    choices = categories or (lambda: default_categories(config))

    async def home(request: Request) -> Response:
        def look() -> dict[str, Any]:
            chosen = choices()
            newest = latest.get()
            sample = None if newest is None or not newest.headlines else {
                "day": newest.day.isoformat(), "date_text": date_text(newest.day), "count": newest.count,
                "headlines": newest.headlines[:SAMPLE_HEADLINES]}
            return {"categories": chosen, "feeds": feed_list.feeds(config.site.title or "全部文章", chosen),
                    "more": feed_list.more(), "sample": sample,
                    "discovery": feed_list.discovery()}

        return page("home.html", "订阅每日精选", tags=tags is not None, **await run_in_threadpool(look))

    def refuse_cross_site(request: Request) -> Response | None:
        reason = cross_site(request, origins)
        if not reason:
            return None
        log.info("%s %s refused: %s", request.method, request.url.path, reason)
        return message("请求被拒绝", f"{reason}。请在本站的页面上提交。", status=403, headers=TOKEN_PAGE_HEADERS)

    async def subscribe(request: Request) -> Response:
        refused = refuse_cross_site(request)
        if refused is not None:
            return refused
        wait = limiter.allow(_client(request))
        if wait:
            response = message("请稍后再试", "请求过于频繁，请稍后再试。", status=429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        form = await read_form(request)
        raw_email = text_field(form, "email", 320)
        name = text_field(form, "name", 100)
        chosen = form.getlist("category")
        allowed = {slug for slug, _ in await run_in_threadpool(choices)}
        if len(chosen) > MAX_CHOICES or any(not isinstance(c, str) or c not in allowed for c in chosen):
            raise HTTPException(400, "unknown category")
        chosen_tags = split_tags(text_field(form, "tags", 500))
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
            return message("邮箱地址无效", exc.message, link=("/", "返回"), status=400)
        wake_outbox()
        # One answer for every address: a known one is mailed its manage link, a new one a confirmation.
        return message("请查收确认邮件", f"如果 {email} 可以订阅，我们已向它发送了一封确认邮件。请点击邮件中的链接完成订阅。"
                       "如果这个地址已经订阅，邮件里是管理订阅的链接。")

    def token_email(purpose: str, token: str, max_age: int | None = None) -> str:
        try:
            return read_token(secret, purpose, token, max_age)
        except TokenError as exc:
            raise HTTPException(400, exc.message) from None

    async def confirm_page(request: Request) -> Response:
        # GET and HEAD change nothing: mail scanners fetch every link of a message.
        token = request.path_params["token"]
        email = token_email("confirm", token, CONFIRM_MAX_AGE)
        return page("confirm.html", "确认订阅", headers=TOKEN_PAGE_HEADERS, email=email, token=token,
                    discovery=feed_list.discovery())

    async def confirm(request: Request) -> Response:
        refused = refuse_cross_site(request)
        if refused is not None:
            return refused
        email = token_email("confirm", request.path_params["token"], CONFIRM_MAX_AGE)
        try:
            sub = await run_in_threadpool(store.confirm, email, clock())
        except SubscriberError:
            return message("链接已失效", "这个确认链接对应的订阅已不存在，请重新订阅。", link=("/", "订阅"),
                           status=400, headers=TOKEN_PAGE_HEADERS)
        if sub.status != "active":
            log.info("confirm refused: the subscriber is %s", sub.status, extra={"status": sub.status})
            return message("无法确认", "这个地址已退订或无法投递。如需再次订阅，请重新提交订阅表单。", link=("/", "订阅"),
                           status=409, headers=TOKEN_PAGE_HEADERS)
        subscriber_event(log, "subscription confirmed", sub.email)
        return message("订阅成功", f"{sub.email} 将每天收到每日精选。", headers=TOKEN_PAGE_HEADERS)

    async def unsubscribe_page(request: Request) -> Response:
        token = request.path_params["token"]
        email = token_email("unsubscribe", token)
        return page("unsubscribe.html", "退订每日精选", headers=TOKEN_PAGE_HEADERS, email=email, token=token,
                    one_click=ONE_CLICK, discovery=feed_list.discovery())

    async def unsubscribe(request: Request) -> Response:
        email = token_email("unsubscribe", request.path_params["token"])
        form = await read_form(request)
        if text_field(form, "List-Unsubscribe", 20) != ONE_CLICK:
            raise HTTPException(400, "expected List-Unsubscribe=One-Click")
        await run_in_threadpool(store.unsubscribe, email, clock())
        subscriber_event(log, "unsubscribed", email)
        return message("已退订", f"{email} 已退订，不会再收到每日精选。", headers=TOKEN_PAGE_HEADERS)

    async def unsubscribe_help(request: Request) -> Response:
        return message("退订每日精选", "请使用您收到的每日精选邮件底部的退订链接：每个链接只对应一个邮箱。")

    async def feeds_root(request: Request) -> Response:
        return RedirectResponse("/feeds/", status_code=301)

    async def archive_root(request: Request) -> Response:
        return RedirectResponse("/digests/", status_code=301)

    async def digest_page(request: Request) -> Response:
        name = request.path_params["path"]
        match = DAY_PATTERN.fullmatch(name)
        if not match:
            # The archive's index pages, its feed and stylesheet, as the digest job wrote them.
            return await feed_files.get_response(f"{ARCHIVE_FOLDER}/{name}", request.scope)
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            raise HTTPException(404) from None
        try:
            return await digest_files.get_response(f"digests/{day.isoformat()}.html", request.scope)
        except HTTPException as exc:
            if exc.status_code == 404:
                raise HTTPException(404, f"no digest for {day.isoformat()}") from None
            raise

    async def stylesheet(request: Request) -> Response:
        if request.path_params["name"] != STYLESHEET_NAME:
            raise HTTPException(404)
        if STYLESHEET_HEADERS["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=STYLESHEET_HEADERS)
        return Response(STYLESHEET, media_type="text/css; charset=utf-8", headers=STYLESHEET_HEADERS)

    async def healthz(request: Request) -> Response:
        report = dict(await run_in_threadpool(health))
        ok = bool(report.get("ok", True))
        report["ok"] = ok
        return JSONResponse(report, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        title = ERROR_TITLES.get(exc.status_code, "出错了")
        response = message(title, str(exc.detail), status=exc.status_code, headers=TOKEN_PAGE_HEADERS)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def finews_error(request: Request, exc: Exception) -> Response:
        # The database or the site unreachable for a moment: say so rather than a bare 500.
        text = exc.message if isinstance(exc, FinewsError) else str(exc)
        log.error("%s %s: %s", request.method, request.url.path, text)
        response = message("暂时无法处理", "服务暂时不可用，请稍后再试。", status=503, headers=TOKEN_PAGE_HEADERS)
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
        *manage_routes(store=store, secret=secret, categories=choices, tags=tags, clock=clock,
                       refuse_cross_site=refuse_cross_site,
                       zone=zone or ZoneInfo(config.digest.timezone or config.site.timezone or "Asia/Shanghai")),
        Route("/feeds", feeds_root, methods=["GET"]),
        Mount("/feeds", app=feed_files),
        Route("/digests", archive_root, methods=["GET"]),
        Route("/digests/{path:path}", digest_page, methods=["GET"]),
        Route("/static/{name}", stylesheet, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        # Bounces and complaints from the mail provider (docs/bounces.md); 404 without its key.
        mailgun_route(config, store, clock),
        postmark_route(config, store, clock),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Response | Awaitable[Response]]] = {
        HTTPException: http_error,
        FinewsError: finews_error,
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(NegotiatedGZipMiddleware),
            Middleware(SiteTitle, title=site_title or config.site.title or "每日精选"),
            Middleware(BodyLimitMiddleware, max_bytes=config.web.max_body_bytes),
        ],
        exception_handlers=handlers,
    )
    # Its redirect of /healthz/ to /healthz is an absolute URL built from the Host header (a
    # redirect to any host a client names); without it such paths are 404.
    app.router.redirect_slashes = False
    return app
