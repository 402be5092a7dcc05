"""Slugs for category and tag feeds, and the one way this package percent-encodes URL paths.

A slug names a folder under the output folder, so it must be safe whatever a post's front
matter says: letters (Chinese included) and digits stay, everything else becomes ``-``; a slug
is never empty, ``.`` or ``..``, never holds a separator, never a name Windows reserves, and
never longer than a file system allows. Two names that give the same slug get distinct slugs
that do not depend on which other names exist (a short hash of the name), so a feed's URL does
not move when an unrelated tag appears.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from urllib.parse import quote

#: Longest slug in characters: a CJK character takes 3 bytes and file names stop at 255 bytes.
MAX_CHARS = 60
#: Names Windows refuses as file or folder names, with or without an extension.
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(1, 10)] + [f"lpt{i}" for i in range(1, 10)]
)
_DASHES = re.compile(r"-{2,}")


def _keep(char: str) -> bool:
    # Letters, digits and combining marks (needed by scripts like Devanagari) stay.
    return unicodedata.category(char)[0] in "LNM"


def name_hash(name: str, length: int = 6) -> str:
    """A short, stable hex digest of a name (the same in every process and run)."""
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()[:length]


def base_slug(name: str) -> str:
    """The base slug of a name: lower case, NFKC-normalized, letters and digits kept, runs of
    anything else as one ``-``. May be empty (``！！！``) or reserved; :func:`assign_slugs` fixes that."""
    text = unicodedata.normalize("NFKC", name).lower()
    slug = "".join(c if _keep(c) else "-" for c in text)
    return _DASHES.sub("-", slug).strip("-")


def is_safe_slug(slug: str) -> bool:
    """Whether a slug can be used as one folder name under the output folder."""
    return (
        bool(slug)
        and slug not in (".", "..")
        and len(slug) <= MAX_CHARS + 8
        and slug.split(".")[0] not in _RESERVED
        and all(_keep(c) or c == "-" for c in slug)
    )


def _base(name: str, kind: str) -> tuple[str, bool]:
    """(slug, must_be_suffixed): names whose base slug is empty, to a reserved name or to an
    over-long slug always carry their hash, so that they cannot collide with a plain one."""
    slug = base_slug(name)
    if not slug:
        return kind, True
    if len(slug) > MAX_CHARS:
        return slug[:MAX_CHARS].rstrip("-"), True
    if slug in _RESERVED:
        return slug, True
    return slug, False


def assign_slugs(names: Iterable[str], kind: str, previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """A distinct, safe slug for each name; deterministic for the same names and ``previous``.

    ``previous`` holds the slugs of an earlier build: a name keeps its slug while it stays
    valid and unclaimed, so feed URLs readers subscribed to do not move. Among names sharing a
    base slug, a name that equals its slug wins, else the first in code point order; the others
    get ``<slug>-<hash of name>``.
    """
    previous = previous or {}
    unique = sorted(set(names))
    result: dict[str, str] = {}
    taken: set[str] = set()
    bases = {name: _base(name, kind) for name in unique}
    # Pass 1: keep earlier slugs that are still what this name would be given.
    for name in unique:
        old = previous.get(name)
        if old is None or old in taken or not is_safe_slug(old):
            continue
        base, suffixed = bases[name]
        if (old == base and not suffixed) or old == f"{base}-{name_hash(name)}":
            result[name] = old
            taken.add(old)
    # Pass 2: the rest, exact matches first so `ipo` keeps `ipo` when `IPO` also exists.
    pending = [n for n in unique if n not in result]
    pending.sort(key=lambda n: (bases[n][0] != n, n))
    for name in pending:
        base, suffixed = bases[name]
        slug = base if not suffixed and base not in taken else f"{base}-{name_hash(name)}"
        length = 6
        while slug in taken:  # a hash prefix collision: astronomically rare, but stay distinct
            length += 2
            slug = f"{base}-{name_hash(name, length)}"
        result[name] = slug
        taken.add(slug)
    return result


def quote_segment(segment: str) -> str:
    """Percent-encode one path segment as UTF-8 (``/`` included), upper-case hex as RFC 3986 advises."""
    return quote(segment, safe="-._~!$&'()*+,;=:@")


def quote_path(path: str) -> str:
    """Percent-encode a path, keeping its ``/`` separators and existing ``%XX`` escapes."""
    return quote(path, safe="/%-._~!$&'()*+,;=:@")


def join_url(base: str, *segments: str) -> str:
    """``base`` (no trailing slash needed) plus percent-encoded segments, e.g. a feed's URL."""
    return base.rstrip("/") + "".join("/" + quote_segment(s) for s in segments)
