from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from finews_feeds.feeds.slugs import MAX_CHARS, assign_slugs, base_slug, is_safe_slug, join_url, name_hash, quote_path

EDGE_TAGS = ["../../../tmp/pwned", "..", "/abs", "a/b", "CON", "！！！"]


def test_chinese_letters_and_digits_stay_and_ascii_is_lower_cased() -> None:
    assert base_slug("财联社新闻") == "财联社新闻"
    assert base_slug("5G") == "5g"
    assert base_slug("万科A") == "万科a"
    assert base_slug("A股 市场") == "a股-市场"


def test_everything_but_letters_and_digits_becomes_one_dash() -> None:
    assert base_slug("a / b -- c!") == "a-b-c"
    assert base_slug("  -x-  ") == "x"
    assert base_slug("Ｈｅｌｌｏ") == "hello"  # full-width letters are NFKC-normalized


def test_edge_case_tags_get_safe_deterministic_slugs() -> None:
    slugs = assign_slugs(EDGE_TAGS, "tag")
    assert slugs == {
        "../../../tmp/pwned": "tmp-pwned",
        "..": f"tag-{name_hash('..')}",
        "/abs": "abs",
        "a/b": "a-b",
        "CON": f"con-{name_hash('CON')}",
        "！！！": f"tag-{name_hash('！！！')}",
    }
    for slug in slugs.values():
        assert is_safe_slug(slug)
        assert "/" not in slug and slug not in ("", ".", "..")


def test_names_with_the_same_slug_get_distinct_slugs_and_the_exact_name_wins() -> None:
    slugs = assign_slugs(["IPO", "ipo", "a b", "a/b"], "tag")
    assert slugs["ipo"] == "ipo"
    assert slugs["IPO"] == f"ipo-{name_hash('IPO')}"
    assert slugs["a b"] == "a-b"  # first in code point order
    assert slugs["a/b"] == f"a-b-{name_hash('a/b')}"


def test_an_unrelated_new_name_does_not_move_existing_slugs() -> None:
    before = assign_slugs(["a/b", "IPO", "财经"], "tag")
    after = assign_slugs(["a/b", "IPO", "财经", "新能源", "5G"], "tag")
    assert {name: after[name] for name in before} == before


def test_with_the_last_build_slugs_a_colliding_new_name_does_not_move_existing_slugs() -> None:
    before = assign_slugs(["a/b"], "tag")
    after = assign_slugs(["a/b", "a b"], "tag", before)
    assert after == {"a/b": "a-b", "a b": f"a-b-{name_hash('a b')}"}


def test_previous_slugs_are_kept_even_when_an_exact_name_appears() -> None:
    previous = assign_slugs(["a/b"], "tag")
    slugs = assign_slugs(["a/b", "a-b"], "tag", previous)
    assert slugs == {"a/b": "a-b", "a-b": f"a-b-{name_hash('a-b')}"}


def test_an_unsafe_previous_slug_is_not_reused() -> None:
    slugs = assign_slugs(["x"], "tag", {"x": "../x"})
    assert slugs == {"x": "x"}


def test_long_names_are_cut_and_keep_a_hash() -> None:
    name = "很长" * 100
    slug = assign_slugs([name], "tag")[name]
    assert slug == "很长" * (MAX_CHARS // 2) + "-" + name_hash(name)
    assert len(slug.encode("utf-8")) < 255


def test_urls_percent_encode_chinese_as_utf8_with_upper_case_hex() -> None:
    assert join_url("https://x.example/feeds/", "tags", "财联社新闻", "rss.xml") == (
        "https://x.example/feeds/tags/%E8%B4%A2%E8%81%94%E7%A4%BE%E6%96%B0%E9%97%BB/rss.xml"
    )
    assert join_url("https://x.example", "a b", "c/d") == "https://x.example/a%20b/c%2Fd"
    assert quote_path("/category/财经.html") == "/category/%E8%B4%A2%E7%BB%8F.html"
    assert quote_path("/a%20b/") == "/a%20b/"


@given(st.lists(st.text(max_size=30), max_size=25))
def test_any_names_get_distinct_safe_slugs_independent_of_order(names: list[str]) -> None:
    slugs = assign_slugs(names, "tag")
    assert set(slugs) == set(names)
    assert len(set(slugs.values())) == len(slugs)
    assert all(is_safe_slug(s) for s in slugs.values())
    shuffled = list(names)
    random.Random(1).shuffle(shuffled)
    assert assign_slugs(shuffled, "tag") == slugs
    assert assign_slugs(names, "tag", slugs) == slugs
