"""The package as installed: everything it loads is inside it; the top-level templates/ are copies to customise.

The wheel itself is built, installed into a fresh virtualenv outside the checkout and run by
``.ci/run`` (``.ci/wheel-check``); these tests hold the same promises quickly.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from finews_feeds.look import STYLESHEET, STYLESHEET_NAME

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "finews_feeds"
BUNDLED = PACKAGE / "templates" / "digest"
COPIES = ROOT / "templates"


def test_the_top_level_templates_are_byte_identical_copies_of_the_bundled_ones() -> None:
    """templates/ is where a publisher copies a template from (digest.templates); it must never drift
    from what the package sends. After changing a bundled template: cp finews_feeds/templates/digest/* templates/"""
    bundled = sorted(p.name for p in BUNDLED.iterdir())
    assert bundled == sorted(p.name for p in COPIES.iterdir())
    assert {"digest.html.j2", "digest.txt.j2", "confirm.html.j2", "confirm.txt.j2"} <= set(bundled)
    for name in bundled:
        assert (COPIES / name).read_bytes() == (BUNDLED / name).read_bytes(), f"templates/{name} differs"


def test_the_package_data_patterns_ship_every_file_the_package_reads() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["finews_feeds"]
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.parts and p.suffix != ".py"]
    assert data, "no data files found"
    missing = [name for name in data if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert missing == []


def test_the_digest_renders_from_a_copy_of_the_package_alone(tmp_path: Path) -> None:
    """As after `pip install .`: the package away from the checkout, run from another folder."""
    shutil.copytree(PACKAGE, tmp_path / "lib" / "finews_feeds", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "demo-site", tmp_path / "site")
    run = tmp_path / "run"
    run.mkdir()
    (run / "finews.toml").write_text('[site]\nsource = "../site"\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lib")}
    where = subprocess.run([sys.executable, "-c", "import finews_feeds; print(finews_feeds.__file__)"],
                           cwd=run, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(tmp_path / "lib" / "finews_feeds" / "__init__.py")
    result = subprocess.run(
        [sys.executable, "-m", "finews_feeds", "--config", "finews.toml", "digest", "--date", "2022-04-20",
         "--html", "digest.html", "--text", "digest.txt", "--out", "feeds"],
        cwd=run, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "2022-04-20: 31 articles, 36855 bytes of HTML"
    assert "每日精选" in (run / "digest.html").read_text(encoding="utf-8")
    assert (run / "feeds" / "digests" / "2022-04-20.html").is_file()
    # The archive's page template and stylesheet come from the package too.
    assert '<time datetime="2022-04-20">2022年4月20日 星期三</time> · 共 31 篇' in (run / "feeds" / "digests" / "index.html").read_text(encoding="utf-8")
    assert (run / "feeds" / "digests" / STYLESHEET_NAME).read_bytes() == STYLESHEET
