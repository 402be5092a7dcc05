"""The command line: parse, call one library function, turn library errors into messages and exit codes.

Each command stays thin; the work is in the modules of the pipeline.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .config import Config, describe, load_config
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
        cleaned = {s: {k: v for k, v in keys.items() if v is not None} for s, keys in overrides.items()}
        return load_config(self.config_path, os.environ, cleaned)


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


@click.group()
@click.version_option(__version__, prog_name="finews-feeds")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Config file (default: $FINEWS_CONFIG, else config/finews.toml when present).")
@click.option("--debug", is_flag=True, help="Log at DEBUG level and show tracebacks.")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]), help="Log lines as text or JSON objects.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool, log_level: str, log_format: str) -> None:
    """Feeds and a daily digest for a Jekyll news site."""
    setup_logging("DEBUG" if debug else log_level, log_format)
    ctx.obj = State(config_path, debug)


@cli.command("config")
@click.pass_obj
@handle_errors
def config_command(state: State) -> None:
    """Print every config key with its default and what it is for (and check the config)."""
    state.config()
    click.echo(describe(), nl=False)


@cli.command("check")
@click.option("--site", "site_dir", type=click.Path(path_type=Path), help="The Jekyll site folder (site.source).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handle_errors
def check_command(state: State, site_dir: Path | None, as_json: bool) -> None:
    """Read the site's posts and report what was collected and every rejected file."""
    from .collector import collect_site, summarize

    config = state.config(site={"source": str(site_dir) if site_dir else None})
    collection = collect_site(config)
    summary = summarize(collection)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
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
    from .build import run_build

    config = state.config(site={"source": str(site_dir) if site_dir else None},
                          feeds={"output": str(out_dir) if out_dir else None})
    report = run_build(config, full=full)
    click.echo(report.summary())
    for error in report.rejected:
        click.echo(f"rejected {error.path}: {error.message}", err=True)
    sys.exit(report.exit_code(strict))


@cli.command("digest")
@click.option("--site", "site_dir", type=click.Path(path_type=Path), help="The Jekyll site folder (site.source).")
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Day of the digest (YYYY-MM-DD); default: the previous day in the site's time zone.")
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the preview's HTML here.")
@click.option("--text", "text_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the preview's text part here.")
@click.option("--eml", "eml_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the whole preview message (.eml) here.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the web copy digests/YYYY-MM-DD.html (default: feeds.output).")
@click.pass_obj
@handle_errors
def digest_command(state: State, site_dir: Path | None, day: Any, html_path: Path | None, text_path: Path | None,
                   eml_path: Path | None, out_dir: Path | None) -> None:
    """Render the digest of a day: its web copy, and a preview for a sample recipient."""
    from datetime import UTC, datetime

    from .digest import digest_day, write_preview

    config = state.config(site={"source": str(site_dir) if site_dir else None})
    now = datetime.now(UTC)
    the_day = day.date() if day is not None else digest_day(config, now)
    report = write_preview(config, the_day, now=now, html_path=html_path, text_path=text_path, eml_path=eml_path,
                           out_dir=out_dir)
    if not report.written:
        click.echo(f"{the_day}: no articles, no digest (set digest.send_empty = true to send one anyway)")
        return
    click.echo(f"{the_day}: {report.count} articles, {report.html_bytes} bytes of HTML")
    click.echo(f"subject: {report.subject}")
    for path in report.written:
        click.echo(f"wrote {path}")


def main() -> None:
    cli(prog_name="finews-feeds")
