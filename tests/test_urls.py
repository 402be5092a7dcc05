"""The one URL policy for what the feeds and the digest publish as an image (finews_feeds/urls.py)."""

from __future__ import annotations

import html
from urllib.parse import urlsplit

import pytest
from hostile_urls import HOSTILE_URLS, readings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from finews_feeds.urls import is_web_url, web_url

BASE = "https://finews.withounder.com/cailianshe/2022/04/20/p.html"


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_urls_are_refused(url: str) -> None:
    assert web_url(url, BASE) is None
    assert not is_web_url(url)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://img.example/a.png", "https://img.example/a.png"),
    ("HTTPS://img.example/a.png", "HTTPS://img.example/a.png"),
    ("  https://img.example/a.png\n", "https://img.example/a.png"),
    ("https://img.example/a.png?x=1&amp;y=2", "https://img.example/a.png?x=1&amp;y=2"),
    ("https://img.example/a.png?x=1&y=2", "https://img.example/a.png?x=1&y=2"),
    ("/img/a.png", "https://finews.withounder.com/img/a.png"),
    ("a.png", "https://finews.withounder.com/cailianshe/2022/04/20/a.png"),
    ("//cdn.example/a.png", "https://cdn.example/a.png"),
    ("http://[::1]/a.png", "http://[::1]/a.png"),
])
def test_web_urls_are_kept_and_made_absolute(url: str, expected: str) -> None:
    assert web_url(url, BASE) == expected


def test_a_relative_url_needs_a_web_base() -> None:
    assert web_url("/img/a.png", "") is None
    assert web_url("/img/a.png", "javascript:x") is None
    assert web_url("http://[oops/a.png", BASE) is None


def _ignored() -> st.SearchStrategy[str]:
    """What a URL parser drops or a reader decodes, to hide in a scheme."""
    return st.sampled_from(["", "", "", "\t", "\n", "\r", "&#x09;", "&#9;", "&#10;", "&Tab;", "&NewLine;", "&amp;#x09;"])


@st.composite
def _disguised(draw: st.DrawFn) -> str:
    """A non-web scheme, in random case, with ignored characters and references inside it."""
    scheme = draw(st.sampled_from(["javascript", "vbscript", "data", "file", "ftp", "blob", "mailto"]))
    letters = []
    for letter in scheme:
        shown = draw(st.sampled_from([letter, letter.upper(), f"&#{ord(letter)};", f"&#x{ord(letter):x};"]))
        letters.append(shown + draw(_ignored()))
    lead = draw(st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\x00", "\x01", "\x1f"]), max_size=3))
    colon = draw(st.sampled_from([":", "&colon;", "&#58;", "&#x3a;", "&#X3A;"]))
    return lead + "".join(letters) + colon + draw(st.text(max_size=20))


@settings(max_examples=500, deadline=None)
@given(_disguised(), st.sampled_from([BASE, "http://localhost:4000/", ""]))
def test_a_disguised_scheme_is_refused_in_every_reading(url: str, base: str) -> None:
    # Only where every decoding of the references reveals the scheme: `&amp;#x09;` inside it,
    # decoded once, is a relative URL for a browser, but a reader decoding twice sees it.
    assert web_url(url, base) is None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), _disguised(),
                 st.tuples(st.sampled_from(["https://", "http://", "//", "/", "", " h&#116;tps://"]),
                           st.text(max_size=30)).map("".join)),
       st.sampled_from([BASE, "http://localhost:4000/", ""]))
@example("HTTP://\x08/", BASE)  # a host of a control character, which a reader may drop
def test_whatever_it_keeps_is_http_with_a_host_in_every_reading(url: str, base: str) -> None:
    kept = web_url(url, base)
    if kept is None:
        return
    for reading in (kept, html.unescape(kept), html.unescape(html.unescape(kept)), readings(kept)):
        parts = urlsplit(reading.strip("".join(map(chr, range(0x21)))).replace("\t", "").replace("\n", "").replace("\r", ""))
        assert parts.scheme.lower() in ("http", "https") and parts.hostname, reading
    assert web_url(kept, base) == kept  # a kept URL is kept as it is


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["http", "https", "HTTPS"]),
       st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,5}){1,2}", fullmatch=True),
       st.from_regex(r"(/[A-Za-z0-9._~%!$'()*+,;=:@-]{0,12}){0,4}(\?[A-Za-z0-9=&]{0,12})?", fullmatch=True))
def test_a_plain_web_url_is_kept_as_written(scheme: str, host: str, path: str) -> None:
    url = f"{scheme}://{host}{path}"
    assert web_url(url, BASE) == url
    assert is_web_url(url)
