"""The data that flows between the stages: a resolved site, its posts, and what went wrong.

Posts carry metadata only. A site of 100,000 posts would not fit its bodies in memory, so the
rendered HTML of a post is fetched on demand (``Posts.content``: the collector's cache), and
only for the few posts a feed or a digest shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class FrontMatterLimits:
    """The most one front matter may hold (see ``[collector]`` in ``config.py``)."""

    chars: int = 100_000  #: characters of the front matter's text (read before anything is parsed)
    aliases: int = 1_000  #: alias references (`*name`)
    nodes: int = 10_000  #: values with every alias written out: mappings, lists, keys and scalars
    depth: int = 32  #: lists and mappings inside one another (a mapping of strings is 1)
    tags: int = 1_000  #: distinct tags of one post
    categories: int = 100  #: distinct categories of one post, folders included


#: What Jekyll 4.3 always adds to `_config.yml`'s ``exclude`` (``Configuration::DEFAULT_EXCLUDES``).
JEKYLL_EXCLUDES = (".sass-cache", ".jekyll-cache", "gemfiles", "Gemfile", "Gemfile.lock", "node_modules",
                   "vendor/bundle/", "vendor/cache/", "vendor/gems/", "vendor/ruby/")
#: Jekyll 4.3's ``include`` when `_config.yml` sets none.
JEKYLL_INCLUDES = (".htaccess",)


@dataclass(frozen=True, slots=True)
class Site:
    """A Jekyll site's settings, resolved from our config over its ``_config.yml``."""

    source: str  #: folder of the site
    url: str  #: absolute URL of the site root, no trailing slash, baseurl included
    title: str
    timezone: ZoneInfo
    language: str
    permalink: str  #: permalink pattern (styles like `date` already expanded)
    category_url: str  #: path pattern with {slug}
    tag_url: str  #: path pattern with {slug}, or ""
    future: bool
    encoding: str
    summary_chars: int
    extensions: tuple[str, ...]
    #: category slug -> display name, from config
    category_titles: dict[str, str] = field(default_factory=dict)
    #: category slug -> position, from config
    category_order: dict[str, int] = field(default_factory=dict)
    #: the most one post's front matter may hold, from config `[collector]`
    limits: FrontMatterLimits = field(default_factory=FrontMatterLimits)
    #: `_config.yml` ``exclude`` with Jekyll's defaults, and ``include`` (glob patterns, from the site)
    exclude: tuple[str, ...] = JEKYLL_EXCLUDES
    include: tuple[str, ...] = JEKYLL_INCLUDES
    #: `_config.yml` ``collections_dir``: posts are read only from the `_posts` folders under it
    collections_dir: str = ""
    #: the folder Jekyll writes to, relative to the site ("" when outside it): never read
    destination: str = "_site"
    #: `_config.yml` as read (Liquid's ``site``), and the site's `_data` files (``site.data``)
    config: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    #: a digest of the `_includes` folder: a changed include renders every body again
    includes_digest: str = ""
    #: the path part of ``url`` that is the site's ``baseurl`` ("/blog", or ""): Liquid's ``relative_url``
    baseurl: str = ""
    #: what its Markdown converter adds to CommonMark (kramdown's, from `_config.yml`): header ids
    #: ("gfm", "kramdown" or "": none) and the four characters of smart quotes ("": no typography)
    header_ids: str = ""
    smart_quotes: str = ""

    def category_title(self, name: str) -> str:
        return self.category_titles.get(name, name)


@dataclass(frozen=True, slots=True)
class Post:
    """One published post, as Jekyll would publish it."""

    path: str  #: path of the file relative to the site folder, with `/` separators
    slug: str  #: the slug part of the file name (`NW202204202349219681`)
    title: str  #: plain text, control characters removed
    date: datetime  #: aware, in the site's time zone
    updated: datetime | None  #: from `last_modified_at`, aware
    categories: tuple[str, ...]  #: as Jekyll lists them: folder categories first, then front matter
    tags: tuple[str, ...]
    permalink: str  #: site-relative, percent-encoded path, e.g. /cailianshe/2022/04/20/x.html
    url: str  #: absolute, percent-encoded URL (a URI, never an IRI)
    id: str  #: stable id for feeds and the digest: the absolute URL
    summary: str  #: plain text, cut at a sentence end near `summary_chars`
    image: str | None  #: absolute URL of the first image, if any
    author: str | None  #: the author's name, resolved as jekyll-feed does (see ``posts.author_of``)
    source: str  #: `财联社` from `（文章来源：财联社）`, else the category's display name
    excerpt: str | None = None  #: front matter `excerpt` (plain text), if given
    description: str | None = None  #: front matter `description`, if given
    author_email: str | None = None
    author_uri: str | None = None
    #: jekyll-feed's ``feed.excerpt_only`` (the post's, else the site's): feeds show the summary only
    excerpt_only: bool = False
    #: digest of the rendered HTML, so a build can tell an edited post
    content_hash: str = ""
    #: width and height of ``image`` in pixels, when the front matter gives them
    #: (``image: {path, width, height}``, jekyll-seo-tag's form)
    image_size: tuple[int, int] | None = None


def sort_key(post: Post) -> tuple[float, str]:
    """The collector's order of posts: newest first, then by path."""
    return (-post.date.timestamp(), post.path)


class ContentSource(Protocol):
    """Gives the rendered, absolutised HTML body of a post."""

    def __call__(self, post: Post) -> str: ...


@dataclass(frozen=True, slots=True)
class FileError:
    """A file the collector rejected, and why (for the user: path and a readable reason)."""

    path: str
    message: str


class Posts(Protocol):
    """What the later stages read of a site's posts: the collector's ``Collection`` (through its
    cache) or a :class:`PostSet` (posts held in memory). Dates are POSIX times; ``until`` is the
    latest date shown (None: every post, the site publishes future posts)."""

    site: Site

    @property
    def until(self) -> float | None:
        """The latest date shown."""
        ...

    @property
    def errors(self) -> list[FileError]:
        """Every file rejected."""
        ...

    def between(self, start: datetime, end: datetime) -> list[Post]:
        """The posts dated in [start, end), newest first."""
        ...

    def content(self, post: Post) -> str:
        """The rendered HTML of ``post``."""
        ...

    def feeds(self, until: float | None) -> dict[str, tuple[int, float]]:
        """Every feed key (``site:``, ``category:NAME``, ``tag:NAME``) with posts dated up to
        ``until``: post count and newest date."""
        ...

    def newest(self, key: str, until: float | None, limit: int) -> list[str]:
        """The paths of the ``limit`` newest posts of the feed ``key`` (all when negative), in
        :func:`sort_key` order."""
        ...

    def versions(self, key: str, until: float | None) -> list[tuple[str, str]]:
        """Every post of the feed ``key`` dated up to ``until``, in :func:`sort_key` order, as
        its path and a version: a text that changes when anything the feeds show of the post
        may have changed (its file, or its date). Cheap: archive pages are compared by it
        without loading their posts."""
        ...

    def posts_of(self, paths: Sequence[str]) -> list[Post]:
        """The whole posts at ``paths``, in that order."""
        ...


def feed_keys(post: Post) -> tuple[str, ...]:
    """The feeds a post belongs to: the site's, its categories' and its tags'."""
    return ("site:", *(f"category:{name}" for name in post.categories), *(f"tag:{name}" for name in post.tags))


class PostSet:
    """:class:`Posts` held in memory (tests, and callers that have their posts at hand)."""

    def __init__(self, site: Site, posts: Iterable[Post], content: ContentSource | None = None,
                 errors: Sequence[FileError] = (), until: float | None = None) -> None:
        self.site = site
        self.until = until
        self.ordered = sorted(posts, key=sort_key)
        self.by_path = {post.path: post for post in self.ordered}
        self._content = content
        self._errors = list(errors)

    @property
    def errors(self) -> list[FileError]:
        return list(self._errors)

    @property
    def posts(self) -> list[Post]:
        return [p for p in self.ordered if self.until is None or p.date.timestamp() <= self.until]

    def between(self, start: datetime, end: datetime) -> list[Post]:
        return [p for p in self.ordered if start <= p.date < end]

    def content(self, post: Post) -> str:
        return self._content(post) if self._content is not None else ""

    def feeds(self, until: float | None) -> dict[str, tuple[int, float]]:
        counts: dict[str, int] = {}
        newest: dict[str, float] = {}
        for post in self.ordered:
            moment = post.date.timestamp()
            if until is not None and moment > until:
                continue
            for key in feed_keys(post):
                counts[key] = counts.get(key, 0) + 1
                newest.setdefault(key, moment)
        return {key: (count, newest[key]) for key, count in counts.items()}

    def newest(self, key: str, until: float | None, limit: int) -> list[str]:
        found = [p.path for p in self.ordered if (until is None or p.date.timestamp() <= until) and key in feed_keys(p)]
        return found[:limit] if limit >= 0 else found

    def posts_of(self, paths: Sequence[str]) -> list[Post]:
        return [self.by_path[path] for path in paths if path in self.by_path]

    def versions(self, key: str, until: float | None) -> list[tuple[str, str]]:
        return [(p.path, hashlib.blake2b(repr(p).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest())
                for p in self.ordered if (until is None or p.date.timestamp() <= until) and key in feed_keys(p)]
