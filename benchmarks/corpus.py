"""Where the benchmarks find the site generator: the corpus shared beside the project, or $FINEWS_MAKE_SITE."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The corpus lives next to the checkout, not in it (every checkout shares one); a checkout
#: elsewhere (a git worktree, say) names it with FINEWS_MAKE_SITE.
MAKE_SITE = Path(os.environ.get("FINEWS_MAKE_SITE") or ROOT.parent / "shared" / "corpus" / "make_site.py")


def site_generator() -> Path:
    """The generator's path, or an exit that says how to name it."""
    if not MAKE_SITE.is_file():
        raise SystemExit(f"site generator not found at {MAKE_SITE}: set FINEWS_MAKE_SITE to the path of make_site.py")
    return MAKE_SITE
