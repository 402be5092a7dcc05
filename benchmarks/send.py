"""Sending at scale (issue 14): the real command, ``finews-feeds digest --send``, end to end (collect the
demo site, render, MIME, ledger, SMTP), to N subscribers, against the sink in ``benchmarks/sink.py``.

    .venv/bin/python benchmarks/send.py [--subscribers 20000] [--quick] [--scenarios a,b,...]
                                        [--max-seconds 120] [--profile-subscribers 2000]

Scenarios (each on a fresh database holding N active subscribers, half of them choosing one category,
as on a real list; the demo site's day 2022-04-20):

- ``sqlite``: sink without delay, SQLite, one worker (default connections);
- ``postgresql``: sink without delay, PostgreSQL, one worker;
- ``relay32``: sink holding each 250 for 50 ms (a remote relay), SQLite, one worker, 32 connections;
- ``pg-1x16`` / ``pg-2x16``: the 50 ms sink, PostgreSQL, one worker with 16 connections, then two
  worker processes with 16 each started together (the ratio of the two, and whether anyone got two
  copies);
- ``dkim``: sink without delay, SQLite, DKIM with an RSA-2048 key; then the same command on
  ``--profile-subscribers`` under cProfile (every thread), and where its time goes (with
  ``smtp.processes = 1``: in sender processes the messages' time would be out of the profile's sight).

Every scenario runs with the default ``smtp.processes`` (one sender process per core for a send
this large, where the installed finews-feeds has them).

Start-up is subtracted and said so: the same command on a database with no subscribers, run in the
same session (median of three, after a warm-up that fills the collector's cache), is taken off each
wall time. A scenario still running after ``--max-seconds`` is stopped with SIGTERM (the command ends
after the messages in flight) and its rate is what the sink had accepted by then over the time until
then (also less the start-up); the table marks it. Connections: ``smtp.connections`` is set when the
installed finews-feeds has that key; without it, one connection is what a worker has (the table says).
``--quick``: 300 subscribers, 20 s a scenario, one start-up run without warm-up: a smoke test, not a
measurement.

PostgreSQL at 127.0.0.1:5432 (trust auth, db ``test``), each scenario in a schema of its own, dropped
afterwards. The machine's cores are shared: compare figures taken in the same run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sink import SinkProcess  # noqa: E402
from smtp_fakes import SECRET, database_url, postgres_available  # noqa: E402

DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, tzinfo=UTC)
SITE = ROOT / "demo-site"
SCENARIOS = ("sqlite", "postgresql", "relay32", "pg-1x16", "pg-2x16", "dkim")
RELAY_DELAY = 0.05


@dataclass
class Result:
    scenario: str
    label: str
    subscribers: int
    sent: int
    wall: float
    startup: float
    stopped: bool
    duplicated: int
    duplicated_same_id: int
    connections: str
    workers: int

    @property
    def rate(self) -> float:
        return self.sent / max(1e-9, self.wall - self.startup)


def supports(key: str) -> bool:
    """Whether the installed finews-feeds has ``smtp.<key>`` (the connection pool arrives with issue 14)."""
    from finews_feeds.config import SmtpConfig

    return key in {f.name for f in fields(SmtpConfig)}


def supports_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "finews_feeds", "digest", "--help"], capture_output=True, text=True)
    return "--workers" in out.stdout


def write_config(path: Path, port: int, url: str, connections: int | None = None, dkim: Path | None = None,
                 processes: int | None = None) -> None:
    smtp = ['host = "127.0.0.1"', f"port = {port}", 'security = "none"', "rate_per_second = 0", "timeout = 30"]
    if connections is not None and supports("connections"):
        smtp.append(f"connections = {connections}")
    if processes is not None and supports("processes"):
        smtp.append(f"processes = {processes}")
    if dkim is not None:
        smtp += ['dkim_selector = "bench"', 'dkim_domain = "news.example.org"', f'dkim_key_file = "{dkim}"']
    path.write_text("\n".join([
        "[site]", f'source = "{SITE}"', f'cache_dir = "{path.parent / "cache"}"',
        "[smtp]", *smtp,
        "[digest]", 'from = "finews <digest@news.example.org>"',
        "[web]", 'public_url = "https://subscribe.example.org"',
        "[database]", f'url = "{url}"', "",
    ]), encoding="utf-8")


def fill(url: str, n: int) -> None:
    """``n`` active subscribers, half choosing the yicai category (two variants rendered)."""
    from finews_feeds.mail.migrations import subscribers
    from finews_feeds.mail.store import Store

    with Store.open(url) as store, store.engine.begin() as conn:
        rows = [{"email": f"reader{i:07d}@example.org", "email_key": f"reader{i:07d}@example.org",
                 "name": f"读者{i}", "status": "active", "categories": '["yicai"]' if i % 2 else "", "tags": "",
                 "created_at": T0, "confirmed_at": T0, "unsubscribed_at": None, "bounced_at": None,
                 "permanent_failures": 0} for i in range(n)]
        for start in range(0, n, 5000):
            conn.execute(subscribers.insert(), rows[start:start + 5000])


def ledger_sent(url: str) -> int:
    from finews_feeds.mail.store import Store

    with Store.open(url) as store:
        return store.ledger_counts(DAY)["sent"]


def command(config: Path, *extra: str, profile: Path | None = None) -> list[str]:
    prefix = [sys.executable, str(Path(__file__).resolve()), "--profile-child", str(profile)] if profile else \
        [sys.executable, "-m", "finews_feeds"]
    return [*prefix, "--config", str(config), "--log-level", "ERROR", "digest", "--date", DAY.isoformat(),
            "--send", "--out", str(config.parent / "out"), *extra]


def environment() -> dict[str, str]:
    env = {**os.environ, "FINEWS_SECRET_KEY": SECRET}
    env.pop("FINEWS_CONFIG", None)
    return env


def run_commands(commands: list[list[str]], sink: SinkProcess, max_seconds: float) -> tuple[float, int, bool]:
    """Start ``commands`` together; wall seconds until all ended (or until stopped), messages the sink
    took by then, and whether they had to be stopped."""
    before = sink.stats()["received"]
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(cmd[-1]).parent) for cmd in commands]
    deadline = started + max_seconds
    stopped = False
    while any(p.poll() is None for p in procs):
        if time.perf_counter() > deadline:
            stopped = True
            break
        time.sleep(0.02)
    wall = time.perf_counter() - started
    sent = sink.stats()["received"] - before
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        if proc.returncode not in (0,) and not stopped:
            raise SystemExit(f"{' '.join(proc.args)} exited {proc.returncode}:\n{out}\n{err}")
    return wall, sent, stopped


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    folder.mkdir(parents=True, exist_ok=True)
    with database_url(kind, folder) as url:
        yield url


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.sinks: dict[float, SinkProcess] = {}
        self.startups: dict[str, float] = {}
        self.results: list[Result] = []
        self.workers_flag = supports_workers()
        self.pool = supports("connections")
        self.dkim_key = work / "dkim.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
                        str(self.dkim_key)], check=True, capture_output=True)

    def sink(self, delay: float) -> SinkProcess:
        if delay not in self.sinks:
            self.sinks[delay] = SinkProcess(delay)
        return self.sinks[delay]

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()

    def startup(self, kind: str) -> float:
        """Median wall seconds of the command on an empty database of ``kind`` (after a warm-up)."""
        if kind not in self.startups:
            folder = self.work / f"startup-{kind}"
            with database(kind, folder) as url:
                config = folder / "finews.toml"
                write_config(config, self.sink(0.0).port, url)
                times = []
                # The warm-up fills the collector's cache, as every run but a first one finds it (--quick skips it).
                warm = 0 if self.args.quick else 1
                for _ in range(warm + self.args.startup_runs):
                    wall, _, _ = run_commands([command(config)], self.sink(0.0), 120)
                    times.append(wall)
                self.startups[kind] = statistics.median(times[warm:])
            print(f"start-up ({kind}: the command on an empty database, median of {self.args.startup_runs}): "
                  f"{self.startups[kind]:.2f} s", flush=True)
        return self.startups[kind]

    def scenario(self, name: str, label: str, kind: str, delay: float, connections: int | None, workers: int = 1,
                 dkim: bool = False) -> Result:
        n = self.args.subscribers
        startup = self.startup(kind)
        sink = self.sink(delay)
        sink.reset()
        folder = self.work / name
        with database(kind, folder) as url:
            config = folder / "finews.toml"
            write_config(config, sink.port, url, connections, self.dkim_key if dkim else None)
            fill(url, n)
            wall, sent, stopped = run_commands([command(config) for _ in range(workers)], sink, self.args.max_seconds)
            stats = sink.stats()
            if not stopped:
                recorded = ledger_sent(url)
                assert recorded == n == stats["received"], (name, recorded, n, stats)
        shown = str(connections if self.pool and connections else "default" if self.pool else 1)
        result = Result(name, label, n, sent, wall, startup, stopped, stats["duplicated"], stats["duplicated_same_id"],
                        shown, workers)
        self.results.append(result)
        print(f"{name:11s} {label}: {sent} of {n} in {wall:.1f} s{' (stopped)' if stopped else ''}, less start-up "
              f"{startup:.2f} s = {result.rate:,.0f} msgs/s; recipients with two copies: {result.duplicated}"
              f" (same Message-ID: {result.duplicated_same_id})", flush=True)
        return result

    def profile(self) -> None:
        """The DKIM command under cProfile on fewer subscribers: where the time goes."""
        folder = self.work / "profile"
        sink = self.sink(0.0)
        with database("sqlite", folder) as url:
            config = folder / "finews.toml"
            # One process (smtp.processes = 1), so that the profile holds the messages' time too.
            write_config(config, sink.port, url, None, self.dkim_key, processes=1)
            fill(url, self.args.profile_subscribers)
            out = folder / "profile.pstats"
            proc = subprocess.run(command(config, profile=out), env=environment(), capture_output=True, text=True,
                                  cwd=folder)
            if proc.returncode:
                raise SystemExit(proc.stderr)
        stats = pstats.Stats(str(out))
        total = sum(tt for (_, _, tt, _, _) in stats.stats.values())  # type: ignore[attr-defined]
        groups: dict[str, float] = {}
        for (filename, _, func), (_, _, tt, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            groups[_group(filename, func)] = groups.get(_group(filename, func), 0.0) + tt
        print(f"where the time goes with DKIM ({self.args.profile_subscribers} subscribers, cProfile over every "
              f"thread, own time grouped; {total:.1f} s profiled):")
        for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {group:44s} {seconds:6.2f} s {100 * seconds / total:5.1f}%")
        text = io.StringIO()
        pstats.Stats(str(out), stream=text).sort_stats("tottime").print_stats(12)
        print("\n".join(line for line in text.getvalue().splitlines()[-16:] if line.strip()))


def _group(filename: str, func: str) -> str:
    """A profile entry's stage, by where its code lives."""
    name = filename.replace("\\", "/")
    rules = [
        ("/dkim/", "DKIM (dkimpy: canonicalise, hash)"), ("rsa", "DKIM (RSA signature)"),
        ("cryptography", "DKIM (RSA signature)"), ("/email/", "MIME (email package)"),
        ("sqlalchemy", "ledger (SQLAlchemy)"), ("sqlite3", "ledger (sqlite3, commits)"),
        ("psycopg", "ledger (psycopg)"), ("smtplib", "SMTP (smtplib)"), ("socket", "SMTP (socket)"),
        ("ssl", "SMTP (socket)"), ("jinja2", "render (Jinja)"), ("premailer", "render (CSS inlining)"),
        ("cssutils", "render (CSS inlining)"), ("lxml", "render (CSS inlining)"), ("markdown", "collect (markup)"),
        ("finews_feeds/site", "collect (site)"), ("finews_feeds/mail/message", "MIME (finews message.py)"),
        ("finews_feeds/mail/mailer", "SMTP (finews mailer.py)"), ("finews_feeds/mail/store", "ledger (store.py)"),
        ("finews_feeds/mail/delivery", "delivery loop"), ("threading", "waiting (threads, locks)"),
        ("queue", "waiting (threads, locks)"),
    ]
    if "acquire" in func:
        return "waiting (threads, locks)"
    if func == "<built-in method builtins.pow>":
        return "DKIM (RSA signature: dkimpy's pure-Python pow)"
    if name == "~" and ("compile" in func or "marshal" in func or "__build_class__" in func):
        return "start-up (imports, regex compiling)"
    if "/re/" in name:
        return "start-up (imports, regex compiling)"
    for needle, group in rules:
        if needle in name or needle in func:
            return group
    if name == "~":
        return f"built-ins ({func[:30]})"
    return "other Python"


def profile_child(out: Path, argv: list[str]) -> None:
    """Run the CLI with ``argv`` under cProfile, one profiler per thread, merged into ``out``."""
    import threading

    profiles: list[cProfile.Profile] = []
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    from finews_feeds.cli import cli

    main_profile = cProfile.Profile()
    main_profile.enable()
    try:
        cli.main(argv, prog_name="finews-feeds", standalone_mode=False)
    finally:
        main_profile.disable()
        stats = pstats.Stats(main_profile)
        for profile in profiles:
            stats.add(profile)
        stats.dump_stats(str(out))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--profile-child":
        profile_child(Path(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="300 subscribers, 20 s a scenario: a smoke test")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"some of {', '.join(SCENARIOS)}")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop a scenario (SIGTERM) after this")
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--profile-subscribers", type=int, default=2000)
    parser.add_argument("--worker-connections", type=int, default=16,
                        help="connections of each worker in pg-1x16 / pg-2x16 (fewer: the relay's latency is the limit, "
                             "not this machine's two cores)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.subscribers, args.max_seconds, args.startup_runs = min(args.subscribers, 300), 20.0, 1
        args.profile_subscribers = min(args.profile_subscribers, 100)
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if any(s in ("postgresql", "pg-1x16", "pg-2x16") for s in chosen) and not postgres_available():
        raise SystemExit("PostgreSQL at 127.0.0.1:5432 is not reachable")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        bench = Bench(args, Path(tmp))
        print(f"finews-feeds {_commit()}: {args.subscribers} subscribers, demo day {DAY}; connection pool "
              f"(smtp.connections): {'yes' if bench.pool else 'no, one connection a worker'}; --workers: "
              f"{'yes' if bench.workers_flag else 'no'}; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores", flush=True)
        try:
            if "sqlite" in chosen:
                bench.scenario("sqlite", "no delay, SQLite, 1 worker", "sqlite", 0.0, None)
            if "postgresql" in chosen:
                bench.scenario("postgresql", "no delay, PostgreSQL, 1 worker", "postgresql", 0.0, None)
            if "relay32" in chosen:
                bench.scenario("relay32", "50 ms sink, SQLite, 1 worker, 32 connections", "sqlite", RELAY_DELAY, 32)
            one = two = None
            if "pg-1x16" in chosen:
                c = args.worker_connections
                one = bench.scenario("pg-1x16", f"50 ms sink, PostgreSQL, 1 worker x {c} connections", "postgresql",
                                     RELAY_DELAY, c)
            if "pg-2x16" in chosen:
                c = args.worker_connections
                two = bench.scenario("pg-2x16", f"50 ms sink, PostgreSQL, 2 workers x {c} connections", "postgresql",
                                     RELAY_DELAY, c, workers=2)
            if one and two:
                print(f"two workers / one worker: {two.rate / one.rate:.2f}x; recipients with two copies: "
                      f"{two.duplicated}", flush=True)
            if "dkim" in chosen:
                bench.scenario("dkim", "no delay, SQLite, 1 worker, DKIM RSA-2048", "sqlite", 0.0, None, dkim=True)
                bench.profile()
        finally:
            bench.close()
        if args.json:
            args.json.write_text(json.dumps([{**r.__dict__, "rate": r.rate} for r in bench.results], indent=1))


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    main()
