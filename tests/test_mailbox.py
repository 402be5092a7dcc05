"""The bounces mailbox, read over IMAP from a real dovecot the tests start (plain, STARTTLS, IMAPS)."""

from __future__ import annotations

import email.message
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from imap_server import PASSWORD, USER, Imap, dovecot_available, running_dovecot
from smtp_fakes import SECRET, make_config

from finews_feeds.config import Config
from finews_feeds.errors import MailboxError
from finews_feeds.mail.mailbox import SKIPPED, poll_mailbox
from finews_feeds.mail.store import Store
from finews_feeds.mail.tokens import make_token

pytestmark = pytest.mark.skipif(not dovecot_available(),
                                reason="dovecot (dovecot-imapd) or openssl is not installed; .ci/run installs them")

DATA = Path(__file__).parent / "data" / "reports"
T0 = datetime(2022, 4, 21, 4, 0, tzinfo=UTC)
SUBSCRIBERS = ("ann@example.org", "carol@example.net", "bob.nobody@gmail.com", "erin@hotmail.com", "dave@yahoo.com",
               "frank@example.com")


@pytest.fixture(scope="module")
def imap() -> Iterator[Imap]:
    with running_dovecot() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'db.sqlite3'}") as opened:
        for address in SUBSCRIBERS:
            opened.add_subscriber(address, confirmed=True, now=T0 - timedelta(days=5))
        yield opened


def mailbox_config(imap: Imap, security: str = "none", **bounces: Any) -> Config:
    port = {"none": imap.port, "starttls": imap.port, "tls": imap.tls_port}[security]
    values = {"address": "bounces@news.example.org", "imap_host": "127.0.0.1", "imap_port": port,
              "imap_security": security, "imap_username": USER, "imap_timeout": 10.0, **bounces}
    config = make_config(25, bounces=values, smtp={"bounce_after": 1})
    return config.__class__(**{**config.__dict__, "imap_password": PASSWORD})


def empty(imap: Imap, *folders: str) -> None:
    conn = imap.client()
    try:
        for folder in folders:
            status, count = conn.select(f'"{folder}"')
            if status == "OK" and int(count[0] or 0):
                conn.store("1:*", "+FLAGS", "(\\Deleted)")
                conn.expunge()
    finally:
        conn.logout()


def unsubscribe_request(token: str, message_id: str) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = "Frank <frank@example.com>"
    msg["To"] = "leave@news.example.org"
    msg["Subject"] = f"unsubscribe {token}"
    msg["Message-ID"] = message_id
    msg.set_content("\n")
    return msg.as_bytes()


OUT_OF_OFFICE = (b"From: Ann <ann@example.org>\r\nTo: bounces+ann=example.org@news.example.org\r\n"
                 b"Subject: Auto: out of office\r\nMessage-ID: <ooo1@example.org>\r\n\r\nBack on Monday.\r\n")


def test_a_poll_acts_on_every_report_moves_them_and_leaves_the_rest_for_a_person(imap: Imap, store: Store) -> None:
    empty(imap, "INBOX", "Processed")
    samples = ["postfix-user-unknown.eml", "exim-unrouteable.eml", "gmail-address-not-found.eml", "hotmail-jmrp.eml",
               "yahoo-arf.eml", "postfix-delayed.eml"]
    imap.deliver(*[(DATA / name).read_bytes() for name in samples], OUT_OF_OFFICE,
                 unsubscribe_request(make_token(SECRET, "unsubscribe", "frank@example.com"), "<u1@example.com>"))
    config = mailbox_config(imap, imap_done_folder="Processed")
    report = poll_mailbox(config, store, now=lambda: T0)
    assert (report.read, report.skipped, report.failed) == (8, 1, 0)
    assert dict(report.outcomes) == {"hard: bounced": 3, "complaint: unsubscribed": 2, "delayed: recorded": 1,
                                     "unsubscribe: unsubscribed": 1}
    statuses = {s.email: s.status for s in store.list_subscribers()}
    assert statuses == {"ann@example.org": "bounced", "carol@example.net": "bounced", "bob.nobody@gmail.com": "bounced",
                        "erin@hotmail.com": "unsubscribed", "dave@yahoo.com": "unsubscribed",
                        "frank@example.com": "unsubscribed"}
    inbox = imap.folder("INBOX")
    assert len(inbox) == 1 and b"out of office" in inbox[0][1]
    assert SKIPPED in inbox[0][0] and "\\Seen" not in inbox[0][0]
    processed = imap.folder("Processed")
    assert len(processed) == 7 and all("\\Seen" in flags for flags, _ in processed)
    # Nothing new: the next poll reads nothing, and the skipped message is passed over.
    again = poll_mailbox(config, store, now=lambda: T0)
    assert (again.read, again.skipped) == (0, 0)


def test_a_report_read_twice_counts_once(imap: Imap, store: Store) -> None:
    empty(imap, "INBOX")
    data = (DATA / "postfix-expired.eml").read_bytes()
    config = mailbox_config(imap, soft_weight=0.5)
    imap.deliver(data)
    assert dict(poll_mailbox(config, store, now=lambda: T0).outcomes) == {"soft: recorded": 1}
    # As if the last poll had died between the store's commit and flagging the message: it is back, unseen.
    imap.deliver(data)
    assert dict(poll_mailbox(config, store, now=lambda: T0).outcomes) == {"soft: duplicate": 1}
    assert [e["weight"] for e in store.subscriber_events("ann@example.org")] == [0.5]
    assert store.get_subscriber("ann@example.org").status == "active"
    assert [("\\Seen" in flags) for flags, _ in imap.folder("INBOX")] == [True, True]


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_the_mailbox_is_read_over_tls(imap: Imap, store: Store, security: str) -> None:
    empty(imap, "INBOX")
    imap.deliver((DATA / "yahoo-arf.eml").read_bytes())
    report = poll_mailbox(mailbox_config(imap, security), store, now=lambda: T0, context=imap.context())
    assert dict(report.outcomes) == {"complaint: unsubscribed": 1}


def test_a_certificate_nobody_vouches_for_is_refused(imap: Imap, store: Store) -> None:
    with pytest.raises(MailboxError, match=r"cannot connect to the bounces mailbox at 127\.0\.0\.1:\d+ \(tls\)"):
        poll_mailbox(mailbox_config(imap, "tls"), store)


def test_a_wrong_password_is_an_error_naming_the_login(imap: Imap, store: Store) -> None:
    config = mailbox_config(imap)
    config = config.__class__(**{**config.__dict__, "imap_password": "wrong"})
    with pytest.raises(MailboxError, match="refused the login of 'bounces'") as caught:
        poll_mailbox(config, store)
    assert caught.value.hint == "check bounces.imap_username and FINEWS_IMAP_PASSWORD"


def test_no_mailbox_configured() -> None:
    with pytest.raises(MailboxError, match=r"bounces\.imap_host is not set"):
        poll_mailbox(make_config(25), None)  # type: ignore[arg-type]


def write_config(tmp_path: Path, imap: Imap, db: str) -> Path:
    conf = tmp_path / "finews.toml"
    conf.write_text(f'[database]\nurl = "{db}"\n[bounces]\naddress = "bounces@news.example.org"\n'
                    f'imap_host = "127.0.0.1"\nimap_port = {imap.port}\nimap_security = "none"\n'
                    f'imap_username = "{USER}"\nimap_done_folder = "Processed"\npoll_minutes = 1\n', encoding="utf-8")
    return conf


def test_the_bounces_command_reads_the_mailbox_once(imap: Imap, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from finews_feeds.cli import cli

    empty(imap, "INBOX", "Processed")
    db = f"sqlite:///{tmp_path}/db.sqlite3"
    with Store.open(db) as store:
        store.add_subscriber("dave@yahoo.com", confirmed=True, now=T0)
    imap.deliver((DATA / "yahoo-arf.eml").read_bytes(), OUT_OF_OFFICE)
    conf = write_config(tmp_path, imap, db)
    env = {"FINEWS_SECRET_KEY": SECRET, "FINEWS_IMAP_PASSWORD": PASSWORD, "FINEWS_CONFIG": None}
    result = CliRunner().invoke(cli, ["--config", str(conf), "bounces", "--once"], env=env)
    assert (result.exit_code, result.output) == (
        0, "bounces mailbox: read 2, left for a person 1, failed 0 (complaint: unsubscribed 1)\n")
    with Store.open(db) as store:
        assert store.get_subscriber("dave@yahoo.com").status == "unsubscribed"
    wrong = CliRunner().invoke(cli, ["--config", str(conf), "bounces", "--once"],
                               env={**env, "FINEWS_IMAP_PASSWORD": "nope"})
    assert wrong.exit_code == 10
    assert wrong.output.splitlines() == [
        f"error: the bounces mailbox at 127.0.0.1:{imap.port} refused the login of 'bounces': "
        "[AUTHENTICATIONFAILED] Authentication failed.",
        "hint: check bounces.imap_username and FINEWS_IMAP_PASSWORD"]


def test_the_daemon_reads_the_mailbox_at_start_and_shows_it_in_healthz(
        imap: Imap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smtp_fakes import free_port
    from test_daemon import Daemon, make_site
    from test_daemon import write_config as daemon_config

    empty(imap, "INBOX", "Processed")
    db = f"sqlite:///{tmp_path}/var/finews.sqlite3"
    with Store.open(db) as store:
        store.add_subscriber("ann@example.org", confirmed=True, now=T0)
    imap.deliver((DATA / "postfix-user-unknown.eml").read_bytes())
    port = free_port()
    conf = daemon_config(tmp_path, make_site(tmp_path), free_port(), db, port)
    conf.write_text(conf.read_text(encoding="utf-8") + (
        f'\n[bounces]\naddress = "bounces@news.example.org"\nimap_host = "127.0.0.1"\n'
        f'imap_port = {imap.port}\nimap_security = "none"\nimap_username = "{USER}"\npoll_minutes = 1\n'),
        encoding="utf-8")
    monkeypatch.setenv("FINEWS_IMAP_PASSWORD", PASSWORD)
    daemon = Daemon(conf, port)
    try:
        assert wait_for(lambda: (daemon.health() or {}).get("last_bounces")), daemon.output()
        health = daemon.health() or {}
        assert health["last_bounces"]["ok"] is True, health
        assert health["last_bounces"]["outcomes"] == {"hard: recorded": 1}
        assert daemon.stop()[0] == 0
    finally:
        daemon.kill()
    with Store.open(db) as store:
        assert [e["kind"] for e in store.subscriber_events("ann@example.org")] == ["hard"]
    assert [("\\Seen" in flags) for flags, _ in imap.folder("INBOX")] == [True]


def wait_for(predicate: Any, timeout: float = 60.0) -> bool:
    from smtp_fakes import wait_until

    return bool(wait_until(predicate, timeout=timeout))
