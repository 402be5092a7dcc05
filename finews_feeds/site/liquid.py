"""Liquid in post bodies, rendered as Jekyll 4.3 renders it, with python-liquid.

Jekyll renders a post's body with Liquid before Markdown whenever it holds `{{` or `{%` and its
front matter does not say ``render_with_liquid: false``; so does :func:`render`. A template sees
Jekyll's ``site`` (`_config.yml`, ``site.data`` from `_data`), ``page`` (the post's front matter
and what Jekyll adds: url, id, path, slug, categories, tags, date…) and ``jekyll``; Jekyll's
filters (:data:`FILTERS`) and tags: ``{% link %}`` and ``{% post_url %}`` (answered by a
:class:`Links` passed in: the post cache and the site's files), ``{% include %}`` (files of
`_includes` only, by a relative path: a template never reads outside the site) and
``{% highlight %}``; ``{% raw %}`` and the standard tags are python-liquid's.

A template never runs for ever: python-liquid's resource limits (:class:`JekyllEnvironment`)
stop it with an error, which, like any template error, rejects the post naming the file and
line (:class:`LiquidFailed`). Jekyll stops the whole build instead; here every other post is
built.

What :func:`render` looked up (links, post URLs) comes back with the output, so that a stored
body can be checked against the site as it is now (a renamed post moves every link to it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..models import Site
from .markup import Style

#: Reference kinds a render records (see :data:`Reference`).
LINK = "link"
POST_URL = "post_url"
#: One thing a render looked up: its kind, what the template asked for, and the answer (a
#: site-relative URL; None: not found).
Reference = tuple[str, str, str | None]

JEKYLL_VERSION = "4.3.1"


class LiquidFailed(Exception):
    """A template error: the message names the line in the post file (or the include)."""


class Links(Protocol):
    """What ``{% link %}`` and ``{% post_url %}`` are answered from."""

    def link(self, path: str) -> str | None:
        """The site-relative URL (without baseurl) of the file at ``path`` (as Jekyll's
        ``relative_path``: from the site, or from ``collections_dir`` for a post), or None."""
        ...

    def post_url(self, name: str) -> str | None:
        """The site-relative URL of the post ``name`` (`2010-07-21-name`, `sub/2010-07-21-name`:
        Jekyll's ``PostComparer``), or None."""
        ...


class NoLinks:
    """:class:`Links` that find nothing (a post rendered alone)."""

    def link(self, path: str) -> str | None:
        return None

    def post_url(self, name: str) -> str | None:
        return None


def render(text: str, *, site: Site, page: Mapping[str, Any], style: Style, links: Links,
           line: int = 1) -> tuple[str, tuple[Reference, ...]]:
    """``text`` (a post's body, starting at ``line`` of its file) rendered with Liquid; what it
    looked up. Raises :class:`LiquidFailed` for any template error."""
    # The engine (python-liquid, asyncio with it) is imported when a post first holds Liquid:
    # imported with everything else it was half of a build's imports (0.10 of 0.22 s), a fifth of
    # a build after one new post, for sites whose posts hold none.
    from . import liquid_engine

    return liquid_engine.render(text, site=site, page=page, style=style, links=links, line=line)


# ---------------------------------------------------------------- what a post says to a template


def page_variable(data: Mapping[str, Any], *, title: str, date: dt.datetime, permalink: str, relative_path: str,
                  slug: str, ext: str, categories: Sequence[str], tags: Sequence[str], excerpt: str | None,
                  content: str) -> dict[str, Any]:
    """Jekyll's ``page`` for a post: its front matter and what Jekyll adds to it."""
    url = permalink
    return {**data, "title": data.get("title", title), "date": date, "url": url,
            "id": url.rsplit("/", 1)[0] + "/" + str(data.get("slug") or slug) if "/" in url else url,
            "path": relative_path, "relative_path": relative_path, "slug": data.get("slug") or slug, "ext": ext,
            "categories": list(categories), "tags": list(tags), "collection": "posts", "draft": False,
            "excerpt": excerpt, "content": content, "output": None, "next": None, "previous": None}


def has_liquid(text: str) -> bool:
    """Jekyll's ``Utils.has_liquid_construct?``."""
    return "{{" in text or "{%" in text


def references_hold(references: Iterable[Reference], links: Links) -> bool:
    """Whether every lookup of a stored render still gives the same answer."""
    for kind, argument, found in references:
        now = links.link(argument) if kind == LINK else links.post_url(argument)
        if now != found:
            return False
    return True
