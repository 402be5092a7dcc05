"""The browser view of a feed: an HTML page of its title and entries, how to subscribe, its URL
to copy and links to its other formats and to the OPML file.

Chromium shows an RSS or Atom file as raw text and is removing XSLT (the ``feed.xsl`` fallback
works in Firefox and Safari today), so a person who follows a feed link needs a page made on the
server. The build writes it next to the feed's files (:func:`page_path`: ``index.html`` in a
category's or tag's folder, ``feed.html`` for the site's feeds, whose folder's ``index.html`` is
the list of every feed), and the daemon answers a feed URL with it when the request's ``Accept``
prefers ``text/html`` (:func:`finews_feeds.service.static.prefers_html`). One template,
``templates/feeds/feed.html.j2``, for both.

Pure, as the feed renderers: the same input gives the same bytes, so an unchanged page is not
rewritten and keeps its ETag.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import jinja2

from .plan import FILE_NAMES, FeedOptions, FeedSpec
from .slugs import join_url

#: The page of a category's or tag's feed, in its folder.
FOLDER_PAGE = "index.html"
#: The page of the site's feeds, in the output folder (whose index.html lists every feed).
SITE_PAGE = "feed.html"
LABELS = {"rss": "RSS", "atom": "Atom", "json": "JSON Feed"}
MEDIA_TYPES = {"rss": "application/rss+xml", "atom": "application/atom+xml", "json": "application/feed+json"}


def page_path(spec: FeedSpec) -> str:
    """Where the build writes the page of ``spec``, relative to the output folder."""
    return f"{spec.folder}/{FOLDER_PAGE}" if spec.folder else SITE_PAGE


def page_for(rel: str) -> str | None:
    """The page of the feed file ``rel`` (``categories/x/rss.xml`` -> ``categories/x/index.html``),
    or None when ``rel`` is not a current feed file."""
    folder, _, name = rel.rpartition("/")
    if name not in FILE_NAMES.values():
        return None
    if not folder:
        return SITE_PAGE
    parts = folder.split("/")
    return f"{folder}/{FOLDER_PAGE}" if len(parts) == 2 and parts[0] in ("categories", "tags") else None


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("finews_feeds", "templates/feeds"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(spec: FeedSpec, options: FeedOptions, entries: Sequence[Any]) -> dict[str, bytes]:
    """``{page_path(spec): the page}`` for ``entries`` (:class:`~finews_feeds.feeds.render.EntryData`)."""
    formats = [(fmt, LABELS[fmt], MEDIA_TYPES[fmt], spec.url(options, fmt)) for fmt in options.formats]
    if not formats or not options.pages:
        return {}
    context = {
        "spec": spec,
        "zh": options.zh,
        "language": options.language,
        "formats": formats,
        "main_url": formats[0][3],
        "opml_url": join_url(options.base_url, "feeds.opml"),
        "all_url": options.base_url + "/",
        "entries": [{"title": e.title, "url": e.url, "date": e.published.strftime("%Y-%m-%d %H:%M"),
                     "summary": e.summary,
                     # Display names (issue 17, item 4); the feed's own category or tag is not repeated.
                     "terms": [t.label for t in e.terms if t.term != spec.name]} for e in entries],
    }
    return {page_path(spec): _environment().get_template("feed.html.j2").render(context).encode("utf-8")}
