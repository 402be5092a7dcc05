"""The plan of a build: which feeds exist, what each is called and where it goes, and which
posts each shows, on the feed itself and on its archive pages.

Archive pages (RFC 5005 archived feeds): a feed's posts, oldest first, cut into pages of
``page_size``; page N (from 1) holds posts ``(N-1)*size`` to ``N*size - 1`` of that order and
is published at ``<feed folder>/archive/<N>/`` once full. A page's content follows from the
posts alone (no state kept between builds), so a rebuild from nothing gives the same pages, and
a new post (dated after the others) only ever fills the page after the last full one. The feed
itself shows its newest ``limit`` posts, at least every post no full page holds yet (the page
size is at most the limit).

The planner asks the posts (:class:`~finews_feeds.models.Posts`) two questions: which feeds
have posts (with their counts and newest dates), and which are the newest posts of one feed.
The collector's cache answers them from SQLite without loading a site's 100,000 posts; a
:class:`~finews_feeds.models.PostSet` answers them from a list in memory. Planning only the feeds that
changed is planning with ``keys``; the specs, slugs and counts of every feed are always made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from ..config import FeedsConfig
from ..errors import ConfigError
from ..models import Post, Posts, PostSet, Site
from ..site.markup import clean_line, clean_text, html_to_text
from ..site.posts import author_of
from .slugs import assign_slugs, join_url

FORMATS = ("rss", "atom", "json")
FILE_NAMES = {"rss": "rss.xml", "atom": "atom.xml", "json": "feed.json"}
#: The folders of category and tag feeds (see :attr:`FeedSpec.folder`).
FEED_FOLDERS = ("categories", "tags")
#: The folder of a feed's archive pages, inside the feed's folder: ``archive/<N>/``.
ARCHIVE_FOLDER = "archive"
#: Separates a feed's key from its archive page in the manifest's records (no name holds it:
#: names are cleaned of control characters).
PAGE_SEPARATOR = "\x1f"


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
    pages: bool = True  #: ``feeds.pages``: an HTML page per feed (page.py)
    limit: int = 50
    category_limit: int = 50
    tag_limit: int = 50
    tags: bool = True
    #: who stands in for a post that names no author: "none", "source" or "site" (``feeds.author_fallback``)
    author_fallback: str = "none"
    #: the site's author (`_config.yml` ``author``: name, email, URI), the feeds' own author; None: the site title
    site_author: tuple[str, str | None, str | None] | None = None
    #: category name -> display title (``[categories.<slug>] title``), the label readers show
    category_titles: tuple[tuple[str, str], ...] = ()
    archives: bool = True  #: ``feeds.archives``
    archive_page_size: int = 0  #: ``feeds.archive_page_size``; 0: each feed's limit
    tag_archives: bool = False  #: ``feeds.tag_archives``

    def page_size(self, kind: str, limit: int) -> int:
        """Entries per archive page of a feed of ``kind`` showing ``limit`` entries; 0: not archived."""
        if not self.archives or limit < 1 or (kind == "tag" and not self.tag_archives):
            return 0
        return min(self.archive_page_size or limit, limit)

    @classmethod
    def from_config(cls, site: Site, feeds: FeedsConfig) -> FeedOptions:
        formats = tuple(f for f in FORMATS if f in feeds.formats)
        author = author_of({}, site)
        return cls(
            site_title=plain_text(site.title),
            site_url=site.url,
            base_url=(feeds.base_url or site.url + "/feeds").rstrip("/"),
            language=site.language,
            timezone=site.timezone,
            formats=formats,
            full_content=feeds.full_content,
            websub_hub=feeds.websub_hub,
            stylesheet=feeds.stylesheet,
            pages=feeds.pages,
            limit=feeds.limit,
            category_limit=feeds.category_limit or feeds.limit,
            tag_limit=feeds.tag_limit or feeds.limit,
            tags=feeds.tags,
            author_fallback=feeds.author_fallback,
            site_author=author,
            category_titles=tuple(sorted(site.category_titles.items())),
            archives=feeds.archives,
            archive_page_size=feeds.archive_page_size,
            tag_archives=feeds.tag_archives,
        )

    def fingerprint(self) -> str:
        """Everything in the options that shows in a feed, as text (part of each feed's signature)."""
        return repr((self.site_title, self.site_url, self.base_url, self.language, str(self.timezone),
                     self.formats, self.full_content, self.websub_hub, self.stylesheet, self.author_fallback,
                     self.site_author, self.category_titles))

    @property
    def zh(self) -> bool:
        return self.language.lower().startswith("zh")


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
    page_size: int = 0  #: entries per archive page; 0: the feed is not archived
    archived: int = 0  #: full archive pages (the feed's ``prev-archive`` is the last)
    page: int = 0  #: 0: the feed itself; N >= 1: its archive page N, oldest first
    #: ``kind:name``, the feed's key in plans, manifests and the post cache (asked for often
    #: enough to be made once)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.kind}:{self.name}")

    @property
    def directory(self) -> str:
        """The relative folder of this document's files (an archive page's own folder)."""
        if not self.page:
            return self.folder
        return f"{self.folder}/{ARCHIVE_FOLDER}/{self.page}" if self.folder else f"{ARCHIVE_FOLDER}/{self.page}"

    @property
    def record_key(self) -> str:
        """The key of this document's record in the manifest: the feed's key, with the page."""
        return f"{self.key}{PAGE_SEPARATOR}{self.page}" if self.page else self.key

    def at(self, page: int) -> FeedSpec:
        """The feed's archive page ``page`` (0: the feed itself)."""
        return dataclasses.replace(self, page=page)

    def path(self, fmt: str) -> str:
        folder = self.directory
        return f"{folder}/{FILE_NAMES[fmt]}" if folder else FILE_NAMES[fmt]

    def url(self, options: FeedOptions, fmt: str) -> str:
        return f"{_folder_url(options.base_url, self.directory)}/{FILE_NAMES[fmt]}"

    def header(self) -> str:
        """The feed-level fields as text (part of the feed's signature)."""
        return "\x1f".join((self.kind, self.name, self.slug, self.title, self.description, self.home_url,
                            self.folder, str(self.limit)))


@dataclass(slots=True)
class FeedPlan:
    """Every feed of a build, and the posts shown by those planned (newest first, cut at the
    feed's limit)."""

    specs: list[FeedSpec]
    entries: dict[str, list[Post]]  #: spec key -> posts, for the feeds planned
    slugs: dict[str, dict[str, str]] = field(default_factory=dict)  #: kind -> name -> slug
    counts: dict[str, int] = field(default_factory=dict)  #: spec key -> posts in the feed's category or tag
    newest: dict[str, datetime | None] = field(default_factory=dict)  #: spec key -> its newest post's date
    #: spec key -> its full archive pages, oldest first, each a list of (path, version) oldest
    #: first, for the feeds planned that are archived (see :meth:`~finews_feeds.models.Posts.versions`)
    pages: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)


@lru_cache(maxsize=65536)
def plain_text(text: str) -> str:
    """The site's title as text: HTML dropped, as jekyll-feed drops it from titles (category and
    tag names are names, shown as written)."""
    return html_to_text(text) if "<" in text or "&" in text else clean_line(text)


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


def plan(index: Posts, site: Site, options: FeedOptions, until: float | None,
         previous_slugs: Mapping[str, Mapping[str, str]] | None = None, keys: Iterable[str] | None = None,
         known: Container[str] = ()) -> FeedPlan:
    """The plan of every feed of ``index`` as of ``until``, with the posts of those in ``keys``
    (every feed when None) and of those not in ``known`` (feeds a build knows nothing of).
    ``previous_slugs`` keeps feed URLs stable across builds."""
    previous_slugs = previous_slugs or {}
    found = index.feeds(until)
    by_kind: dict[str, list[str]] = {"category": [], "tag": []}
    for key in found:
        kind, _, name = key.partition(":")
        if kind in by_kind and (kind != "tag" or options.tags):
            by_kind[kind].append(name)
    cat_slugs = assign_slugs(by_kind["category"], "category", previous_slugs.get("category"))
    tag_slugs = assign_slugs(by_kind["tag"], "tag", previous_slugs.get("tag"))
    title = options.site_title
    def archive(kind: str, name: str, limit: int) -> dict[str, int]:
        size = options.page_size(kind, limit)
        count = found.get(f"{kind}:{name}", (0, 0.0))[0]
        return {"page_size": size, "archived": count // size if size else 0}

    specs = [FeedSpec("site", "", "", title, f"{title}: 最新文章" if options.zh else f"{title}: latest posts",
                      site.url + "/", "", options.limit, **archive("site", "", options.limit))]
    for name in sorted(by_kind["category"], key=lambda n: (site.category_order.get(n, 1000), n)):
        shown = clean_text(site.category_title(name))
        slug = cat_slugs[name]
        specs.append(FeedSpec("category", name, slug, f"{title} · {shown}", f"{title}: {shown}",
                              _page_url(site, site.category_url, slug), f"categories/{slug}", options.category_limit,
                              **archive("category", name, options.category_limit)))
    for name in sorted(by_kind["tag"]):
        shown = clean_text(name)
        slug = tag_slugs[name]
        specs.append(FeedSpec("tag", name, slug, f"{title} · #{shown}", f"{title}: #{shown}",
                              _page_url(site, site.tag_url, slug), f"tags/{slug}", options.tag_limit,
                              **archive("tag", name, options.tag_limit)))
    wanted = None if keys is None else set(keys)
    paths = {spec.key: index.newest(spec.key, until, spec.limit) if spec.limit > 0 else []
             for spec in specs if wanted is None or spec.key in wanted or spec.key not in known}
    loaded = {post.path: post for post in index.posts_of(list(dict.fromkeys(p for ps in paths.values() for p in ps)))}
    pages: dict[str, list[list[tuple[str, str]]]] = {}
    for spec in specs:
        if spec.archived and spec.key in paths:
            members = index.versions(spec.key, until)[::-1]  # oldest first
            size = spec.page_size
            pages[spec.key] = [members[n * size:(n + 1) * size] for n in range(len(members) // size)]
    zone = options.timezone
    return FeedPlan(
        specs=specs,
        entries={key: [loaded[p] for p in ps if p in loaded] for key, ps in paths.items()},
        slugs={"category": cat_slugs, "tag": tag_slugs},
        counts={spec.key: found.get(spec.key, (0, 0.0))[0] for spec in specs},
        newest={spec.key: datetime.fromtimestamp(found[spec.key][1], zone) if spec.key in found else None
                for spec in specs},
        pages=pages,
    )


def plan_feeds(posts: Sequence[Post], site: Site, options: FeedOptions,
               previous_slugs: Mapping[str, Mapping[str, str]] | None = None) -> FeedPlan:
    """The plan of every feed of ``posts`` (all shown, whatever their dates)."""
    return plan(PostSet(site, posts), site, options, None, previous_slugs)
