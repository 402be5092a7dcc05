"""Subscriber addresses, CSV import and export, and the `subscribers` commands."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from finews_feeds.cli import cli
from finews_feeds.errors import SubscriberError
from finews_feeds.mail.addresses import normalize_email, normalize_names
from finews_feeds.mail.store import Store
from finews_feeds.mail.subscribers import BadRow, export_csv, parse_csv, to_csv

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def test_normalize_email_lowercases_the_domain_only() -> None:
    assert normalize_email("  Ann.Lee@Example.ORG ") == "Ann.Lee@example.org"
    assert normalize_email("用户@例子.中国") == "用户@例子.中国"


@pytest.mark.parametrize(("bad", "reason"), [
    ("", "the email address is empty"),
    ("ann", "'ann' is not a valid email address: An email address must have an @-sign."),
    ("ann@localhost", "'ann@localhost' is not a valid email address: The part after the @-sign is not valid. It should have a period."),
])
def test_bad_addresses_say_what_is_wrong(bad: str, reason: str) -> None:
    with pytest.raises(SubscriberError) as caught:
        normalize_email(bad)
    assert caught.value.message == reason


def test_names_are_trimmed_deduplicated_and_sorted() -> None:
    assert normalize_names(" yicai, cailianshe,,yicai ", "category") == ("cailianshe", "yicai")
    assert normalize_names(["A股", " 基金 "], "tag") == ("A股", "基金")
    with pytest.raises(SubscriberError, match="tag 'a\\\\nb' contains a comma or a control character"):
        normalize_names(["a\nb"], "tag")


def test_parse_reports_bad_rows_by_their_line_and_keeps_the_rest() -> None:
    text = (
        "email,name,categories\n"
        "a@example.org,Ann,\"yicai,cailianshe\"\n"
        "not-an-address,Bob,\n"
        "\"c@example.org\",\"Chen\nwith a line break\",\n"
        "A@EXAMPLE.org,Ann again,\n"
        "d@example.org,Dee,,extra\n"
        ",,\n"
        "e@example.org,,\n"
    )
    good, bad = parse_csv(text, T0)
    assert [(s.email, s.name, s.status, s.categories) for s in good] == [
        ("a@example.org", "Ann", "pending", ("cailianshe", "yicai")),
        ("c@example.org", "Chen\nwith a line break", "pending", ()),
        ("e@example.org", "", "pending", ()),
    ]
    assert bad == [
        BadRow(3, "'not-an-address' is not a valid email address: An email address must have an @-sign."),
        BadRow(6, "A@example.org is repeated (first on line 2)"),
        BadRow(7, "more fields than the 3 columns of the header"),
    ]


def test_parse_needs_an_email_column_and_known_columns() -> None:
    with pytest.raises(SubscriberError, match="no `email` column"):
        parse_csv("mail,name\na@example.org,A\n", T0)
    with pytest.raises(SubscriberError, match="unknown columns: phone"):
        parse_csv("email,phone\na@example.org,1\n", T0)


def test_status_column_and_confirmed_flag() -> None:
    good, bad = parse_csv("email,status\na@example.org,active\nb@example.org,\nc@example.org,deleted\n", T0)
    assert [(s.email, s.status, s.confirmed_at) for s in good] == [
        ("a@example.org", "active", T0), ("b@example.org", "pending", None)]
    assert bad == [BadRow(4, "status 'deleted' is not one of pending, active, unsubscribed, bounced")]
    good, _ = parse_csv("email\nb@example.org\n", T0, confirmed=True)
    assert [s.status for s in good] == ["active"]


emails = st.builds(lambda local, domain: f"{local}@{domain}.example.org",
                   st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=20)
                   .filter(lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s),
                   st.sampled_from(["mail", "news", "x"]))
names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(str.strip)
choices = st.lists(st.text(alphabet="abcxyz财经股", min_size=1, max_size=6), max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(emails, names, st.sampled_from(["pending", "active", "unsubscribed"]), choices, choices),
                max_size=8, unique_by=lambda row: row[0].lower()))
def test_export_then_parse_gives_back_the_same_subscribers(rows: list[tuple[str, str, str, list[str], list[str]]]) -> None:
    from finews_feeds.mail.store import Subscriber

    subs = [
        Subscriber(0, email, name, status, tuple(sorted(set(cats))), tuple(sorted(set(tags))), T0,
                   T0 if status == "active" else None, T0 if status == "unsubscribed" else None)
        for email, name, status, cats, tags in rows
    ]
    good, bad = parse_csv(to_csv(subs), datetime(2030, 1, 1, tzinfo=UTC))
    assert bad == []
    assert good == subs


@given(st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_parse_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        good, bad = parse_csv("email,name\n" + text, T0)
    except SubscriberError:
        return
    assert all("@" in s.email for s in good)
    assert all(row.line >= 2 for row in bad)


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "finews.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/var/finews.sqlite3"\n', encoding="utf-8")
    return path


def invoke(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config_file), "--log-level", "WARNING", *args], env={"FINEWS_CONFIG": None})
    return result.exit_code, result.stdout, result.stderr


def test_add_list_and_remove(config_file: Path) -> None:
    assert invoke(config_file, "subscribers", "add", "Ann@Example.org", "--name", "Ann", "--categories", "yicai,stcn",
                  "--confirmed") == (0, "added Ann@example.org (active)\n", "")
    assert invoke(config_file, "subscribers", "add", "bob@example.org", "--tags", "A股")[:2] == (
        0, "added bob@example.org (pending)\n")
    code, out, err = invoke(config_file, "subscribers", "add", "ann@example.org")
    assert (code, out, err) == (7, "", "error: ann@example.org is already a subscriber (status active)\n")
    code, out, err = invoke(config_file, "subscribers", "add", "bad address")
    assert code == 7 and err.startswith("error: 'bad address' is not a valid email address")

    code, out, _ = invoke(config_file, "subscribers", "list")
    lines = [line.split("\t")[:3] for line in out.splitlines()]
    assert (code, lines) == (0, [["Ann@example.org (Ann)", "active", "stcn,yicai"],
                                 ["bob@example.org", "pending", "#A股"]])
    code, out, _ = invoke(config_file, "subscribers", "list", "--status", "pending", "--json")
    data = json.loads(out)
    assert code == 0 and [(d["email"], d["status"], d["tags"], d["confirmed_at"]) for d in data] == [
        ("bob@example.org", "pending", ["A股"], None)]

    assert invoke(config_file, "subscribers", "remove", "ANN@example.org") == (0, "removed Ann@example.org\n", "")
    assert invoke(config_file, "subscribers", "remove", "ann@example.org") == (
        7, "", "error: ann@example.org is not a subscriber\n")
    code, out, _ = invoke(config_file, "subscribers", "list", "--json")
    assert [d["email"] for d in json.loads(out)] == ["bob@example.org"]


def test_import_reports_bad_rows_and_importing_twice_changes_nothing(config_file: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("\ufeffemail,name,tags\na@example.org,Ann,A股\nnope,,\nb@example.org,,\n", encoding="utf-8")
    code, out, err = invoke(config_file, "subscribers", "import", str(csv_file), "--confirmed")
    assert (code, out) == (1, "imported 2, already present 0, bad rows 1\n")
    assert err == f"{csv_file}:3: 'nope' is not a valid email address: An email address must have an @-sign.\n"
    export1 = tmp_path / "one.csv"
    assert invoke(config_file, "subscribers", "export", str(export1)) == (
        0, f"exported 2 subscribers to {export1}\n", "")
    code, out, _ = invoke(config_file, "subscribers", "import", str(csv_file), "--confirmed")
    assert (code, out) == (1, "imported 0, already present 2, bad rows 1\n")
    export2 = tmp_path / "two.csv"
    invoke(config_file, "subscribers", "export", str(export2))
    assert export1.read_bytes() == export2.read_bytes()
    lines = export1.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ("email,name,status,categories,tags,created_at,confirmed_at,unsubscribed_at,frequency,weekday,"
                        "paused_until")
    assert [line.split(",")[:5] for line in lines[1:]] == [
        ["a@example.org", "Ann", "active", "", "A股"], ["b@example.org", "", "active", "", ""]]


def test_an_export_imports_into_another_database_unchanged(config_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "var" / "finews.sqlite3"
    with Store.open(f"sqlite:///{db}") as store:
        store.add_subscriber("a@example.org", name="Ann, Lee", categories=["yicai"], confirmed=True, now=T0)
        store.add_subscriber("b@example.org", now=T0)
        store.add_subscriber("c@example.org", confirmed=True, now=T0)
        store.unsubscribe("c@example.org", T0)
        store.update_preferences("c@example.org", categories=(), tags=(), frequency="weekly", weekday=6)
        store.pause("b@example.org", T0 + timedelta(days=9))
        before = [s.as_dict() for s in store.list_subscribers()]
    export = tmp_path / "all.csv"
    invoke(config_file, "subscribers", "export", str(export))
    other = tmp_path / "other.toml"
    other.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/other.sqlite3"\n', encoding="utf-8")
    assert invoke(other, "subscribers", "import", str(export)) == (
        0, "imported 3, already present 0, bad rows 0\n", "")
    with Store.open(f"sqlite:///{tmp_path}/other.sqlite3") as store:
        assert [s.as_dict() for s in store.list_subscribers()] == before


def test_import_of_a_missing_or_non_utf8_file(config_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    assert invoke(config_file, "subscribers", "import", str(missing)) == (
        7, "", f"error: {missing}: no such file\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("email,name\na@example.org,José\n".encode("latin-1"))
    code, _, err = invoke(config_file, "subscribers", "import", str(latin))
    assert code == 7 and "not UTF-8 text" in err and "hint: save the file as CSV UTF-8" in err


def test_a_failed_export_names_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "all.csv"
    target.mkdir()
    with Store.open(f"sqlite:///{tmp_path}/finews.sqlite3") as store:
        store.add_subscriber("a@example.org", now=T0)
        with pytest.raises(SubscriberError) as info:
            export_csv(store, target)
        assert info.value.message == f"{target}: Is a directory"
        assert os.listdir(folder) == ["all.csv"]
        with pytest.raises(SubscriberError) as info:
            export_csv(store, tmp_path / "missing" / "all.csv")
        assert info.value.message == f"{tmp_path / 'missing' / 'all.csv'}: No such file or directory"
