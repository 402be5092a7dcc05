"""The digest archive: every published digest, newest first, on paged HTML pages, and an Atom feed
of the digests themselves, written next to the web copies (``digests/`` under ``feeds.output``).

What "every day's digest" means: every web copy that was written, ``digests/DAY.html``, by the
daemon's digest job or by ``finews-feeds digest``. A day without one (no articles, the daemon down
that morning, a day before the list existed) is not in the archive, and nothing is rendered on
demand: a digest is what went out that morning, not what the site would give for that day now
(posts are edited and removed, templates change), and a static host can only show files. A
missing day can be written later with ``finews-feeds digest --date DAY`` (docs/archive.md).

Each web copy gets a record beside it, ``digests/DAY.json`` (subject, count, the headlines shown,
the time of its newest article), so the index is built from a kilobyte a day rather than from
the pages. A web copy without one (written before the archive existed) is read for its title and
headlines instead.

Layout (static hosting needs no query strings, so pages are folders, as Hugo and jekyll-paginate
do): ``digests/index.html`` (page 1), ``digests/page/N/index.html``, ``digests/atom.xml`` and the
shared stylesheet ``digests/site.<hash>.css``. Links between them are relative, so the folder works
wherever it is served (the web app's ``/digests/``, a static host's ``/feeds/digests/``).

Pure: :class:`ArchiveEntry` and its JSON, :func:`entry_from_html`, :func:`archive_files`. The
edges: :func:`read_entries` and :func:`publish` (files, under a lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import lxml.html
from feedgen.feed import FeedGenerator
from lxml import etree

from ..files import atomic_write
from ..look import ENVIRONMENT, STYLESHEET, STYLESHEET_NAME

log = logging.getLogger(__name__)

FOLDER = "digests"
INDEX = "index.html"
ATOM = "atom.xml"
ATOM_TYPE = "application/atom+xml"
LOCK = ".archive.lock"
GENERATOR = "finews-feeds"
#: The record format; a record of another version is read as missing.
RECORD_VERSION = 1
DAY_FILE = re.compile(r"(\d{4}-\d{2}-\d{2})\.html")
STYLESHEET_FILE = re.compile(r"site\.[0-9a-f]+\.css")
PAGE_FOLDER = re.compile(r"[1-9]\d*")
#: Headlines an index row shows (the Atom entry lists them all).
ROW_HEADLINES = 3
WEEKDAYS = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")
COUNT_TEXT = re.compile(r"共\s*(\d+)\s*篇")


@dataclass(frozen=True)
class Headline:
    """One article as the digest listed it: its title, its URL and the title of its category."""

    title: str
    url: str
    group: str = ""


@dataclass(frozen=True)
class ArchiveEntry:
    """One published digest."""

    day: date
    subject: str
    count: int
    headlines: tuple[Headline, ...]
    #: The time of its newest article (its Atom ``updated``): a fact of the digest, not of the
    #: clock, so publishing the same digest again writes the same feed.
    updated: datetime

    def to_json(self) -> bytes:
        return json.dumps({
            "version": RECORD_VERSION, "day": self.day.isoformat(), "subject": self.subject, "count": self.count,
            "updated": self.updated.isoformat(),
            "headlines": [{"title": h.title, "url": h.url, "group": h.group} for h in self.headlines],
        }, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes, day: date) -> ArchiveEntry | None:
        """The record of ``day``, or None when ``data`` is not one (damaged, another version, another day)."""
        try:
            raw = json.loads(data)
            if raw.get("version") != RECORD_VERSION or raw.get("day") != day.isoformat():
                return None
            updated = datetime.fromisoformat(raw["updated"])
            if updated.tzinfo is None:
                return None
            headlines = tuple(Headline(str(h["title"]), str(h["url"]), str(h.get("group", "")))
                              for h in raw["headlines"] if _web(str(h["url"])))
            return cls(day, str(raw["subject"]), int(raw["count"]), headlines, updated)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class ArchiveOptions:
    """What the archive's pages and feed say about the site, and their sizes."""

    site_title: str
    site_url: str  #: the site's root, no trailing slash
    feeds_url: str  #: where ``feeds.output`` is published (absolute, no trailing slash)
    subscribe_url: str  #: the subscribe page (the web app's root)
    language: str
    per_page: int
    feed_limit: int

    @property
    def index_url(self) -> str:
        return f"{self.feeds_url}/{FOLDER}/"

    def copy_url(self, day: date) -> str:
        """The absolute URL of a day's web copy (its Atom id and link)."""
        return f"{self.feeds_url}/{FOLDER}/{day.isoformat()}.html"


def _web(url: str) -> bool:
    """An http(s) URL (a startswith, not urlsplit: a year of records holds 10,000 of them)."""
    return url[:8].lower().startswith(("http://", "https://"))


def date_text(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def entry_from_html(day: date, document: bytes, modified: datetime) -> ArchiveEntry:
    """The record of a web copy written without one: its ``<title>``, its headlines (the links
    of class ``t``, as the bundled template writes them; none for a template without) and the
    count it states; ``modified`` (the file's time) stands for its newest article."""
    # Web copies are written as UTF-8 (write_atomic), whatever their meta says.
    root = lxml.html.document_fromstring(document.decode("utf-8", "replace"))
    title = " ".join((root.findtext(".//title") or "").split()) or f"{date_text(day)} 每日精选"
    headlines = []
    for anchor in root.iter("a"):
        href = (anchor.get("href") or "").strip()
        if "t" in (anchor.get("class") or "").split() and _web(href):
            headlines.append(Headline(" ".join(anchor.text_content().split()), href))
    stated = COUNT_TEXT.search(root.text_content())
    return ArchiveEntry(day, title, int(stated.group(1)) if stated else len(headlines), tuple(headlines), modified)


# --------------------------------------------------------------------------------------------
# Rendering (pure)


def page_path(number: int) -> str:
    """The file of page ``number`` inside ``digests/``."""
    return INDEX if number == 1 else f"page/{number}/{INDEX}"


def _up(number: int) -> str:
    """From page ``number`` back to ``digests/``."""
    return "" if number == 1 else "../../"


def _page_link(number: int, here: int) -> str:
    """A relative link from page ``here`` to page ``number``."""
    if number == 1:
        return "./" if here == 1 else "../../"
    return f"page/{number}/" if here == 1 else f"../{number}/"


@dataclass(frozen=True)
class Row:
    """One digest on an index page, with links relative to that page."""

    href: str
    day: str
    date_text: str
    weekday: str
    subject: str
    count: int
    headlines: tuple[Headline, ...]


def render_page(entries: Sequence[ArchiveEntry], number: int, pages: int, options: ArchiveOptions) -> bytes:
    """Index page ``number`` of ``pages``, showing ``entries`` (that page's slice)."""
    up = _up(number)
    rows = [Row(f"{up}{e.day.isoformat()}.html", e.day.isoformat(), date_text(e.day), WEEKDAYS[e.day.weekday()],
                e.subject, e.count, e.headlines[:ROW_HEADLINES]) for e in entries]
    title = "往期精选" if number == 1 else f"往期精选 · 第 {number} 页"
    document = ENVIRONMENT.get_template("archive.html").render(
        title=title, site_title=options.site_title, stylesheet=up + STYLESHEET_NAME, home_url=options.subscribe_url,
        archive_url=_page_link(1, number), atom_url=up + ATOM, rows=rows, number=number, pages=pages,
        newer=_page_link(number - 1, number) if number > 1 else "",
        older=_page_link(number + 1, number) if number < pages else "",
        language=options.language,
    )
    return document.encode("utf-8")


def _entry_html(entry: ArchiveEntry, options: ArchiveOptions) -> str:
    """An Atom entry's content: the digest's headlines by category, with links (the summary the
    brief asks for; the whole web copy, 30-100 KB of table layout, is one click away)."""
    parts = [f"<p>{html.escape(date_text(entry.day))} {WEEKDAYS[entry.day.weekday()]} · 共 {entry.count} 篇</p>"]
    group = None
    for headline in entry.headlines:
        if headline.group != group:
            if group is not None:
                parts.append("</ul>")
            if headline.group:
                parts.append(f"<h3>{html.escape(headline.group)}</h3>")
            parts.append("<ul>")
            group = headline.group
        parts.append(f'<li><a href="{html.escape(headline.url)}">{html.escape(headline.title)}</a></li>')
    if group is not None:
        parts.append("</ul>")
    parts.append(f'<p><a href="{html.escape(options.copy_url(entry.day))}">阅读这期每日精选</a></p>')
    return "".join(parts)


def render_atom(entries: Sequence[ArchiveEntry], options: ArchiveOptions) -> bytes:
    """The Atom feed of the newest ``options.feed_limit`` digests (RFC 4287, with feedgen)."""
    shown = list(entries[: max(0, options.feed_limit)])
    fg = FeedGenerator()
    fg.id(options.index_url)
    fg.title(f"{options.site_title} · 每日精选")
    fg.subtitle("每日精选的往期邮件")
    fg.author(name=options.site_title, uri=options.site_url + "/")
    fg.language(options.language)
    fg.generator(GENERATOR)
    fg.link(href=f"{options.index_url}{ATOM}", rel="self", type=ATOM_TYPE)
    fg.link(href=options.index_url, rel="alternate", type="text/html")
    # The newest digest's time, never the clock: the same archive gives the same bytes.
    fg.updated(max((e.updated for e in shown), default=datetime(2000, 1, 1, tzinfo=UTC)))
    for entry in shown:
        fe = fg.add_entry(order="append")  # the default, "prepend", reverses the entries
        fe.id(options.copy_url(entry.day))
        fe.title(entry.subject)
        fe.link(href=options.copy_url(entry.day))
        fe.updated(entry.updated)
        fe.published(entry.updated)
        fe.content(_entry_html(entry, options), type="html")
    root, _ = fg._create_atom()
    for link in root.iter("entry"):
        for anchor in link.iter("link"):  # feedgen#135: entry links keep only href
            anchor.set("rel", "alternate")
            anchor.set("type", "text/html")
    data: bytes = etree.tostring(root.getroottree(), encoding="UTF-8", xml_declaration=True, pretty_print=True)
    return data


def archive_files(entries: Sequence[ArchiveEntry], options: ArchiveOptions) -> dict[str, bytes]:
    """Every file of the archive, by its path inside ``digests/``: the index pages (at least one,
    which says so when there is no digest yet), the Atom feed and the stylesheet."""
    per_page = max(1, options.per_page)
    pages = max(1, math.ceil(len(entries) / per_page))
    files = {page_path(n): render_page(entries[(n - 1) * per_page: n * per_page], n, pages, options)
             for n in range(1, pages + 1)}
    files[ATOM] = render_atom(entries, options)
    files[STYLESHEET_NAME] = STYLESHEET
    return files


# --------------------------------------------------------------------------------------------
# Files (the edges)


def record_path(folder: Path, day: date) -> Path:
    return folder / f"{day.isoformat()}.json"


def read_entry(folder: Path, day: date) -> ArchiveEntry | None:
    """The record of the web copy of ``day`` in ``folder``: its JSON, else read from the page;
    None (logged) when the page cannot be read."""
    copy = folder / f"{day.isoformat()}.html"
    with contextlib.suppress(OSError):
        entry = ArchiveEntry.from_json(record_path(folder, day).read_bytes(), day)
        if entry is not None:
            return entry
    try:
        document = copy.read_bytes()
        modified = datetime.fromtimestamp(copy.stat().st_mtime, UTC)
        return entry_from_html(day, document, modified)
    except (OSError, ValueError, etree.ParserError) as exc:
        log.warning("%s: not in the digest archive: %s", copy, exc, extra={"file": str(copy)})
        return None


def published_days(folder: Path) -> list[date]:
    """The days with a web copy in ``folder``, newest first."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    days = []
    for name in names:
        match = DAY_FILE.fullmatch(name)
        if match:
            with contextlib.suppress(ValueError):
                days.append(date.fromisoformat(match.group(1)))
    return sorted(days, reverse=True)


def read_entries(folder: Path) -> list[ArchiveEntry]:
    """Every published digest in ``folder``, newest first."""
    return [entry for day in published_days(folder) if (entry := read_entry(folder, day)) is not None]


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One writer of the archive at a time (the daemon's digest job and a `digest` command may
    publish together; each then lists the folder after the other's copy is in it)."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish(folder: Path, options: ArchiveOptions, entry: ArchiveEntry | None = None) -> list[Path]:
    """Record ``entry`` (whose web copy is written), then write the archive of every web copy in
    ``folder``: only files whose bytes changed are written, and pages and stylesheets no longer
    made are removed. Returns the files written. Failures are :class:`OSError`."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with locked(folder):
        if entry is not None and atomic_write(record_path(folder, entry.day), entry.to_json()):
            written.append(record_path(folder, entry.day))
        files = archive_files(read_entries(folder), options)
        for rel, data in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if atomic_write(path, data):
                written.append(path)
        for stale in _stale(folder, files):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
            if stale.parent != folder:  # a page's folder, and page/ when it was the last
                with contextlib.suppress(OSError):
                    stale.parent.rmdir()
                    stale.parent.parent.rmdir()
    return written


def _stale(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Pages past the last one and stylesheets of other versions."""
    stale = [folder / name for name in os.listdir(folder) if STYLESHEET_FILE.fullmatch(name) and name not in files]
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(folder / "page"):
            if PAGE_FOLDER.fullmatch(name) and f"page/{name}/{INDEX}" not in files:
                stale.append(folder / "page" / name / INDEX)
    return stale
