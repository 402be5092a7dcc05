"""Turn a post's body into what feeds and mail clients need: HTML with absolute URLs, plain text,
a summary, the news source and the first image.

Everything here is pure: text in, text out. Feed readers and mail clients have no base URL to
resolve ``/x`` or ``//host/x`` against, so every link and image leaves this module absolute.
"""

from __future__ import annotations

import functools
import html as html_lib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urljoin, urlsplit

import lxml.etree
import lxml.html
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

from ..urls import is_web_url

#: Characters XML 1.0 forbids (C0 controls but tab/LF/CR, surrogates, U+FFFE/U+FFFF) and the
#: C1/DEL controls, which are legal but render as garbage in every reader.
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")
_SPACE = re.compile(r"\s+")
#: Characters a percent-encoded path keeps as they are (RFC 3986 pchar plus `/`).
PATH_SAFE = "/:@!$&'()*+,;=-._~"
_URL_SAFE = PATH_SAFE + "?#[]%"
_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")
_SOURCE = re.compile(r"[（(]\s*文章来源\s*[：:]\s*([^）)]*?)\s*[）)]")
_SENTENCE_END = re.compile(r"[。！？!?…]+[”’」』）)\"']*|[.;；](?=\s)")
#: Attributes that hold a URL, by element (srcset is handled apart: it holds a list).
_URL_ATTRIBUTES = {
    "a": ("href",),
    "area": ("href",),
    "link": ("href",),
    "img": ("src", "longdesc"),
    "source": ("src",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "iframe": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "form": ("action",),
    "blockquote": ("cite",),
    "q": ("cite",),
    "del": ("cite",),
    "ins": ("cite",),
    "input": ("src",),
    "table": ("background",),
    "td": ("background",),
    "body": ("background",),
}
_HEADINGS = frozenset(("h1", "h2", "h3", "h4", "h5", "h6"))
_BLOCKS = _HEADINGS | {
    "p", "div", "ul", "ol", "li", "blockquote", "pre", "table", "tr", "center", "section", "article", "header",
    "footer", "figure", "figcaption", "hr", "dl", "dt", "dd", "address", "aside", "nav", "main",
}
_LINK_SEPARATORS = re.compile(r"[\s|｜·•/、,，]*")


def clean_text(text: str) -> str:
    """Remove characters that would make a feed ill-formed or show as garbage."""
    return _ILLEGAL.sub("", text)


def clean_line(text: str) -> str:
    """One line of plain text (a title, a name): no controls, whitespace runs collapsed."""
    return _SPACE.sub(" ", clean_text(text)).strip()


def _collapse_spaces(text: str) -> str:
    """:func:`clean_line` for text known to be clean."""
    return _SPACE.sub(" ", text).strip()


def encode_path(path: str) -> str:
    """Percent-encode a path as a URI does (Chinese -> %E4...); valid %XX escapes are kept."""
    parts = _ESCAPE.split(path)
    return "".join(part if i % 2 else quote(part, safe=PATH_SAFE) for i, part in enumerate(parts))


def encode_url(url: str) -> str:
    """An IRI as a URI: non-ASCII and spaces percent-encoded, everything else untouched."""
    if url.isascii() and " " not in url:
        return url
    parts = _ESCAPE.split(url.strip())
    return "".join(part if i % 2 else quote(part, safe=_URL_SAFE.replace("%", "")) for i, part in enumerate(parts))


def absolute_url(link: str, base: str) -> str:
    """``link`` resolved against ``base``; `//host/x` takes the base's scheme; other schemes untouched."""
    link = link.strip()
    if not link or link.startswith("#"):
        return link
    if link.startswith(("https://", "http://")) and link.isascii() and " " not in link:
        return link
    if link.startswith("//") and base.startswith(("https://", "http://")) and base.isascii() and "[" not in base and "]" not in base:
        # A network-path link takes only the base's scheme: finews posts repeat a few of them
        # (the category and home links) in every post.
        return _join_network_path(link, "https" if base.startswith("https:") else "http")
    try:
        scheme = urlsplit(link).scheme if ":" in link else ""
    except ValueError:  # e.g. `ftp://[oops`: an unparsable link stays as the author wrote it
        return link
    if scheme and scheme not in ("http", "https"):
        return link  # mailto:, javascript:, data: ... (sanitising is the digest's business)
    return _join(base, link)


def _join(base: str, link: str) -> str:
    try:
        return encode_url(urljoin(base, link))
    except ValueError:  # e.g. an invalid IPv6 host: leave it as the author wrote it
        return link


@lru_cache(maxsize=4096)
def _join_network_path(link: str, scheme: str) -> str:
    return _join(scheme + "://host/", link)


# CommonMark's HTML block starts (markdown-it's rules_block.html_block.HTML_SEQUENCES, held equal
# to it by a test): copied, because the fast paths below tell a body markdown-it need not render
# (plain HTML, text and links: most posts) line by line, faster than markdown-it renders it.
_BLOCK_TAGS = ("address|article|aside|base|basefont|blockquote|body|caption|center|col|colgroup|dd|details|dialog|"
               "dir|div|dl|dt|fieldset|figcaption|figure|footer|form|frame|frameset|h1|h2|h3|h4|h5|h6|head|header|hr|"
               "html|iframe|legend|li|link|main|menu|menuitem|nav|noframes|ol|optgroup|option|p|param|search|section|"
               "summary|table|tbody|td|tfoot|th|thead|title|tr|track|ul")
_ATTRIBUTE = r"""(?:\s+[a-zA-Z_:][a-zA-Z0-9:._-]*(?:\s*=\s*(?:[^"'=<>`\x00-\x20]+|'[^']*'|"[^"]*"))?)"""
HTML_SEQUENCES: list[tuple[re.Pattern[str], re.Pattern[str], bool]] = [
    (re.compile(r"^<(?a:(script|pre|style|textarea))(?=(\s|>|$))", re.IGNORECASE),
     re.compile(r"<\/(?a:(script|pre|style|textarea))>", re.IGNORECASE), True),
    (re.compile(r"^<!--"), re.compile(r"-->"), True),
    (re.compile(r"^<\?"), re.compile(r"\?>"), True),
    (re.compile(r"^<![A-Za-z]"), re.compile(r">"), True),
    (re.compile(r"^<!\[CDATA\["), re.compile(r"\]\]>"), True),
    (re.compile(rf"^</?(?a:({_BLOCK_TAGS}))(?=(\s|/?>|$))", re.IGNORECASE), re.compile(r"^$"), True),
    (re.compile(rf"^(?:<[A-Za-z][A-Za-z0-9\-]*{_ATTRIBUTE}*\s*\/?>|<\/[A-Za-z][A-Za-z0-9\-]*\s*>)\s*$"),
     re.compile(r"^$"), False),
]


@dataclass(frozen=True, slots=True)
class Style:
    """What Jekyll's Markdown converter (kramdown) writes that CommonMark does not: header ids
    and typography. The default is plain CommonMark."""

    ids: str = ""  #: header ids: "gfm" (kramdown's GFM input, Jekyll's default), "kramdown", or "" (none)
    #: kramdown's typography (smart quotes, dashes, ellipses, guillemets): the four characters
    #: for ‘ ’ “ ” (`smart_quotes`), or "" for none
    quotes: str = ""


PLAIN = Style()


@lru_cache(maxsize=8)
def _markdown(style: Style = PLAIN) -> MarkdownIt:
    # The commonmark preset passes raw HTML through and renders <http://...> autolinks.
    md = MarkdownIt("commonmark", {"html": True})
    if style.quotes:
        md.core.ruler.push("kramdown_typography", functools.partial(_typography, quotes=style.quotes))
    if style.ids:
        md.core.ruler.push("kramdown_ids", functools.partial(_header_ids, gfm=style.ids == "gfm"))
    return md


# ---------------------------------------------------------------- kramdown's typography and ids

_SQ_PUNCT = r"""[!"#$%'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"""
_SQ_CLOSE = r"[^ \\\t\r\n\[{(-]"
#: kramdown's ``SQ_RULES`` (parser/kramdown/smart_quotes.rb), tried in turn where a quote (or the
#: character before it) starts: each gives the groups it keeps as text (a number) and the quotes
#: it makes ("l1", "r2"...: opening or closing of the quote in that group; "ld", "ls", "rs": fixed).
_SQ_RULES: list[tuple[re.Pattern[str], tuple[int | str, ...]]] = [
    (re.compile(r"""("|')(?=[_*]{1,2}\S)""", re.A), ("l1",)),
    (re.compile(rf"""("|')(?={_SQ_PUNCT}(?!\.\.)\B)""", re.A), ("r1",)),
    (re.compile(r"""(\s?)"'(?=\w)""", re.A), (1, "ld", "ls")),
    (re.compile(r"""(\s?)'"(?=\w)""", re.A), (1, "ls", "ld")),
    (re.compile(r"""(\s?)'(?=\d\ds)""", re.A), (1, "rs")),
    (re.compile(r"""(\s)('|")(?=\w)""", re.A), (1, "l2")),
    (re.compile(rf"""({_SQ_CLOSE})('|")""", re.A), (1, "r2")),
    (re.compile(r"""("|')(?=\s|s\b|$)""", re.A | re.M), ("r1",)),
    (re.compile(r"(.?)'", re.S), (1, "ls")),
    (re.compile(r'(.?)"', re.S), (1, "ld")),
]
#: The quotes some rules make whatever quote they matched: ‘ ’ “ ” are 0 to 3 in ``quotes``.
_FIXED_QUOTES = {"ls": 0, "rs": 1, "ld": 2}
_SQ_START = re.compile(r"""[^\\]?["']""")
#: kramdown's ``TYPOGRAPHIC_SYMS``, longest first (an escaped `\<<` is left to Markdown's escapes).
_TYPOGRAPHIC = re.compile(r"---|--|\.\.\.|<< | >>|<<|>>")
_TYPOGRAPHIC_SYMS = {"---": "\u2014", "--": "\u2013", "...": "\u2026", "<< ": "\u00ab\u00a0", " >>": "\u00a0\u00bb",
                     "<<": "\u00ab", ">>": "\u00bb"}


def smart_quotes(text: str, quotes: str, before: str = "", after: str = "") -> str:
    """``text`` with kramdown's smart quotes (``quotes``: the characters for ‘ ’ “ ”), read as
    kramdown's span parser reads it: ``before`` and ``after`` are the source characters around
    it (markup, or nothing at the start and end of a paragraph)."""
    if "'" not in text and '"' not in text:
        return text
    source = before + text + after
    lo, hi = len(before), len(before) + len(text)
    made: dict[int, str] = {}
    # kramdown's scan may start on the character before a quote; markup before the text was
    # consumed by its own parser, a line break was not.
    pos = lo - 1 if before.isspace() else lo
    while pos < hi:
        start = _SQ_START.search(source, pos, hi)
        if start is None:
            break
        match, substs = _first_rule(source, start.start())
        at = match.start()
        for subst in substs:
            if isinstance(subst, int):
                at = match.end(subst)
                continue
            if subst in _FIXED_QUOTES:
                char = quotes[_FIXED_QUOTES[subst]]
            else:
                quote = match.group(int(subst[1]))
                char = quotes[(2 if quote == '"' else 0) + (1 if subst[0] == "r" else 0)]
            made[at] = char
            at += 1
        pos = max(match.end(), pos + 1)
    return "".join(made.get(i, source[i]) for i in range(lo, hi))


def _first_rule(source: str, at: int) -> tuple[re.Match[str], tuple[int | str, ...]]:
    for rule, substs in _SQ_RULES:
        match = rule.match(source, at)
        if match is not None:
            return match, substs
    raise AssertionError("the last rules match any quote")  # pragma: no cover


def typography(text: str, quotes: str, before: str = "", after: str = "") -> str:
    """kramdown's typography on plain ``text``: smart quotes, then dashes, ellipses and guillemets."""
    text = smart_quotes(text, quotes, before, after)
    return _TYPOGRAPHIC.sub(lambda m: _TYPOGRAPHIC_SYMS[m.group()], text) if "--" in text or "..." in text or "<<" in text or ">>" in text else text


def _source_end(token: Token | None) -> str:
    if token is None:
        return ""
    if token.type == "text":
        return token.content[-1:]
    if token.type == "softbreak" or token.type == "hardbreak":
        return "\n"
    return {"link_open": "[", "link_close": ")", "code_inline": "`"}.get(token.type, token.markup[-1:] or token.content[-1:])


def _source_start(token: Token | None) -> str:
    if token is None:
        return ""
    if token.type in ("text", "html_inline"):
        return token.content[:2]
    if token.type == "softbreak" or token.type == "hardbreak":
        return "\n"
    return {"link_open": "[", "link_close": "]", "code_inline": "`"}.get(token.type, token.markup[:2] or token.content[:2])


def _typography(state: StateCore, quotes: str) -> None:
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        children = block.children
        for index, token in enumerate(children):
            if token.type == "text":
                before = _source_end(children[index - 1] if index else None)
                after = _source_start(children[index + 1] if index + 1 < len(children) else None)
                token.content = typography(token.content, quotes, before, after)


def header_id(text: str, gfm: bool) -> str:
    """kramdown's automatic header id of a header whose source text is ``text`` (before any
    repeat's suffix): GFM input's (lower case, only letters, marks, digits, `_`, `-` and spaces
    kept, spaces made `-`) or kramdown input's (ASCII only, from the first letter; `section`
    when nothing is left)."""
    if gfm:
        kept = "".join(c for c in text.lower() if c in "- \t" or unicodedata.category(c)[0] in "LM"
                       or unicodedata.category(c) in ("Nd", "Pc"))
        return kept.replace(" ", "-").replace("\t", "-")
    made = re.sub(r"^[^a-zA-Z]+", "", text)
    made = re.sub(r"[^a-zA-Z0-9 -]", "", made).replace(" ", "-").lower()
    return made or "section"


def _header_ids(state: StateCore, gfm: bool) -> None:
    seen: dict[str, int] = {}
    tokens = state.tokens
    for index, token in enumerate(tokens):
        if token.type != "heading_open" or token.attrGet("id") is not None or index + 1 >= len(tokens):
            continue
        made = header_id(tokens[index + 1].content, gfm)
        count = seen.get(made, -1) + 1
        seen[made] = count
        token.attrSet("id", f"{made}-{count}" if count else made)


_BLANK_LINE = re.compile(r"\n[ \t]*(?=\n|\Z)")
_LEADING_BLANKS = re.compile(r"(?:[ \t]*\n)*")


def _is_html_block_start(line: str) -> bool:
    """True when CommonMark reads ``line`` (at the top level) as an HTML block that ends at the
    next blank line (type 6: a block-level tag such as <p>, <div>, <center>)."""
    for opening, _closing, _ in HTML_SEQUENCES:
        if opening.search(line):
            return opening is HTML_SEQUENCES[5][0]
    return False


def render_markdown(text: str, style: Style = PLAIN) -> str:
    """Markdown (with raw HTML mixed in, as finews posts are) to HTML.

    finews bodies are mostly one long raw HTML block followed by a few Markdown lines. A block
    of type 6 at the top level is copied through unchanged by CommonMark, so leading ones are
    copied here without tokenizing them (markdown-it spends most of its time scanning their
    inline content for nothing); the rest goes through markdown-it. The output is the same.
    """
    return _render_markdown(text, style)[0]


#: What kramdown's typography changes in text: a line holding none of it is the same either way.
_TYPOGRAPHIC_TEXT = re.compile(r"""['"]|--|\.\.\.""")


def _render_markdown(text: str, style: Style = PLAIN) -> tuple[str, bool]:
    """:func:`render_markdown`, and whether markdown-it rendered part of it (else every character
    of the output comes from ``text``)."""
    pos = 0
    out: list[str] = []
    while True:
        pos = _LEADING_BLANKS.match(text, pos).end()  # type: ignore[union-attr]
        end = text.find("\n", pos)
        line = text[pos:] if end < 0 else text[pos:end]
        if not line.startswith("<") or not _is_html_block_start(line):
            break
        blank = _BLANK_LINE.search(text, pos)
        if blank is None:
            out.append(text[pos:])  # the last line has no newline: neither has the output
            pos = len(text)
            break
        out.append(text[pos : blank.start()] + "\n")
        pos = blank.start() + 1
    rest = text[pos:]
    by_markdown_it = False
    if rest.strip():
        simple = None if style.quotes and _TYPOGRAPHIC_TEXT.search(rest) else _render_simple_paragraphs(rest)
        if simple is None:
            simple, by_markdown_it = _markdown(style).render(rest), True
        out.append(simple)
    return "".join(out), by_markdown_it


# The Markdown that follows the HTML of a finews post is a few one-line paragraphs of plain text,
# autolinks and inline links. markdown-it spends about a millisecond on them (its per-call set-up
# and URL normalisation), more than everything else a post costs, so such paragraphs are rendered
# here. The character sets are narrow on purpose: anything Markdown could read differently
# (emphasis, escapes, entities, images, reference links, block markers, `%` escapes in URLs)
# falls back to markdown-it, and a hypothesis test holds the two outputs equal.
_SIMPLE_URL = r"[A-Za-z0-9/?#@!$&+,;=\-._~:]"
_SIMPLE_TEXT = r"[^\\`*_\[\]<>&!~\s]|[ ](?=\S)"
_SIMPLE_INLINE = re.compile(
    # Only http(s) and scheme-less URLs: markdown-it refuses javascript:, data: and the like.
    r"(?P<auto><(?P<url>[Hh][Tt][Tt][Pp][Ss]?://" + _SIMPLE_URL + r"*)>)"
    r"|(?P<link>\[(?P<label>(?:" + _SIMPLE_TEXT + r")+)\]\((?P<dest>(?:(?:[Hh][Tt][Tt][Pp][Ss]?:)?//|/)"
    + _SIMPLE_URL + r"*)\))"
    r"|(?P<text>(?:" + _SIMPLE_TEXT + r")+)"
)
_SIMPLE_LINE_START = re.compile(r"[^\s#>\-+*=_`~0-9|]")


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _render_simple_paragraphs(text: str) -> str | None:
    """Render ``text`` when it is only one-line paragraphs of plain text and links; else None."""
    out: list[str] = []
    previous_blank = True
    for line in text.split("\n"):
        if not line.strip(" \t"):  # Markdown's blank line; U+3000 and friends are not blank
            previous_blank = True
            continue
        if not previous_blank:
            return None  # two lines make one paragraph with a soft break: left to markdown-it
        previous_blank = False
        paragraph = _render_simple_line(line)
        if paragraph is None:
            return None
        out.append(paragraph)
    return "".join(out)


@lru_cache(maxsize=4096)  # the "back to the category" lines repeat from post to post
def _render_simple_line(line: str) -> str | None:
    """One paragraph of plain text and links, or None when Markdown could read ``line`` otherwise."""
    if not _SIMPLE_LINE_START.match(line) or line != line.rstrip():
        return None
    if line.startswith("<") and any(opening.search(line) for opening, _closing, _ in HTML_SEQUENCES):
        return None
    parts: list[str] = []
    pos = 0
    for match in _SIMPLE_INLINE.finditer(line):
        if match.start() != pos:
            return None
        pos = match.end()
        if match.group("auto"):
            url = _escape_html(match.group("url"))
            parts.append(f'<a href="{url}">{url}</a>')
        elif match.group("link"):
            parts.append(f'<a href="{_escape_html(match.group("dest"))}">{_escape_html(match.group("label"))}</a>')
        else:
            parts.append(_escape_html(match.group("text")))
    if pos != len(line):
        return None
    return "<p>" + "".join(parts) + "</p>\n"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A body rendered for publication and the facts derived from it."""

    html: str  #: absolutised HTML
    text: str  #: plain text for the summary (source line and trailing link lines left out)
    source: str | None  #: `财联社` from `（文章来源：财联社）`
    image: str | None  #: absolute URL of the first image


# lxml.html's parser calls a Python class lookup for every element proxy it hands out (about a
# fifth of a post's parse); the plain libxml2 HTML parser builds the same tree without it. The two
# functions below are lxml.html.fragment_fromstring(create_parent="div") and lxml.html.tostring
# over it, step for step.
# UTF-8 bytes parse faster than a str (which libxml2 would read as UTF-16 or UCS-4); the named
# encoding also overrules any <meta charset> in the body, as it does for a str.
_HTML_PARSER = lxml.etree.HTMLParser(encoding="utf-8")
_LOOKS_LIKE_FULL_HTML: Callable[[str], object] = lxml.html._looks_like_full_html_unicode
_DROP_META_CONTENT_TYPE: Callable[[str, str], str] = getattr(lxml.html, "__str_replace_meta_content_type")


def _parse_fragment(html: str, data: bytes | None = None) -> lxml.etree._Element | None:
    """``html`` as a tree under a `<div>`; ``data``, when given, is ``html`` in UTF-8."""
    if not html.strip():
        return None
    try:
        return _fragment(html, html.encode("utf-8") if data is None else data)
    except (lxml.etree.ParserError, ValueError):
        return None


def _fragment(html: str, data: bytes) -> lxml.etree._Element:
    if not _LOOKS_LIKE_FULL_HTML(html):
        data = b"<html><body>" + data + b"</body></html>"
    document = lxml.etree.fromstring(data, _HTML_PARSER)
    if document is None:
        raise lxml.etree.ParserError("Document is empty")
    bodies = [e for e in document if e.tag == "body"] if document.tag == "html" else []
    if len(bodies) != 1:  # e.g. a body that is only `<html>`: nothing to show (lxml.html asserts here)
        raise lxml.etree.ParserError("no document body")
    body = bodies[0]
    root = _HTML_PARSER.makeelement("div")  # in an HTML document, as lxml.html makes it
    if body.text and body.text.strip():
        root.text = body.text  # a control character from an entity raises ValueError here
    root.extend(body)
    return root


def _serialize(root: lxml.etree._Element) -> str:
    return _DROP_META_CONTENT_TYPE("", lxml.etree.tostring(root, method="html", encoding="unicode"))


_URL_TAGS = tuple(_URL_ATTRIBUTES)


def _absolutise(root: lxml.etree._Element, base: str, *, srcset: bool = True) -> str | None:
    """Rewrite every URL attribute in place; returns the first image's URL. With ``srcset``
    false (the source has no such attribute) only the elements that hold URLs are visited."""
    first_image: str | None = None
    for element in root.iter() if srcset else root.iter(*_URL_TAGS):
        tag = element.tag
        if not isinstance(tag, str):
            continue  # comments, processing instructions
        attributes = _URL_ATTRIBUTES.get(tag)
        if attributes:
            for name in attributes:
                value = element.get(name)
                if value is not None:
                    element.set(name, absolute_url(value, base))
        if srcset:
            candidates = element.get("srcset")
            if candidates is not None:
                element.set("srcset", _absolute_srcset(candidates, base))
        if first_image is None and tag == "img":
            src = element.get("src")
            if src and _is_web_url(src):
                first_image = src
    return first_image


def _is_web_url(url: str) -> bool:
    # The URL policy (urls.web_url) costs more than the rest of the loop; an ASCII http(s) URL
    # without brackets (which urlsplit could reject) or references needs no parsing.
    if (url.startswith(("https://", "http://")) and url.isascii() and "[" not in url and "]" not in url and "&" not in url
            and url[8 if url[4] == "s" else 7 :][:1] not in ("", "/", "?", "#", ":", "@")):  # with a host
        return True
    return is_web_url(url)


def _absolute_srcset(value: str, base: str) -> str:
    candidates = []
    for candidate in value.split(","):
        bits = candidate.strip().split(None, 1)
        if bits:
            bits[0] = absolute_url(bits[0], base)
            candidates.append(" ".join(bits))
    return ", ".join(candidates)


def _block_texts(root: lxml.etree._Element) -> list[tuple[str, str, bool]]:
    """The body as (tag, text, links only) blocks, in order; loose inline content makes its own blocks."""
    blocks: list[tuple[str, str, bool]] = []
    inline: list[str] = []
    inline_links: list[str] = []

    def flush() -> None:
        text = "".join(inline)
        if text.strip():
            blocks.append(("", text, _only_links(text, inline_links)))
        inline.clear()
        inline_links.clear()

    if root.text:
        inline.append(root.text)
    for child in root:
        tag = child.tag
        if not isinstance(tag, str):
            tag = ""
        if tag in _BLOCKS:
            if inline:
                flush()
            if len(child):
                text = _text_of(child)
                if text.strip():
                    links = [_text_of(a) for a in child.iter("a")]
                    blocks.append((tag, text, _only_links(text, links) if links else False))
            else:  # most blocks: text only, and no link (a block is no `a` itself)
                text = " " + (child.text or "") + " "
                if text.strip():
                    blocks.append((tag, text, False))
        elif tag == "br":
            inline.append("\n")
        elif tag and tag not in _INVISIBLE:
            inline.append(_text_of(child))
            inline_links.extend(_text_of(a) for a in child.iter("a"))
        tail = child.tail
        if tail:
            inline.append(tail)
    flush()
    return blocks


_INVISIBLE = frozenset(("script", "style", "template", "noscript"))
_SPACED = _BLOCKS | {"br"}


def _text_of(element: lxml.etree._Element) -> str:
    """Text content with a space where blocks and line breaks separate words; scripts left out."""
    tag = element.tag
    if not isinstance(tag, str) or tag in _INVISIBLE:
        return ""
    if not len(element):  # most elements: no recursion, no list
        text = element.text or ""
        return " " + text + " " if tag in _SPACED else text
    parts: list[str] = []
    _visit(element, tag, parts)
    return "".join(parts)


def _visit(node: lxml.etree._Element, tag: str, parts: list[str]) -> None:
    block = tag in _SPACED
    if block:
        parts.append(" ")
    text = node.text
    if text:
        parts.append(text)
    for child in node:
        child_tag = child.tag
        if isinstance(child_tag, str) and child_tag not in _INVISIBLE:
            _visit(child, child_tag, parts)
        tail = child.tail
        if tail:
            parts.append(tail)
    if block:
        parts.append(" ")


def _only_links(text: str, link_texts: list[str]) -> bool:
    """True when a block is navigation: nothing but links and separators."""
    if not any(t.strip() for t in link_texts):
        return False
    rest = _SPACE.sub("", text)
    for link in link_texts:
        rest = rest.replace(_SPACE.sub("", link), "", 1)
    return _LINK_SEPARATORS.fullmatch(rest) is not None


def render_body(body: str, base: str, *, markdown: bool = True, style: Style = PLAIN) -> Rendered:
    """Render a post body (Markdown unless ``markdown`` is false: Jekyll passes `.html` posts
    through), make its URLs absolute against ``base`` (the post's URL), and derive the plain
    text, the source and the first image from the same tree."""
    if markdown:
        html, by_markdown_it = _render_markdown(clean_text(body), style)
        if by_markdown_it:  # it decodes entities, which may name characters clean_text removes
            html = clean_text(html)
    else:
        html = clean_text(body)
    data = html.encode("utf-8")
    root = _parse_fragment(html, data)
    if root is None:
        return Rendered(html="", text="", source=None, image=None)
    # Only a numeric character reference (`&#11;`) can put back into the tree a character that
    # clean_text removed; without one, the tree's text and its serialization are clean already.
    references = "&#" in html
    image = _absolutise(root, base, srcset=b"srcset" in data.lower())  # ASCII-only lower(): fast
    serialized = _serialize(root)
    # Strip the <div> wrapper fragment_fromstring added.
    out = serialized[5:-6] if serialized.startswith("<div>") else serialized
    out = (clean_text(out) if references else out).strip()

    source: str | None = None
    kept: list[tuple[str, str, bool]] = []
    for tag, text, links_only in _block_texts(root):
        if "文章来源" in text:  # what _SOURCE needs, found without the regex
            match = _SOURCE.search(text)
            if match:
                source = source or clean_line(match.group(1)) or None
                text = _SOURCE.sub("", text)
                if not text.strip():
                    continue
        kept.append((tag, text, links_only))
    # The tail of a finews post is navigation: related links, the original's URL, "back" links.
    while kept and (kept[-1][2] or (kept[-1][0] in _HEADINGS)):
        kept.pop()
    line = clean_line if references else _collapse_spaces
    text = " ".join([line(t) for _, t, _ in kept]).strip()
    return Rendered(html=out, text=text, source=source, image=image)


def html_to_text(fragment: str) -> str:
    """Plain text of an HTML (or plain) fragment: tags dropped, entities decoded, whitespace collapsed."""
    if "<" not in fragment and "&" not in fragment:
        return clean_line(fragment)
    root = _parse_fragment(clean_text(fragment))
    if root is None:
        return clean_line(html_lib.unescape(fragment))
    return clean_line(_text_of(root))


def summarize_text(text: str, chars: int) -> str:
    """Cut ``text`` at the sentence end nearest ``chars`` characters (Chinese has no spaces, so
    never by words); Latin text is never cut mid-word.

    The nearest end at most ``chars`` and the first one after it (up to half again as long)
    compete on distance; an end before a third of the target is too short to stand for the
    post, and without a usable end the text is cut at the target with `…`.
    """
    text = text.strip()
    if chars <= 0:
        return ""
    if len(text) <= chars:
        return text
    before: int | None = None
    after: int | None = None
    for match in _SENTENCE_END.finditer(text, 0, min(len(text), chars + chars // 2)):
        if match.end() <= chars:
            before = match.end()
        else:
            after = match.end()
            break
    if before is not None and before < chars // 3:
        before = None
    if before is not None and (after is None or chars - before <= after - chars):
        return text[:before].rstrip()
    if after is not None:
        return text[:after].rstrip()
    cut = text[:chars]
    if text[chars - 1].isascii() and text[chars - 1].isalnum() and text[chars].isascii() and text[chars].isalnum():
        space = cut.rfind(" ")
        if space > 0:
            cut = cut[:space]
    return cut.rstrip(" ,，、;；:：-") + "…"


_SLUG_KEEP_PRETTY = frozenset("._~!$&'()+,;=@")
#: The ASCII characters jekyll_slugify drops, per mode (pretty or not): in ASCII only A-Z, a-z and 0-9
#: are letters, marks or decimal digits.
_SLUG_ASCII_DROPPED = {
    False: re.compile(r"[^A-Za-z0-9]+"),
    True: re.compile(r"[^A-Za-z0-9._~!$&'()+,;=@]+"),
}


@lru_cache(maxsize=4096)
def _keeps(char: str, pretty: bool) -> bool:
    category = unicodedata.category(char)
    return category[0] in "LM" or category == "Nd" or (pretty and char in _SLUG_KEEP_PRETTY)


def jekyll_slugify(text: str, mode: str = "default", cased: bool = False) -> str:
    """Jekyll's ``Utils.slugify`` for the modes permalinks use: "default" keeps letters, marks and
    digits (Chinese included); "pretty" also keeps ``._~!$&'()+,;=@``; other runs become `-`."""
    pretty = mode == "pretty"
    # In ASCII, runs of dropped characters become one `-`, none at either end (`-` is dropped).
    slug = _SLUG_ASCII_DROPPED[pretty].sub("-", text).strip("-") if text.isascii() else _jekyll_slugify_chars(text, pretty)
    return slug if cased else slug.lower()


def _jekyll_slugify_chars(text: str, pretty: bool) -> str:
    """:func:`jekyll_slugify`'s rule character by character, for any text."""
    out: list[str] = []
    dash = False
    for char in text:
        if _keeps(char, pretty):
            if dash and out:
                out.append("-")
            dash = False
            out.append(char)
        else:
            dash = True
    return "".join(out)


def titleize(slug: str) -> str:
    """Jekyll's ``Utils.titleize_slug``: `big-news` -> `Big News`."""
    return " ".join(word.capitalize() for word in slug.split("-"))
