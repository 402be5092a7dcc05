"""Personalised digest messages per second: render once per variant vs render per subscriber.

    .venv/bin/python benchmarks/digest.py [--site demo-site] [--date 2022-04-20] [--subscribers 10000] [--naive 300]

Builds complete MIME messages (build_message + as_bytes) for N subscribers with a mix of
category/tag selections, the way delivery does: one render + inline per distinct selection, then
str.replace of each subscriber's fields. In the same run it times the naive way (render and
inline for every subscriber) on a few hundred subscribers and extrapolates. Targets (issue 4):
at least 50x the naive rate and at least 2,000 messages per second.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

from finews_feeds.config import Config, build_config, read_file
from finews_feeds.mail.digest import DigestRenderer, Recipient, Selection, Variant, posts_of_day
from finews_feeds.mail.message import build_message, domain_of, format_address, message_id
from finews_feeds.models import Post
from finews_feeds.site.collector import collect_site

ROOT = Path(__file__).resolve().parent.parent
SENT = datetime(2022, 4, 20, 23, 30, tzinfo=UTC)


def load(site: Path, cache: Path) -> Config:
    values = read_file(ROOT / "config" / "finews.toml")
    values["site"] = {**values["site"], "source": str(site), "cache_dir": str(cache)}
    values["web"] = {**values.get("web", {}), "public_url": "https://news.example.com"}
    return build_config(values, {})


def selections(posts: list[Post], count: int, seed: int = 1) -> list[Selection]:
    """A mix like a real list: half take everything; the rest one or two categories, one or two
    of the popular tags, or a category plus a tag."""
    rng = random.Random(seed)
    categories = sorted({c for p in posts for c in p.categories})
    tags = [t for t, _ in Counter(t for p in posts for t in p.tags).most_common(8)]
    out: list[Selection] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.5 or not categories or not tags:
            out.append(Selection())
        elif roll < 0.75:
            out.append(Selection(categories=frozenset([rng.choice(categories)])))
        elif roll < 0.85:
            out.append(Selection(categories=frozenset(rng.sample(categories[:4], min(2, len(categories))))))
        elif roll < 0.95:
            out.append(Selection(tags=frozenset([rng.choice(tags)])))
        else:
            out.append(Selection(categories=frozenset([rng.choice(categories[:3])]), tags=frozenset([rng.choice(tags[:4])])))
    return out


def recipient(i: int) -> Recipient:
    return Recipient(f"reader{i}@example.org", f"读者{i}" if i % 3 else "", f"https://news.example.com/unsubscribe/tok{i:08d}")


def message_bytes(config: Config, variant: Variant, person: Recipient, day: date) -> bytes:
    html, text = variant.personalize(person)
    msg = build_message(
        subject=variant.subject, html=html, text=text, sender=config.digest.from_,
        to=format_address(person.name, person.email),
        message_id=message_id(day, person.email, domain_of(config.digest.from_)), date=SENT,
        headers={"List-Unsubscribe": f"<{person.unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )
    return msg.as_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, default=ROOT / "demo-site")
    parser.add_argument("--date", type=date.fromisoformat, default=date(2022, 4, 20))
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--naive", type=int, default=300, help="subscribers timed the naive way")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        config = load(args.site, Path(cache))
        collection = collect_site(config)
    day_posts = posts_of_day(collection.posts, args.date, collection.site.timezone)
    chosen = selections(day_posts, args.subscribers)
    people = [recipient(i) for i in range(args.subscribers)]
    print(f"site {args.site}, {args.date}: {len(day_posts)} articles; {args.subscribers} subscribers, "
          f"{len({s.key() for s in chosen})} distinct selections")

    # Grouped: one render per variant, then personalise + build + serialise per subscriber.
    # Wall and CPU time both: on a shared machine the wall clock also counts other processes.
    start, cpu_start = time.perf_counter(), time.process_time()
    renderer = DigestRenderer(config, collection.site, collection.content)
    variants: dict[str, Variant | None] = {}
    for selection in chosen:
        if selection.key() not in variants:
            variants[selection.key()] = renderer.render(args.date, day_posts, selection)
    cpu_rendered = time.process_time()
    sent = 0
    total_bytes = 0
    for selection, person in zip(chosen, people, strict=True):
        variant = variants[selection.key()]
        if variant is None:
            continue  # nothing they chose appeared that day: no message
        total_bytes += len(message_bytes(config, variant, person, args.date))
        sent += 1
    grouped, cpu_grouped = time.perf_counter() - start, time.process_time() - cpu_start
    rate, cpu_rate = sent / grouped, sent / cpu_grouped
    build_rate = sent / (cpu_grouped - (cpu_rendered - cpu_start))
    print(f"grouped: {sent} messages in {grouped:.2f} s wall, {cpu_grouped:.2f} s CPU, of which "
          f"{cpu_rendered - cpu_start:.2f} s CPU rendering {sum(v is not None for v in variants.values())} variants")
    print(f"         {rate:,.0f} messages/s wall, {cpu_rate:,.0f}/s CPU all in; {build_rate:,.0f}/s CPU for "
          f"personalise + build + as_bytes alone; average message {total_bytes / max(sent, 1) / 1024:.1f} KiB")

    # Naive: render and inline for every subscriber (a fresh renderer, as a naive loop would).
    start, cpu_start = time.perf_counter(), time.process_time()
    naive_sent = 0
    for selection, person in list(zip(chosen, people, strict=True))[: args.naive]:
        variant = DigestRenderer(config, collection.site, collection.content).render(args.date, day_posts, selection)
        if variant is None:
            continue
        message_bytes(config, variant, person, args.date)
        naive_sent += 1
    naive, cpu_naive = time.perf_counter() - start, time.process_time() - cpu_start
    naive_rate, cpu_naive_rate = naive_sent / naive, naive_sent / cpu_naive
    print(f"naive:   {naive_sent} messages in {naive:.2f} s wall, {cpu_naive:.2f} s CPU = {naive_rate:,.1f} messages/s "
          f"wall, {cpu_naive_rate:,.1f}/s CPU ({args.subscribers:,} would take {args.subscribers / naive_rate / 60:.1f} min)")
    ratio, cpu_ratio = rate / naive_rate, cpu_rate / cpu_naive_rate
    ok = min(ratio, cpu_ratio) >= 50 and cpu_rate >= 2000
    print(f"speed-up: {ratio:,.0f}x wall, {cpu_ratio:,.0f}x CPU (target >= 50x); {rate:,.0f}/s wall, "
          f"{cpu_rate:,.0f}/s CPU (target >= 2,000/s): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
