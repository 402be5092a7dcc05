from __future__ import annotations

import json
import locale
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest
from feed_checks import SITE_URL, TZ, atom_problems, body_of, json_feed_problems, make_post, make_site, rss_problems
from hostile_urls import HOSTILE_URLS, hostile_in, write_hostile_site
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from finews_feeds.config import FeedsConfig, build_config
from finews_feeds.errors import ConfigError
from finews_feeds.feeds.build import run_build
from finews_feeds.feeds.plan import FeedOptions, FeedPlan, FeedSpec, plan_feeds
from finews_feeds.feeds.render import entry_data, render_feed, render_listings
from finews_feeds.models import Post
from finews_feeds.site.markup import clean_text

ATOM = "{http://www.w3.org/2005/Atom}"


def options(**feeds: object) -> FeedOptions:
    # The finews demo's setting (config/finews.toml): a post's source stands in for its author (issue 18).
    return FeedOptions.from_config(make_site(), FeedsConfig(**{"author_fallback": "source", **feeds}))  # type: ignore[arg-type]


def render(posts: Sequence[Post], kind: str = "category", name: str = "cailianshe", **feeds: object) -> dict[str, bytes]:
    opts = options(**feeds)
    plan = plan_feeds(posts, make_site(), opts)
    spec = next(s for s in plan.specs if s.kind == kind and s.name == name)
    entries = [entry_data(p, opts, body_of) for p in plan.entries[spec.key]]
    return render_feed(spec, opts, entries)


def rss_of(files: dict[str, bytes]) -> etree._Element:
    return etree.fromstring(next(v for k, v in files.items() if k.endswith("rss.xml")))


def atom_of(files: dict[str, bytes]) -> etree._Element:
    return etree.fromstring(next(v for k, v in files.items() if k.endswith("atom.xml")))


def json_of(files: dict[str, bytes]) -> dict[str, object]:
    return json.loads(next(v for k, v in files.items() if k.endswith("feed.json")))  # type: ignore[no-any-return]


POSTS = [make_post(2), make_post(5, image="https://img.example/a.png"), make_post(1), make_post(4), make_post(3)]


# --------------------------------------------------------------------------- feedgen pitfalls


def test_entries_come_out_newest_first_in_every_format() -> None:
    files = render(POSTS)
    newest_first = [make_post(n).id for n in (5, 4, 3, 2, 1)]
    assert [g.text for g in rss_of(files).iter("guid")] == newest_first
    assert [e.findtext(f"{ATOM}id") for e in atom_of(files).iter(f"{ATOM}entry")] == newest_first
    assert [i["id"] for i in json_of(files)["items"]] == newest_first  # type: ignore[index, union-attr]


def test_rss_guid_is_the_permalink_and_says_so() -> None:
    guids = rss_of(render(POSTS)).findall("channel/item/guid")
    assert (guids[0].get("isPermaLink"), guids[0].text) == ("true", f"{SITE_URL}/cailianshe/2022/04/20/NW0005.html")
    assert all(g.get("isPermaLink") == "true" for g in guids)


def test_rss_channel_link_is_the_category_page_not_the_feed_itself() -> None:
    channel = rss_of(render(POSTS, websub_hub="https://hub.example/")).find("channel")
    assert channel is not None
    assert channel.findtext("link") == f"{SITE_URL}/category/cailianshe.html"
    links = [(link.get("rel"), link.get("href"), link.get("type")) for link in channel.findall(f"{ATOM}link")]
    assert links == [
        ("self", f"{SITE_URL}/feeds/categories/cailianshe/rss.xml", "application/rss+xml"),
        ("hub", "https://hub.example/", None),
    ]


def test_atom_entry_links_keep_rel_and_type_and_the_image_is_an_enclosure() -> None:
    entry = next(atom_of(render(POSTS)).iter(f"{ATOM}entry"))
    links = [dict(link.attrib) for link in entry.findall(f"{ATOM}link")]
    assert links == [
        {"href": f"{SITE_URL}/cailianshe/2022/04/20/NW0005.html", "rel": "alternate", "type": "text/html"},
        {"rel": "enclosure", "type": "image/png", "href": "https://img.example/a.png"},
    ]
    thumbnail = entry.find("{http://search.yahoo.com/mrss/}thumbnail")
    assert thumbnail is not None and thumbnail.get("url") == "https://img.example/a.png"


def test_rss_image_is_an_enclosure_and_a_media_thumbnail() -> None:
    item = rss_of(render(POSTS)).find("channel/item")
    assert item is not None
    enclosure = item.find("enclosure")
    assert enclosure is not None and dict(enclosure.attrib) == {"url": "https://img.example/a.png", "length": "0", "type": "image/png"}
    assert item.find("{http://search.yahoo.com/mrss/}thumbnail") is not None


def test_updated_and_last_build_date_are_the_newest_entry_time_not_the_clock() -> None:
    files = render(POSTS)
    assert rss_of(files).findtext("channel/lastBuildDate") == "Wed, 20 Apr 2022 09:05:00 +0800"
    assert atom_of(files).findtext(f"{ATOM}updated") == "2022-04-20T09:05:00+08:00"


def test_an_edited_older_post_makes_the_feed_updated() -> None:
    edited = make_post(3, updated=datetime(2022, 4, 21, 1, 0, tzinfo=UTC))
    files = render([*POSTS[:4], edited])
    assert rss_of(files).findtext("channel/lastBuildDate") == "Thu, 21 Apr 2022 09:00:00 +0800"
    assert atom_of(files).findtext(f"{ATOM}updated") == "2022-04-21T09:00:00+08:00"
    # the edited post: its own updated time, converted to the site's zone
    entry = next(e for e in atom_of(files).iter(f"{ATOM}entry") if e.findtext(f"{ATOM}id") == edited.id)
    assert entry.findtext(f"{ATOM}updated") == "2022-04-21T09:00:00+08:00"
    assert entry.findtext(f"{ATOM}published") == "2022-04-20T09:03:00+08:00"


def test_same_input_gives_byte_identical_files() -> None:
    assert render(POSTS) == render(list(POSTS))


def test_rendering_never_calls_setlocale(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> str:
        raise AssertionError("setlocale changes the locale of every thread")

    monkeypatch.setattr(locale, "setlocale", forbidden)
    files = render(POSTS)
    assert rss_of(files).findtext("channel/item/pubDate") == "Wed, 20 Apr 2022 09:05:00 +0800"


def test_dates_carry_the_site_offset_whatever_zone_the_post_has() -> None:
    post = make_post(1, date=datetime(2022, 4, 20, 1, 15, 40, 123456, tzinfo=UTC))
    files = render([post])
    assert rss_of(files).findtext("channel/item/pubDate") == "Wed, 20 Apr 2022 09:15:40 +0800"
    assert atom_of(files).findtext(f"{ATOM}entry/{ATOM}published") == "2022-04-20T09:15:40+08:00"
    assert json_of(files)["items"][0]["date_published"] == "2022-04-20T09:15:40+08:00"  # type: ignore[index]


def test_xml_stylesheet_instruction_points_at_the_stylesheet_relative_to_the_feed() -> None:
    files = render(POSTS)
    rss = files["categories/cailianshe/rss.xml"]
    assert rss.split(b"\n")[1] == b'<?xml-stylesheet type="text/xsl" href="../../feed.xsl"?>'
    assert b"xml-stylesheet" not in render(POSTS, stylesheet=False)["categories/cailianshe/rss.xml"]
    site = render(POSTS, kind="site", name="")
    assert site["atom.xml"].split(b"\n")[1] == b'<?xml-stylesheet type="text/xsl" href="feed.xsl"?>'


# --------------------------------------------------------------------------- hostile text


def test_control_characters_are_removed_and_markup_and_cdata_end_stay_text() -> None:
    title = "控制\x0b字符\x08<script>alert(1)</script> A&B ]]> \x1b"
    post = make_post(1, title=title, summary="摘要\x1f]]>")

    def content(p: Post) -> str:
        return "<p>正文\x0b]]></p>"

    opts = options()
    plan = plan_feeds([post], make_site(), opts)
    spec = plan.specs[1]
    files = render_feed(spec, opts, [entry_data(post, opts, content)])
    clean = "控制字符<script>alert(1)</script> A&B ]]>"
    assert rss_of(files).findtext("channel/item/title") == clean
    assert atom_of(files).findtext(f"{ATOM}entry/{ATOM}title") == clean
    assert atom_of(files).findtext(f"{ATOM}entry/{ATOM}content") == "<p>正文]]></p>"
    assert json_of(files)["items"][0]["title"] == clean  # type: ignore[index]
    # The RSS description is HTML: the plain-text summary is escaped once more.
    assert rss_of(files).findtext("channel/item/description") == "摘要]]&gt;"
    for path, data in files.items():
        assert b"\x0b" not in data and b"\\u000b" not in data
        if path.endswith(".xml"):
            assert b"<script>" not in data


def test_clean_text_keeps_every_character_xml_allows() -> None:
    allowed = "\t\n\r 中文 😀 \ud7ff\ue000\ufffd"
    assert clean_text(allowed) == allowed
    assert clean_text("\x00\x01\x08\x0b\x0c\x1b\x1f\ufffe\uffff") == ""


# --------------------------------------------------------------------------- content and options


def test_summary_only_feeds_carry_no_full_content() -> None:
    files = render(POSTS, full_content=False)
    assert b"content:encoded" not in files["categories/cailianshe/rss.xml"]
    assert atom_of(files).find(f"{ATOM}entry/{ATOM}content") is None
    assert atom_of(files).findtext(f"{ATOM}entry/{ATOM}summary") == "摘要。"
    item = json_of(files)["items"][0]  # type: ignore[index]
    assert "content_html" not in item and item["content_text"] == "摘要。"


def test_full_content_is_in_content_encoded_atom_html_content_and_content_html() -> None:
    files = render(POSTS)
    assert rss_of(files).findtext("channel/item/{http://purl.org/rss/1.0/modules/content/}encoded") == "<p>标题5 正文</p>"
    content = atom_of(files).find(f"{ATOM}entry/{ATOM}content")
    assert content is not None and content.get("type") == "html" and content.text == "<p>标题5 正文</p>"
    assert json_of(files)["items"][0]["content_html"] == "<p>标题5 正文</p>"  # type: ignore[index]


def test_json_feed_1_1_fields() -> None:
    files = render([make_post(1, image="https://img.example/a.jpg")], kind="tag", name="财联社新闻")
    tag = "%E8%B4%A2%E8%81%94%E7%A4%BE%E6%96%B0%E9%97%BB"
    assert json_of(files) == {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "finews 财经新闻 · #财联社新闻",
        "home_page_url": f"{SITE_URL}/",
        "feed_url": f"{SITE_URL}/feeds/tags/{tag}/feed.json",
        "description": "finews 财经新闻: #财联社新闻",
        "authors": [{"name": "finews 财经新闻", "url": f"{SITE_URL}/"}],
        "author": {"name": "finews 财经新闻", "url": f"{SITE_URL}/"},
        "language": "zh-CN",
        "items": [{
            "id": f"{SITE_URL}/cailianshe/2022/04/20/NW0001.html",
            "url": f"{SITE_URL}/cailianshe/2022/04/20/NW0001.html",
            "title": "标题1",
            "content_html": "<p>标题1 正文</p>",
            "summary": "摘要。",
            "image": "https://img.example/a.jpg",
            "date_published": "2022-04-20T09:01:00+08:00",
            "authors": [{"name": "财联社"}],
            "author": {"name": "财联社"},
            "tags": ["财联社新闻"],
            "language": "zh-CN",
        }],
    }


# --------------------------------------------------------------------------- labels and images (issue 17)

MEDIA = "{http://search.yahoo.com/mrss/}"
LABELLED = [make_post(1, categories=("cailianshe", "stcn"), tags=("A股", "财联社新闻"))]


def test_atom_categories_carry_term_label_and_scheme() -> None:
    entry = next(atom_of(render(LABELLED, kind="site", name="")).iter(f"{ATOM}entry"))
    assert [dict(c.attrib) for c in entry.findall(f"{ATOM}category")] == [
        {"term": "cailianshe", "scheme": f"{SITE_URL}/feeds/categories/", "label": "财联社新闻"},
        {"term": "stcn", "scheme": f"{SITE_URL}/feeds/categories/", "label": "stcn"},
        {"term": "A股", "scheme": f"{SITE_URL}/feeds/tags/", "label": "A股"},
    ]


def test_rss_categories_show_the_label_with_the_scheme_as_domain() -> None:
    item = rss_of(render(LABELLED, kind="site", name="")).find("channel/item")
    assert item is not None
    assert [(c.text, c.get("domain")) for c in item.findall("category")] == [
        ("财联社新闻", f"{SITE_URL}/feeds/categories/"), ("stcn", f"{SITE_URL}/feeds/categories/"),
        ("A股", f"{SITE_URL}/feeds/tags/"),
    ]


def test_json_feed_tags_are_the_labels_each_once() -> None:
    assert json_of(render(LABELLED, kind="site", name=""))["items"][0]["tags"] == ["财联社新闻", "stcn", "A股"]  # type: ignore[index]


def test_feedparser_reads_labels_and_schemes() -> None:
    files = render(LABELLED, kind="site", name="")
    atom = feedparser.parse(files["atom.xml"]).entries[0]
    assert [(t.term, t.label, t.scheme) for t in atom.tags] == [
        ("cailianshe", "财联社新闻", f"{SITE_URL}/feeds/categories/"),
        ("stcn", "stcn", f"{SITE_URL}/feeds/categories/"), ("A股", "A股", f"{SITE_URL}/feeds/tags/")]
    rss = feedparser.parse(files["rss.xml"]).entries[0]
    assert [(t.term, t.scheme) for t in rss.tags] == [
        ("财联社新闻", f"{SITE_URL}/feeds/categories/"), ("stcn", f"{SITE_URL}/feeds/categories/"),
        ("A股", f"{SITE_URL}/feeds/tags/")]


def test_a_category_title_set_in_config_changes_every_feed_that_shows_the_category() -> None:
    before = options()
    site = make_site(category_titles={"cailianshe": "财联社"})
    after = FeedOptions.from_config(site, FeedsConfig(author_fallback="source"))
    assert before.fingerprint() != after.fingerprint()
    entry = entry_data(LABELLED[0], after, body_of)
    assert [t.label for t in entry.terms] == ["财联社", "stcn", "A股", "财联社新闻"]


def test_the_first_image_is_media_content_with_its_size_when_known() -> None:
    sized = make_post(2, image="https://img.example/b.webp", image_size=(1200, 675))
    files = render([make_post(1, image="https://img.example/a.png"), sized])
    rss_items = rss_of(files).findall("channel/item")
    atom_entries = list(atom_of(files).iter(f"{ATOM}entry"))
    for element in (rss_items[0], atom_entries[0]):
        assert [dict(m.attrib) for m in element.findall(f"{MEDIA}content")] == [
            {"url": "https://img.example/b.webp", "type": "image/webp", "medium": "image", "width": "1200", "height": "675"}]
        assert [dict(m.attrib) for m in element.findall(f"{MEDIA}thumbnail")] == [
            {"url": "https://img.example/b.webp", "width": "1200", "height": "675"}]
        assert element.find(f"{MEDIA}group") is None
    for element in (rss_items[1], atom_entries[1]):
        assert [dict(m.attrib) for m in element.findall(f"{MEDIA}content")] == [
            {"url": "https://img.example/a.png", "type": "image/png", "medium": "image"}]
    parsed = feedparser.parse(files["categories/cailianshe/rss.xml"]).entries[0]
    assert parsed.media_content == [{"url": "https://img.example/b.webp", "type": "image/webp", "medium": "image",
                                     "width": "1200", "height": "675"}]
    assert [e.href for e in parsed.enclosures] == ["https://img.example/b.webp"]


def test_json_feed_keeps_authors_and_the_1_0_author() -> None:
    item = json_of(render([make_post(1)]))["items"][0]  # type: ignore[index]
    assert item["authors"] == [item["author"]] == [{"name": "财联社"}]


def test_front_matter_image_size_reaches_the_post(tmp_path: Path) -> None:
    posts = tmp_path / "site" / "_posts"
    posts.mkdir(parents=True)
    front = "---\ntitle: t{n}\ndate: 2022-04-20 09:0{n}:00 +0800\ncategories: cailianshe\n{image}---\n<p>x</p>\n"
    images = ["image: {path: /a.jpg, width: 800, height: '600px'}\n", "image: {path: /b.jpg, width: 0, height: 10}\n",
              "image: /c.jpg\n"]
    for n, image in enumerate(images, 1):
        (posts / f"2022-04-20-p{n}.md").write_text(front.format(n=n, image=image), encoding="utf-8")
    (tmp_path / "site" / "_config.yml").write_text(f"url: {SITE_URL}\n", encoding="utf-8")
    config = build_config({"site": {"source": str(tmp_path / "site"), "cache_dir": str(tmp_path / "c")},
                           "feeds": {"output": str(tmp_path / "out")}})
    run_build(config)
    root = etree.parse(str(tmp_path / "out" / "rss.xml")).getroot()
    media = {m.get("url"): (m.get("width"), m.get("height")) for m in root.iter(f"{MEDIA}content")}
    assert media == {f"{SITE_URL}/a.jpg": ("800", "600"), f"{SITE_URL}/b.jpg": (None, None),
                     f"{SITE_URL}/c.jpg": (None, None)}


def test_feed_titles_use_display_names_and_name_the_tag() -> None:
    plan = plan_feeds(POSTS, make_site(), options())
    assert [(s.key, s.title, s.home_url, s.folder) for s in plan.specs] == [
        ("site:", "finews 财经新闻", f"{SITE_URL}/", ""),
        ("category:cailianshe", "finews 财经新闻 · 财联社新闻", f"{SITE_URL}/category/cailianshe.html", "categories/cailianshe"),
        ("tag:财联社新闻", "finews 财经新闻 · #财联社新闻", f"{SITE_URL}/", "tags/财联社新闻"),
    ]


def test_tag_pages_follow_the_configured_pattern_percent_encoded() -> None:
    site = make_site(tag_url="/tag/{slug}/")
    plan = plan_feeds(POSTS, site, options())
    assert plan.specs[2].home_url == f"{SITE_URL}/tag/%E8%B4%A2%E8%81%94%E7%A4%BE%E6%96%B0%E9%97%BB/"


def test_a_page_pattern_with_unknown_fields_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"only \{slug\} may appear"):
        plan_feeds(POSTS, make_site(category_url="/c/{name}.html"), options())


def test_per_kind_limits_and_counts() -> None:
    posts = [make_post(n, tags=("财联社新闻",) if n % 2 else ()) for n in range(1, 31)]
    plan = plan_feeds(posts, make_site(), options(limit=10, category_limit=5, tag_limit=3))
    assert [len(plan.entries[s.key]) for s in plan.specs] == [10, 5, 3]
    assert plan.counts == {"site:": 30, "category:cailianshe": 30, "tag:财联社新闻": 15}
    assert [p.slug for p in plan.entries["tag:财联社新闻"]] == ["NW0029", "NW0027", "NW0025"]


def test_no_tag_feeds_when_tags_are_off() -> None:
    plan = plan_feeds(POSTS, make_site(), options(tags=False))
    assert [s.kind for s in plan.specs] == ["site", "category"]


def test_categories_are_ordered_by_configured_order_then_name() -> None:
    posts = [make_post(1, categories=("zz",)), make_post(2, categories=("aa",)), make_post(3, categories=("cailianshe",))]
    plan = plan_feeds(posts, make_site(), options())
    assert [s.name for s in plan.specs if s.kind == "category"] == ["cailianshe", "aa", "zz"]


def test_edge_case_tags_give_folders_inside_tags() -> None:
    post = make_post(1, categories=("../../etc",), tags=("../../../tmp/pwned", "..", "/abs", "a/b", "CON", "！！！"))
    plan = plan_feeds([post], make_site(), options())
    for spec in plan.specs[1:]:
        kind, slug = spec.folder.split("/")
        assert kind in ("categories", "tags") and slug not in ("", ".", "..")
        for fmt in ("rss", "atom", "json"):
            assert spec.url(options(), fmt).isascii()


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("full_content", [True, False])
def test_every_file_is_valid_and_parses_without_bozo(full_content: bool) -> None:
    posts = [*POSTS, make_post(9, title="", summary="")]
    for kind, name in (("site", ""), ("category", "cailianshe"), ("tag", "财联社新闻")):
        files = render(posts, kind=kind, name=name, full_content=full_content, websub_hub="https://hub.example/")
        for path, data in files.items():
            ids = [make_post(n).id for n in (9, 5, 4, 3, 2, 1)]
            if path.endswith(".json"):
                assert json_feed_problems(data) == []
                assert [item["id"] for item in json.loads(data)["items"]] == ids
                continue
            parsed = feedparser.parse(data)
            assert parsed.bozo == 0, (path, parsed.get("bozo_exception"))
            assert [e.id for e in parsed.entries] == ids
            if path.endswith("atom.xml"):
                assert atom_problems(data) == []
            elif path.endswith("rss.xml"):
                assert rss_problems(data) == []


def test_the_checks_catch_broken_feeds() -> None:
    assert rss_problems(b'<rss version="2.0"><channel><title>t</title></channel></rss>') == [
        "channel <link> missing, repeated or empty",
        "channel <description> missing, repeated or empty",
    ]
    broken_atom = (b'<feed xmlns="http://www.w3.org/2005/Atom"><id>x</id><title>t</title>'
                   b'<updated>2022-04-20</updated><link rel="self" href="https://x/%E8"/></feed>')
    assert atom_problems(broken_atom) != []
    iri = b'<rss version="2.0"><channel><title>t</title><link>https://x/\xe8\xb4\xa2</link><description>d</description></channel></rss>'
    assert rss_problems(iri) == ["<link> holds an IRI, not a URI: https://x/财"]


# --------------------------------------------------------------------------- listings


def _listings(posts: Sequence[Post]) -> tuple[FeedPlan, dict[str, bytes]]:
    opts = options()
    plan = plan_feeds(posts, make_site(), opts)
    newest = {s.key: plan.entries[s.key][0].date for s in plan.specs}
    return plan, render_listings(plan.specs, opts, plan.counts, newest)


def test_opml_lists_every_feed_with_title_and_url() -> None:
    plan, files = _listings(POSTS)
    root = etree.fromstring(files["feeds.opml"])
    assert root.get("version") == "2.0"
    outlines = [(o.get("title"), o.get("xmlUrl")) for o in root.iter("outline") if o.get("xmlUrl")]
    assert outlines == [(s.title, s.url(options(), "rss")) for s in plan.specs]
    assert [o.get("text") for o in root.findall("body/outline") if not o.get("xmlUrl")] == ["分类", "标签"]


def test_head_snippet_announces_site_and_category_feeds_and_the_opml() -> None:
    _, files = _listings(POSTS)
    head = files["_feeds_head.html"].decode()
    assert head.count('rel="alternate"') == 6  # site and category, three formats each
    assert f'href="{SITE_URL}/feeds/categories/cailianshe/atom.xml"' in head
    assert 'type="text/x-opml"' in head
    tags = files["_feeds_head_tags.html"].decode()
    assert tags.count('rel="alternate"') == 3


def test_index_page_escapes_names_and_links_every_feed() -> None:
    post = make_post(1, tags=("<b>粗</b>",))
    _, files = _listings([post])
    page = files["index.html"].decode()
    assert "&lt;b&gt;粗&lt;/b&gt;" in page and "<b>粗</b>" not in page
    assert page.count(".xml\">RSS</a>") == 3


def test_stylesheet_is_valid_xslt_that_renders_both_formats() -> None:
    _, listings = _listings(POSTS)
    transform = etree.XSLT(etree.fromstring(listings["feed.xsl"]))
    files = render(POSTS)
    for name in ("categories/cailianshe/rss.xml", "categories/cailianshe/atom.xml"):
        html = str(transform(etree.fromstring(files[name])))
        assert "标题5" in html and "finews 财经新闻 · 财联社新闻" in html
        assert f"{SITE_URL}/cailianshe/2022/04/20/NW0005.html" in html


def test_feed_spec_paths() -> None:
    spec = FeedSpec("tag", "a/b", "a-b", "t", "d", "h", "tags/a-b", 50)
    assert [spec.path(f) for f in ("rss", "atom", "json")] == ["tags/a-b/rss.xml", "tags/a-b/atom.xml", "tags/a-b/feed.json"]
    assert spec.url(options(), "rss") == f"{SITE_URL}/feeds/tags/a-b/rss.xml"
    assert TZ.key == "Asia/Shanghai"


@settings(max_examples=60, deadline=None)
@given(title=st.text(max_size=40), summary=st.text(max_size=40), body=st.text(max_size=80), tag=st.text(min_size=1, max_size=15))
def test_any_text_gives_well_formed_feeds_that_keep_the_text(title: str, summary: str, body: str, tag: str) -> None:
    post = make_post(1, title=title, summary=summary, tags=(tag,))
    opts = options()
    plan = plan_feeds([post], make_site(), opts)
    for spec in plan.specs:
        files = render_feed(spec, opts, [entry_data(post, opts, lambda p: body)])
        atom = atom_of(files)
        assert atom.findtext(f"{ATOM}entry/{ATOM}title") == (clean_text(title).strip() or post.slug)
        assert atom.findtext(f"{ATOM}entry/{ATOM}content") == clean_text(body)
        assert rss_of(files).findtext("channel/item/guid") == post.id
        assert json_of(files)["items"][0]["content_html"] == clean_text(body)  # type: ignore[index]
        assert spec.folder.count("/") <= 1 and ".." not in spec.folder.split("/")


def test_image_types_come_from_the_extension_whatever_the_query_or_case() -> None:
    from finews_feeds.feeds.render import _image_type

    assert _image_type("https://x.cn/a/b.PNG?w=1#top") == "image/png"
    assert _image_type("https://x.cn/a.webp") == "image/webp"
    assert _image_type("https://x.cn/photo") == "image/jpeg"
    assert _image_type("https://x.cn/a.b/photo") == "image/jpeg"
    assert _image_type("https://x.cn/a.exe") == "image/jpeg"


# --------------------------------------------------------------------------- hostile image URLs (issue 12, item 11)


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_an_image_url_that_is_not_http_is_in_no_feed_format(url: str) -> None:
    good = "https://img.example/ok.png?a=1&amp;b=2"
    files = render([make_post(1, image=url), make_post(2, image=good)])
    assert [item.get("image") for item in json_of(files)["items"]] == [good, None]  # type: ignore[union-attr]
    atom = [[link.get("href") for link in entry.findall(f"{ATOM}link") if link.get("rel") == "enclosure"]
            for entry in atom_of(files).iter(f"{ATOM}entry")]
    assert atom == [[good], []]
    rss = rss_of(files)
    assert [enclosure.get("url") for enclosure in rss.iter("enclosure")] == [good]
    assert [thumbnail.get("url") for thumbnail in rss.iter("{http://search.yahoo.com/mrss/}thumbnail")] == [good]
    assert [thumbnail.get("url") for thumbnail in atom_of(files).iter("{http://search.yahoo.com/mrss/}thumbnail")] == [good]
    for name, data in files.items():
        assert hostile_in(data.decode("utf-8")) == [], name


def test_hostile_images_of_a_site_reach_no_feed(tmp_path: Path) -> None:
    """Through the collector: the front matter `image:` and the first `<img>` of the body."""
    site = write_hostile_site(tmp_path / "s", SITE_URL)
    # Summaries only: a post's full HTML is the post's own (feed readers sanitize content);
    # what is checked here is what the feeds themselves make a link or an image of.
    config = build_config({"site": {"source": str(site), "cache_dir": str(tmp_path / "c")},
                           "feeds": {"output": str(tmp_path / "out"), "limit": 100, "full_content": False}})
    report = run_build(config)
    assert report.rejected == []
    written = {path.relative_to(tmp_path / "out").as_posix(): path.read_bytes() for path in (tmp_path / "out").rglob("*")
               if path.suffix in (".xml", ".json", ".html", ".opml", ".xsl")}
    for name, data in written.items():
        assert hostile_in(data.decode("utf-8")) == [], name
    # `java&amp;#x09;script:` in HTML is the relative URL `java&#x09;script:`: harmless, on the site.
    relative = {n for n, url in enumerate(HOSTILE_URLS) if "&amp;" in url}
    assert len(relative) == 1
    images = {item["title"]: item.get("image") for item in json.loads(written["feed.json"])["items"]}
    expected = {**{f"fm{n}": None for n in range(len(HOSTILE_URLS))},
                **{f"body{n}": images[f"body{n}"] if n in relative else f"{SITE_URL}/img/second{n}.png"
                   for n in range(len(HOSTILE_URLS))}}
    assert all(images[f"body{n}"].startswith(f"{SITE_URL}/2022/04/19/java&") for n in relative)
    assert images == expected
    atom = etree.fromstring(written["atom.xml"])
    assert {entry.findtext(f"{ATOM}title"): next((link.get("href") for link in entry.findall(f"{ATOM}link")
                                                  if link.get("rel") == "enclosure"), None)
            for entry in atom.iter(f"{ATOM}entry")} == expected
    rss = etree.fromstring(written["rss.xml"])
    assert {item.findtext("title"): (item.find("enclosure").get("url") if item.find("enclosure") is not None else None)
            for item in rss.iter("item")} == expected
