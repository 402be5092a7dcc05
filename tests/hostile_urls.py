"""Image URLs that must never be published (feeds, digest): other schemes than http(s), also
behind the tricks a browser or a feed reader undoes (case, leading controls and spaces, tabs
and line breaks inside the scheme, character references, once or twice encoded)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

HOSTILE_URLS = [
    "javascript:alert(1)",
    " JaVaScRiPt:alert(1)",
    "\tjavascript:alert(1)",
    "\x01\x02 javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "java&#x09;script:alert(1)",
    "java&#9;script:alert(1)",
    "jav&#97;script:alert(1)",
    "&#106;avascript:alert(1)",
    "javascript&colon;alert(1)",
    "javascript&#58;alert(1)",
    "java&amp;#x09;script:alert(1)",
    "JAVASCRIPT:alert(1)",
    "vbscript:msgbox(1)",
    "VBScript:msgbox(1)",
    "data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+",
    " data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "mailto:a@b.org",
    "https://",
    "http:///no-host.png",
]

_IGNORED = re.compile("[\x00-\x20]")


def readings(text: str) -> str:
    """``text`` as a careless reader could see it: character references decoded three times,
    what a URL parser ignores dropped, lower case."""
    for _ in range(3):
        text = html.unescape(text)
    return _IGNORED.sub("", text).lower()


_STARTS = re.compile(r"""(?:^|["'=>])(javascript|vbscript|data|file|mailto):""")


def hostile_in(text: str) -> list[str]:
    """The schemes of :data:`HOSTILE_URLS` that start a value (an attribute, a JSON string,
    an element's text) in ``text``, in any reading."""
    return _STARTS.findall(readings(text))


def write_hostile_site(root: Path, site_url: str) -> Path:
    """A site whose posts carry each hostile URL: `fmN` (2022-04-20) as the front matter
    `image:`, `bodyN` (2022-04-19) as the body's first `<img>` (written as is, references
    too), followed by a good one, `/img/secondN.png`."""
    posts = {}
    for n, url in enumerate(HOSTILE_URLS):
        quoted = json.dumps(url)  # a YAML double-quoted string
        posts[f"_posts/2022-04-20-fm{n}.md"] = f"---\ntitle: fm{n}\ndate: 2022-04-20 10:{n:02d}:00 +0800\nimage: {quoted}\n---\n<p>x</p>\n"
        posts[f"_posts/2022-04-19-body{n}.md"] = (
            f"---\ntitle: body{n}\ndate: 2022-04-19 10:{n:02d}:00 +0800\n---\n"
            f"<p><img src=\"{url}\"> <img src=\"/img/second{n}.png\"></p>\n")
    for rel, text in posts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "_config.yml").write_text(f"url: {site_url}\n", encoding="utf-8")
    return root
