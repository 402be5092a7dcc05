"""The Mailgun and Postmark webhooks over real HTTP (uvicorn on a free port): signatures and credentials,
replays, idempotency."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from smtp_fakes import free_port, make_config
from test_web import serve

from finews_feeds.config import Config
from finews_feeds.mail.store import Store
from finews_feeds.service.web import create_app
from finews_feeds.service.webhooks import check_mailgun_signature, mailgun_signature

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
T0 = datetime(2022, 4, 21, 8, 0, tzinfo=UTC)


@dataclass
class Hook:
    base: str
    store: Store
    now: list[datetime]

    def post(self, body: Any, *, raw: bytes | None = None) -> httpx.Response:
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(f"{self.base}/webhooks/mailgun", content=content,
                          headers={"Content-Type": "application/json"}, timeout=10)


POSTMARK_PASSWORD = "pm-hook-secret"


def with_key(config: Config, key: str) -> Config:
    return config.__class__(**{**config.__dict__, "mailgun_signing_key": key,
                               "postmark_webhook_password": POSTMARK_PASSWORD})


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Hook]:
    port = free_port()
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    config = with_key(make_config(25, url, web={"public_url": f"http://127.0.0.1:{port}"},
                                  bounces={"webhook_max_age_seconds": 300}, smtp={"bounce_after": 1}), KEY)
    now = [T0]
    with Store.open(url) as store:
        for address in ("ann@example.org", "bob@example.org"):
            store.add_subscriber(address, confirmed=True, now=T0 - timedelta(days=3))
        app = create_app(config, store=store, clock=lambda: now[0])
        for base in serve(app, port):
            yield Hook(base, store, now)


def signed(event: dict[str, Any], token: str, at: datetime, key: str = KEY) -> dict[str, Any]:
    timestamp = str(int(at.timestamp()))
    return {"signature": {"timestamp": timestamp, "token": token, "signature": mailgun_signature(key, timestamp, token)},
            "event-data": event}


def failed(event_id: str, recipient: str = "ann@example.org", severity: str = "permanent") -> dict[str, Any]:
    return {"event": "failed", "id": event_id, "severity": severity, "recipient": recipient, "reason": "bounce",
            "message": {"headers": {"message-id": "digest.20220420.x@news.example.org"}},
            "delivery-status": {"code": 550, "message": "5.1.1 The email account that you tried to reach does not exist"}}


def test_a_signed_permanent_failure_bounces_and_the_same_event_again_changes_nothing(hook: Hook) -> None:
    body = signed(failed("ev-1"), "a" * 50, T0)
    first = hook.post(body)
    assert (first.status_code, first.json()) == (200, {"ok": True, "outcomes": [{"kind": "hard", "result": "bounced"}]})
    assert hook.store.get_subscriber("ann@example.org").status == "bounced"
    # Mailgun retrying the same delivery, and the same event under a new signature: recorded once.
    assert hook.post(body).json()["outcomes"] == [{"kind": "hard", "result": "duplicate"}]
    assert hook.post(signed(failed("ev-1"), "b" * 50, T0)).json()["outcomes"] == [{"kind": "hard", "result": "duplicate"}]
    assert len(hook.store.subscriber_events("ann@example.org")) == 1


def test_a_complaint_unsubscribes(hook: Hook) -> None:
    response = hook.post(signed({"event": "complained", "id": "ev-c", "recipient": "bob@example.org"}, "c" * 50, T0))
    assert response.json() == {"ok": True, "outcomes": [{"kind": "complaint", "result": "unsubscribed"}]}
    assert hook.store.get_subscriber("bob@example.org").status == "unsubscribed"


def test_a_mailgun_unsubscribe_event_unsubscribes(hook: Hook) -> None:
    response = hook.post(signed({"event": "unsubscribed", "id": "ev-u", "recipient": "bob@example.org"}, "u" * 50, T0))
    assert response.json() == {"ok": True, "outcomes": [{"kind": "unsubscribe", "result": "unsubscribed"}]}


def test_events_we_do_not_act_on_are_accepted_and_ignored(hook: Hook) -> None:
    response = hook.post(signed({"event": "delivered", "id": "ev-d", "recipient": "bob@example.org"}, "d" * 50, T0))
    assert (response.status_code, response.json()) == (200, {"ok": True, "ignored": "delivered"})


@pytest.mark.parametrize(("mangle", "reason"), [
    (lambda b: b["signature"].update(signature="0" * 64), "the signature does not match (check FINEWS_MAILGUN_SIGNING_KEY)"),
    (lambda b: b["signature"].update(token="x" * 50), "the signature does not match (check FINEWS_MAILGUN_SIGNING_KEY)"),
    (lambda b: b["signature"].pop("timestamp"), "the signature is incomplete"),
])
def test_a_bad_signature_is_refused_and_nothing_recorded(hook: Hook, mangle: Any, reason: str) -> None:
    body = signed(failed("ev-x"), "e" * 50, T0)
    mangle(body)
    response = hook.post(body)
    assert (response.status_code, response.json()) == (403, {"ok": False, "error": reason})
    assert hook.store.get_subscriber("ann@example.org").status == "active"
    assert hook.store.subscriber_events("ann@example.org") == []


def test_a_signature_from_another_key_is_refused(hook: Hook) -> None:
    assert hook.post(signed(failed("ev-k"), "k" * 50, T0, key="another-key")).status_code == 403


def test_a_stale_or_future_timestamp_is_a_replay(hook: Hook) -> None:
    for at in (T0 - timedelta(seconds=301), T0 + timedelta(seconds=301)):
        response = hook.post(signed(failed("ev-old"), f"{at:%S}" * 25, at))
        assert response.status_code == 403
        assert "more than bounces.webhook_max_age_seconds" in response.json()["error"]
    assert hook.post(signed(failed("ev-old"), "f" * 50, T0 - timedelta(seconds=299))).status_code == 200


def test_a_captured_signature_on_another_event_is_refused(hook: Hook) -> None:
    genuine = signed({"event": "delivered", "id": "ev-g", "recipient": "ann@example.org"}, "g" * 50, T0)
    assert hook.post(genuine).status_code == 200
    forged = {**genuine, "event-data": failed("ev-forged", "bob@example.org")}
    response = hook.post(forged)
    assert (response.status_code, response.json()["error"]) == (403, "the token came before with another event")
    assert hook.store.get_subscriber("bob@example.org").status == "active"
    # Later than the window, the timestamp refuses it anyway.
    hook.now[0] = T0 + timedelta(seconds=700)
    assert hook.post(forged).json()["error"].startswith("the timestamp is")


def test_bodies_that_are_no_mailgun_event(hook: Hook) -> None:
    assert hook.post(None, raw=b"not json").status_code == 400
    assert hook.post({"signature": "x"}).status_code == 400
    assert hook.post(signed({"event": "failed", "recipient": "ann@example.org"}, "h" * 50, T0)).status_code == 400


def test_without_a_signing_key_there_is_no_webhook(tmp_path: Path) -> None:
    port = free_port()
    config = make_config(25, f"sqlite:///{tmp_path}/db.sqlite3", web={"public_url": f"http://127.0.0.1:{port}"})
    with Store.open(config.database.url) as store:
        for base in serve(create_app(config, store=store), port):
            response = httpx.post(f"{base}/webhooks/mailgun", json=signed(failed("ev"), "i" * 50, T0), timeout=10)
            assert response.status_code == 404
            response = httpx.post(f"{base}/webhooks/postmark", json=postmark_bounce(1), auth=("postmark", ""), timeout=10)
            assert response.status_code == 404


def test_the_signature_check_itself() -> None:
    # The shape of Mailgun's example event's signature: a 10-digit timestamp and a 50-character token.
    good = {"timestamp": "1529006854", "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
            "signature": mailgun_signature(KEY, "1529006854", "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0")}
    assert check_mailgun_signature(KEY, good, 1529006854.0, 300) == ""
    assert check_mailgun_signature(KEY, {**good, "signature": good["signature"].upper()}, 1529006854.0, 300) == ""
    assert check_mailgun_signature(KEY, {**good, "timestamp": "x"}, 0, 300).startswith("the signature does not match")


def postmark_bounce(bounce_id: int, kind: str = "HardBounce", email: str = "ann@example.org") -> dict[str, Any]:
    """A Postmark bounce webhook body, as its documentation's example is shaped."""
    return {"RecordType": "Bounce", "ID": bounce_id, "Type": kind, "TypeCode": 1, "Name": "Hard bounce", "Tag": "",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Metadata": {}, "ServerID": 23,
            "MessageStream": "outbound",
            "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
            "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.", "Email": email,
            "From": "digest@news.example.org", "BouncedAt": "2022-04-21T07:30:54.9070259Z", "DumpAvailable": True,
            "Inactive": True, "CanActivate": True, "Subject": "finews digest"}


def postmark(hook: Hook, body: Any, auth: tuple[str, str] | None = ("postmark", POSTMARK_PASSWORD)) -> httpx.Response:
    return httpx.post(f"{hook.base}/webhooks/postmark", json=body, auth=auth, timeout=10)


def test_a_postmark_hard_bounce_with_the_right_credentials_bounces_once(hook: Hook) -> None:
    first = postmark(hook, postmark_bounce(4323372036854775807))
    assert (first.status_code, first.json()) == (200, {"ok": True, "outcomes": [{"kind": "hard", "result": "bounced"}]})
    assert postmark(hook, postmark_bounce(4323372036854775807)).json()["outcomes"] == [
        {"kind": "hard", "result": "duplicate"}]
    [event] = hook.store.subscriber_events("ann@example.org")
    assert (event["source"], event["status"], event["key"]) == (
        "postmark", "5.1.1", "postmark:Bounce:4323372036854775807 ann@example.org hard")


def test_postmark_complaints_unsubscribes_and_ignored_types(hook: Hook) -> None:
    complaint = {**postmark_bounce(7, "SpamComplaint", "bob@example.org"), "RecordType": "SpamComplaint"}
    assert postmark(hook, complaint).json()["outcomes"] == [{"kind": "complaint", "result": "unsubscribed"}]
    assert postmark(hook, postmark_bounce(8, "AutoResponder")).json() == {"ok": True, "ignored": "Bounce/AutoResponder"}
    change = {"RecordType": "SubscriptionChange", "MessageID": "m1", "ChangedAt": "2022-04-21T08:00:00Z",
              "Recipient": "ann@example.org", "SuppressSending": True, "SuppressionReason": "HardBounce"}
    assert postmark(hook, change).json()["ok"] is True
    assert hook.store.get_subscriber("ann@example.org").status == "active"  # the Bounce event counts, not this
    manual = {**change, "SuppressionReason": "ManualSuppression"}
    assert postmark(hook, manual).json()["outcomes"] == [{"kind": "unsubscribe", "result": "unsubscribed"}]


@pytest.mark.parametrize("auth", [None, ("postmark", "wrong"), ("someone", POSTMARK_PASSWORD)])
def test_postmark_without_the_right_credentials_is_refused(hook: Hook, auth: tuple[str, str] | None) -> None:
    response = postmark(hook, postmark_bounce(9), auth)
    assert (response.status_code, response.headers["www-authenticate"]) == (401, 'Basic realm="finews webhooks"')
    assert hook.store.subscriber_events("ann@example.org") == []


def test_postmark_bodies_that_are_no_event(hook: Hook) -> None:
    assert httpx.post(f"{hook.base}/webhooks/postmark", content=b"{", auth=("postmark", POSTMARK_PASSWORD),
                      timeout=10).status_code == 400
    assert postmark(hook, {"Type": "HardBounce"}).status_code == 400
