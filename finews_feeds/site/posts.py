"""One post file: what its name and front matter say (:class:`Front`), and its rendered body (:class:`Body`).

Pure: bytes and settings in, data out. Reading a file's front matter is a third of the cost of
reading it whole, and a feed shows a few thousand of a site's 100,000 posts, so the two are
apart: every file's front is read (and kept by the cache), a body only when a post is shown.
The clock plays no part here: a post dated in the future is read like any other, and whoever
shows posts leaves it out until its time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, NamedTuple, TypeVar

from ..errors import PostError
from ..models import FileError, Post, Site
from ..urls import web_url
from . import liquid
from .frontmatter import Rejected, body_of, decode, split_front_matter
from .limits import terms_problem
from .markup import (
    Style,
    absolute_url,
    clean_line,
    encode_path,
    html_to_text,
    jekyll_slugify,
    render_body,
    summarize_text,
    titleize,
    typography,
)
from .walk import Entry, int64, read_file

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Jekyll's DATE_FILENAME_MATCHER, on the file name alone.
FILENAME = re.compile(r"^(\d{2,4})-(\d{1,2})-(\d{1,2})-(.+)(\.[^.]+)$")
_DATE = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:(?:[Tt]|\s+)(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(?:([Zz])|(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?)?\s*$"
)
_PLACEHOLDER = re.compile(r":([a-z_]+)")
#: Jekyll's default `markdown_ext`: converted to HTML; other posts (`.html`) pass through and
#: keep their extension in `:output_ext`.
MARKDOWN_EXTENSIONS = frozenset((".markdown", ".mkdown", ".mkdn", ".mkd", ".md"))




class NotPublished(Exception):
    """A post Jekyll would not publish (`published: false`): left out silently."""


@dataclass(frozen=True, slots=True)
class Front:
    """What a post file's name and front matter say: a post without its rendered body."""

    path: str  #: relative to the site, with `/` separators
    slug: str
    title: str
    date: datetime  #: aware, in the site's time zone
    updated: datetime | None
    categories: tuple[str, ...]  #: folder categories first, then the front matter's
    tags: tuple[str, ...]
    permalink: str
    url: str
    excerpt: str | None
    description: str | None
    image: str | None  #: the front matter's (the body's first image comes with the body)
    author: str | None  #: the author's name (:func:`author_of`)
    source: str  #: the first category's display name (the body may name the news source)
    author_email: str | None = None
    author_uri: str | None = None
    excerpt_only: bool = False  #: jekyll-feed's ``feed.excerpt_only`` (:func:`excerpt_only_of`)
    image_size: tuple[int, int] | None = None  #: of the front matter's image, when it gives both

    def feed_keys(self) -> tuple[str, ...]:
        """The feeds this post belongs to: the site's, its categories' and its tags'."""
        return ("site:", *(f"category:{name}" for name in self.categories), *(f"tag:{name}" for name in self.tags))


@dataclass(frozen=True, slots=True)
class Body:
    """What rendering a post's body gives."""

    html: str
    summary: str  #: plain text, cut at a sentence end
    image: str | None  #: the first image, absolute, if the URL policy lets it through
    source: str | None  #: `财联社` from `（文章来源：财联社）`
    content_hash: str  #: of ``html``: an edited body changes the feeds that show it
    #: what its Liquid looked up (``{% link %}``, ``{% post_url %}``): a stored body whose
    #: lookups answer otherwise now is rendered again
    references: tuple[liquid.Reference, ...] = ()


def whole(front: Front, body: Body) -> Post:
    """The post a feed or a digest shows."""
    return Post(path=front.path, slug=front.slug, title=front.title, date=front.date, updated=front.updated,
                categories=front.categories, tags=front.tags, permalink=front.permalink, url=front.url, id=front.url,
                summary=front.excerpt or front.description or body.summary, image=front.image or body.image,
                author=front.author, source=body.source or front.source, excerpt=front.excerpt,
                description=front.description, content_hash=body.content_hash, author_email=front.author_email,
                author_uri=front.author_uri, excerpt_only=front.excerpt_only,
                image_size=front.image_size if front.image else None)


# ---------------------------------------------------------------- dates


#: The instants every time zone can show. Python's datetimes end at years 1 and 9999 in each
#: zone, so `0001-01-01 +08:00` or `9999-12-31 -12:00` cannot be converted to UTC or to another
#: zone (OverflowError, in the collector, a feed or the digest); a day's margin keeps any
#: offset (at most 26 hours) inside.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
_RANGE = f"dates from {EARLIEST.date().isoformat()} to {LATEST.date().isoformat()} UTC"


def in_range(moment: datetime) -> bool:
    """Whether the aware ``moment`` lies between :data:`EARLIEST` and :data:`LATEST`."""
    if 1 < moment.year < 9999:  # more than a day from either end, whatever its offset
        return True
    try:  # aware datetimes compare by their offsets, without converting (which could overflow)
        return EARLIEST <= moment <= LATEST
    except OverflowError:
        return False


def _ranged(moment: datetime, zone: tzinfo, value: object) -> datetime:
    if not in_range(moment):
        shown = value.strip() if isinstance(value, str) else str(value)
        raise ValueError(f"{shown!r} is out of range ({_RANGE})")
    return moment.astimezone(zone)


def parse_date(value: object, zone: tzinfo) -> datetime:
    """A front-matter or file-name date as an aware datetime in ``zone``; times without offset are
    in ``zone``. Raises ValueError for anything impossible, unreadable or out of range
    (:func:`in_range`)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=zone)
        return _ranged(moment, zone, value)
    if isinstance(value, date):
        return _ranged(datetime.combine(value, time(), zone), zone, value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a date")
    match = _DATE.match(value)
    if not match:
        raise ValueError(f"{value.strip()!r} is not a date (expected e.g. 2022-04-20 09:15:40 +0800)")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro)
        if zulu:
            offset: tzinfo = UTC
        elif sign:
            delta = timedelta(hours=int(off_h), minutes=int(off_m or 0))
            offset = timezone(-delta if sign == "-" else delta)
        else:
            offset = zone
    except ValueError:
        raise ValueError(f"{value.strip()!r} is an impossible date") from None
    return _ranged(moment.replace(tzinfo=offset), zone, value)


# ---------------------------------------------------------------- front matter values


def _scalars(value: object) -> list[str]:
    """A front-matter list value flattened to strings; None, empty and mappings dropped."""
    if type(value) is str:  # the common cases, without the general walk below
        text = clean_line(value)
        return [text] if text else []
    if type(value) is list and all(type(item) is str for item in value):
        return [text for text in map(clean_line, value) if text]
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop(0)
        if isinstance(item, (list, tuple)):
            stack[0:0] = list(item)
        elif item is None or isinstance(item, (dict, set)):
            continue
        else:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            text = clean_line(text)
            if text:
                out.append(text)
    return out


def _plural(data: Mapping[str, Any], singular: str, plural: str) -> list[str]:
    """Jekyll's ``pluralized_array_from_hash``: the singular key if present (as one value), else the
    plural key (a string split on whitespace, a list as is)."""
    if data.get(singular) is not None:  # an empty `tag:` falls back to `tags`, as in Jekyll
        return _scalars(data[singular])
    if plural in data:
        value = data[plural]
        if isinstance(value, str):
            return _scalars(value.split())
        if isinstance(value, (list, tuple)):
            return _scalars(value)
    return []


def categories_of(folders: list[str], data: Mapping[str, Any]) -> tuple[str, ...]:
    """Folder categories first, then `categories` (string split on whitespace), then `category`."""
    merged = list(folders)
    plural = data.get("categories")
    if isinstance(plural, str):
        merged.extend(_scalars(plural.split()))
    elif plural is not None:
        merged.extend(_scalars(plural))
    merged.extend(_plural(data, "category", "categories"))
    return tuple(dict.fromkeys(c for c in merged if c))


def tags_of(data: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_plural(data, "tag", "tags")))


def _author(value: object) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("name")
    if isinstance(value, (list, tuple)):
        names = [_author(v) for v in value]
        return ", ".join(n for n in names if n) or None
    if value is None or isinstance(value, (dict, set)):
        return None
    return clean_line(str(value)) or None


def _liquid_empty(value: object) -> bool:
    """What Liquid's ``default`` filter replaces: nil, false, an empty string, list or mapping."""
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and not value)


Author = tuple[str, str | None, str | None]


def author_of(data: Mapping[str, Any], site: Site) -> Author | None:
    """The author as jekyll-feed resolves it: the front matter's ``author``, else the first of
    ``authors``, else the site's ``author``; a name found in ``site.data.authors`` stands for its
    entry there; from a mapping, its ``name``, ``email`` and ``uri``. None: no name."""
    value: Any = data.get("author")
    if _liquid_empty(value):
        authors = data.get("authors")
        value = authors[0] if isinstance(authors, list) and authors else None
    if _liquid_empty(value):
        value = site.config.get("author")
    table = site.data.get("authors")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and isinstance(table, Mapping):
        value = table.get(str(value), value)
    if isinstance(value, Mapping):
        name = _author(value.get("name"))
        return (name, _optional_line(value.get("email")), _optional_line(value.get("uri"))) if name else None
    name = _author(value)
    return (name, None, None) if name else None


def _optional_line(value: object) -> str | None:
    return clean_line(str(value)) or None if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def excerpt_only_of(data: Mapping[str, Any], site: Site) -> bool:
    """jekyll-feed's ``post.feed.excerpt_only | default: site.feed.excerpt_only``, as Liquid
    reads it (a post's false gives way to the site's true; any value but nil and false is true)."""
    feed = data.get("feed")
    value = feed.get("excerpt_only") if isinstance(feed, Mapping) else None
    if _liquid_empty(value):
        site_feed = site.config.get("feed")
        value = site_feed.get("excerpt_only") if isinstance(site_feed, Mapping) else None
    return value is not None and value is not False


def title_text(value: str, site: Site) -> str:
    """A title (one clean line) as jekyll-feed publishes it (``smartify | strip_html |
    normalize_whitespace``): plain text, kramdown's typography when the site's Markdown is kramdown's."""
    text = html_to_text(value) if "<" in value or "&" in value else value  # value: a clean line already
    if not _TYPOGRAPHIC.search(text):  # most titles: nothing kramdown's typography changes
        return text
    return clean_line(typography(text, site.smart_quotes)) if site.smart_quotes else text


_TYPOGRAPHIC = re.compile(r"""['"]|--|\.\.\.|<<|>>""")


def markdown_style(site: Site) -> Style:
    """What the site's Markdown converter adds to CommonMark (see :func:`.jekyll.markdown_settings`)."""
    return _style(site.header_ids, site.smart_quotes)


@functools.lru_cache(maxsize=64)
def _style(ids: str, quotes: str) -> Style:
    return Style(ids=ids, quotes=quotes)


def _image(value: object) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("path") or value.get("url")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


#: The largest width or height believed (a typo such as 6000000 is dropped, not published).
MAX_IMAGE_SIDE = 100_000


def _image_size(value: object) -> tuple[int, int] | None:
    """``width`` and ``height`` of an ``image:`` mapping (jekyll-seo-tag's form), when both are
    whole numbers of pixels; a reader lays out the image before it loads with them."""
    if not isinstance(value, Mapping):
        return None
    sides = []
    for name in ("width", "height"):
        side = value.get(name)
        if isinstance(side, str) and side.strip().removesuffix("px").isdigit():
            side = int(side.strip().removesuffix("px"))
        if isinstance(side, bool) or not isinstance(side, int) or not 0 < side <= MAX_IMAGE_SIDE:
            return None
        sides.append(side)
    return sides[0], sides[1]


def _image_url(image: str | None, url: str) -> str | None:
    """A front-matter image as published: absolute, and only when it passes the URL policy
    (:func:`~finews_feeds.urls.web_url`) as the author wrote it."""
    allowed = web_url(image, url)
    return absolute_url(allowed, url) if allowed is not None else None


def _optional_text(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list, set, tuple)):
        return None
    text = html_to_text(str(value))
    return text or None


# ---------------------------------------------------------------- permalinks


class _Parts(NamedTuple):
    """What a permalink's placeholders are made of."""

    categories: tuple[str, ...]
    moment: datetime
    slug: str
    name: str
    ext: str


#: Placeholder values, computed only when a pattern uses them (three slugs and four strftime
#: calls a post otherwise).
_PERMALINK_VALUES: dict[str, Callable[[_Parts], str]] = {
    "categories": lambda p: "/".join(dict.fromkeys(c.lower() for c in p.categories)),
    "year": lambda p: f"{p.moment.year:04d}",
    "month": lambda p: f"{p.moment.month:02d}",
    "i_month": lambda p: str(p.moment.month),
    "day": lambda p: f"{p.moment.day:02d}",
    "i_day": lambda p: str(p.moment.day),
    "short_year": lambda p: f"{p.moment.year % 100:02d}",
    "hour": lambda p: f"{p.moment.hour:02d}",
    "minute": lambda p: f"{p.moment.minute:02d}",
    "second": lambda p: f"{p.moment.second:02d}",
    "y_day": lambda p: f"{p.moment.timetuple().tm_yday:03d}",
    "week": lambda p: f"{p.moment.isocalendar()[1]:02d}",
    "short_day": lambda p: p.moment.strftime("%a"),
    "long_day": lambda p: p.moment.strftime("%A"),
    "short_month": lambda p: p.moment.strftime("%b"),
    "long_month": lambda p: p.moment.strftime("%B"),
    "title": lambda p: jekyll_slugify(p.slug, "pretty", cased=True),
    "slug": lambda p: jekyll_slugify(p.slug),
    "name": lambda p: jekyll_slugify(p.name),
    "output_ext": lambda p: ".html" if p.ext.lower() in MARKDOWN_EXTENSIONS else p.ext,
    "collection": lambda p: "posts",
}
_SLASHES = re.compile(r"/{2,}")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> tuple[tuple[str, Callable[[_Parts], str] | None], ...]:
    """``pattern`` as pieces: literal text (value None), or a placeholder's value function and
    the text that follows it in the placeholder's match. A site has one or two patterns."""
    pieces: list[tuple[str, Callable[[_Parts], str] | None]] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(pattern):
        pieces.append((pattern[pos : match.start()], None))
        pos = match.end()
        key = match.group(1)
        # Jekyll matches greedily, then lets `:title_` mean `:title` followed by `_`.
        for candidate in (key, key.rstrip("_")):
            value = _PERMALINK_VALUES.get(candidate)
            if value is not None:
                pieces.append((key[len(candidate) :], value))
                break
        else:
            pieces.append((match.group(0), None))
    pieces.append((pattern[pos:], None))
    return tuple(piece for piece in pieces if piece != ("", None))


def permalink_of(pattern: str, *, categories: tuple[str, ...], moment: datetime, slug: str, name: str, ext: str) -> str:
    """Expand a Jekyll permalink pattern and sanitise it as Jekyll's ``URL#sanitize_url`` does;
    the result is percent-encoded."""
    parts = _Parts(categories, moment, slug, name, ext)
    path = "/" + "".join([piece if value is None else value(parts) + piece for piece, value in _compiled(pattern)])
    path = path.replace("..", "/").replace("./", "")
    path = _SLASHES.sub("/", path)
    return encode_path(path)


# ---------------------------------------------------------------- one file


def read_front(path: str, raw: bytes, site: Site) -> Front:
    """What the file ``path`` (relative to the site, with `/`), holding ``raw``, says as a post.

    Raises :class:`~finews_feeds.errors.PostError` for a file that cannot be a post,
    :class:`NotPublished` for `published: false`."""
    try:
        return _read_front(path, raw, site)
    except Rejected as exc:
        raise PostError(path, str(exc)) from None


def _read_front(path: str, raw: bytes, site: Site) -> Front:
    parts = path.split("/")
    match = FILENAME.match(parts[-1])
    if not match:
        raise Rejected("file name does not match YYYY-MM-DD-slug.ext")
    year, month, day, file_slug, ext = match.groups()
    text = decode(raw, site.encoding)
    data, _ = split_front_matter(text, site.limits)

    if data.get("published", True) is False:  # only the boolean: Jekyll publishes `published: "false"`
        raise NotPublished(path)

    zone = site.timezone
    if data.get("date") not in (None, ""):
        try:
            moment = parse_date(data["date"], zone)
        except ValueError as exc:
            raise Rejected(f"date: {exc}") from None
    else:
        try:
            moment = datetime(int(year), int(month), int(day), tzinfo=zone)
        except ValueError:
            raise Rejected(f"file name date {year}-{month}-{day} is an impossible date") from None
        if not in_range(moment):
            raise Rejected(f"file name date {year}-{month}-{day} is out of range ({_RANGE}; or set a date in the front matter)")

    slug_value = data.get("slug")
    slug = clean_line(str(slug_value)) if isinstance(slug_value, (str, int, float)) and str(slug_value).strip() else file_slug
    title = " ".join(_scalars(data.get("title"))) if not isinstance(data.get("title"), (dict, list)) else ""
    title = title_text(title, site) if title else ""
    if not title:
        title = clean_line(titleize(file_slug))

    relative = relative_path(path, site)
    inner = relative.split("/")
    folders = [p for p in inner[: inner.index("_posts")] if p] if "_posts" in inner else []
    categories = categories_of(folders, data)
    tags = tags_of(data)
    limits = site.limits
    if len(categories) > limits.categories or len(tags) > limits.tags:
        raise Rejected(terms_problem(len(categories), len(tags), limits) or "")

    pattern = data.get("permalink")
    if not isinstance(pattern, str) or not pattern.strip():
        pattern = site.permalink
    permalink = permalink_of(
        pattern.strip(), categories=categories, moment=moment, slug=slug, name=parts[-1][: -len(ext)], ext=ext
    )
    url = site.url + permalink

    excerpt = _optional_text(data.get("excerpt"))
    description = _optional_text(data.get("description"))
    image = _image(data.get("image"))
    image_size = _image_size(data.get("image"))

    updated: datetime | None = None
    if data.get("last_modified_at") not in (None, ""):
        try:
            updated = parse_date(data["last_modified_at"], zone)
        except ValueError as exc:
            log.warning("%s: last_modified_at is not a usable date (%s); ignored", path, exc)

    author = author_of(data, site)
    return Front(
        path=path,
        slug=slug,
        title=title,
        date=moment,
        updated=updated,
        categories=categories,
        tags=tags,
        permalink=permalink,
        url=url,
        excerpt=excerpt,
        description=description,
        image=_image_url(image, url) if image else None,
        author=author[0] if author else None,
        source=site.category_title(categories[0]) if categories else site.title,
        author_email=author[1] if author else None,
        author_uri=author[2] if author else None,
        excerpt_only=excerpt_only_of(data, site),
        image_size=image_size if image else None,
    )


def relative_path(path: str, site: Site) -> str:
    """Jekyll's ``relative_path`` of the post at ``path`` (from the site): from the site's
    ``collections_dir`` when it is set."""
    prefix = site.collections_dir.strip("/") + "/" if site.collections_dir.strip("/") else ""
    return path[len(prefix) :] if prefix and path.startswith(prefix) else path


def render(front: Front, raw: bytes, site: Site, links: liquid.Links | None = None) -> Body:
    """The body of the file ``raw`` whose front is ``front``, rendered: Liquid first (as Jekyll
    does, unless `render_with_liquid: false`), then Markdown. ``links`` answers ``{% link %}``
    and ``{% post_url %}`` (the collected posts)."""
    try:
        text = decode(raw, site.encoding)
        body = body_of(text)
    except (Rejected, ValueError) as exc:
        raise PostError(front.path, str(exc)) from None
    style = markdown_style(site)
    references: tuple[liquid.Reference, ...] = ()
    if liquid.has_liquid(body):
        try:
            data, _ = split_front_matter(text, site.limits)
        except Rejected as exc:
            raise PostError(front.path, str(exc)) from None
        if data.get("render_with_liquid") is not False:
            body, references = _render_liquid(front, data, text, body, site, style, links or liquid.NoLinks())
    ext = os.path.splitext(front.path)[1]
    markdown = ext.lower() in MARKDOWN_EXTENSIONS
    rendered = render_body(body, front.url, markdown=markdown, style=style)
    return Body(html=rendered.html, summary=summarize_text(rendered.text, site.summary_chars),
                image=web_url(rendered.image, front.url), source=rendered.source,
                content_hash=hashlib.blake2b(rendered.html.encode("utf-8"), digest_size=12).hexdigest(),
                references=references)


def _render_liquid(front: Front, data: Mapping[str, Any], text: str, body: str, site: Site, style: Style,
                   links: liquid.Links) -> tuple[str, tuple[liquid.Reference, ...]]:
    line = text[: len(text) - len(body)].count("\n") + 1 if text.endswith(body) else 1
    name = front.path.rsplit("/", 1)[-1]
    match = FILENAME.match(name)
    page = liquid.page_variable(data, title=front.title, date=front.date, permalink=front.permalink,
                                relative_path=relative_path(front.path, site), slug=front.slug,
                                ext=match.group(5) if match else os.path.splitext(name)[1],
                                categories=front.categories, tags=front.tags, excerpt=front.excerpt, content=body)
    try:
        return liquid.render(body, site=site, page=page, style=style, links=links, line=line)
    except liquid.LiquidFailed as exc:
        raise PostError(front.path, str(exc)) from None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A post and its rendered body's HTML."""

    post: Post
    html: str


def parse_post(path: str, raw: bytes, site: Site) -> Parsed:
    """A file read whole: :func:`read_front` and :func:`render`. Raises as :func:`read_front`."""
    front = read_front(path, raw, site)
    body = render(front, raw, site)
    return Parsed(whole(front, body), body.html)


#: What reading a file gave: its front, the reason it was rejected, or None (unpublished).
Outcome = Front | FileError | None


def read_entry(entry: Entry, site: Site) -> Outcome:
    """Read one walked file's front; never raises: a bad post is a :class:`FileError` naming it."""
    try:
        raw = read_file(os.path.join(site.source, entry.path), entry.size)
    except OSError as exc:
        return FileError(entry.path, f"cannot read: {exc.strerror}")
    return _guarded(entry.path, lambda: read_front(entry.path, raw, site))


def render_entry(front: Front, site: Site, links: liquid.Links | None = None) -> tuple[Entry | None, Body | FileError | None]:
    """Render the body of a post read before, with the size and mtime of the file as it was
    read (None when it could not be); never raises. None for the body when the file is no
    longer a published post."""
    try:
        with open(os.path.join(site.source, front.path), "rb") as handle:
            info = os.fstat(handle.fileno())
            raw = handle.read()
    except OSError as exc:
        return None, FileError(front.path, f"cannot read: {exc.strerror}")
    return Entry(front.path, info.st_size, int64(info.st_mtime_ns)), _guarded(front.path, lambda: render(front, raw, site, links))


def _guarded(path: str, read: Callable[[], T]) -> T | FileError | None:
    try:
        return read()
    except PostError as exc:
        return FileError(path, exc.reason)
    except NotPublished:
        return None
    except RecursionError:
        return FileError(path, "front matter or body nested too deeply to read")
    except Exception as exc:  # a bad post never stops the run, whatever a library raises on it
        log.exception("%s: unexpected error while reading", path)
        return FileError(path, f"cannot be read ({type(exc).__name__}: {exc}); please report this file")
