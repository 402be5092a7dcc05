"""Site settings: our config wins, then the site's _config.yml, then Jekyll's defaults."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from finews_feeds.config import build_config
from finews_feeds.errors import SiteError
from finews_feeds.site.jekyll import resolve_site


def make_site(tmp_path: Path, config_yml: str | None) -> Path:
    (tmp_path / "_posts").mkdir()
    if config_yml is not None:
        (tmp_path / "_config.yml").write_text(config_yml, encoding="utf-8")
    return tmp_path


def test_jekyll_config_supplies_the_defaults(tmp_path: Path) -> None:
    source = make_site(tmp_path, "title: finews 财经新闻\nurl: https://finews.withounder.com/\n"
                                 "timezone: Asia/Tokyo\npermalink: pretty\nfuture: true\nencoding: gbk\n")
    site = resolve_site(build_config({"site": {"source": str(source)}}))
    assert site.title == "finews 财经新闻"
    assert site.url == "https://finews.withounder.com"
    assert site.timezone == ZoneInfo("Asia/Tokyo")
    assert site.permalink == "/:categories/:year/:month/:day/:title/"
    assert site.future is True
    assert site.encoding == "gbk"


def test_our_config_overrides_the_jekyll_config(tmp_path: Path) -> None:
    source = make_site(tmp_path, "title: A\nurl: https://a.example\ntimezone: Asia/Tokyo\nfuture: true\n")
    config = build_config({"site": {"source": str(source), "title": "B", "url": "https://b.example",
                                    "timezone": "UTC", "future": False, "permalink": "/:title/"}})
    site = resolve_site(config)
    assert (site.title, site.url, site.timezone, site.future, site.permalink) == (
        "B", "https://b.example", ZoneInfo("UTC"), False, "/:title/")


def test_jekyll_defaults_without_any_config(tmp_path: Path) -> None:
    site = resolve_site(build_config({"site": {"source": str(make_site(tmp_path, None))}}))
    assert site.timezone == ZoneInfo("Asia/Shanghai")
    assert site.permalink == "/:categories/:year/:month/:day/:title:output_ext"
    assert site.future is False
    assert site.encoding == "utf-8"


def test_baseurl_is_part_of_the_site_url(tmp_path: Path) -> None:
    source = make_site(tmp_path, "url: https://example.com\nbaseurl: /news/\n")
    assert resolve_site(build_config({"site": {"source": str(source)}})).url == "https://example.com/news"


def test_category_display_names_come_from_config(tmp_path: Path) -> None:
    config = build_config({"site": {"source": str(make_site(tmp_path, None))},
                           "categories": {"cailianshe": {"title": "财联社新闻", "order": 1}}})
    site = resolve_site(config)
    assert site.category_title("cailianshe") == "财联社新闻"
    assert site.category_title("yicai") == "yicai"
    assert site.category_order == {"cailianshe": 1}


@pytest.mark.parametrize(
    ("config_yml", "message"),
    [
        ("timezone: Nowhere/City\n", "timezone = 'Nowhere/City'"),
        ("encoding: klingon\n", "encoding = 'klingon': not a known text encoding"),
        ("- a list\n", "expected a mapping of settings"),
        ("title: [unclosed\n", "cannot read the site's config"),
    ],
)
def test_bad_jekyll_config_is_a_site_error(tmp_path: Path, config_yml: str, message: str) -> None:
    source = make_site(tmp_path, config_yml)
    with pytest.raises(SiteError, match=message.replace("[", r"\[").replace("(", r"\(")):
        resolve_site(build_config({"site": {"source": str(source)}}))


def test_missing_site_folder_is_a_site_error(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="does not exist"):
        resolve_site(build_config({"site": {"source": str(tmp_path / "nope")}}))
