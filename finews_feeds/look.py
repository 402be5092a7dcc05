"""The look of every web page: the Jinja environment of ``templates/web`` and the one stylesheet.

Shared by the web app's pages (:mod:`.service.pages`) and the digest archive's static pages
(:mod:`.mail.archive`), so both look alike and like the digest. The stylesheet is named by a hash
of its bytes (``site.<hash>.css``): a browser may keep it for a year, and a new version is a new
name, whoever serves it (the web app at ``/static/``, a static host next to the archive).
"""

from __future__ import annotations

import hashlib
from importlib import resources

import jinja2

#: The stylesheet's bytes, read once from the package.
STYLESHEET = resources.files("finews_feeds").joinpath("templates/web/site.css").read_bytes()
STYLESHEET_HASH = hashlib.sha256(STYLESHEET).hexdigest()[:12]
#: Its file name, for the web app and for the static archive alike.
STYLESHEET_NAME = f"site.{STYLESHEET_HASH}.css"
#: Where the web app serves it.
STYLESHEET_URL = f"/static/{STYLESHEET_NAME}"

# One per process: each template is compiled on first use and kept.
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("finews_feeds", "templates/web"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
# What a page of the web app links to unless its context says otherwise (the archive's static
# pages give relative links, as they may be served from any folder).
ENVIRONMENT.globals.update(stylesheet=STYLESHEET_URL, home_url="/", archive_url="/digests/", site_title="")
