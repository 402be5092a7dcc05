"""What RFC 5005 archive pages (issue 17) cost a build: archives on against off, same run.

    .venv/bin/python benchmarks/archives.py [--posts 20000] [--work /dev/shm/finews-archives] [--repeat 3]

On a site from the corpus generator (``make_site.py --seed 1``, see benchmarks/corpus.py), for
``feeds.archives`` true (the default: pages for the site and every category feed, tags off) and
false, each in its own cache and output folder: a cold build (no cache, no output), the feed
builder's own cold build (the collector's cache warm, the output empty), and a rebuild after one
new post (dated after every other, in a category and two tags; ``--repeat`` rounds, a new post
each, on and off alternating so both see the same machine). Prints wall seconds (the median
with the range), peak memory of the process tree, files written, and the ratio on / off.

Times are wall-clock on whatever else the machine is doing (the machine these figures were
taken on has 2 cores shared by up to 8 agents): compare the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from feeds import NEW_POST, PYTHON, ROOT, Run, generate, measure, median_of


def config_for(work: Path, site: Path, archives: bool) -> tuple[Path, Path, Path]:
    name = "on" if archives else "off"
    cache, out, config = work / f"cache-{name}", work / f"out-{name}", work / f"finews-{name}.toml"
    config.write_text(f'[site]\nsource = "{site}"\ncache_dir = "{cache}"\n\n[feeds]\noutput = "{out}"\n'
                      f"archives = {'true' if archives else 'false'}\n", encoding="utf-8")
    return config, cache, out


def files_written(run: Run) -> str:
    match = re.search(r"files: (\d+) written", run.output)
    return match.group(1) if match else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path("/dev/shm/finews-archives"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    site = generate(args.work, args.posts)
    variants = {archives: config_for(args.work, site, archives) for archives in (True, False)}
    commands = {archives: [PYTHON, "-m", "finews_feeds", "--log-level", "WARNING", "--config", str(config), "build"]
                for archives, (config, _, _) in variants.items()}
    extra = [site / "_posts" / f"2022-04-21-bench-archives-{i}.md" for i in range(args.repeat)]
    for path in extra:
        path.unlink(missing_ok=True)

    results: dict[bool, dict[str, list[Run]]] = {True: {}, False: {}}
    for _ in range(args.repeat):
        for archives in (True, False):
            _, cache, out = variants[archives]
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            results[archives].setdefault("cold", []).append(measure(commands[archives], cwd=ROOT))
    for _ in range(args.repeat):
        for archives in (True, False):
            shutil.rmtree(variants[archives][2])
            results[archives].setdefault("cold, collector cache warm", []).append(measure(commands[archives], cwd=ROOT))
    try:
        for i, path in enumerate(extra):  # a new post each round, each a second after the last
            path.write_text(NEW_POST.replace("08:00:00", f"08:00:{i:02d}").replace("一篇文章", f"第{i + 1}篇文章"),
                            encoding="utf-8")
            for archives in (True, False):
                results[archives].setdefault("one new post", []).append(measure(commands[archives], cwd=ROOT))
    finally:
        for path in extra:
            path.unlink(missing_ok=True)

    print(f"\n{args.posts} posts, archives on / off ({args.repeat} runs each, median and range):\n")
    print("| build | archives on: s | off: s | on / off | peak MB on / off | files written on / off |")
    print("|---|---|---|---|---|---|")
    for name in ("cold", "cold, collector cache warm", "one new post"):
        on, off = median_of(results[True][name]), median_of(results[False][name])
        print(f"| {name} | {on.shown()} | {off.shown()} | {on.seconds / off.seconds:.2f} | "
              f"{on.peak_mb:.0f} / {off.peak_mb:.0f} | {files_written(on)} / {files_written(off)} |")
    for archives in (True, False):
        print(f"\narchives {'on' if archives else 'off'}, last one-new-post build: "
              f"{results[archives]['one new post'][-1].output.strip()}")


if __name__ == "__main__":
    main()
