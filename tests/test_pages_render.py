"""The web app's pages as a person sees them: the app on a free port over real HTTP, the demo site's
feeds and ten days of digests, rendered by headless Chromium at a phone's 375 px and a desktop's
1280 px.

Skipped where Chromium is absent (`.ci/run` installs it). With FINEWS_UPDATE_SCREENSHOTS=1 it also
writes docs/subscribe-, manage- and archive-{mobile,desktop}.png for the README.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from smtp_fakes import SECRET, free_port
from test_digest import ROOT
from test_digest_render import CHROMIUM, DOCS, PROBE, Chromium
from test_web import serve

from finews_feeds.config import Config, build_config, read_file
from finews_feeds.feeds.build import build_feeds
from finews_feeds.mail.digest import write_preview
from finews_feeds.mail.store import Store
from finews_feeds.mail.tokens import make_token
from finews_feeds.service.web import create_app
from finews_feeds.site.collector import collect_site

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

#: An address as long as people have: the confirm and unsubscribe pages show it whole.
LONG_ADDRESS = "someone.with.a.really.long.address.that.goes.on@subdomain.of.a.company.example.org"
PAGES = {
    "subscribe": "/",
    "archive": "/digests/",
    "archive page 2": "/digests/page/2/",
    "confirm": f"/confirm/{make_token(SECRET, 'confirm', LONG_ADDRESS)}",
    "unsubscribe": f"/unsubscribe/{make_token(SECRET, 'unsubscribe', LONG_ADDRESS)}",
    "manage": f"/manage/{make_token(SECRET, 'manage', LONG_ADDRESS)}",
    "a message": "/unsubscribe",
    "an error": "/nowhere",
}


#: Screenshot heights: each page whole at 375 px, its first screen or so at 1280 px.
SHOT_HEIGHTS = {("subscribe", "mobile"): 1300, ("subscribe", "desktop"): 1000, ("manage", "mobile"): 1150,
                ("manage", "desktop"): 1250, ("archive", "mobile"): 1300, ("archive", "desktop"): 1000}


def demo_config(tmp: Path, port: int) -> Config:
    values: dict[str, Any] = read_file(ROOT / "config" / "finews.toml")
    values["site"] = {**values["site"], "source": str(ROOT / "demo-site"), "cache_dir": str(tmp / "cache")}
    values["feeds"] = {**values["feeds"], "output": str(tmp / "feeds")}
    values["digest"] = {**values["digest"], "archive_per_page": 7}
    values["web"] = {**values["web"], "public_url": f"http://127.0.0.1:{port}"}
    values["database"] = {"url": f"sqlite:///{tmp}/finews.sqlite3"}
    return build_config(values, {"FINEWS_SECRET_KEY": SECRET})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The web app over the demo site: its feeds built, the digests of its ten days written."""
    tmp = tmp_path_factory.mktemp("pages")
    port = free_port()
    config = demo_config(tmp, port)
    collection = collect_site(config)
    try:
        build_feeds(collection, config)
        for n in range(10):
            day = date(2022, 4, 11) + timedelta(days=n)
            write_preview(config, day, now=datetime(2022, 4, 21, tzinfo=UTC), collect=lambda _c: collection)
    finally:
        collection.close()
    with Store.open(config.database.url) as store:
        # The manage page of a reader of two categories who takes the weekly digest.
        store.add_subscriber(LONG_ADDRESS, "读者", ("cailianshe", "yicai"), confirmed=True, now=datetime(2022, 4, 1, tzinfo=UTC))
        store.update_preferences(LONG_ADDRESS, categories=("cailianshe", "yicai"), tags=(), frequency="weekly", weekday=4)
        yield from serve(create_app(config, store=store, site_title=collection.site.title), port)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    instance = Chromium()
    try:
        yield instance
    finally:
        instance.close()


@pytest.mark.parametrize("name", PAGES)
def test_every_page_fits_a_375px_phone_without_sideways_scrolling(browser: Chromium, base: str, name: str) -> None:
    session = browser.open(base + PAGES[name], 375, 800, mobile=True)
    assert browser.evaluate(session, "document.querySelector('.brand').textContent") == "finews 财经新闻"
    scroll, right, inner = (int(v) for v in browser.evaluate(session, PROBE))
    assert inner == 375
    assert scroll <= 375, f"{name}: the page is {scroll}px wide at 375px"
    assert right <= 375, f"{name}: an element reaches {right}px at 375px"


@pytest.mark.parametrize("name", ["subscribe", "manage", "archive"])
def test_on_a_desktop_the_page_is_a_centred_column_in_the_digest_colours(browser: Chromium, base: str, name: str) -> None:
    session = browser.open(base + PAGES[name], 1280, 900, mobile=False)
    scroll, right, _ = (int(v) for v in browser.evaluate(session, PROBE))
    assert scroll <= 1280 and right <= 1280
    sheet = browser.evaluate(session, "(function () { var r = document.querySelector('.pg').getBoundingClientRect();"
                                      " return [r.left, r.width]; })()")
    assert sheet == [320, 640]  # a 40 rem column in the middle of 1280 px
    colours = browser.evaluate(session, "[getComputedStyle(document.querySelector('.hd')).backgroundColor,"
                                        " getComputedStyle(document.body).backgroundColor]")
    assert colours == ["rgb(179, 38, 30)", "rgb(240, 242, 245)"]  # the digest's #b3261e and #f0f2f5


@pytest.mark.skipif(os.environ.get("FINEWS_UPDATE_SCREENSHOTS") != "1", reason="set FINEWS_UPDATE_SCREENSHOTS=1")
def test_write_screenshots(browser: Chromium, base: str) -> None:
    for page in ("subscribe", "manage", "archive"):
        path = PAGES[page]
        for width, kind in ((375, "mobile"), (1280, "desktop")):
            height = SHOT_HEIGHTS[page, kind]
            session = browser.open(base + path, width, height, mobile=width < 500)
            target = DOCS / f"{page}-{kind}.png"
            browser.screenshot(session, target)
            assert target.stat().st_size > 10_000
