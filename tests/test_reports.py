"""The report parser: real-world-shaped DSNs and feedback reports, VERP, Mailgun events, and
robustness against arbitrary bytes."""

from __future__ import annotations

import email.message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finews_feeds.mail.reports import (
    Finding,
    Report,
    bounce_kind,
    mailgun_report,
    normalize_message_id,
    parse_report,
    unsubscribe_subject,
    verp_address,
    verp_recipient,
)

DATA = Path(__file__).parent / "data" / "reports"
BOUNCES = "bounces@news.example.org"
ANN_ID = "<digest.20220420.b682bb41a50a844746fcc878d1f484ed@news.example.org>"


def sample(name: str) -> Report:
    return parse_report((DATA / name).read_bytes(), BOUNCES)


def test_postfix_user_unknown_is_a_hard_bounce_naming_ann_three_ways() -> None:
    report = sample("postfix-user-unknown.eml")
    assert report.format == "dsn"
    assert report.report_id == "<4KjB2D1Z3Nz9sRq.1650497405@mail.news.example.org>"
    assert report.findings == (Finding("hard", "ann@example.org", "5.1.1", "550 5.1.1 <ann@example.org>: Recipient "
                                       "address rejected: User unknown in virtual mailbox table"),)
    assert report.verp == "ann@example.org"
    assert report.original_message_id == ANN_ID
    assert report.tokens == ("ImFubkBleGFtcGxlLm9yZyI.YmEwXw.not-a-real-signature-0000000",)


def test_a_postfix_delay_warning_is_only_delayed_and_an_expired_message_a_soft_bounce() -> None:
    delayed, expired = sample("postfix-delayed.eml"), sample("postfix-expired.eml")
    assert [(f.kind, f.status) for f in delayed.findings] == [("delayed", "4.4.1")]
    assert [(f.kind, f.status) for f in expired.findings] == [("soft", "4.4.1")]
    # Headers only (text/rfc822-headers), still our Message-ID.
    assert delayed.original_message_id == expired.original_message_id == ANN_ID
    assert delayed.report_id != expired.report_id


def test_exim_unrouteable_address() -> None:
    report = sample("exim-unrouteable.eml")
    assert (report.format, report.verp) == ("dsn", "carol@example.net")
    assert report.findings == (Finding("hard", "carol@example.net", "5.0.0", ""),)
    assert report.original_message_id == "<digest.20220420.1e693bc9456d4a1a78ef17b6e8e0d851@news.example.org>"


def test_gmail_address_not_found_with_its_multiline_diagnostic() -> None:
    report = sample("gmail-address-not-found.eml")
    assert report.format == "dsn"
    [finding] = report.findings
    assert (finding.kind, finding.recipient, finding.status) == ("hard", "bob.nobody@gmail.com", "5.1.1")
    assert finding.detail.startswith("550-5.1.1 The email account that you tried to reach does not exist.")
    assert report.verp == "bob.nobody@gmail.com"
    assert report.original_message_id == "<digest.20220420.ad804cddd33c756c5cc92a085bd87d79@news.example.org>"


def test_hotmail_jmrp_is_a_complaint_by_its_original_recipient_header() -> None:
    report = sample("hotmail-jmrp.eml")
    assert report.format == "jmrp"
    assert report.findings == (Finding("complaint", "erin@hotmail.com", "", "abuse"),)
    assert report.verp == ""
    assert report.original_message_id == "<digest.20220420.84de279afcad5774424601d7f3c9ee67@news.example.org>"


def test_yahoo_arf_is_a_complaint_with_verp_token_and_message_id() -> None:
    report = sample("yahoo-arf.eml")
    assert report.format == "arf"
    assert report.findings == (Finding("complaint", "dave@yahoo.com", "", "abuse"),)
    assert report.verp == "dave@yahoo.com"
    assert report.original_message_id == "<digest.20220420.4b26a3d4e6e600efde08b19a5f876875@news.example.org>"
    assert report.tokens == ("ImRhdmVAeWFob28uY29tIg.YmEwXw.not-a-real-signature-0000000",)


def test_a_mailed_unsubscribe_request_carries_the_token_from_its_subject() -> None:
    report = sample("unsubscribe-request.eml")
    assert report.format == "unsubscribe"
    assert report.findings == (Finding("unsubscribe", "frank@example.com"),)
    assert report.tokens == ("ImZyYW5rQGV4YW1wbGUuY29tIg.YmEwXw.not-a-real-signature-0000000",)
    assert unsubscribe_subject("abc") == "unsubscribe abc"


def _arf(feedback_type: str, rcpt: str | None) -> bytes:
    outer = MIMEMultipart("report", report_type="feedback-report")
    outer["Message-ID"] = "<fbl-1@isp.example>"
    outer.attach(MIMEText("This is an email abuse report", "plain"))
    fields = email.message.Message()
    fields.set_payload(f"Feedback-Type: {feedback_type}\nUser-Agent: SomeFBL/1.0\nVersion: 1\n"
                       + (f"Original-Rcpt-To: {rcpt}\n" if rcpt else ""))
    fields["Content-Type"] = "message/feedback-report"
    outer.attach(fields)
    original = email.message.Message()
    original["Message-ID"] = ANN_ID
    original["To"] = "redacted@isp.example"
    attached = email.message.Message()
    attached["Content-Type"] = "text/rfc822-headers"
    attached.set_payload(original.as_string())
    outer.attach(attached)
    return outer.as_bytes()


def test_an_arf_with_the_recipient_redacted_still_has_our_message_id() -> None:
    report = parse_report(_arf("abuse", None), BOUNCES)
    assert report.format == "arf"
    assert report.findings == (Finding("complaint", "redacted@isp.example", "", "abuse"),)
    assert report.original_message_id == ANN_ID


def test_feedback_that_is_no_complaint_is_not_acted_on() -> None:
    for kind in ("not-spam", "auth-failure", "dmarc"):
        report = parse_report(_arf(kind, "ann@example.org"), BOUNCES)
        assert (report.format, report.findings, report.understood) == ("unknown", (), False)


def test_an_out_of_office_reply_is_not_understood() -> None:
    reply = b"From: Ann <ann@example.org>\r\nTo: bounces+ann=example.org@news.example.org\r\n" \
            b"Subject: Auto: out of office\r\nAuto-Submitted: auto-replied\r\n\r\nBack on Monday.\r\n"
    report = parse_report(reply, BOUNCES)
    assert (report.format, report.findings, report.verp) == ("unknown", (), "ann@example.org")
    assert report.report_id.startswith("sha256:")
    assert parse_report(reply, BOUNCES).report_id == report.report_id


def test_an_old_style_bounce_with_x_failed_recipients_only() -> None:
    data = (b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\nX-Failed-Recipients: zed@example.jp\r\n"
            b"Subject: Delivery Status Notification (Failure)\r\nMessage-ID: <x1@google.com>\r\n\r\n"
            b"Delivery to the following recipient failed permanently:\r\n\r\n     zed@example.jp\r\n\r\n"
            b"550 5.1.1 <zed@example.jp>... User Unknown\r\n")
    report = parse_report(data, BOUNCES)
    assert report.format == "failed-recipients"
    assert report.findings == (Finding("hard", "zed@example.jp", "5.1.1", ""),)


@pytest.mark.parametrize(("action", "status", "kind"), [
    ("failed", "5.1.1", "hard"), ("failed", "5.0.0 (unknown)", "hard"), ("Failed", "", "hard"),
    ("failed", "4.4.7", "soft"), ("failed", "5.2.2", "soft"), ("failed", "5.7.1", "soft"),
    ("delayed", "4.4.1", "delayed"), ("delivered", "2.0.0", None), ("relayed", "2.0.0", None), ("", "5.1.1", None),
])
def test_bounce_kinds(action: str, status: str, kind: str | None) -> None:
    assert bounce_kind(action, status) == kind


@pytest.mark.parametrize(("recipient", "address"), [
    ("ann@example.org", "bounces+ann=example.org@news.example.org"),
    ("first.last+tag@sub.example.co.uk", "bounces+first.last+tag=sub.example.co.uk@news.example.org"),
    ("we=ird@example.org", "bounces+we=ird=example.org@news.example.org"),
])
def test_verp_addresses_round_trip(recipient: str, address: str) -> None:
    assert verp_address(BOUNCES, recipient) == address
    assert verp_recipient(BOUNCES, address) == recipient
    assert verp_recipient(BOUNCES, address.upper()) == recipient.lower()
    assert verp_recipient(BOUNCES, f"<{address}>") == recipient


def test_verp_leaves_out_what_it_cannot_encode_and_refuses_foreign_addresses() -> None:
    assert verp_address(BOUNCES, '"a b"@example.org') == BOUNCES
    assert verp_address(BOUNCES, "用户@例子.中国") == BOUNCES
    assert verp_recipient(BOUNCES, "bounces+ann=example.org@other.example") == ""
    assert verp_recipient(BOUNCES, "bouncesx+ann=example.org@news.example.org") == ""
    assert verp_recipient(BOUNCES, "bounces@news.example.org") == ""
    assert verp_recipient(BOUNCES, "bounces+annexample.org@news.example.org") == ""


@settings(max_examples=300, deadline=None)
@given(st.emails())
def test_verp_round_trips_every_plain_address(address: str) -> None:
    encoded = verp_address(BOUNCES, address)
    if encoded != BOUNCES:
        assert verp_recipient(BOUNCES, encoded) == address.lower()


def test_message_ids_are_normalised() -> None:
    assert normalize_message_id(" <a@b> ") == "<a@b>"
    assert normalize_message_id("a@b") == "<a@b>"
    assert normalize_message_id("<a@\n b>") == "<a@b>"
    assert normalize_message_id("") == normalize_message_id("<>") == normalize_message_id("<a<b>") == ""


def test_mailgun_events() -> None:
    failed = mailgun_report({
        "event": "failed", "id": "G9Bn5sl1TC6nu79C8C0bwg", "severity": "permanent", "reason": "bounce",
        "recipient": "ann@example.org", "message": {"headers": {"message-id": "digest.20220420.b682@news.example.org"}},
        "delivery-status": {"code": 550, "message": "5.1.1 The email account that you tried to reach does not exist",
                            "description": ""}})
    assert failed == Report("mailgun", "mailgun:G9Bn5sl1TC6nu79C8C0bwg", (Finding(
        "hard", "ann@example.org", "5.1.1", "550 5.1.1 The email account that you tried to reach does not exist"),),
        original_message_id="<digest.20220420.b682@news.example.org>")
    temporary = mailgun_report({"event": "failed", "id": "t1", "severity": "temporary", "recipient": "ann@example.org",
                                "delivery-status": {"code": 452, "message": "4.2.2 mailbox full"}})
    assert temporary.findings[0].kind == "soft"
    suppressed = mailgun_report({"event": "failed", "id": "s1", "severity": "permanent", "recipient": "a@example.org",
                                 "delivery-status": {"code": 605, "description": "Not delivering to previously bounced address"}})
    assert suppressed.findings[0].kind == "hard"
    assert mailgun_report({"event": "complained", "id": "c1", "recipient": "a@example.org"}).findings == (
        Finding("complaint", "a@example.org", "", "abuse"),)
    assert mailgun_report({"event": "unsubscribed", "id": "u1", "recipient": "a@example.org"}).findings == (
        Finding("unsubscribe", "a@example.org"),)
    assert mailgun_report({"event": "delivered", "id": "d1", "recipient": "a@example.org"}).format == "unknown"
    assert mailgun_report({"event": ["odd"], "message": "x", "delivery-status": 3}).format == "unknown"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_give_a_report_and_never_an_exception(data: bytes) -> None:
    report = parse_report(data, BOUNCES)
    assert report.format in ("dsn", "arf", "jmrp", "failed-recipients", "unsubscribe", "unknown")
    assert report.report_id


_PIECES = [
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\r\n",
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=XX\r\n",
    b"Content-Type: multipart/mixed; boundary=XX\r\n", b"From: staff@hotmail.com\r\n",
    b"Subject: complaint about message from 1.2.3.4\r\n", b"Subject: unsubscribe aaaa.bbbb.cccccccccccccccccccc\r\n",
    b"X-Failed-Recipients: a@b.cc, =?utf-8?q?=ff?=\r\n", b"Message-ID: <x@y>\r\n", b"Message-ID: <<<\r\n",
    b"\r\n", b"--XX\r\n", b"--XX--\r\n", b"Content-Type: message/delivery-status\r\n",
    b"Content-Type: message/feedback-report\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/rfc822-headers\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"Action: failed\r\n", b"Action: delayed\r\n",
    b"Status: 5.1.1\r\n", b"Status: 4.\xff.1\r\n", b"Final-Recipient: rfc822; a@b.cc\r\n",
    b"Final-Recipient: x400; ???\r\n", b"Original-Rcpt-To: \r\n", b"Feedback-Type: abuse\r\n",
    b"X-HmXmrOriginalRecipient: <e@h.com>\r\n", b"Return-Path: <bounces+a=b.cc@news.example.org>\r\n",
    b"List-Unsubscribe: <https://x/unsubscribe/aaaa.bbbb.cccccccccccccccccccc>\r\n",
    b"Content-Type: text/plain; charset=\"x-unknown\"\r\n", b"Content-Type: multipart/report; boundary*=''%ff\r\n",
    b"Delivered-To: bounces+=@news.example.org\r\n", b"\xff\xfe\x00", b"Diagnostic-Code: smtp; 550\r\n  more\r\n",
]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.binary(max_size=40))
def test_report_shaped_garbage_never_raises(pieces: list[bytes], tail: bytes) -> None:
    report = parse_report(b"".join(pieces) + tail, BOUNCES)
    assert all(f.kind in ("hard", "soft", "delayed", "complaint", "unsubscribe") for f in report.findings)
