"""Logs: one time format (UTC with Z) in text, JSON and /healthz; JSON lines with fields; each fact said once."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from smtp_fakes import SECRET, Sink, make_collection, make_config, running

from finews_feeds.cli import cli
from finews_feeds.clock import iso
from finews_feeds.logs import JsonFormatter, TextFormatter, subscriber_event
from finews_feeds.mail.store import Store
from finews_feeds.models import PostSet
from finews_feeds.service.daemon import Daemon, DaemonStatus

ROOT = Path(__file__).resolve().parent.parent
DAY = date(2022, 4, 20)
T0 = datetime(2022, 4, 21, 7, 30, tzinfo=UTC)
#: 2022-04-20 23:30:00.123 UTC: 07:30 the next morning in Shanghai.
CREATED = datetime(2022, 4, 20, 23, 30, 0, 123000, tzinfo=UTC).timestamp()
UTC_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z")

JsonLines = Callable[[], list[dict[str, Any]]]


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    made = logging.getLogger("finews_feeds.mail.delivery").makeRecord(
        "finews_feeds.mail.delivery", logging.INFO, __file__, 1, message, args, None, extra=extra)
    made.created = CREATED
    return made


@pytest.fixture
def json_lines() -> Iterator[Callable[[int], JsonLines]]:
    """``capture(level)``: the root logger writes JSON lines (the CLI's --log-format json) to a buffer
    from then on; the function it returns parses what was written so far."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def capture(level: int) -> JsonLines:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
        root.setLevel(level)
        return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]

    yield capture
    root.handlers[:], level = saved
    root.setLevel(level)


def test_text_and_json_lines_have_the_time_in_utc_with_z_and_json_has_the_fields() -> None:
    line = record("digest %s: sent %d", "2022-04-20", 2, day="2022-04-20", sent=2, seconds=0.25)
    assert TextFormatter().format(line) == "2022-04-20T23:30:00.123Z INFO finews_feeds.mail.delivery: digest 2022-04-20: sent 2"
    assert json.loads(JsonFormatter().format(line)) == {
        "time": "2022-04-20T23:30:00.123Z", "level": "info", "logger": "finews_feeds.mail.delivery",
        "message": "digest 2022-04-20: sent 2", "day": "2022-04-20", "sent": 2, "seconds": 0.25,
    }
    # A field that is no JSON type is written as text, never a failed line.
    assert json.loads(JsonFormatter().format(record("x", path=Path("/a/b"))))["path"] == "/a/b"
    # uvicorn adds its message again with terminal colours: not a field.
    assert "color_message" not in json.loads(JsonFormatter().format(record("x", color_message="\x1b[36mx")))


def test_iso_writes_any_zone_as_utc_with_z() -> None:
    shanghai = timezone(timedelta(hours=8))
    assert iso(datetime(2022, 4, 21, 7, 30, tzinfo=shanghai)) == "2022-04-20T23:30:00Z"
    assert iso(CREATED, "milliseconds") == "2022-04-20T23:30:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        iso(datetime(2022, 4, 21, 7, 30))


def test_healthz_times_are_utc_with_z() -> None:
    shanghai = timezone(timedelta(hours=8))
    status = DaemonStatus(started_at=datetime(2022, 4, 21, 7, 0, tzinfo=shanghai))
    status.build_started(datetime(2022, 4, 21, 7, 30, tzinfo=shanghai), 100.0)
    snapshot = status.snapshot(101.5)
    assert snapshot["started_at"] == "2022-04-20T23:00:00Z"
    assert snapshot["build_running"] == {"started_at": "2022-04-20T23:30:00Z", "seconds": 1.5}


def test_a_subscriber_step_names_the_address_only_at_debug(json_lines: Callable[[int], JsonLines]) -> None:
    log = logging.getLogger("finews_feeds.service.web")
    lines = json_lines(logging.INFO)
    subscriber_event(log, "subscription confirmed", "reader@example.org")
    [line] = lines()
    assert (line["message"], "address" in line, "reader@example.org" in json.dumps(line)) == (
        "subscription confirmed", False, False)
    lines = json_lines(logging.DEBUG)
    subscriber_event(log, "subscription confirmed", "reader@example.org")
    [line] = lines()
    assert (line["level"], line["message"], line["address"]) == (
        "info", "subscription confirmed: reader@example.org", "reader@example.org")


class Collected:
    """Posts as the daemon's collection hands them out (it closes what it collected)."""

    def __init__(self, posts: PostSet) -> None:
        self.posts = posts
        self.site, self.content, self.between = posts.site, posts.content, posts.between

    def close(self) -> None:
        pass


def build_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "finews.toml"
    path.write_text(f'[site]\nsource = "{ROOT / "demo-site"}"\ncache_dir = "{tmp_path / "cache"}"\n'
                    f'[feeds]\noutput = "{tmp_path / "feeds"}"\n', encoding="utf-8")
    return path


def test_build_prints_its_summary_once_and_logs_it_as_fields_when_asked(tmp_path: Path) -> None:
    config = build_config_file(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(config), "build"])
    assert result.exit_code == 0, result.output
    [summary] = result.stdout.splitlines()
    assert summary.startswith("posts: 301, feeds: 94 (")
    assert result.stderr == ""  # the library's INFO line is not shown again by default

    result = CliRunner().invoke(cli, ["--config", str(config), "--log-level", "INFO", "--log-format", "json",
                                      "build", "--full"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    [built] = [line for line in lines if line["message"].startswith("feeds built: ")]
    assert built["message"] == "feeds built: " + result.stdout.splitlines()[0]
    assert (built["posts"], built["feeds"], built["rejected_files"], built["incremental"]) == (301, 94, 0, False)
    assert built["seconds"] > 0 and built["collect_seconds"] >= 0
    assert all(UTC_Z.fullmatch(line["time"]) for line in lines)


def test_a_rejected_post_is_logged_with_its_file_as_a_field(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "_posts").mkdir(parents=True)
    (site / "_posts" / "2022-04-20-bad.md").write_text("---\ntitle: [unclosed\n---\nbody\n", encoding="utf-8")
    (site / "_posts" / "2022-04-20-good.md").write_text("---\ntitle: good\n---\nbody\n", encoding="utf-8")
    config = build_config_file(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(config), "--log-format", "json", "build", "--site", str(site)])
    assert result.exit_code == 0, result.output
    [warning] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert (warning["level"], warning["file"]) == ("warning", "_posts/2022-04-20-bad.md")
    assert warning["message"].startswith("_posts/2022-04-20-bad.md: ")


def test_a_daemon_digest_run_logs_sent_once_with_its_counts(
        tmp_path: Path, json_lines: Callable[[int], JsonLines]) -> None:
    sink = Sink()
    with running(sink) as port:
        url = f"sqlite:///{tmp_path}/finews.sqlite3"
        with Store.open(url) as store:
            for email in ("a@example.org", "b@example.org"):
                store.add_subscriber(email, confirmed=True, now=T0)
        config = make_config(port, url, feeds={"output": str(tmp_path / "feeds")})
        daemon = Daemon(config, digest_day=DAY, clock=lambda: T0)
        daemon.collect = lambda: Collected(make_collection())  # type: ignore[method-assign,return-value]
        daemon.store = Store.open(url)
        lines = json_lines(logging.INFO)
        try:
            daemon.digest(T0)
        finally:
            daemon.store.close()
    assert len(sink.messages) == 2
    said = [line for line in lines() if line["logger"].startswith("finews_feeds")]
    assert [line["message"] for line in said if "sent" in line["message"]] == [
        "digest 2022-04-20: sent 2, skipped 0, failed 0"]
    [run] = [line for line in said if line["message"].startswith("digest run for")]
    assert (run["message"], run["day"], run["scheduled"]) == (
        "digest run for 2022-04-20 (scheduled 2022-04-21T07:30:00Z)", "2022-04-20", "2022-04-21T07:30:00Z")
    [done] = [line for line in said if "sent" in line]
    assert {k: done[k] for k in ("day", "sent", "skipped", "failed", "retried", "already_sent", "total")} == {
        "day": "2022-04-20", "sent": 2, "skipped": 0, "failed": 0, "retried": 0, "already_sent": 0, "total": 2}
    assert done["seconds"] >= 0
    assert daemon.status.last_send is not None and daemon.status.last_send["finished_at"] == "2022-04-21T07:30:00Z"
    assert "a@example.org" not in json.dumps(said)
    assert SECRET not in json.dumps(said)
