"""Reports acted on in the store (SQLite and PostgreSQL): who they name, bounce counting, complaints,
mailed unsubscribe requests, idempotency; and VERP on the wire (aiosmtpd)."""

from __future__ import annotations

import email.message
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from smtp_fakes import SECRET, database_url, make_config, postgres_available

from finews_feeds.config import Config
from finews_feeds.mail.bounces import apply_report, identify
from finews_feeds.mail.delivery import envelope_sender
from finews_feeds.mail.reports import Finding, Report, parse_report
from finews_feeds.mail.store import Store
from finews_feeds.mail.tokens import make_token, read_token

DATA = Path(__file__).parent / "data" / "reports"
T0 = datetime(2022, 4, 21, 0, 0, tzinfo=UTC)
ANN_ID = "<digest.20220420.b682bb41a50a844746fcc878d1f484ed@news.example.org>"

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
    ]),
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with database_url(request.param, tmp_path) as url, Store.open(url) as opened:
        yield opened


def config(**bounces: object) -> Config:
    return make_config(25, bounces={"address": "bounces@news.example.org", **bounces}, smtp={"bounce_after": 2})


def active(store: Store, *addresses: str) -> None:
    for address in addresses:
        store.add_subscriber(address, confirmed=True, now=T0 - timedelta(days=60))


def report(kind: str, report_id: str, recipient: str = "ann@example.org", message_id: str = "") -> Report:
    return Report("dsn", report_id, (Finding(kind, recipient, "5.1.1" if kind == "hard" else "4.2.2"),),
                  original_message_id=message_id)


def test_the_envelope_sender_is_verp_only_with_a_bounce_address() -> None:
    assert envelope_sender(make_config(25), "ann@example.org") == "digest@news.example.org"
    assert envelope_sender(config(), "ann@example.org") == "bounces+ann=example.org@news.example.org"
    assert envelope_sender(config(), "") == "bounces@news.example.org"
    assert envelope_sender(config(verp=False), "ann@example.org") == "bounces@news.example.org"


def test_a_hard_bounce_counts_like_a_permanent_failure_at_send_time(store: Store) -> None:
    active(store, "ann@example.org")
    store.prepare_day(date(2022, 4, 20), T0)
    # One 5xx at send time, then one hard bounce report: two, which is smtp.bounce_after.
    assert store.mark_permanent(date(2022, 4, 20), store.get_subscriber("ann@example.org").id, "550", 2, T0) is False
    outcomes = apply_report(config(), store, report("hard", "<r1@mx>"), "imap", T0)
    assert [(o.email, o.result, o.how) for o in outcomes] == [("ann@example.org", "bounced", "recipient")]
    sub = store.get_subscriber("ann@example.org")
    assert (sub.status, sub.bounced_at) == ("bounced", T0)


def test_reported_bounces_are_not_wiped_by_the_relays_250(store: Store) -> None:
    active(store, "ann@example.org")
    day = date(2022, 4, 20)
    store.prepare_day(day, T0)
    ann = store.get_subscriber("ann@example.org").id
    store.mark_sent(day, ann, T0)  # the relay's 250, which resets the send-time count
    assert apply_report(config(), store, report("hard", "<r1@mx>"), "imap", T0)[0].result == "recorded"
    store.mark_sent(day, ann, T0 + timedelta(days=1))
    assert apply_report(config(), store, report("hard", "<r2@mx>"), "imap", T0 + timedelta(days=1))[0].result == "bounced"


def test_soft_bounces_count_half_and_once_per_message(store: Store) -> None:
    active(store, "ann@example.org")
    results = [apply_report(config(), store, report("soft", f"<s{i}@mx>", message_id=mid), "imap", T0)[0].result
               for i, mid in enumerate(["<m1@x>", "<m1@x>", "<m2@x>", "<m3@x>", "<m4@x>"])]
    # 0.5 (m1), 0 (m1 again: the same message), 0.5 (m2), 0.5 (m3), 0.5 (m4) = 2.
    assert results == ["recorded", "recorded", "recorded", "recorded", "bounced"]
    assert [e["weight"] for e in store.subscriber_events("ann@example.org")] == [0.5, 0.0, 0.5, 0.5, 0.5]


def test_delays_and_a_zero_soft_weight_never_bounce(store: Store) -> None:
    active(store, "ann@example.org")
    for i in range(4):
        apply_report(config(soft_weight=0.0), store, report("soft", f"<s{i}@mx>"), "imap", T0)
        apply_report(config(), store, report("delayed", f"<d{i}@mx>"), "imap", T0)
    assert store.get_subscriber("ann@example.org").status == "active"
    assert len(store.subscriber_events("ann@example.org")) == 8


def test_old_reports_and_reports_before_a_new_confirmation_do_not_count(store: Store) -> None:
    active(store, "ann@example.org")
    apply_report(config(window_days=30), store, report("hard", "<old@mx>"), "imap", T0 - timedelta(days=31))
    assert apply_report(config(window_days=30), store, report("hard", "<new@mx>"), "imap", T0)[0].result == "recorded"
    store.unsubscribe("ann@example.org", T0)
    store.add_subscriber("ann@example.org", confirmed=True, now=T0 + timedelta(hours=1))
    later = T0 + timedelta(hours=2)
    assert apply_report(config(window_days=0), store, report("hard", "<x@mx>"), "imap", later)[0].result == "recorded"
    assert apply_report(config(window_days=0), store, report("hard", "<y@mx>"), "imap", later)[0].result == "bounced"


def test_a_complaint_unsubscribes_at_once_and_the_same_report_twice_counts_once(store: Store) -> None:
    active(store, "dave@yahoo.com", "ann@example.org")
    data = (DATA / "yahoo-arf.eml").read_bytes()
    parsed = parse_report(data, "bounces@news.example.org")
    first = apply_report(config(), store, parsed, "imap", T0)
    assert [(o.email, o.result, o.how) for o in first] == [("dave@yahoo.com", "unsubscribed", "verp")]
    assert store.get_subscriber("dave@yahoo.com").unsubscribed_at == T0
    again = apply_report(config(), store, parse_report(data, "bounces@news.example.org"), "imap", T0)
    assert [o.result for o in again] == ["duplicate"]
    apply_report(config(), store, report("hard", "<h1@mx>"), "imap", T0)
    apply_report(config(), store, report("hard", "<h1@mx>"), "imap", T0)
    assert store.get_subscriber("ann@example.org").status == "active"
    assert len(store.subscriber_events("ann@example.org")) == 1


def test_a_redacted_feedback_report_is_matched_through_the_ledger(store: Store) -> None:
    active(store, "erin@hotmail.com")
    day = date(2022, 4, 20)
    store.prepare_day(day, T0)
    erin = store.get_subscriber("erin@hotmail.com").id
    mid = "<digest.20220420.84de279afcad5774424601d7f3c9ee67@news.example.org>"
    store.start_sending(day, erin, mid, T0)
    store.mark_sent(day, erin, T0)
    redacted = Report("arf", "<fbl@isp>", (Finding("complaint", "", "", "abuse"),), original_message_id=mid)
    assert [(o.email, o.result, o.how) for o in apply_report(config(), store, redacted, "imap", T0)] == [
        ("erin@hotmail.com", "unsubscribed", "message-id")]
    unknown = Report("arf", "<fbl2@isp>", (Finding("complaint", "", "", "abuse"),), original_message_id="<no@where>")
    assert [(o.email, o.result) for o in apply_report(config(), store, unknown, "imap", T0)] == [("", "unidentified")]


def test_a_signed_token_outranks_what_the_report_states() -> None:
    token = make_token(SECRET, "unsubscribe", "ann@example.org")
    forged = Report("arf", "<f@x>", (Finding("complaint", "victim@example.org"),), verp="victim@example.org",
                    tokens=("bogus.token.value-that-is-long-enough", token))
    assert identify(forged, SECRET, lambda _: None) == [("ann@example.org", "token")]


def test_a_mailed_unsubscribe_needs_a_valid_token(store: Store) -> None:
    active(store, "frank@example.com")
    token = make_token(SECRET, "unsubscribe", "frank@example.com")
    request = email.message.EmailMessage()
    request["From"] = "Frank <frank@example.com>"
    request["To"] = "leave@news.example.org"
    request["Message-ID"] = "<req1@example.com>"
    request["Subject"] = "unsubscribe ImZyYW5rQGV4YW1wbGUuY29tIg.YmEwXw.not-a-real-signature-0000000"
    forged = parse_report(request.as_bytes())
    assert [(o.email, o.result) for o in apply_report(config(), store, forged, "imap", T0)] == [("", "unidentified")]
    assert store.get_subscriber("frank@example.com").status == "active"
    request.replace_header("Subject", f"unsubscribe {token}")
    request.replace_header("Message-ID", "<req2@example.com>")
    real = parse_report(request.as_bytes())
    assert [(o.email, o.result, o.how) for o in apply_report(config(), store, real, "imap", T0)] == [
        ("frank@example.com", "unsubscribed", "token")]


def test_a_report_about_no_subscriber_records_nothing(store: Store) -> None:
    assert [o.result for o in apply_report(config(), store, report("hard", "<r@mx>", "nobody@x.org"), "imap", T0)] == [
        "unknown"]


def test_removing_a_subscriber_removes_their_events(store: Store) -> None:
    active(store, "ann@example.org")
    apply_report(config(), store, report("hard", "<r@mx>"), "imap", T0)
    store.remove_subscriber("ann@example.org")
    store.add_subscriber("ann@example.org", confirmed=True, now=T0)
    assert store.subscriber_events("ann@example.org") == []
    assert store.sent_to(ANN_ID) is None


def _dsn_for(received: bytes, recipient: str, status: str = "5.1.1") -> bytes:
    """A Postfix-shaped DSN returning the headers of ``received`` (the message as our relay got it)."""
    headers = received.split(b"\r\n\r\n", 1)[0]
    return (b"From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
            b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-1@mx.example.org>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
            b"--B\r\nContent-Type: text/plain\r\n\r\n" + f"<{recipient}>: said 550 {status}".encode() + b"\r\n"
            b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
            + f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n".encode()
            + b"\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n" + headers + b"\r\n\r\n--B--\r\n")


def test_digests_go_out_with_verp_and_a_tokened_mailto_and_their_bounce_finds_the_subscriber(tmp_path: Path) -> None:
    from smtp_fakes import Sink, make_collection, running

    from finews_feeds.mail.delivery import send_digest
    from finews_feeds.mail.mailer import transport_from_config

    sink = Sink()
    with running(sink) as port, Store.open(f"sqlite:///{tmp_path}/db.sqlite3") as store:
        cfg = make_config(port, bounces={"address": "bounces@news.example.org"},
                          digest={"unsubscribe_mailbox": "leave@news.example.org"}, smtp={"bounce_after": 1})
        active(store, "Ann@Example.org")
        report = send_digest(cfg, store, lambda: transport_from_config(cfg), date(2022, 4, 20), make_collection(),
                             lambda: T0)
        assert report.sent == 1
        [received] = sink.messages
        assert received.mail_from == "bounces+Ann=example.org@news.example.org"  # as stored: the domain lower-cased
        header = str(received.message["List-Unsubscribe"])
        link, mailto = header.split(", ")
        token = link.removeprefix("<https://subscribe.example.org/unsubscribe/").removesuffix(">")
        assert mailto == f"<mailto:leave@news.example.org?subject=unsubscribe%20{token}>"
        assert read_token(SECRET, "unsubscribe", token) == "ann@example.org"
        # The relay's DSN names someone else in its report: the signed token in the returned headers wins.
        parsed = parse_report(_dsn_for(received.data, "someone-else@example.org"), "bounces@news.example.org")
        assert parsed.tokens == (token,)
        outcomes = apply_report(cfg, store, parsed, "imap", T0)
        assert [(o.email, o.result, o.how) for o in outcomes] == [("ann@example.org", "bounced", "token")]


def test_confirmation_mail_goes_out_with_verp_too(tmp_path: Path) -> None:
    from smtp_fakes import Sink, running

    from finews_feeds.mail.delivery import send_confirmation
    from finews_feeds.mail.mailer import transport_from_config

    sink = Sink()
    with running(sink) as port, Store.open(f"sqlite:///{tmp_path}/db.sqlite3") as store:
        cfg = make_config(port, bounces={"address": "bounces@news.example.org"})
        store.add_subscriber("new@example.org", now=T0)
        transport = transport_from_config(cfg)
        try:
            send_confirmation(cfg, store, transport, "new@example.org", T0)
        finally:
            transport.close()
        assert [m.mail_from for m in sink.messages] == ["bounces+new=example.org@news.example.org"]


def test_the_bounces_command_acts_on_saved_reports(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from finews_feeds.cli import cli

    db = f"sqlite:///{tmp_path}/db.sqlite3"
    with Store.open(db) as store:
        active(store, "ann@example.org", "dave@yahoo.com")
    conf = tmp_path / "finews.toml"
    conf.write_text(f'[database]\nurl = "{db}"\n[bounces]\naddress = "bounces@news.example.org"\n'
                    '[smtp]\nbounce_after = 1\n', encoding="utf-8")
    env = {"FINEWS_SECRET_KEY": SECRET, "FINEWS_CONFIG": None}
    files = [str(DATA / "postfix-user-unknown.eml"), str(DATA / "yahoo-arf.eml"), str(DATA / "postfix-user-unknown.eml")]
    args = ["--config", str(conf), "bounces", *[a for f in files for a in ("--file", f)]]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{files[0]}: dsn <4KjB2D1Z3Nz9sRq.1650497405@mail.news.example.org>: hard ann@example.org: bounced",
        f"{files[1]}: arf <20220421024056.7843.3721@arf.mail.yahoo.com>: complaint dave@yahoo.com: unsubscribed",
        f"{files[2]}: dsn <4KjB2D1Z3Nz9sRq.1650497405@mail.news.example.org>: hard ann@example.org: duplicate",
    ]
    ooo = CliRunner().invoke(cli, ["--config", str(conf), "bounces", "--file", "-"], env=env,
                             input=b"Subject: out of office\r\n\r\nBack soon\r\n")
    assert (ooo.exit_code, ooo.output) == (0, "<stdin>: not a report (unknown); nothing done\n")


def test_a_version_3_database_gets_the_events_table_and_keeps_its_subscribers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import text

    from finews_feeds.mail import migrations

    with database_url("sqlite", tmp_path) as url:
        with monkeypatch.context() as patch:
            patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
            patch.setattr(migrations, "LATEST", 3)
            with Store.open(url) as old:
                active(old, "ann@example.org")
                with old.engine.connect() as conn:
                    assert not conn.dialect.has_table(conn, "events")
        with Store.open(url) as new:
            with new.engine.connect() as conn:
                assert conn.execute(text("SELECT version FROM finews_schema")).scalar() == migrations.LATEST
            assert apply_report(config(), new, report("hard", "<r@mx>"), "imap", T0)[0].result == "recorded"
            assert [e["kind"] for e in new.subscriber_events("ann@example.org")] == ["hard"]
