"""Jekyll fidelity (issue 18): the site in tests/data/jekyll/site, written for jekyll-feed, built by
Debian's `jekyll` and `ruby-jekyll-feed` and by us: every post the same URL, title, date, author,
categories, tags and body text; the feeds show what jekyll-feed shows. Then each item on its own:
the walk (exclude, include, collections_dir), Liquid, excerpt-only posts, titles, authors, header
ids and typography."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from feed_checks import atom_problems, json_feed_problems, rss_problems
from lxml import etree, html

from finews_feeds.config import build_config
from finews_feeds.errors import SiteError
from finews_feeds.feeds import build as buildmod
from finews_feeds.feeds.plan import FeedOptions, FeedSpec
from finews_feeds.feeds.render import entry_data, render_feed
from finews_feeds.mail.digest import DigestRenderer, Selection
from finews_feeds.models import Post, PostSet, Site
from finews_feeds.site import liquid, walk
from finews_feeds.site.collector import Collection, collect
from finews_feeds.site.jekyll import resolve_site
from finews_feeds.site.markup import Style, header_id, render_markdown, smart_quotes, typography
from finews_feeds.site.posts import read_front, render

DATA = Path(__file__).parent / "data" / "jekyll"
SITE = DATA / "site"
ATOM = "{http://www.w3.org/2005/Atom}"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
QUOTES = "‘’“”"


def site_of(root: Path, **values: object) -> Site:
    return resolve_site(build_config({"site": {"source": str(root), **values}}))


def text_of(fragment: str) -> str:
    """The text a reader sees: tags dropped, whitespace (a no-break space too) collapsed."""
    if not fragment.strip():
        return ""
    return re.sub(r"\s+", " ", html.fromstring(f"<div>{fragment}</div>").text_content()).strip()


# --------------------------------------------------------------------------- the site, built by Jekyll


def _have_jekyll() -> bool:
    if shutil.which("jekyll") is None:
        return False
    probe = subprocess.run(["ruby", "-e", "require 'jekyll-feed'"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def jekyll_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test site as `jekyll build` writes it (Debian's jekyll and ruby-jekyll-feed, installed
    here when missing; the tests are skipped, saying why, when they cannot be)."""
    if not _have_jekyll():
        apt = shutil.which("apt-get")
        tried = ""
        if apt is not None:
            for command in ([apt, "install", "-y", "-q", "jekyll", "ruby-jekyll-feed"], [apt, "update", "-q"],
                            [apt, "install", "-y", "-q", "jekyll", "ruby-jekyll-feed"]):
                done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
                tried = done.stderr.strip().splitlines()[-1:] and done.stderr.strip().splitlines()[-1]
                if command[1] == "install" and done.returncode == 0:
                    break
        if not _have_jekyll():
            pytest.skip(f"Debian's jekyll and ruby-jekyll-feed are not installed and `apt-get install jekyll "
                        f"ruby-jekyll-feed` failed ({tried or 'no apt-get'}): the comparison with Jekyll is skipped")
    work = tmp_path_factory.mktemp("jekyll")
    source, out = work / "site", work / "out"
    shutil.copytree(SITE, source)
    done = subprocess.run(["jekyll", "build", "--source", str(source), "--destination", str(out)],
                          capture_output=True, text=True, check=False, cwd=work, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collection, Path]]:
    work = tmp_path_factory.mktemp("ours")
    config = build_config({"site": {"source": str(SITE), "cache_dir": str(work / "cache")},
                           "feeds": {"output": str(work / "out")}})
    buildmod.run_build(config, now=NOW)
    collection = collect(resolve_site(config), work / "cache", NOW)
    yield collection, work / "out"
    collection.close()


def jekyll_entries(out: Path) -> dict[str, etree._Element]:
    root = etree.parse(str(out / "feed.xml")).getroot()
    return {entry.find(f"{ATOM}link").get("href"): entry for entry in root.iter(f"{ATOM}entry")}


def _author(entry: etree._Element) -> tuple[str | None, str | None, str | None]:
    author = entry.find(f"{ATOM}author")
    if author is None:
        return (None, None, None)
    return tuple((author.findtext(f"{ATOM}{name}") or "").strip() or None  # type: ignore[return-value]
                 for name in ("name", "email", "uri"))


def test_every_post_jekyll_publishes_is_ours_at_the_same_url_and_no_other(
        jekyll_build: Path, ours: tuple[Collection, Path]) -> None:
    collection, _ = ours
    theirs = jekyll_entries(jekyll_build)
    assert sorted(p.url for p in collection.posts) == sorted(theirs)
    assert collection.errors == []
    # What the site's _config.yml leaves out (exclude, _-folders, node_modules) is out of both.
    assert not any(word in url for url in theirs for word in ("excluded", "skipped", "hidden", "node", "notes", "draft"))


def test_every_post_has_jekyll_feeds_title_date_author_and_terms(jekyll_build: Path, ours: tuple[Collection, Path]) -> None:
    collection, _ = ours
    theirs = jekyll_entries(jekyll_build)
    for post in collection.posts:
        entry = theirs[post.url]
        assert post.title == entry.findtext(f"{ATOM}title"), post.path
        assert post.date.isoformat() == entry.findtext(f"{ATOM}published"), post.path
        assert (post.author, post.author_email, post.author_uri) == _author(entry), post.path
        terms = [c.get("term") for c in entry.iter(f"{ATOM}category")]
        assert [*post.categories, *post.tags] == terms, post.path


def test_every_body_has_the_text_jekyll_renders(jekyll_build: Path, ours: tuple[Collection, Path]) -> None:
    collection, _ = ours
    for post in collection.posts:
        path = jekyll_build / post.permalink.removeprefix("/").replace("%20", " ")
        assert text_of(collection.content(post)) == text_of(path.read_text(encoding="utf-8")), post.path


def test_our_atom_feed_shows_what_jekyll_feed_shows(jekyll_build: Path, ours: tuple[Collection, Path]) -> None:
    _, out = ours
    theirs = jekyll_entries(jekyll_build)
    root = etree.parse(str(out / "atom.xml")).getroot()
    mine = {entry.find(f"{ATOM}link").get("href"): entry for entry in root.findall(f"{ATOM}entry")}
    assert sorted(mine) == sorted(theirs)
    for url, entry in theirs.items():
        feed = mine[url]
        assert feed.findtext(f"{ATOM}title") == entry.findtext(f"{ATOM}title")
        assert feed.findtext(f"{ATOM}published") == entry.findtext(f"{ATOM}published")
        assert _author(feed) == _author(entry)
        assert [c.get("term") for c in feed.iter(f"{ATOM}category")] == [c.get("term") for c in entry.iter(f"{ATOM}category")]
        # excerpt_only: neither shows the content
        assert (feed.find(f"{ATOM}content") is None) == (entry.find(f"{ATOM}content") is None), url
        if entry.find(f"{ATOM}content") is not None:
            assert text_of(feed.findtext(f"{ATOM}content") or "") == text_of(entry.findtext(f"{ATOM}content") or "")
    assert root.find(f"{ATOM}author/{ATOM}name").text == "Site Owner"  # _config.yml author, as jekyll-feed


def test_json_feed_and_rss_carry_the_author_and_leave_out_an_excerpt_only_post_s_content(ours: tuple[Collection, Path]) -> None:
    _, out = ours
    for path in out.rglob("*"):
        check = {"atom.xml": atom_problems, "rss.xml": rss_problems, "feed.json": json_feed_problems}.get(path.name)
        assert check is None or check(path.read_bytes()) == [], path
    items = {item["url"]: item for item in json.loads((out / "feed.json").read_text(encoding="utf-8"))["items"]}
    second = items["https://example.org/blog/news/2023/01/03/second.html"]
    assert second["authors"] == [{"name": "Ann Other", "url": "https://ann.example.org"}]
    assert "content_html" not in second and second["content_text"] == "A short description"
    liquid_post = items["https://example.org/blog/news/2023/01/02/liquid.html"]
    assert liquid_post["authors"] == [{"name": "Garth Braithwaite", "url": "https://garthdb.com"}]
    assert liquid_post["title"] == "Sparkling Title"
    rss = etree.parse(str(out / "rss.xml")).getroot()
    by_link = {item.findtext("link"): item for item in rss.iter("item")}
    item = by_link["https://example.org/blog/news/2023/01/03/second.html"]
    assert item.findtext("author") == "ann@example.org (Ann Other)"
    assert item.findtext("{http://purl.org/dc/elements/1.1/}creator") == "Ann Other"
    assert item.find("{http://purl.org/rss/1.0/modules/content/}encoded") is None


# --------------------------------------------------------------------------- the walk: exclude, include, collections_dir


def write(path: Path, text: str = "---\ntitle: t\n---\nbody\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def walked(root: Path) -> list[str]:
    return sorted(entry.path for entry in walk.walk(site_of(root)))


def test_exclude_and_include_of_config_yml_decide_which_files_are_posts(tmp_path: Path) -> None:
    write(tmp_path / "_config.yml", "exclude: [drafts-old, '_posts/2023-02-*', 'deep/x.md', notes/]\ninclude: [_extra, .well]\n")
    for rel in ("_posts/2023-01-01-a.md", "_posts/2023-02-01-glob.md", "drafts-old/_posts/2023-01-02-b.md",
                "drafts-older/_posts/2023-01-03-prefix.md", "notes/_posts/2023-01-04-c.md", "_extra/_posts/2023-01-05-d.md",
                ".well/_posts/2023-01-06-e.md", "vendor/_posts/2023-01-07-f.md", "vendor/bundle/_posts/2023-01-08-g.md",
                "node_modules/_posts/2023-01-09-h.md", "_posts/sub/_inner/2023-01-10-i.md", "_posts/_sub/2023-01-11-j.md",
                "_site/_posts/2023-01-12-k.md", "x./_posts/2023-01-13-l.md"):
        write(tmp_path / rel)
    # What `jekyll build` 4.3.1 publishes of this tree, checked by hand:
    assert walked(tmp_path) == [".well/_posts/2023-01-06-e.md", "_extra/_posts/2023-01-05-d.md", "_posts/2023-01-01-a.md",
                                "_posts/sub/_inner/2023-01-10-i.md", "vendor/_posts/2023-01-07-f.md"]
    site = site_of(tmp_path)
    for rel in walked(tmp_path):
        assert walk.walked(site, rel)
    assert not walk.walked(site, "drafts-older/_posts/2023-01-03-prefix.md")  # `drafts-old` is a prefix of it
    assert not walk.entered(site, "notes") and walk.entered(site, "_extra") and walk.entered(site, "vendor")


def test_an_include_pattern_lets_in_a_post_under_a_special_folder_of_posts(tmp_path: Path) -> None:
    write(tmp_path / "_config.yml", "include: ['_sub']\n")
    write(tmp_path / "_posts/_sub/2023-01-11-j.md")
    write(tmp_path / "_posts/_other/2023-01-12-k.md")
    assert walked(tmp_path) == ["_posts/_sub/2023-01-11-j.md"]


def test_with_collections_dir_only_the_posts_folders_under_it_are_read(tmp_path: Path) -> None:
    write(tmp_path / "_config.yml", "collections_dir: my_collections\n")
    write(tmp_path / "_posts/2023-03-02-root.md")
    write(tmp_path / "my_collections/_posts/2023-03-01-a.md")
    write(tmp_path / "my_collections/news/_posts/2023-03-03-b.md")
    write(tmp_path / "other/_posts/2023-03-04-c.md")
    assert walked(tmp_path) == ["my_collections/_posts/2023-03-01-a.md", "my_collections/news/_posts/2023-03-03-b.md"]
    posts = {p.path: p for p in collect(site_of(tmp_path), None, NOW).posts}
    # Jekyll's relative path starts at collections_dir: its folder is no category
    assert posts["my_collections/_posts/2023-03-01-a.md"].categories == ()
    assert posts["my_collections/news/_posts/2023-03-03-b.md"].categories == ("news",)
    assert posts["my_collections/news/_posts/2023-03-03-b.md"].permalink == "/news/2023/03/03/b.html"


def test_exclude_must_be_a_list_as_jekyll_requires(tmp_path: Path) -> None:
    write(tmp_path / "_config.yml", "exclude: notes\n")
    with pytest.raises(SiteError, match=r"exclude = 'notes'.*expected a list"):
        site_of(tmp_path)


# --------------------------------------------------------------------------- Liquid


def liquid_site(tmp_path: Path, config: str = "title: T\nurl: https://ex.org\nbaseurl: /b\n") -> Path:
    write(tmp_path / "_config.yml", config)
    write(tmp_path / "_includes/hello.html", "Hello {{ include.who }} on {{ page.title }}")
    write(tmp_path / "_posts/2023-01-01-target.md", "---\ntitle: Target\n---\nThe target.\n")
    return tmp_path


def body_of(site: Path, rel: str) -> tuple[str, list[str]]:
    collection = collect(site_of(site), None, NOW)
    posts = {p.path: p for p in collection.posts}
    errors = [f"{e.path}: {e.message}" for e in collection.errors]
    return (collection.content(posts[rel]) if rel in posts else ""), errors


def test_liquid_in_a_body_is_rendered_with_site_page_include_and_links(tmp_path: Path) -> None:
    site = liquid_site(tmp_path)
    write(site / "_posts/2023-01-02-p.md", "---\ntitle: P\ntags: [b, a]\n---\n"
          "{{ site.title }} {{ site.baseurl }} {{ page.title | upcase }} {{ page.tags | sort | join: '+' }}\n\n"
          "{% capture x %}not bad{% endcapture %}{{ x | replace: 'not ', '' }} {% include hello.html who=\"you\" %}\n\n"
          "[t]({% post_url 2023-01-01-target %}) [u]({% link _posts/2023-01-01-target.md %})\n\n"
          "{% raw %}{{ kept }}{% endraw %}\n")
    body, errors = body_of(site, "_posts/2023-01-02-p.md")
    assert errors == []
    assert body == ('<p>T /b P a+b</p>\n<p>bad Hello you on P</p>\n'
                    '<p><a href="https://ex.org/b/2023/01/01/target.html">t</a> '
                    '<a href="https://ex.org/b/2023/01/01/target.html">u</a></p>\n<p>{{ kept }}</p>')


def test_render_with_liquid_false_leaves_the_body_as_written(tmp_path: Path) -> None:
    site = liquid_site(tmp_path)
    write(site / "_posts/2023-01-02-p.md", "---\nrender_with_liquid: false\n---\n{{ site.title }} {% if %}\n")
    assert body_of(site, "_posts/2023-01-02-p.md") == ("<p>{{ site.title }} {% if %}</p>", [])


@pytest.mark.parametrize(("body", "message"), [
    ("line one\n\n{% if %}\n", "Liquid error at line 6: "),
    ("ok\n\n[x]({% post_url 2023-09-09-missing %})\n", "Liquid error at line 6: {% post_url 2023-09-09-missing %}: could not find post"),
    ("{% link _posts/none.md %}\n", "Liquid error at line 4: {% link _posts/none.md %}: could not find document"),
    ("{% include ../../etc/passwd %}\n", "Liquid error at line 4: {% include ../../etc/passwd %}: include file"),
    ("{% include missing.html %}\n", "Liquid error at line 4: {% include missing.html %}"),
    ("{% for i in (1..100000) %}{% for j in (1..100000) %}x{% endfor %}{% endfor %}\n", "loop iteration limit reached"),
    ("{% assign s = 'xxxxxxxxxx' %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}\n", "limit"),
    ("{% include loop.html %}\n", "maximum context depth reached"),
])
def test_a_post_whose_liquid_fails_is_rejected_naming_file_and_line_and_every_other_post_is_built(
        tmp_path: Path, body: str, message: str) -> None:
    site = liquid_site(tmp_path)
    write(site / "_includes/loop.html", "{% include loop.html %}")
    write(site / "_posts/2023-01-02-bad.md", f"---\ntitle: Bad\n---\n{body}")
    collection = collect(site_of(site), None, NOW)
    shown = collection.posts  # renders every body (check)
    assert [p.path for p in shown] == ["_posts/2023-01-01-target.md"]
    errors = {e.path: e.message for e in collection.errors}
    assert list(errors) == ["_posts/2023-01-02-bad.md"]
    assert message in errors["_posts/2023-01-02-bad.md"], errors


def test_an_include_never_reads_outside_the_includes_folder(tmp_path: Path) -> None:
    site = liquid_site(tmp_path / "site")
    write(tmp_path / "secret.html", "SECRET")
    (site / "_includes" / "out.html").symlink_to(tmp_path / "secret.html")
    write(site / "_posts/2023-01-02-p.md", "---\ntitle: P\n---\n{% include out.html %}\n")
    body, errors = body_of(site, "_posts/2023-01-02-p.md")
    assert body == "" and len(errors) == 1 and "out.html" in errors[0]


def test_a_stored_body_is_rendered_again_when_a_post_it_links_to_moves(tmp_path: Path) -> None:
    site = liquid_site(tmp_path / "site")
    write(site / "_posts/2023-01-02-p.md", "---\ntitle: P\n---\n[t]({% post_url 2023-01-01-target %})\n")
    cache = tmp_path / "cache"
    first = collect(site_of(site), cache, NOW)
    post = next(p for p in first.posts if p.path == "_posts/2023-01-02-p.md")
    assert "/b/2023/01/01/target.html" in first.content(post)
    first.close()
    write(site / "_posts/2023-01-01-target.md", "---\ntitle: Target\npermalink: /moved/\n---\nThe target.\n")
    again = collect(site_of(site), cache, NOW)
    post = next(p for p in again.posts if p.path == "_posts/2023-01-02-p.md")
    assert 'href="https://ex.org/b/moved/"' in again.content(post)
    again.close()


def test_jekyll_filters_on_their_own() -> None:
    site = Site(source="/nonexistent", url="https://ex.org/b", title="T", timezone=UTC, language="en", permalink="/:title/",  # type: ignore[arg-type]
                category_url="", tag_url="", future=False, encoding="utf-8", summary_chars=120, extensions=(".md",),
                baseurl="/b", config={"title": "T"}, data={"people": [{"n": "Z", "t": "r"}, {"n": "A", "t": "r"}, {"n": "B"}]})
    page = {"date": datetime(2023, 1, 2, 10, 0, tzinfo=UTC), "title": "x"}

    def out(template: str) -> str:
        return liquid.render(template, site=site, page=page, style=Style("gfm", QUOTES), links=liquid.NoLinks())[0]

    assert out("{{ page.date | date_to_xmlschema }}|{{ page.date | date_to_rfc822 }}") == \
        "2023-01-02T10:00:00+00:00|Mon, 02 Jan 2023 10:00:00 +0000"
    assert out("{{ page.date | date_to_string }}|{{ page.date | date_to_long_string: 'ordinal', 'US' }}") == \
        "02 Jan 2023|January 2nd, 2023"
    assert out("{{ '/x' | relative_url }} {{ '/x' | absolute_url }} {{ 'http://o.org/' | relative_url }}") == \
        "/b/x https://ex.org/b/x http://o.org/"
    assert out("{{ site.data.people | where: 't', 'r' | sort: 'n' | map: 'n' | join }}") == "A Z"
    assert out("{{ site.data.people | sort: 't' | map: 'n' | join }}") == "B Z A"  # nils first, as Jekyll
    assert out("{{ site.data.people | where_exp: 'p', \"p.n == 'B'\" | size }}") == "1"
    assert out("{{ site.data.people | group_by: 't' | map: 'name' | join: ',' }}") == "r,"
    assert out("{{ 'Hello, World!' | slugify }} {{ 'a b' | slugify: 'raw' }} {{ 'Ünï' | slugify: 'latin' }}") == \
        "hello-world a-b uni"
    assert out("{{ 'a<b>&\"' | xml_escape }} {{ 'a b&c' | cgi_escape }} {{ 'a b/ü' | uri_escape }}") == \
        "a&lt;b&gt;&amp;&quot; a+b%26c a%20b/%C3%BC"
    assert out("{{ '<p>a</p><script>x</script>b' | strip_html }} {{ ' a \n b ' | normalize_whitespace }}") == "ab a b"
    assert out("{{ 'one two three' | number_of_words }} {{ site.data.people | map: 'n' | array_to_sentence_string }}") == \
        "3 Z, A, and B"
    assert out("{{ page.date | jsonify }} {{ site.data.people[2] | jsonify }}") == '"2023-01-02T10:00:00+00:00" {"n":"B"}'
    assert out("""{{ '*a* "b"' | markdownify }}""") == "<p><em>a</em> “b”</p>\n"
    assert out("{{ \"It's -- ok\" | smartify }}") == "It’s – ok"
    assert out("{{ x | nonexistent_filter }}{{ nothing.here }}") == ""  # Jekyll: neither is an error


def test_a_highlight_block_keeps_its_blank_lines_through_markdown() -> None:
    site = Site(source="/nonexistent", url="https://ex.org", title="T", timezone=UTC, language="en", permalink="/:title/",  # type: ignore[arg-type]
                category_url="", tag_url="", future=False, encoding="utf-8", summary_chars=120, extensions=(".md",))
    text, _ = liquid.render("{% highlight Ruby %}\na = 1\n\nb < 2\n{% endhighlight %}\n", site=site, page={},
                            style=Style(), links=liquid.NoLinks())
    assert render_markdown(text) == ('<figure class="highlight"><pre><code class="language-ruby" data-lang="ruby">'
                                     "a = 1&#10;&#10;b &lt; 2</code></pre></figure>\n")


# --------------------------------------------------------------------------- titles, authors, excerpt_only


def front_of(site: Site, front_matter: str, rel: str = "_posts/2023-01-02-p.md") -> Any:
    return read_front(rel, f"---\n{front_matter}\n---\nbody\n".encode(), site)


def test_html_in_a_title_is_dropped_and_the_title_made_typographic_as_jekyll_feed_does(tmp_path: Path) -> None:
    site = site_of(tmp_path)
    assert front_of(site, 'title: <span class="highlight">Sparkling</span> Title').title == "Sparkling Title"
    assert front_of(site, 'title: "Say \\"hi\\" -- it\'s A &amp; B..."').title == "Say “hi” – it’s A & B…"
    assert front_of(site, "title: |\n  two\n  lines").title == "two lines"


def test_html_in_titles_reaches_neither_the_opml_nor_the_digest(tmp_path: Path) -> None:
    write(tmp_path / "_config.yml", "title: <b>Bold</b> site\nurl: https://ex.org\n")
    write(tmp_path / "_posts/2023-01-02-p.md", "---\ntitle: <em>Big</em> news\ncategories: c\n---\nBody.\n")
    config = build_config({"site": {"source": str(tmp_path), "cache_dir": ""}, "feeds": {"output": str(tmp_path / "out")}})
    buildmod.run_build(config, now=NOW)
    opml = (tmp_path / "out" / "feeds.opml").read_text(encoding="utf-8")
    assert "Bold site" in opml and "&lt;b&gt;" not in opml
    site = resolve_site(config)
    collection = collect(site, None, NOW)
    variant = DigestRenderer(config, site, collection.content).render(datetime(2023, 1, 2).date(), collection.posts,
                                                                      Selection())
    assert variant is not None
    assert "Bold site" in variant.subject and "<b>" not in variant.subject
    assert "Big news" in variant.text and "<em>" not in variant.text


def test_authors_are_resolved_as_jekyll_feed_resolves_them(tmp_path: Path) -> None:
    write(tmp_path / "_config.yml", "author: Owner\n")
    write(tmp_path / "_data/authors.yml", "garthdb: {name: Garth, email: g@ex.org, uri: 'https://g.ex.org'}\n")
    site = site_of(tmp_path)

    def author(front_matter: str) -> tuple[str | None, str | None, str | None]:
        front = front_of(site, front_matter)
        return front.author, front.author_email, front.author_uri

    assert author("author: garthdb") == ("Garth", "g@ex.org", "https://g.ex.org")
    assert author("authors: [garthdb, other]") == ("Garth", "g@ex.org", "https://g.ex.org")
    assert author("author: {name: Ann, email: a@ex.org}") == ("Ann", "a@ex.org", None)
    assert author("author: nobody") == ("nobody", None, None)
    assert author("title: no author") == ("Owner", None, None)
    assert author("author: ''") == ("Owner", None, None)


def feed_post(**values: Any) -> Post:
    base = {"path": "_posts/p.md", "slug": "p", "title": "P", "date": datetime(2023, 1, 2, tzinfo=UTC), "updated": None,
            "categories": ("c",), "tags": (), "permalink": "/p.html", "url": "https://ex.org/p.html",
            "id": "https://ex.org/p.html", "summary": "Sum.", "image": None, "author": None, "source": "财联社"}
    return Post(**{**base, **values})


def options_with(**values: Any) -> FeedOptions:
    return FeedOptions(site_title="S", site_url="https://ex.org", base_url="https://ex.org/feeds", language="en",
                       timezone=UTC, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fallback", "expected"), [("none", None), ("source", "财联社"), ("site", "S")])
def test_a_post_without_an_author_gets_the_configured_fallback_only(fallback: str, expected: str | None) -> None:
    data = entry_data(feed_post(), options_with(author_fallback=fallback), lambda post: "<p>x</p>")
    assert data.author == expected
    named = entry_data(feed_post(author="Ann"), options_with(author_fallback=fallback), lambda post: "<p>x</p>")
    assert named.author == "Ann"


def test_the_default_fallback_is_no_author_and_the_bundled_config_keeps_the_demo_s_sources() -> None:
    assert build_config({}).feeds.author_fallback == "none"
    bundled = Path(__file__).resolve().parent.parent / "config" / "finews.toml"
    assert 'author_fallback = "source"' in bundled.read_text(encoding="utf-8")
    spec = FeedSpec("site", "", "", "S", "d", "https://ex.org/", "", 10)
    files = render_feed(spec, options_with(), [entry_data(feed_post(), options_with(), lambda p: "<p>x</p>")])
    atom = etree.fromstring(files["atom.xml"])
    assert atom.find(f"{ATOM}entry/{ATOM}author") is None  # the feed's own author stands for it
    assert "authors" not in json.loads(files["feed.json"])["items"][0]
    assert b"dc:creator" not in files["rss.xml"]


@pytest.mark.parametrize(("post_value", "site_value", "excerpt_only"), [
    ("true", None, True), (None, "true", True), ("false", "true", True), ("true", "false", True),
    (None, None, False), ("false", None, False), ('"no"', None, True),
])
def test_excerpt_only_follows_jekyll_feeds_liquid(tmp_path: Path, post_value: str | None, site_value: str | None,
                                                   excerpt_only: bool) -> None:
    if site_value is not None:
        write(tmp_path / "_config.yml", f"feed:\n  excerpt_only: {site_value}\n")
    site = site_of(tmp_path)
    matter = f"feed:\n  excerpt_only: {post_value}" if post_value is not None else "title: x"
    assert front_of(site, matter).excerpt_only is excerpt_only


def test_an_excerpt_only_post_shows_its_summary_and_no_content_in_every_format() -> None:
    spec = FeedSpec("site", "", "", "S", "d", "https://ex.org/", "", 10)
    options = options_with()
    entries = [entry_data(feed_post(excerpt_only=True), options, lambda p: "<p>Secret full text</p>"),
               entry_data(feed_post(path="q", url="https://ex.org/q.html", id="https://ex.org/q.html"), options,
                          lambda p: "<p>Full text</p>")]
    files = render_feed(spec, options, entries)
    for data in files.values():
        assert b"Secret full text" not in data and b"Full text" in data
    item = json.loads(files["feed.json"])["items"][0]
    assert item["content_text"] == "Sum." and "content_html" not in item


# --------------------------------------------------------------------------- Markdown: kramdown's ids and typography


def test_header_ids_are_kramdowns_gfm_ids_with_a_suffix_for_repeats() -> None:
    html_out = render_markdown("# December the twelfth, actually\n\n## Repeat\n\n## Repeat\n\n## 你好 world\n\n"
                               "### A `code` heading & more\n", Style("gfm", QUOTES))
    assert re.findall(r'id="([^"]*)"', html_out) == ["december-the-twelfth-actually", "repeat", "repeat-1", "你好-world",
                                                      "a-code-heading--more"]
    assert header_id("123 Numbers first", gfm=False) == "numbers-first"
    assert header_id("你好", gfm=False) == "section"


def test_smart_quotes_and_typographic_symbols_are_kramdowns() -> None:
    assert typography("Text with \"double\", 'single', it's, rock 'n' roll, 1990's, the '80s -- and --- and ... << >>",
                      QUOTES) == "Text with “double”, ‘single’, it’s, rock ‘n’ roll, 1990’s, the ’80s – and — and … «\u00a0»"
    assert smart_quotes('["a","b"]', QUOTES) == "[“a”,”b”]"  # kramdown's own reading of it
    assert render_markdown('He said "*hi*" and `"code"`', Style("gfm", QUOTES)) == \
        "<p>He said “<em>hi</em>” and <code>&quot;code&quot;</code></p>\n"


def test_the_sites_kramdown_settings_are_honoured(tmp_path: Path) -> None:
    raw = b"---\ntitle: x\n---\n# Head\n\n\"q\" -- x\n"
    write(tmp_path / "off" / "_config.yml", "kramdown:\n  auto_ids: false\n  smart_quotes: apos,apos,quot,quot\n")
    site = site_of(tmp_path / "off")
    front = front_of(site, "title: '\"q\" -- x'")
    assert render(front, raw, site).html == '<h1>Head</h1>\n<p>"q" – x</p>' and front.title == '"q" – x'
    write(tmp_path / "ascii" / "_config.yml", "kramdown:\n  input: kramdown\n  smart_quotes: '171,187,8249,8250'\n")
    site = site_of(tmp_path / "ascii")
    assert render(front, raw, site).html == '<h1 id="head">Head</h1>\n<p>‹q› – x</p>'
    write(tmp_path / "other" / "_config.yml", "markdown: CommonMarkGhPages\n")
    site = site_of(tmp_path / "other")
    assert render(front, raw, site).html == '<h1>Head</h1>\n<p>"q" -- x</p>'


def test_the_demo_sites_bodies_are_untouched_by_typography_and_ids() -> None:
    demo = Path(__file__).resolve().parent.parent / "demo-site"
    site = site_of(demo)
    posts = PostSet(site, [])
    assert posts.site is site
    collection = collect(site, None, NOW)
    for post in collection.posts[:200]:
        front = read_front(post.path, (demo / post.path).read_bytes(), site)
        assert render(front, (demo / post.path).read_bytes(), site).html == \
            render(front, (demo / post.path).read_bytes(), replace(site, header_ids="", smart_quotes="")).html
