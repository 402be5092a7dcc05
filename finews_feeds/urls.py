"""The one policy for a URL that leaves this program as a link or an image: http(s) only.

A post's image goes into feeds (JSON Feed `image`, Atom enclosure, `media:thumbnail`) and into
the digest's `<img src>`; a `javascript:`, `data:` or `vbscript:` URL there runs in whatever
shows it. A reader may also see the URL after decoding character references once more (a
feed reader that puts it into HTML without escaping) or after a browser's URL parser dropped
what it ignores, so every such reading must be http(s) too: ` JaVaScRiPt:x`,
`java&#x09;script:x` and `javascript&colon;x` are all refused.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin, urlsplit

#: Schemes a published URL may have.
WEB_SCHEMES = frozenset(("http", "https"))
# The WHATWG URL parser strips C0 controls and spaces at both ends and drops tabs and line
# breaks anywhere, before it reads the scheme.
_EDGES = "".join(map(chr, range(0x21)))
_DROPPED = re.compile("[\t\n\r]")
#: Character references a reader could decode (`&#x09;`, `&colon;`, `&amp;`): looked for first,
#: since html.unescape of every URL would cost more than the rest of the check.
_REFERENCE = re.compile(r"&(?:#|[A-Za-z][A-Za-z0-9]*;?)")
#: Decoded this often at most: each decoding a reader might do once more.
_DECODINGS = 3


def web_url(url: str | None, base: str) -> str | None:
    """``url`` made absolute against ``base`` when it is a web (http or https) URL with a host,
    as written and in every reading a browser or feed reader could make of it (character
    references decoded, ignored characters dropped); None for anything else (`javascript:`,
    `data:`, `vbscript:`, `mailto:`, a relative URL against a base that is not a web URL,
    a URL that cannot be parsed)."""
    if not url:
        return None
    written = _parsed_form(url)
    absolute = _absolute(written, base)
    if absolute is None:
        return None
    reading = url
    for _ in range(_DECODINGS):
        decoded = html.unescape(reading) if _REFERENCE.search(reading) else reading
        if decoded == reading:
            return absolute
        reading = decoded
        if _absolute(_parsed_form(reading), base) is None:
            return None
    return None  # still changing after that many decodings: nobody writes an image URL so


def is_web_url(url: str) -> bool:
    """Whether the absolute URL ``url`` passes :func:`web_url` (a relative URL does not)."""
    return web_url(url, "") is not None


def _parsed_form(url: str) -> str:
    """``url`` as a browser's URL parser starts from it."""
    return _DROPPED.sub("", url.strip(_EDGES))


def _absolute(url: str, base: str) -> str | None:
    try:
        parts = urlsplit(url)
        if not parts.scheme and base:  # an absolute URL is kept as written, not rebuilt by urljoin
            url = urljoin(base, url)
            parts = urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 host
        return None
    # A C0 control or a space in the host is a forbidden host code point (WHATWG URL): a browser
    # refuses the URL, or a reader that drops controls reads one without a host (`http://\x08/`).
    if parts.scheme not in WEB_SCHEMES or not parts.hostname or any(c <= " " for c in parts.hostname):
        return None
    # urljoin drops an empty fragment or query (`0 #`), which can leave a space at the end: kept
    # percent-encoded, as a browser sends it, so that the URL reads the same once more.
    stripped = url.rstrip(_EDGES)
    return stripped + "".join(f"%{ord(char):02X}" for char in url[len(stripped):])
