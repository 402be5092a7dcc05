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
- ``category(label=...)`` also becomes the RSS ``<category>`` text and ``scheme`` its ``domain``
  (what we want); an empty label would be written as an empty RSS category, so none is passed.
- ``media.content()``/``thumbnail()`` put the element in a ``<media:group>`` unless
  ``group=None``; Media RSS keeps groups for alternative versions of one medium, which an
  image and its thumbnail are not. Attribute values must be strings (lxml refuses ints).
- Its RFC 822 dates call ``locale.setlocale`` for the whole process (unsafe with threads): it is
  never given an RSS date; ``pubDate``/``lastBuildDate`` are added to the finished tree.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache
from html import escape
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from lxml import etree
from markupsafe import Markup

# isort: off
# feedgen.ext's modules use lxml.etree and feedgen.util without importing what they need: the
# feed module first.
from feedgen.feed import FeedGenerator
from feedgen.ext.dc import DcEntryExtension, DcExtension
from feedgen.ext.media import MediaEntryExtension, MediaExtension
# isort: on

from ..models import ContentSource, Post
from ..site.markup import clean_text
from ..urls import web_url
from .plan import FeedOptions, FeedSpec
from .slugs import join_url

MEDIA_TYPES = {"rss": "application/rss+xml", "atom": "application/atom+xml", "json": "application/feed+json"}
STYLESHEET = "feed.xsl"
OPML = "feeds.opml"
INDEX = "index.html"
HEAD_SNIPPET = "_feeds_head.html"
HEAD_SNIPPET_TAGS = "_feeds_head_tags.html"
#: Every listing file a build may write (see :func:`render_listings`).
LISTING_FILES = (OPML, HEAD_SNIPPET, HEAD_SNIPPET_TAGS, STYLESHEET, INDEX)
GENERATOR = "finews-feeds"

ATOM_NS = "http://www.w3.org/2005/Atom"
MEDIA_NS = "http://search.yahoo.com/mrss/"
#: RFC 5005's namespace (``<fh:archive/>`` marks an archive document).
HISTORY_NS = "http://purl.org/syndication/history/1.0"
_A = "{" + ATOM_NS + "}"
_FH = "{" + HISTORY_NS + "}"

# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class Term:
    """A category or tag of an entry: ``term`` as the posts give it (the feeds' folders are named
    after it), ``label`` as readers show it (a category's ``[categories.<slug>] title``, a tag's
    own text), ``scheme`` the folder URL of its kind of feed (categories or tags)."""

    term: str
    label: str
    scheme: str


@dataclass(frozen=True, slots=True)
class EntryData:
    """A post as every format shows it: cleaned text, dates in the site's zone, absolute URLs."""

    id: str
    url: str
    title: str
    published: datetime
    updated: datetime
    author: str | None  #: None: no author (the feed's own stands for it)
    terms: tuple[Term, ...]  #: categories then tags, one per label
    summary: str
    content_html: str | None  #: None when the feeds are summary-only, or the post is excerpt-only
    image: str | None
    image_type: str
    author_email: str | None = None
    author_uri: str | None = None
    image_size: tuple[int, int] | None = None  #: width, height in pixels, when known

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


@lru_cache(maxsize=8)
def _titles(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(pairs)


def _terms(post: Post, options: FeedOptions) -> tuple[Term, ...]:
    """Categories then tags, each once by label: a tag named as a category's display name (the
    finews posts tag 财联社新闻 in the category cailianshe, titled 财联社新闻) would show twice."""
    titles = _titles(options.category_titles)
    terms: dict[str, Term] = {}
    for kind, names in (("categories", post.categories), ("tags", post.tags)):
        scheme = f"{options.base_url}/{kind}/"
        for name in names:
            term = clean_text(name)
            if not term:
                continue
            label = clean_text(titles.get(name, "")) if kind == "categories" else ""
            label = label or term
            terms.setdefault(label, Term(term, label, scheme))
    return tuple(terms.values())


def entry_data(post: Post, options: FeedOptions, content: ContentSource | None) -> EntryData:
    """The fields of one entry; ``content`` is called only when the feeds carry full content."""
    zone = options.timezone
    published = _local(post.date, zone)
    updated = _local(post.updated, zone) if post.updated else published
    summary = clean_text(post.description or post.excerpt or post.summary or "")
    full = options.full_content and not post.excerpt_only and content is not None
    body = clean_text(content(post)) if full and content is not None else None
    image = web_url(post.image, post.url)  # the digest's policy too: http(s) in every reading
    author, email, uri = post.author, post.author_email, post.author_uri
    if not author:
        author = {"source": post.source or options.site_title, "site": options.site_title}.get(options.author_fallback)
    return EntryData(
        id=post.id,
        url=post.url,
        title=clean_text(post.title).strip() or post.slug,
        published=published,
        updated=max(updated, published),
        author=clean_text(author) if author else None,
        terms=_terms(post, options),
        summary=summary,
        content_html=body,
        image=image,
        image_type=_image_type(image) if image else "",
        author_email=clean_text(email) if email and author else None,
        author_uri=_author_uri(uri, post.url) if author else None,
        image_size=post.image_size if image else None,
    )


def _author_uri(uri: str | None, base: str) -> str | None:
    """An author's URI as published: an http(s) URL only (the URL policy of every link we add)."""
    return web_url(uri, base) if uri else None


EntryFactory = Callable[[Post], EntryData]


# --------------------------------------------------------------------------- RSS and Atom


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
    # name for every feed (a tenth of rendering a small feed).
    fg.register_extension("media", MediaExtension, MediaEntryExtension, atom=True, rss=True)
    fg.register_extension("dc", DcExtension, DcEntryExtension, atom=False, rss=True)
    atom_url = spec.url(options, "atom")
    # An archive page is a document of the same feed (RFC 5005): the feed's id.
    fg.id(spec.at(0).url(options, "atom"))
    fg.title(spec.title)
    fg.description(spec.description)
    fg.subtitle(spec.description)
    if options.site_author is not None:
        name, email, uri = options.site_author
        fg.author({key: value for key, value in (("name", name), ("email", email), ("uri", _author_uri(uri, options.site_url)))
                   if value})
    else:
        fg.author(name=options.site_title, uri=options.site_url + "/")
    fg.language(options.language)
    fg.generator(GENERATOR)
    fg.link(href=atom_url, rel="self", type=MEDIA_TYPES["atom"])
    if options.websub_hub and not spec.page:  # an archive page never changes: nothing to push
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
            # media:content for the readers that take images from Media RSS only (Feedly,
            # Inoreader, Miniflux's media handling), with the size when known so the layout
            # does not jump; the thumbnail for those that read only that.
            size = {"width": str(data.image_size[0]), "height": str(data.image_size[1])} if data.image_size else {}
            fe.media.content(url=data.image, type=data.image_type, medium="image", group=None, **size)
            fe.media.thumbnail(url=data.image, group=None, **size)
        fe.updated(data.updated)
        fe.published(data.published)
        fe._FeedEntry__rss_pubDate = None  # added to the RSS tree without setlocale, see module doc
        if data.author:
            # Atom: name, email, uri; RSS: <author> (feedgen writes it only with an email) and dc:creator.
            fe.author({key: value for key, value in (("name", data.author), ("email", data.author_email),
                                                     ("uri", data.author_uri)) if value})
            fe.dc.dc_creator(data.author)
        if data.terms:
            fe.category([{"term": t.term, "label": t.label, "scheme": t.scheme} for t in data.terms])
        if data.summary:
            fe.summary(data.summary)
        if data.content_html is not None:
            fe.content(data.content_html, type="html")
        # RSS <description> holds HTML: the plain-text summary is escaped once more. Set
        # directly, as feedgen's description() would also replace the Atom summary.
        fe._FeedEntry__rss_description = html.escape(data.summary or data.title, quote=False)
    return fg


def history_links(spec: FeedSpec, options: FeedOptions, fmt: str) -> list[tuple[str, str]]:
    """RFC 5005's links of a feed or archive page, as (rel, URL of the same format). The feed:
    ``prev-archive``, its newest full page. A page: ``current``, ``prev-archive`` (but the
    first) and ``next-archive``, the following page's URL even before that page is full (until
    then it is not there), so that a page never changes once written."""
    if not spec.page:
        return [("prev-archive", spec.at(spec.archived).url(options, fmt))] if spec.archived else []
    links = [("current", spec.at(0).url(options, fmt))]
    if spec.page > 1:
        links.append(("prev-archive", spec.at(spec.page - 1).url(options, fmt)))
    links.append(("next-archive", spec.at(spec.page + 1).url(options, fmt)))
    return links


def _add_history(anchor: etree._Element, tag: str, spec: FeedSpec, options: FeedOptions, fmt: str) -> None:
    """The links after ``anchor`` (the self link), then ``<fh:archive/>`` on an archive page."""
    for rel, url in reversed(history_links(spec, options, fmt)):
        anchor.addnext(etree.Element(tag, href=url, rel=rel, type=MEDIA_TYPES[fmt]))
    if spec.page:
        parent = anchor.getparent()
        assert parent is not None
        # Before the entries: some readers stop looking at feed-level elements at the first.
        first = next((child for child in parent if child.tag in ("entry", "item")), None)
        mark = etree.Element(_FH + "archive", nsmap={"fh": HISTORY_NS})
        if first is not None:
            first.addprevious(mark)
        else:
            parent.append(mark)


def _stylesheet_pi(spec: FeedSpec) -> etree._Element:
    folder = spec.directory
    depth = folder.count("/") + 1 if folder else 0
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
    if options.websub_hub and not spec.page:
        # feedgen writes only the rel=self atom:link into RSS; WebSub needs rel=hub too.
        self_link.addnext(etree.Element(_A + "link", href=options.websub_hub, rel="hub"))
    # RFC 5005 appendix B: the same links in RSS, as atom:link.
    _add_history(self_link, _A + "link", spec, options, "rss")
    language = channel.find("language")
    last_build = etree.Element("lastBuildDate")
    last_build.text = format_datetime(_feed_updated(entries, options))
    (language if language is not None else channel[2]).addnext(last_build)
    for item, data in zip(channel.iter("item"), entries, strict=True):
        pub = etree.SubElement(item, "pubDate")
        pub.text = format_datetime(data.published)
    if options.stylesheet:
        root.addprevious(_stylesheet_pi(spec))
    return _serialize(root)


def _atom_document(fg: FeedGenerator, spec: FeedSpec, options: FeedOptions, entries: Sequence[EntryData]) -> bytes:
    root, _ = fg._create_atom()
    # feedgen builds the Atom tree without a namespace and writes `xmlns` as a plain attribute,
    # so its elements are found (and added) by their bare names.
    self_link = next(link for link in root.iterchildren("link") if link.get("rel") == "self")
    _add_history(self_link, "link", spec, options, "atom")
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
        if data.author:
            url = data.author_uri or (f"mailto:{data.author_email}" if data.author_email else None)
            author = {"name": data.author, **({"url": url} if url else {})}
            # 1.1's authors, and 1.0's author for the readers that know only that (the 1.1
            # text allows both).
            item["authors"] = [author]
            item["author"] = author
        if data.terms:
            item["tags"] = [t.label for t in data.terms]
        item["language"] = options.language
        items.append(item)
    document: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": spec.title,
        "home_page_url": spec.home_url,
        "feed_url": spec.at(0).url(options, "json"),  # the feed's, on its archive pages too
        "description": spec.description,
        "authors": [_feed_author(options)],
        "author": _feed_author(options),
        "language": options.language,
    }
    if options.websub_hub and not spec.page:
        document["hubs"] = [{"type": "WebSub", "url": options.websub_hub}]
    # JSON Feed pages by next_url, to older items: the feed to its newest full archive page,
    # each page to the one before. RFC 5005's links in an extension object.
    history = dict(history_links(spec, options, "json"))
    older = history.get("prev-archive")
    if older:
        document["next_url"] = older
    if spec.page:
        document["_rfc5005"] = {"about": "https://www.rfc-editor.org/rfc/rfc5005", "archive": True,
                                **{rel.replace("-", "_"): url for rel, url in history.items()}}
    document["items"] = items
    # No indent: only without it does json use its C encoder (5x faster on a cold build).
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _feed_author(options: FeedOptions) -> dict[str, str]:
    if options.site_author is None:
        return {"name": options.site_title, "url": options.site_url + "/"}
    name, email, uri = options.site_author
    url = _author_uri(uri, options.site_url) or (f"mailto:{email}" if email else None)
    return {"name": name, **({"url": url} if url else {})}


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


def render_listings(
    specs: Sequence[FeedSpec],
    options: FeedOptions,
    counts: Mapping[str, int],
    newest: Mapping[str, datetime | None],
    parts: Container[str] = (OUTLINE, INDEX_PAGE),
) -> dict[str, bytes]:
    """``feeds.opml``, the head snippets and the XSL stylesheet (``OUTLINE`` in ``parts``) and
    ``index.html`` (``INDEX_PAGE``)."""
    listed = _listed(specs, options, counts, newest)
    grouped = {kind: [item for item in listed if item.spec.kind == kind] for kind in ("site", "category", "tag")}
    opml_url = join_url(options.base_url, OPML)
    files: dict[str, bytes] = {}
    if OUTLINE in parts:
        opml_title = f"{options.site_title} {'全部订阅源' if options.zh else 'all feeds'}"
        files[OPML] = render_opml(grouped, options)
        files[HEAD_SNIPPET] = _head_snippet([*grouped["site"], *grouped["category"]], options.formats,
                                            (opml_title, opml_url))
        files[HEAD_SNIPPET_TAGS] = _head_snippet(grouped["tag"], options.formats, None)
        if options.stylesheet:
            files[STYLESHEET] = resources.files("finews_feeds").joinpath("templates/feeds/feed.xsl").read_bytes()
    if INDEX_PAGE in parts:
        rows = {kind: Markup("".join(_index_row(item, options.formats) for item in items))
                for kind, items in grouped.items()}
        context: dict[str, Any] = {"options": options, "groups": grouped, "formats": options.formats,
                                   "media_types": MEDIA_TYPES, "zh": options.zh, "opml_url": opml_url, "rows": rows}
        files[INDEX] = _template_env().get_template("index.html.j2").render(context).encode("utf-8")
    return files


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
    zh = options.zh
    for kind, label in (("category", "分类" if zh else "Categories"), ("tag", "标签" if zh else "Tags")):
        if groups[kind]:
            folder = etree.SubElement(body, "outline", text=label, title=label)
            for item in groups[kind]:
                outline(folder, item)
    return _serialize(root)
