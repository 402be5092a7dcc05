"""The message builder: MIME structure, header encoding, header injection, stable ids."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finews_feeds.message import build_message, domain_of, format_address, header_text, message_id

SHANGHAI = timezone(timedelta(hours=8))
SENT = datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI)


def make(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "subject": "finews 每日精选 · 2022年4月20日 · 37篇",
        "html": "<p>中央深改委会议</p>",
        "text": "中央深改委会议",
        "sender": "finews 财经 <digest@example.com>",
        "to": "张三 <reader@example.org>",
        "message_id": "<digest.20220420.abc@example.com>",
        "date": SENT,
    }
    fields.update(overrides)
    return build_message(**fields).as_bytes()  # type: ignore[arg-type]


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_message_is_multipart_alternative_with_text_first_and_html_last() -> None:
    msg = parse(make())
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    # MIME's canonical line break in text parts is CRLF.
    assert parts[0].get_content() == "中央深改委会议\r\n"
    assert parts[1].get_content() == "<p>中央深改委会议</p>\r\n"
    assert msg["MIME-Version"] == "1.0"
    assert "MIME-Version" not in parts[1]


def test_subject_is_rfc2047_encoded_and_decodes_to_the_original() -> None:
    raw = make()
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in head
    assert "每日精选".encode() not in head  # nothing but ASCII in the header block
    head.decode("ascii")
    assert parse(raw)["Subject"] == "finews 每日精选 · 2022年4月20日 · 37篇"


def test_from_to_date_message_id_and_reply_to_headers() -> None:
    msg = parse(make(reply_to="编辑部 <editors@example.com>"))
    assert msg["From"].addresses[0].display_name == "finews 财经"
    assert msg["From"].addresses[0].addr_spec == "digest@example.com"
    assert msg["To"].addresses[0].display_name == "张三"
    assert msg["To"].addresses[0].addr_spec == "reader@example.org"
    assert msg["Reply-To"].addresses[0].addr_spec == "editors@example.com"
    assert msg["Date"] == "Thu, 21 Apr 2022 07:30:00 +0800"
    assert msg["Message-ID"] == "<digest.20220420.abc@example.com>"


def test_no_reply_to_header_when_empty() -> None:
    assert "Reply-To" not in parse(make(reply_to=""))


def test_crlf_in_subject_cannot_add_a_header() -> None:
    raw = make(subject="标题\r\nBcc: victim@example.com\r\n\r\n正文")
    msg = parse(raw)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "标题 Bcc: victim@example.com 正文"
    assert msg.get_content_type() == "multipart/alternative"


def test_crlf_in_extra_headers_and_addresses_is_flattened() -> None:
    raw = make(
        to="a\r\nBcc: x@example.com <reader@example.org>",
        headers={"List-Id": "finews\nBcc: y@example.com", "X-Note": "line1\rline2"},
    )
    msg = parse(raw)
    assert msg["Bcc"] is None
    assert msg["List-Id"] == "finews Bcc: y@example.com"
    assert msg["X-Note"] == "line1 line2"


def test_invalid_or_reserved_extra_header_names_are_refused() -> None:
    with pytest.raises(ValueError, match="not a valid header name"):
        make(headers={"Bad Name": "x"})
    with pytest.raises(ValueError, match="set by the builder"):
        make(headers={"subject": "x"})


def test_naive_date_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make(date=datetime(2022, 4, 21, 7, 30))


def test_same_input_gives_the_same_bytes() -> None:
    assert make() == make()
    assert make() != make(message_id="<other@example.com>")


def test_long_html_lines_are_encoded_within_the_line_limit() -> None:
    raw = make(html="<p>" + "数" * 5000 + "</p>")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert parse(raw).get_body(("html",)).get_content() == "<p>" + "数" * 5000 + "</p>\r\n"  # type: ignore[union-attr]


def test_message_id_is_stable_per_day_and_case_insensitive_address() -> None:
    first = message_id(date(2022, 4, 20), "Reader@Example.org", "example.com")
    assert first == message_id(date(2022, 4, 20), " reader@example.org ", "example.com")
    assert first != message_id(date(2022, 4, 21), "reader@example.org", "example.com")
    assert first != message_id(date(2022, 4, 20), "other@example.org", "example.com")
    assert first.startswith("<digest.20220420.") and first.endswith("@example.com>")
    assert "reader" not in first


def test_message_id_domain_is_cleaned() -> None:
    assert message_id(date(2022, 4, 20), "a@b.c", "exa mple.com>\r\n").endswith("@example.com>")
    assert message_id(date(2022, 4, 20), "a@b.c", "").endswith("@localhost>")


def test_domain_of_sender() -> None:
    assert domain_of("finews <digest@Example.COM>") == "example.com"
    assert domain_of("digest@news.example.com") == "news.example.com"
    assert domain_of("no address here") == "localhost"


def test_format_address() -> None:
    assert format_address("", "reader@example.org") == "reader@example.org"
    assert format_address("Zhang, San", "reader@example.org") == '"Zhang, San" <reader@example.org>'
    assert format_address("张\r\n三", "reader@example.org") == "张 三 <reader@example.org>"
    msg = parse(make(to=format_address("示例读者", "reader@example.org")))
    assert msg["To"].addresses[0].display_name == "示例读者"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_subject_stays_one_header(subject: str) -> None:
    raw = make(subject=subject)
    msg = parse(raw)
    assert msg["Subject"] == header_text(subject)
    assert list(msg.keys()).count("Subject") == 1
    assert {k for k in msg} == {"Subject", "From", "To", "Date", "Message-ID", "MIME-Version", "Content-Type"}


def test_utc_date_is_written_with_its_offset() -> None:
    assert parse(make(date=datetime(2022, 4, 20, 23, 30, tzinfo=UTC)))["Date"] == "Wed, 20 Apr 2022 23:30:00 +0000"
