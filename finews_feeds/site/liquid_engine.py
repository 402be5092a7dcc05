"""The Liquid engine for post bodies: python-liquid configured as Jekyll 4.3's Liquid (its
environment and limits, Jekyll's tags and filters). :mod:`.liquid` says what it renders and when,
and imports this module only when a post holds Liquid."""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any, ClassVar, TextIO
from urllib.parse import quote, quote_plus

from liquid import BoundTemplate, Environment, FileSystemLoader, Mode, RenderContext, Tag, TokenStream, Undefined
from liquid.ast import BlockNode, Node
from liquid.exceptions import LiquidError, TemplateNotFoundError
from liquid.parser import get_parser
from liquid.token import TOKEN_EOF, TOKEN_EXPRESSION, TOKEN_TAG, Token

from ..models import Site
from .liquid import JEKYLL_VERSION, LINK, POST_URL, Links, LiquidFailed, Reference
from .markup import Style, jekyll_slugify, render_markdown, typography

# ---------------------------------------------------------------- the environment and its limits


class JekyllEnvironment(Environment):
    """python-liquid configured as Jekyll's Liquid: unknown filters pass their input through and
    undefined variables are empty (Jekyll's ``strict_filters``/``strict_variables`` false),
    syntax errors are errors; with resource limits no real post meets."""

    #: Iterations of all loops nested at one point (multiplied): 10^6 is far beyond a post.
    loop_iteration_limit: ClassVar[int | None] = 1_000_000
    #: Includes inside includes (and other context copies): an include that includes itself stops here.
    context_depth_limit: ClassVar[int] = 30
    #: Characters written by one render (a body is a few kilobytes).
    output_stream_limit: ClassVar[int | None] = 10_000_000
    #: Bytes held by a template's variables (an `assign` doubling a string in a loop stops here).
    local_namespace_limit: ClassVar[int | None] = 10_000_000


@dataclass
class _State:
    """What tags and filters of one render need (a global no template can name)."""

    site: Site
    style: Style
    links: Links
    references: list[Reference] = field(default_factory=list)


_STATE = "__finews_state__"


def _state(context: RenderContext) -> _State:
    state = context.globals.get(_STATE)
    assert isinstance(state, _State)
    return state


@functools.lru_cache(maxsize=16)
def environment(includes: str) -> JekyllEnvironment:
    """The environment of a site whose `_includes` folder is ``includes``."""
    env = JekyllEnvironment(tolerance=Mode.STRICT, strict_filters=False, undefined=Undefined,
                            loader=IncludesLoader(includes))
    for name, function in FILTERS.items():
        env.add_filter(name, function)
    for tag in (IncludeTag, LinkTag, PostUrlTag, HighlightTag):
        env.add_tag(tag)
    return env


class IncludesLoader(FileSystemLoader):
    """Files of the `_includes` folder by a relative path, as Jekyll's ``IncludeTag`` validates
    it: no `..`, no `./`, only Jekyll's file name characters; a symlink that leads outside the
    folder is not found (python-liquid resolves the path and keeps it inside)."""

    _VALID = re.compile(r"^[\w/.\-()+~#@]+$")
    _INVALID = re.compile(r"[./]{2,}")

    def __init__(self, folder: str) -> None:
        super().__init__(folder, reject_symlinks=True)

    def resolve_path(self, template_name: str) -> Path:
        if (not self._VALID.match(template_name) or self._INVALID.search(template_name)
                or template_name.startswith("/")):
            raise TemplateNotFoundError(f"include file {template_name!r}: invalid name (only a path inside _includes)",
                                        token=None)
        return super().resolve_path(template_name)


# ---------------------------------------------------------------- rendering


def render(text: str, *, site: Site, page: Mapping[str, Any], style: Style, links: Links,
           line: int = 1) -> tuple[str, tuple[Reference, ...]]:
    """``text`` (a post's body, starting at ``line`` of its file) rendered with Liquid; what it
    looked up. Raises :class:`LiquidFailed` for any template error."""
    env = environment(os.path.join(site.source, str(site.config.get("includes_dir") or "_includes")))
    state = _State(site, style, links)
    try:
        template = env.from_string(text, path="")
        output = template.render(**{_STATE: state, "site": site_variable(site), "page": page,
                                    "jekyll": {"version": JEKYLL_VERSION, "environment": "production"},
                                    "paginator": None})
    except LiquidError as exc:
        raise LiquidFailed(_describe(exc, line)) from None
    except RecursionError:
        raise LiquidFailed("Liquid: nested too deeply") from None
    return output, tuple(state.references)


def _describe(exc: LiquidError, line: int) -> str:
    message = str(exc.message) if exc.message is not None else type(exc).__name__
    message = message.split("\n", 1)[0]
    where = exc.context()
    name = str(exc.template_name or "")
    if where is None:
        return f"Liquid error: {message}"
    if name:
        return f"Liquid error in {Path(name).name} (from _includes) line {where[0]}: {message}"
    return f"Liquid error at line {where[0] + line - 1}: {message}"


def site_variable(site: Site) -> dict[str, Any]:
    """Jekyll's ``site`` for a post: `_config.yml`, its resolved URL, title and ``baseurl``, and
    ``site.data``. What Jekyll builds from every page (``site.posts``, ``site.pages``,
    ``site.categories``, ``site.tags``) is empty here: a body renders on its own."""
    root = site.url[: len(site.url) - len(site.baseurl)] if site.baseurl and site.url.endswith(site.baseurl) else site.url
    return {**site.config, "url": root, "baseurl": site.baseurl, "title": site.config.get("title", site.title),
            "data": site.data, "posts": [], "pages": [], "categories": {}, "tags": {}, "static_files": [],
            "documents": [], "html_pages": []}


# ---------------------------------------------------------------- tags


def _tag(stream: TokenStream) -> tuple[Token, str]:
    """A tag's token and the raw text of its expression ("" when it has none), the stream left
    on the tag's last token (the parser moves past it)."""
    token = stream.expect(TOKEN_TAG)
    if stream.peek.kind == TOKEN_EXPRESSION:
        next(stream)
        return token, stream.current.value
    return token, ""


def _rendered(env: Environment, text: str) -> BoundTemplate | None:
    """``text`` (a tag's argument) as a template when it holds Liquid (Jekyll renders it first)."""
    return env.from_string(text) if "{{" in text or "{%" in text else None


def _argument(context: RenderContext, text: str, template: BoundTemplate | None) -> str:
    if template is None:
        return text
    buffer = StringIO()
    template.render_with_context(context, buffer, partial=True)
    return buffer.getvalue().strip()


class _LookupNode(Node):
    __slots__ = ("kind", "template", "text")

    def __init__(self, token: Token, kind: str, text: str, template: BoundTemplate | None) -> None:
        super().__init__(token)
        self.kind = kind
        self.text = text
        self.template = template
        self.blank = False

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        state = _state(context)
        argument = _argument(context, self.text, self.template)
        found = state.links.link(argument) if self.kind == LINK else state.links.post_url(argument)
        state.references.append((self.kind, argument, found))
        if found is None:
            what = "document" if self.kind == LINK else "post"
            raise LiquidError(f"{{% {self.kind} {argument} %}}: could not find {what} '{argument}'", token=self.token)
        return buffer.write(relative_url(state.site, found))


class LinkTag(Tag):
    """``{% link path %}``: the URL (with ``baseurl``) of the post, page or file at ``path``."""

    name = LINK
    block = False

    def parse(self, stream: TokenStream) -> Node:
        token, text = _tag(stream)
        text = text.strip()
        return _LookupNode(token, LINK, text, _rendered(self.env, text))


class PostUrlTag(Tag):
    """``{% post_url 2010-07-21-name %}``: the URL (with ``baseurl``) of that post."""

    name = POST_URL
    block = False

    def parse(self, stream: TokenStream) -> Node:
        token, text = _tag(stream)
        text = text.strip()
        if not re.match(r"^/?(?:.+/)*\d+-\d+-\d+-.*$", text):
            raise LiquidError(f"{{% post_url {text} %}}: '{text}' does not contain a valid date and/or title",
                              token=token)
        return _LookupNode(token, POST_URL, text, None)


#: Jekyll's ``IncludeTag::VALID_SYNTAX``: `name="string"`, `name='string'` or `name=variable`.
_INCLUDE_PARAMETER = re.compile(r"""([\w-]+)\s*=\s*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|'([^'\\]*(?:\\.[^'\\]*)*)'|([\w.-]+))""")
_INCLUDE_FILE = re.compile(r"^(\{\{.+?\}\}|[^\s{}]+)\s*(.*)$", re.S)


class _IncludeNode(Node):
    __slots__ = ("file", "parameters", "template")

    def __init__(self, token: Token, file: str, template: BoundTemplate | None,
                 parameters: list[tuple[str, str | None, str | None]]) -> None:
        super().__init__(token)
        self.file = file
        self.template = template
        self.parameters = parameters  # (name, string value, variable name)
        self.blank = False

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        name = _argument(context, self.file, self.template)
        try:
            template = context.env.get_template(name, context=context, tag="include")
        except TemplateNotFoundError as exc:
            raise LiquidError(f"{{% include {name} %}}: {exc.message or 'not found in _includes'}",
                              token=self.token) from None
        values: dict[str, object] = {}
        for key, string, variable in self.parameters:
            if string is not None:
                values[key] = re.sub(r"\\(.)", r"\1", string)
            else:
                values[key] = context.get(list((variable or "").split(".")), token=self.token, default=None)
        with context.extend({"include": values}, template=template):
            template.render_with_context(context, buffer, partial=True)
        return True


class IncludeTag(Tag):
    """Jekyll's ``{% include file.html key="value" other=variable %}``: a file of `_includes`
    rendered in the post's context, its parameters as ``include.key``."""

    name = "include"
    block = False

    def parse(self, stream: TokenStream) -> Node:
        token, text = _tag(stream)
        text = text.strip()
        match = _INCLUDE_FILE.match(text)
        if match is None:
            raise LiquidError("{% include %}: a file name is needed", token=token)
        file, rest = match.groups()
        parameters: list[tuple[str, str | None, str | None]] = []
        pos = 0
        rest = rest.strip()
        while pos < len(rest):
            found = _INCLUDE_PARAMETER.match(rest, pos)
            if found is None:
                raise LiquidError(f"{{% include {text} %}}: invalid parameters (key=\"value\" or key=variable)",
                                  token=token)
            key, double, single, variable = found.groups()
            parameters.append((key, double if double is not None else single, variable))
            pos = found.end()
            while pos < len(rest) and rest[pos] in " \t\n,":
                pos += 1
        return _IncludeNode(token, file, _rendered(self.env, file), parameters)


class _HighlightNode(Node):
    __slots__ = ("block", "language")

    def __init__(self, token: Token, language: str, block: BlockNode) -> None:
        super().__init__(token)
        self.language = language
        self.block = block
        self.blank = False

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        inner = StringIO()
        self.block.render(context, inner)
        code = re.sub(r"\A(\n|\r)+|(\n|\r)+\Z", "", inner.getvalue())
        # One line: a blank line inside the code would end CommonMark's HTML block.
        escaped = html.escape(code, quote=False).replace("\r", "").replace("\n", "&#10;")
        language = self.language
        return buffer.write(f'<figure class="highlight"><pre><code class="language-{language}" data-lang="{language}">'
                            f"{escaped}</code></pre></figure>")


class HighlightTag(Tag):
    """``{% highlight lang %}…{% endhighlight %}``: Jekyll's figure, without Rouge's colouring
    (the text is the same)."""

    name = "highlight"
    end = "endhighlight"

    def parse(self, stream: TokenStream) -> Node:
        token, text = _tag(stream)
        text = text.strip()
        match = re.match(r"^([\w+\-.#]+)(?:\s|$)", text)
        if match is None:
            raise LiquidError(f"{{% highlight {text} %}}: a language name is needed", token=token)
        next(stream)
        block = get_parser(self.env).parse_block(stream, (self.end, TOKEN_EOF))
        stream.expect(TOKEN_TAG, value=self.end)
        return _HighlightNode(token, match.group(1).lower().replace("+", "-"), block)


# ---------------------------------------------------------------- Jekyll's filters


def relative_url(site: Site, url: object) -> str:
    """Jekyll's ``relative_url``: ``baseurl`` before a site path; an absolute URL as it is."""
    text = "" if url is None else str(url)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:", text) or text.startswith("//"):
        return text
    joined = site.baseurl + ("" if text.startswith("/") else "/") + text
    return quote(joined, safe="/:@!$&'()*+,;=-._~%?#[]")


def absolute_url(site: Site, url: object) -> str:
    """Jekyll's ``absolute_url``: the site's URL (with ``baseurl``) before a site path."""
    text = "" if url is None else str(url)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:", text) or text.startswith("//"):
        return text
    root = site.url[: len(site.url) - len(site.baseurl)] if site.baseurl and site.url.endswith(site.baseurl) else site.url
    return root + relative_url(site, text)


def _context_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    function.with_context = True  # type: ignore[attr-defined]
    return function


def _as_date(value: object, site: Site | None = None) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), site.timezone if site else dt.UTC)
    if isinstance(value, str) and value.strip():
        # Jekyll's Utils.parse_date reads what Ruby's Time.parse does: ISO dates and times,
        # the offset with or without a colon or a space before it.
        text = re.sub(r"\s+([+-]\d\d):?(\d\d)$", r"\1:\2", value.strip())
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=site.timezone if site else dt.UTC)
    return None


def _date_filter(render: Callable[[dt.datetime], str]) -> Callable[..., Any]:
    def apply(value: object, *, context: RenderContext) -> object:
        moment = _as_date(value, _state(context).site)
        return value if moment is None else render(moment)
    return _context_filter(apply)


def _long_day(moment: dt.datetime, month: str, ordinal: bool, us: bool) -> str:
    day = str(moment.day)
    if ordinal:
        day += "th" if 10 <= moment.day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(moment.day % 10, "th")
    if us:
        return f"{moment.strftime(month)} {day}, {moment.year}"
    return f"{day if ordinal else f'{moment.day:02d}'} {moment.strftime(month)} {moment.year}"


def _date_to_string(month: str) -> Callable[..., Any]:
    def apply(value: object, kind: object = None, style: object = None, *, context: RenderContext) -> object:
        moment = _as_date(value, _state(context).site)
        if moment is None:
            return value
        return _long_day(moment, month, kind == "ordinal", style == "US")
    return _context_filter(apply)


def _item(item: object, key: str) -> object:
    if isinstance(item, Mapping):
        value = item.get(key)
        if value is None and key.isdigit():
            value = item.get(int(key))
        return value
    return None


def _property(item: object, path: str) -> object:
    value = item
    for part in str(path).split("."):
        value = _item(value, part)
    return value


def _to_s(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _sequence(value: object) -> list[object]:
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    return [] if value is None or isinstance(value, Undefined) else [value]


def where(value: object, prop: object, target: object = None) -> object:
    """Jekyll's ``where``: the items whose property is the target (an array property: holds it)."""
    if prop is None or isinstance(target, (list, dict)):
        return value
    items = _sequence(value)
    wanted = None if target is None or isinstance(target, Undefined) else _to_s(target)

    def keeps(item: object) -> bool:
        found = _property(item, str(prop))
        if wanted is None:
            return found is None
        if isinstance(found, str):
            return found == wanted
        return any(_to_s(each) == wanted for each in _sequence(found))
    return [item for item in items if keeps(item)]


def _expression_filter(kind: str) -> Callable[..., Any]:
    """``where_exp``, ``find_exp``, ``group_by_exp``: a Liquid expression over each item."""
    def apply(value: object, variable: object, expression: object, *, context: RenderContext) -> object:
        name = _to_s(variable)
        test = context.env.from_string(f"{{% if {expression} %}}1{{% endif %}}" if kind != "group_by_exp"
                                       else f"{{{{ {expression} }}}}")
        results: list[tuple[object, str]] = []
        for item in _sequence(value):
            buffer = StringIO()
            with context.extend({name: item}):
                test.render_with_context(context, buffer, partial=True)
            results.append((item, buffer.getvalue()))
        if kind == "where_exp":
            return [item for item, out in results if out == "1"]
        if kind == "find_exp":
            return next((item for item, out in results if out == "1"), None)
        groups: dict[str, list[object]] = {}
        for item, out in results:
            groups.setdefault(out, []).append(item)
        return [{"name": key, "items": items, "size": len(items)} for key, items in groups.items()]
    return _context_filter(apply)


def find(value: object, prop: object, target: object = None) -> object:
    found = where(value, prop, target)
    return found[0] if isinstance(found, list) and found else None


def group_by(value: object, prop: object) -> list[dict[str, object]]:
    groups: dict[str, list[object]] = {}
    for item in _sequence(value):
        groups.setdefault(_to_s(_property(item, str(prop))), []).append(item)
    return [{"name": key, "items": items, "size": len(items)} for key, items in groups.items()]


def sort(value: object, prop: object = None, nils: object = "first") -> object:
    """Jekyll's ``sort``: by the property when given, items without it first (or ``"last"``)."""
    if value is None or isinstance(value, Undefined):
        raise LiquidError("Cannot sort a null object.", token=None)
    items = _sequence(value)
    if prop is None or isinstance(prop, Undefined):
        try:
            return sorted(items, key=_sort_key)
        except TypeError:
            return sorted(items, key=_to_s)
    present = [item for item in items if _property(item, str(prop)) is not None]
    absent = [item for item in items if _property(item, str(prop)) is None]
    try:
        ordered = sorted(present, key=lambda item: _sort_key(_property(item, str(prop))))
    except TypeError:
        ordered = sorted(present, key=lambda item: _to_s(_property(item, str(prop))))
    return [*absent, *ordered] if nils != "last" else [*ordered, *absent]


def _sort_key(value: object) -> Any:
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, (dt.datetime, dt.date)):
        return (1, value.isoformat())
    return (2, _to_s(value))


def _json_default(value: object) -> object:
    if isinstance(value, (dt.datetime, dt.date)):
        return _xmlschema(value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time()))
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Undefined):
        return None
    return str(value)


def jsonify(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _xmlschema(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (_offset(moment, ":") if moment.tzinfo else "+00:00")


def _offset(moment: dt.datetime, separator: str) -> str:
    offset = moment.utcoffset() or dt.timedelta()
    sign = "-" if offset < dt.timedelta() else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}{separator}{minutes % 60:02d}"


def _rfc822(moment: dt.datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S ") + _offset(moment, "")


def array_to_sentence_string(value: object, connector: object = "and") -> str:
    items = [_to_s(item) for item in _sequence(value)]
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} {connector} {items[1]}"
    return f"{', '.join(items[:-1])}, {connector} {items[-1]}"


def number_of_words(value: object, mode: object = None) -> int:
    text = _to_s(value)
    if mode in ("cjk", "auto"):
        cjk = re.findall(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]", text)
        if cjk or mode == "cjk":
            return len(cjk) + len(re.sub(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]", " ", text).split())
    return len(text.split())


def xml_escape(value: object) -> str:
    return html.escape(_to_s(value), quote=True).replace("&#x27;", "&#39;")


def cgi_escape(value: object) -> str:
    return quote_plus(_to_s(value), safe="~")


def uri_escape(value: object) -> str:
    # Addressable::URI.normalize_component: reserved characters stay, anything else is escaped
    return quote(unicodedata.normalize("NFC", _to_s(value)), safe="!#$&'()*+,/:;=?@[]~%")


def normalize_whitespace(value: object) -> str:
    return re.sub(r"\s+", " ", _to_s(value)).strip()


def slugify(value: object, mode: object = None, cased: object = False) -> str:
    """Jekyll's ``Utils.slugify`` in its modes: default, pretty, raw, ascii, latin, none."""
    text = _to_s(value)
    chosen = str(mode) if isinstance(mode, str) else "default"
    if chosen == "none":
        slug = text
    elif chosen == "raw":
        slug = re.sub(r"\s+", "-", text).strip("-")
    elif chosen in ("ascii", "latin"):
        if chosen == "latin":
            text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
        slug = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")
    else:
        slug = jekyll_slugify(text, "pretty" if chosen == "pretty" else "default", cased=True)
    return slug if cased is True else slug.lower()


@_context_filter
def markdownify(value: object, *, context: RenderContext) -> str:
    return render_markdown(_to_s(value), _state(context).style)


@_context_filter
def smartify(value: object, *, context: RenderContext) -> str:
    quotes = _state(context).style.quotes or "‘’“”"
    return html.escape(typography(_to_s(value), quotes), quote=False)


@_context_filter
def _relative_url(value: object, *, context: RenderContext) -> object:
    return None if value is None else relative_url(_state(context).site, value)


@_context_filter
def _absolute_url(value: object, *, context: RenderContext) -> object:
    return None if value is None else absolute_url(_state(context).site, value)


def strip_index(value: object) -> object:
    text = _to_s(value)
    return re.sub(r"/index\.html?$", "/", text) if text else value


def to_integer(value: object) -> int:
    if isinstance(value, bool):
        return 1 if value else 0
    try:
        return int(float(_to_s(value)))
    except ValueError:
        return 0


def push(value: object, item: object) -> list[object]:
    return [*_sequence(value), item]


def pop(value: object, count: object = 1) -> list[object]:
    items = _sequence(value)
    return items[: max(len(items) - to_integer(count), 0)]


def shift(value: object, count: object = 1) -> list[object]:
    return _sequence(value)[to_integer(count):]


def unshift(value: object, item: object) -> list[object]:
    return [item, *_sequence(value)]


def inspect(value: object) -> str:
    return html.escape(jsonify(value), quote=False)


def strip_html(value: object) -> str:
    # Jekyll's strip_html: scripts, styles and comments go with their content, tags alone
    text = re.sub(r"<script.*?</script>|<!--.*?-->|<style.*?</style>", "", _to_s(value), flags=re.S | re.I)
    return re.sub(r"<.*?>", "", text, flags=re.S)


#: Jekyll's filters (``Jekyll::Filters``) besides Liquid's standard ones.
FILTERS: dict[str, Callable[..., Any]] = {
    "relative_url": _relative_url,
    "absolute_url": _absolute_url,
    "strip_index": strip_index,
    "date_to_xmlschema": _date_filter(_xmlschema),
    "date_to_rfc822": _date_filter(_rfc822),
    "date_to_string": _date_to_string("%b"),
    "date_to_long_string": _date_to_string("%B"),
    "xml_escape": xml_escape,
    "cgi_escape": cgi_escape,
    "uri_escape": uri_escape,
    "normalize_whitespace": normalize_whitespace,
    "number_of_words": number_of_words,
    "array_to_sentence_string": array_to_sentence_string,
    "markdownify": markdownify,
    "smartify": smartify,
    "slugify": slugify,
    "jsonify": jsonify,
    "where": where,
    "where_exp": _expression_filter("where_exp"),
    "find": find,
    "find_exp": _expression_filter("find_exp"),
    "group_by": group_by,
    "group_by_exp": _expression_filter("group_by_exp"),
    "sort": sort,
    "to_integer": to_integer,
    "push": push,
    "pop": pop,
    "shift": shift,
    "unshift": unshift,
    "inspect": inspect,
    "strip_html": strip_html,
}

