"""Resolve a site's settings: our config first, then the site's ``_config.yml``, then Jekyll's defaults.

An operator should not have to write the site URL, title or time zone twice, so anything our
config leaves unset is read from the Jekyll site itself.
"""

from __future__ import annotations

import csv
import hashlib
import html.entities
import io
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ..config import Config
from ..errors import SiteError
from ..models import JEKYLL_EXCLUDES, JEKYLL_INCLUDES, FrontMatterLimits, Site
from .markup import html_to_text

log = logging.getLogger(__name__)

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


def _patterns(jekyll: Mapping[str, Any], key: str, source: Path, default: tuple[str, ...]) -> tuple[str, ...]:
    """`exclude` or `include` of `_config.yml`: a list (Jekyll refuses anything else); its
    strings are the patterns (``EntryFilter#glob_include?`` ignores other values)."""
    if key not in jekyll:
        return default
    value = jekyll[key]
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SiteError(f"{key} = {value!r} (in {source / '_config.yml'}): expected a list of paths or patterns")
    return tuple(item for item in value if isinstance(item, str))


#: `_data` files Jekyll reads (``DataReader``), by ending.
DATA_ENDINGS = (".yaml", ".yml", ".json", ".csv", ".tsv")


def read_data(folder: Path) -> dict[str, Any]:
    """The site's data files (`_data`), as Liquid's ``site.data``: each file by its name without
    ending, each folder a mapping of its own (``DataReader#read_data_to``). A file that cannot
    be read is left out with a warning, as Jekyll stops on it."""
    data: dict[str, Any] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return data
    for name in names:
        if name[0] in "._#~" or name.endswith("~"):
            continue
        path = folder / name
        key = _data_key(name if path.is_dir() else os.path.splitext(name)[0])
        if path.is_dir():
            data[key] = read_data(path)
        elif name.lower().endswith(DATA_ENDINGS):
            try:
                data[key] = _data_file(path)
            except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, csv.Error) as exc:
                log.warning("%s: cannot read this data file (%s); site.data.%s left out", path, exc, key)
    return data


def _data_key(name: str) -> str:
    # DataReader#sanitize_filename: other characters dropped, spaces at either end dropped, runs made `_`
    return re.sub(r"\s+", "_", re.sub(r"[^\w\s-]+", "", name).strip())


def _data_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8-sig")
    ending = path.suffix.lower()
    if ending == ".json":
        return json.loads(text)
    if ending in (".csv", ".tsv"):
        return list(csv.DictReader(io.StringIO(text), delimiter="," if ending == ".csv" else "\t"))
    return yaml.load(text, Loader=YamlLoader)


#: kramdown's default ``smart_quotes`` (Jekyll's configuration): entity names of ‘ ’ “ ”.
SMART_QUOTES = "lsquo,rsquo,ldquo,rdquo"


def markdown_settings(jekyll: Mapping[str, Any]) -> tuple[str, str]:
    """What the site's Markdown converter adds to CommonMark: kramdown's header ids (GFM input's
    by default, kramdown's own with ``kramdown.input: kramdown``, none with ``auto_ids: false``)
    and the characters of its smart quotes (``kramdown.smart_quotes``, entity names or numbers);
    nothing for another converter (``markdown``)."""
    if str(jekyll.get("markdown") or "kramdown").lower() != "kramdown":
        return "", ""
    options = jekyll.get("kramdown")
    options = options if isinstance(options, Mapping) else {}
    ids = ""
    if options.get("auto_ids", True) is not False:
        ids = "gfm" if str(options.get("input") or "GFM").lower() == "gfm" else "kramdown"
    chars = [_entity(name.strip()) for name in str(options.get("smart_quotes") or SMART_QUOTES).split(",")]
    quotes = "".join(c for c in chars if c) if len(chars) == 4 and all(chars) else "‘’“”"
    return ids, quotes


def _entity(name: str) -> str | None:
    if name.isdigit():
        return chr(int(name)) if 0 < int(name) < 0x110000 else None
    code = html.entities.name2codepoint.get(name) if name != "apos" else ord("'")
    return chr(code) if code is not None else None


def includes_digest(folder: Path) -> str:
    """A digest of every file under ``folder`` (the site's `_includes`): names and bytes."""
    digest = hashlib.blake2b(digest_size=12)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []:
        digest.update(path.relative_to(folder).as_posix().encode("utf-8", "surrogateescape") + b"\x00")
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()


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

    destination = Path(_text(jekyll.get("destination")) or "_site")
    destination = destination if destination.is_absolute() else source / destination
    try:
        destination_rel = destination.resolve().relative_to(source.resolve()).as_posix()
    except ValueError:
        destination_rel = ""
    header_ids, smart_quotes = markdown_settings(jekyll)
    collections_dir = jekyll.get("collections_dir") or ""
    if not isinstance(collections_dir, str):
        raise SiteError(f"collections_dir = {collections_dir!r} (in {source / '_config.yml'}): expected a folder name")
    return Site(
        source=str(source),
        url=full_url,
        # Plain text wherever a title is shown (feeds, OPML, the digest's subject), as jekyll-feed strips it.
        title=html_to_text(cfg.title or _text(jekyll.get("title")) or "") or "finews",
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
        # Jekyll adds its own excludes to the site's (Configuration#add_default_excludes), unless
        # the site's `exclude` is null.
        exclude=(tuple(dict.fromkeys((*_patterns(jekyll, "exclude", source, ()), *JEKYLL_EXCLUDES)))
                 if "exclude" not in jekyll or jekyll["exclude"] is not None else ()),
        include=_patterns(jekyll, "include", source, JEKYLL_INCLUDES),
        collections_dir=collections_dir,
        destination=destination_rel if destination_rel != "." else "",
        config=jekyll,
        data=read_data(source / (_text(jekyll.get("data_dir")) or "_data")),
        includes_digest=includes_digest(source / (_text(jekyll.get("includes_dir")) or "_includes")),
        baseurl="/" + baseurl.strip("/") if baseurl.strip("/") else "",
        header_ids=header_ids,
        smart_quotes=smart_quotes,
    )
