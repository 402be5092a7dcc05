"""Collector speed and memory on generated finews-shaped sites.

    .venv/bin/python benchmarks/collect.py [--sizes 20000 100000] [--root /dev/shm/finews-collect-bench]

For each size it generates a site with make_site.py (on tmpfs: disk writes make timings swing),
then measures, each in a fresh process: a cold run (empty cache; posts are read up to their
bodies, as a build's collect does), a cold run that also renders every body (`Collection.posts`,
what `finews-feeds check` pays), warm runs (unchanged site, cache on disk: what
`check` or `build` pay), and a warm run inside the same process (what the daemon pays). It prints wall and CPU seconds, the warm/cold ratio and the peak resident memory of
the collecting process and of its parse workers. Targets (issue 2): warm <= cold / 10 and < 1.5 s
at 100,000 posts; peak memory < 400 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from corpus import site_generator

HERE = Path(__file__).resolve().parent


def child(source: str, cache_dir: str, repeat: int, every_body: bool = False) -> None:
    """Run in a fresh process: collect, print figures as JSON."""
    from finews_feeds.config import build_config
    from finews_feeds.site.collector import collect
    from finews_feeds.site.jekyll import resolve_site

    site = resolve_site(build_config({"site": {"source": source}}))
    now = datetime.now(UTC)
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        collection = collect(site, Path(cache_dir), now)
        if every_body:
            assert collection.posts  # every body rendered (and stored)
        runs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
    # One post and its body fetched on demand, as a feed or the digest does.
    paths = collection.newest("site:", collection.until, -1)
    wall = time.perf_counter()
    html = collection.content(collection.posts_of(paths[:1])[0])
    fetch = time.perf_counter() - wall
    print(json.dumps({
        "runs": runs,
        "posts": len(paths),
        "errors": len(collection.errors),
        "fetch_ms": fetch * 1000,
        "body_chars": len(html),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "workers_cpu": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime,
    }))


def measure(source: Path, cache_dir: Path, repeat: int = 1, every_body: bool = False) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(source), str(cache_dir), str(repeat), "1" if every_body else "0"],
        check=True, capture_output=True, text=True,
    )
    figures: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--root", type=Path, default=Path("/dev/shm/finews-collect-bench"))
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3] == "1")
        return
    # An installed package has its bytecode compiled; this checkout may run with
    # PYTHONDONTWRITEBYTECODE set, which would compile every module at every run.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "finews_feeds")], check=True)

    print(f"{'posts':>8} {'cold s':>8} {'cold cpu':>8} {'all bodies s':>12} {'warm s':>7} {'warm cpu':>8} {'ratio':>6} "
          f"{'ratio all':>9} {'in-proc s':>9} {'fetch ms':>8} {'peak MB':>8} {'workers MB':>10}")
    for size in args.sizes:
        source = args.root / f"site-{size}"
        cache_dir = args.root / f"cache-{size}"
        if not (source / "_config.yml").exists():
            subprocess.run([sys.executable, str(site_generator()), str(source), "--posts", str(size), "--seed", "1"],
                           check=True, capture_output=True)
        shutil.rmtree(cache_dir, ignore_errors=True)
        every = measure(source, cache_dir, every_body=True)["runs"][0]  # type: ignore[index]
        shutil.rmtree(cache_dir, ignore_errors=True)
        cold = measure(source, cache_dir)
        warms = [measure(source, cache_dir, repeat=2) for _ in range(args.warm_runs)]
        first_runs = [w["runs"][0] for w in warms]  # type: ignore[index]
        best = min(first_runs, key=lambda r: r["wall"])
        in_process = min(w["runs"][1]["wall"] for w in warms)  # type: ignore[index]
        cold_run = cold["runs"][0]  # type: ignore[index]
        peak = max([cold["rss_mb"], *[w["rss_mb"] for w in warms]])  # type: ignore[type-var]
        print(f"{cold['posts']:>8} {cold_run['wall']:>8.2f} {cold_run['cpu'] + cold['workers_cpu']:>8.2f} {every['wall']:>12.2f} "
              f"{best['wall']:>7.2f} {best['cpu']:>8.2f} {best['wall'] / cold_run['wall']:>6.3f} {best['wall'] / every['wall']:>9.3f} "
              f"{in_process:>9.2f} {warms[0]['fetch_ms']:>8.2f} "
              f"{peak:>8.0f} {cold['workers_rss_mb']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
