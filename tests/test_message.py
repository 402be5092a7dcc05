"""The message builder: MIME structure, header encoding, header injection, stable ids."""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, date, datetime, timedelta, timezone
from email.generator import BytesGenerator
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finews_feeds.mail.message import (
    MESSAGE_POLICY,
    PreparedBody,
    _base64_body,
    build_message,
    domain_of,
    format_address,
    header_text,
    message_id,
)

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


def list_id_on_the_wire(raw: bytes) -> str:
    """The List-Id header as sent, unfolded, encoded words left as they are (compat32 decodes nothing)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return " ".join(str(msg["List-Id"]).split())


@pytest.mark.parametrize(
    ("value", "wire", "decoded"),
    [
        ("finews 财经新闻 digest <digest.news.example.org>",
         "=?utf-8?b?ZmluZXdzIOi0oue7j+aWsOmXuyBkaWdlc3Q=?= <digest.news.example.org>",
         "finews 财经新闻 digest <digest.news.example.org>"),
        ("finews.com: daily <daily.finews.example>", '"finews.com: daily" <daily.finews.example>',
         '"finews.com: daily" <daily.finews.example>'),
        ("<digest.finews.example>", "<digest.finews.example>", "<digest.finews.example>"),
        ("财经" * 40 + " <digest.finews.example>", None, "财经" * 40 + " <digest.finews.example>"),
    ],
)
def test_list_id_encodes_only_its_phrase_and_keeps_the_id_plain(value: str, wire: str | None, decoded: str) -> None:
    """RFC 2919: list filters (Gmail's list:, procmail, Sieve) match the <id>, so it is never inside an encoded word."""
    raw = make(headers={"List-Id": value})
    sent = list_id_on_the_wire(raw)
    assert sent.isascii()
    assert sent.endswith(" <" + value.rpartition("<")[2]) or sent == "<" + value.rpartition("<")[2]
    if wire is not None:
        assert sent == wire
    assert parse(raw)["List-Id"] == decoded
    list_id = b"<" + value.rpartition("<")[2].encode()
    assert any(line.endswith(b" " + list_id) or line == b"List-Id: " + list_id for line in raw.split(b"\r\n")), \
        "the id ends a line of its own header, after the phrase's last word"


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


def stock_bytes(msg: email.message.EmailMessage) -> bytes:
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=MESSAGE_POLICY).flatten(msg)
    return out.getvalue()


def built(**overrides: object) -> email.message.EmailMessage:
    fields: dict[str, object] = {
        "subject": "finews 每日精选 · 2022年4月20日 · 37篇 with a rather long tail that needs folding, surely",
        "html": "<p>中央深改委会议</p>\n" * 300, "text": "中央深改委会议\n" * 100,
        "sender": "finews 财经 <digest@example.com>", "to": "张三 <reader@example.org>",
        "reply_to": "J. Smith <editors@example.com>", "message_id": "<digest.20220420.abc@example.com>", "date": SENT,
        "headers": {"List-Unsubscribe": "<https://news.example.com/unsubscribe/" + "t" * 90 + ">, <mailto:u@example.com>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    }
    fields.update(overrides)
    return build_message(**fields)  # type: ignore[arg-type]


def test_fast_serialisation_gives_the_stdlib_generator_bytes() -> None:
    msg = built()
    assert msg.as_bytes() == stock_bytes(msg) == bytes(msg)
    assert msg.as_bytes(policy=MESSAGE_POLICY) == stock_bytes(msg)
    lines = msg.as_bytes().split(b"\r\n")
    assert all(len(line) <= 78 for line in lines if not line.startswith(b"List-Unsubscribe: "))


def test_changes_after_building_are_serialised() -> None:
    msg = built()
    msg["X-Later"] = "added after build"
    assert b"X-Later: added after build\r\n" in msg.as_bytes()
    assert msg.as_bytes() == stock_bytes(msg)
    parts = list(msg.iter_parts())
    parts[1].set_content("<p>replaced</p>", subtype="html")
    raw = msg.as_bytes()
    assert raw == stock_bytes(msg)
    assert parse(raw).get_body(("html",)).get_content() == "<p>replaced</p>\r\n"  # type: ignore[union-attr]


def test_headers_read_back_as_given() -> None:
    msg = parse(built().as_bytes())
    assert msg["Subject"] == "finews 每日精选 · 2022年4月20日 · 37篇 with a rather long tail that needs folding, surely"
    assert msg["Reply-To"].addresses[0].display_name == "J. Smith"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Unsubscribe"].startswith("<https://news.example.com/unsubscribe/tttt")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_any_display_name_round_trips(name: str) -> None:
    msg = parse(make(to=format_address(name, "reader@example.org")))
    address = msg["To"].addresses[0]
    assert address.addr_spec == "reader@example.org"
    if len(header_text(name).encode("utf-8", "surrogatepass")) <= 45:  # one encoded word
        assert address.display_name == header_text(name)
    else:  # Python's parser adds a space between encoded words; other readers drop it (RFC 2047)
        assert address.display_name.replace(" ", "") == header_text(name).replace(" ", "")


@pytest.mark.parametrize("size", [0, 1, 2, 3, 54, 55, 56, 57, 58, 113, 114, 115, 5000])
def test_bodies_of_every_length_round_trip_in_76_column_lines(size: int) -> None:
    body = ("a" * size).replace("a" * 10, "数据\n" * 2, size // 20)
    raw = make(text=body)
    part = parse(raw).get_body(("plain",))
    assert part is not None
    expected = body if body.endswith("\n") else body + "\n"
    assert part.get_content() == expected.replace("\n", "\r\n")
    encoded = raw.split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1].split(b"\r\n\r\n", 1)[0]
    assert all(len(line) == 76 for line in encoded.split(b"\r\n")[:-1])
    assert 0 < len(encoded.split(b"\r\n")[-1]) <= 76


@settings(max_examples=150, deadline=None)
@given(
    head=st.text(max_size=300), middle=st.text(max_size=3000), tail=st.text(max_size=300),
    values=st.lists(st.text(max_size=80), min_size=3, max_size=3), pad_first=st.booleans(),
)
def test_prepared_body_encodes_exactly_like_the_plain_path(head: str, middle: str, tail: str, values: list[str],
                                                           pad_first: bool) -> None:
    marks = ("\x01A\x01", "\x01B\x01", "\x01C\x01")
    pad = "\x01P\x01"
    clean = [v.replace("\x01", "") for v in (head, middle, tail)]
    template = (f"{clean[0]}{marks[0]}{pad if pad_first else ''}{clean[1]}{marks[1]}x{marks[2]}{clean[2]}"
                .replace("\r", "\n"))
    body = PreparedBody(template, marks, pad)
    filled = body.fill(dict(zip(marks, [v.replace("\x01", "") for v in values], strict=True)))
    expected = template if template.endswith("\n") else template + "\n"
    for mark, value in zip(marks, values, strict=True):
        expected = expected.replace(mark, value.replace("\x01", ""))
    assert str(filled).replace(" ", "") == expected.replace(pad, "").replace(" ", "")
    wire = filled.wire_form()
    if wire is not None:
        assert wire == _base64_body(str(filled))
        assert base64.b64decode(wire) == _crlf(str(filled))
    else:
        assert any("\n" in v or "\r" in v for v in values)


def _crlf(text: str) -> bytes:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return (text if text.endswith("\n") else text + "\n").replace("\n", "\r\n").encode("utf-8")


def test_prepared_body_pads_so_the_rest_is_shared() -> None:
    template = "头" * 30 + "<GREET><br><PAD>" + "".join(chr(0x4E00 + i) for i in range(4000)) + "<UNSUB>尾\n"
    body = PreparedBody(template, ("<GREET>", "<UNSUB>"), "<PAD>")
    first = body.fill({"<GREET>": "张三，您好！", "<UNSUB>": "https://u.example/1"})
    second = body.fill({"<GREET>": "A much longer name than that，您好！", "<UNSUB>": "https://u.example/22"})
    for filled in (first, second):
        assert filled.wire_form() == _base64_body(str(filled))
        offset = len(str(filled).split("<br>")[0].encode()) + len(b"<br>")
        padded = len(str(filled).split("<br>")[1]) - len(str(filled).split("<br>")[1].lstrip(" "))
        assert (offset + padded) % 57 == 0
    # Both messages share every line of the long stretch after the pad.
    shared = set(first.wire_form().split("\r\n")) & set(second.wire_form().split("\r\n"))  # type: ignore[union-attr]
    assert len(shared) >= 4000 * 3 // 57 - 2


def test_a_value_with_a_line_break_falls_back_to_plain_encoding() -> None:
    body = PreparedBody("a<X>b<PAD>c\n", ("<X>",), "<PAD>")
    filled = body.fill({"<X>": "line\r\nbreak"})
    assert filled.wire_form() is None
    raw = make(text=filled)
    assert parse(raw).get_body(("plain",)).get_content().startswith("aline\r\nbreakb")  # type: ignore[union-attr]


def test_message_from_a_prepared_body_equals_one_from_the_plain_string() -> None:
    body = PreparedBody("<p>" + "数据" * 900 + "</p>\n<G><br><P>" + "更多" * 3000 + "<U>\n", ("<G>", "<U>"), "<P>")
    filled = body.fill({"<G>": "读者，您好！", "<U>": "https://u.example/unsubscribe/abc"})
    assert make(html=filled) == make(html=str(filled))
    assert type(str(filled)) is str and filled.wire_form() is not None
