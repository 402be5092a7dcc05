"""Feed documents from posts: RSS 2.0 and Atom 1.0 (with feedgen), JSON Feed 1.1, OPML 2.0,
an index page, the XSL stylesheet and the ``<head>`` discovery snippet.

Pure: posts, the site and the options go in, ``{relative path: bytes}`` comes out. Nothing here
reads the clock, so the same input gives the same bytes (readers and web caches rely on it).

feedgen 1.0.0 is used for RSS and Atom, and its known faults are corrected here:

- ``add_entry()`` prepends by default: entries are added with ``order="append"``.
- Atom entry links lose every attribute but ``href`` (lkiesow/python-feedgen#135): ``rel`` and
  ``type`` are set again and the enclosure link is added on the finished tree.
- The RSS channel ``<link>`` is the href of the *last* ``link()`` call: the page link is set last.
- ``updated``/``lastBuildDate`` default to now: always set from the newest entry.
- ``entry.id()`` writes ``isPermaLink="false"``: ``guid(url, permalink=True)`` is used.
- lxml raises on characters XML 1.0 forbids: every text is cleaned first.
- No API for the ``xml-stylesheet`` instruction (#28): added to the finished tree.
- Its RFC 822 dates call ``locale.setlocale`` for the whole process (unsafe with threads): it is
  never given an RSS date; ``pubDate``/``lastBuildDate`` are added to the finished tree.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from html import escape
from importlib import resources
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from feedgen.feed import FeedGenerator
from lxml import etree
from markupsafe import Markup

from ..config import FeedsConfig
from ..errors import ConfigError
from ..models import ContentSource, Post, Site
from ..urls import web_url
from .slugs import assign_slugs, join_url

if TYPE_CHECKING:
    import jinja2

FORMATS = ("rss", "atom", "json")
_DATE = attrgetter("date")
_CATEGORIES = attrgetter("categories")
_TAGS = attrgetter("tags")
FILE_NAMES = {"rss": "rss.xml", "atom": "atom.xml", "json": "feed.json"}
MEDIA_TYPES = {"rss": "application/rss+xml", "atom": "application/atom+xml", "json": "application/feed+json"}
STYLESHEET = "feed.xsl"
OPML = "feeds.opml"
INDEX = "index.html"
HEAD_SNIPPET = "_feeds_head.html"
HEAD_SNIPPET_TAGS = "_feeds_head_tags.html"
#: Every listing file a build may write (see :func:`render_listings`).
LISTING_FILES = (OPML, HEAD_SNIPPET, HEAD_SNIPPET_TAGS, STYLESHEET, INDEX)
#: The folders of category and tag feeds (see :attr:`FeedSpec.folder`).
FEED_FOLDERS = ("categories", "tags")
GENERATOR = "finews-feeds"

ATOM_NS = "http://www.w3.org/2005/Atom"
MEDIA_NS = "http://search.yahoo.com/mrss/"
_A = "{" + ATOM_NS + "}"

# What XML 1.0 "Char" leaves out: controls but tab, newline and carriage return, the surrogates,
# U+FFFE and U+FFFF. (Written as the allowed ranges, negated, it took 15 ms to compile.)
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean_text(text: str) -> str:
    """Remove the characters XML 1.0 forbids (the edge-case site has \\x0b, \\x08, \\x1b)."""
    return _XML_ILLEGAL.sub("", text)


# --------------------------------------------------------------------------- options and plan


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """What the renderers need from the site and the ``[feeds]`` config."""

    site_title: str
    site_url: str
    base_url: str  #: public URL of the output folder, no trailing slash
    language: str
    timezone: ZoneInfo
    formats: tuple[str, ...] = FORMATS
    full_content: bool = True
    websub_hub: str = ""
    stylesheet: bool = True
    limit: int = 50
    category_limit: int = 50
    tag_limit: int = 50
    tags: bool = True

    @classmethod
    def from_config(cls, site: Site, feeds: FeedsConfig) -> FeedOptions:
        formats = tuple(f for f in FORMATS if f in feeds.formats)
        return cls(
            site_title=clean_text(site.title),
            site_url=site.url,
            base_url=(feeds.base_url or site.url + "/feeds").rstrip("/"),
            language=site.language,
            timezone=site.timezone,
            formats=formats,
            full_content=feeds.full_content,
            websub_hub=feeds.websub_hub,
            stylesheet=feeds.stylesheet,
            limit=feeds.limit,
            category_limit=feeds.category_limit or feeds.limit,
            tag_limit=feeds.tag_limit or feeds.limit,
            tags=feeds.tags,
        )

    def fingerprint(self) -> str:
        """Everything in the options that shows in a feed, as text (part of each feed's signature)."""
        return repr((self.site_title, self.site_url, self.base_url, self.language, str(self.timezone),
                     self.formats, self.full_content, self.websub_hub, self.stylesheet))


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """One feed (written in every configured format): the whole site, a category or a tag."""

    kind: str  #: "site", "category" or "tag"
    name: str  #: category or tag as the posts give it; "" for the site
    slug: str  #: folder name; "" for the site
    title: str
    description: str
    home_url: str  #: the page on the site this feed follows
    folder: str  #: relative folder of its files: "", "categories/<slug>", "tags/<slug>"
    limit: int
    #: ``kind:name``, the feed's key in plans, manifests and states (asked for often enough
    #: to be made once)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.kind}:{self.name}")

    def path(self, fmt: str) -> str:
        return f"{self.folder}/{FILE_NAMES[fmt]}" if self.folder else FILE_NAMES[fmt]

    def url(self, options: FeedOptions, fmt: str) -> str:
        return f"{_folder_url(options.base_url, self.folder)}/{FILE_NAMES[fmt]}"

    def header(self) -> str:
        """The feed-level fields as text (part of the feed's signature)."""
        return "\x1f".join((self.kind, self.name, self.slug, self.title, self.description, self.home_url,
                            self.folder, str(self.limit)))


@dataclass(slots=True)
class FeedPlan:
    """Every feed of a build and the posts each one shows (newest first, cut at its limit)."""

    specs: list[FeedSpec]
    entries: dict[str, list[Post]]  #: spec key -> posts
    slugs: dict[str, dict[str, str]] = field(default_factory=dict)  #: kind -> name -> slug
    counts: dict[str, int] = field(default_factory=dict)  #: spec key -> posts in the category/tag


@lru_cache(maxsize=65536)
def _folder_url(base_url: str, folder: str) -> str:
    # Quoting is the slow part of listing thousands of feeds in three formats: once per folder.
    return join_url(base_url, *folder.split("/")) if folder else base_url.rstrip("/")


def _page_url(site: Site, pattern: str, slug: str) -> str:
    if not pattern:
        return site.url + "/"
    try:
        path = pattern.format(slug=slug)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"page pattern {pattern!r}: only {{slug}} may appear in braces",
                          hint="check site.category_url and site.tag_url") from None
    return site.url + "/" + join_url("", *path.lstrip("/").split("/")).lstrip("/")


def _fill(post: Post, names: Iterable[str], open_names: set[str], buckets: dict[str, list[Post]], limit: int) -> None:
    """Add ``post`` to the feeds of ``names`` that still have room; close those it fills."""
    for name in names:
        if name in open_names:
            bucket = buckets[name]
            bucket.append(post)
            if len(bucket) >= limit:
                open_names.discard(name)


def plan_feeds(
    posts: Sequence[Post],
    site: Site,
    options: FeedOptions,
    previous_slugs: Mapping[str, Mapping[str, str]] | None = None,
) -> FeedPlan:
    """Which feeds exist and which posts each shows. One pass over the posts, so it stays fast
    on a site of 100,000 posts; ``previous_slugs`` keeps feed URLs stable across builds."""
    previous_slugs = previous_slugs or {}
    # The collector gives newest first; a stable sort keeps its order for equal dates and is
    # linear on sorted input.
    ordered = sorted(posts, key=_DATE, reverse=True)
    cat_limit, tag_limit, with_tags = options.category_limit, options.tag_limit, options.tags
    # The collector gives each post's categories and tags without repeats, so counting is a
    # C-speed Counter, and the Python loop below only fills the first `limit` of each name.
    cat_count = Counter(chain.from_iterable(map(_CATEGORIES, ordered)))
    tag_count = Counter(chain.from_iterable(map(_TAGS, ordered))) if with_tags else Counter()
    by_cat: dict[str, list[Post]] = {name: [] for name in cat_count}
    by_tag: dict[str, list[Post]] = {name: [] for name in tag_count}
    # Names whose feed still has room. Most posts of a large site only carry names whose feeds
    # are full, and a C-speed set test skips those posts without looking at each name.
    open_cats = set(by_cat) if cat_limit > 0 else set()
    open_tags = set(by_tag) if tag_limit > 0 else set()
    for post in ordered:
        cats, tags = post.categories, post.tags if with_tags else ()
        if open_cats.isdisjoint(cats) and open_tags.isdisjoint(tags):
            if not open_cats and not open_tags:
                break  # every feed is full: older posts cannot show anywhere
            continue
        _fill(post, cats, open_cats, by_cat, cat_limit)
        _fill(post, tags, open_tags, by_tag, tag_limit)

    return assemble_plan(site, options, list(ordered[: options.limit]), len(ordered), by_cat, by_tag, cat_count,
                         tag_count, previous_slugs)


def assemble_plan(
    site: Site,
    options: FeedOptions,
    latest: list[Post],
    total: int,
    by_cat: Mapping[str, list[Post]],
    by_tag: Mapping[str, list[Post]],
    cat_count: Mapping[str, int],
    tag_count: Mapping[str, int],
    previous_slugs: Mapping[str, Mapping[str, str]],
) -> FeedPlan:
    """The plan from the posts each feed shows (``latest`` for the site feed, of ``total``
    posts) and the post counts of each category and tag: slugs, titles, URLs. A rebuild that
    only adds posts updates these and comes here too, so both give the same feeds."""
    cat_slugs = assign_slugs(by_cat, "category", previous_slugs.get("category"))
    tag_slugs = assign_slugs(by_tag, "tag", previous_slugs.get("tag"))
    title = options.site_title
    specs = [FeedSpec("site", "", "", title, f"{title}: 最新文章" if _is_zh(options) else f"{title}: latest posts",
                      site.url + "/", "", options.limit)]
    entries: dict[str, list[Post]] = {"site:": latest}
    counts: dict[str, int] = {"site:": total}
    for name in sorted(by_cat, key=lambda n: (site.category_order.get(n, 1000), n)):
        shown = clean_text(site.category_title(name))
        slug = cat_slugs[name]
        spec = FeedSpec("category", name, slug, f"{title} · {shown}", f"{title}: {shown}",
                        _page_url(site, site.category_url, slug), f"categories/{slug}", options.category_limit)
        specs.append(spec)
        entries[spec.key] = by_cat[name]
        counts[spec.key] = cat_count[name]
    for name in sorted(by_tag):
        shown = clean_text(name)
        slug = tag_slugs[name]
        spec = FeedSpec("tag", name, slug, f"{title} · #{shown}", f"{title}: #{shown}",
                        _page_url(site, site.tag_url, slug), f"tags/{slug}", options.tag_limit)
        specs.append(spec)
        entries[spec.key] = by_tag[name]
        counts[spec.key] = tag_count[name]
    return FeedPlan(specs, entries, {"category": cat_slugs, "tag": tag_slugs}, counts)


def _is_zh(options: FeedOptions) -> bool:
    return options.language.lower().startswith("zh")


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class EntryData:
    """A post as every format shows it: cleaned text, dates in the site's zone, absolute URLs."""

    id: str
    url: str
    title: str
    published: datetime
    updated: datetime
    author: str
    terms: tuple[str, ...]  #: categories then tags, without repeats
    summary: str
    content_html: str | None  #: None when the feeds are summary-only
    image: str | None
    image_type: str

    @property
    def newest(self) -> datetime:
        return max(self.published, self.updated)


def _local(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(microsecond=0)


#: Image types by extension: a fixed table, not the system's (mimetypes reads /etc/mime.types,
#: which differs between machines, and a feed must not).
IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "jpe": "image/jpeg", "png": "image/png", "gif": "image/gif",
               "webp": "image/webp", "avif": "image/avif", "svg": "image/svg+xml", "bmp": "image/bmp",
               "ico": "image/vnd.microsoft.icon", "tif": "image/tiff", "tiff": "image/tiff"}


def _image_type(url: str) -> str:
    name = url.split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[-1]
    return IMAGE_TYPES.get(name.rsplit(".", 1)[-1].lower(), "image/jpeg") if "." in name else "image/jpeg"


def entry_data(post: Post, options: FeedOptions, content: ContentSource | None) -> EntryData:
    """The fields of one entry; ``content`` is called only when the feeds carry full content."""
    zone = options.timezone
    published = _local(post.date, zone)
    updated = _local(post.updated, zone) if post.updated else published
    summary = clean_text(post.description or post.excerpt or post.summary or "")
    body = clean_text(content(post)) if options.full_content and content is not None else None
    image = web_url(post.image, post.url)  # the digest's policy too: http(s) in every reading
    return EntryData(
        id=post.id,
        url=post.url,
        title=clean_text(post.title).strip() or post.slug,
        published=published,
        updated=max(updated, published),
        author=clean_text(post.author or post.source or options.site_title),
        terms=tuple(dict.fromkeys(clean_text(t) for t in (*post.categories, *post.tags) if clean_text(t))),
        summary=summary,
        content_html=body,
        image=image,
        image_type=_image_type(image) if image else "",
    )


EntryFactory = Callable[[Post], EntryData]


# --------------------------------------------------------------------------- RSS and Atom


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _rfc822(moment: datetime) -> str:
    # Locale-free, unlike strftime("%a ...") which feedgen uses under setlocale; what
    # email.utils.format_datetime gives, without importing email (and socket) for it.
    return (f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]} {moment.year:04d} "
            f"{moment:%H:%M:%S} {moment:%z}")


def _epoch(options: FeedOptions) -> datetime:
    return datetime(1970, 1, 1, tzinfo=options.timezone)


def _feed_updated(entries: Sequence[EntryData], options: FeedOptions) -> datetime:
    """The newest time of any entry (an edited older post counts), never the clock."""
    return max((e.newest for e in entries), default=_epoch(options))


def _generator(spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> FeedGenerator:
    """One FeedGenerator for both RSS and Atom (building entries is most of the cost); what
    differs between the two is set on each finished tree."""
    fg = FeedGenerator()
    # What load_extension("media") and ("dc") register, without its import of the modules by
    # name for every feed (a tenth of rendering a small feed). Imported here: feedgen.ext needs
    # feedgen.feed imported first.
    from feedgen.ext.dc import DcEntryExtension, DcExtension
    from feedgen.ext.media import MediaEntryExtension, MediaExtension

    fg.register_extension("media", MediaExtension, MediaEntryExtension, atom=True, rss=True)
    fg.register_extension("dc", DcExtension, DcEntryExtension, atom=False, rss=True)
    atom_url = spec.url(options, "atom")
    fg.id(atom_url)
    fg.title(spec.title)
    fg.description(spec.description)
    fg.subtitle(spec.description)
    fg.author(name=options.site_title, uri=options.site_url + "/")
    fg.language(options.language)
    fg.generator(GENERATOR)
    fg.link(href=atom_url, rel="self", type=MEDIA_TYPES["atom"])
    if options.websub_hub:
        fg.link(href=options.websub_hub, rel="hub")
    # Last: feedgen makes the last link() the RSS channel <link>.
    fg.link(href=spec.home_url, rel="alternate", type="text/html")
    fg.updated(_feed_updated(entries, options))
    fg._FeedGenerator__rss_lastBuildDate = None  # added to the RSS tree without setlocale, see module doc
    for data in entries:
        fe = fg.add_entry(order="append")  # the default, "prepend", reverses the entries
        fe.guid(data.id, permalink=True)  # id() would write isPermaLink="false"
        fe.title(data.title)
        fe.link(href=data.url)
        if data.image:
            fe.enclosure(url=data.image, length="0", type=data.image_type)
            fe.media.thumbnail(url=data.image, group=None)
        fe.updated(data.updated)
        fe.published(data.published)
        fe._FeedEntry__rss_pubDate = None  # added to the RSS tree without setlocale, see module doc
        fe.author(name=data.author)
        fe.dc.dc_creator(data.author)
        if data.terms:
            fe.category([{"term": term} for term in data.terms])
        if data.summary:
            fe.summary(data.summary)
        if data.content_html is not None:
            fe.content(data.content_html, type="html")
        # RSS <description> holds HTML: the plain-text summary is escaped once more. Set
        # directly, as feedgen's description() would also replace the Atom summary.
        fe._FeedEntry__rss_description = html.escape(data.summary or data.title, quote=False)
    return fg


def _stylesheet_pi(spec: FeedSpec) -> etree._Element:
    depth = spec.folder.count("/") + 1 if spec.folder else 0
    href = "../" * depth + STYLESHEET
    return etree.ProcessingInstruction("xml-stylesheet", f'type="text/xsl" href="{href}"')


def _serialize(root: etree._Element) -> bytes:
    data: bytes = etree.tostring(root.getroottree(), encoding="UTF-8", xml_declaration=True, pretty_print=True)
    return data


def _rss_document(fg: FeedGenerator, spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> bytes:
    root, _ = fg._create_rss()
    channel = root.find("channel")
    assert channel is not None
    self_link = channel.find(_A + "link")
    assert self_link is not None
    self_link.set("href", spec.url(options, "rss"))
    self_link.set("type", MEDIA_TYPES["rss"])
    if options.websub_hub:
        # feedgen writes only the rel=self atom:link into RSS; WebSub needs rel=hub too.
        self_link.addnext(etree.Element(_A + "link", href=options.websub_hub, rel="hub"))
    language = channel.find("language")
    last_build = etree.Element("lastBuildDate")
    last_build.text = _rfc822(_feed_updated(entries, options))
    (language if language is not None else channel[2]).addnext(last_build)
    for item, data in zip(channel.iter("item"), entries, strict=True):
        pub = etree.SubElement(item, "pubDate")
        pub.text = _rfc822(data.published)
    if options.stylesheet:
        root.addprevious(_stylesheet_pi(spec))
    return _serialize(root)


def _atom_document(fg: FeedGenerator, spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> bytes:
    root, _ = fg._create_atom()
    # feedgen builds the Atom tree without a namespace and writes `xmlns` as a plain attribute,
    # so its elements are found by their bare names.
    for element, data in zip(root.iter("entry"), entries, strict=True):
        # feedgen#135: entry links keep only href. The first is the post's page, the next
        # (from enclosure()) its image: their rel and type are set again.
        for index, link in enumerate(element.iter("link")):
            if index == 0:
                link.set("rel", "alternate")
                link.set("type", "text/html")
            else:
                link.set("rel", "enclosure")
                link.set("type", data.image_type)
    if options.stylesheet:
        root.addprevious(_stylesheet_pi(spec))
    return _serialize(root)


def render_rss(spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> bytes:
    """RSS 2.0 with the content, dc and media modules."""
    return _rss_document(_generator(spec, options, entries), spec, options, entries)


def render_atom(spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> bytes:
    """Atom 1.0 (RFC 4287)."""
    return _atom_document(_generator(spec, options, entries), spec, options, entries)


# --------------------------------------------------------------------------- JSON Feed


def render_json(spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> bytes:
    """JSON Feed 1.1 (https://jsonfeed.org/version/1.1)."""
    items: list[dict[str, Any]] = []
    for data in entries:
        item: dict[str, Any] = {"id": data.id, "url": data.url, "title": data.title}
        if data.content_html is not None:
            item["content_html"] = data.content_html
        else:
            item["content_text"] = data.summary or data.title
        if data.summary:
            item["summary"] = data.summary
        if data.image:
            item["image"] = data.image
        item["date_published"] = data.published.isoformat()
        if data.updated != data.published:
            item["date_modified"] = data.updated.isoformat()
        item["authors"] = [{"name": data.author}]
        if data.terms:
            item["tags"] = list(data.terms)
        item["language"] = options.language
        items.append(item)
    document: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": spec.title,
        "home_page_url": spec.home_url,
        "feed_url": spec.url(options, "json"),
        "description": spec.description,
        "authors": [{"name": options.site_title, "url": options.site_url + "/"}],
        "language": options.language,
    }
    if options.websub_hub:
        document["hubs"] = [{"type": "WebSub", "url": options.websub_hub}]
    document["items"] = items
    # No indent: only without it does json use its C encoder (5x faster on a cold build).
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


RENDERERS: dict[str, Callable[[FeedSpec, FeedOptions, Sequence[EntryData]], bytes]] = {
    "rss": render_rss,
    "atom": render_atom,
    "json": render_json,
}


def render_feed(spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> dict[str, bytes]:
    """Every configured format of one feed, as ``{relative path: bytes}``."""
    fg = _generator(spec, options, entries) if {"rss", "atom"} & set(options.formats) else None
    files: dict[str, bytes] = {}
    for fmt in options.formats:
        if fmt == "rss" and fg is not None:
            files[spec.path(fmt)] = _rss_document(fg, spec, options, entries)
        elif fmt == "atom" and fg is not None:
            files[spec.path(fmt)] = _atom_document(fg, spec, options, entries)
        else:
            files[spec.path(fmt)] = render_json(spec, options, entries)
    return files


# --------------------------------------------------------------------------- listings


@lru_cache(maxsize=1)
def _template_env() -> jinja2.Environment:
    # One per process: a daemon rebuilding every few minutes compiles the page template once.
    # Imported here: a rebuild after a new post usually has the page from a ListingCache.
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("finews_feeds", "templates/feeds"),
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass(frozen=True, slots=True)
class Listed:
    """A feed as the listings show it."""

    spec: FeedSpec
    urls: dict[str, str]  #: format -> URL
    count: int  #: posts in the category or tag
    updated: str  #: newest entry's date, YYYY-MM-DD HH:MM, or ""


def _listed(specs: Iterable[FeedSpec], options: FeedOptions, counts: Mapping[str, int],
            newest: Mapping[str, datetime | None]) -> list[Listed]:
    out = []
    for spec in specs:
        moment = newest.get(spec.key)
        out.append(Listed(spec, {fmt: spec.url(options, fmt) for fmt in options.formats}, counts.get(spec.key, 0),
                          moment.strftime("%Y-%m-%d %H:%M") if moment else ""))
    return out


#: The listings that show only which feeds there are (no counts, no dates): a new post that
#: starts no feed leaves them as they were.
OUTLINE = "outline"
#: The page that also shows each feed's post count and newest date.
INDEX_PAGE = "index"


@dataclass(slots=True)
class ListingCache:
    """What the last index page was made of, so that after a new post only the rows of the
    feeds it reaches are made again and the page template is not rendered (nor Jinja imported):
    the page around the rows, for one set of feeds, and each feed's row."""

    frame_key: str = ""  #: what the page around the rows depends on (see :func:`_frame_key`)
    #: the page cut at its rows: text, kind, text, kind, ..., text
    frame: list[str] = field(default_factory=list)
    #: feed key -> (its header, count, newest entry's POSIX time, its row)
    rows: dict[str, tuple[str, int, float | None, str]] = field(default_factory=dict)

    def dump(self) -> tuple[Any, ...]:
        return (self.frame_key, self.frame, self.rows)

    @classmethod
    def load(cls, data: Any) -> ListingCache:
        """From :meth:`dump`; anything else gives an empty cache."""
        try:
            frame_key, frame, rows = data
            if isinstance(frame_key, str) and isinstance(frame, list) and isinstance(rows, dict):
                return cls(frame_key, frame, rows)
        except (TypeError, ValueError):
            pass
        return cls()


def render_listings(
    specs: Sequence[FeedSpec],
    options: FeedOptions,
    counts: Mapping[str, int],
    newest: Mapping[str, datetime | None],
    parts: Container[str] = (OUTLINE, INDEX_PAGE),
    cache: ListingCache | None = None,
) -> dict[str, bytes]:
    """``feeds.opml``, the head snippets and the XSL stylesheet (``OUTLINE`` in ``parts``) and
    ``index.html`` (``INDEX_PAGE``). ``cache``: what the last index page was made of; it is
    used where it still holds, and updated."""
    listed: list[Listed] = []

    def groups() -> dict[str, list[Listed]]:
        if not listed:
            listed.extend(_listed(specs, options, counts, newest))
        return {kind: [item for item in listed if item.spec.kind == kind] for kind in ("site", "category", "tag")}

    zh = _is_zh(options)
    opml_url = join_url(options.base_url, OPML)
    files: dict[str, bytes] = {}
    if OUTLINE in parts:
        grouped = groups()
        opml_title = f"{options.site_title} {'全部订阅源' if zh else 'all feeds'}"
        files[OPML] = render_opml(grouped, options)
        files[HEAD_SNIPPET] = _head_snippet([*grouped["site"], *grouped["category"]], options.formats,
                                            (opml_title, opml_url))
        files[HEAD_SNIPPET_TAGS] = _head_snippet(grouped["tag"], options.formats, None)
        if options.stylesheet:
            files[STYLESHEET] = resources.files("finews_feeds").joinpath("templates/feeds/feed.xsl").read_bytes()
    if INDEX_PAGE not in parts:
        return files
    cache = cache if cache is not None else ListingCache()
    rows: dict[str, list[str]] = {"site": [], "category": [], "tag": []}
    made: dict[str, tuple[str, int, float | None, str]] = {}
    for spec in specs:
        header, count, moment = spec.header(), counts.get(spec.key, 0), newest.get(spec.key)
        stamp = moment.timestamp() if moment is not None else None
        known = cache.rows.get(spec.key)
        if known is not None and known[:3] == (header, count, stamp):
            row = known[3]
        else:
            row = _index_row(Listed(spec, {fmt: spec.url(options, fmt) for fmt in options.formats}, count,
                                    moment.strftime("%Y-%m-%d %H:%M") if moment else ""), options.formats)
        made[spec.key] = (header, count, stamp, row)
        rows[spec.kind].append(row)
    cache.rows = made
    frame_key = _frame_key(specs, options)
    if cache.frame_key != frame_key or not cache.frame:
        context: dict[str, Any] = {"options": options, "groups": groups(), "formats": options.formats,
                                   "media_types": MEDIA_TYPES, "zh": zh, "opml_url": opml_url,
                                   "rows": {kind: Markup(f"\x00{kind}\x00") for kind in rows}}
        page = _template_env().get_template("index.html.j2").render(context)
        cache.frame_key, cache.frame = frame_key, re.split("\x00(site|category|tag)\x00", page)
    files[INDEX] = "".join(piece if i % 2 == 0 else "".join(rows[piece])
                           for i, piece in enumerate(cache.frame)).encode("utf-8")
    return files


def _frame_key(specs: Sequence[FeedSpec], options: FeedOptions) -> str:
    """Everything the index page shows besides its rows: the options, the site feed (linked
    from the page's head) and how many feeds of each kind there are."""
    sizes = Counter(spec.kind for spec in specs)
    return repr((options.fingerprint(), [spec.header() for spec in specs if spec.kind == "site"],
                 sizes["site"], sizes["category"], sizes["tag"]))


# The rows of the listings are built here rather than in Jinja: with thousands of tags in
# three formats, Jinja's per-value escaping was most of the time of a one-post rebuild.


def _head_snippet(items: Sequence[Listed], formats: Sequence[str], opml: tuple[str, str] | None) -> bytes:
    """``<link rel="alternate">`` lines for a page's ``<head>``, so browsers and readers find the feeds."""
    label = len(formats) > 1
    lines = [
        f'<link rel="alternate" type="{MEDIA_TYPES[fmt]}" title="{escape(item.spec.title)}'
        f'{f" ({fmt.upper()})" if label else ""}" href="{escape(item.urls[fmt])}">\n'
        for item in items for fmt in formats
    ]
    if opml is not None:
        lines.append(f'<link rel="outline" type="text/x-opml" title="{escape(opml[0])}" href="{escape(opml[1])}">\n')
    return "".join(lines).encode("utf-8")


def _index_row(item: Listed, formats: Sequence[str]) -> str:
    links = " · ".join(f'<a href="{escape(item.urls[fmt])}">{fmt.upper()}</a>' for fmt in formats)
    return (f'<tr><td><a href="{escape(item.spec.home_url)}">{escape(item.spec.title)}</a></td><td>{links}</td>'
            f'<td class="n">{item.count}</td><td class="n">{item.updated}</td></tr>\n')


def render_opml(groups: Mapping[str, list[Listed]], options: FeedOptions) -> bytes:
    """OPML 2.0: one outline per feed (its first format), categories and tags in folders."""
    fmt = options.formats[0] if options.formats else "rss"
    root = etree.Element("opml", version="2.0")
    head = etree.SubElement(root, "head")
    etree.SubElement(head, "title").text = options.site_title
    etree.SubElement(head, "docs").text = "http://opml.org/spec2.opml"
    body = etree.SubElement(root, "body")

    def outline(parent: etree._Element, item: Listed) -> None:
        etree.SubElement(parent, "outline", type="rss", text=item.spec.title, title=item.spec.title,
                         xmlUrl=item.urls.get(fmt, ""), htmlUrl=item.spec.home_url, language=options.language)

    for item in groups["site"]:
        outline(body, item)
    zh = _is_zh(options)
    for kind, label in (("category", "分类" if zh else "Categories"), ("tag", "标签" if zh else "Tags")):
        if groups[kind]:
            folder = etree.SubElement(body, "outline", text=label, title=label)
            for item in groups[kind]:
                outline(folder, item)
    return _serialize(root)
