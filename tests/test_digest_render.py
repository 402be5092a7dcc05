"""The digest as a person sees it: rendered by headless Chromium at phone and desktop widths.

Skipped where Chromium is absent. With FINEWS_UPDATE_SCREENSHOTS=1 it also writes
docs/digest-mobile.png (375 px) and docs/digest-desktop.png (600 px). This machine has no internet
access, so thumbnails are swapped for local placeholder images of the same aspect ratio.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_digest import DAY, ROOT, config_for, make_post

from finews_feeds.config import Config
from finews_feeds.mail.digest import DigestRenderer, Recipient, Selection, write_preview
from finews_feeds.site.jekyll import resolve_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
DOCS = ROOT / "docs"
PROBE = """(function () {
  var right = 0;
  document.querySelectorAll('body *').forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > right) { right = r.right; }
  });
  return [document.documentElement.scrollWidth, Math.ceil(right), window.innerWidth];
})()"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (no extra packages).

    The protocol, not --window-size: headless Chromium will not make a window narrower than
    500 px, so a phone's 375 px viewport has to be emulated."""

    def __init__(self) -> None:
        assert CHROMIUM is not None
        self.profile = tempfile.TemporaryDirectory()
        to_child, self._to_chrome = os.pipe()
        self._from_chrome, from_child = os.pipe()

        def pipes_at_3_and_4() -> None:
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_at_3_and_4, close_fds=False,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + 40

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > self.deadline:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], 1.0)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        result: dict[str, Any] = json.loads(message)
        return result

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        self.deadline = time.monotonic() + 30  # per command: a slow, shared machine must not fail the test
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))
            self._events.append(answer)

    def wait_for(self, method: str, session: str) -> None:
        self.deadline = time.monotonic() + 30
        while True:
            for event in self._events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return
            self._events.append(self._read())

    def open(self, url: str, width: int, height: int, *, mobile: bool) -> str:
        """A page at ``url`` in a viewport of ``width`` CSS pixels; returns its session."""
        self._events = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = str(self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}, session)
        self.send("Page.enable", {}, session)
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, TimeoutError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self.profile.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    instance = Chromium()
    try:
        yield instance
    finally:
        instance.close()


def local_images(html: str, folder: Path) -> str:
    """Swap each remote thumbnail for a local SVG with the size its file name announces."""
    def swap(match: re.Match[str]) -> str:
        url = match.group(1)
        size = re.search(r"_w(\d+)h(\d+)", url)
        width, height = (int(size.group(1)), int(size.group(2))) if size else (1200, 800)
        digest = int(hashlib.sha256(url.encode()).hexdigest()[:8], 16)  # stable across runs, unlike hash()
        name = f"img{digest}.svg"
        hue = digest % 360
        (folder / name).write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<rect width="100%" height="100%" fill="hsl({hue},45%,62%)"/>'
            f'<circle cx="{width * 0.3:.0f}" cy="{height * 0.4:.0f}" r="{min(width, height) / 5:.0f}" fill="#fff" '
            f'fill-opacity="0.5"/></svg>',
            encoding="utf-8",
        )
        return f'src="{name}"'

    return re.sub(r'src="(https?://[^"]+)"', swap, html)


def probe(browser: Chromium, html: str, folder: Path, width: int) -> tuple[int, int, int]:
    """(document width, right edge of the widest element, viewport width) at ``width`` px."""
    page = folder / f"probe-{width}.html"
    page.write_text(html, encoding="utf-8")
    session = browser.open(page.as_uri(), width, 900, mobile=width < 500)
    values = browser.evaluate(session, PROBE)
    scroll, right, inner = (int(v) for v in values)
    return scroll, right, inner


def stress_html(config: Config) -> str:
    """A digest with the things that push a phone layout wide: unbroken Latin runs, long URLs,
    a big image, a long category name and address."""
    site = resolve_site(config)
    long_token = "SuperLongUnbrokenTickerSymbolAndIdentifier" * 3
    posts = [
        make_post(1, title=f"标题 {long_token}", summary=f"摘要 https://example.com/{'a' * 150} 结束",
                  image="https://img.example.com/D1_w3000h900.jpg"),
        make_post(2, "jrj", hour=8, title="短标题", summary="普通摘要。" * 20, source="来源" * 20),
        replace(make_post(3, "a-very-long-category-name-without-any-space-at-all-in-it", hour=7), tags=("x" * 80,)),
    ]
    variant = DigestRenderer(config, site, lambda p: f"<p>{long_token} <a href='https://example.com/{'b' * 120}'>"
                                                      f"https://example.com/{'b' * 120}</a></p>").render(
        DAY, posts, Selection())
    assert variant is not None
    html, _ = variant.personalize(Recipient("someone.with.a.really.long.address@subdomain.example.org",
                                            "名" * 30, "https://news.example.com/unsubscribe/" + "t" * 120))
    return html


@pytest.fixture(scope="module")
def demo_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("render")
    config = config_for(ROOT / "demo-site", tmp, postal_address="上海市浦东新区世纪大道 100 号 finews 编辑部")
    write_preview(config, DAY, now=datetime(2022, 4, 21, 7, 30, tzinfo=ZoneInfo("Asia/Shanghai")),
                  html_path=tmp / "digest.html", out_dir=tmp)
    return (tmp / "digest.html").read_text(encoding="utf-8")


def test_demo_digest_does_not_overflow_a_375px_phone(browser: Chromium, demo_html: str, tmp_path: Path) -> None:
    scroll, right, inner = probe(browser, local_images(demo_html, tmp_path), tmp_path, 375)
    assert inner == 375
    assert scroll <= 375, f"page is {scroll}px wide at 375px"
    assert right <= 375, f"an element reaches {right}px at 375px"


def test_hostile_content_does_not_overflow_a_375px_phone(browser: Chromium, tmp_path: Path) -> None:
    html = stress_html(config_for(ROOT / "demo-site", tmp_path, postal_address="地址" * 60))
    scroll, right, _ = probe(browser, local_images(html, tmp_path), tmp_path, 375)
    assert scroll <= 375, f"page is {scroll}px wide at 375px"
    assert right <= 375, f"an element reaches {right}px at 375px"


def test_desktop_pane_holds_the_600px_box(browser: Chromium, demo_html: str, tmp_path: Path) -> None:
    scroll, right, inner = probe(browser, local_images(demo_html, tmp_path), tmp_path, 600)
    assert inner == 600
    assert scroll <= 600 and right <= 600
    # The desktop layout: the box spans the pane, with the wide side padding.
    session = browser.open((tmp_path / "probe-600.html").as_uri(), 600, 900, mobile=False)
    box = browser.evaluate(session, "document.querySelector('.box').getBoundingClientRect().width")
    pad = browser.evaluate(session, "getComputedStyle(document.querySelector('.pad')).paddingLeft")
    assert (box, pad) == (600, "28px")


@pytest.mark.skipif(os.environ.get("FINEWS_UPDATE_SCREENSHOTS") != "1", reason="set FINEWS_UPDATE_SCREENSHOTS=1")
def test_write_screenshots(browser: Chromium, demo_html: str, tmp_path: Path) -> None:
    page = tmp_path / "digest.html"
    page.write_text(local_images(demo_html, tmp_path), encoding="utf-8")
    for width, height, name in ((375, 2000, "digest-mobile.png"), (600, 1900, "digest-desktop.png")):
        session = browser.open(page.as_uri(), width, height, mobile=width < 500)
        browser.screenshot(session, DOCS / name)
        assert (DOCS / name).stat().st_size > 10_000
