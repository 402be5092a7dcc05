"""The web app's HTML pages: Jinja2 templates in ``templates/web`` (autoescaped, no scripts, one
stylesheet: :mod:`finews_feeds.look`), rendered into responses with the headers every page
carries; the list of built feeds the home page links to (:class:`FeedList`) and the newest
digest it shows a sample of (:class:`LatestDigest`)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..feeds.plan import FILE_NAMES
from ..feeds.render import HEAD_SNIPPET, OPML
from ..feeds.slugs import quote_path
from ..feeds.writer import MANIFEST, Manifest
from ..look import ENVIRONMENT
from ..mail.archive import ArchiveEntry, published_days, read_entry

PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # The one stylesheet and nothing inline: a page has no style or script of its own.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'",
}
#: For pages that carry a token (so it does not leak to the links on them) and for refusals.
TOKEN_PAGE_HEADERS = {**PAGE_HEADERS, "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

#: The site's title, which heads every page: set for each request by :class:`SiteTitle`, so every
#: handler's page has it, whichever module renders it.
SITE_TITLE: ContextVar[str] = ContextVar("site_title", default="")


class SiteTitle:
    """ASGI middleware: the app's site title for the pages rendered while a request is handled."""

    def __init__(self, app: ASGIApp, title: str) -> None:
        self.app = app
        self.title = title

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = SITE_TITLE.set(self.title)
        try:
            await self.app(scope, receive, send)
        finally:
            SITE_TITLE.reset(token)


def page(template: str, title: str, status: int = 200, headers: Mapping[str, str] = PAGE_HEADERS,
         **context: Any) -> HTMLResponse:
    """The page ``template`` renders with ``title`` and ``context`` (and the site's title)."""
    context.setdefault("site_title", SITE_TITLE.get())
    document = ENVIRONMENT.get_template(template).render(title=title, **context)
    return HTMLResponse(document, status_code=status, headers=dict(headers))


def message(title: str, text: str, *, link: tuple[str, str] | None = None, status: int = 200,
            headers: Mapping[str, str] = PAGE_HEADERS, **context: Any) -> HTMLResponse:
    """A page that says ``text`` (plain text, escaped), with an optional (href, label) link."""
    return page("message.html", title, status, headers, text=text, link=link, **context)


@dataclass(frozen=True)
class FeedLinks:
    """One line of the home page's list: a label and its feeds as (format, href)."""

    label: str
    links: tuple[tuple[str, str], ...]


class FeedList:
    """The feeds under ``output`` that the home page links to: the site's, each category's (in
    the folder the last build gave it) and the OPML file and index page, when they exist."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self._lock = threading.Lock()
        self._manifest_key: tuple[int, int] | None = None
        self._folders: dict[str, str] = {}
        self._head_key: tuple[int, int] | None = None
        self._head = Markup("")

    def discovery(self) -> Markup:
        """The ``<link rel="alternate">`` lines of the site's and the categories' feeds (and the
        OPML file) for a page's ``<head>``: the snippet the build writes for the site's own pages
        (``_feeds_head.html``), so browsers' and readers' feed discovery finds the same feeds on
        the subscribe page. Empty before the first build; read again when it changes."""
        path = self.output / HEAD_SNIPPET
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if self._head_key == key:
                    return self._head
            # Written by the build, every value escaped there.
            head = Markup(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return Markup("")
        with self._lock:
            self._head_key, self._head = key, head
        return head

    def category_folders(self) -> dict[str, str]:
        """Category name -> folder of its feeds, from the last build's manifest (names are
        slugified, and two names that clash get distinct folders), re-read when it changes."""
        path = self.output / MANIFEST
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if self._manifest_key == key:
                    return dict(self._folders)
            manifest = Manifest.from_json(path.read_bytes())
        except OSError:
            return {}
        if manifest is None:
            return {}
        with self._lock:
            self._manifest_key, self._folders = key, dict(manifest.slugs.get("category", {}))
            return dict(self._folders)

    def feeds(self, site_title: str, categories: Iterable[tuple[str, str]]) -> list[FeedLinks]:
        """The site's feeds under ``site_title``, then those of each (name, title) category."""
        folders = self.category_folders()
        wanted = [(site_title, ""), *((title, f"categories/{folders.get(name, name)}/") for name, title in categories)]
        rows = []
        for label, folder in wanted:
            links = tuple((kind.upper(), f"/feeds/{quote_path(folder + name)}")
                          for kind, name in FILE_NAMES.items() if (self.output / folder / name).is_file())
            if links:
                rows.append(FeedLinks(label, links))
        return rows

    def more(self) -> list[tuple[str, str]]:
        """Links (href, label) to the OPML file and the index of every feed, those that exist."""
        links = []
        if (self.output / OPML).is_file():
            links.append((f"/feeds/{OPML}", "OPML（一次导入全部订阅源）"))
        if (self.output / "index.html").is_file():
            links.append(("/feeds/", "全部订阅源（含标签）"))
        return links


class LatestDigest:
    """The newest digest in the archive folder, for the sample under the subscribe form; read
    again only when the folder changes (a web copy or record written renames a file into it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._key: int | None = None
        self._entry: ArchiveEntry | None = None

    def get(self) -> ArchiveEntry | None:
        try:
            key = self.folder.stat().st_mtime_ns
        except OSError:
            return None
        with self._lock:
            if key == self._key:
                return self._entry
        days = published_days(self.folder)
        entry = read_entry(self.folder, days[0]) if days else None
        with self._lock:
            self._key, self._entry = key, entry
        return entry
