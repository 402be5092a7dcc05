"""Read the posts of a Jekyll site as Jekyll 4 would publish them.

The walk and the per-file parse are separate so the cache (:mod:`finews_feeds.cache`) can skip
the parse for files whose size and mtime it has seen. :func:`parse_post` is pure: bytes and
settings in, a post (or the reason it is not one) out; the clock only matters afterwards, when
future posts are left out, so a cached post stays valid as time passes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TextIO

import yaml
from frontmatter.default_handlers import YAMLHandler

from ..config import Config
from ..errors import PostError
from ..models import Collection, FileError, Post, Site
from ..urls import web_url
from .jekyll import YamlLoader, resolve_site
from .limits import (
    DEFAULT_LIMITS,
    FrontMatterLimits,
    front_matter_problem,
    measure_data,
    measure_nodes,
    terms_problem,
    text_problem,
)
from .markup import (
    absolute_url,
    clean_line,
    encode_path,
    html_to_text,
    render_body,
    slugify,
    summarize_text,
    titleize,
)
from .walk import Entry, read_file, walk

log = logging.getLogger(__name__)

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


class _Loader(YamlLoader):  # type: ignore[misc]
    """The C YAML loader without implicit timestamps: PyYAML would read `2022-04-20T16:30:00+08:00`
    as a datetime but leave `2022-04-20 09:15:40 +0800` a string; we parse every date ourselves,
    one way, keeping its offset."""

    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in YamlLoader.yaml_implicit_resolvers.items()
    }

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        # PyYAML's resolve (called from C for every node) rebuilds its candidate list on each
        # call; the same rules, with the lists merged once (this loader has no path resolvers).
        if kind is yaml.ScalarNode:
            if implicit[0]:
                for tag, regexp in _RESOLVERS.get(value[:1], _WILDCARD):
                    if regexp.match(value):
                        return str(tag)
            return _STR
        return _SEQ if kind is yaml.SequenceNode else _MAP

    def construct_document(self, node: yaml.Node) -> Any:
        # PyYAML's constructor (Python, with generators for recursive structures) is half the
        # cost of front matter; a mapping of plain scalars and lists is built directly, with
        # PyYAML's own scalar constructors. Anything else (merge keys, anchors that recurse,
        # unhashable keys, other tags) goes the library's way, which also raises its errors.
        self._seen: set[int] = set()
        try:
            return self._plain(node, 0)
        except _NotPlain:
            return super().construct_document(node)

    def _plain(self, node: yaml.Node, depth: int) -> Any:
        kind, tag = type(node), node.tag
        if kind is not yaml.ScalarNode:
            # A collection met twice is an alias: the library builds it once (an alias bomb
            # would take exponential time here).
            if depth > 32 or id(node) in self._seen:
                raise _NotPlain
            self._seen.add(id(node))
        if kind is yaml.ScalarNode:
            if tag == _STR:
                return node.value
            if tag in _PLAIN_SCALARS:
                return self.yaml_constructors[tag](self, node)
        elif kind is yaml.MappingNode and tag == _MAP:
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag in _SPECIAL_KEYS:
                    raise _NotPlain
                key = self._plain(key_node, depth + 1)
                if isinstance(key, (list, dict)):
                    raise _NotPlain
                out[key] = self._plain(value_node, depth + 1)
            return out
        elif kind is yaml.SequenceNode and tag == _SEQ:
            return [self._plain(child, depth + 1) for child in node.value]
        raise _NotPlain


class _NotPlain(Exception):
    pass


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_WILDCARD: list[tuple[str, re.Pattern[str]]] = list(_Loader.yaml_implicit_resolvers.get(None, []))
_RESOLVERS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    first: [*resolvers, *_WILDCARD] for first, resolvers in _Loader.yaml_implicit_resolvers.items() if first is not None
}
assert not _Loader.yaml_path_resolvers, "resolve() above assumes no path resolvers"
_PLAIN_SCALARS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("int", "float", "bool", "null"))
_SPECIAL_KEYS = frozenset(("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"))


def load_front_matter(fm: str, limits: FrontMatterLimits) -> Any:
    """The value of the front matter ``fm`` as PyYAML reads it, measured against ``limits``
    before anything is built from it (see :mod:`finews_feeds.limits`). Raises
    :class:`Rejected` for a front matter over a limit, PyYAML's errors for invalid YAML."""
    if len(fm) > limits.chars:  # tested here: the call costs more than the test, for every post
        raise Rejected(text_problem(len(fm), limits) or "")
    simple = simple_front_matter(fm)
    if simple is not None:
        # Each key, string and list of this path takes a character of its own: a text shorter
        # than the limit of values, two deep at most, needs no measuring.
        if len(fm) >= limits.nodes or limits.depth < 2:
            problem = front_matter_problem(measure_data(simple), limits)
            if problem is not None:
                raise Rejected(problem)
        return simple
    # yaml.load, with a document that may hold aliases measured between composing and
    # constructing: the C composer builds an alias's node once, however often it is used, so an
    # alias bomb is still small here. Without aliases, what is built is no bigger than the text.
    loader = _Loader(fm)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "*" in fm:
            problem = front_matter_problem(measure_nodes(node), limits)
            if problem is not None:
                raise Rejected(problem)
            return loader.construct_document(node)
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    problem = front_matter_problem(measure_data(data), limits)
    if problem is not None:
        raise Rejected(problem)
    return data


# The front matter of nearly every post is a few `key: value` lines of strings and flow lists
# of strings. Read with PyYAML, that is a third of a cold build's parse; read here, it takes
# less than half as long. Anything else, and anything PyYAML could read otherwise (a value that
# resolves to a number, bool or null, an indicator, a comment after a value, a tab, a
# character its reader rejects or treats as a line break), goes to PyYAML: this path returns
# exactly what PyYAML returns, or None (tests/test_collector.py holds the two equal).
_SIMPLE_CHARS = re.compile("[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
_KEY = r"[A-Za-z_][A-Za-z0-9_-]{0,200}"
#: A plain scalar: not starting with an indicator, no `: ` or ` #`, not ending with `:`.
_PLAIN = r"""[^\n \-?:,\[\]{}#&*!|>'"%@`][^\n:#]*(?:(?::(?=[^\n ])|(?<! )#)[^\n:#]*)*"""
_SCALAR = rf"""(?:"([^"\\]*)"|'([^']*)'|({_PLAIN}))"""
#: One line of simple front matter: a key and a string (quoted or plain), a flow list, or
#: nothing (a block list follows); a comment; or nothing.
_SIMPLE_LINE = re.compile(rf"(?:({_KEY}):(?: +(?:{_SCALAR}|\[(.*)\]))? *|#.*| *)")
#: An item of a block list: a string, quoted or plain.
_SIMPLE_ITEM = re.compile(rf"( *)- +{_SCALAR} *")
_FLOW_PLAIN_ITEM = r"""[^ ,\[\]{}:#'"&*!|>%@`?\-][^,\[\]{}:#'"]*"""
_FLOW_PLAIN = re.compile(rf" *{_FLOW_PLAIN_ITEM}(?:, *{_FLOW_PLAIN_ITEM})*")
# `{_FLOW_PLAIN_ITEM}?` makes its last repeat lazy: the spaces before a comma are not the item's.
_FLOW_ITEM = re.compile(rf""" *(?:"([^"\\]*)"|'([^']*)'|({_FLOW_PLAIN_ITEM}?)) *(,|$)""")


def _is_str(plain: str) -> bool:
    """Whether PyYAML reads the plain scalar ``plain`` as a string (no implicit type)."""
    for _, regexp in _RESOLVERS.get(plain[:1], _WILDCARD):  # noqa: SIM110 - all() over a generator is slower
        if regexp.match(plain):
            return False
    return True


def simple_front_matter(fm: str) -> dict[str, Any] | None:
    """The mapping PyYAML reads from ``fm``, when ``fm`` is plain `key: value` lines whose values
    are strings or lists of strings (flow lists on one line, or block lists of `- item` lines);
    None for anything else."""
    if _SIMPLE_CHARS.search(fm):
        return None
    out: dict[str, Any] = {}
    listing: list[str] | None = None  # the block list being read, under the last key
    indent = -1
    for line in fm.split("\n"):
        if listing is not None:
            item = _SIMPLE_ITEM.fullmatch(line)
            if item is not None and indent in (-1, len(item[1])):
                value = _scalar(*item.groups()[1:])
                if value is None:
                    return None
                listing.append(value)
                indent = len(item[1])
                continue
            if not listing:
                return None  # `key:` alone is null (left to PyYAML)
            listing = None
        match = _SIMPLE_LINE.fullmatch(line)
        if match is None:
            return None
        key, double, single, plain, flow = match.groups()
        if key is None:
            continue  # a comment or a blank line
        if not _is_str(key):
            return None
        if flow is not None:
            items = _flow_items(flow)
            if items is None:
                return None
            out[key] = items
        elif double is None and single is None and plain is None:
            listing = out[key] = []
            indent = -1
        else:
            value = _scalar(double, single, plain)
            if value is None:
                return None
            out[key] = value
    if listing is not None and not listing:
        return None
    return out or None


def _scalar(double: str | None, single: str | None, plain: str | None) -> str | None:
    if plain is not None:
        plain = plain.rstrip(" ")  # the pattern takes the spaces after it too
        return plain if _is_str(plain) else None
    return double if double is not None else single


def _flow_items(inner: str) -> list[str] | None:
    if not inner.strip(" "):
        return []
    if _FLOW_PLAIN.fullmatch(inner):
        items = [item.strip(" ") for item in inner.split(",")]
        return items if all(map(_is_str, items)) else None
    items = []
    position = 0
    while position < len(inner):
        match = _FLOW_ITEM.match(inner, position)
        if match is None:
            return None
        double, single, plain, comma = match.groups()
        if plain is not None:
            if not _is_str(plain):
                return None
            items.append(plain)
        else:
            items.append(double if double is not None else single)
        position = match.end()
        if comma and position == len(inner):
            return None  # a trailing comma: PyYAML's reading of it is left to PyYAML
    return items


#: Splits a file into front matter and body (its own loading is not used: :func:`load_front_matter`).
_HANDLER = YAMLHandler()


class Rejected(Exception):
    """Why a file is not a post, raised where the path is not known; :func:`parse_post` turns
    it into a :class:`~finews_feeds.errors.PostError` naming the file."""


class NotPublished(Exception):
    """A post Jekyll would not publish (`published: false`): left out silently."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed post and its rendered body."""

    post: Post
    html: str


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


def _image(value: object) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("path") or value.get("url")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


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


#: Placeholder values, computed only when a pattern uses them (three slugify and four strftime
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
    "title": lambda p: slugify(p.slug, "pretty", cased=True),
    "slug": lambda p: slugify(p.slug),
    "name": lambda p: slugify(p.name),
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


def decode(raw: bytes, encoding: str) -> str:
    """File bytes as text: a UTF-8 BOM always wins; CRLF becomes LF. Raises :class:`Rejected`."""
    if raw.startswith(b"\xef\xbb\xbf"):
        encoding, raw = "utf-8", raw[3:]
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        hint = " (set site.encoding if the site's files use another encoding)" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else ""
        raise Rejected(f"cannot decode as {encoding}: byte 0x{bad} at offset {exc.start}{hint}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_front_matter(text: str, limits: FrontMatterLimits = DEFAULT_LIMITS) -> tuple[dict[str, Any], str]:
    """The front matter (a mapping) and the body. Raises :class:`Rejected`, also for a front
    matter over one of ``limits``."""
    if not text.strip():
        raise Rejected("empty file: not a post")
    first_line = text.split("\n", 1)[0]
    if first_line.rstrip() != "---":
        raise Rejected("no front matter: Jekyll treats this file as a static file, not a post (start it with a '---' line)")
    try:
        fm, body = _HANDLER.split(text)
    except ValueError:
        raise Rejected("front matter is not closed: add a '---' line after it") from None
    try:
        data = load_front_matter(fm, limits)
    except yaml.MarkedYAMLError as exc:
        # The context mark is where the broken construct starts (an unclosed quote), which is
        # the line to fix.
        mark = exc.context_mark or exc.problem_mark
        first = text[: text.find(fm)].count("\n") if fm else 1
        line = f" at line {first + mark.line + 1}" if mark is not None else ""
        problem = "; ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        raise Rejected(f"invalid YAML in front matter{line}: {problem}") from None
    except yaml.YAMLError as exc:
        raise Rejected(f"invalid YAML in front matter: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Rejected(f"front matter is a {type(data).__name__}, not a mapping of keys to values")
    return {str(k): v for k, v in data.items()}, body


def parse_post(path: str, raw: bytes, site: Site) -> Parsed:
    """Parse one file (``path`` relative to the site, with `/`) into a post and its HTML.

    Raises :class:`~finews_feeds.errors.PostError` for a file that cannot be a post,
    :class:`NotPublished` for `published: false`. Future posts are returned: the caller
    decides with its clock.
    """
    try:
        front = _parse_front(path, raw, site)
        return render_post(front, site)
    except Rejected as exc:
        raise PostError(path, str(exc)) from None


@dataclass(frozen=True, slots=True)
class Front:
    """A post read up to its body: a :class:`~finews_feeds.models.Post` whose body-derived fields
    wait for :func:`render_post` (see ``Post.rendered``), and the body itself."""

    post: Post
    body: str
    markdown: bool


def parse_front(path: str, raw: bytes, site: Site) -> Front:
    """:func:`parse_post` without rendering the body: everything a feed plan needs (dates,
    categories, tags, URL) at a third of the cost. Raises as :func:`parse_post` does."""
    try:
        return _parse_front(path, raw, site)
    except Rejected as exc:
        raise PostError(path, str(exc)) from None


def _parse_front(path: str, raw: bytes, site: Site) -> Front:
    parts = path.split("/")
    match = FILENAME.match(parts[-1])
    if not match:
        raise Rejected("file name does not match YYYY-MM-DD-slug.ext")
    year, month, day, file_slug, ext = match.groups()
    text = decode(raw, site.encoding)
    data, body = split_front_matter(text, site.limits)

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
    if not title:
        title = clean_line(titleize(file_slug))

    folders = [p for p in parts[: parts.index("_posts")] if p] if "_posts" in parts else []
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

    updated: datetime | None = None
    if data.get("last_modified_at") not in (None, ""):
        try:
            updated = parse_date(data["last_modified_at"], zone)
        except ValueError as exc:
            log.warning("%s: last_modified_at is not a usable date (%s); ignored", path, exc)

    post = Post(
        path=path,
        slug=slug,
        title=title,
        date=moment,
        updated=updated,
        categories=categories,
        tags=tags,
        permalink=permalink,
        url=url,
        id=url,
        # Until the body is rendered: what the front matter says, else the defaults.
        summary=excerpt or description or "",
        image=_image_url(image, url) if image else None,
        author=_author(data.get("author")),
        source=site.category_title(categories[0]) if categories else site.title,
        excerpt=excerpt,
        description=description,
        content_hash="",
    )
    return Front(post, body, ext.lower() in MARKDOWN_EXTENSIONS)


def finish_post(post: Post, raw: bytes, site: Site) -> Parsed:
    """:func:`parse_post` for a file already read by :func:`parse_front` into ``post`` (and not
    changed since): only the body is rendered, the front matter is not parsed again."""
    try:
        _, body = _HANDLER.split(decode(raw, site.encoding))
    except (Rejected, ValueError):
        return parse_post(post.path, raw, site)
    markdown = os.path.splitext(post.path)[1].lower() in MARKDOWN_EXTENSIONS
    return render_post(Front(post, body, markdown), site)


def render_post(front: Front, site: Site) -> Parsed:
    """Render the body of ``front`` and fill the post's body-derived fields: the summary (unless
    the front matter gives an excerpt or description), the first image (unless it names one),
    the news source and the content hash."""
    post = front.post
    rendered = render_body(front.body, post.url, markdown=front.markdown)
    done = dataclasses.replace(
        post,
        summary=post.summary or summarize_text(rendered.text, site.summary_chars),
        image=post.image or web_url(rendered.image, post.url),
        source=rendered.source or post.source,
        content_hash=hashlib.blake2b(rendered.html.encode("utf-8"), digest_size=12).hexdigest(),
    )
    return Parsed(done, rendered.html)


def read_entry(entry: Entry, site: Site, *, lazy: bool = False) -> Parsed | FileError | None:
    """Parse one walked file: a post, the reason it was rejected, or None when unpublished.
    With ``lazy``, the body is not rendered: the post is not ``rendered`` and the HTML is ""."""
    try:
        raw = read_file(os.path.join(site.source, entry.path), entry.size)
    except OSError as exc:
        return FileError(entry.path, f"cannot read: {exc.strerror}")
    try:
        return Parsed(parse_front(entry.path, raw, site).post, "") if lazy else parse_post(entry.path, raw, site)
    except PostError as exc:
        return FileError(entry.path, exc.reason)
    except NotPublished:
        return None
    except RecursionError:
        return FileError(entry.path, "front matter or body nested too deeply to read")
    except Exception as exc:  # a bad post never stops the run, whatever a library raises on it
        log.exception("%s: unexpected error while reading", entry.path)
        return FileError(entry.path, f"cannot be read ({type(exc).__name__}: {exc}); please report this file")


def is_visible(post: Post, site: Site, now: datetime) -> bool:
    return site.future or post.date <= now


def collect(site: Site, cache_dir: Path | None = None, now: datetime | None = None) -> Collection:
    """Collect the posts of ``site``; with ``cache_dir``, unchanged files are not read again."""
    from .cache import collect_cached, collect_uncached

    moment = now if now is not None else datetime.now(UTC)
    if cache_dir is None:
        return collect_uncached(site, moment)
    return collect_cached(site, cache_dir, moment)


def collect_site(config: Config, now: datetime | None = None) -> Collection:
    """Resolve the site from ``config`` and collect it, with the cache folder from config."""
    site = resolve_site(config)
    cache_dir = Path(config.site.cache_dir) if config.site.cache_dir else None
    return collect(site, cache_dir, now)


def rerender(site: Site, post: Post) -> str:
    """A post's HTML read again from its file (when the cache has none)."""
    try:
        with open(os.path.join(site.source, post.path), "rb") as handle:
            raw = handle.read()
        return parse_post(post.path, raw, site).html
    except (OSError, PostError, NotPublished):
        return ""
    except Exception:  # as in read_entry: a bad post never stops a build
        log.exception("%s: unexpected error while rendering", post.path)
        return ""


def content_from_files(site: Site) -> Callable[[Post], str]:
    def content(post: Post) -> str:
        return rerender(site, post)

    return content


def summarize(collection: Collection) -> dict[str, Any]:
    """What `check` prints: posts, errors, categories and tags with counts, date range."""
    posts = collection.complete(collection.posts)
    categories: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    for post in posts:
        categories.update(post.categories)
        tags.update(post.tags)
    order = collection.site.category_order
    return {
        "posts": [
            {
                "path": p.path,
                "url": p.url,
                "id": p.id,
                "title": p.title,
                "date": p.date.isoformat(),
                "categories": list(p.categories),
                "tags": list(p.tags),
                "summary": p.summary,
                "image": p.image,
                "source": p.source,
            }
            for p in posts
        ],
        "errors": [{"path": e.path, "message": e.message} for e in collection.errors],
        "categories": dict(sorted(categories.items(), key=lambda kv: (order.get(kv[0], 1000), -kv[1], kv[0]))),
        "tags": dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))),
        "first_date": min(p.date for p in posts).isoformat() if posts else None,
        "last_date": max(p.date for p in posts).isoformat() if posts else None,
    }


def write_json(summary: Mapping[str, Any], out: TextIO) -> None:
    """``summary`` as indented JSON, written a megabyte at a time: at 100,000 posts the document
    is ~100 MB, and one string of it (plus its encoded copy) would triple the memory of `check`."""
    pieces: list[str] = []
    size = 0
    for piece in json.JSONEncoder(ensure_ascii=False, indent=2).iterencode(summary):
        pieces.append(piece)
        size += len(piece)
        if size > 1 << 20:
            out.write("".join(pieces))
            pieces.clear()
            size = 0
    pieces.append("\n")
    out.write("".join(pieces))
    out.flush()


__all__ = [
    "Entry",
    "Front",
    "NotPublished",
    "Parsed",
    "collect",
    "collect_site",
    "finish_post",
    "parse_front",
    "parse_post",
    "render_post",
    "summarize",
    "walk",
    "write_json",
]
