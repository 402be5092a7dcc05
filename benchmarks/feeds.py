"""Benchmark the feed build against Jekyll + jekyll-feed and Hugo, on the same generated sites.

    .venv/bin/python benchmarks/feeds.py [--sizes 20000,100000] [--work /dev/shm/finews-bench]
                                         [--jekyll-posts 20000] [--no-peers] [--repeat 3]

For each size: a site from the corpus generator (``make_site.py --seed 1``; ``../shared/corpus/`` beside
the checkout, or ``$FINEWS_MAKE_SITE``, see benchmarks/corpus.py) on tmpfs, then
``finews-feeds build`` cold (no cache, no output; ``--repeat`` times, median shown with the
range), cold again with the collector's cache warm, again with no change, and again after one
new post (dated after every other, in a category and two tags; ``--repeat`` rounds, a new post
each); and the one-new-post rebuild inside a process that built before and runs other threads,
as the daemon does (no forking; its time is the rebuild alone, its memory the whole process's
peak). In the same run: Hugo with HTML and per-taxonomy RSS, and Hugo RSS-only (pages rendered as links only), on the posts converted to
Hugo content; Jekyll with jekyll-feed configured for every category and ``tags: true`` at the
Jekyll size only, with the fix of jekyll/jekyll#9187 (Debian's 4.3.1 writes files in quadratic
time) loaded as a local plugin. Prints a table of wall times, ratios and peak memory (the sum
of the resident memory of the process tree, sampled every 20 ms).

Jekyll and Hugo come from Debian (``apt-get install jekyll ruby-jekyll-feed hugo``); they are
installed when missing. Times are wall-clock on whatever else the machine is doing; ratios
come from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from corpus import site_generator

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
NEW_POST = """---
title: "基准测试：新发布的一篇文章"
date: 2022-04-21 08:00:00 +0800
categories: cailianshe
tags: [财联社新闻, 新能源]
---
<p>新文章正文。（文章来源：财联社）</p>
"""
JEKYLL_FIX = '''# Backport of jekyll/jekyll#9187 ("Optimize Site#each_site_file", released in 4.3.2).
# Debian's Jekyll 4.3.1 checks each file to write against an Array of the files already
# written, which takes time quadratic in the number of posts.
require "set"

module Jekyll
  class Site
    def each_site_file
      seen_files = Set.new.compare_by_identity
      %w(pages static_files_to_write docs_to_write).each do |type|
        send(type).each do |item|
          next if seen_files.include?(item)

          yield item
          seen_files << item
        end
      end
    end
  end
end
'''
LAYOUT = "<!DOCTYPE html><html><head><title>{{ page.title }}</title></head><body>{{ content }}</body></html>\n"


@dataclass
class Run:
    seconds: float
    peak_mb: float
    output: str
    samples: tuple[float, ...] = ()  #: every run's seconds when repeated; ``seconds`` is their median

    def shown(self) -> str:
        if len(self.samples) < 2:
            return f"{self.seconds:.2f}"
        return f"{self.seconds:.2f} ({min(self.samples):.2f}-{max(self.samples):.2f})"


def median_of(runs: list[Run]) -> Run:
    """The run of median time (peak memory: the highest), with every time kept."""
    ordered = sorted(runs, key=lambda run: run.seconds)
    middle = ordered[len(ordered) // 2]
    return Run(middle.seconds, max(run.peak_mb for run in runs), middle.output, tuple(run.seconds for run in runs))


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root_pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    # Each process's children from /proc/PID/task/TID/children: a few reads per sample, where
    # reading every process's stat took a millisecond, every 20 ms, on one of the two cores
    # the builds measured here use.
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * _PAGE
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children", "rb") as handle:
                    stack.extend(map(int, handle.read().split()))
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
    return total


def measure(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Run:
    """Run ``cmd``, timing it and sampling its process tree's memory; fails loudly on error."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return Run(seconds, peak / 1e6, text)


def ensure_tools() -> None:
    missing = [tool for tool in ("jekyll", "hugo") if shutil.which(tool) is None]
    if missing:
        print(f"installing {', '.join(missing)} from Debian ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "jekyll", "ruby-jekyll-feed", "hugo"], check=True, env=env)


def generate(work: Path, posts: int) -> Path:
    site = work / f"site-{posts}"
    if not (site / ".complete").exists():
        shutil.rmtree(site, ignore_errors=True)
        subprocess.run([PYTHON, str(site_generator()), str(site), "--posts", str(posts), "--seed", "1"], check=True,
                       stdout=subprocess.DEVNULL)
        (site / ".complete").write_text("")
    return site


# --------------------------------------------------------------------------- ours


def bench_ours(work: Path, site: Path, posts: int, repeat: int) -> dict[str, Run]:
    cache, out = work / f"cache-{posts}", work / f"out-{posts}"
    config = work / f"finews-{posts}.toml"
    config.write_text(f'[site]\nsource = "{site}"\ncache_dir = "{cache}"\n\n[feeds]\noutput = "{out}"\n', encoding="utf-8")
    new_post = site / "_posts" / "2022-04-21-bench-new-post.md"
    extra = [site / "_posts" / f"2022-04-21-bench-new-post-{i}.md" for i in range(repeat)]
    for path in (new_post, *extra):
        path.unlink(missing_ok=True)
    cmd = [PYTHON, "-m", "finews_feeds", "--log-level", "WARNING", "--config", str(config), "build"]
    colds = []
    for _ in range(repeat):
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        colds.append(measure(cmd, cwd=ROOT))
    runs = {"cold": median_of(colds)}
    # The feed builder's own cold build: the collector's cache is warm, the output folder empty.
    shutil.rmtree(out)
    runs["cold, collector cache warm"] = measure(cmd, cwd=ROOT)
    runs["no change"] = measure(cmd, cwd=ROOT)
    news = []
    try:
        for i, path in enumerate(extra):  # a new post each round, each a second after the last
            path.write_text(NEW_POST.replace("08:00:00", f"08:00:{i:02d}").replace("一篇文章", f"第{i + 1}篇文章"),
                            encoding="utf-8")
            news.append(measure(cmd, cwd=ROOT))
    finally:
        for path in extra:
            path.unlink(missing_ok=True)
    runs["one new post"] = median_of(news)
    measure(cmd, cwd=ROOT)  # back to the site as generated
    runs["one new post, in a running daemon"] = in_process(config, new_post)
    for name, run in runs.items():
        print(f"  finews-feeds {posts} {name}: {run.shown()} s, {run.peak_mb:.0f} MB: {run.output.strip()}", flush=True)
    return runs


IN_PROCESS = """
import json, sys, threading, time
from pathlib import Path
from finews_feeds.feeds.build import run_build
from finews_feeds.config import load_config
if __name__ == "__main__":
    config = load_config(Path(sys.argv[1]), {})
    post = Path(sys.argv[2])
    # As in the daemon: other threads run (its scheduler, watcher and web server), so nothing
    # forks; its first build plans every feed.
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    run_build(config)
    post.write_text(sys.argv[3], encoding="utf-8")
    try:
        started = time.perf_counter()
        # What the daemon does after its file watcher reported the new post: that path alone
        # is looked at, no walk.
        report = run_build(config, touched=[post.relative_to(config.site.source).as_posix()])
        done = time.perf_counter()
    finally:
        post.unlink()
    run_build(config)
    print(json.dumps({"seconds": done - started, "incremental": report.incremental, "summary": report.summary()}))
"""


def in_process(config: Path, new_post: Path) -> Run:
    """The daemon's case: a rebuild after one new post its watcher reported, inside a process
    that has built before and runs other threads."""
    run = measure([PYTHON, "-c", IN_PROCESS, str(config), str(new_post), NEW_POST], cwd=ROOT)
    data = json.loads(run.output.strip().splitlines()[-1])
    return Run(data["seconds"], run.peak_mb,
               f"{data['summary']} ({'only the feeds that changed planned' if data['incremental'] else 'every feed planned'})")


def feeds_written(run: Run) -> str:
    match = re.search(r"\((\d+) written", run.output)
    return match.group(1) if match else "?"


# --------------------------------------------------------------------------- Hugo


def hugo_site(work: Path, site: Path, posts: int) -> Path:
    """The posts as Hugo content: categories (folder ones included) and tags as lists, RFC 3339
    dates, the rendered HTML as the body (goldmark passes it through with unsafe = true)."""
    target = work / f"hugo-{posts}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    content = target / "content" / "posts"
    content.mkdir(parents=True)
    script = f"""
import json, sys
from pathlib import Path
from finews_feeds.config import build_config
from finews_feeds.site.collector import collect_site
if __name__ == "__main__":
    config = build_config({{"site": {{"source": {str(site)!r}, "cache_dir": {str(work / f"cache-{posts}")!r}}}}})
    collection = collect_site(config)
    out = Path({str(content)!r})
    for index, post in enumerate(collection.posts):
        front = {{"title": post.title, "date": post.date.isoformat(), "categories": list(post.categories),
                  "tags": list(post.tags), "slug": post.slug}}
        text = "---\\n" + json.dumps(front, ensure_ascii=False) + "\\n---\\n" + collection.content(post) + "\\n"
        (out / f"{{index:06d}}-{{post.slug}}.md").write_text(text, encoding="utf-8")
"""
    subprocess.run([PYTHON, "-c", script], check=True, cwd=ROOT)
    layouts = target / "layouts" / "_default"
    layouts.mkdir(parents=True)
    (layouts / "single.html").write_text("<!DOCTYPE html><title>{{ .Title }}</title>{{ .Content }}\n")
    (layouts / "list.html").write_text("<!DOCTYPE html><title>{{ .Title }}</title>{{ range .Pages }}<a href=\"{{ .RelPermalink }}\">{{ .Title }}</a>{{ end }}\n")
    common = """baseURL = "https://finews.withounder.com/"
title = "finews 财经新闻"
languageCode = "zh-cn"
hasCJKLanguage = true
disableKinds = ["sitemap", "robotsTXT", "404"]
[services.rss]
limit = 50
[markup.goldmark.renderer]
unsafe = true
[taxonomies]
category = "categories"
tag = "tags"
"""
    (target / "hugo-html.toml").write_text(common + """[outputs]
home = ["HTML", "RSS"]
section = ["HTML", "RSS"]
taxonomy = ["HTML", "RSS"]
term = ["HTML", "RSS"]
""")
    (target / "hugo-rss.toml").write_text(common + """[outputs]
home = ["RSS"]
section = ["RSS"]
taxonomy = ["RSS"]
term = ["RSS"]
[[cascade]]
[cascade._build]
render = "link"
[cascade._target]
kind = "page"
""")
    (target / ".complete").write_text("")
    return target


def bench_hugo(target: Path, variant: str) -> Run:
    out = target / f"public-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    run = measure(["hugo", "--source", str(target), "--config", str(target / f"hugo-{variant}.toml"),
                   "--destination", str(out), "--quiet"])
    run.output = str(sum(1 for _ in out.rglob("index.xml")))
    return run


# --------------------------------------------------------------------------- Jekyll


def jekyll_site(work: Path, site: Path, posts: int) -> Path:
    target = work / f"jekyll-{posts}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(site, target, ignore=shutil.ignore_patterns(".complete", "EDGE_CASES.md"))
    categories = sorted(p.parent.name for p in target.glob("*/_posts"))
    (target / "_layouts").mkdir(exist_ok=True)
    (target / "_layouts" / "default.html").write_text(LAYOUT)
    (target / "_layouts" / "post.html").write_text(LAYOUT)
    (target / "_plugins").mkdir(exist_ok=True)
    (target / "_plugins" / "each_site_file.rb").write_text(JEKYLL_FIX)
    config = (site / "_config.yml").read_text(encoding="utf-8")
    config += "plugins:\n  - jekyll-feed\nfeed:\n  posts_limit: 50\n  tags: true\n  categories:\n"
    config += "".join(f"    - {c}\n" for c in categories)
    (target / "_config.yml").write_text(config, encoding="utf-8")
    (target / ".complete").write_text("")
    return target


def bench_jekyll(target: Path) -> Run:
    out = target / "_site"
    shutil.rmtree(out, ignore_errors=True)
    # Cold like ours: Jekyll 4 keeps converted Markdown in .jekyll-cache between builds.
    shutil.rmtree(target / ".jekyll-cache", ignore_errors=True)
    run = measure(["jekyll", "build", "--source", str(target), "--destination", str(out), "--quiet"])
    run.output = str(sum(1 for _ in (out / "feed").rglob("*.xml")) + int((out / "feed.xml").exists()))
    return run


# --------------------------------------------------------------------------- table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--work", type=Path, default=Path("/dev/shm/finews-bench"))
    parser.add_argument("--jekyll-posts", type=int, default=20000)
    parser.add_argument("--no-peers", action="store_true", help="Only time finews-feeds.")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Runs of our cold build, our one-new-post rebuild and Hugo RSS-only (median shown).")
    args = parser.parse_args()
    # An installed package has its bytecode compiled; this checkout may run with
    # PYTHONDONTWRITEBYTECODE set, which would compile every module at every run.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "finews_feeds")], check=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.no_peers:
        ensure_tools()

    rows: list[tuple[str, ...]] = []
    ratios: list[str] = []
    for posts in sizes:
        print(f"== {posts} posts", flush=True)
        site = generate(args.work, posts)
        ours = bench_ours(args.work, site, posts, args.repeat)
        for name, run in ours.items():
            rows.append((f"{posts:,}", f"finews-feeds build, {name}", run.shown(), f"{run.peak_mb:,.0f}",
                         f"{feeds_written(run)} feeds written"))
        if args.no_peers:
            continue
        hugo = hugo_site(args.work, site, posts)
        peers: dict[str, Run] = {}
        for variant, label, times in (("rss", "Hugo RSS-only", args.repeat), ("html", "Hugo HTML + RSS", 1)):
            peers[label] = median_of([bench_hugo(hugo, variant) for _ in range(times)])
            print(f"  {label} {posts}: {peers[label].shown()} s, {peers[label].peak_mb:.0f} MB", flush=True)
        if posts == args.jekyll_posts:
            peers["Jekyll + jekyll-feed"] = bench_jekyll(jekyll_site(args.work, site, posts))
            print(f"  Jekyll {posts}: {peers['Jekyll + jekyll-feed'].seconds:.2f} s", flush=True)
        for label, run in peers.items():
            rows.append((f"{posts:,}", label, run.shown(), f"{run.peak_mb:,.0f}", f"{run.output} feeds"))
        cold, new, warm = ours["cold"], ours["one new post"], ours["cold, collector cache warm"]
        hugo_rss = peers["Hugo RSS-only"]
        ratios.append(f"{posts:,}: Hugo RSS-only / our cold build = {hugo_rss.seconds / cold.seconds:.2f}x "
                      f"({hugo_rss.seconds / warm.seconds:.1f}x with the collector's cache warm); "
                      f"Hugo RSS-only / our rebuild after one new post = {hugo_rss.seconds / new.seconds:.0f}x; "
                      f"peak memory ours / Hugo RSS-only = {cold.peak_mb / hugo_rss.peak_mb:.2f}")
        if "Jekyll + jekyll-feed" in peers:
            jekyll = peers["Jekyll + jekyll-feed"].seconds
            ratios.append(f"{posts:,}: Jekyll + jekyll-feed / our cold build = {jekyll / cold.seconds:.1f}x "
                          f"({jekyll / warm.seconds:.1f}x with the collector's cache warm)")

    print()
    print("| posts | build | seconds | peak MB | output |")
    print("|---:|---|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for line in ratios:
        print("- " + line)


if __name__ == "__main__":
    main()
