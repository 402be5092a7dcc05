"""The data that flows between the stages: a resolved site, its posts, and what went wrong.

Posts carry metadata only. A site of 100,000 posts would not fit its bodies in memory, so the
rendered HTML of a post is fetched on demand through :class:`ContentSource` (the collector's
cache), and only for the few posts a feed or a digest shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from .site.limits import FrontMatterLimits


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
    author: str | None
    source: str  #: `财联社` from `（文章来源：财联社）`, else the category's display name
    excerpt: str | None = None  #: front matter `excerpt` (plain text), if given
    description: str | None = None  #: front matter `description`, if given
    #: digest of the rendered HTML, so a build can tell an edited post; "" while the body is
    #: not rendered yet (see :attr:`rendered`)
    content_hash: str = ""

    @property
    def rendered(self) -> bool:
        """False for a post read up to its body only: its summary, image, source and content
        hash are not known yet. :meth:`Collection.complete` gives the rendered post."""
        return bool(self.content_hash)


def sort_key(post: Post) -> tuple[float, str]:
    """The collector's order of posts: newest first, then by path."""
    return (-post.date.timestamp(), post.path)


class ContentSource(Protocol):
    """Gives the rendered, absolutised HTML body of a post."""

    def __call__(self, post: Post) -> str: ...


class Completer(Protocol):
    """Renders the bodies of posts read up to their bodies only (see ``Post.rendered``)."""

    def __call__(self, posts: Sequence[Post]) -> list[Post]: ...


@dataclass(frozen=True, slots=True)
class FileError:
    """A file the collector rejected, and why (for the user: path and a readable reason)."""

    path: str
    message: str


@dataclass(slots=True)
class Collection:
    """What the collector returns: the site, its posts (newest first) and rejected files."""

    site: Site
    posts: list[Post]
    errors: list[FileError]
    content: ContentSource
    #: Renders bodies on demand: a cold collection of a large site reads only up to each body,
    #: as feeds show a few thousand of 100,000 posts. None when every post is rendered.
    completer: Completer | None = None
    #: Where in the collector cache's history this collection stands (``cache.Cursor``), so a
    #: later build can ask only for what changed since; None without a cache.
    cursor: tuple[str, int, int] | None = None
    #: When the earliest post left out for being dated in the future comes due, if any.
    due: datetime | None = None

    def complete(self, posts: Sequence[Post]) -> list[Post]:
        """``posts`` (of this collection) with their bodies rendered, in the same order; call it
        before showing a post's summary, image, source or content hash."""
        if self.completer is None or all(post.rendered for post in posts):
            return list(posts)
        return self.completer(posts)
