"""The test send: the real digest message (a subscriber's selection, List headers, DKIM) to one address, ledger untouched."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner
from smtp_fakes import SECRET, Sink, make_collection, make_config

from finews_feeds.cli import cli
from finews_feeds.errors import DigestError, SubscriberError
from finews_feeds.mail.message import message_id
from finews_feeds.mail.store import Store
from finews_feeds.mail.testsend import send_test
from finews_feeds.mail.tokens import read_token

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/finews.sqlite3"
    with Store.open(url) as store:
        store.add_subscriber("ann@example.org", name="王小明", categories=("yicai",), confirmed=True, now=T0)
        store.add_subscriber("bob@example.org", tags=("A股",), confirmed=True, now=T0)
    return url


def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                            capture_output=True).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.iter_parts()
    return str(text.get_content()), str(html.get_content())


def test_a_test_send_is_the_subscribers_real_message_to_one_address_and_leaves_the_ledger_alone(
        sink: Sink, port: int, db: str, tmp_path: Path) -> None:
    key, record = dkim_key(tmp_path)
    config = make_config(port, db, smtp={"dkim_selector": "s1", "dkim_domain": "news.example.org",
                                         "dkim_key_file": str(key)})
    report = send_test(config, DAY, "Editor@Example.org", T0, as_email="ANN@example.org",
                       collect=lambda _config: make_collection())
    [received] = sink.messages
    assert (received.mail_from, received.rcpt_tos) == ("digest@news.example.org", ["Editor@example.org"])
    msg = received.message
    # ann chose yicai: one article of the three, and her name in the greeting.
    assert msg["Subject"] == "finews 财经新闻 每日精选 · 2022年4月20日 · 1篇"
    assert msg["To"] == "王小明 <Editor@example.org>"
    text, html = parts(msg)
    assert "王小明，您好！" in text and "一财快讯：人民币汇率" in text and "央行开展逆回购操作" not in text
    assert "本邮件发送至 Editor@example.org。" in text and "本邮件发送至 Editor@example.org。" in html
    # The unsubscribe link is the test address's: following it in the test never unsubscribes ann.
    token = msg["List-Unsubscribe"].split("/unsubscribe/", 1)[1].split(">", 1)[0]
    assert read_token(SECRET, "unsubscribe", token) == "editor@example.org"
    assert f"https://subscribe.example.org/unsubscribe/{token}" in text
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "finews 财经新闻 digest <digest.news.example.org>"
    # A Message-ID of its own: the real digest, later, is not taken for a copy of the test.
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@news.example.org>")
    assert msg["Message-ID"] not in (message_id(DAY, "editor@example.org", "news.example.org"),
                                     message_id(DAY, "ann@example.org", "news.example.org"))
    assert report.message_id == msg["Message-ID"]
    assert dkim.verify(received.data, dnsfunc=lambda name, timeout=5: record
                       if name == b"s1._domainkey.news.example.org." else b"")
    with Store.open(db) as store:
        assert store.ledger(DAY) == [] and store.run_info(DAY) is None
        assert [s.status for s in store.list_subscribers()] == ["active", "active"]
    assert report.summary() == (f"test: the 2022-04-20 digest as ann@example.org (1 articles) sent to "
                                f"Editor@example.org, Message-ID {msg['Message-ID']}; no subscriber's ledger changed")


def test_without_as_the_test_has_everything_and_no_name(sink: Sink, port: int, db: str) -> None:
    send_test(make_config(port, db), DAY, "editor@example.org", T0, collect=lambda _config: make_collection())
    msg = sink.messages[0].message
    assert msg["Subject"] == "finews 财经新闻 每日精选 · 2022年4月20日 · 3篇"
    assert msg["To"] == "editor@example.org"
    assert parts(msg)[0].splitlines()[3].rstrip() == "您好！"  # (the pad after it keeps base64 lines shared)


def test_an_unknown_subscriber_or_an_empty_selection_sends_nothing(sink: Sink, port: int, db: str) -> None:
    config = make_config(port, db)
    with pytest.raises(SubscriberError, match=r"^nobody@example\.org is not a subscriber$"):
        send_test(config, DAY, "editor@example.org", T0, as_email="nobody@example.org",
                  collect=lambda _config: make_collection())
    with pytest.raises(DigestError, match=r"no digest of 2022-04-21 for bob@example\.org's categories and tags"):
        send_test(config, date(2022, 4, 21), "editor@example.org", T0, as_email="bob@example.org",
                  collect=lambda _config: make_collection())
    assert sink.messages == []


def cli_config(tmp_path: Path, port: int, db: str) -> Path:
    path = tmp_path / "finews.toml"
    path.write_text(
        f'[site]\nsource = "{ROOT / "demo-site"}"\n[feeds]\noutput = "{tmp_path / "feeds"}"\n'
        f'[database]\nurl = "{db}"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        '[web]\npublic_url = "https://subscribe.example.org"\n[digest]\nfrom = "finews <digest@news.example.org>"\n',
        encoding="utf-8")
    return path


def test_digest_send_to_sends_one_test_message_from_the_command_line(
        sink: Sink, port: int, db: str, tmp_path: Path) -> None:
    config = cli_config(tmp_path, port, db)
    result = CliRunner().invoke(cli, ["--config", str(config), "digest", "--date", "2022-04-20",
                                      "--send-to", "editor@example.org", "--as", "bob@example.org"],
                                env={"FINEWS_SECRET_KEY": SECRET})
    assert result.exit_code == 0, result.output
    [received] = sink.messages
    msg = message_from_bytes(received.data, policy=policy.default)
    assert received.rcpt_tos == ["editor@example.org"]
    assert result.stdout.splitlines()[-1] == (
        f"test: the 2022-04-20 digest as bob@example.org ({msg['Subject'].split(' · ')[-1][:-1]} articles) sent to "
        f"editor@example.org, Message-ID {msg['Message-ID']}; no subscriber's ledger changed")
    with Store.open(db) as store:
        assert store.ledger(DAY) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--as", "ann@example.org"], "--as needs --send-to ADDRESS"),
    (["--send", "--send-to", "e@example.org"], "--send and --send-to are separate steps"),
])
def test_send_to_options_that_do_not_go_together_are_usage_errors(
        args: list[str], message: str, tmp_path: Path, db: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(cli_config(tmp_path, 25, db)), "digest", "--date", "2022-04-20",
                                      *args], env={"FINEWS_SECRET_KEY": SECRET})
    assert result.exit_code == 2
    assert message in result.stderr


def test_an_unknown_subscriber_on_the_command_line_is_one_error_line_and_exit_7(
        sink: Sink, port: int, db: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(cli_config(tmp_path, port, db)), "digest", "--date",
                                      "2022-04-20", "--send-to", "e@example.org", "--as", "x@example.org"],
                                env={"FINEWS_SECRET_KEY": SECRET})
    assert result.exit_code == 7
    assert result.stderr.splitlines()[0] == "error: x@example.org is not a subscriber"
    assert sink.messages == []
