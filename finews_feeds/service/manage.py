"""The preference centre: a subscriber's own page behind the signed manage link of every digest and
confirmation mail, without an account and without subscribing again.

``GET /manage/{token}`` shows the subscriber's choices; each change is a ``POST`` to a path of its
own (``preferences``, ``pause``, ``resume``, ``unsubscribe``, ``resubscribe``, ``delete``) and
answers with a 303 back to the page (a reload sends nothing twice). ``GET
/manage/{token}/data.json`` downloads everything stored about them (GDPR art. 15); ``delete``
asks once more, then removes all of it (art. 17).

Why a POST here cannot be forged from another site, with no cookies to double-submit:

- the link's token is a secret only the subscriber's mailbox has (signed with the site's key);
- a browser's cross-site POST is refused by its ``Origin`` / ``Sec-Fetch-Site`` (as ``/subscribe``);
- every form carries a field signed for this link's page (:func:`~finews_feeds.mail.tokens.form_token`),
  valid a day: a POST must come from a page fetched with the link, recently.

GET and HEAD change nothing, since mail scanners fetch links. The pages carry
``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store`` (they hold the token and
personal data), work without JavaScript and use the shared ``page.html`` layout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta, tzinfo
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import SubscriberError, TokenError
from ..logs import subscriber_event
from ..mail.digest import WEEKDAYS
from ..mail.store import FREQUENCIES, Store, Subscriber
from ..mail.tokens import check_form_token, form_token, read_token
from .forms import MAX_CHOICES, read_form, split_tags, text_field
from .pages import TOKEN_PAGE_HEADERS, message, page

log = logging.getLogger(__name__)

#: Longest pause one form may ask for, in days.
MAX_PAUSE_DAYS = 365
#: The pause the form offers first.
DEFAULT_PAUSE_DAYS = 14
#: What the page says after each change (the 303 names one of these in ``?done=``).
NOTICES = {
    "saved": "已保存。",
    "paused": "已暂停。",
    "resumed": "已恢复，下一期精选会照常发送。",
    "unsubscribed": "已退订，不会再收到精选。",
    "resubscribed": "已重新订阅。",
}
STATUS_TEXT = {
    "pending": "尚未确认：请点击确认邮件中的链接。确认之前，您可以先在这里设置。",
    "active": "订阅中。",
    "unsubscribed": "已退订。",
    "bounced": "邮件无法投递到这个地址，已停止发送。",
}


def when_text(value: datetime, zone: tzinfo) -> str:
    local = value.astimezone(zone)
    return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}"


def manage_routes(
    *,
    store: Store,
    secret: str,
    zone: tzinfo,
    categories: Callable[[], Sequence[tuple[str, str]]],
    tags: Callable[[], AbstractSet[str]] | None,
    clock: Callable[[], datetime],
    refuse_cross_site: Callable[[Request], Response | None],
) -> list[Route]:
    """The routes of the manage pages. ``categories()`` and ``tags()`` are the choices the subscribe
    form offers (a subscriber keeps any they chose before, even if the site no longer has it)."""

    def email_of(token: str) -> str:
        try:
            return read_token(secret, "manage", token)
        except TokenError as exc:
            raise HTTPException(400, exc.message) from None

    def gone() -> Response:
        return message("没有这个订阅", "这个链接对应的订阅已不存在（或其数据已删除）。如需订阅，请重新提交订阅表单。",
                       link=("/", "订阅"), status=404, headers=TOKEN_PAGE_HEADERS)

    def show(token: str, sub: Subscriber, notice: str = "", status: int = 200) -> Response:
        chosen = set(sub.categories)
        offered = list(categories())
        known = {slug for slug, _ in offered}
        offered += [(slug, slug) for slug in sub.categories if slug not in known]
        now = clock()
        return page(
            "manage.html", "管理订阅", status=status, headers=TOKEN_PAGE_HEADERS,
            token=token, form=form_token(secret, token), email=sub.email,
            status_text=STATUS_TEXT.get(sub.status, sub.status), notice=notice,
            categories=[(slug, title, slug in chosen) for slug, title in offered],
            tags_offered=tags is not None or bool(sub.tags), tags="，".join(sub.tags),
            frequency=sub.frequency, weekday=sub.weekday, weekdays=list(enumerate(WEEKDAYS)),
            paused_until=when_text(sub.paused_until, zone) if sub.paused(now) and sub.paused_until else "",
            pause_days=DEFAULT_PAUSE_DAYS, max_pause_days=MAX_PAUSE_DAYS,
            receiving=sub.status in ("pending", "active"),
        )

    async def load(token: str) -> tuple[str, Subscriber | None]:
        email = email_of(token)
        return email, await run_in_threadpool(store.get_subscriber, email)

    async def manage_page(request: Request) -> Response:
        token = request.path_params["token"]
        _, sub = await load(token)
        if sub is None:
            return gone()
        return show(token, sub, NOTICES.get(request.query_params.get("done", ""), ""))

    async def posted(request: Request) -> tuple[str, Subscriber, FormData] | Response:
        """The subscriber and the form of a POST that may go on, or the answer that refuses it."""
        refused = refuse_cross_site(request)
        if refused is not None:
            return refused
        token = request.path_params["token"]
        email, sub = await load(token)
        form = await read_form(request)
        try:
            check_form_token(secret, token, text_field(form, "form", 200))
        except TokenError as exc:
            log.info("%s %s refused: %s", request.method, request.url.path, exc.message)
            return message("请求被拒绝", f"{exc.message}。请重新打开管理页面再提交。",
                           link=(f"/manage/{token}", "返回管理页面"), status=403, headers=TOKEN_PAGE_HEADERS)
        if sub is None:
            return gone()
        return email, sub, form

    def back(token: str, done: str) -> Response:
        # A relative URL: nothing of the Host header goes into a redirect.
        return RedirectResponse(f"/manage/{token}?done={done}", status_code=303, headers=TOKEN_PAGE_HEADERS)

    def preferences_of(form: FormData, sub: Subscriber) -> dict[str, Any]:
        allowed = {slug for slug, _ in categories()} | set(sub.categories)
        chosen = form.getlist("category")
        if len(chosen) > MAX_CHOICES or any(not isinstance(c, str) or c not in allowed for c in chosen):
            raise HTTPException(400, "unknown category")
        chosen_tags = split_tags(text_field(form, "tags", 500))
        known = (tags() if tags is not None else frozenset()) | set(sub.tags)
        unknown = [t for t in chosen_tags if t not in known]
        if unknown or len(chosen_tags) > MAX_CHOICES:
            raise HTTPException(400, f"unknown tag: {unknown[0] if unknown else '(too many)'}")
        frequency = text_field(form, "frequency", 10) or "daily"
        if frequency not in FREQUENCIES:
            raise HTTPException(400, "frequency must be daily or weekly")
        weekday_text = text_field(form, "weekday", 2) or str(sub.weekday)
        if not weekday_text.isdigit() or not 0 <= int(weekday_text) <= 6:
            raise HTTPException(400, "weekday must be 0 (Monday) to 6 (Sunday)")
        return {"categories": tuple(str(c) for c in chosen), "tags": chosen_tags, "frequency": frequency,
                "weekday": int(weekday_text)}

    async def preferences(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        email, sub, form = got
        values = await run_in_threadpool(preferences_of, form, sub)
        await run_in_threadpool(lambda: store.update_preferences(email, **values))
        subscriber_event(log, "manage: preferences saved", email, frequency=values["frequency"])
        return back(request.path_params["token"], "saved")

    async def pause(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        email, _, form = got
        days = text_field(form, "days", 4)
        if not days.isdigit() or not 1 <= int(days) <= MAX_PAUSE_DAYS:
            raise HTTPException(400, f"days must be a whole number from 1 to {MAX_PAUSE_DAYS}")
        await run_in_threadpool(store.pause, email, clock() + timedelta(days=int(days)))
        subscriber_event(log, "manage: paused", email, days=int(days))
        return back(request.path_params["token"], "paused")

    async def resume(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        email = got[0]
        await run_in_threadpool(store.pause, email, None)
        subscriber_event(log, "manage: resumed", email)
        return back(request.path_params["token"], "resumed")

    async def unsubscribe(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        email = got[0]
        await run_in_threadpool(store.unsubscribe, email, clock())
        subscriber_event(log, "unsubscribed", email)
        return back(request.path_params["token"], "unsubscribed")

    async def resubscribe(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        email = got[0]
        try:
            await run_in_threadpool(store.resubscribe, email, clock())
        except SubscriberError:
            return gone()
        subscriber_event(log, "manage: subscribed again", email)
        return back(request.path_params["token"], "resubscribed")

    async def delete(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        email, sub, form = got
        token = request.path_params["token"]
        if text_field(form, "confirm", 10) != "yes":
            # The button on the manage page only asks; this page's button deletes.
            return page("manage_delete.html", "删除全部数据", headers=TOKEN_PAGE_HEADERS, token=token,
                        form=form_token(secret, token), email=sub.email)
        await run_in_threadpool(store.erase_subscriber, email)
        subscriber_event(log, "manage: everything deleted", email)
        return message("已删除", "您的订阅和我们保存的关于您的全部数据已经删除。这个链接从此不再有效。",
                       link=("/", "返回首页"), headers=TOKEN_PAGE_HEADERS)

    async def data(request: Request) -> Response:
        email = email_of(request.path_params["token"])
        exported = await run_in_threadpool(store.subscriber_data, email, clock())
        if exported is None:
            return gone()
        subscriber_event(log, "manage: data downloaded", email)
        return JSONResponse(exported, headers={
            **TOKEN_PAGE_HEADERS, "Content-Disposition": 'attachment; filename="finews-subscriber-data.json"'})

    async def manage_help(request: Request) -> Response:
        return message("管理订阅", "请使用您收到的每封精选邮件底部的“管理订阅”链接：每个链接只对应一个邮箱。"
                       "找不到邮件时，用您的邮箱再提交一次订阅表单，我们会把管理链接发给您。", link=("/", "订阅表单"))

    return [
        Route("/manage", manage_help, methods=["GET"]),
        Route("/manage/{token}", manage_page, methods=["GET"]),
        Route("/manage/{token}/data.json", data, methods=["GET"]),
        Route("/manage/{token}/preferences", preferences, methods=["POST"]),
        Route("/manage/{token}/pause", pause, methods=["POST"]),
        Route("/manage/{token}/resume", resume, methods=["POST"]),
        Route("/manage/{token}/unsubscribe", unsubscribe, methods=["POST"]),
        Route("/manage/{token}/resubscribe", resubscribe, methods=["POST"]),
        Route("/manage/{token}/delete", delete, methods=["POST"]),
    ]
