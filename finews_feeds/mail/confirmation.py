"""The subscription mails, rendered from templates as the digest is: the confirmation mail of the
double opt-in, and the mail with the link to the manage page (what an active subscriber who
submits the subscribe form again gets).

``confirm.html.j2`` / ``manage.html.j2`` (CSS inlined by premailer, ``lang`` and charset set)
and ``confirm.txt.j2`` / ``manage.txt.j2`` are looked for in ``digest.templates`` first, then
in the package, so an operator overrides them the way they override the digest. The subjects
are ``digest.confirm_subject`` and ``digest.manage_subject``. Everything here is pure: the
caller signs the links and builds and sends the message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2

from ..config import Config
from ..errors import DigestError
from ..models import Site
from .digest import inline_css, make_environment, template_dirs, tidy_text
from .message import header_text

HTML_TEMPLATE = "confirm.html.j2"
TEXT_TEMPLATE = "confirm.txt.j2"
MANAGE_HTML_TEMPLATE = "manage.html.j2"
MANAGE_TEXT_TEMPLATE = "manage.txt.j2"
#: How long a confirm link stays valid, in days (the web app refuses older tokens).
VALID_DAYS = 7

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class ConfirmView:
    """What the confirm templates see (as ``c``)."""

    site_title: str
    site_url: str
    language: str
    subject: str
    greeting: str
    email: str
    confirm_url: str
    #: The subscriber's manage page (signed link): choices, daily or weekly, pause, their data.
    manage_url: str
    #: The categories and tags asked for, for the text; "" for everything.
    selection_text: str
    valid_days: int
    postal_address: str


@dataclass(frozen=True)
class ConfirmationMail:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class ManageView:
    """What the manage-link templates see (as ``m``)."""

    site_title: str
    site_url: str
    language: str
    subject: str
    greeting: str
    email: str
    manage_url: str
    postal_address: str


class ConfirmationRenderer:
    """Renders confirmation and manage-link mails; the templates are loaded once. Safe to share
    between threads (each render makes its own premailer)."""

    def __init__(self, config: Config, site: Site) -> None:
        self.config = config
        self.site = site
        env = make_environment(config.digest.templates)
        try:
            self.html_template = env.get_template(HTML_TEMPLATE)
            self.text_template = env.get_template(TEXT_TEMPLATE)
            self.manage_html_template = env.get_template(MANAGE_HTML_TEMPLATE)
            self.manage_text_template = env.get_template(MANAGE_TEXT_TEMPLATE)
        except jinja2.TemplateNotFound as exc:
            raise DigestError(
                f"confirmation template {exc.name} not found in {template_dirs(config.digest.templates)}",
                hint="leave it out of digest.templates to use the bundled one",
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise DigestError(f"confirmation template {exc.filename or exc.name}, line {exc.lineno}: "
                              f"{exc.message}") from None

    def view(self, email: str, name: str, confirm_url: str, categories: Sequence[str] = (),
             tags: Sequence[str] = (), manage_url: str = "") -> ConfirmView:
        site = self.site
        names = [site.category_title(c) for c in categories] + [f"#{t}" for t in tags]
        return ConfirmView(
            site_title=site.title,
            site_url=site.url + "/",
            language=site.language,
            subject=header_text(self.config.digest.confirm_subject.format(site_title=site.title)),
            greeting=_greeting(name),
            email=header_text(email),
            confirm_url=confirm_url,
            manage_url=manage_url,
            selection_text="、".join(names),
            valid_days=VALID_DAYS,
            postal_address=self.config.digest.postal_address.strip(),
        )

    def render(self, email: str, name: str, confirm_url: str, categories: Sequence[str] = (),
               tags: Sequence[str] = (), manage_url: str = "") -> ConfirmationMail:
        """The subject, the HTML (CSS inlined) and the text of the mail to ``email``."""
        view = self.view(email, name, confirm_url, categories, tags, manage_url)
        return _render(self.html_template, self.text_template, "confirmation", view.subject, c=view)

    def manage_view(self, email: str, name: str, manage_url: str) -> ManageView:
        site = self.site
        return ManageView(
            site_title=site.title,
            site_url=site.url + "/",
            language=site.language,
            subject=header_text(self.config.digest.manage_subject.format(site_title=site.title)),
            greeting=_greeting(name),
            email=header_text(email),
            manage_url=manage_url,
            postal_address=self.config.digest.postal_address.strip(),
        )

    def render_manage(self, email: str, name: str, manage_url: str) -> ConfirmationMail:
        """The mail with the link to ``email``'s manage page: subject, HTML (CSS inlined) and text."""
        view = self.manage_view(email, name, manage_url)
        return _render(self.manage_html_template, self.manage_text_template, "manage-link", view.subject, m=view)


def _greeting(name: str) -> str:
    # A name from a web form: control characters and header-breaking text removed, length bounded.
    name = header_text(_CONTROL.sub("", name))[:80]
    return f"{name}，您好！" if name else "您好！"


def _render(html_template: jinja2.Template, text_template: jinja2.Template, what: str, subject: str,
            **context: object) -> ConfirmationMail:
    """Both parts of one mail from its templates: the HTML with its CSS inlined, the text tidied."""
    try:
        html = html_template.render(**context)
        text = text_template.render(**context)
    except jinja2.TemplateError as exc:
        raise DigestError(f"{what} template failed: {exc}") from None
    return ConfirmationMail(subject=subject, html=inline_css(html), text=tidy_text(text))
