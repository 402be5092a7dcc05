"""Sending the digest exactly once, to a real SMTP server on loopback that misbehaves on purpose."""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_fakes import (
    PG_CONNINFO,
    SECRET,
    Sink,
    TricklingServer,
    database_url,
    make_collection,
    make_config,
    make_site,
    outcome_within,
    postgres_available,
    running,
    wait_until,
)

from finews_feeds.config import Config, build_config
from finews_feeds.errors import ConfigError, DatabaseConnectionLost, DeliveryError, StoreError, SubscriberError
from finews_feeds.mail.delivery import DeliveryReport, list_headers, send_confirmation, send_digest
from finews_feeds.mail.mailer import (
    ConnectionFailure,
    PermanentFailure,
    SmtpTransport,
    TemporaryFailure,
    transport_from_config,
)
from finews_feeds.mail.message import message_id
from finews_feeds.mail.store import Store
from finews_feeds.mail.tokens import read_token
from finews_feeds.models import PostSet

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def send(config: Config, store: Store, **kwargs: Any) -> DeliveryReport:
    kwargs.setdefault("now", lambda: T0)
    return send_digest(config, store, lambda: transport_from_config(config), DAY, make_collection(), **kwargs)


def add_active(store: Store, *emails: str, **kwargs: Any) -> None:
    for email in emails:
        store.add_subscriber(email, confirmed=True, now=T0, **kwargs)


def counts(sink: Sink) -> dict[str, int]:
    return {rcpt: len(msgs) for rcpt, msgs in sink.by_recipient().items()}


def parts(msg: EmailMessage) -> tuple[str, str]:
    plain, html = list(msg.iter_parts())
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    return str(plain.get_content()), str(html.get_content())


def test_each_active_subscriber_gets_one_message_with_the_bulk_mail_headers(
        sink: Sink, port: int, store: Store) -> None:
    store.add_subscriber("Ann@example.org", name="王小明", confirmed=True, now=T0)
    store.add_subscriber("pending@example.org", now=T0)
    add_active(store, "gone@example.org", "bounced@example.org")
    store.unsubscribe("gone@example.org", T0)
    store.prepare_day(DAY - timedelta(days=1), T0)
    store.mark_permanent(DAY - timedelta(days=1), store.get_subscriber("bounced@example.org").id,  # type: ignore[union-attr]
                         "550 no", bounce_after=1, now=T0)
    report = send(make_config(port), store)
    assert (report.sent, report.failed, report.skipped, report.ok) == (1, {}, {}, True)
    assert counts(sink) == {"ann@example.org": 1}
    received = sink.messages[0]
    assert (received.mail_from, received.rcpt_tos) == ("digest@news.example.org", ["Ann@example.org"])
    msg = received.message
    token = msg["List-Unsubscribe"].split("<https://subscribe.example.org/unsubscribe/", 1)[1].split(">", 1)[0]
    assert read_token(SECRET, "unsubscribe", token) == "ann@example.org"
    # No mailto: nobody reads a mailbox for unsubscribe requests unless the operator says so.
    assert msg["List-Unsubscribe"] == f"<https://subscribe.example.org/unsubscribe/{token}>"
    assert b"=?utf-8?" not in received.data.split(b"List-Unsubscribe:", 1)[1].split(b"\r\nList-", 1)[0]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "finews 财经新闻 digest <digest.news.example.org>"
    assert msg["Message-ID"] == message_id(DAY, "ann@example.org", "news.example.org")
    assert (msg["From"], msg["To"], msg["Reply-To"]) == (
        "finews <digest@news.example.org>", "王小明 <Ann@example.org>", "editor@news.example.org")
    assert msg["Subject"] == "finews 财经新闻 每日精选 · 2022年4月20日 · 3篇"
    text, html = parts(msg)
    url = f"https://subscribe.example.org/unsubscribe/{token}"
    assert url in text and f'href="{url}"' in html
    assert "王小明，您好！" in text
    for title in ("央行开展逆回购操作", "沪指收涨0.5%", "一财快讯：人民币汇率"):
        assert title in text and title in html
    assert [(d.email, d.state, d.attempts, d.message_id) for d in store.ledger(DAY)] == [
        ("Ann@example.org", "sent", 1, msg["Message-ID"])]


def test_the_list_id_sent_has_its_id_in_plain_ascii_and_only_the_site_title_encoded(
        sink: Sink, port: int, store: Store) -> None:
    """RFC 2919: filters match the <id> (Gmail's list:, procmail, Sieve), so it is never inside an encoded word."""
    add_active(store, "a@example.org")
    send(make_config(port), store)
    wire = message_from_bytes(sink.messages[0].data, policy=policy.compat32)
    sent = " ".join(str(wire["List-Id"]).split())
    phrase, _, list_id = sent.rpartition(" ")
    assert list_id == "<digest.news.example.org>"
    assert sent.isascii()
    assert str(make_header(decode_header(phrase))) == "finews 财经新闻 digest"
    assert sink.messages[0].message["List-Id"] == "finews 财经新闻 digest <digest.news.example.org>"


def test_the_derived_list_id_of_an_international_host_is_its_ascii_form() -> None:
    site = dataclasses.replace(make_site(), url="https://财经.example.org/news")
    headers = list_headers(make_config(25), site, "https://x.example/u/T")
    assert headers["List-Id"] == "finews 财经新闻 digest <digest.xn--4n0a760a.example.org>"


def test_running_again_sends_nothing(sink: Sink, port: int, store: Store) -> None:
    add_active(store, "a@example.org", "b@example.org")
    config = make_config(port)
    assert send(config, store).sent == 2
    again = send(config, store)
    assert (again.sent, again.already_sent, again.open) == (0, 2, 0)
    assert counts(sink) == {"a@example.org": 1, "b@example.org": 1}


def test_selection_picks_the_variant_and_an_empty_one_is_skipped(sink: Sink, port: int, store: Store) -> None:
    store.add_subscriber("yicai@example.org", categories=["yicai"], confirmed=True, now=T0)
    store.add_subscriber("tag@example.org", tags=["A股"], confirmed=True, now=T0)
    store.add_subscriber("none@example.org", categories=["xinhua"], confirmed=True, now=T0)
    report = send(make_config(port), store)
    assert (report.sent, dict(report.skipped)) == (2, {"no article matches the subscriber's categories and tags": 1})
    texts = {r.rcpt_tos[0]: parts(r.message)[0] for r in sink.messages}
    assert "一财快讯：人民币汇率" in texts["yicai@example.org"]
    assert "央行开展逆回购操作" not in texts["yicai@example.org"]
    assert "央行开展逆回购操作" in texts["tag@example.org"]
    assert "一财快讯：人民币汇率" not in texts["tag@example.org"]
    assert {d.email: d.state for d in store.ledger(DAY)} == {
        "yicai@example.org": "sent", "tag@example.org": "sent", "none@example.org": "skipped"}
    assert send(make_config(port), store).sent == 0


def test_a_550_is_recorded_never_retried_and_bounces_after_the_limit(sink: Sink, port: int, store: Store) -> None:
    sink.rcpt_replies["bad@example.org"] = "550 5.1.1 no such user"
    add_active(store, "a@example.org", "bad@example.org", "c@example.org")
    config = make_config(port)  # bounce_after = 2
    report = send(config, store)
    assert (report.sent, report.ok, report.bounced) == (2, False, [])
    assert report.permanent_failures == [("bad@example.org", "550 5.1.1 no such user (at RCPT TO bad@example.org)")]
    assert dict(report.failed) == {"permanent: 550 5.1.1 no such user": 1}
    assert "  failed 1: permanent: 550 5.1.1 no such user" in report.summary_lines()
    again = send(config, store)
    assert again.summary_lines() == [
        "digest 2022-04-20: sent 0, skipped 0, retried 0, failed 0, already sent before 2, failed permanently before 1"]
    assert [d.state for d in store.ledger(DAY)] == ["sent", "failed-permanent", "sent"]
    next_day = send_digest(config, store, lambda: transport_from_config(config), DAY + timedelta(days=1),
                           make_collection(), lambda: T0, renderer=AlwaysRenderer(config))
    assert next_day.bounced == ["bad@example.org"]
    bad = store.get_subscriber("bad@example.org")
    assert bad is not None and bad.status == "bounced"
    third = send_digest(config, store, lambda: transport_from_config(config), DAY + timedelta(days=2),
                        make_collection(), lambda: T0, renderer=AlwaysRenderer(config))
    assert third.sent == 2 and "bad@example.org" not in [d.email for d in store.ledger(DAY + timedelta(days=2))]
    assert counts(sink) == {"a@example.org": 3, "c@example.org": 3}


class AlwaysRenderer:
    """The real renderer, asked for the fixed day's posts whatever day is sent."""

    def __init__(self, config: Config) -> None:
        from finews_feeds.mail.digest import DigestRenderer, posts_of_day

        collection = make_collection()
        self.renderer = DigestRenderer(config, collection.site, collection.content)
        self.posts = posts_of_day(collection, DAY, collection.site.timezone)

    def render(self, day: date, posts: Any, selection: Any) -> Any:
        return self.renderer.render(day, self.posts, selection)


@pytest.mark.parametrize("reply", ["451 4.3.0 temporary local problem", "421 4.4.2 too busy, closing"])
def test_4xx_replies_are_retried_with_exponential_backoff(sink: Sink, port: int, store: Store, reply: str) -> None:
    sink.data_replies[:] = [reply, reply]
    add_active(store, "a@example.org", "b@example.org")
    waits: list[float] = []
    report = send(make_config(port, smtp={"retry_backoff": 0.5}), store, sleep=waits.append)
    assert (report.sent, report.retried, report.failed) == (2, 2, {})
    assert waits == [0.5, 1.0]
    assert counts(sink) == {"a@example.org": 1, "b@example.org": 1}
    assert [(d.state, d.attempts, d.last_error) for d in store.ledger(DAY)] == [("sent", 3, ""), ("sent", 1, "")]


def test_a_temporary_failure_past_the_retries_is_left_for_the_next_run(sink: Sink, port: int, store: Store) -> None:
    sink.data_replies[:] = ["451 4.3.0 later"] * 4  # max_retries = 3: four attempts
    add_active(store, "a@example.org", "b@example.org")
    config = make_config(port)
    report = send(config, store, sleep=lambda s: None)
    assert (report.sent, report.retried, dict(report.failed), report.ok) == (
        1, 3, {"temporary: 451 4.3.0 later": 1}, True)
    assert [(d.email, d.state, d.attempts) for d in store.ledger(DAY)] == [
        ("a@example.org", "failed-temporary", 4), ("b@example.org", "sent", 1)]
    again = send(config, store)
    assert (again.sent, again.already_sent) == (1, 1)
    assert counts(sink) == {"a@example.org": 1, "b@example.org": 1}


def test_a_connection_dropped_after_n_messages_loses_and_repeats_nothing(sink: Sink, port: int, store: Store) -> None:
    sink.drop_after = 2
    emails = [f"r{n}@example.org" for n in range(7)]
    add_active(store, *emails)
    report = send(make_config(port), store)
    assert (report.sent, report.retried) == (7, 0)
    assert counts(sink) == dict.fromkeys(emails, 1)
    assert len(sink.connections) == 4


def test_a_drop_before_the_250_resends_once_with_the_same_message_id(sink: Sink, port: int, store: Store) -> None:
    sink.drop_data_of = {2}
    emails = [f"r{n}@example.org" for n in range(4)]
    add_active(store, *emails)
    report = send(make_config(port), store)
    assert (report.sent, report.retried) == (4, 1)
    assert counts(sink) == {"r0@example.org": 1, "r1@example.org": 2, "r2@example.org": 1, "r3@example.org": 1}
    twice = sink.by_recipient()["r1@example.org"]
    assert twice[0].message["Message-ID"] == twice[1].message["Message-ID"]


def test_a_slow_server_still_gets_everything_once(sink: Sink, port: int, store: Store) -> None:
    sink.delay = 0.2
    add_active(store, "a@example.org", "b@example.org", "c@example.org")
    assert send(make_config(port), store).sent == 3
    assert counts(sink) == {"a@example.org": 1, "b@example.org": 1, "c@example.org": 1}


def test_a_server_that_stops_answering_ends_the_run_and_the_next_run_finishes(
        sink: Sink, port: int, store: Store) -> None:
    sink.delay = 1.0
    add_active(store, "a@example.org", "b@example.org")
    config = make_config(port, smtp={"timeout": 0.3, "max_retries": 1})
    report = send(config, store, sleep=lambda s: None)
    assert report.sent == 0 and report.aborted.startswith("the SMTP server failed 2 times in a row")
    assert [d.state for d in store.ledger(DAY)] == ["failed-temporary", "pending"]
    sink.delay = 0.0
    assert send(config, store).sent == 2
    received = sink.by_recipient()
    assert len(received["b@example.org"]) == 1
    # The timed-out attempts may have been stored late by the server: all carry one Message-ID.
    assert {r.message["Message-ID"] for r in received["a@example.org"]} == {
        message_id(DAY, "a@example.org", "news.example.org")}


def test_a_server_that_trickles_the_reply_to_data_leaves_the_row_to_retry_and_a_rerun_sends_it(
        sink: Sink, port: int, store: Store) -> None:
    add_active(store, "a@example.org", "b@example.org")
    with TricklingServer("data") as slow:
        config = make_config(slow.port, smtp={"timeout": 5.0, "send_deadline_seconds": 1.0, "max_retries": 1})
        # A hung send never returns: the bound is generous, for a loaded machine (two attempts of 1 s each).
        report = outcome_within(30.0, lambda: send(config, store, sleep=lambda s: None))
    assert isinstance(report, DeliveryReport)
    assert (report.sent, report.retried) == (0, 1)
    overdue = f"no complete reply from SMTP server 127.0.0.1:{slow.port} within smtp.send_deadline_seconds = 1 s (at DATA)"
    assert report.aborted == f"the SMTP server failed 2 times in a row: {overdue}"
    assert report.temporary_failures == [("a@example.org", overdue)]
    ledger = store.ledger(DAY)
    assert [(d.email, d.state, d.attempts, d.last_error) for d in ledger] == [
        ("a@example.org", "failed-temporary", 2, overdue), ("b@example.org", "pending", 0, "")]
    # The server stored both attempts before trickling its reply: one Message-ID, as after a lost 250.
    msg_id = message_id(DAY, "a@example.org", "news.example.org")
    assert len(slow.stored) == 2 and all(f"Message-ID: {msg_id}".encode() in data for data in slow.stored)
    again = send(make_config(port), store)
    assert (again.sent, again.ok) == (2, True)
    assert counts(sink) == {"a@example.org": 1, "b@example.org": 1}
    assert sink.by_recipient()["a@example.org"][0].message["Message-ID"] == msg_id
    assert {d.state for d in store.ledger(DAY)} == {"sent"}


def test_no_server_at_all_ends_the_run_with_everything_still_to_send(store: Store) -> None:
    from smtp_fakes import free_port

    add_active(store, "a@example.org", "b@example.org")
    report = send(make_config(free_port(), smtp={"max_retries": 2}), store, sleep=lambda s: None)
    assert report.aborted.startswith("the SMTP server failed 3 times in a row: cannot connect")
    assert [d.state for d in store.ledger(DAY)] == ["failed-temporary", "pending"]
    assert store.try_claim_run(DAY, "someone-else", T0) is None  # the run released its claim


def test_the_rate_limit_spaces_messages_on_the_injected_clock(sink: Sink, port: int, store: Store) -> None:
    add_active(store, *(f"r{n}@example.org" for n in range(4)))
    clock = [T0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += timedelta(seconds=seconds)

    report = send(make_config(port, smtp={"rate_per_second": 2.0}), store, now=lambda: clock[0], sleep=sleep)
    assert report.sent == 4
    assert waits == [0.5, 0.5, 0.5]


def test_stop_finishes_the_message_in_flight_and_a_rerun_sends_the_rest(sink: Sink, port: int, store: Store) -> None:
    emails = [f"r{n}@example.org" for n in range(5)]
    add_active(store, *emails)
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 2:
            stop.set()

    report = send(make_config(port), store, stop=stop, progress=progress)
    assert (report.sent, report.stopped) == (2, True)
    assert seen == [(0, 5), (1, 5), (2, 5)]
    assert [d.state for d in store.ledger(DAY)] == ["sent", "sent", "pending", "pending", "pending"]
    rest = send(make_config(port), store)
    assert (rest.sent, rest.already_sent) == (3, 2)
    assert counts(sink) == dict.fromkeys(emails, 1)


def test_someone_who_unsubscribes_during_the_run_is_not_sent_to(sink: Sink, port: int, store: Store) -> None:
    emails = [f"r{n}@example.org" for n in range(4)]
    add_active(store, *emails)

    def progress(done: int, total: int) -> None:
        if done == 1:
            store.unsubscribe("r2@example.org", T0)

    report = send(make_config(port), store, progress=progress)
    assert (report.sent, dict(report.skipped)) == (3, {"subscriber is unsubscribed": 1})
    assert sorted(counts(sink)) == ["r0@example.org", "r1@example.org", "r3@example.org"]
    assert [(d.state, d.last_error) for d in store.ledger(DAY)][2] == ("skipped", "subscriber is unsubscribed")


def test_a_refused_login_stops_the_run_without_losing_the_recipient(store: Store) -> None:
    from aiosmtpd.smtp import AuthResult

    sink = Sink()
    add_active(store, "a@example.org")
    with running(sink, auth_require_tls=False,
                 authenticator=lambda *args: AuthResult(success=False, handled=False)) as port:
        config = build_config({"smtp": {"host": "127.0.0.1", "port": port, "security": "none", "username": "u"},
                               "site": {"timezone": "Asia/Shanghai"}},
                              {"FINEWS_SECRET_KEY": SECRET, "FINEWS_SMTP_PASSWORD": "wrong"})
        with pytest.raises(DeliveryError, match="refused the login of u"):
            send(config, store)
    assert [(d.state, d.last_error) for d in store.ledger(DAY)] == [
        ("failed-temporary", f"SMTP server 127.0.0.1:{port} refused the login of u: 535 5.7.8 Authentication credentials invalid")]
    assert store.try_claim_run(DAY, "next-run", T0) is None


def test_a_message_that_cannot_be_built_fails_for_that_subscriber_only(sink: Sink, port: int, store: Store) -> None:
    from finews_feeds.mail.digest import Recipient, Variant

    class Fragile(Variant):
        def personalize(self, recipient: Recipient) -> tuple[str, str]:
            if recipient.email.startswith("odd"):
                raise ValueError("odd data")
            return super().personalize(recipient)

    class FragileRenderer(AlwaysRenderer):
        def render(self, day: date, posts: Any, selection: Any) -> Any:
            v = super().render(day, posts, selection)
            return Fragile(v.day, v.selection, v.subject, v.count, v.html, v.text)

    add_active(store, "a@example.org", "odd@example.org", "c@example.org")
    config = make_config(port)
    report = send(config, store, renderer=FragileRenderer(config))
    assert (report.sent, report.permanent_failures) == (2, [("odd@example.org", "cannot build the message: odd data")])
    assert [d.state for d in store.ledger(DAY)] == ["sent", "failed-permanent", "sent"]
    odd = store.get_subscriber("odd@example.org")
    assert odd is not None and odd.status == "active"


class LosingStore(Store):
    """The database goes away after the first message is accepted: the `sent` commit fails, and so does the
    release of the claim afterwards."""

    def mark_sent(self, day: date, subscriber_id: int, now: datetime | None = None) -> None:
        raise DatabaseConnectionLost("the database connection was lost (server closed the connection unexpectedly)")

    def release_run(self, day: date, owner: str, now: datetime | None = None, finished: bool = True) -> None:
        raise StoreError("database error: connection refused")


def test_a_database_lost_in_the_middle_is_the_error_reported_not_the_failed_release(
        sink: Sink, port: int, store: Store) -> None:
    add_active(store, "a@example.org", "b@example.org")
    config = make_config(port)
    with pytest.raises(DatabaseConnectionLost) as caught:
        send_digest(config, LosingStore(store.engine), lambda: transport_from_config(config), DAY, make_collection(),
                    lambda: T0)
    assert caught.value.message == ("the send of the 2022-04-20 digest stopped: the database connection was lost "
                                    "(server closed the connection unexpectedly)")
    assert caught.value.hint is not None and caught.value.hint.startswith("run the same command again")
    assert caught.value.exit_code == 6
    # The ledger says what it knows: the first message may have gone, so it is resent with its Message-ID.
    assert [d.state for d in store.ledger(DAY)] == ["sending", "pending"]
    store.release_run(DAY, store.run_info(DAY)["owner"], T0, finished=False)  # type: ignore[index]
    assert send(config, store).sent == 2
    received = sink.by_recipient()
    assert (len(received["a@example.org"]), len(received["b@example.org"])) == (2, 1)
    assert len({r.message["Message-ID"] for r in received["a@example.org"]}) == 1


def test_a_public_url_that_is_not_http_stops_before_anything_is_claimed(port: int, store: Store) -> None:
    add_active(store, "a@example.org")
    with pytest.raises(ConfigError, match=r"web\.public_url = 'ftp://x\.example\.org'"):
        send(make_config(port, web={"public_url": "ftp://x.example.org"}), store)
    assert store.run_info(DAY) is None


def test_a_transport_that_cannot_be_made_releases_the_day(store: Store) -> None:
    add_active(store, "a@example.org")
    config = make_config(25, smtp={"dkim_selector": "s1"})
    with pytest.raises(ConfigError, match="DKIM needs all of"):
        send_digest(config, store, lambda: transport_from_config(config), DAY, make_collection(), lambda: T0)
    assert store.try_claim_run(DAY, "next-run", T0) is None


def test_a_missing_secret_key_fails_before_anything_is_claimed(port: int, store: Store) -> None:
    add_active(store, "a@example.org")
    config = build_config({"smtp": {"port": port, "security": "none"}}, {})
    with pytest.raises(ConfigError, match="FINEWS_SECRET_KEY"):
        send(config, store)
    assert store.ledger(DAY) == [] and store.run_info(DAY) is None


def test_send_confirmation_mails_a_signed_confirm_link_to_pending_subscribers(
        sink: Sink, port: int, store: Store) -> None:
    store.add_subscriber("New@example.org", name="Li", now=T0)
    config = make_config(port)
    with transport_from_config(config) as smtp:
        msg_id = send_confirmation(config, store, smtp, "new@example.org", T0)
        store.confirm("new@example.org", T0)
        with pytest.raises(SubscriberError, match="is active, not waiting for confirmation"):
            send_confirmation(config, store, smtp, "new@example.org", T0)
    msg = sink.messages[0].message
    assert (msg["Message-ID"], msg["To"]) == (msg_id, "Li <New@example.org>")
    text, html = parts(msg)
    token = text.split("https://subscribe.example.org/confirm/", 1)[1].split()[0]
    assert read_token(SECRET, "confirm", token) == "new@example.org"
    assert f"https://subscribe.example.org/confirm/{token}" in html


@pytest.mark.parametrize("kind", [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ]),
])
def test_two_senders_at_once_never_send_anyone_twice(sink: Sink, port: int, tmp_path: Path, kind: str) -> None:
    sink.delay = 0.005
    emails = [f"r{n:02d}@example.org" for n in range(30)]
    with database_url(kind, tmp_path) as url, Store.open(url) as one, Store.open(url) as two:
        add_active(one, *emails)
        config = make_config(port)
        reports: list[DeliveryReport] = []

        def run(store: Store) -> None:
            reports.append(send(config, store, sleep=lambda s: threading.Event().wait(0.05)))

        threads = [threading.Thread(target=run, args=(s,)) for s in (one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # SQLite: the day has one sender, the other waits and finds nothing left; PostgreSQL: they share it
        # (here the first claims all 30 in one batch; tests/test_workers.py has the sharing itself).
        if kind == "sqlite":
            assert sorted(r.sent for r in reports) == [0, 30]
        else:
            assert sum(r.sent for r in reports) == 30
        assert counts(sink) == dict.fromkeys(emails, 1)
        assert {d.state for d in one.ledger(DAY)} == {"sent"}


# -- killed with SIGKILL in the middle of a send, through the CLI ----------------------------------


def write_config(path: Path, port: int, db: str) -> None:
    path.write_text(f"""
[site]
source = "{ROOT / 'demo-site'}"
cache_dir = "{path.parent / 'cache'}"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
rate_per_second = 0
retry_backoff = 0.01
timeout = 10
[digest]
from = "finews <digest@news.example.org>"
[web]
public_url = "https://subscribe.example.org"
[database]
url = "{db}"
""", encoding="utf-8")


def run_cli(config: Path, *args: str, wait: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "FINEWS_SECRET_KEY": SECRET, **(env or {})}
    env.pop("FINEWS_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "finews_feeds", "--config", str(config), *args], cwd=config.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        proc.wait(120)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("kind", [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ]),
])
def test_a_send_killed_halfway_and_started_again_sends_everyone_exactly_once(sink: Sink, port: int,
                                                                             tmp_path: Path, kind: str) -> None:
    with database_url(kind, tmp_path) as db:
        killed_and_restarted(sink, port, tmp_path, db)


def killed_and_restarted(sink: Sink, port: int, tmp_path: Path, db: str) -> None:
    sink.hold_message, sink.hold_seconds = 5, 60.0
    config = tmp_path / "finews.toml"
    write_config(config, port, db)
    emails = [f"r{n:02d}@example.org" for n in range(10)]
    with Store.open(db) as store:
        add_active(store, *emails)
        store.add_subscriber("pending@example.org", now=T0)
    args = ("digest", "--date", "2022-04-20", "--send", "--out", str(tmp_path / "out"))
    proc = run_cli(config, *args, wait=False)
    try:
        assert wait_until(lambda: len(sink.messages) >= 5, timeout=60), proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with Store.open(db) as store:
        states = [d.state for d in store.ledger(DAY)]
    # The fifth was accepted by the server, but its 250 never reached the killed process.
    assert states == ["sent"] * 4 + ["sending"] + ["pending"] * 5
    sink.hold_message = None
    again = run_cli(config, *args)
    out = again.stdout.read() if again.stdout else ""
    assert again.returncode == 0, out + (again.stderr.read() if again.stderr else "")
    assert "digest 2022-04-20: sent 6, skipped 0, retried 0, failed 0, already sent before 4, resent after a crash 1" in out
    received = sink.by_recipient()
    assert {rcpt: len(msgs) for rcpt, msgs in received.items()} == {
        email: 2 if email == "r04@example.org" else 1 for email in emails}
    first, second = received["r04@example.org"]
    assert first.message["Message-ID"] == second.message["Message-ID"]
    with Store.open(db) as store:
        assert {d.state for d in store.ledger(DAY)} == {"sent"}
    rerun = run_cli(config, *args)
    assert rerun.returncode == 0
    assert len(sink.messages) == 11  # the third run sent nothing



def terminate_sessions(application_name: str) -> int:
    """End the server side of every PostgreSQL session of ``application_name`` (what a server restart does to
    them, without restarting a server other tests share); how many there were."""
    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        ended = conn.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = %s) AS t", (application_name,)).fetchone()
        assert wait_until(lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s",
                                                   (application_name,)).fetchall(), timeout=20)
    return int(ended[0]) if ended else 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable")
def test_a_database_connection_lost_during_the_send_is_one_error_and_a_rerun_sends_everyone_once(
        sink: Sink, port: int, tmp_path: Path) -> None:
    application = f"finews_test_{secrets.token_hex(6)}"
    emails = [f"r{n:02d}@example.org" for n in range(6)]
    with database_url("postgresql", tmp_path) as schema_url:
        db = f"{schema_url}&application_name={application}"
        config = tmp_path / "finews.toml"
        write_config(config, port, db)
        with Store.open(db) as store:
            add_active(store, *emails)
        # The server holds back the third 250 while the test ends the send's database sessions.
        sink.hold_message, sink.hold_seconds = 3, 3.0
        args = ("digest", "--date", "2022-04-20", "--send", "--out", str(tmp_path / "out"))
        proc = run_cli(config, *args, wait=False)
        try:
            assert wait_until(lambda: len(sink.messages) >= 3, timeout=60), proc.stderr.read() if proc.stderr else ""
            assert terminate_sessions(application) >= 1
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 6, out + err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert errors == ["error: the send of the 2022-04-20 digest stopped: the database connection was lost "
                          "(the session holding the claim on the day ended: terminating connection due to "
                          "administrator command)"], err
        assert err.splitlines()[-1] == (
            "hint: run the same command again: every step is committed on its own, so the ledger is consistent "
            "and only those not yet sent get the digest")
        sink.hold_message = None
        with Store.open(db) as store:
            assert {d.state for d in store.ledger(DAY)} <= {"sent", "pending", "sending", "failed-temporary"}
        again = run_cli(config, *args)
        assert again.returncode == 0, (again.stdout.read() if again.stdout else "") + (
            again.stderr.read() if again.stderr else "")
        assert counts(sink) == dict.fromkeys(emails, 1)
        with Store.open(db) as store:
            assert {d.state for d in store.ledger(DAY)} == {"sent"}


def test_the_send_command_prints_a_summary_and_fails_on_a_permanent_failure(sink: Sink, port: int,
                                                                           tmp_path: Path) -> None:
    from click.testing import CliRunner

    from finews_feeds.cli import cli

    sink.rcpt_replies["bad@example.org"] = "550 5.1.1 no such user"
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    config = tmp_path / "finews.toml"
    write_config(config, port, db)
    with Store.open(db) as store:
        add_active(store, "a@example.org", "bad@example.org")
    args = ["--config", str(config), "--log-level", "ERROR", "digest", "--date", "2022-04-20", "--send",
            "--out", str(tmp_path / "out")]
    env = {"FINEWS_SECRET_KEY": SECRET, "FINEWS_CONFIG": None}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-3:] == [
        "digest 2022-04-20: sent 1, skipped 0, retried 0, failed 1",
        "  failed 1: permanent: 550 5.1.1 no such user",
        "  permanent failure bad@example.org: 550 5.1.1 no such user (at RCPT TO bad@example.org)",
    ]
    again = CliRunner().invoke(cli, args, env=env)
    assert again.exit_code == 0
    assert again.stdout.splitlines()[-1] == (
        "digest 2022-04-20: sent 0, skipped 0, retried 0, failed 0, already sent before 1, failed permanently before 1")
    missing = CliRunner().invoke(cli, args, env={"FINEWS_SECRET_KEY": None, "FINEWS_CONFIG": None})
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: FINEWS_SECRET_KEY is not set")


# -- any schedule of faults: the ledger's invariants hold ------------------------------------------

ACTIONS = ["ok", "ok", "ok", "451", "550", "lost-250", "refused"]


class ScriptedTransport(SmtpTransport):
    """Plays a script of outcomes, one per send: `lost-250` is a message the server stored but whose
    reply never arrived (the one ambiguous case)."""

    def __init__(self, script: list[str], delivered: list[tuple[str, str]], log: list[tuple[str, str]]) -> None:
        super().__init__("127.0.0.1", 25, security="none")
        self.script, self.delivered, self.log = script, delivered, log

    def send(self, msg: EmailMessage | bytes, *, sender: str = "", recipients: tuple[str, ...] = ()) -> None:
        assert isinstance(msg, EmailMessage)
        action = self.script.pop(0) if self.script else "ok"
        rcpt = recipients[0]
        self.log.append((rcpt, action))
        if action in ("ok", "lost-250"):
            self.delivered.append((rcpt, str(msg["Message-ID"])))
        if action == "451":
            raise TemporaryFailure("451 later", 451)
        if action == "550":
            raise PermanentFailure("550 no", 550)
        if action in ("lost-250", "refused"):
            raise ConnectionFailure(f"connection failed ({action})")

    def close(self) -> None:
        pass


class CachedRenderer(AlwaysRenderer):
    """Renders each selection once for the whole property test (premailer is the slow part)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.cache: dict[str, Any] = {}

    def render(self, day: date, posts: Any, selection: Any) -> Any:
        if selection.key() not in self.cache:
            self.cache[selection.key()] = super().render(day, posts, selection)
        return self.cache[selection.key()]


_renderers: dict[str, CachedRenderer] = {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=1, max_value=6), st.lists(st.sampled_from(ACTIONS), max_size=40))
def test_any_schedule_of_faults_keeps_the_ledger_invariants(tmp_path: Path, subscribers: int, script: list[str]) -> None:
    config = make_config(25, smtp={"max_retries": 2, "bounce_after": 0})
    renderer = _renderers.get("r") or _renderers.setdefault("r", CachedRenderer(config))
    emails = [f"s{n}@example.org" for n in range(subscribers)]
    delivered: list[tuple[str, str]] = []
    log: list[tuple[str, str]] = []
    # tmpfs when there is one: the fsync of each ledger commit is not what this test is about.
    base = "/dev/shm" if Path("/dev/shm").is_dir() else str(tmp_path)
    with tempfile.TemporaryDirectory(dir=base) as folder, Store.open(f"sqlite:///{folder}/db.sqlite3") as store:
        add_active(store, *emails)
        for _ in range(len(script) + 2):
            send_digest(config, store, lambda: ScriptedTransport(script, delivered, log), DAY, make_collection(),
                        lambda: T0, renderer=renderer, sleep=lambda s: None)
            if not any(d.state in ("pending", "sending", "failed-temporary") for d in store.ledger(DAY)):
                break
        states = {d.email: d.state for d in store.ledger(DAY)}
    assert set(states) == set(emails)
    for email in emails:
        got = [mid for rcpt, mid in delivered if rcpt == email]
        actions = [action for rcpt, action in log if rcpt == email]
        assert states[email] in ("sent", "failed-permanent")
        assert actions.count("550") <= 1  # a 5xx is never retried
        assert set(got) <= {message_id(DAY, email, "news.example.org")}  # one Message-ID whatever happens
        if states[email] == "sent":
            assert actions[-1] == "ok" and len(got) >= 1
            assert len(got) - 1 == actions.count("lost-250")  # a duplicate only where a 250 was lost
        else:
            assert actions[-1] == "550" and len(got) == actions.count("lost-250")


def test_the_send_command_shows_a_progress_bar_on_a_terminal(sink: Sink, port: int, tmp_path: Path) -> None:
    import pty

    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    config = tmp_path / "finews.toml"
    write_config(config, port, db)
    with Store.open(db) as store:
        add_active(store, *(f"r{n}@example.org" for n in range(3)))
    master, slave = pty.openpty()
    env = {**os.environ, "FINEWS_SECRET_KEY": SECRET, "COLUMNS": "100"}
    env.pop("FINEWS_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "finews_feeds", "--config", str(config), "--log-level", "ERROR",
                             "digest", "--date", "2022-04-20", "--send", "--out", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    assert proc.returncode == 0
    assert out.splitlines()[-1] == "digest 2022-04-20: sent 3, skipped 0, retried 0, failed 0"
    frames = [line.split(b"\x1b[?25l")[-1] for line in terminal.split(b"\r") if b"sending" in line]
    assert [f.split(b"\x1b")[0].rstrip() for f in frames] == [
        b"sending  [############------------------------]  1/3",
        b"sending  [########################------------]  2/3",
        b"sending  [####################################]  3/3",
    ]


def test_a_configured_unsubscribe_mailbox_is_offered_after_the_one_click_link() -> None:
    config = make_config(25, digest={"unsubscribe_mailbox": "leave@news.example.org"})
    headers = list_headers(config, make_site(), "https://subscribe.example.org/unsubscribe/T.x-y_z", "T.x-y_z")
    assert headers["List-Unsubscribe"] == ("<https://subscribe.example.org/unsubscribe/T.x-y_z>, "
                                           "<mailto:leave@news.example.org?subject=unsubscribe%20T.x-y_z>")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert list_headers(make_config(25), make_site(), "https://x.example/u/T")["List-Unsubscribe"] == "<https://x.example/u/T>"


@pytest.mark.parametrize("kind", [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ]),
])
def test_a_weekly_subscriber_gets_the_weeks_digest_on_their_weekday_once_across_days_and_reruns(
        sink: Sink, port: int, tmp_path: Path, kind: str) -> None:
    base = make_collection()  # three posts on Wednesday 2022-04-20
    posts = [dataclasses.replace(p, path=f"{p.path}.{n}", date=p.date - timedelta(days=n), url=f"{p.url}?{n}")
             for n in range(9) for p in base.posts]
    collection = PostSet(base.site, posts, base.content)
    config = make_config(port)  # digest.covers = previous_day: the run for the 20th arrives on Thursday
    days = [DAY - timedelta(days=n) for n in range(6, -3, -1)]  # Thursday 14th to Friday 22nd
    with database_url(kind, tmp_path) as url, Store.open(url) as store:
        add_active(store, "daily@example.org", "weekly@example.org", "paused@example.org")
        store.update_preferences("weekly@example.org", categories=("yicai",), tags=(), frequency="weekly", weekday=3)
        store.update_preferences("paused@example.org", categories=(), tags=(), frequency="weekly", weekday=3)
        store.pause("paused@example.org", T0 + timedelta(days=30))
        for day in days:
            for _ in range(2):  # every day's run twice: the rerun sends nothing
                report = send_digest(config, store, lambda: transport_from_config(config), day, collection,
                                     lambda: T0)
                assert report.ok
        weekly_rows = [(d.day, d.kind, d.state) for day in days for d in store.ledger(day)
                       if d.email == "weekly@example.org"]
        assert weekly_rows == [(DAY, "weekly", "sent")]
    by = sink.by_recipient()
    assert len(by["daily@example.org"]) == 7  # one a day while there are posts (digest.send_empty is off)
    assert "paused@example.org" not in by
    [weekly] = by["weekly@example.org"]
    msg = weekly.message
    assert str(make_header(decode_header(msg["Subject"]))) == (
        "finews 财经新闻 每周精选 · 2022年4月14日至2022年4月20日 · 7篇")
    text, html = parts(msg)
    sections = [line for line in text.splitlines() if line.startswith("=== ")]
    assert sections == [f"=== 2022年4月{d}日 {w} · 1 篇 ===" for d, w in
                        zip(range(20, 13, -1), ("星期三", "星期二", "星期一", "星期日", "星期六", "星期五", "星期四"),
                            strict=True)]
    titles = [line.split("  ", 1)[1] for line in text.splitlines() if line[:3] == "20:" and "  " in line]
    assert titles == ["一财快讯：人民币汇率"] * 7 and "央行开展逆回购操作" not in text
    assert "/manage/" in html
