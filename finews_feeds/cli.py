"""The command line: parse, call one library function, turn library errors into messages and exit codes.

Each command stays thin; the work is in the modules of the pipeline. Each command imports the
stage it runs, and only that one (the one place in the package that imports inside functions):
the whole package, the daemon's web server, scheduler and database drivers included, takes
0.55 s to import, the feed build 0.19 s, and `build` after one new post must stay under a second
at 100,000 posts (measured 2026-12-02).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .config import Config, Effective, describe, describe_effective, load_effective
from .errors import FinewsError
from .logs import setup_logging

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What the group's options give every command."""

    def __init__(self, config_path: Path | None, debug: bool) -> None:
        self.config_path = config_path
        self.debug = debug

    def config(self, **overrides: dict[str, Any]) -> Config:
        """Load the config with flag values layered on top (None values are not given)."""
        return self.effective(overrides).config

    def effective(self, overrides: dict[str, dict[str, Any]], flag_names: dict[str, str] | None = None) -> Effective:
        """:meth:`config` with the source of every value; ``flag_names`` names the flag of each override."""
        cleaned = {s: {k: v for k, v in keys.items() if v is not None} for s, keys in overrides.items()}
        return load_effective(self.config_path, os.environ, cleaned, flag_names)


def handle_errors(func: F) -> F:
    """Turn a :class:`FinewsError` into a one-line message and its exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        state: State = ctx.find_object(State)  # type: ignore[assignment]
        try:
            return func(*args, **kwargs)
        except FinewsError as exc:
            if state is not None and state.debug:
                raise
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def _quick_exit() -> None:
    global _QUICK_EXIT
    _QUICK_EXIT = True


@click.group()
@click.version_option(__version__, prog_name="finews-feeds")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Config file (default: $FINEWS_CONFIG, else config/finews.toml when present).")
@click.option("--debug", is_flag=True, help="Log at DEBUG level and show tracebacks.")
@click.option("--log-level", default=None, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Default: INFO for the daemon; WARNING for the other commands, which print their results.")
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]), help="Log lines as text or JSON objects.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool, log_level: str | None, log_format: str) -> None:
    """Feeds and a daily digest for a Jekyll news site."""
    # A command run by hand prints its summary (built, sent) on stdout; the library logs the same at
    # INFO for the daemon's journal. Showing both would say everything twice.
    default = "INFO" if ctx.invoked_subcommand == "daemon" else "WARNING"
    setup_logging("DEBUG" if debug else log_level or default, log_format)
    ctx.obj = State(config_path, debug)


@cli.command("config")
@click.option("--defaults", is_flag=True, help="Print every key with its default and what it is for instead.")
@click.option("--site", "site_dir", type=click.Path(path_type=Path), help="As the commands' --site (site.source).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="As build's --out (feeds.output).")
@click.pass_obj
@handle_errors
def config_command(state: State, defaults: bool, site_dir: Path | None, out_dir: Path | None) -> None:
    """Check the config and print every key's value in effect and where it came from (secrets masked)."""
    overrides = {"site": {"source": str(site_dir) if site_dir else None},
                 "feeds": {"output": str(out_dir) if out_dir else None}}
    effective = state.effective(overrides, {"site.source": "--site", "feeds.output": "--out"})
    click.echo(describe() if defaults else describe_effective(effective), nl=False)


@cli.command("check")
@click.option("--site", "site_dir", type=click.Path(path_type=Path), help="The Jekyll site folder (site.source).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handle_errors
def check_command(state: State, site_dir: Path | None, as_json: bool) -> None:
    """Read the site's posts and report what was collected and every rejected file."""
    from .site.collector import collect_site, summarize, write_json

    config = state.config(site={"source": str(site_dir) if site_dir else None})
    collection = collect_site(config)
    _quick_exit()
    summary = summarize(collection)
    if as_json:
        write_json(summary, sys.stdout)
    else:
        click.echo(f"posts: {len(summary['posts'])}")
        click.echo(f"dates: {summary['first_date']} .. {summary['last_date']}")
        click.echo(f"categories ({len(summary['categories'])}):")
        for name, count in summary["categories"].items():
            click.echo(f"  {name}: {count}")
        click.echo(f"tags: {len(summary['tags'])}")
        for name, count in list(summary["tags"].items())[:20]:
            click.echo(f"  {name}: {count}")
        if len(summary["tags"]) > 20:
            click.echo(f"  ... and {len(summary['tags']) - 20} more")
        click.echo(f"rejected files: {len(summary['errors'])}")
        for error in summary["errors"]:
            click.echo(f"  {error['path']}: {error['message']}")
    sys.exit(1 if collection.errors else 0)


@cli.command("build")
@click.option("--site", "site_dir", type=click.Path(path_type=Path), help="The Jekyll site folder (site.source).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Folder the feeds are written to (feeds.output).")
@click.option("--full", is_flag=True, help="Render every feed, not only the feeds whose posts changed.")
@click.option("--strict", is_flag=True, help="Exit 1 when the collector rejected any post file.")
@click.pass_obj
@handle_errors
def build_command(state: State, site_dir: Path | None, out_dir: Path | None, full: bool, strict: bool) -> None:
    """Write RSS, Atom and JSON feeds for the site, each category and each tag (incrementally)."""
    from .feeds.build import run_build

    config = state.config(site={"source": str(site_dir) if site_dir else None},
                          feeds={"output": str(out_dir) if out_dir else None})
    report = run_build(config, full=full)
    _quick_exit()
    click.echo(report.summary())
    for error in report.rejected:
        click.echo(f"rejected {error.path}: {error.message}", err=True)
    if config.feeds.websub_hub:
        _announce(config, config.feeds.websub_build_wait)
    sys.exit(report.exit_code(strict))


def _announce(config: Config, wait: float) -> bool:
    """Tell the WebSub hub what is queued, for ``wait`` seconds at most; whether all went."""
    from .feeds.hub import QUEUE, announce_queued

    sent = announce_queued(config.feeds, wait)
    if sent.sent or sent.refused:
        click.echo(f"websub: {sent.sent} feed URLs announced to {config.feeds.websub_hub}"
                   + (f", {sent.refused} refused by the hub" if sent.refused else ""))
    if sent.left:
        click.echo(f"warning: {sent.left} WebSub announcements left queued in "
                   f"{Path(config.feeds.output) / QUEUE}; the daemon or `finews-feeds websub` sends them", err=True)
    return not sent.left and not sent.refused


@cli.command("websub")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="The feeds folder (feeds.output).")
@click.option("--wait", type=float, default=60.0, show_default=True,
              help="Seconds to keep trying announcements the hub did not take before leaving them queued.")
@click.pass_obj
@handle_errors
def websub_command(state: State, out_dir: Path | None, wait: float) -> None:
    """Announce to the WebSub hub the changed feeds that builds left queued (exit 1 if some remain)."""
    from .errors import ConfigError

    config = state.config(feeds={"output": str(out_dir) if out_dir else None})
    if not config.feeds.websub_hub:
        raise ConfigError("feeds.websub_hub is not set: there is no hub to announce to")
    sys.exit(0 if _announce(config, wait) else 1)


@cli.command("digest")
@click.option("--site", "site_dir", type=click.Path(path_type=Path), help="The Jekyll site folder (site.source).")
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Day of the digest (YYYY-MM-DD); default: the previous day in the site's time zone.")
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the preview's HTML here.")
@click.option("--text", "text_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the preview's text part here.")
@click.option("--eml", "eml_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the whole preview message (.eml) here.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the web copy digests/YYYY-MM-DD.html (default: feeds.output).")
@click.option("--send", is_flag=True, help="Also send it to every active subscriber who has not had it yet (exactly once).")
@click.option("--send-to", "send_to", metavar="ADDRESS",
              help="Also send the real message to ADDRESS alone, as a test; the ledger is not touched.")
@click.option("--as", "as_email", metavar="SUBSCRIBER",
              help="With --send-to: the categories, tags and name of this subscriber.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --send: worker processes sharing the send (PostgreSQL only; see docs/delivery.md).")
@click.pass_obj
@handle_errors
def digest_command(state: State, site_dir: Path | None, day: Any, html_path: Path | None, text_path: Path | None,
                   eml_path: Path | None, out_dir: Path | None, send: bool = False, send_to: str | None = None,
                   as_email: str | None = None, workers: int = 1) -> None:
    """Render the digest of a day: its web copy, and a preview for a sample recipient."""
    from datetime import UTC, datetime

    from .mail.digest import digest_day, write_preview

    if as_email and not send_to:
        raise click.UsageError("--as needs --send-to ADDRESS")
    if send and send_to:
        raise click.UsageError("--send and --send-to are separate steps: test first, then send")
    config = state.config(site={"source": str(site_dir) if site_dir else None})
    if workers > 1:
        from .mail.workers import check_workers

        if not send:
            raise click.UsageError("--workers goes with --send")
        check_workers(config, workers)  # before the preview is written: refused at once
    now = datetime.now(UTC)
    the_day = day.date() if day is not None else digest_day(config, now)
    report = write_preview(config, the_day, now=now, html_path=html_path, text_path=text_path, eml_path=eml_path,
                           out_dir=out_dir)
    if not report.written:
        click.echo(f"{the_day}: no articles, no digest (set digest.send_empty = true to send one anyway)")
    else:
        click.echo(f"{the_day}: {report.count} articles, {report.html_bytes} bytes of HTML")
        click.echo(f"subject: {report.subject}")
        for path in report.written:
            click.echo(f"wrote {path}")
    if send:
        sys.exit(_send_digest(config, the_day, workers))
    if send_to:
        from .mail.testsend import send_test

        click.echo(send_test(config, the_day, send_to, now, as_email=as_email or "").summary())


# -- subscribers and sending (issue 5) --------------------------------------------------------


def _send_digest(config: Config, day: Any, workers: int = 1) -> int:
    """Send with a progress bar on a terminal (sent/total, rate, ETA), a plain line every 10 s
    otherwise, and a report; a stop signal ends after the messages in flight."""
    import signal
    import threading
    import time
    from datetime import UTC, datetime

    from .mail.delivery import PROGRESS_LOG_SECONDS, SendProgress
    from .mail.workers import send_day_workers

    stop = threading.Event()
    bars: list[Any] = []
    tracker = SendProgress(day)
    said = [time.monotonic()]
    terminal = sys.stderr.isatty()

    def on_signal(signum: int, _frame: Any) -> None:
        click.echo(f"\nstopping after the messages in flight ({signal.Signals(signum).name})", err=True)
        stop.set()

    def progress(done: int, total: int) -> None:
        if total < 1:
            return
        if not terminal:
            if time.monotonic() - said[0] >= PROGRESS_LOG_SECONDS:
                said[0] = time.monotonic()
                click.echo(tracker.line(), err=True)
            return
        if not bars:
            bars.append(click.progressbar(length=total, label="sending", file=sys.stderr, show_pos=True,
                                          item_show_func=lambda text: text))
        figures = tracker.snapshot()
        # A rate over less than a second says nothing; click adds the ETA once it knows one.
        rate = f"{figures['rate']:.0f} msgs/s" if figures["seconds"] >= 1 and figures["rate"] else None
        bars[0].update(done - bars[0].pos, rate)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = send_day_workers(config, day, workers, lambda: datetime.now(UTC), stop, progress, tracker=tracker)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bars:
            bars[0].render_finish()
    if report.open:
        click.echo(report.timing_line())
    for line in report.summary_lines():
        click.echo(line)
    if report.aborted:
        return 8
    return 0 if report.ok and not report.stopped else 1


@cli.group("subscribers")
def subscribers_group() -> None:
    """Add, remove, list, import and export subscribers."""


def _store(state: State) -> Any:
    from .mail.store import Store

    return Store.open(state.config().database.url)


@subscribers_group.command("add")
@click.argument("email")
@click.option("--name", default="", help="Name used in the greeting and the To header.")
@click.option("--categories", default="", help="Comma-separated categories to receive (default: everything).")
@click.option("--tags", default="", help="Comma-separated tags to receive (default: everything).")
@click.option("--confirmed", is_flag=True, help="Add as active (already confirmed) instead of pending.")
@click.pass_obj
@handle_errors
def subscribers_add(state: State, email: str, name: str, categories: str, tags: str, confirmed: bool) -> None:
    """Add a subscriber (pending until confirmed, unless --confirmed)."""
    from .mail.addresses import normalize_names

    with _store(state) as store:
        sub = store.add_subscriber(email, name=name, categories=normalize_names(categories, "category"),
                                   tags=normalize_names(tags, "tag"), confirmed=confirmed)
    click.echo(f"added {sub.email} ({sub.status})")


@subscribers_group.command("remove")
@click.argument("email")
@click.pass_obj
@handle_errors
def subscribers_remove(state: State, email: str) -> None:
    """Delete a subscriber and their delivery records."""
    with _store(state) as store:
        sub = store.remove_subscriber(email)
    click.echo(f"removed {sub.email}")


@subscribers_group.command("list")
@click.option("--status", type=click.Choice(["pending", "active", "unsubscribed", "bounced"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
@handle_errors
def subscribers_list(state: State, status: str | None, as_json: bool) -> None:
    """List subscribers, oldest first."""
    with _store(state) as store:
        subs = store.list_subscribers(status)
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in subs], ensure_ascii=False, indent=2))
        return
    for s in subs:
        choice = ",".join(s.categories + tuple(f"#{t}" for t in s.tags)) or "everything"
        name = f" ({s.name})" if s.name else ""
        click.echo(f"{s.email}{name}\t{s.status}\t{choice}\t{s.created_at:%Y-%m-%d %H:%M}")
    click.echo(f"{len(subs)} subscriber{'s' if len(subs) != 1 else ''}", err=True)


@subscribers_group.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--confirmed", is_flag=True, help="Rows without a status column become active, not pending.")
@click.pass_obj
@handle_errors
def subscribers_import(state: State, file: Path, confirmed: bool) -> None:
    """Import a CSV file (column email required; name, status, categories, tags optional)."""
    from datetime import UTC, datetime

    from .mail.subscribers import import_csv

    with _store(state) as store:
        report = import_csv(store, file, datetime.now(UTC), confirmed=confirmed)
    for bad in report.bad_rows:
        click.echo(f"{file}:{bad.line}: {bad.message}", err=True)
    click.echo(f"imported {report.added}, already present {report.already_present}, bad rows {len(report.bad_rows)}")
    sys.exit(1 if report.bad_rows else 0)


@subscribers_group.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_obj
@handle_errors
def subscribers_export(state: State, file: Path) -> None:
    """Write every subscriber to a CSV file that `import` reads back."""
    from .mail.subscribers import export_csv

    with _store(state) as store:
        count = export_csv(store, file)
    click.echo(f"exported {count} subscribers to {file}")


# -- bounces (issue 16) -------------------------------------------------------------------------


@cli.command("bounces")
@click.option("--once", is_flag=True, help="Read the mailbox once and exit (default: every bounces.poll_minutes until Ctrl-C).")
@click.option("--file", "files", multiple=True, type=click.File("rb"), metavar="FILE",
              help="Act on this saved report message (.eml; - for standard input) instead of reading the mailbox; repeatable.")
@click.pass_obj
@handle_errors
def bounces_command(state: State, once: bool, files: tuple[Any, ...]) -> None:
    """Act on bounces, complaints and mailed unsubscribe requests: from the bounces mailbox (IMAP) or from files."""
    import threading

    from .mail.mailbox import process_files, run_bounces
    from .mail.store import Store

    config = state.config()
    if files:
        with Store.open(config.database.url) as store:
            for line in process_files(config, store, [(getattr(f, "name", "<stdin>"), f.read()) for f in files]):
                click.echo(line)
        return
    stop = threading.Event()
    try:
        report = run_bounces(config, once=once, stop=stop, echo=click.echo)
    except KeyboardInterrupt:
        stop.set()
        return
    if report.failed:
        sys.exit(1)


# -- daemon (issue 6) ---------------------------------------------------------------------------


@cli.command("daemon")
@click.option("--digest-in", type=float, default=None, hidden=True,
              help="Also run the digest once, this many seconds after start (for tests and trials).")
@click.option("--digest-day", type=click.DateTime(["%Y-%m-%d"]), default=None, hidden=True,
              help="Day the digest runs cover, instead of the day the schedule gives.")
@click.option("--retry-after", type=float, default=None, hidden=True,
              help="Seconds before a digest run that could not reach everyone is tried again (default 300).")
@click.pass_obj
@handle_errors
def daemon_command(state: State, digest_in: float | None, digest_day: Any, retry_after: float | None) -> None:
    """Rebuild the feeds, send the daily digest and serve the web app, until SIGTERM or SIGINT."""
    from .service.daemon import RETRY_FIRST, run_daemon

    config = state.config()
    sys.exit(run_daemon(config, digest_in=digest_in, digest_day=digest_day.date() if digest_day else None,
                        retry_first=retry_after if retry_after is not None else RETRY_FIRST))


#: Set by commands that end holding a whole site's posts, see :func:`main`.
_QUICK_EXIT = False


def main() -> None:
    """The `finews-feeds` program."""
    try:
        cli(prog_name="finews-feeds")
    except SystemExit as exc:
        if not _QUICK_EXIT:
            raise
        # Freeing 100,000 posts object by object on the way out took a fifth of a rebuild;
        # the process is ending anyway. Output is flushed first; nothing else is pending.
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
