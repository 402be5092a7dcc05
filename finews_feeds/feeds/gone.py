"""Feeds that are gone: the folders of category and tag feeds a build removed (their category or
tag no longer has posts), kept so the web app answers ``410 Gone`` for them instead of ``404``.

A reader that gets 404 may take it for a slip of the server and keep polling for ever; 410 says
the feed will not come back (RFC 9110 15.5.11), and Miniflux, NetNewsWire and feedparser-based
readers stop or flag the subscription. The build records the folders in ``.finews-gone.json``
in the output folder (:data:`GONE`, a dot-file: the web app does not serve it), next to its
manifest, so the daemon and any script configuring a static host (docs/feeds.md) read the same
list. A folder leaves the list when its feed comes back.

The record is a set of folders, not of files: a feed's files in every format, its browser page
and its archive documents (``<folder>/archive/<N>/...``) are gone together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from .plan import FEED_FOLDERS
from .writer import OutputDir

GONE = ".finews-gone.json"
GONE_VERSION = 1

log = logging.getLogger(__name__)


def feed_folder(rel: str) -> str | None:
    """The feed folder (``categories/<slug>`` or ``tags/<slug>``) a relative path is in, or None
    (the site's own feeds, listings, digests are never gone)."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0] in FEED_FOLDERS and parts[1]:
        return f"{parts[0]}/{parts[1]}"
    return None


def gone_after(previous: Iterable[str], removed: Iterable[str], current: Iterable[str]) -> list[str]:
    """The gone folders after a build that removed the files ``removed`` and keeps ``current``:
    those gone before or emptied now, less those that have a feed again. Sorted."""
    alive = {folder for folder in map(feed_folder, current) if folder}
    emptied = {folder for folder in map(feed_folder, removed) if folder}
    return sorted((set(previous) | emptied) - alive)


def encode(folders: Iterable[str]) -> bytes:
    return json.dumps({"version": GONE_VERSION, "folders": sorted(folders)}, ensure_ascii=False,
                      indent=0).encode("utf-8")


def decode(raw: bytes) -> frozenset[str]:
    """The folders of a gone file; empty when it is unreadable or foreign (404 instead of 410 is
    the harmless mistake)."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != GONE_VERSION:
            return frozenset()
        return frozenset(str(folder) for folder in data["folders"] if feed_folder(f"{folder}/x") == folder)
    except (ValueError, KeyError, TypeError):
        return frozenset()


def read_gone(out: OutputDir) -> frozenset[str]:
    try:
        return decode((out.root / GONE).read_bytes())
    except OSError:
        return frozenset()


def record_gone(out: OutputDir, removed: Iterable[str], current: Iterable[str]) -> list[str]:
    """Update the gone file after a build (written only when its bytes change); the gone folders."""
    removed = list(removed)
    previous = read_gone(out)
    if not removed and not previous:
        return []  # the common build: nothing was ever removed, nothing to read or write
    folders = gone_after(previous, removed, current)
    if folders or previous:
        out.write(GONE, encode(folders))
    return folders
