"""Provider webhooks for bounces and complaints: ``POST /webhooks/mailgun`` and ``POST /webhooks/postmark``.

Mailgun signs each event (its "Securing webhooks"): ``signature.signature`` is the hex HMAC-SHA256
of ``timestamp + token`` under the account's webhook signing key (``FINEWS_MAILGUN_SIGNING_KEY``;
without it the route is 404). The signature does not cover the body, so besides checking it:

- a timestamp further than ``bounces.webhook_max_age_seconds`` from now is refused (a captured
  request replayed later);
- a token is remembered for twice that long with the event it came with, and the same token with
  another event is refused (a captured signature pasted onto a forged event). The same token with
  the same event is Mailgun retrying, and is answered as before;
- each event is recorded under its ``event-data.id``, so an event delivered twice counts once.

Answers: 200 once recorded (or for an event kind we do not act on), 403 for a bad or stale
signature (Mailgun retries for hours, time enough to fix a wrong key), 400 for a body that is no
Mailgun event, and 503 when the database is away (retried too).

Postmark signs nothing; its webhooks authenticate with HTTP Basic credentials in the webhook's
URL (``https://postmark:PASSWORD@host/webhooks/postmark``), which is what is checked here
(``bounces.postmark_username``, ``FINEWS_POSTMARK_WEBHOOK_PASSWORD``; without the password the
route is 404). A replayed request can only repeat its own event, which is recorded under
Postmark's id and counts once. Wrong credentials: 401 (Postmark retries).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from cachetools import TTLCache
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import Config
from ..mail.bounces import apply_report
from ..mail.reports import mailgun_report, postmark_report
from ..mail.store import Store

log = logging.getLogger(__name__)

#: Tokens remembered at most (their memory is bounded; past it the oldest is forgotten first).
MAX_TOKENS = 100_000


def mailgun_signature(key: str, timestamp: str, token: str) -> str:
    """The signature Mailgun sends with an event (hex HMAC-SHA256 of timestamp + token)."""
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def check_mailgun_signature(key: str, signature: Mapping[str, Any], now: float, max_age: float) -> str:
    """Why ``signature`` (the event's ``signature`` object) is refused, or "" when it is good."""
    timestamp, token, given = (str(signature.get(k, "")) for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and given):
        return "the signature is incomplete"
    if not hmac.compare_digest(mailgun_signature(key, timestamp, token), given.lower()):
        return "the signature does not match (check FINEWS_MAILGUN_SIGNING_KEY)"
    try:
        age = now - float(timestamp)
    except ValueError:
        return "the timestamp is not a number"
    if abs(age) > max_age:
        return f"the timestamp is {age:.0f} s away from now (more than bounces.webhook_max_age_seconds)"
    return ""


class TokenMemory:
    """Which event each recent token came with (thread-safe, bounded)."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._seen: TTLCache[str, str] = TTLCache(maxsize=MAX_TOKENS, ttl=ttl, timer=clock)
        self._lock = threading.Lock()

    def claim(self, token: str, event_id: str) -> bool:
        """True unless ``token`` came recently with another event."""
        with self._lock:
            seen = self._seen.get(token)
            if seen is not None and seen != event_id:
                return False
            self._seen[token] = event_id
            return True


def mailgun_route(config: Config, store: Store, clock: Callable[[], datetime]) -> Route:
    """The ``POST /webhooks/mailgun`` route."""
    key = config.mailgun_signing_key
    max_age = float(config.bounces.webhook_max_age_seconds)
    tokens = TokenMemory(2 * max_age, lambda: clock().timestamp())

    async def mailgun(request: Request) -> Response:
        if not key:
            raise HTTPException(404)
        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(400, "expected a JSON body") from None
        signature = payload.get("signature") if isinstance(payload, dict) else None
        event = payload.get("event-data") if isinstance(payload, dict) else None
        if not isinstance(signature, dict) or not isinstance(event, dict):
            raise HTTPException(400, "expected Mailgun's signature and event-data objects")
        refused = check_mailgun_signature(key, signature, clock().timestamp(), max_age)
        event_id = str(event.get("id", ""))
        if not refused and not tokens.claim(str(signature.get("token", "")), event_id):
            refused = "the token came before with another event"
        if refused:
            log.warning("mailgun webhook refused: %s", refused, extra={"client": request.client.host if request.client
                                                                        else ""})
            return JSONResponse({"ok": False, "error": refused}, status_code=403)
        if not event_id:
            raise HTTPException(400, "the event has no id")
        report = mailgun_report(event)
        if not report.understood:
            return JSONResponse({"ok": True, "ignored": str(event.get("event", ""))[:40]})
        outcomes = await run_in_threadpool(apply_report, config, store, report, "mailgun", clock())
        return JSONResponse({"ok": True, "outcomes": [{"kind": o.kind, "result": o.result} for o in outcomes]})

    return Route("/webhooks/mailgun", mailgun, methods=["POST"])


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header, or None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def postmark_route(config: Config, store: Store, clock: Callable[[], datetime]) -> Route:
    """The ``POST /webhooks/postmark`` route."""
    password = config.postmark_webhook_password
    user = config.bounces.postmark_username

    async def postmark(request: Request) -> Response:
        if not password:
            raise HTTPException(404)
        given = basic_credentials(request.headers.get("authorization", ""))
        if given is None or not (hmac.compare_digest(given[0].encode(), user.encode())
                                 & hmac.compare_digest(given[1].encode(), password.encode())):
            log.warning("postmark webhook refused: wrong or missing credentials")
            return JSONResponse({"ok": False, "error": "wrong or missing credentials"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="finews webhooks"'})
        try:
            event = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(400, "expected a JSON body") from None
        if not isinstance(event, dict) or not event.get("RecordType"):
            raise HTTPException(400, "expected a Postmark webhook object with a RecordType")
        report = postmark_report(event)
        if not report.understood:
            return JSONResponse({"ok": True, "ignored": f"{event.get('RecordType')}/{event.get('Type', '')}"[:60]})
        outcomes = await run_in_threadpool(apply_report, config, store, report, "postmark", clock())
        return JSONResponse({"ok": True, "outcomes": [{"kind": o.kind, "result": o.result} for o in outcomes]})

    return Route("/webhooks/postmark", postmark, methods=["POST"])
