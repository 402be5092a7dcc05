"""What the digest archive adds to a digest run: publishing N days of records, against rendering one
day's digest of the demo site in the same run.

    .venv/bin/python benchmarks/archive.py [--sizes 365 3650] [--root /dev/shm/finews-archive-bench]

For each size it writes N web copies (40 KB each) and records of 30 headlines on tmpfs, then times
`archive.publish` the first time (every page, feed and stylesheet written) and again with nothing
changed (the daily case: one new record, every record read), as CPU and wall seconds, best of 3.
The baseline is the render of the demo site's 2022-04-20 digest (31 articles: Jinja2, premailer),
best of 3 in the same process. No target: the archive is written once a day and never per request;
the figures say what a year, or ten, of digests costs.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from finews_feeds.config import build_config, read_file
from finews_feeds.mail.archive import ArchiveEntry, ArchiveOptions, Headline, publish
from finews_feeds.mail.digest import DigestRenderer, Selection, posts_of_day
from finews_feeds.site.collector import collect_site

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ArchiveOptions("finews 财经新闻", "https://news.example.org", "https://news.example.org/feeds",
                         "https://subscribe.example.org/", "zh-CN", 30, 20)


def best(task: Callable[[], object], runs: int = 3) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``runs``."""
    timings = []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        task()
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(timings)


def digest_render(root: Path) -> tuple[float, float]:
    values = read_file(ROOT / "config" / "finews.toml")
    values["site"] = {**values["site"], "source": str(ROOT / "demo-site"), "cache_dir": str(root / "cache")}
    config = build_config(values, {})
    collection = collect_site(config)
    try:
        posts = posts_of_day(collection, date(2022, 4, 20), collection.site.timezone)
        renderer = DigestRenderer(config, collection.site, collection.content)
        return best(lambda: renderer.render(date(2022, 4, 20), posts, Selection()))
    finally:
        collection.close()


def archive_of(folder: Path, size: int) -> None:
    folder.mkdir(parents=True)
    for n in range(size):
        day = date(2026, 12, 1) - timedelta(days=n)
        (folder / f"{day}.html").write_bytes(b"<title>x</title>" + b"x" * 40_000)
        headlines = tuple(Headline(f"标题{k}：一条关于市场的新闻", f"https://news.example.org/{day}/{k}.html", "财联社新闻")
                          for k in range(30))
        (folder / f"{day}.json").write_bytes(ArchiveEntry(day, f"每日精选 {day}", 30, headlines,
                                                          datetime(day.year, day.month, day.day, 20, tzinfo=UTC)).to_json())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[365, 3650])
    parser.add_argument("--root", type=Path, default=Path("/dev/shm/finews-archive-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    try:
        base_wall, base_cpu = digest_render(args.root)
        print(f"baseline: one digest render {base_wall:.3f} s wall, {base_cpu:.3f} s CPU")
        for size in args.sizes:
            folder = args.root / f"digests-{size}"
            archive_of(folder, size)
            first = best(lambda folder=folder: publish(folder, OPTIONS), runs=1)  # type: ignore[misc]
            again = best(lambda folder=folder: publish(folder, OPTIONS))  # type: ignore[misc]
            print(f"{size:>6} digests: first publish {first[0]:.3f} s wall ({first[1]:.3f} CPU), unchanged "
                  f"{again[0]:.3f} s wall ({again[1]:.3f} CPU) = {again[1] / base_cpu:.1f} x one digest render (CPU)")
    finally:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
