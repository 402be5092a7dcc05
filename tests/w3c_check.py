"""The W3C feed validator (github.com/w3c/feedvalidator, its ``src/`` folder; needs html5lib)
over every RSS and Atom file of a feeds folder: errors (level A) and warnings (level AA).

    FINEWS_FEEDVALIDATOR=/path/to/feedvalidator/src python tests/w3c_check.py FEEDS_FOLDER BASE_URL

Prints each document with messages and exits 1 when any has an error. Not on PyPI, so not a test
dependency: ``tests/test_archives.py`` runs it when ``FINEWS_FEEDVALIDATOR`` finds it (docs/feeds.md).
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from pathlib import Path
from types import ModuleType


def load() -> ModuleType | None:
    """The validator's package, from ``FINEWS_FEEDVALIDATOR`` or installed; None when absent."""
    folder = os.environ.get("FINEWS_FEEDVALIDATOR")
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        import feedvalidator  # type: ignore[import-not-found]
    except ImportError:
        return None
    return feedvalidator  # type: ignore[no-any-return]


def messages(validator: ModuleType, root: Path, base_url: str) -> dict[str, tuple[list[str], list[str]]]:
    """Relative path -> (errors, warnings) of every ``*.xml`` feed under ``root``, as the
    validator words them; documents without any are left out. ``base_url``: the public URL of
    ``root`` (the validator checks ``rel="self"`` against it)."""
    from feedvalidator import compatibility  # type: ignore[import-not-found]
    from feedvalidator.formatter.text_plain import Formatter  # type: ignore[import-not-found]

    found = {}
    for path in sorted(root.rglob("*.xml")):
        rel = path.relative_to(root).as_posix()
        events = validator.validateString(path.read_bytes(), firstOccurrenceOnly=1,
                                          base=base_url.rstrip("/") + "/" + urllib.parse.quote(rel))["loggedEvents"]
        errors, warnings = Formatter(compatibility.A(events)), Formatter(compatibility.AA(events))
        if errors or warnings:
            found[rel] = (list(errors), [w for w in warnings if w not in errors])
    return found


def main(argv: list[str]) -> int:
    validator = load()
    if validator is None:
        print("feedvalidator not found: set FINEWS_FEEDVALIDATOR to its src folder", file=sys.stderr)
        return 2
    root, base_url = Path(argv[0]), argv[1]
    found = messages(validator, root, base_url)
    for rel, (errors, warnings) in found.items():
        for line in errors:
            print(f"{rel}: error: {line}")
        for line in warnings:
            print(f"{rel}: warning: {line}")
    print(f"{sum(1 for _ in root.rglob('*.xml'))} documents, {sum(1 for e, _ in found.values() if e)} with errors, "
          f"{sum(1 for _, w in found.values() if w)} with warnings")
    return 1 if any(errors for errors, _ in found.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
