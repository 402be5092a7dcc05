"""The confirmation mail: rendered from templates (HTML with CSS inlined, a text part), overridable like the digest."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import lxml.html
import pytest
from smtp_fakes import SECRET, Sink, make_config, make_site

from finews_feeds.config import Config
from finews_feeds.errors import ConfigError, DigestError
from finews_feeds.mail.confirmation import ConfirmationRenderer
from finews_feeds.mail.delivery import send_confirmation
from finews_feeds.mail.mailer import transport_from_config
from finews_feeds.mail.store import Store
from finews_feeds.mail.tokens import make_token, read_token

T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)
LINK = "https://subscribe.example.org/confirm/" + make_token(SECRET, "confirm", "new@example.org")


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    """A site whose title is only in its _config.yml (site.title unset)."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "_config.yml").write_text("title: 财经早知道\nurl: https://zao.example.org\n", encoding="utf-8")
    return folder


def config_for(port: int, site_dir: Path, **digest: str) -> Config:
    return make_config(port, site={"source": str(site_dir), "title": None, "url": None, "language": "zh-Hans"},
                       digest={"postal_address": "上海市黄浦区 1 号", **digest})


def mailed(port: int, sink: Sink, config: Config, tmp_path: Path) -> EmailMessage:
    with Store.open(f"sqlite:///{tmp_path}/finews.sqlite3") as store, transport_from_config(config) as smtp:
        store.add_subscriber("new@example.org", name="李雷", categories=("cailianshe",), tags=("A股",), now=T0)
        send_confirmation(config, store, smtp, "new@example.org", T0)
    [received] = sink.messages
    return received.message


def test_the_confirmation_mail_has_the_site_title_charset_lang_inlined_css_and_a_text_part(
        sink: Sink, port: int, site_dir: Path, tmp_path: Path) -> None:
    msg = mailed(port, sink, config_for(port, site_dir), tmp_path)
    assert msg["Subject"] == "请确认订阅 财经早知道 每日精选"
    assert msg.get_content_type() == "multipart/alternative"
    text_part, html_part = msg.iter_parts()
    assert [p["Content-Type"] for p in (text_part, html_part)] == ['text/plain; charset="utf-8"',
                                                                    'text/html; charset="utf-8"']
    token = str(text_part.get_content()).split("https://subscribe.example.org/confirm/", 1)[1].split()[0]
    link = f"https://subscribe.example.org/confirm/{token}"
    manage_token = str(text_part.get_content()).split("https://subscribe.example.org/manage/", 1)[1].split()[0]
    manage = f"https://subscribe.example.org/manage/{manage_token}"
    assert read_token(SECRET, "manage", manage_token) == "new@example.org"
    assert str(text_part.get_content()).replace("\r\n", "\n") == (
        "财经早知道 · 每日精选\n\n李雷，您好！\n\n请打开下面的链接，确认订阅财经早知道每日精选（cailianshe、#A股）：\n\n"
        f"{link}\n\n链接 7 天内有效。如果您没有订阅，请忽略这封邮件，我们不会再给您发信。\n\n"
        f"订阅后，您可以随时在这里更改栏目和标签、改为每周一封、暂停或退订：\n{manage}\n\n--\n"
        "本邮件发送至 new@example.org。\n财经早知道 · 上海市黄浦区 1 号\n"
    )
    html = str(html_part.get_content())
    doc = lxml.html.fromstring(html)
    assert doc.get("lang") == "zh-Hans"
    assert doc.xpath("//meta/@charset") == ["utf-8"]
    assert doc.findtext(".//title") == "请确认订阅 财经早知道 每日精选"
    button = doc.xpath("//a[@class='btn']")[0]
    assert (button.get("href"), button.text) == (link, "确认订阅")
    assert [(a.get("href"), a.text) for a in doc.xpath("//a[starts-with(@href, $m)]", m=manage)] == [(manage, "管理订阅")]
    assert "background-color:#b3261e" in button.get("style")  # inlined by premailer
    # Only the phone layout's media query is left in a <style>.
    assert [s.text.split("{")[0].strip() for s in doc.xpath("//style")] == ["@media only screen and (max-width: 480px)"]
    assert "李雷，您好！" in doc.text_content() and "上海市黄浦区 1 号" in doc.text_content()


def test_digest_templates_overrides_the_confirmation_mail_and_confirm_subject_its_subject(
        sink: Sink, port: int, site_dir: Path, tmp_path: Path) -> None:
    custom = tmp_path / "templates"
    custom.mkdir()
    (custom / "confirm.txt.j2").write_text("{{ c.greeting }} {{ c.site_title }}：{{ c.confirm_url }}\n", encoding="utf-8")
    config = config_for(port, site_dir, templates=str(custom), confirm_subject="{site_title}：请确认")
    msg = mailed(port, sink, config, tmp_path)
    assert msg["Subject"] == "财经早知道：请确认"
    text_part, html_part = msg.iter_parts()
    assert str(text_part.get_content()).startswith("李雷，您好！ 财经早知道：https://subscribe.example.org/confirm/")
    assert 'class="btn"' in str(html_part.get_content())  # the bundled HTML template still serves


def test_a_broken_confirm_template_or_subject_is_an_error_naming_it(tmp_path: Path) -> None:
    custom = tmp_path / "templates"
    custom.mkdir()
    (custom / "confirm.html.j2").write_text("<p>\n{% if %}</p>\n", encoding="utf-8")
    with pytest.raises(DigestError, match=r"confirmation template .*confirm.html.j2, line 2"):
        ConfirmationRenderer(make_config(25, digest={"templates": str(custom)}), make_site())
    with pytest.raises(ConfigError, match=r"digest.confirm_subject = '\{title\}': bad template field"):
        make_config(25, digest={"confirm_subject": "{title}"})


def test_the_rendered_link_and_name_are_escaped_in_the_html(tmp_path: Path) -> None:
    mail = ConfirmationRenderer(make_config(25), make_site()).render(
        "a@example.org", "<b>Eve</b>\r\nBcc: x", "https://s.example/confirm/T?a=1&b=2")
    assert "&lt;b&gt;Eve&lt;/b&gt; Bcc: x，您好！" in mail.html
    assert 'href="https://s.example/confirm/T?a=1&amp;b=2"' in mail.html
    assert "<b>Eve</b> Bcc: x，您好！" in mail.text
