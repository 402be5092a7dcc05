"""Resolve a site's settings: our config first, then the site's ``_config.yml``, then Jekyll's defaults.

An operator should not have to write the site URL, title or time zone twice, so anything our
config leaves unset is read from the Jekyll site itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ..config import Config
from ..errors import SiteError
from ..models import FrontMatterLimits, Site

#: Jekyll's built-in permalink styles.
PERMALINK_STYLES = {
    "date": "/:categories/:year/:month/:day/:title:output_ext",
    "pretty": "/:categories/:year/:month/:day/:title/",
    "ordinal": "/:categories/:year/:y_day/:title:output_ext",
    "weekdate": "/:categories/:year/W:week/:short_day/:title:output_ext",
    "none": "/:categories/:title:output_ext",
}
DEFAULT_TIMEZONE = "Asia/Shanghai"

try:  # the C loader is several times faster than the pure-Python one
    YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    YamlLoader = yaml.SafeLoader


def read_jekyll_config(source: Path) -> dict[str, Any]:
    """The site's ``_config.yml`` as a mapping ({} when there is none)."""
    path = source / "_config.yml"
    if not path.is_file():
        return {}
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=YamlLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SiteError(f"{path}: cannot read the site's config: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SiteError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return dict(data)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def resolve_site(config: Config) -> Site:
    """Build the :class:`Site` for ``config.site.source``; a missing folder is a :class:`SiteError`."""
    cfg = config.site
    source = Path(cfg.source)
    if not source.is_dir():
        raise SiteError(f"site folder {source} does not exist", hint="pass --site DIR or set site.source")
    jekyll = read_jekyll_config(source)

    url = cfg.url if cfg.url is not None else _text(jekyll.get("url")) or ""
    baseurl = cfg.baseurl if cfg.baseurl is not None else _text(jekyll.get("baseurl")) or ""
    full_url = (url.rstrip("/") + "/" + baseurl.strip("/")).rstrip("/") if baseurl.strip("/") else url.rstrip("/")
    if not full_url:
        full_url = "http://localhost:4000"

    zone_name = cfg.timezone or _text(jekyll.get("timezone")) or DEFAULT_TIMEZONE
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SiteError(f"timezone = {zone_name!r} (from {source / '_config.yml'}): not a known time zone") from None

    permalink = cfg.permalink or _text(jekyll.get("permalink")) or "date"
    permalink = PERMALINK_STYLES.get(permalink, permalink)

    future = cfg.future if cfg.future is not None else bool(jekyll.get("future", False))
    encoding = cfg.encoding or _text(jekyll.get("encoding")) or "utf-8"
    try:
        "".encode(encoding)
    except LookupError:
        raise SiteError(f"encoding = {encoding!r}: not a known text encoding") from None

    return Site(
        source=str(source),
        url=full_url,
        title=cfg.title or _text(jekyll.get("title")) or "finews",
        timezone=zone,
        language=cfg.language,
        permalink=permalink,
        category_url=cfg.category_url,
        tag_url=cfg.tag_url,
        future=future,
        encoding=encoding,
        summary_chars=cfg.summary_chars,
        extensions=tuple(cfg.extensions),
        category_titles={slug: c.title for slug, c in config.categories.items() if c.title},
        category_order={slug: c.order for slug, c in config.categories.items()},
        limits=FrontMatterLimits(
            chars=config.collector.max_front_matter_chars,
            aliases=config.collector.max_front_matter_aliases,
            nodes=config.collector.max_front_matter_nodes,
            depth=config.collector.max_front_matter_depth,
            tags=config.collector.max_tags,
            categories=config.collector.max_categories,
        ),
    )
