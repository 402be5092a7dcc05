"""Front matter: split a post file into its YAML front matter and its body, and read the YAML.

PyYAML's C loader (``CSafeLoader``) reads it, without implicit timestamps: PyYAML would read
``2022-04-20T16:30:00+08:00`` as a datetime but leave ``2022-04-20 09:15:40 +0800`` a string, and
the collector parses every date itself, one way, keeping its offset. What a front matter may
expand to is capped before anything is built from it (:mod:`.limits`: the alias bomb).

The front matter of nearly every post is a few ``key: value`` lines of strings and lists of
strings; :func:`simple_front_matter` reads that shape without PyYAML, and returns exactly what
PyYAML returns or None (a hypothesis test holds the two equal). It pays: a cold build of 20,000
posts takes 2.65 s with it and 3.30 s without (three runs each, alternated, 2026-12-02).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import yaml
from frontmatter.default_handlers import YAMLHandler

from ..models import FrontMatterLimits
from .jekyll import YamlLoader
from .limits import DEFAULT_LIMITS, front_matter_problem, measure_data, measure_nodes, text_problem


class Rejected(Exception):
    """Why a file is not a post, raised where the path is not known; the caller names the file."""


class Loader(YamlLoader):  # type: ignore[misc]
    """The C YAML loader without implicit timestamps (see the module doc)."""

    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in YamlLoader.yaml_implicit_resolvers.items()
    }


_WILDCARD: list[tuple[str, re.Pattern[str]]] = list(Loader.yaml_implicit_resolvers.get(None, []))
#: The loader's implicit rules by a value's first character (the rules for any character after).
_RESOLVERS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    first: [*resolvers, *_WILDCARD] for first, resolvers in Loader.yaml_implicit_resolvers.items() if first is not None
}
#: Splits a file into front matter and body (its own loading is not used: :func:`load_front_matter`).
_HANDLER = YAMLHandler()


def load_front_matter(fm: str, limits: FrontMatterLimits) -> Any:
    """The value of the front matter ``fm`` as PyYAML reads it, measured against ``limits``
    before anything is built from it (see :mod:`.limits`). Raises
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
    loader = Loader(fm)
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
    """The front matter (a mapping) and the body of a post file's text. Raises :class:`Rejected`,
    also for a front matter over one of ``limits``."""
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




def body_of(text: str) -> str:
    """The body of a post file's text whose front matter was read before."""
    return str(_HANDLER.split(text)[1])
