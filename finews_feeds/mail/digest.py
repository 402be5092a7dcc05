"""The digest: a day's posts (or, for weekly subscribers, a week's, grouped by day then category)
as an inlined-CSS HTML email and its text part.

Rendering (Jinja) and CSS inlining (premailer) are slow, so they run once per *variant*, the
digest for one category/tag selection; a subscriber's own fields (greeting, address, unsubscribe
link) are placeholders in the variant, replaced by :meth:`Variant.personalize` with
already-escaped values (the variant is split at them once; each subscriber costs a join).
premailer is not thread-safe, so each render makes its own :class:`premailer.Premailer`, and a
:class:`DigestRenderer` belongs to one thread.

The only HTML taken from a post (the lead paragraphs of the digest's first article) passes the
nh3 allow-list; titles and summaries are plain text, escaped by Jinja's autoescape.
"""

from __future__ import annotations

import html as html_lib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from importlib import resources
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit
from zoneinfo import ZoneInfo

import jinja2
import lxml.html
import nh3
from markupsafe import Markup
from premailer import Premailer

from ..config import Config
from ..errors import ConfigError, DigestError
from ..files import atomic_write
from ..models import ContentSource, Post, Posts, Site
from ..site.collector import collect_site
from ..site.jekyll import resolve_site
from ..urls import web_url
from . import archive
from .archive import ArchiveEntry, ArchiveOptions, Headline
from .message import PreparedBody, build_message, domain_of, format_address, header_text, message_id

log = logging.getLogger(__name__)

#: The bundled templates, inside the package (an operator's ``digest.templates`` folder is searched
#: first; the project's top-level ``templates/`` holds copies to start one from).
BUNDLED_TEMPLATES = "templates/digest"
HTML_TEMPLATE = "digest.html.j2"
TEXT_TEMPLATE = "digest.txt.j2"

#: Per-subscriber fields, left in the variant and replaced by :meth:`Variant.personalize`.
#: Letters and underscores only, so premailer and lxml pass them through untouched, in text
#: and in attribute values alike.
GREETING = "__FINEWS_GREETING__"
SENT_TO = "__FINEWS_SENT_TO__"
UNSUBSCRIBE_URL = "__FINEWS_UNSUBSCRIBE_URL__"
MANAGE_URL = "__FINEWS_MANAGE_URL__"
PLACEHOLDERS = (GREETING, SENT_TO, UNSUBSCRIBE_URL, MANAGE_URL)
#: Where a template allows invisible spaces after the greeting (after a line break in HTML, at
#: the end of the line in text): personalisation pads there so the rest of the body stays
#: aligned for base64 and its encoding is shared by every subscriber (see message.PreparedBody).
PAD = "__FINEWS_PAD__"

#: Largest HTML part, in bytes, before the per-category cap is lowered: Gmail clips at 102 KB,
#: and a subscriber's fields add a few hundred bytes.
HTML_BUDGET = 100_000

#: Category heading for posts without a category.
UNCATEGORIZED_TITLE = "其他"
WEEKDAYS = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")
#: Days a weekly digest covers: the run's day and the six before it.
WEEK_DAYS = 7

#: What may survive of a post's HTML in an email: text-level markup and links, nothing active.
LEAD_TAGS = {"p", "br", "strong", "b", "em", "i", "a"}
LEAD_ATTRIBUTES = {"a": {"href"}}
LEAD_URL_SCHEMES = {"http", "https", "mailto"}
#: Tags dropped together with everything inside them.
LEAD_DROPPED = {"script", "style", "iframe", "object", "embed", "noscript", "template", "svg", "math", "select",
                "textarea"}
#: The lead keeps whole paragraphs until it has about this many characters of text.
LEAD_CHARS = 160
LEAD_MAX_PARAGRAPHS = 2

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# --------------------------------------------------------------------------------------------
# Days and selections


def covered_day(now: datetime, zone: ZoneInfo, covers: str) -> date:
    """The day a digest run at ``now`` covers: the day before (``previous_day``) or the same day
    (``same_day``) as ``now`` on the calendar of ``zone``."""
    if now.tzinfo is None:
        raise ValueError("covered_day: now must be timezone-aware")
    today = now.astimezone(zone).date()
    if covers == "previous_day":
        return today - timedelta(days=1)
    if covers == "same_day":
        return today
    raise ConfigError(f"digest.covers = {covers!r}: expected previous_day or same_day")


def arrival_day(day: date, covers: str) -> date:
    """The day the digest covering ``day`` is sent (its weekday is a weekly subscriber's choice)."""
    return day + timedelta(days=1) if covers == "previous_day" else day


def digest_day(config: Config, now: datetime) -> date:
    """The day the digest run at ``now`` covers, in the digest's zone (default: the site's)."""
    zone_name = config.digest.timezone
    zone = ZoneInfo(zone_name) if zone_name else resolve_site(config).timezone
    return covered_day(now, zone, config.digest.covers)


def posts_of_day(posts: Posts, day: date, zone: ZoneInfo) -> list[Post]:
    """The posts dated on ``day`` in ``zone`` (a post at 23:59 +08:00 belongs to that day in
    Shanghai, whatever the machine's zone), newest first."""
    start = datetime.combine(day, time(), zone)
    chosen = [p for p in posts.between(start, datetime.combine(day + timedelta(days=1), time(), zone))
              if p.date.astimezone(zone).date() == day]
    chosen.sort(key=lambda p: (p.date, p.path), reverse=True)
    return chosen


def posts_of_week(posts: Posts, last: date, zone: ZoneInfo) -> list[Post]:
    """The posts of the seven days ending with ``last`` (in ``zone``), newest first: a weekly digest's."""
    first = last - timedelta(days=WEEK_DAYS - 1)
    start = datetime.combine(first, time(), zone)
    chosen = [p for p in posts.between(start, datetime.combine(last + timedelta(days=1), time(), zone))
              if first <= p.date.astimezone(zone).date() <= last]
    chosen.sort(key=lambda p: (p.date, p.path), reverse=True)
    return chosen


@dataclass(frozen=True)
class Selection:
    """A subscriber's choice: categories and tags (both empty means everything), and whether they get
    the week's digest (the seven days ending with the run's day) rather than the day's."""

    categories: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    weekly: bool = False

    @property
    def everything(self) -> bool:
        return not self.categories and not self.tags

    def matches(self, post: Post) -> bool:
        if self.everything:
            return True
        return any(c in self.categories for c in post.categories) or any(t in self.tags for t in post.tags)

    def key(self) -> str:
        """Same selection, same key, whatever the order the names were given in."""
        names = [sorted(self.categories), sorted(self.tags)]
        return json.dumps([*names, "weekly"] if self.weekly else names, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str = ""
    unsubscribe_url: str = ""
    #: The subscriber's preference centre (signed link); "" gives the variant's default page.
    manage_url: str = ""


# --------------------------------------------------------------------------------------------
# The view model the templates see


@dataclass(frozen=True)
class DigestItem:
    title: str
    url: str
    time: str  #: HH:MM in the site's zone
    source: str
    summary: str
    image: str | None
    #: sanitized lead paragraphs (the digest's first article only)
    lead_html: Markup | None = None
    lead_text: str = ""


@dataclass(frozen=True)
class DigestGroup:
    slug: str
    title: str
    url: str  #: the category's page on the site
    total: int
    items: tuple[DigestItem, ...]

    @property
    def more(self) -> int:
        return self.total - len(self.items)


@dataclass(frozen=True)
class DigestDay:
    """One day's part of a digest: its category groups (a daily digest has one, without a heading)."""

    day: date
    date_text: str
    weekday: str
    count: int
    groups: tuple[DigestGroup, ...]


@dataclass(frozen=True)
class FeedLink:
    label: str
    url: str


@dataclass(frozen=True)
class DigestView:
    """Everything a template needs, already computed; templates only lay it out."""

    site_title: str
    site_url: str
    language: str
    day: date
    date_text: str  #: 2022年4月20日
    weekday: str
    subject: str
    preheader: str
    count: int
    #: Every category group, in the order shown (a weekly digest's days one after the other).
    groups: tuple[DigestGroup, ...]
    selection_text: str  #: what the subscriber chose, for the footer; "" for everything
    archive_url: str
    #: the archive of every digest (its index page), linked from every digest
    archive_index_url: str
    feeds: tuple[FeedLink, ...]
    postal_address: str
    #: The parts by day: one for a daily digest; for a weekly one each day with articles, newest first.
    days: tuple[DigestDay, ...] = ()
    weekly: bool = False
    #: The first day covered, as text (a weekly digest's start; the day itself for a daily one).
    start_text: str = ""
    greeting: str = GREETING
    pad: str = PAD
    sent_to: str = SENT_TO
    unsubscribe_url: str = UNSUBSCRIBE_URL
    manage_url: str = MANAGE_URL


# --------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class Variant:
    """The digest of one day for one selection, rendered and inlined, with placeholders left for
    each subscriber's own fields."""

    day: date
    selection: Selection
    subject: str
    count: int
    html: str
    text: str
    #: Used when a recipient has no unsubscribe URL of their own, so the link is never empty.
    default_unsubscribe_url: str = ""
    #: The articles as listed, for the archive's record of the digest.
    headlines: tuple[Headline, ...] = ()
    #: The time of its newest article; None without articles.
    newest: datetime | None = None
    #: Used when a recipient has no manage URL of their own (the web copy): the page that says how to get one.
    default_manage_url: str = ""
    _html_body: PreparedBody = field(init=False, repr=False, compare=False)
    _text_body: PreparedBody = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_html_body", PreparedBody(self.html, PLACEHOLDERS, PAD))
        object.__setattr__(self, "_text_body", PreparedBody(self.text, PLACEHOLDERS, PAD))

    def personalize(self, recipient: Recipient) -> tuple[str, str]:
        """(html, text) for ``recipient``: placeholders replaced, escaped for HTML in the HTML part.

        The strings are :class:`~finews_feeds.message.WireText`: build_message encodes them from
        the variant's shared encoding instead of from scratch."""
        greeting, sent_to, unsubscribe = _personal_fields(recipient, self.default_unsubscribe_url)
        manage = _link(recipient.manage_url.strip() or self.default_manage_url, "manage")
        html = self._html_body.fill({
            GREETING: html_lib.escape(greeting, quote=False),
            SENT_TO: html_lib.escape(sent_to, quote=False),
            UNSUBSCRIBE_URL: html_lib.escape(unsubscribe, quote=True),
            MANAGE_URL: html_lib.escape(manage, quote=True),
        })
        text = self._text_body.fill({GREETING: greeting, SENT_TO: sent_to, UNSUBSCRIBE_URL: unsubscribe,
                                     MANAGE_URL: manage})
        return html, text


def _link(url: str, what: str) -> str:
    if url and urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what} URL {url!r} is not an http(s) URL")
    return url


def _personal_fields(recipient: Recipient, default_unsubscribe_url: str) -> tuple[str, str, str]:
    name = header_text(_CONTROL.sub("", recipient.name))[:80]
    email = header_text(recipient.email)
    greeting = f"{name}，您好！" if name else "您好！"
    sent_to = f"本邮件发送至 {email}。" if email else ""
    unsubscribe = recipient.unsubscribe_url.strip() or default_unsubscribe_url
    # (the prefix test first: urlsplit is a tenth of a message's personalisation)
    if unsubscribe and not unsubscribe.startswith(("https://", "http://", "mailto:")) \
            and urlsplit(unsubscribe).scheme.lower() not in ("http", "https", "mailto"):
        raise ValueError(f"unsubscribe URL {unsubscribe!r} is not an http(s) or mailto URL")
    return greeting, sent_to, unsubscribe


# --------------------------------------------------------------------------------------------
# Rendering


def date_text(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def feeds_base_url(config: Config, site: Site) -> str:
    return (config.feeds.base_url or f"{site.url}/feeds").rstrip("/")


def archive_url(config: Config, site: Site, day: date) -> str:
    """Where the digest of ``day`` is published as a web page (the "view in browser" link)."""
    return f"{feeds_base_url(config, site)}/digests/{day.isoformat()}.html"


def archive_index_url(config: Config, site: Site) -> str:
    """Where the archive of every digest is published (its first index page)."""
    return f"{feeds_base_url(config, site)}/{archive.FOLDER}/"


def archive_options(config: Config, site: Site) -> ArchiveOptions:
    """What the archive's pages and feed say, from the config and the site."""
    return ArchiveOptions(
        site_title=site.title, site_url=site.url, feeds_url=feeds_base_url(config, site),
        subscribe_url=web_base_url(config) + "/", language=site.language,
        per_page=config.digest.archive_per_page, feed_limit=config.digest.archive_feed_limit,
    )


def publish_archive(config: Config, site: Site, out_dir: Path | None = None) -> list[Path]:
    """Write the archive of the web copies already in ``digests/`` (the daemon does at start: the
    archive's first page exists before the first digest, and copies from before it are listed)."""
    return archive.publish(Path(out_dir or config.feeds.output) / archive.FOLDER, archive_options(config, site))


def archive_entry(variant: Variant, zone: ZoneInfo) -> ArchiveEntry:
    """The archive's record of a (full) digest; a digest without articles is dated at its day's start."""
    updated = variant.newest or datetime.combine(variant.day, time(), zone)
    return ArchiveEntry(variant.day, variant.subject, variant.count, variant.headlines, updated)


def web_base_url(config: Config) -> str:
    return (config.web.public_url or f"http://{config.web.host}:{config.web.port}").rstrip("/")


def default_unsubscribe_url(config: Config) -> str:
    """The unsubscribe page without a personal token, for the web copy and previews."""
    return f"{web_base_url(config)}/unsubscribe"


def default_manage_url(config: Config) -> str:
    """The manage page without a personal token (it says how to get one), for the web copy and previews."""
    return f"{web_base_url(config)}/manage"


def inline_css(html: str) -> str:
    """Move the ``<style>`` rules into ``style`` attributes; keep media queries in a ``<style>``.

    A new Premailer every call: one instance is not safe to share between threads.
    ``strip_important=False`` because premailer marks the kept media-query rules ``!important``
    (they must beat the inline styles) and would otherwise strip that again.
    """
    return str(
        Premailer(
            html,
            allow_network=False,
            allow_loading_external_files=False,
            keep_style_tags=False,
            strip_important=False,
            disable_link_rewrites=True,
            cssutils_logging_level=logging.CRITICAL,
            # The template writes align="right" itself: premailer's version re-parses every
            # image's style with cssutils, uncached, which was 70% of the inlining time.
            align_floating_images=False,
        ).transform()
    )


def sanitize_fragment(fragment: str) -> str:
    """The allow-list every piece of post HTML passes before it can reach an email."""
    return str(
        nh3.clean(
            fragment,
            tags=LEAD_TAGS,
            clean_content_tags=LEAD_DROPPED,
            attributes=LEAD_ATTRIBUTES,
            url_schemes=LEAD_URL_SCHEMES,
            link_rel="noopener noreferrer",
            strip_comments=True,
        )
    )


def lead_fragment(content: str, base_url: str) -> tuple[str, str]:
    """The first paragraphs of a post's HTML, with absolute links, sanitized; and their text.

    ("", "") when the body has no paragraph of text.
    """
    # Sanitize before reading anything: the text of a <script> must not become lead text either.
    clean = sanitize_fragment(content)
    if not clean.strip():
        return "", ""
    try:
        fragments = lxml.html.fragments_fromstring(clean)
    except (ValueError, lxml.etree.ParserError):
        return "", ""
    paragraphs: list[str] = []
    texts: list[str] = []
    length = 0
    for element in fragments:
        if not isinstance(element, lxml.html.HtmlElement) or element.tag != "p":
            continue
        text = " ".join(element.text_content().split())
        if not text:
            continue
        for anchor in element.iter("a"):
            href = anchor.get("href")
            if href is not None:
                anchor.set("href", urljoin(base_url, href.strip()))
        paragraphs.append(lxml.html.tostring(element, encoding="unicode", with_tail=False))
        texts.append(text)
        length += len(text)
        if length >= LEAD_CHARS or len(paragraphs) >= LEAD_MAX_PARAGRAPHS:
            break
    if not paragraphs:
        return "", ""
    # Again after the links were rewritten, so the allow-list is the last step before the email.
    return sanitize_fragment("".join(paragraphs)), "\n".join(texts)


class DigestRenderer:
    """Renders variants of the digest. One per thread: premailer is not thread-safe.

    ``week(day)`` gives the posts of the seven days ending with ``day`` (:func:`posts_of_week`), for
    weekly selections; without it a weekly selection is a :class:`DigestError`.
    """

    def __init__(self, config: Config, site: Site, content: ContentSource,
                 week: Callable[[date], Sequence[Post]] | None = None) -> None:
        self.config = config
        self.site = site
        self.content = content
        self.week = week
        self.zone = ZoneInfo(config.digest.timezone) if config.digest.timezone else site.timezone
        self.env = make_environment(config.digest.templates)
        try:
            self.html_template = self.env.get_template(HTML_TEMPLATE)
            self.text_template = self.env.get_template(TEXT_TEMPLATE)
        except jinja2.TemplateNotFound as exc:
            raise DigestError(
                f"digest template {exc.name} not found in {template_dirs(config.digest.templates)}",
                hint="set digest.templates to a folder with digest.html.j2 and digest.txt.j2, or leave it empty",
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise DigestError(f"digest template {exc.filename or exc.name}, line {exc.lineno}: {exc.message}") from None

    def render(self, day: date, posts: Sequence[Post], selection: Selection) -> Variant | None:
        """The variant of ``selection`` for ``day``; ``posts`` are all posts of the day (a weekly
        selection takes the week's from ``week``).

        None when nothing matches and ``digest.send_empty`` is false."""
        if selection.weekly:
            if self.week is None:
                raise DigestError("a weekly digest needs the week's posts (DigestRenderer(week=...))")
            posts = self.week(day)
        cap = self.config.digest.max_per_category
        view = self.view(day, posts, selection, cap)
        if view.count == 0 and not self.config.digest.send_empty:
            return None
        html, text = self.render_view(view)
        # Gmail cuts a message after 102 KB of HTML behind a "view entire message" link, footer and
        # unsubscribe link included: show fewer per category rather than lose the footer.
        for _ in range(4):
            size = len(html.encode("utf-8"))
            shown = max((len(g.items) for g in view.groups), default=0)
            if size <= HTML_BUDGET or shown <= 1:
                break
            smaller = max(1, min(shown - 1, shown * HTML_BUDGET // size))
            log.warning("digest %s would be %d KB of HTML; showing %d per category instead of %d (Gmail clips at "
                        "102 KB)", day, size // 1000, smaller, shown)
            view = self.view(day, posts, selection, smaller)
            html, text = self.render_view(view)
        headlines = tuple(Headline(item.title, item.url, group.title) for group in view.groups for item in group.items)
        newest = max((p.date for p in posts if selection.matches(p)), default=None)
        return Variant(day=day, selection=selection, subject=view.subject, count=view.count, html=html, text=text,
                       default_unsubscribe_url=default_unsubscribe_url(self.config), headlines=headlines,
                       newest=newest, default_manage_url=default_manage_url(self.config))

    def render_view(self, view: DigestView) -> tuple[str, str]:
        """The inlined HTML and the text of a view, placeholders still in."""
        try:
            raw_html = self.html_template.render(d=view)
            text = self.text_template.render(d=view)
        except jinja2.TemplateError as exc:
            raise DigestError(f"digest template failed: {exc}") from None
        return inline_css(raw_html), tidy_text(text)

    def view(self, day: date, posts: Sequence[Post], selection: Selection, cap: int | None = None) -> DigestView:
        """The view model of the digest for ``selection``: grouped, ordered, at most ``cap``
        (default ``digest.max_per_category``; 0: all) per category."""
        config, site = self.config, self.site
        chosen = [p for p in posts if selection.matches(p)]
        chosen.sort(key=lambda p: (p.date, p.path), reverse=True)
        limit = config.digest.max_per_category if cap is None else cap
        if selection.weekly:
            # By day (newest first), then by category within each day, each capped as a day's digest is.
            by_day: dict[date, list[Post]] = {}
            for post in chosen:
                by_day.setdefault(post.date.astimezone(self.zone).date(), []).append(post)
            days = []
            lead = True
            for when in sorted(by_day, reverse=True):
                day_groups = self._groups(by_day[when], selection, limit, lead=lead)
                lead = False
                days.append(DigestDay(when, date_text(when), WEEKDAYS[when.weekday()], len(by_day[when]), day_groups))
            groups = tuple(g for part in days for g in part.groups)
            start = day - timedelta(days=WEEK_DAYS - 1)
            span = f"{date_text(start)}至{date_text(day)}"
            template = config.digest.weekly_subject
        else:
            groups = self._groups(chosen, selection, limit)
            days = [DigestDay(day, date_text(day), WEEKDAYS[day.weekday()], len(chosen), groups)]
            start = day
            span = date_text(day)
            template = config.digest.subject
        count = len(chosen)
        subject = header_text(
            template.format(
                site_title=site.title,
                date=date_text(day),
                count=count,
                top_title=groups[0].items[0].title if groups else "",
                **({"start": date_text(start)} if selection.weekly else {}),
            )
        )
        titles = [item.title for group in groups for item in group.items][:3]
        preheader = f"{span}共 {count} 篇" + ("：" + "；".join(titles) if titles else
                                                 ("：本周暂无新文章" if selection.weekly else "：今日暂无新文章"))
        if len(preheader) > 110:
            preheader = preheader[:109] + "…"
        feeds_url = feeds_base_url(config, site)
        return DigestView(
            site_title=site.title,
            site_url=site.url + "/",
            language=site.language,
            day=day,
            date_text=date_text(day),
            weekday=WEEKDAYS[day.weekday()],
            subject=subject,
            preheader=preheader,
            count=count,
            groups=groups,
            selection_text=self._selection_text(selection),
            archive_url=archive_url(config, site, day),
            archive_index_url=archive_index_url(config, site),
            feeds=(
                FeedLink("RSS", f"{feeds_url}/rss.xml"),
                FeedLink("Atom", f"{feeds_url}/atom.xml"),
                FeedLink("JSON Feed", f"{feeds_url}/feed.json"),
            ),
            postal_address=config.digest.postal_address.strip(),
            days=tuple(days),
            weekly=selection.weekly,
            start_text=date_text(start),
        )

    def _selection_text(self, selection: Selection) -> str:
        if selection.everything:
            return ""
        names = [self.site.category_title(c) for c in sorted(selection.categories, key=self._category_key)]
        names += [f"#{t}" for t in sorted(selection.tags)]
        return "、".join(names)

    def _category_key(self, slug: str) -> tuple[int, str]:
        if not slug:
            return (1_000_000, "")
        return (self.site.category_order.get(slug, 1000), self.site.category_title(slug))

    def _group_of(self, post: Post, selection: Selection) -> str:
        # A post in several categories is listed once, under the first one the reader chose.
        if selection.categories:
            for name in post.categories:
                if name in selection.categories:
                    return name
        return post.categories[0] if post.categories else ""

    def _groups(self, posts: Sequence[Post], selection: Selection, cap: int, *,
                lead: bool = True) -> tuple[DigestGroup, ...]:
        by_slug: dict[str, list[Post]] = {}
        for post in posts:
            by_slug.setdefault(self._group_of(post, selection), []).append(post)
        groups: list[DigestGroup] = []
        first = lead
        for slug in sorted(by_slug, key=self._category_key):
            members = by_slug[slug]
            shown = members[:cap] if cap > 0 else members
            items: list[DigestItem] = []
            for post in shown:
                items.append(self._item(post, lead=first))
                first = False
            groups.append(
                DigestGroup(
                    slug=slug,
                    title=self.site.category_title(slug) if slug else UNCATEGORIZED_TITLE,
                    url=self._category_url(slug),
                    total=len(members),
                    items=tuple(items),
                )
            )
        return tuple(groups)

    def _category_url(self, slug: str) -> str:
        if not slug:
            return self.site.url + "/"
        path = self.site.category_url.format(slug=quote(slug, safe=""))
        return urljoin(self.site.url + "/", path.lstrip("/"))

    def _item(self, post: Post, *, lead: bool) -> DigestItem:
        lead_html: Markup | None = None
        lead_text = ""
        if lead:
            try:
                fragment, lead_text = lead_fragment(self.content(post), post.url)
            except Exception as exc:  # a post whose body cannot be read loses its lead, not the digest
                log.warning("%s: cannot read the body for the digest lead: %s", post.path, exc)
                fragment = ""
            lead_html = Markup(fragment) if fragment else None  # sanitized by nh3 in lead_fragment
        return DigestItem(
            title=post.title,
            url=post.url,
            time=post.date.astimezone(self.site.timezone).strftime("%H:%M"),
            source=post.source,
            summary=post.summary,
            image=web_url(post.image, post.url),
            lead_html=lead_html,
            lead_text=lead_text,
        )


def template_dirs(custom: str) -> str:
    """Where templates are looked for, for messages: the operator's folder, then the package's."""
    bundled = f"the bundled templates ({resources.files('finews_feeds').joinpath(BUNDLED_TEMPLATES)})"
    return f"{custom} or {bundled}" if custom else bundled


def make_environment(custom: str) -> jinja2.Environment:
    if custom and not Path(custom).is_dir():
        raise ConfigError(f"digest.templates = {custom!r}: folder not found")
    bundled = jinja2.PackageLoader("finews_feeds", BUNDLED_TEMPLATES)
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(custom), bundled]) if custom else bundled,
        autoescape=lambda name: name is not None and name.endswith((".html.j2", ".html")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def tidy_text(text: str) -> str:
    # Templates leave runs of blank lines where optional parts are missing.
    lines = [line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and out and not out[-1]:
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# Preview and web copy (the edges: files and the clock)

SAMPLE_RECIPIENT_EMAIL = "reader@example.com"
SAMPLE_RECIPIENT_NAME = "示例读者"


@dataclass(frozen=True)
class PreviewReport:
    day: date
    count: int
    subject: str
    written: tuple[str, ...]
    html_bytes: int


def sample_recipient(config: Config) -> Recipient:
    return Recipient(SAMPLE_RECIPIENT_EMAIL, SAMPLE_RECIPIENT_NAME, default_unsubscribe_url(config))


def web_copy(variant: Variant, config: Config) -> str:
    """The digest as the public web page: no greeting by name, no address, the generic unsubscribe page."""
    html, _ = variant.personalize(Recipient(email="", name="", unsubscribe_url=default_unsubscribe_url(config)))
    return html


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write the page (text as UTF-8) atomically, making its folder: a reader never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data.encode("utf-8") if isinstance(data, str) else data)


def render_day(config: Config, day: date, collect: Callable[[Config], Posts]) -> tuple[Site, Variant | None]:
    """Collect the site and render the full (unselected) digest of ``day``."""
    collection = collect(config)
    posts = posts_of_day(collection, day, collection.site.timezone)
    renderer = DigestRenderer(config, collection.site, collection.content)
    return collection.site, renderer.render(day, posts, Selection())


def write_preview(
    config: Config,
    day: date,
    *,
    now: datetime,
    html_path: Path | None = None,
    text_path: Path | None = None,
    eml_path: Path | None = None,
    out_dir: Path | None = None,
    collect: Callable[[Config], Posts] | None = None,
) -> PreviewReport:
    """Render the digest of ``day``; write the web copy ``digests/DAY.html`` under ``out_dir``
    (default ``feeds.output``), its record and the archive (index pages, Atom feed: see
    :mod:`.archive`), and the preview for a sample recipient where asked."""
    site, variant = render_day(config, day, collect or collect_site)
    if variant is None:
        return PreviewReport(day=day, count=0, subject="", written=(), html_bytes=0)
    written: list[str] = []
    folder = Path(out_dir or config.feeds.output) / archive.FOLDER
    copy = folder / f"{day.isoformat()}.html"
    write_atomic(copy, web_copy(variant, config))
    written.append(str(copy))
    written += [str(path) for path in archive.publish(folder, archive_options(config, site),
                                                         archive_entry(variant, site.timezone))]
    recipient = sample_recipient(config)
    html, text = variant.personalize(recipient)
    if html_path is not None:
        write_atomic(html_path, html)
        written.append(str(html_path))
    if text_path is not None:
        write_atomic(text_path, text)
        written.append(str(text_path))
    if eml_path is not None:
        message = build_message(
            subject=variant.subject,
            html=html,
            text=text,
            sender=config.digest.from_,
            to=format_address(recipient.name, recipient.email),
            reply_to=config.digest.reply_to,
            message_id=message_id(day, recipient.email, domain_of(config.digest.from_)),
            date=now,
        )
        write_atomic(eml_path, message.as_bytes())
        written.append(str(eml_path))
    return PreviewReport(
        day=day, count=variant.count, subject=variant.subject, written=tuple(written), html_bytes=len(html.encode())
    )
