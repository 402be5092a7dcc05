"""The digest: days, selections, grouping and caps, escaping and sanitizing, inlining, the
web copy and the `digest` command, on built posts and on the demo and edge-case sites."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cssutils
import lxml.html
import pytest
from click.testing import CliRunner
from corpus_copy import MAKE_SITE
from hostile_urls import HOSTILE_URLS, hostile_in, write_hostile_site
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_fakes import make_site as fake_site

from finews_feeds.cli import cli
from finews_feeds.config import Config, build_config, read_file
from finews_feeds.errors import ConfigError, DigestError
from finews_feeds.look import STYLESHEET_NAME
from finews_feeds.mail.digest import (
    GREETING,
    PLACEHOLDERS,
    SENT_TO,
    UNSUBSCRIBE_URL,
    DigestRenderer,
    Recipient,
    Selection,
    Variant,
    covered_day,
    digest_day,
    lead_fragment,
    posts_of_day,
    posts_of_week,
    write_preview,
)
from finews_feeds.models import Post, PostSet, Site
from finews_feeds.site.collector import collect_site
from finews_feeds.site.jekyll import resolve_site

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "digest"
SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2022, 4, 20)
UPDATE_GOLDEN = os.environ.get("FINEWS_UPDATE_GOLDEN") == "1"

EVIL_HTML = (
    '<p onclick="steal()">正文<script>alert(2)</script><a href="javascript:alert(3)">链接</a>'
    ' <a href="/rel/page.html">相对</a> <a href="//cdn.example.com/x">协议相对</a></p>'
    '<iframe src="https://evil.example/"></iframe><p>第二段<img src=x onerror="alert(4)"></p>'
)


def config_for(site_dir: Path, tmp: Path, **digest: Any) -> Config:
    """The repository's config (categories with display names and order) over ``site_dir``."""
    values = read_file(ROOT / "config" / "finews.toml")
    values["site"] = {**values["site"], "source": str(site_dir), "cache_dir": str(tmp / "cache")}
    values["feeds"] = {**values["feeds"], "output": str(tmp / "feeds")}
    values["digest"] = {**values["digest"], **digest}
    return build_config(values, {})


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_for(ROOT / "demo-site", tmp_path)


@pytest.fixture
def site(config: Config) -> Site:
    return resolve_site(config)


def make_post(n: int, category: str = "cailianshe", *, hour: int = 9, minute: int = 0, day: date = DAY,
              tags: tuple[str, ...] = (), image: str | None = None, title: str | None = None,
              summary: str = "摘要", categories: tuple[str, ...] | None = None, source: str = "财联社") -> Post:
    moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI)
    cats = categories if categories is not None else (category,)
    path = f"{cats[0] if cats else ''}/_posts/{day}-p{n}.md"
    url = f"https://finews.withounder.com/{cats[0] if cats else 'x'}/{day:%Y/%m/%d}/p{n}.html"
    return Post(path=path, slug=f"p{n}", title=title or f"标题{n}", date=moment, updated=None, categories=cats,
                tags=tags, permalink=url.split(".com", 1)[1], url=url, id=url, summary=summary, image=image,
                author=None, source=source)


def no_content(post: Post) -> str:
    return ""


EVERYTHING = Selection()


def render(config: Config, site: Site, posts: list[Post], selection: Selection = EVERYTHING,
           content: Any = no_content) -> Variant:
    variant = DigestRenderer(config, site, content).render(DAY, posts, selection)
    assert variant is not None
    return variant


def reader() -> Recipient:
    return Recipient("reader@example.org", "读者", "https://news.example.com/unsubscribe/TOKEN?x=1&y=2",
                     "https://news.example.com/manage/MANAGE?x=1&y=2")


def doc(html: str) -> Any:
    return lxml.html.document_fromstring(html)


# ---------------------------------------------------------------------------------------------
# days


def test_previous_day_follows_the_zone_not_utc() -> None:
    # 16:30 UTC on the 20th is 00:30 on the 21st in Shanghai: the previous day is the 20th.
    assert covered_day(datetime(2022, 4, 20, 16, 30, tzinfo=UTC), SHANGHAI, "previous_day") == date(2022, 4, 20)
    assert covered_day(datetime(2022, 4, 20, 15, 30, tzinfo=UTC), SHANGHAI, "previous_day") == date(2022, 4, 19)
    assert covered_day(datetime(2022, 4, 20, 16, 30, tzinfo=UTC), SHANGHAI, "same_day") == date(2022, 4, 21)


def test_covered_day_refuses_naive_times_and_unknown_modes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        covered_day(datetime(2022, 4, 20, 7, 30), SHANGHAI, "previous_day")
    with pytest.raises(ConfigError, match=r"digest\.covers = 'tomorrow'"):
        covered_day(datetime(2022, 4, 20, 7, 30, tzinfo=UTC), SHANGHAI, "tomorrow")


def test_digest_day_uses_the_digest_zone_over_the_site_zone(tmp_path: Path) -> None:
    now = datetime(2022, 4, 20, 20, 0, tzinfo=UTC)  # 04:00 on the 21st in Shanghai, 16:00 on the 20th in New York
    assert digest_day(config_for(ROOT / "demo-site", tmp_path), now) == date(2022, 4, 20)
    assert digest_day(config_for(ROOT / "demo-site", tmp_path, timezone="America/New_York"), now) == date(2022, 4, 19)


def test_posts_of_day_uses_the_site_zone_whatever_the_machine_zone() -> None:
    late = make_post(1, hour=23, minute=59)
    early = make_post(2, hour=0, minute=0)
    next_day = make_post(3, hour=0, minute=0, day=date(2022, 4, 21))
    before = make_post(4, hour=23, minute=59, day=date(2022, 4, 19))
    # The same instant as `late`, written in UTC: still the 20th in Shanghai.
    as_utc = replace(make_post(5), date=datetime(2022, 4, 20, 15, 59, tzinfo=UTC))
    # 16:30 UTC on the 19th is 00:30 on the 20th in Shanghai.
    utc_previous = replace(make_post(6), date=datetime(2022, 4, 19, 16, 30, tzinfo=UTC))
    posts = [early, next_day, late, before, as_utc, utc_previous]
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    try:
        chosen = posts_of_day(PostSet(fake_site(), posts), DAY, SHANGHAI)
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    # Newest first; p1 and p5 are the same instant, ordered by path.
    assert [p.slug for p in chosen] == ["p5", "p1", "p6", "p2"]
    assert [p.slug for p in posts_of_day(PostSet(fake_site(), posts), DAY, ZoneInfo("UTC"))] == ["p3", "p5", "p1"]


# ---------------------------------------------------------------------------------------------
# selections


def test_empty_selection_matches_everything() -> None:
    assert Selection().matches(make_post(1, "jrj"))
    assert Selection().matches(make_post(2, categories=()))


def test_selection_matches_a_chosen_category_or_tag() -> None:
    selection = Selection(categories=frozenset({"jrj"}), tags=frozenset({"人工智能"}))
    assert selection.matches(make_post(1, "jrj"))
    assert selection.matches(make_post(2, "sina", tags=("人工智能",)))
    assert not selection.matches(make_post(3, "sina", tags=("IPO",)))
    assert not Selection(tags=frozenset({"jrj"})).matches(make_post(4, "jrj"))


def test_selection_key_is_stable_and_distinguishes_categories_from_tags() -> None:
    a = Selection(categories=frozenset({"b", "a"}), tags=frozenset({"y", "x"}))
    b = Selection(categories=frozenset(["a", "b"]), tags=frozenset(["x", "y"]))
    assert a.key() == b.key() == '[["a","b"],["x","y"]]'
    assert Selection(categories=frozenset({"x"})).key() != Selection(tags=frozenset({"x"})).key()
    assert Selection().key() == "[[],[]]"
    assert Selection(tags=frozenset({'a"],["b'})).key() != Selection(tags=frozenset({"a"}), categories=frozenset({"b"})).key()


names = st.frozensets(st.text(max_size=6), max_size=3)


@settings(max_examples=200, deadline=None)
@given(names, names, names, names)
def test_selection_keys_are_equal_exactly_when_selections_are(c1: frozenset[str], t1: frozenset[str],
                                                               c2: frozenset[str], t2: frozenset[str]) -> None:
    a, b = Selection(c1, t1), Selection(c2, t2)
    assert (a.key() == b.key()) == (a == b)


# ---------------------------------------------------------------------------------------------
# content of the digest


def test_groups_follow_configured_order_with_display_names_newest_first(config: Config, site: Site) -> None:
    posts = [
        make_post(1, "sina", hour=8), make_post(2, "cailianshe", hour=7), make_post(3, "cailianshe", hour=11),
        make_post(4, "eastmoney", hour=10), make_post(5, "unknowncat", hour=12), make_post(6, categories=(), hour=6),
    ]
    variant = render(config, site, posts)
    page = doc(variant.personalize(reader())[0])
    headings = [" ".join(td.text_content().split()) for td in page.find_class("cat")]
    assert headings == ["财联社新闻 2 篇", "东方财富 1 篇", "新浪财经 1 篇", "unknowncat 1 篇", "其他 1 篇"]
    titles = [a.text_content() for a in page.find_class("t")]
    assert titles == ["标题3", "标题2", "标题4", "标题1", "标题5", "标题6"]
    times = [m.text_content() for m in page.find_class("m")]
    assert times[:2] == ["11:00 · 财联社", "07:00 · 财联社"]
    assert variant.count == 6


def test_each_item_links_its_title_and_shows_time_source_and_summary(config: Config, site: Site) -> None:
    post = make_post(1, hour=9, minute=5, summary="据<b>报道</b>，A&B 股价上涨。", source="第一财经", title="标题 <i>x</i>")
    html, text = render(config, site, [make_post(0, hour=1), post]).personalize(reader())
    page = doc(html)
    item = next(td for td in page.find_class("it") if "标题 <i>x</i>" in td.text_content())
    link = item.find_class("t")[0]
    assert link.get("href") == post.url
    assert link.text_content() == "标题 <i>x</i>"
    assert item.find_class("m")[0].text_content() == "09:05 · 第一财经"
    assert "据<b>报道</b>，A&B 股价上涨。" in item.text_content()
    assert "标题 &lt;i&gt;x&lt;/i&gt;" in html and "据&lt;b&gt;报道&lt;/b&gt;，A&amp;B" in html
    assert "09:05  标题 <i>x</i>\n来源：第一财经\n据<b>报道</b>，A&B 股价上涨。\n" + post.url in text


def test_thumbnail_only_for_posts_with_an_image(config: Config, site: Site) -> None:
    posts = [make_post(1, hour=9, image="https://img.example.com/a.jpg"), make_post(2, hour=8),
             make_post(3, hour=7, image="javascript:alert(1)"), make_post(4, hour=6, image="//img.example.com/b.jpg")]
    page = doc(render(config, site, posts).html)
    images = page.xpath("//img")
    assert [img.get("src") for img in images] == ["https://img.example.com/a.jpg", "https://img.example.com/b.jpg"]
    for img in images:
        assert img.get("alt") == "" and img.get("width") == "88" and img.get("align") == "right"


def test_cap_per_category_links_the_rest_to_the_category_page(tmp_path: Path, site: Site) -> None:
    config = config_for(ROOT / "demo-site", tmp_path, max_per_category=3)
    posts = [make_post(i, "cailianshe", hour=i) for i in range(1, 8)] + [make_post(20, "jrj", hour=5)]
    variant = render(config, site, posts)
    html, text = variant.personalize(reader())
    page = doc(html)
    assert len(page.find_class("t")) == 4
    more = page.find_class("more")
    assert len(more) == 1
    assert more[0].text_content().strip() == "还有 4 篇财联社新闻文章 →"
    assert more[0].xpath(".//a/@href") == ["https://finews.withounder.com/category/cailianshe.html"]
    assert "还有 4 篇财联社新闻文章：https://finews.withounder.com/category/cailianshe.html" in text
    assert variant.count == 8
    assert "共 8 篇" in html


def test_header_has_date_count_and_preheader(config: Config, site: Site) -> None:
    variant = render(config, site, [make_post(1, title="头条"), make_post(2, hour=8, title="次条")])
    page = doc(variant.html)
    assert page.find_class("date")[0].text_content() == "2022年4月20日 星期三 · 共 2 篇"
    preheader = page.xpath("//body/div")[0]
    assert "display:none" in preheader.get("style")
    assert preheader.text_content().startswith("2022年4月20日共 2 篇：头条；次条")
    assert variant.subject == "finews 财经新闻 每日精选 · 2022年4月20日 · 2篇"


def test_footer_has_unsubscribe_browser_archive_feeds_and_postal_address(tmp_path: Path, site: Site) -> None:
    config = config_for(ROOT / "demo-site", tmp_path, postal_address="上海市浦东新区 某路 1 号")
    html, text = render(config, site, [make_post(1)]).personalize(reader())
    footer = doc(html).find_class("ft")[0]
    links = {a.text_content(): a.get("href") for a in footer.iter("a")}
    assert links == {
        "在浏览器中查看": "https://finews.withounder.com/feeds/digests/2022-04-20.html",
        "往期精选": "https://finews.withounder.com/feeds/digests/",
        "RSS": "https://finews.withounder.com/feeds/rss.xml",
        "Atom": "https://finews.withounder.com/feeds/atom.xml",
        "JSON Feed": "https://finews.withounder.com/feeds/feed.json",
        "退订": "https://news.example.com/unsubscribe/TOKEN?x=1&y=2",
        "管理订阅": "https://news.example.com/manage/MANAGE?x=1&y=2",
    }
    assert "上海市浦东新区 某路 1 号" in footer.text_content()
    assert "本邮件发送至 reader@example.org。" in footer.text_content()
    assert "退订：https://news.example.com/unsubscribe/TOKEN?x=1&y=2" in text
    assert "往期精选：https://finews.withounder.com/feeds/digests/\n" in text
    assert "管理订阅（栏目、每日或每周、暂停）：https://news.example.com/manage/MANAGE?x=1&y=2" in text
    assert "上海市浦东新区 某路 1 号" in text


def test_subscriber_selection_holds_only_what_they_chose(config: Config, site: Site) -> None:
    posts = [make_post(1, "cailianshe"), make_post(2, "jrj", hour=8), make_post(3, "sina", hour=7, tags=("IPO",))]
    variant = render(config, site, posts, Selection(categories=frozenset({"jrj"}), tags=frozenset({"IPO"})))
    page = doc(variant.html)
    assert [a.text_content() for a in page.find_class("t")] == ["标题2", "标题3"]
    assert variant.count == 2
    assert "（您订阅的：金融界、#IPO）" in page.find_class("hi")[0].text_content()


def test_post_in_two_categories_is_listed_once_under_the_chosen_one(config: Config, site: Site) -> None:
    post = make_post(1, categories=("cailianshe", "jrj"))
    everything = doc(render(config, site, [post]).html)
    assert [" ".join(c.text_content().split()) for c in everything.find_class("cat")] == ["财联社新闻 1 篇"]
    chosen = doc(render(config, site, [post], Selection(categories=frozenset({"jrj"}))).html)
    assert [" ".join(c.text_content().split()) for c in chosen.find_class("cat")] == ["金融界 1 篇"]


def test_nothing_for_a_selection_without_posts_or_an_empty_day(config: Config, site: Site) -> None:
    renderer = DigestRenderer(config, site, no_content)
    assert renderer.render(DAY, [make_post(1, "cailianshe")], Selection(categories=frozenset({"jrj"}))) is None
    assert renderer.render(DAY, [], Selection()) is None


def test_send_empty_renders_a_day_without_articles(tmp_path: Path, site: Site) -> None:
    config = config_for(ROOT / "demo-site", tmp_path, send_empty=True)
    variant = DigestRenderer(config, site, no_content).render(DAY, [], Selection())
    assert variant is not None and variant.count == 0
    html, _text = variant.personalize(reader())
    assert "2022年4月20日没有新文章。" in doc(html).find_class("hi")[0].text_content()
    assert variant.subject.endswith("· 0篇")


# ---------------------------------------------------------------------------------------------
# personalisation and escaping


def test_personalize_fills_and_escapes_every_placeholder(config: Config, site: Site) -> None:
    variant = render(config, site, [make_post(1)])
    for placeholder in PLACEHOLDERS:
        assert placeholder in variant.html and placeholder in variant.text
    evil = Recipient('a"b@example.org', '<script>x</script>&"名', "https://u.example/unsub?t=1&u=<2>")
    html, text = variant.personalize(evil)
    assert not any(p in html or p in text for p in (GREETING, SENT_TO, UNSUBSCRIBE_URL))
    assert "&lt;script&gt;x&lt;/script&gt;&amp;\"名，您好！" in html
    assert 'href="https://u.example/unsub?t=1&amp;u=&lt;2&gt;"' in html
    assert "<script" not in html
    page = doc(html)
    assert page.find_class("hi")[0].text_content().startswith('<script>x</script>&"名，您好！')
    assert '<script>x</script>&"名，您好！' in text
    assert "退订：https://u.example/unsub?t=1&u=<2>" in text


def test_personalize_without_name_or_address(config: Config, site: Site) -> None:
    html, text = render(config, site, [make_post(1)]).personalize(Recipient("", "", "https://u.example/unsub"))
    assert doc(html).find_class("hi")[0].text_content().split() == ["您好！", "以下是2022年4月20日的1篇文章。"]
    assert "本邮件发送至" not in html and "本邮件发送至" not in text


def test_recipient_without_unsubscribe_url_gets_the_unsubscribe_page(config: Config, site: Site) -> None:
    html, text = render(config, site, [make_post(1)]).personalize(Recipient("a@b.c"))
    assert doc(html).xpath("//a[text()='退订']/@href") == ["http://127.0.0.1:8080/unsubscribe"]
    assert "退订：http://127.0.0.1:8080/unsubscribe" in text


def test_personalize_refuses_a_script_url(config: Config, site: Site) -> None:
    with pytest.raises(ValueError, match="not an http"):
        render(config, site, [make_post(1)]).personalize(Recipient("a@b.c", "", "javascript:alert(1)"))


def test_name_with_line_breaks_stays_on_one_line(config: Config, site: Site) -> None:
    _, text = render(config, site, [make_post(1)]).personalize(Recipient("a@b.c", "张\r\n三\x00", "https://u.example/"))
    assert "张 三，您好！" in text


# ---------------------------------------------------------------------------------------------
# sanitizing, inlining, links


def test_post_html_is_sanitized_before_it_reaches_the_email(config: Config, site: Site) -> None:
    html, text = render(config, site, [make_post(1)], content=lambda post: EVIL_HTML).personalize(reader())
    lowered = html.lower()
    for bad in ("<script", "alert(", "onclick", "onerror", "javascript:", "<iframe", "evil.example"):
        assert bad not in lowered
        assert bad not in text.lower()
    lead = doc(html).find_class("ld")[0]
    assert [a.get("href") for a in lead.iter("a")] == [
        None, "https://finews.withounder.com/rel/page.html", "https://cdn.example.com/x"]
    assert lead.text_content().split() == ["正文链接", "相对", "协议相对", "第二段"]
    assert "正文链接 相对 协议相对\n第二段" in text


def test_lead_keeps_whole_paragraphs_up_to_its_length() -> None:
    html, text = lead_fragment("<p>" + "甲" * 200 + "</p><p>乙</p>", "https://x.example/a.html")
    assert html == "<p>" + "甲" * 200 + "</p>"
    assert text == "甲" * 200
    assert lead_fragment("", "https://x.example/") == ("", "")
    assert lead_fragment("<div>no paragraph</div>", "https://x.example/") == ("", "")


def test_a_post_whose_body_cannot_be_read_loses_only_its_lead(config: Config, site: Site,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="finews_feeds.mail.digest")  # whatever level an earlier test left

    def broken(post: Post) -> str:
        raise OSError("gone")

    html, _ = render(config, site, [make_post(1, summary="摘要在此")], content=broken).personalize(reader())
    assert "摘要在此" in html
    assert "cannot read the body" in caplog.text


def test_only_media_queries_are_left_in_style_blocks(config: Config, site: Site) -> None:
    html = render(config, site, [make_post(1, image="https://img.example.com/a.jpg")],
                  content=lambda p: "<p>x</p>").html
    page = doc(html)
    styles = page.xpath("//style")
    assert len(styles) == 1
    sheet = cssutils.parseString(styles[0].text)
    rules = [r for r in sheet.cssRules if r.type != r.COMMENT]
    assert rules and all(r.type == r.MEDIA_RULE for r in rules)
    assert "!important" in styles[0].text  # kept rules must win over the inlined styles
    assert "max-width: 480px" in styles[0].text
    assert page.find_class("box")[0].get("style").startswith("width:100%; max-width:600px;")
    assert "PingFang SC" in page.find_class("box")[0].get("style")
    assert not page.xpath("//link[@rel='stylesheet']")


def test_cssutils_warnings_stay_out_of_the_log(config: Config, site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    render(config, site, [make_post(1)])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_every_link_is_absolute(config: Config, site: Site) -> None:
    posts = [make_post(i, cat, hour=i, image="https://img.example.com/a.jpg" if i % 2 else None)
             for i, cat in enumerate(["cailianshe", "jrj", "sina", "yicai"] * 4)]
    html, _ = render(config, site, posts, content=lambda p: EVIL_HTML).personalize(reader())
    assert_links_absolute(html)


def assert_links_absolute(html: str) -> None:
    page = doc(html)
    urls = page.xpath("//@href | //@src")
    assert urls
    for url in urls:
        assert re.match(r"https?://[^/\s]+", url) or url.startswith("mailto:"), url


def test_subject_with_crlf_in_a_post_title_stays_one_line(tmp_path: Path, site: Site) -> None:
    config = config_for(ROOT / "demo-site", tmp_path, subject="{site_title} · {top_title} · {count}篇")
    variant = render(config, site, [make_post(1, title="上涨\r\nBcc: victim@example.com")])
    assert variant.subject == "finews 财经新闻 · 上涨 Bcc: victim@example.com · 1篇"
    assert "\n" not in variant.subject and "\r" not in variant.subject


def test_missing_or_broken_operator_templates_are_digest_errors(tmp_path: Path, site: Site) -> None:
    custom = tmp_path / "tpl"
    custom.mkdir()
    (custom / "digest.txt.j2").write_text("{% for %}", encoding="utf-8")
    with pytest.raises(DigestError, match=r"digest.txt.j2, line 1"):
        DigestRenderer(config_for(ROOT / "demo-site", tmp_path, templates=str(custom)), site, no_content)
    (custom / "digest.txt.j2").write_text("只有 {{ d.count }} 篇\n", encoding="utf-8")
    variant = render(config_for(ROOT / "demo-site", tmp_path, templates=str(custom)), site, [make_post(1)])
    assert variant.text == "只有 1 篇\n"
    assert "标题1" in variant.html  # the bundled HTML template still serves
    with pytest.raises(ConfigError, match="folder not found"):
        DigestRenderer(config_for(ROOT / "demo-site", tmp_path, templates=str(tmp_path / "nope")), site, no_content)


# ---------------------------------------------------------------------------------------------
# the demo site: golden files, web copy, command


def structure(html: str) -> str:
    """An outline of the HTML: tags, classes, link targets and text, without styles."""
    lines: list[str] = []

    def walk(element: Any, depth: int) -> None:
        if not isinstance(element.tag, str):
            return
        label = element.tag
        if element.get("class"):
            label += "." + element.get("class").replace(" ", ".")
        for attr in ("href", "src", "width", "align"):
            if element.get(attr) is not None:
                label += f" {attr}={element.get(attr)}"
        text = " ".join((element.text or "").split())
        if element.tag in ("style", "title") or element.get("style", "").startswith("display:none"):
            text = text[:40]
        lines.append("  " * depth + label + (f" | {text}" if text else ""))
        for child in element:
            walk(child, depth + 1)
            tail = " ".join((child.tail or "").split())
            if tail:
                lines.append("  " * (depth + 1) + f"~ {tail}")

    walk(doc(html).body, 0)
    return "\n".join(lines) + "\n"


def check_golden(name: str, actual: str) -> None:
    path = DATA / name
    if UPDATE_GOLDEN or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Path]]:
    tmp = tmp_path_factory.mktemp("demo")
    yield config_for(ROOT / "demo-site", tmp, postal_address="上海市浦东新区世纪大道 100 号"), tmp


def test_demo_day_matches_the_golden_text_and_html_structure(demo: tuple[Config, Path]) -> None:
    config, tmp = demo
    out = tmp / "golden"
    report = write_preview(config, DAY, now=datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI),
                           html_path=out / "d.html", text_path=out / "d.txt", eml_path=out / "d.eml", out_dir=out)
    assert report.count == 31
    html = (out / "d.html").read_text(encoding="utf-8")
    check_golden("demo-2022-04-20.txt", (out / "d.txt").read_text(encoding="utf-8"))
    check_golden("demo-2022-04-20.structure", structure(html))
    assert_links_absolute(html)
    # The real sample post is there, with its thumbnail, time and source.
    page = doc(html)
    sample = next(td for td in page.find_class("it") if "中央深改委会议要求加强数字政府建设" in td.text_content())
    assert sample.find_class("m")[0].text_content() == "09:15 · 财联社"
    assert sample.xpath(".//img/@src") == ["https://dfscdn.dfcfw.com/download/D25551193528588228507_w2381h1864.jpg"]


def test_preview_message_and_web_copy(demo: tuple[Config, Path]) -> None:
    config, tmp = demo
    out = tmp / "preview"
    write_preview(config, DAY, now=datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI), eml_path=out / "d.eml", out_dir=out)
    msg = email.message_from_bytes((out / "d.eml").read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "finews 财经新闻 每日精选 · 2022年4月20日 · 31篇"
    assert msg["From"] == "finews <digest@localhost>"
    assert msg["To"] == "示例读者 <reader@example.com>"
    assert msg["Date"] == "Thu, 21 Apr 2022 07:30:00 +0800"
    assert re.fullmatch(r"<digest\.20220420\.[0-9a-f]{32}@localhost>", msg["Message-ID"])
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "示例读者，您好！" in html and "示例读者，您好！" in text
    assert 'href="http://127.0.0.1:8080/unsubscribe"' in html
    web = (out / "digests" / "2022-04-20.html").read_text(encoding="utf-8")
    assert doc(web).find_class("hi")[0].text_content().split() == ["您好！", "以下是2022年4月20日的31篇文章。"]
    assert "示例读者" not in web and "reader@example.com" not in web
    assert not any(p in web for p in PLACEHOLDERS)
    assert_links_absolute(web)


def test_a_web_copy_written_again_unchanged_keeps_its_file_and_time_stamp(demo: tuple[Config, Path]) -> None:
    """A served page whose bytes did not change keeps its mtime, so readers' cached copies stay valid."""
    config, tmp = demo
    out = tmp / "again"
    write_preview(config, DAY, now=datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI), out_dir=out)
    web = out / "digests" / "2022-04-20.html"
    os.utime(web, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = web.stat()
    write_preview(config, DAY, now=datetime(2022, 4, 21, 7, 31, tzinfo=SHANGHAI), out_dir=out)
    after = web.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert stat.S_IMODE(after.st_mode) == 0o644
    # No temporary file left; the archive beside it (mail/archive.py) was written once.
    assert sorted(os.listdir(web.parent)) == [".archive.lock", "2022-04-20.html", "2022-04-20.json", "atom.xml",
                                             "index.html", STYLESHEET_NAME]


def test_digest_command_writes_preview_and_web_copy(tmp_path: Path) -> None:
    config_file = tmp_path / "finews.toml"
    config_file.write_text(
        (ROOT / "config" / "finews.toml").read_text(encoding="utf-8")
        .replace('source = "demo-site"', f'source = "{ROOT / "demo-site"}"')
        .replace('cache_dir = ".finews-cache"', f'cache_dir = "{tmp_path / "cache"}"')
        .replace('output = "_feeds"', f'output = "{tmp_path / "feeds"}"'),
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["--config", str(config_file), "digest", "--date", "2022-04-20",
                                      "--html", str(tmp_path / "p.html"), "--text", str(tmp_path / "p.txt"),
                                      "--eml", str(tmp_path / "p.eml")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("2022-04-20: 31 articles, ")
    assert lines[1] == "subject: finews 财经新闻 每日精选 · 2022年4月20日 · 31篇"
    archive = tmp_path / "feeds" / "digests"
    assert lines[2:] == [f"wrote {archive / name}" for name in (
        "2022-04-20.html", "2022-04-20.json", "index.html", "atom.xml", STYLESHEET_NAME)] + [
        f"wrote {tmp_path / 'p.html'}", f"wrote {tmp_path / 'p.txt'}", f"wrote {tmp_path / 'p.eml'}"]
    assert (tmp_path / "p.txt").read_text(encoding="utf-8").startswith("finews 财经新闻 · 每日精选\n")

    empty = CliRunner().invoke(cli, ["--config", str(config_file), "digest", "--date", "2022-05-01"])
    assert empty.exit_code == 0
    assert empty.output == "2022-05-01: no articles, no digest (set digest.send_empty = true to send one anyway)\n"

    bad = CliRunner().invoke(cli, ["--config", str(config_file), "digest", "--date", "20.4.2022"])
    assert bad.exit_code == 2
    assert "Invalid value for '--date'" in bad.output

    missing = CliRunner().invoke(cli, ["--config", str(config_file), "digest", "--site", str(tmp_path / "none")])
    assert missing.exit_code == 3
    assert "does not exist" in missing.output


# ---------------------------------------------------------------------------------------------
# generated sites: the edge cases, and a day of 500 articles


def generated_site(tmp: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(MAKE_SITE), str(tmp / "site"), *args], check=True, capture_output=True)
    return tmp / "site"


def test_edge_case_site_digest_is_safe(tmp_path: Path) -> None:
    config = config_for(generated_site(tmp_path, "--posts", "60", "--edge-cases"), tmp_path, max_per_category=100)
    out = tmp_path / "out"
    report = write_preview(config, DAY, now=datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI),
                           html_path=out / "d.html", text_path=out / "d.txt", eml_path=out / "d.eml", out_dir=out)
    assert report.count > 0
    html = (out / "d.html").read_text(encoding="utf-8")
    text = (out / "d.txt").read_text(encoding="utf-8")
    # The title as jekyll-feed publishes it: its markup dropped, the rest escaped (issue 18).
    assert "A&amp;B “引号” ‘single’ ]]&gt;" in html and "alert(1)" not in html
    assert "edge-unpublished" not in html and "2999" not in html
    assert_links_absolute(html)
    # The edge post's own body (script, handler, javascript: link, iframe) as the lead.
    from finews_feeds.site.collector import collect_site

    collection = collect_site(config)
    edge = [p for p in collection.posts if p.path.endswith("edge-html-title.md")]
    assert len(edge) == 1
    variant = DigestRenderer(config, collection.site, collection.content).render(DAY, edge, Selection())
    assert variant is not None
    lead_html, lead_text = variant.personalize(reader())
    assert doc(lead_html).find_class("ld")[0].text_content().strip() == "正文链接"
    for body in (html, lead_html):
        lowered = body.lower()
        for bad in ("<script", "alert(2)", "alert(3)", "onclick", "javascript:", "<iframe", "evil.example"):
            assert bad not in lowered
    for bad in ("alert(2)", "alert(3)", "steal()", "evil.example"):
        assert bad not in text and bad not in lead_text
    msg = email.message_from_bytes((out / "d.eml").read_bytes(), policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"


def test_a_day_of_500_articles_stays_under_gmail_clipping(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site_dir = generated_site(tmp_path, "--posts", "500", "--days", "1", "--end", "2022-04-20")
    config = config_for(site_dir, tmp_path)
    out = tmp_path / "out"
    report = write_preview(config, DAY, now=datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI), html_path=out / "d.html",
                           out_dir=out)
    assert report.count == 500
    html = (out / "d.html").read_text(encoding="utf-8")
    size = len(html.encode("utf-8"))
    print(f"500-article day: {size} bytes of HTML")
    assert size < 102 * 1000
    page = doc(html)
    groups = page.find_class("cat")
    assert len(page.find_class("t")) == 10 * len(groups)
    more = sum(int(m.text_content().split()[1]) for m in page.find_class("more"))
    assert more + 10 * len(groups) == 500
    assert "Gmail clips" not in caplog.text

    # An operator who lifts the cap still gets a digest Gmail shows whole: fewer per category.
    caplog.set_level(logging.WARNING, logger="finews_feeds.mail.digest")
    uncapped = config_for(site_dir, tmp_path, max_per_category=0)
    write_preview(uncapped, DAY, now=datetime(2022, 4, 21, 7, 30, tzinfo=SHANGHAI), html_path=out / "all.html",
                  out_dir=out)
    html = (out / "all.html").read_text(encoding="utf-8")
    assert len(html.encode("utf-8")) <= 100_000
    page = doc(html)
    shown = len(page.find_class("t"))
    assert 8 * len(groups) <= shown < 500
    assert shown + sum(int(m.text_content().split()[1]) for m in page.find_class("more")) == 500
    assert "would be" in caplog.text and "Gmail clips at 102 KB" in caplog.text


# ---------------------------------------------------------------------------------------------
# hostile image URLs (issue 12, item 11): the feeds' policy (urls.web_url)


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_a_thumbnail_that_is_not_http_in_every_reading_is_left_out(config: Config, site: Site, url: str) -> None:
    posts = [make_post(1, hour=9, image=url), make_post(2, hour=8, image="https://img.example.com/ok.jpg?a=1&amp;b=2")]
    variant = render(config, site, posts)
    assert [img.get("src") for img in doc(variant.html).xpath("//img")] == ["https://img.example.com/ok.jpg?a=1&amp;b=2"]
    assert hostile_in(variant.html) == [] and hostile_in(variant.text) == []


def test_hostile_images_of_a_site_reach_no_digest(tmp_path: Path) -> None:
    source = write_hostile_site(tmp_path / "s", "https://finews.withounder.com")
    config = config_for(source, tmp_path, max_per_category=100)
    collection = collect_site(config, now=datetime(2022, 5, 1, tzinfo=UTC))
    assert collection.errors == []
    renderer = DigestRenderer(config, collection.site, collection.content)
    for day, kind in ((date(2022, 4, 20), "fm"), (date(2022, 4, 19), "body")):
        posts = posts_of_day(collection, day, SHANGHAI)
        variant = renderer.render(day, posts, EVERYTHING)
        assert variant is not None
        assert hostile_in(variant.html) == [] and hostile_in(variant.text) == [], kind
        sources = [img.get("src") for img in doc(variant.html).xpath("//td[contains(@class, 'it')]//img[@width='88']")]
        if kind == "fm":
            assert sources == []
        else:
            assert len(sources) == len(HOSTILE_URLS)
            assert all(src.startswith("https://finews.withounder.com/") for src in sources)


# -- the weekly digest -----------------------------------------------------------------------------


def weekly(config: Config, site: Site, posts: list[Post], selection: Selection) -> Variant:
    week = PostSet(site, posts, content=no_content)
    variant = DigestRenderer(config, site, no_content, week=lambda last: posts_of_week(week, last, SHANGHAI)).render(
        DAY, posts_of_day(week, DAY, SHANGHAI), selection)
    assert variant is not None
    return variant


def test_a_weekly_digest_holds_the_seven_days_ending_with_the_day_by_day_newest_first_then_by_category(
        config: Config, site: Site) -> None:
    posts = [
        make_post(1, "cailianshe", day=DAY, hour=9), make_post(2, "jrj", day=DAY, hour=8),
        make_post(3, "cailianshe", day=DAY - timedelta(days=2), hour=10),
        make_post(4, "sina", day=DAY - timedelta(days=6), hour=23, minute=59),  # the week's first day
        make_post(5, "sina", day=DAY - timedelta(days=7), hour=23, minute=59),  # the day before it: not in
        make_post(6, "jrj", day=DAY + timedelta(days=1), hour=0),  # after the day: not in
    ]
    variant = weekly(config, site, posts, Selection(weekly=True))
    assert (variant.subject, variant.count) == ("finews 财经新闻 每周精选 · 2022年4月14日至2022年4月20日 · 4篇", 4)
    page = doc(variant.html)
    assert page.find_class("brand")[0].text_content() == "finews 财经新闻 · 每周精选"
    assert page.find_class("date")[0].text_content() == "2022年4月14日至2022年4月20日 · 共 4 篇"
    order = [(e.get("class"), e.text_content().split(" ")[0]) for e in page.xpath("//td[@class='day' or @class='cat']")]
    assert order == [("day", "2022年4月20日"), ("cat", "财联社新闻"), ("cat", "金融界"),
                     ("day", "2022年4月18日"), ("cat", "财联社新闻"),
                     ("day", "2022年4月14日"), ("cat", "新浪财经")]
    assert [a.text_content() for a in page.find_class("t")] == ["标题1", "标题2", "标题3", "标题4"]
    assert "以下是2022年4月14日至2022年4月20日的4篇文章。" in page.find_class("hi")[0].text_content()
    _, text = variant.personalize(reader())
    days = [line for line in text.splitlines() if line.startswith("=== ")]
    assert days == ["=== 2022年4月20日 星期三 · 2 篇 ===", "=== 2022年4月18日 星期一 · 1 篇 ===",
                    "=== 2022年4月14日 星期四 · 1 篇 ==="]
    assert text.index("【财联社新闻】1 篇") < text.index("【金融界】1 篇") < text.index(days[1])
    # The selection still chooses, and a daily variant of the same choice is another variant.
    only = weekly(config, site, posts, Selection(categories=frozenset({"sina"}), weekly=True))
    assert [a.text_content() for a in doc(only.html).find_class("t")] == ["标题4"]
    assert Selection(weekly=True).key() != Selection().key()


def test_a_weekly_selection_without_the_weeks_posts_is_an_error_not_a_daily_digest(config: Config, site: Site) -> None:
    with pytest.raises(DigestError, match="a weekly digest needs the week's posts"):
        DigestRenderer(config, site, no_content).render(DAY, [make_post(1)], Selection(weekly=True))


def test_a_busy_week_stays_under_gmail_clipping_with_fewer_per_category(
        config: Config, site: Site, caplog: pytest.LogCaptureFixture) -> None:
    posts = [make_post(d * 1000 + n, ("cailianshe", "jrj", "sina", "yicai")[n % 4], day=DAY - timedelta(days=d),
                       hour=n % 24, minute=n % 60, summary="这是一段用来占位置的摘要文字。" * 6)
             for d in range(7) for n in range(60)]
    caplog.set_level(logging.WARNING, logger="finews_feeds.mail.digest")
    variant = weekly(config, site, posts, Selection(weekly=True))
    assert variant.count == 420
    assert len(variant.html.encode("utf-8")) <= 100_000
    page = doc(variant.html)
    assert len(page.find_class("day")) == 7 and len(page.find_class("cat")) == 28
    shown = len(page.find_class("t"))
    assert shown < 7 * 4 * 10  # fewer than the 10 per category a day's digest shows
    assert shown + sum(int(m.text_content().split()[1]) for m in page.find_class("more")) == 420
    assert "Gmail clips at 102 KB" in caplog.text
