"""The config table: defaults, the TOML file, the environment and flags, in that order."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path

import pytest

from finews_feeds.config import (
    SECTIONS,
    CategoryConfig,
    Config,
    Setting,
    build_config,
    describe,
    describe_effective,
    layer_config,
    load_config,
    load_effective,
    section_keys,
)
from finews_feeds.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_file() -> None:
    config = build_config()
    assert config.feeds.limit == 50
    assert config.feeds.formats == ["rss", "atom", "json"]
    assert config.digest.send_at == "07:30"
    assert config.site.timezone is None  # taken from the Jekyll site later
    assert config.smtp.security == "starttls"
    assert config.database.url == "sqlite:///var/finews.sqlite3"


def test_file_overrides_defaults() -> None:
    config = build_config({"feeds": {"limit": 20}, "categories": {"cailianshe": {"title": "财联社新闻", "order": 1}}})
    assert config.feeds.limit == 20
    assert config.categories == {"cailianshe": CategoryConfig(title="财联社新闻", order=1)}
    assert config.category_title("cailianshe") == "财联社新闻"
    assert config.category_title("other") == "other"


def test_environment_overrides_file_and_flags_override_environment() -> None:
    env = {"FINEWS_FEEDS_LIMIT": "30", "FINEWS_SMTP_HOST": "mail.example", "FINEWS_FEEDS_FULL_CONTENT": "false"}
    config = build_config({"feeds": {"limit": 20}}, env)
    assert config.feeds.limit == 30
    assert config.feeds.full_content is False
    assert config.smtp.host == "mail.example"
    config = build_config({"feeds": {"limit": 20}}, env, {"feeds": {"limit": 5}})
    assert config.feeds.limit == 5


def test_environment_lists_are_comma_separated() -> None:
    config = build_config({}, {"FINEWS_FEEDS_FORMATS": "rss, atom"})
    assert config.feeds.formats == ["rss", "atom"]


def test_secrets_come_from_the_environment_only() -> None:
    config = build_config({}, {"FINEWS_SMTP_PASSWORD": "hunter2", "FINEWS_SECRET_KEY": "k" * 32})
    assert config.smtp_password == "hunter2"
    assert config.secret_key == "k" * 32
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError, match=r"smtp\.password must not be in a file"):
        build_config({"smtp": {"password": "x"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"feeds": {"limt": 5}}, "unknown key feeds.limt = 5"),
        ({"feeds": {"limit": "many"}}, "feeds.limit = 'many': expected a whole number"),
        ({"feeds": {"limit": -1}}, "feeds.limit = -1: must not be negative"),
        ({"feeds": {"formats": ["rss", "rdf"]}}, "feeds.formats = ['rss', 'rdf']: 'rdf' is not one of rss, atom, json"),
        ({"smtp": {"security": "ssl"}}, "smtp.security = 'ssl': expected one of none, starttls, tls"),
        ({"site": {"timezone": "Mars/Olympus"}}, "site.timezone = 'Mars/Olympus': not a known time zone"),
        ({"digest": {"send_at": "7h30"}}, "digest.send_at = '7h30': expected HH:MM"),
        ({"digest": {"subject": "{nope}"}}, "digest.subject = '{nope}': bad template field"),
        ({"site": {"future": "yes"}}, "site.future = 'yes': expected true or false"),
        ({"categories": {"x": {"colour": "red"}}}, "unknown key categories.x.colour = 'red'"),
        ({"nonsense": {}}, "unknown section [nonsense]"),
        ({"digest": {"unsubscribe_mailbox": "Unsubscribe <u@example.com>"}},
         "digest.unsubscribe_mailbox = 'Unsubscribe <u@example.com>': expected a bare address"),
        ({"digest": {"unsubscribe_mailbox": "u@example.com?subject=x"}}, "digest.unsubscribe_mailbox = 'u@example.com?subject=x'"),
        ({"digest": {"list_id": "finews digest"}},
         "digest.list_id = 'finews digest': expected a name and an id in angle brackets"),
        ({"digest": {"list_id": "finews <digest.财经.example>"}},
         "digest.list_id = 'finews <digest.财经.example>': expected a name and an id in angle brackets"),
        ({"digest": {"list_id": "finews <digest>"}}, "digest.list_id = 'finews <digest>': expected a name"),
        ({"web": {"public_url": "sqlite:///var/finews.sqlite3"}},
         "web.public_url = 'sqlite:///var/finews.sqlite3': expected an http:// or https:// URL"),
    ],
)
def test_bad_values_name_the_key_and_the_value(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert info.value.message.startswith(message)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FINEWS_FEEDS_LIMIT": "ten"}, "FINEWS_ env: feeds.limit = 'ten': expected a whole number"),
        ({"FINEWS_SMTP_SECURITY": "ssl"}, "FINEWS_ env: smtp.security = 'ssl': expected one of none, starttls, tls"),
        ({"FINEWS_SITE_FUTURE": "maybe", "FINEWS_SMTP_HOTS": "x"}, "FINEWS_ env: site.future = 'maybe': expected true or false"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, env)
    assert info.value.message.startswith(message)


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        ("FINEWS_SMTP_HOTS", "FINEWS_SMTP_HOTS is not a setting; did you mean FINEWS_SMTP_HOST?"),
        ("FINEWS_feeds_limt", "FINEWS_feeds_limt is not a setting; did you mean FINEWS_FEEDS_LIMIT?"),
        ("FINEWS_SECRET_KY", "FINEWS_SECRET_KY is not a setting; did you mean FINEWS_SECRET_KEY?"),
        ("FINEWS_BOGUS", "FINEWS_BOGUS is not a setting; settings are FINEWS_<SECTION>_<KEY> for the keys "
                         "`finews-feeds config` lists"),
    ],
)
def test_unknown_environment_variable_is_a_warning_naming_the_closest_key(
    name: str, warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="finews_feeds.config"):
        config = build_config({}, {name: "hunter2", "FINEWS_FEEDS_LIMIT": "7"})
    assert config.feeds.limit == 7
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, warning)]
    assert "hunter2" not in caplog.text  # a mistyped secret's value is never logged


def test_each_unknown_variable_is_warned_about_once_per_load(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="finews_feeds.config"):
        load_config(None, {"FINEWS_WEB_PROT": "1", "FINEWS_SMTP_HOTS": "x"})
    assert [r.getMessage() for r in caplog.records] == [
        "FINEWS_SMTP_HOTS is not a setting; did you mean FINEWS_SMTP_HOST?",
        "FINEWS_WEB_PROT is not a setting; did you mean FINEWS_WEB_PORT?",
    ]


def test_known_environment_variables_are_not_warned_about(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("", encoding="utf-8")
    env = {
        "FINEWS_SECRET_KEY": "k", "FINEWS_SMTP_PASSWORD": "p", "FINEWS_CONFIG": str(path),
        "FINEWS_MAKE_SITE": "/x/make_site.py", "FINEWS_UPDATE_GOLDEN": "1", "FINEWS_UPDATE_SCREENSHOTS": "1",
        "FINEWS_DIGEST_FROM": "a <a@example.com>", "FINEWS_FEEDS_CATEGORY_LIMIT": "3", "PATH": "/bin",
    }
    with caplog.at_level(logging.DEBUG, logger="finews_feeds.config"):
        config = load_config(None, env)
    assert caplog.records == []
    assert config.digest.from_ == "a <a@example.com>"
    assert config.feeds.category_limit == 3


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", {})


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[feeds\nlimit = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(path, {})


def test_config_file_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[feeds]\nlimit = 7\n", encoding="utf-8")
    config = load_config(None, {"FINEWS_CONFIG": str(path)})
    assert config.feeds.limit == 7
    assert config.path == path


def test_bundled_config_file_documents_every_key_and_loads() -> None:
    """config/finews.toml is the operators' reference: every key of the table appears in it."""
    path = ROOT / "config" / "finews.toml"
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    config = build_config(data, {}, path=path)
    assert isinstance(config, Config)
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for key in section_keys(cls):
            assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key} is not documented"
    for f in dataclasses.fields(CategoryConfig):
        assert f"{f.name} = " in text


def test_every_key_has_a_comment() -> None:
    for cls in [*SECTIONS.values(), CategoryConfig]:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no comment"
    assert describe().count("\n# ") >= sum(len(dataclasses.fields(c)) for c in SECTIONS.values())


def test_each_value_in_effect_names_its_layer_the_highest_winning(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[feeds]\nlimit = 20\noutput = "from-file"\n[smtp]\nhost = "file.example"\n'
                    '[categories.yicai]\ntitle = "第一财经"\n', encoding="utf-8")
    env = {"FINEWS_SMTP_HOST": "env.example", "FINEWS_FEEDS_OUTPUT": "from-env", "FINEWS_SECRET_KEY": "k"}
    effective = load_effective(path, env, {"feeds": {"output": "from-flag"}}, {"feeds.output": "--out"})
    settings = {(s.section, s.key): s for s in effective.settings()}
    assert settings["feeds", "limit"] == Setting("feeds", "limit", 20, "file", str(path))
    assert settings["feeds", "output"] == Setting("feeds", "output", "from-flag", "flag", "--out")
    assert settings["smtp", "host"] == Setting("smtp", "host", "env.example", "environment", "FINEWS_SMTP_HOST")
    assert settings["smtp", "port"] == Setting("smtp", "port", 0, "default", "")
    assert settings["categories.yicai", "title"] == Setting("categories.yicai", "title", "第一财经", "file", str(path))
    assert settings["categories.yicai", "order"] == Setting("categories.yicai", "order", 1000, "default", "")
    assert len(settings) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values()) + 2
    assert effective.config == load_config(path, env, {"feeds": {"output": "from-flag"}})


def test_the_config_in_effect_is_printed_with_sources_and_secrets_masked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[web]\nport = 9000\n', encoding="utf-8")
    env = {"FINEWS_DATABASE_URL": "postgresql+psycopg://finews:s3cret@db.example/finews",
           "FINEWS_SMTP_PASSWORD": "hunter2", "FINEWS_SECRET_KEY": "k" * 32}
    text = describe_effective(layer_config({"web": {"port": 9000}}, env, {"site": {"source": "site"}}, path,
                                           {"site.source": "--site"}))
    lines = text.splitlines()
    assert lines[2] == f"# config file: {path}"
    assert 'source = "site"  # flag --site' in lines
    assert "# url = (unset: the site's _config.yml, else Jekyll's default)  # default" in lines
    assert "port = 9000  # file" in lines
    assert 'host = "127.0.0.1"  # default' in lines
    assert 'url = "postgresql+psycopg://finews:********@db.example/finews"  # environment FINEWS_DATABASE_URL' in lines
    assert lines[-6:] == ["# Secrets, from the environment only:", "# FINEWS_SECRET_KEY = ********",
                          "# FINEWS_SMTP_PASSWORD = ********", "# FINEWS_IMAP_PASSWORD = (not set)",
                          "# FINEWS_MAILGUN_SIGNING_KEY = (not set)", "# FINEWS_POSTMARK_WEBHOOK_PASSWORD = (not set)"]
    assert "s3cret" not in text and "hunter2" not in text and "k" * 32 not in text
    assert tomllib.loads(text)["web"]["port"] == 9000  # still TOML: the sources are comments
    assert describe_effective(layer_config({}, {})).splitlines()[-4] == "# FINEWS_SMTP_PASSWORD = (not set)"
