"""The site generator the tests run: the copy in this repository, so that a clean clone needs nothing beside it."""

from __future__ import annotations

from pathlib import Path

#: A verbatim copy of ``../shared/corpus/make_site.py`` (the benchmarks run that one, see
#: benchmarks/corpus.py); refresh it when the shared generator changes.
MAKE_SITE = Path(__file__).resolve().parent / "data" / "collector" / "make_site.py"
