"""The collector reads a Jekyll site as Jekyll 4 would: posts, categories, tags, dates, URLs, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner
from corpus_copy import MAKE_SITE
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from finews_feeds.cli import cli
from finews_feeds.config import build_config
from finews_feeds.errors import PostError
from finews_feeds.models import Post, Site
from finews_feeds.site import frontmatter
from finews_feeds.site.collector import Collection, collect, collect_site, summarize
from finews_feeds.site.jekyll import resolve_site
from finews_feeds.site.posts import parse_date, parse_post

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "collector"
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2022, 5, 1, tzinfo=UTC)
CONFIG_YML = "title: finews 财经新闻\nurl: https://finews.withounder.com\ntimezone: Asia/Shanghai\n"


def make_site(root: Path, posts: dict[str, str | bytes], config_yml: str = CONFIG_YML) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "_config.yml").write_text(config_yml, encoding="utf-8")
    for name, text in posts.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return root


def site_of(source: Path, **values: Any) -> Site:
    return resolve_site(build_config({"site": {"source": str(source), **values}}))


def collect_dir(source: Path, now: datetime = NOW, **values: Any) -> Collection:
    return collect(site_of(source, **values), None, now)


def one(source: Path, **values: Any) -> Post:
    collection = collect_dir(source, **values)
    assert collection.errors == []
    assert len(collection.posts) == 1
    return collection.posts[0]


def post(front: str, body: str = "<p>正文。</p>\n") -> str:
    return f"---\n{front}---\n{body}"


# ---------------------------------------------------------------- the sample post


def test_sample_post_is_where_jekyll_puts_it() -> None:
    site = site_of(ROOT / "demo-site")
    collection = collect(site, None, NOW)
    sample = next(p for p in collection.posts if p.slug == "NW202204202349219681")
    assert sample.url == "https://finews.withounder.com/cailianshe/2022/04/20/NW202204202349219681.html"
    assert sample.id == sample.url
    assert sample.permalink == "/cailianshe/2022/04/20/NW202204202349219681.html"
    assert sample.title == "中央深改委会议要求加强数字政府建设 万亿规模市场发展已到加速关键时刻？"
    assert sample.date == datetime(2022, 4, 20, 9, 15, 40, tzinfo=SHANGHAI)
    assert sample.date.utcoffset() is not None and sample.date.utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]
    assert sample.categories == ("cailianshe",)
    assert sample.tags == ("财联社新闻",)
    assert sample.source == "财联社"
    assert sample.image == "https://dfscdn.dfcfw.com/download/D25551193528588228507_w2381h1864.jpg"
    assert sample.summary.startswith("昨日下午，中共中央总书记")
    assert sample.summary.endswith("。")
    assert len(sample.summary) <= 180
    html = collection.content(sample)
    assert '<a href="https://finews.withounder.com/category/cailianshe.html">返回财联社新闻</a>' in html
    assert '<a href="https://finews.withounder.com/">返回首页</a>' in html
    assert (
        '<a href="http://finews.zning.xyz/html_News/NewsShare.html?infoCode=NW202204202349219681">'
        in html
    )
    assert 'href="//' not in html and 'src="//' not in html


def test_demo_site_check_json_matches_golden() -> None:
    summary = summarize(collect(site_of(ROOT / "demo-site"), None, NOW))
    golden = DATA / "demo-check.json"
    text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


# ---------------------------------------------------------------- walk


def test_posts_are_found_in_nested_posts_folders_and_folders_become_categories(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-top.md": post("title: top\n"),
            "news/_posts/2022-04-20-one.md": post("title: one\ncategories: cailianshe\n"),
            "a/B/_posts/2022-04-20-two.md": post("title: two\ncategories: [b, x]\n"),
            "_posts/sub/2022-04-20-three.md": post("title: three\n"),
        },
    )
    posts = {p.slug: p for p in collect_dir(source).posts}
    assert posts["top"].categories == ()
    assert posts["one"].categories == ("news", "cailianshe")
    assert posts["two"].categories == ("a", "B", "b", "x")
    assert posts["two"].permalink == "/a/b/x/2022/04/20/two.html"
    assert posts["three"].categories == ()


def test_folder_and_front_matter_categories_as_jekyll_4_3_built_them(tmp_path: Path) -> None:
    # What Debian's Jekyll 4.3.1 wrote for this file: /news/sub/x/y%20z/2022/04/20/big-NEWS.html,
    # page.categories ["News","Sub","X","news","Y z"], page.title "Big News".
    source = make_site(tmp_path / "s", {"News/Sub/_posts/2022-04-20-big-NEWS.md": post("categories: [X, news]\ncategory: Y z\n")})
    got = one(source)
    assert got.categories == ("News", "Sub", "X", "news", "Y z")
    assert got.permalink == "/news/sub/x/y%20z/2022/04/20/big-NEWS.html"
    assert got.title == "Big News"


def test_drafts_site_dot_and_underscore_folders_and_odd_names_are_not_read(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-ok.md": post("title: ok\n"),
            "_drafts/2022-04-20-draft.md": post("title: draft\n"),
            "_site/_posts/2022-04-20-built.md": post("title: built\n"),
            ".git/_posts/2022-04-20-hidden.md": post("title: hidden\n"),
            "_includes/_posts/2022-04-20-inc.md": post("title: inc\n"),
            "_posts/.2022-04-20-dot.md": post("title: dot\n"),
            "_posts/2022-04-20-backup.md~": post("title: backup\n"),
            "_posts/notes.md": post("title: notes\n"),
            "_posts/2022-04-20-image.jpg": b"\xff\xd8",
            "_posts/2022-04-20-text.txt": post("title: text\n"),
            "2022-04-20-outside.md": post("title: outside\n"),
        },
    )
    collection = collect_dir(source)
    assert [p.slug for p in collection.posts] == ["ok"]
    assert collection.errors == []


def test_html_posts_are_not_converted_from_markdown(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-a.html": post("title: a\n", "<p>*不是强调*</p>\n\n[x](/y)\n")})
    collection = collect_dir(source)
    assert collection.content(collection.posts[0]) == "<p>*不是强调*</p>\n\n[x](/y)"
    assert collection.posts[0].permalink == "/2022/04/20/a.html"


def test_other_extensions_keep_their_output_extension(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-a.htm": post("title: a\n"), "_posts/2022-04-20-b.mkdn": post("title: b\n")})
    collection = collect_dir(source, extensions=[".htm", ".mkdn"])
    assert sorted(p.permalink for p in collection.posts) == ["/2022/04/20/a.htm", "/2022/04/20/b.html"]


def test_parse_post_raises_a_post_error_naming_the_file() -> None:
    site = site_of(ROOT / "demo-site")
    with pytest.raises(PostError) as caught:
        parse_post("_posts/2022-04-20-x.md", b"", site)
    assert (caught.value.path, caught.value.reason, caught.value.message) == (
        "_posts/2022-04-20-x.md", "empty file: not a post", "_posts/2022-04-20-x.md: empty file: not a post")


def test_extensions_setting_decides_which_files_are_posts(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-a.txt": post("title: a\n"), "_posts/2022-04-20-b.md": post("title: b\n")})
    collection = collect_dir(source, extensions=[".txt"])
    assert [(p.slug, p.permalink) for p in collection.posts] == [("a", "/2022/04/20/a.txt")]


# ---------------------------------------------------------------- categories and tags


@pytest.mark.parametrize(
    ("front", "categories"),
    [
        ("categories: cailianshe\n", ("cailianshe",)),
        ("categories: a b  c\n", ("a", "b", "c")),
        ("categories: [a b, c]\n", ("a b", "c")),
        ("category: a b\n", ("a b",)),
        ("category: x\ncategories: [a, x, b]\n", ("a", "x", "b")),
        ("categories: [a, a, 2022, null, '']\n", ("a", "2022")),
        ("categories:\n", ()),
        ("categories: [[a, b], c]\n", ("a", "b", "c")),
    ],
)
def test_front_matter_categories_as_jekyll_merges_them(tmp_path: Path, front: str, categories: tuple[str, ...]) -> None:
    source = make_site(tmp_path / "s", {"news/_posts/2022-04-20-p.md": post("title: t\n" + front)})
    assert one(source).categories == ("news", *[c for c in categories if c != "news"])


@pytest.mark.parametrize(
    ("front", "tags"),
    [
        ("tags: 数字经济 数字政府 A股\n", ("数字经济", "数字政府", "A股")),
        ("tags: [财联社新闻, 宁德时代]\n", ("财联社新闻", "宁德时代")),
        ("tags:\n  - a b\n  - 5\n  - null\n", ("a b", "5")),
        ("tag: a b\ntags: [x, y]\n", ("a b",)),
        ("tag:\ntags: [x, y]\n", ("x", "y")),
        ("tags: [a, a, b]\n", ("a", "b")),
        ("tags: true\n", ()),
        ("", ()),
    ],
)
def test_tags_as_jekyll_reads_them(tmp_path: Path, front: str, tags: tuple[str, ...]) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": post("title: t\n" + front)})
    assert one(source).tags == tags


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2022-04-20 09:15:40 +0800", datetime(2022, 4, 20, 9, 15, 40, tzinfo=SHANGHAI)),
        ("2022-04-20 09:15:40 +08:00", datetime(2022, 4, 20, 9, 15, 40, tzinfo=SHANGHAI)),
        ("2022-04-20T16:30:00+08:00", datetime(2022, 4, 20, 16, 30, tzinfo=SHANGHAI)),
        ("2022-04-20T01:30:00Z", datetime(2022, 4, 20, 9, 30, tzinfo=SHANGHAI)),
        ("2022-04-20 01:30:00 -0500", datetime(2022, 4, 20, 14, 30, tzinfo=SHANGHAI)),
        ("2022-04-20 09:15", datetime(2022, 4, 20, 9, 15, tzinfo=SHANGHAI)),
        ("2022-04-20", datetime(2022, 4, 20, tzinfo=SHANGHAI)),
        ("2022-04-20 09:15:40.250 +0800", datetime(2022, 4, 20, 9, 15, 40, 250000, tzinfo=SHANGHAI)),
    ],
)
def test_front_matter_date_formats(tmp_path: Path, value: str, expected: datetime) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-01-p.md": post(f"title: t\ndate: {value}\n")})
    got = one(source).date
    assert got == expected
    assert got.tzinfo == SHANGHAI


def test_time_without_offset_is_in_the_site_zone(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-01-p.md": post("title: t\ndate: 2022-04-20 09:00:00\n")})
    got = one(source, timezone="Asia/Tokyo").date
    assert got.isoformat() == "2022-04-20T09:00:00+09:00"


def test_front_matter_date_wins_over_the_file_name(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-01-01-p.md": post("title: t\ndate: 2022-04-20 09:15:40 +0800\n")})
    got = one(source)
    assert got.date.isoformat() == "2022-04-20T09:15:40+08:00"
    assert got.permalink == "/2022/04/20/p.html"


def test_file_name_date_is_midnight_in_the_site_zone(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-4-5-p.md": post("title: t\n")})
    assert one(source).date.isoformat() == "2022-04-05T00:00:00+08:00"


def test_yaml_dates_keep_their_offsets() -> None:
    assert parse_date(datetime(2022, 4, 20, 1, 0, tzinfo=UTC), SHANGHAI).isoformat() == "2022-04-20T09:00:00+08:00"
    assert parse_date(datetime(2022, 4, 20, 1, 0), SHANGHAI).isoformat() == "2022-04-20T01:00:00+08:00"


@pytest.mark.parametrize("value", ["2022-02-30 10:00:00 +0800", "2022-04-20 25:61:00 +0800", "yesterday", "2022-13-01"])
def test_impossible_or_unreadable_dates_are_rejected(tmp_path: Path, value: str) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": post(f"title: t\ndate: {value}\n")})
    collection = collect_dir(source)
    assert collection.posts == []
    assert [(e.path, e.message.split(":")[0]) for e in collection.errors] == [("_posts/2022-04-20-p.md", "date")]
    assert value.strip() in collection.errors[0].message


def test_impossible_file_name_date_without_front_matter_date_is_rejected(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-02-30-p.md": post("title: t\n")})
    collection = collect_dir(source)
    assert [(e.path, e.message) for e in collection.errors] == [
        ("_posts/2022-02-30-p.md", "file name date 2022-02-30 is an impossible date")
    ]


def test_last_modified_at_is_honoured(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {"_posts/2022-04-20-p.md": post("title: t\nlast_modified_at: 2022-04-21T08:00:00+08:00\n")},
    )
    assert one(source).updated == datetime(2022, 4, 21, 8, tzinfo=SHANGHAI)


# ---------------------------------------------------------------- published and future


def test_unpublished_posts_are_left_out_silently(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": post("title: t\npublished: false\n")})
    collection = collect_dir(source)
    assert (collection.posts, collection.errors) == ([], [])


def test_future_posts_are_left_out_unless_the_site_publishes_them(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-past.md": post("title: past\ndate: 2022-04-20 10:00:00 +0800\n"),
            "_posts/2022-04-20-later.md": post("title: later\ndate: 2022-04-20 12:00:00 +0800\n"),
        },
    )
    now = datetime(2022, 4, 20, 11, tzinfo=SHANGHAI)
    assert [p.slug for p in collect_dir(source, now=now).posts] == ["past"]
    assert [p.slug for p in collect_dir(source, now=now, future=True).posts] == ["later", "past"]
    later = datetime(2022, 4, 20, 12, tzinfo=SHANGHAI)
    assert [p.slug for p in collect_dir(source, now=later).posts] == ["later", "past"]


def test_posts_are_newest_first_with_ties_broken_by_path(tmp_path: Path) -> None:
    same = "date: 2022-04-20 10:00:00 +0800\n"
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-b.md": post("title: b\n" + same),
            "x/_posts/2022-04-20-a.md": post("title: a\n" + same),
            "_posts/2022-04-20-a.md": post("title: a\n" + same),
            "_posts/2022-04-21-new.md": post("title: new\n"),
        },
    )
    assert [p.path for p in collect_dir(source).posts] == [
        "_posts/2022-04-21-new.md",
        "_posts/2022-04-20-a.md",
        "_posts/2022-04-20-b.md",
        "x/_posts/2022-04-20-a.md",
    ]


# ---------------------------------------------------------------- permalinks


@pytest.mark.parametrize(
    ("permalink", "expected"),
    [
        ("date", "/news/2022/04/20/NW-Big.html"),
        ("pretty", "/news/2022/04/20/NW-Big/"),
        ("none", "/news/NW-Big.html"),
        ("ordinal", "/news/2022/110/NW-Big.html"),
        ("weekdate", "/news/2022/W16/Wed/NW-Big.html"),
        ("/:year/:i_month/:i_day/:short_year/:hour-:minute-:second/:slug:output_ext", "/2022/4/20/22/09-05-07/nw-big.html"),
        ("/:categories/:name", "/news/2022-04-20-nw-big"),
        ("/archive/:title_/:nope", "/archive/NW-Big_/:nope"),
    ],
)
def test_permalink_styles_and_placeholders(tmp_path: Path, permalink: str, expected: str) -> None:
    source = make_site(tmp_path / "s", {"News/_posts/2022-04-20-NW-Big.md": post("title: t\ndate: 2022-04-20 09:05:07 +0800\n")})
    assert one(source, permalink=permalink).permalink == expected


def test_chinese_slug_is_percent_encoded(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"财经/_posts/2022-04-20-数字 政府!.md": post("title: t\n")})
    got = one(source)
    assert got.permalink == "/%E8%B4%A2%E7%BB%8F/2022/04/20/%E6%95%B0%E5%AD%97-%E6%94%BF%E5%BA%9C!.html"
    assert got.url == "https://finews.withounder.com" + got.permalink
    assert got.slug == "数字 政府!"


def test_front_matter_slug_and_permalink_override(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-a.md": post("title: a\nslug: 新的 slug\ncategories: X\n"),
            "_posts/2022-04-20-b.md": post("title: b\npermalink: /special/:year/:title/\n"),
        },
    )
    posts = {p.title: p for p in collect_dir(source).posts}
    assert posts["a"].permalink == "/x/2022/04/20/%E6%96%B0%E7%9A%84-slug.html"
    assert posts["b"].permalink == "/special/2022/b/"


def test_categories_in_permalinks_are_lower_cased_and_cannot_climb_out(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {"_posts/2022-04-20-p.md": post("title: t\ncategories: [\"../../etc\", A, a, '']\n")},
    )
    got = one(source)
    assert got.categories == ("../../etc", "A", "a")
    assert got.permalink == "/etc/a/2022/04/20/p.html"


def test_baseurl_is_part_of_the_url(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": post("title: t\n", "[home](/)\n")},
                       CONFIG_YML + "baseurl: /news\n")
    collection = collect_dir(source)
    got = collection.posts[0]
    assert got.url == "https://finews.withounder.com/news/2022/04/20/p.html"
    assert collection.content(got) == '<p><a href="https://finews.withounder.com/">home</a></p>'


# ---------------------------------------------------------------- title, summary, image, author, source


def test_missing_title_comes_from_the_slug(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-big-news-TODAY.md": post("date: 2022-04-20\n")})
    assert one(source).title == "Big News Today"


def test_title_loses_control_characters_and_line_breaks(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": post('title: "控制\\x0b字符\\n标题\\t 测试"\n')})
    assert one(source).title == "控制字符 标题 测试"


def test_excerpt_and_description_win_over_the_body(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-a.md": post("title: a\nexcerpt: '<b>摘要</b> 一'\ndescription: 描述\n"),
            "_posts/2022-04-20-b.md": post("title: b\ndescription: 描述 &amp; 说明\n"),
        },
    )
    posts = {p.title: p for p in collect_dir(source).posts}
    assert (posts["a"].summary, posts["a"].excerpt, posts["a"].description) == ("摘要 一", "摘要 一", "描述")
    assert (posts["b"].summary, posts["b"].excerpt, posts["b"].description) == ("描述 & 说明", None, "描述 & 说明")


def test_front_matter_image_beats_the_first_image(tmp_path: Path) -> None:
    body = '<p><img src="/body.jpg"></p>\n'
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-a.md": post("title: a\nimage: /cover.jpg\n", body),
            "_posts/2022-04-20-b.md": post("title: b\nimage:\n  path: //cdn.example/c.jpg\n", body),
            "_posts/2022-04-20-c.md": post("title: c\n", body),
            "_posts/2022-04-20-d.md": post("title: d\n"),
        },
    )
    images = {p.title: p.image for p in collect_dir(source).posts}
    assert images == {
        "a": "https://finews.withounder.com/cover.jpg",
        "b": "https://cdn.example/c.jpg",
        "c": "https://finews.withounder.com/body.jpg",
        "d": None,
    }


@pytest.mark.parametrize(
    ("front", "author"),
    [("author: 张三\n", "张三"), ("author:\n  name: 李四\n  email: x@y\n", "李四"), ("author: [甲, {name: 乙}]\n", "甲, 乙"), ("", None)],
)
def test_author(tmp_path: Path, front: str, author: str | None) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": post("title: t\n" + front)})
    assert one(source).author == author


def test_source_falls_back_to_the_category_display_name(tmp_path: Path) -> None:
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-a.md": post("title: a\ncategories: cailianshe\n"),
            "_posts/2022-04-20-b.md": post("title: b\ncategories: cailianshe\n", "<p>x</p><p>（文章来源：新华社）</p>\n"),
            "_posts/2022-04-20-c.md": post("title: c\n"),
        },
    )
    config = build_config({"site": {"source": str(source)}, "categories": {"cailianshe": {"title": "财联社新闻"}}})
    sources = {p.title: p.source for p in collect(resolve_site(config), None, NOW).posts}
    assert sources == {"a": "财联社新闻", "b": "新华社", "c": "finews 财经新闻"}


def test_content_hash_changes_with_the_body(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-a.md": post("title: a\n"), "_posts/2022-04-20-b.md": post("title: b\n", "<p>另一个</p>\n")})
    hashes = {p.title: p.content_hash for p in collect_dir(source).posts}
    assert len(hashes["a"]) == 24 and hashes["a"] != hashes["b"]


# ---------------------------------------------------------------- encodings


def test_bom_and_crlf_are_read(tmp_path: Path) -> None:
    text = "\ufeff---\r\ntitle: 带BOM\r\ndate: 2022-04-20 11:00:00 +0800\r\ntags: a b\r\n---\r\n<p>正文\r\n第二行</p>\r\n"
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": text.encode("utf-8")})
    collection = collect_dir(source)
    got = collection.posts[0]
    assert (got.title, got.tags, got.date.hour) == ("带BOM", ("a", "b"), 11)
    assert collection.content(got) == "<p>正文\n第二行</p>"


def test_site_encoding_decodes_other_encodings(tmp_path: Path) -> None:
    data = post("title: 国务院发布数字政府建设指导意见\ntags: 财联社新闻\n").encode("gbk")
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": data})
    rejected = collect_dir(source)
    assert rejected.posts == []
    assert rejected.errors[0].message == (
        "cannot decode as utf-8: byte 0xb9 at offset 11 (set site.encoding if the site's files use another encoding)"
    )
    got = one(source, encoding="gbk")
    assert (got.title, got.tags) == ("国务院发布数字政府建设指导意见", ("财联社新闻",))


# ---------------------------------------------------------------- rejected files


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file: not a post"),
        (b"  \n\n", "empty file: not a post"),
        (b"<p>just a body</p>\n", "no front matter: Jekyll treats this file as a static file, not a post (start it with a '---' line)"),
        (b"---\ntitle: x\n<p>no closing fence</p>\n", "front matter is not closed: add a '---' line after it"),
        (b'---\ntitle: "unclosed\ndate: 2022-04-20\n---\n<p>x</p>\n',
         "invalid YAML in front matter at line 2: while scanning a quoted scalar; found unexpected end of stream"),
        (b"---\ntitle: a\nbad: [1, 2\n---\n", "invalid YAML in front matter at line 3: while parsing a flow sequence; did not find expected ',' or ']'"),
        (b"---\ntitle: a\n  b: c\n---\n", "invalid YAML in front matter at line 3: mapping values are not allowed in this context"),
        (b"---\n- a\n- b\n---\n", "front matter is a list, not a mapping of keys to values"),
        (b"---\njust text\n---\n", "front matter is a str, not a mapping of keys to values"),
        (b"---\ntitle: \xff\xfe\n---\n", "cannot decode as utf-8: byte 0xff at offset 11 (set site.encoding if the site's files use another encoding)"),
    ],
)
def test_rejected_files_name_the_file_and_the_reason(tmp_path: Path, data: bytes, message: str) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-bad.md": data, "_posts/2022-04-20-good.md": post("title: good\n")})
    collection = collect_dir(source)
    assert [p.title for p in collection.posts] == ["good"]
    assert [(e.path, e.message) for e in collection.errors] == [("_posts/2022-04-20-bad.md", message)]


def test_empty_front_matter_is_a_post(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": "---\n---\n正文\n"})
    got = one(source)
    assert (got.title, got.summary) == ("P", "正文")


# ---------------------------------------------------------------- the edge-case site


@pytest.fixture(scope="module")
def edge_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edge") / "site"
    subprocess.run([sys.executable, str(MAKE_SITE), str(out), "--posts", "20", "--edge-cases", "--seed", "3"], check=True, capture_output=True)
    return out


def test_edge_case_site_behaves_as_edge_cases_md_says(edge_site: Path) -> None:
    collection = collect(site_of(edge_site), None, datetime(2030, 1, 1, tzinfo=UTC))
    listed = (edge_site / "EDGE_CASES.md").read_text(encoding="utf-8")
    by_path = {p.path: p for p in collection.posts}
    errors = {e.path: e.message for e in collection.errors}
    assert errors == {
        "_posts/2022-04-20-edge-bad-yaml.md": "invalid YAML in front matter at line 2: while scanning a quoted scalar; found unexpected end of stream",
        "_posts/2022-04-20-edge-no-front-matter.md": "no front matter: Jekyll treats this file as a static file, not a post (start it with a '---' line)",
        "_posts/2022-04-20-edge-unclosed-front-matter.md": "front matter is not closed: add a '---' line after it",
        "_posts/2022-04-20-edge-gbk.md": "cannot decode as utf-8: byte 0xb9 at offset 11 (set site.encoding if the site's files use another encoding)",
        "_posts/2022-04-20-edge-bad-date.md": "date: '2022-02-30 25:61:00 +0800' is an impossible date",
        "_posts/2022-04-20-edge-empty-file.md": "empty file: not a post",
    }
    for path in errors:
        assert f"`{path}`" in listed
    edge = {path.rsplit("-edge-", 1)[1]: p for path, p in by_path.items() if "-edge-" in path}
    assert sorted(edge) == sorted(
        ["bom-crlf.md", "control-chars.md", "html-title.md", "traversal-tag.md", "date-from-filename.md",
         "iso-date.md", "no-title.md", "empty-body.md", "string-lists.md", "huge.md"]
    )
    assert "unpublished" not in str(by_path) and "future" not in str(by_path) and "draft" not in str(by_path)
    assert edge["bom-crlf.md"].title == "带BOM和CRLF的文章"
    assert edge["control-chars.md"].title == "控制字符标题测试"
    assert "\x0b" not in collection.content(edge["control-chars.md"])
    # Issue 18: a title is published as jekyll-feed publishes it (smartify | strip_html | normalize_whitespace).
    assert edge["html-title.md"].title == "A&B “引号” ‘single’ ]]>"
    assert edge["traversal-tag.md"].tags == ("../../../tmp/pwned", "..", "/abs", "a/b", "CON", "！！！")
    assert edge["traversal-tag.md"].permalink == "/etc/2022/04/20/edge-traversal-tag.html"
    assert edge["date-from-filename.md"].date.isoformat() == "2022-04-20T00:00:00+08:00"
    assert edge["iso-date.md"].date.isoformat() == "2022-04-20T16:30:00+08:00"
    assert edge["no-title.md"].title == "Edge No Title"
    assert (edge["empty-body.md"].summary, collection.content(edge["empty-body.md"])) == ("", "")
    assert (edge["string-lists.md"].categories, edge["string-lists.md"].tags) == (("cailianshe",), ("数字经济", "数字政府", "A股"))
    assert len(collection.content(edge["huge.md"]).encode()) > 1_000_000
    assert len(edge["huge.md"].summary) <= 180


def test_edge_case_site_with_gbk_encoding_reads_the_gbk_file(edge_site: Path) -> None:
    collection = collect(site_of(edge_site, encoding="gbk"), None, NOW)
    gbk = next(p for p in collection.posts if p.path.endswith("edge-gbk.md"))
    assert gbk.title == "国务院发布数字政府建设指导意见"


# ---------------------------------------------------------------- the CLI


def run_check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["check", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_check_json_lists_posts_and_errors_and_exits_1_on_rejected_files(edge_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = run_check("--site", str(edge_site), "--json")
    assert code == 1
    data = json.loads(output[output.index("{"):])
    assert list(data) == ["posts", "errors", "categories", "tags", "first_date", "last_date"]
    assert list(data["posts"][0]) == ["path", "url", "id", "title", "date", "categories", "tags", "summary", "image", "source"]
    assert len(data["errors"]) == 6
    assert all(list(e) == ["path", "message"] for e in data["errors"])
    assert data["categories"]["cailianshe"] >= 10


def test_check_exits_0_on_a_clean_site_and_prints_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_site(
        tmp_path / "s",
        {
            "_posts/2022-04-20-a.md": post("title: a\ndate: 2022-04-20 10:00:00 +0800\ncategories: x\ntags: t1 t2\n"),
            "_posts/2022-04-19-b.md": post("title: b\ncategories: x y\ntags: t1\n"),
        },
    )
    monkeypatch.chdir(tmp_path)
    code, output = run_check("--site", str(source))
    assert code == 0
    assert output == (
        "posts: 2\n"
        "dates: 2022-04-19T00:00:00+08:00 .. 2022-04-20T10:00:00+08:00\n"
        "categories (2):\n  x: 2\n  y: 1\n"
        "tags: 2\n  t1: 2\n  t2: 1\n"
        "rejected files: 0\n"
    )
    assert (tmp_path / ".finews-cache").is_dir()


def test_check_of_a_missing_site_is_a_site_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["check", "--site", str(tmp_path / "nope")])
    assert result.exit_code == 3
    assert "does not exist" in result.output


def test_collect_site_uses_the_configured_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-a.md": post("title: a\n")})
    config = build_config({"site": {"source": str(source), "cache_dir": str(tmp_path / "c")}})
    collection = collect_site(config, now=NOW)
    assert [p.title for p in collection.posts] == ["a"]
    assert any((tmp_path / "c").iterdir())


# ---------------------------------------------------------------- never raises


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30),
                    st.sampled_from(["2022-04-20", "2022-02-30", "2022-04-20 10:00:00 +0800", "2022-04-20T10:00:00Z", "../x", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
KEYS = st.sampled_from(["title", "date", "categories", "category", "tags", "tag", "published", "permalink", "slug",
                        "excerpt", "description", "image", "author", "last_modified_at", "layout"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    front=st.dictionaries(KEYS, VALUES, max_size=8),
    body=st.text(max_size=200),
    raw=st.binary(max_size=200),
)
def test_collect_never_raises_on_random_front_matter_and_bodies(tmp_path: Path, front: dict[str, Any], body: str, raw: bytes) -> None:
    source = tmp_path / "h"
    shutil.rmtree(source, ignore_errors=True)
    try:
        front_text = yaml.safe_dump(front, allow_unicode=True)
    except yaml.YAMLError:
        front_text = "{}\n"
    make_site(
        source,
        {
            "_posts/2022-04-20-random.md": ("---\n" + front_text + "---\n" + body).encode("utf-8", "surrogatepass"),
            "_posts/2022-04-20-raw.md": raw,
            "_posts/2022-04-20-raw-fm.md": b"---\n" + raw + b"\n---\n" + raw,
        },
    )
    collection = collect_dir(source)
    assert len(collection.posts) + len(collection.errors) <= 3
    for got in collection.posts:
        collection.content(got)
        assert got.url.isascii() and " " not in got.url
        assert got.date.tzinfo == SHANGHAI


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2099, 12, 30)),
    offset_minutes=st.integers(min_value=-12 * 60, max_value=14 * 60).map(lambda m: m - m % 15),
    style=st.sampled_from(["{d} {t} {o}", "{d} {t} {oc}", "{d}T{t}{oc}", "{d}T{t}Z"]),
)
def test_parse_date_reads_every_accepted_format_back(moment: datetime, offset_minutes: int, style: str) -> None:
    from datetime import timedelta, timezone

    moment = moment.replace(microsecond=0)
    zone = UTC if style.endswith("Z") else timezone(timedelta(minutes=offset_minutes))
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = style.format(d=moment.strftime("%Y-%m-%d"), t=moment.strftime("%H:%M:%S"),
                        o=f"{sign}{hours:02d}{minutes:02d}", oc=f"{sign}{hours:02d}:{minutes:02d}")
    parsed = parse_date(text, SHANGHAI)
    # The same instant, compared as one: Python never calls two datetimes of different zones equal
    # when one falls in a repeated hour (Shanghai's summer time, 1986-1991).
    assert parsed.timestamp() == moment.replace(tzinfo=zone).timestamp()
    assert parsed.tzinfo == SHANGHAI


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_date_gives_a_date_or_a_value_error(text: str) -> None:
    try:
        parsed = parse_date(text, SHANGHAI)
    except ValueError as exc:
        assert str(exc)
    else:
        assert parsed.tzinfo == SHANGHAI


_FM_KEYS = st.sampled_from(["layout", "title", "tags", "categories", "date", "true", "on", "y", "null", "_x", "k1"])
_FM_VALUES = st.lists(
    st.sampled_from([
        "post", "新闻", "2022-04-20 09:15:40 +0800", "2022-04-20", "12", "1:20", "0x1F", "5G", "1.5", ".inf", "~", "null",
        "yes", "Off", "=", "<<", "-1", "- x", "a: b", "a:b", "a #c", "C#", "x:", "'q'", "'it''s'", '"d"', '"a\\"b"', '"#: "',
        "''", '""', "\xa0", "\u3000", "\u2028", "\x85", "\ufeff", "\t", "\x07", " ", "|", ">", "!t", "&a", "*a", "[1]",
        "{a: 1}", "%", "@", "`", "?", ",", "'", '"', "\\", "[a, b]", "[]", "[ ]", "[a,]", "[x: y]", "[1, 2]", "[a, [b]]",
        "[ 新闻 ,5G ]", "[a #b]", "[-a]", "[yes]",
    ]),
    max_size=4,
).map("".join)
_FM_PLAIN = st.sampled_from(["post", "新闻 快讯", "2022-04-20 09:15:40 +0800", "5G", "C#", "a:b", "it's", "\xa0x", "'q'", '"d"', "[第一财经, 房地产]"])
_FM_LINES = st.one_of(
    # Mostly what finews writes, so most documents take the simple path ...
    st.tuples(_FM_KEYS, st.just(": "), _FM_PLAIN).map("".join),
    st.tuples(_FM_KEYS, st.sampled_from([":", ": "])).map("".join),
    st.tuples(st.just("  - "), _FM_PLAIN).map("".join),
    # ... and the rest is anything near it.
    st.tuples(_FM_KEYS, st.sampled_from([": ", ":", ":  ", " : "]), _FM_VALUES).map("".join),
    st.tuples(st.sampled_from(["  - ", "- ", " - ", "  -", "    - "]), _FM_VALUES).map("".join),
    st.sampled_from(["", " ", "# c", "---", "  key: v"]),
)


_FM_NEAR_LINES = st.one_of(
    st.tuples(_FM_KEYS, st.just(": "), _FM_PLAIN).map("".join),
    st.tuples(_FM_KEYS, st.sampled_from([":", ": "])).map("".join),
    st.tuples(st.just("  - "), _FM_PLAIN).map("".join),
    st.tuples(_FM_KEYS, st.just(": "), _FM_VALUES).map("".join),
    st.tuples(st.just("  - "), _FM_VALUES).map("".join),
)




@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_FM_LINES, max_size=8), st.lists(_FM_NEAR_LINES, max_size=5)))
def test_any_front_matter_near_finews_shapes_is_a_post_or_a_named_error(lines: list[str]) -> None:
    from finews_feeds.site.posts import NotPublished

    raw = ("---\n" + "\n".join(lines) + "\n---\n<p>正文</p>\n").encode("utf-8")
    try:
        parsed = parse_post("_posts/2022-04-20-x.md", raw, site_of(ROOT / "demo-site"))
    except PostError as exc:
        assert exc.path == "_posts/2022-04-20-x.md" and exc.reason
    except NotPublished:
        pass
    else:
        assert parsed.post.path == "_posts/2022-04-20-x.md"


@pytest.mark.parametrize("body", ["<html>", "<html></html>", "<html><body></body></html>", "<!DOCTYPE html>", "<?xml x?>"])
def test_a_body_that_is_a_whole_document_does_not_stop_the_run(tmp_path: Path, body: str) -> None:
    source = make_site(tmp_path / "s", {
        "_posts/2022-04-20-doc.md": post("title: doc\ndate: 2022-04-20 09:00:00 +0800\n", body),
        "_posts/2022-04-20-ok.md": post("title: ok\ndate: 2022-04-20 10:00:00 +0800\n"),
    })
    collection = collect_dir(source)
    assert "_posts/2022-04-20-ok.md" in [p.path for p in collection.posts]
    assert len(collection.posts) + len(collection.errors) == 2


# ---------------------------------------------------------------- front matter built as PyYAML builds it


# ---------------------------------------------------------------- the simple front matter path


def _load(text: str, loader: type) -> tuple[str, Any]:
    try:
        return "value", repr(yaml.load(text, Loader=loader))  # repr: `&r [*r]` is a recursive list
    except yaml.YAMLError as exc:
        return "error", type(exc).__name__


_YAML_PIECES = st.sampled_from([
    "a: &x [1, 2]\nb: *x\n", "base: &b {k: v}\nmore:\n  <<: *b\n  j: 2\n", "= : v\n", "? [1, 2]\n: v\n",
    "t: !!str 12\n", "s: !!set {a, b}\n", "o: !!omap [{a: 1}]\n", "r: &r [*r]\n", "b: !!binary aGk=\n",
    "n: ~\nm: null\nt: yes\nf: Off\ni: 0x1F\nf2: 1e3\nd: 2022-04-20 09:15:40 +0800\n", "k: [a, [b, {c: d}]]\n",
    "dup: 1\ndup: 2\n", "1: int key\n2.5: float key\ntrue: bool key\n~: null key\n", "x: 'quoted: yes'\n",
])


_SIMPLE_SAFE = st.sampled_from(["a", "新闻", "5G", "2022-04-20 09:15:40 +0800", " ", "x y", "A股", "😀", "\xa0", "\u3000"])
_SIMPLE_TRICKY = st.sampled_from([
    ":", ": ", "#", " #", "-", "- ", "?", ",", "[", "]", "{", "}", "'", "''", '"', "\\", "!", "&", "*", "|", ">", "%", "@",
    "`", "~", "=", "<<", "yes", "Off", "null", "12", "0x1F", "1:20", "1.5", ".inf", "\t", "\x0b", "\x85", "\u2028",
    "\ufeff", "\n", "\n ", "",
])
# Mostly what front matter holds, so that many documents take the simple path, and now and then
# anything near it.
_SIMPLE_TEXT = st.lists(st.one_of(*[_SIMPLE_SAFE] * 6, _SIMPLE_TRICKY), min_size=1, max_size=5).map("".join)
_SIMPLE_VALUES = st.one_of(
    _SIMPLE_TEXT,
    _SIMPLE_TEXT.map(lambda t: f'"{t}"'),
    _SIMPLE_TEXT.map(lambda t: f"'{t}'"),
    st.lists(st.one_of(_SIMPLE_TEXT, _SIMPLE_TEXT.map(lambda t: f'"{t}"'), _SIMPLE_TEXT.map(lambda t: f"'{t}'")),
             max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
    st.lists(_SIMPLE_TEXT, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
)
_SIMPLE_KEY_NAMES = st.sampled_from(["title", "tags", "a-b", "_x", "k1", "yes", "on", "null", "y", "Y", "NO", "_"])
_SIMPLE_KEYS = st.one_of(_SIMPLE_KEY_NAMES, _SIMPLE_KEY_NAMES, _SIMPLE_KEY_NAMES, _SIMPLE_TEXT)
_SIMPLE_LINES = st.one_of(
    *[st.tuples(_SIMPLE_KEYS, st.just(": "), _SIMPLE_VALUES).map("".join)] * 4,
    st.tuples(_SIMPLE_KEYS, st.sampled_from([": ", ":  ", ":", " : ", ":\t"]), _SIMPLE_VALUES,
              st.sampled_from(["", " ", "  ", " # c", "\t"])).map("".join),
    st.tuples(_SIMPLE_KEYS, st.sampled_from([":", ": ", ":  ", " :"])).map("".join),
    *[st.tuples(st.sampled_from(["", " ", "  ", "    "]), st.sampled_from(["- ", "-  ", "-", "- - "]), _SIMPLE_VALUES)
      .map("".join)] * 2,
    st.sampled_from(["", " ", "# c", " # c", "---", "...", "  - x", "- x", "%YAML 1.1", "  k: v"]),
)


_SAFE_TEXT = st.lists(_SIMPLE_SAFE, min_size=1, max_size=4).map("".join)
_SAFE_LINES = st.tuples(st.sampled_from(["title", "tags", "date", "a-b", "_x", "k1", "Y_"]), st.sampled_from([":", ": "]), st.one_of(
    _SAFE_TEXT.map(" ".__add__), _SAFE_TEXT.map(lambda t: f' "{t}"'),
    st.lists(_SAFE_TEXT, max_size=3).map(lambda i: " [" + ", ".join(i) + "]"),
    st.tuples(st.sampled_from(["\n", "\n  ", "\n    "]), st.lists(_SAFE_TEXT, min_size=1, max_size=3))
    .map(lambda t: "".join(f"{t[0]}- {item}" for item in t[1])),
)).map("".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_SIMPLE_LINES, max_size=6), st.lists(st.one_of(*[_SAFE_LINES] * 6, _SIMPLE_LINES), max_size=6))
       .map("\n".join))
def test_the_simple_front_matter_path_reads_what_pyyaml_reads_or_nothing(text: str) -> None:
    simple = frontmatter.simple_front_matter(text)
    if simple is not None:
        assert ("value", repr(simple)) == _load(text, frontmatter.Loader)


@pytest.mark.parametrize("text, expected", [
    ('layout: post\ntitle: "中央深改委会议要求：加强数字政府建设？"\ndate: 2022-04-20 09:15:40 +0800\n'
     "categories: cailianshe\ntags: 财联社新闻\n",
     {"layout": "post", "title": "中央深改委会议要求：加强数字政府建设？", "date": "2022-04-20 09:15:40 +0800",
      "categories": "cailianshe", "tags": "财联社新闻"}),
    ("# a comment\n\ntags: [东方财富, 'A股', \"5G: 新\"]\ntitle: it's C# and a:b\n", {"tags": ["东方财富", "A股", "5G: 新"],
                                                                             "title": "it's C# and a:b"}),
    ("tags: []\ntitle: ''\nx: \"\"\n", {"tags": [], "title": "", "x": ""}),
    ("title: a\ntitle: b\n", {"title": "b"}),
    ("title: a b  \ntags: [ x ,y ]  \n", {"title": "a b", "tags": ["x", "y"]}),
    ("categories: \n  - cailianshe\ntags:\n- 财联社新闻\n- '5G'\n", {"categories": ["cailianshe"], "tags": ["财联社新闻", "5G"]}),
])
def test_typical_front_matter_takes_the_simple_path(text: str, expected: dict[str, Any]) -> None:
    assert frontmatter.simple_front_matter(text) == expected
    assert yaml.load(text, Loader=frontmatter.Loader) == expected


@pytest.mark.parametrize("text", [
    "n: 12\n", "t: yes\n", "z: ~\n", "e:\n", "yes: key\n", "a: b # c\n", "a: b: c\n", "a: &x b\n", "a: - b\n",
    "a: [b,]\n", "a: [b, [c]]\n", "a: [x: y]\n", "a: [1]\n", "a: \"q\\\"\"\n", "a: 'it''s'\n", "a: \"x\" y\n",
    "a:\tb\n", "a: b\x0bc\n", "a: b\x85c\n", "a: b\n  c\n", "a: >\n  b\n", "---\na: b\n", "", "a:\nb: c\n",
    "a:\n  - b\n    - c\n", "a:\n  - b\n - c\n", "a:\n  - b\n\n  - c\n", "a:\n  - 1\n", "a:\n  - b: c\n", "a:\n  -\n",
    "a:\n  - - b\n", "- a\n",
])
def test_anything_else_is_left_to_pyyaml(text: str) -> None:
    assert frontmatter.simple_front_matter(text) is None


# ---------------------------------------------------------------- hostile front matter (issue 12, item 2)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """About a kilobyte of YAML under `tags:` naming width**levels strings."""
    lines = ["tags:", "  - &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"  - &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _limited_child() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_an_alias_bomb_is_rejected_by_name_and_every_other_post_is_built(tmp_path: Path) -> None:
    bomb = alias_bomb()
    assert len(bomb) < 1200
    source = make_site(tmp_path / "s", {
        "_posts/2022-04-20-bomb.md": post("title: bomb\ndate: 2022-04-20 09:00:00 +0800\n" + bomb),
        # Parsing costs in proportion to the text: 4 MB of it, 2 million values, is refused unread.
        "_posts/2022-04-20-huge.md": post("title: huge\ntags: [" + ",".join(["1"] * 2_000_000) + "]\n"),
        "_posts/2022-04-20-good.md": post("title: good\ndate: 2022-04-20 10:00:00 +0800\ncategories: x\ntags: [t]\n"),
        "_posts/2022-04-19-other.md": post("title: other\ndate: 2022-04-19 10:00:00 +0800\ntags: [t, u]\n"),
    })
    # A child with 1 GB of address space and a deadline: the code before this test hung here
    # for minutes (or died of MemoryError, with a traceback).
    command = [sys.executable, "-m", "finews_feeds", "check", "--site", str(source), "--json"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=20,
                          preexec_fn=_limited_child, check=False)
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout[done.stdout.index("{"):])
    assert sorted(p["title"] for p in data["posts"]) == ["good", "other"]
    assert data["errors"] == [
        {"path": "_posts/2022-04-20-bomb.md", "message": (
            "front matter expands to 490,329,061 values, more than collector.max_front_matter_nodes = 10,000: "
            "not read (aliases repeating aliases: a YAML alias bomb?)")},
        {"path": "_posts/2022-04-20-huge.md", "message": (
            "front matter has 4,000,021 characters, more than collector.max_front_matter_chars = 100,000: not read")},
    ]
    assert "Traceback" not in done.stderr
    build = subprocess.run([sys.executable, "-m", "finews_feeds", "build", "--site", str(source), "--out", str(tmp_path / "out")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=20, preexec_fn=_limited_child, check=False)
    assert build.returncode == 0, build.stderr
    assert "rejected _posts/2022-04-20-bomb.md: front matter expands to" in build.stderr
    assert "rejected _posts/2022-04-20-huge.md: front matter has 4,000,021 characters" in build.stderr
    assert "posts: 2," in build.stdout
    feed = json.loads((tmp_path / "out" / "tags" / "t" / "feed.json").read_text(encoding="utf-8"))
    assert [item["title"] for item in feed["items"]] == ["good", "other"]


@pytest.mark.parametrize(("front", "limits", "message"), [
    ("title: " + "长" * 200 + "\n", {"max_front_matter_chars": 100},
     "front matter has 209 characters, more than collector.max_front_matter_chars = 100: not read"),
    ("a: &x [1, 2]\nb: [*x, *x, *x]\n", {"max_front_matter_aliases": 2},
     "front matter has 3 aliases (*name), more than collector.max_front_matter_aliases = 2: not read"),
    ("a: &x [1, 2, 3]\nb: [*x, *x]\n", {"max_front_matter_nodes": 15},
     "front matter expands to 16 values, more than collector.max_front_matter_nodes = 15: not read "
     "(aliases repeating aliases: a YAML alias bomb?)"),
    ("tags: [" + ", ".join(f"t{i}" for i in range(30)) + "]\n", {"max_front_matter_nodes": 32},
     "front matter expands to 33 values, more than collector.max_front_matter_nodes = 32: not read "
     "(aliases repeating aliases: a YAML alias bomb?)"),
    ("a: [[[[x]]]]\n", {"max_front_matter_depth": 4},
     "front matter nests lists and mappings 5 deep, more than collector.max_front_matter_depth = 4: not read"),
    ("tags: &r [x, *r]\n", {},
     "front matter has an alias inside the value it names (a recursive structure, endless once written out): not read"),
    ("categories: &r {a: *r}\n", {},
     "front matter has an alias inside the value it names (a recursive structure, endless once written out): not read"),
    ("tags: [a, b, c, a]\n", {"max_tags": 2}, "3 tags, more than collector.max_tags = 2"),
    ("tags: [1, 2, 3]\n", {"max_tags": 2}, "3 tags, more than collector.max_tags = 2"),
    ("tags: a b c\n", {"max_tags": 2}, "3 tags, more than collector.max_tags = 2"),
    ("categories: a b\ncategory: c\n", {"max_categories": 3}, "4 categories, more than collector.max_categories = 3"),
])
def test_front_matter_over_a_limit_is_a_rejected_file_naming_the_key(tmp_path: Path, front: str, limits: dict[str, int],
                                                                     message: str) -> None:
    source = make_site(tmp_path / "s", {
        "news/_posts/2022-04-20-over.md": post(front),
        "_posts/2022-04-20-fine.md": post("title: fine\n"),
    })
    site = resolve_site(build_config({"site": {"source": str(source)}, "collector": limits}))
    collection = collect(site, None, NOW)
    assert [p.title for p in collection.posts] == ["fine"]
    assert [(e.path, e.message) for e in collection.errors] == [("news/_posts/2022-04-20-over.md", message)]


def test_front_matter_at_the_limits_is_read(tmp_path: Path) -> None:
    source = make_site(tmp_path / "s", {
        "x/_posts/2022-04-20-at.md": post("a: &x [1, 2, 3]\nb: [*x, *x]\ntags: [a, b]\ncategories: y\nc: [[[x]]]\n"),
    })
    limits = {"max_front_matter_aliases": 2, "max_front_matter_nodes": 27, "max_front_matter_depth": 4, "max_tags": 2,
              "max_categories": 2}
    site = resolve_site(build_config({"site": {"source": str(source)}, "collector": limits}))
    collection = collect(site, None, NOW)
    assert collection.errors == []
    assert [(p.categories, p.tags) for p in collection.posts] == [(("x", "y"), ("a", "b"))]


def test_the_limits_are_part_of_the_cache_fingerprint(tmp_path: Path) -> None:
    from finews_feeds.site.collector import fingerprint

    source = make_site(tmp_path / "s", {})
    loose = resolve_site(build_config({"site": {"source": str(source)}}))
    tight = resolve_site(build_config({"site": {"source": str(source)}, "collector": {"max_tags": 3}}))
    assert fingerprint(loose) != fingerprint(tight)


def _expanded(value: Any) -> tuple[int, int]:
    """Values and depth of ``value`` with every shared list written out (the reference)."""
    if isinstance(value, dict):
        parts = [_expanded(part) for pair in value.items() for part in pair]
    elif isinstance(value, (list, tuple, set)):
        parts = [_expanded(item) for item in value]
    else:
        return 1, 0
    return 1 + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0)


@st.composite
def _anchored_documents(draw: st.DrawFn) -> str:
    """Front matter whose values name earlier ones by alias."""
    lines = []
    for i in range(draw(st.integers(2, 5))):
        leaves = [st.sampled_from(["x", "新闻", "1", "true", "''", "~", "2022-04-20"])]
        if i:
            leaves.append(st.integers(0, i - 1).map(lambda j: f"*a{j}"))
        value = draw(st.recursive(
            st.one_of(*leaves),
            lambda inner: st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]")
            | st.lists(st.tuples(st.sampled_from(["p", "q", "r"]), inner), max_size=3, unique_by=lambda kv: kv[0])
            .map(lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"),
            max_leaves=8))
        key = draw(st.sampled_from(["tags", "categories", "title", "author", "image"])) if i == 0 else f"k{i}"
        lines.append(f"{key}: {value}" if value.startswith("*") else f"{key}: &a{i} {value}")
    return "\n".join(lines) + "\n"


def _written_out(node: Any, path: frozenset[int] = frozenset()) -> tuple[int, int, bool]:
    """Values, depth and recursion of a composed document with every alias written out, one
    by one (the reference for limits.measure_nodes; of repeated keys the last pair counts)."""
    if id(node) in path:
        return 0, 0, True
    if isinstance(node, yaml.ScalarNode):
        return 1, 0, False
    inside = path | {id(node)}
    if isinstance(node, yaml.MappingNode):
        pairs = {(k.tag, k.value) if isinstance(k, yaml.ScalarNode) else id(k): (k, v) for k, v in node.value}
        kept = [part for pair in pairs.values() for part in pair]
        every = [part for pair in node.value for part in pair]
    else:
        kept = every = list(node.value)
    if any(_written_out(child, inside)[2] for child in every):
        return 0, 0, True
    parts = [_written_out(child, inside) for child in kept]
    return 1 + sum(n for n, _, _ in parts), 1 + max((d for _, d, _ in parts), default=0), False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(*[_anchored_documents()] * 4, _YAML_PIECES, VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
                 st.lists(_SIMPLE_LINES, max_size=6).map("\n".join)),
       st.one_of(st.tuples(st.integers(0, 6), st.integers(1, 60), st.integers(1, 5)), st.just((1000, 10_000, 32))))
def test_front_matter_within_the_limits_reads_as_before_and_beyond_them_is_rejected(
        text: str, limited: tuple[int, int, int]) -> None:
    from finews_feeds.models import FrontMatterLimits
    from finews_feeds.site.frontmatter import Rejected, load_front_matter

    aliases, nodes, depth = limited
    limits = FrontMatterLimits(aliases=aliases, nodes=nodes, depth=depth)
    try:  # before issue 12: the simple path, else PyYAML with the collector's loader
        simple = frontmatter.simple_front_matter(text)
        before: Any = simple if simple is not None else yaml.load(text, Loader=frontmatter.Loader)
    except yaml.YAMLError as exc:
        with pytest.raises(yaml.YAMLError) as raised:
            load_front_matter(text, limits)
        assert type(raised.value) is type(exc)
        return
    # Without aliases, the data as built is measured; with them, the document as composed (a
    # mapping's repeated keys told by their text), before anything is built from it.
    composed = yaml.compose(text, Loader=frontmatter.Loader)
    if "*" not in text:
        size, deep, recursive = (*_expanded(before), False) if before is not None else (0, 0, False)
    else:
        size, deep, recursive = _written_out(composed) if composed is not None else (0, 0, False)
    used = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=frontmatter.Loader))
    within = not recursive and used <= aliases and size <= nodes and deep <= depth
    try:
        after = load_front_matter(text, limits)
    except Rejected as exc:
        event("rejected")
        assert not within, str(exc)
        assert "collector.max_front_matter_" in str(exc) or "recursive" in str(exc)
    else:
        event("read" if "*" not in text else "read, with aliases")
        assert within
        assert repr(after) == repr(before)
        assert before is None or _expanded(before)[0] <= size


# ---------------------------------------------------------------- dates out of range (issue 12, item 11)


@pytest.mark.parametrize(("name", "front", "message"), [
    ("2022-04-20-early.md", "date: 0001-01-01 +08:00\n",
     "date: '0001-01-01 +08:00' is out of range (dates from 0001-01-02 to 9999-12-30 UTC)"),
    ("2022-04-20-late.md", "date: 9999-12-31 -12:00\n",
     "date: '9999-12-31 -12:00' is out of range (dates from 0001-01-02 to 9999-12-30 UTC)"),
    ("2022-04-20-late-z.md", "date: 9999-12-31T23:00:00Z\n",
     "date: '9999-12-31T23:00:00Z' is out of range (dates from 0001-01-02 to 9999-12-30 UTC)"),
    ("2022-04-20-tagged.md", "date: !!timestamp 0001-01-01 01:00:00 +08:00\n",
     "date: '0001-01-01 01:00:00+08:00' is out of range (dates from 0001-01-02 to 9999-12-30 UTC)"),
    ("0001-01-01-name.md", "title: t\n",
     "file name date 0001-01-01 is out of range (dates from 0001-01-02 to 9999-12-30 UTC; or set a date in the front matter)"),
    ("9999-12-31-name.md", "title: t\n",
     "file name date 9999-12-31 is out of range (dates from 0001-01-02 to 9999-12-30 UTC; or set a date in the front matter)"),
])
def test_a_date_out_of_range_is_a_rejected_file_without_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, front: str, message: str) -> None:
    source = make_site(tmp_path / "s", {f"_posts/{name}": post(front), "_posts/2022-04-20-fine.md": post("title: fine\n")})
    collection = collect_dir(source, future=True, timezone="America/Los_Angeles")
    assert [p.title for p in collection.posts] == ["fine"]
    assert [(e.path, e.message) for e in collection.errors] == [(f"_posts/{name}", message)]
    assert not [r for r in caplog.records if r.exc_info]


def test_a_last_modified_at_out_of_range_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = make_site(tmp_path / "s", {"_posts/2022-04-20-p.md": post("title: t\nlast_modified_at: 0001-01-01 00:00:00 +08:00\n")})
    got = one(source)
    assert got.updated is None
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records] == [(
        "WARNING", "_posts/2022-04-20-p.md: last_modified_at is not a usable date ('0001-01-01 00:00:00 +08:00' is out "
        "of range (dates from 0001-01-02 to 9999-12-30 UTC)); ignored", None)]


def test_dates_at_the_ends_of_the_range_are_read_and_built(tmp_path: Path) -> None:
    from finews_feeds.feeds.build import run_build

    source = make_site(tmp_path / "s", {
        "_posts/2022-04-20-first.md": post("title: first\ndate: 0001-01-02 00:00:00 +00:00\nlast_modified_at: 0001-01-02T01:00:00Z\n"),
        "_posts/2022-04-20-last.md": post("title: last\ndate: 9999-12-30 23:59:59 +00:00\n"),
    })
    collection = collect_dir(source, future=True)
    assert collection.errors == []
    assert [p.date.isoformat() for p in collection.posts] == ["9999-12-31T07:59:59+08:00", "0001-01-02T08:05:43+08:05:43"]
    config = build_config({"site": {"source": str(source), "future": True, "cache_dir": str(tmp_path / "c")},
                           "feeds": {"output": str(tmp_path / "out")}})
    report = run_build(config)
    assert report.rejected == []
    assert {item["title"] for item in json.loads((tmp_path / "out" / "feed.json").read_text(encoding="utf-8"))["items"]} == {
        "first", "last"}


def test_the_edge_case_site_builds_with_future_posts_too(edge_site: Path, tmp_path: Path) -> None:
    """`make_site.py --edge-cases` (also its post dated 2999, published with `future`): every
    file a post or a rejected file with its reason, and the feeds built, in a child with 1 GB."""
    command = [sys.executable, "-m", "finews_feeds", "build", "--site", str(edge_site), "--out", str(tmp_path / "out"), "--full"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, preexec_fn=_limited_child,
                          env={**os.environ, "FINEWS_SITE_FUTURE": "true"}, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("rejected _posts/") == 6
    feed = json.loads((tmp_path / "out" / "feed.json").read_text(encoding="utf-8"))
    assert feed["items"][0]["title"] == "未来文章"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_SIMPLE_LINES, max_size=6), st.lists(st.one_of(*[_SAFE_LINES] * 6, _SIMPLE_LINES), max_size=6))
       .map("\n".join))
def test_simple_front_matter_holds_fewer_values_than_characters(text: str) -> None:
    """Why load_front_matter need not measure a simple front matter shorter than the value limit."""
    from finews_feeds.site.limits import measure_data

    simple = frontmatter.simple_front_matter(text)
    if simple is not None:
        shape = measure_data(simple)
        assert shape.nodes <= len(text) and shape.depth <= 2
