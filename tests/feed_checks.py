"""Helpers for the feed tests: posts made in code, and the checks every feed file must pass."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from lxml import etree

from finews_feeds.models import Post, Site

TZ = ZoneInfo("Asia/Shanghai")
SITE_URL = "https://finews.withounder.com"
SCHEMA = Path(__file__).parent / "data" / "schemas" / "atom.rng"
ATOM = "{http://www.w3.org/2005/Atom}"
_RNG: etree.RelaxNG | None = None


def make_site(**overrides: object) -> Site:
    values: dict[str, object] = dict(
        source=".", url=SITE_URL, title="finews 财经新闻", timezone=TZ, language="zh-CN",
        permalink="/:categories/:year/:month/:day/:title:output_ext", category_url="/category/{slug}.html",
        tag_url="", future=False, encoding="utf-8", summary_chars=120, extensions=(".md",),
        category_titles={"cailianshe": "财联社新闻"}, category_order={"cailianshe": 10},
    )
    values.update(overrides)
    return Site(**values)  # type: ignore[arg-type]


def make_post(n: int, *, minute: int | None = None, title: str | None = None, categories: tuple[str, ...] = ("cailianshe",),
              tags: tuple[str, ...] = ("财联社新闻",), image: str | None = None, summary: str = "摘要。",
              date: datetime | None = None, updated: datetime | None = None, content_hash: str = "h",
              image_size: tuple[int, int] | None = None) -> Post:
    moment = date or datetime(2022, 4, 20, 9, minute if minute is not None else n, tzinfo=TZ)
    url = f"{SITE_URL}/{categories[0] if categories else 'p'}/2022/04/20/NW{n:04d}.html"
    return Post(path=f"_posts/2022-04-20-NW{n:04d}.md", slug=f"NW{n:04d}", title=title if title is not None else f"标题{n}", date=moment,
                updated=updated, categories=categories, tags=tags, permalink=url[len(SITE_URL):], url=url, id=url,
                summary=summary, image=image, author=None, source="财联社", content_hash=content_hash,
                image_size=image_size)


def body_of(post: Post) -> str:
    return f"<p>{post.title} 正文</p>"


def atom_schema() -> etree.RelaxNG:
    global _RNG
    if _RNG is None:
        _RNG = etree.RelaxNG(etree.parse(str(SCHEMA)))
    return _RNG


def atom_problems(data: bytes) -> list[str]:
    """RFC 4287: the RELAX NG schema, plus the rules its Schematron part states."""
    doc = etree.fromstring(data)
    schema = atom_schema()
    problems = [] if schema.validate(doc) else [str(e) for e in schema.error_log]
    feed_author = doc.find(f"{ATOM}author") is not None
    for entry in doc.iter(f"{ATOM}entry"):
        if not feed_author and entry.find(f"{ATOM}author") is None:
            problems.append("entry without author in a feed without author")
        links = entry.findall(f"{ATOM}link")
        if entry.find(f"{ATOM}content") is None and not any(link.get("rel", "alternate") == "alternate" for link in links):
            problems.append("entry without content or alternate link")
    if not any(link.get("rel") == "self" for link in doc.findall(f"{ATOM}link")):
        problems.append("feed without rel=self link")
    problems.extend(url_problems(doc))
    return problems


def rss_problems(data: bytes) -> list[str]:
    """The RSS 2.0 rules (rssboard.org/rss-specification) as explicit checks."""
    problems: list[str] = []
    root = etree.fromstring(data)
    if root.tag != "rss" or root.get("version") != "2.0":
        problems.append("root is not <rss version=\"2.0\">")
    channels = root.findall("channel")
    if len(channels) != 1:
        return [*problems, f"{len(channels)} channels"]
    channel = channels[0]
    for required in ("title", "link", "description"):
        if len(channel.findall(required)) != 1 or not (channel.findtext(required) or "").strip():
            problems.append(f"channel <{required}> missing, repeated or empty")
    for name in ("lastBuildDate", "pubDate"):
        text = channel.findtext(name)
        if text is not None and parsedate_to_datetime(text) is None:
            problems.append(f"channel <{name}> {text!r} is not RFC 822")
    for item in channel.findall("item"):
        if item.find("title") is None and item.find("description") is None:
            problems.append("item without title or description")
        guid = item.find("guid")
        if guid is not None and guid.get("isPermaLink", "true") == "true" and not (guid.text or "").startswith("http"):
            problems.append(f"permalink guid {guid.text!r} is not a URL")
        pub = item.findtext("pubDate")
        if pub is not None:
            try:
                parsedate_to_datetime(pub)
            except (TypeError, ValueError):
                problems.append(f"item pubDate {pub!r} is not RFC 822")
        for enclosure in item.findall("enclosure"):
            if not all(enclosure.get(a) for a in ("url", "length", "type")) or not enclosure.get("length", "x").isdigit():
                problems.append("enclosure without url, numeric length and type")
        author = item.findtext("author")
        if author is not None and "@" not in author:
            problems.append(f"item author {author!r} is not an email address")
    problems.extend(url_problems(root))
    return problems


def url_problems(root: etree._Element) -> list[str]:
    """Every URL in a feed must be a URI (ASCII, CJK percent-encoded), never an IRI."""
    problems = []
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        local = tag.rsplit("}", 1)[-1]
        values = [element.get(a) for a in ("href", "url", "uri", "src", "xmlUrl", "htmlUrl") if element.get(a)]
        if local in ("link", "id", "guid", "uri", "url", "docs") and element.text and element.text.strip():
            values.append(element.text.strip())
        for value in values:
            if value and not value.isascii():
                problems.append(f"<{local}> holds an IRI, not a URI: {value}")
    return problems


def json_feed_problems(data: bytes) -> list[str]:
    """JSON Feed 1.1 (jsonfeed.org/version/1.1) rules as explicit checks: feedparser 6.0 reads
    only XML feeds."""
    import json

    problems: list[str] = []
    feed = json.loads(data)
    if feed.get("version") != "https://jsonfeed.org/version/1.1":
        problems.append(f"version {feed.get('version')!r}")
    if not isinstance(feed.get("title"), str) or not feed["title"]:
        problems.append("feed without title")
    for key in ("home_page_url", "feed_url"):
        if not str(feed.get(key, "")).startswith("http") or not str(feed.get(key, "")).isascii():
            problems.append(f"{key} {feed.get(key)!r} is not an absolute URI")
    items = feed.get("items")
    if not isinstance(items, list):
        return [*problems, "items is not a list"]
    for item in items:
        if not isinstance(item.get("id"), str) or not item["id"]:
            problems.append("item without id")
        if not isinstance(item.get("content_html"), str) and not isinstance(item.get("content_text"), str):
            problems.append(f"item {item.get('id')} without content_html or content_text")
        for key in ("url", "image"):
            if key in item and (not item[key].startswith("http") or not item[key].isascii()):
                problems.append(f"item {key} {item[key]!r} is not an absolute URI")
        for key in ("date_published", "date_modified"):
            if key in item:
                moment = datetime.fromisoformat(item[key])
                if moment.tzinfo is None:
                    problems.append(f"item {key} {item[key]!r} has no offset")
        if not all(isinstance(t, str) for t in item.get("tags", [])):
            problems.append("tags are not strings")
        if not all(isinstance(a, dict) and a.get("name") for a in item.get("authors", [])):
            problems.append("author without name")
    return problems
