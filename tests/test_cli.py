"""The CLI turns library errors into one-line messages and exit codes, never tracebacks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from finews_feeds.cli import cli
from finews_feeds.config import describe


def test_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "config"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"error: config file {tmp_path / 'nope.toml'} not found"
    assert "Traceback" not in result.output


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[feeds]\nlimit = \"lots\"\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "config"])
    assert result.exit_code == 2
    assert result.stderr == "error: feeds.limit = 'lots': expected a whole number\n"


def test_unknown_key_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[web]\nprot = 1\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "config"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "error: unknown key web.prot = 1"
    assert lines[1].startswith("hint: keys of [web]: ")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--debug", "--config", str(tmp_path / "nope.toml"), "config"])
    assert result.exit_code != 0
    assert result.exception is not None
    assert type(result.exception).__name__ == "ConfigError"


def test_config_command_prints_every_section(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "config"])
    assert result.exit_code == 0
    for section in ("[site]", "[feeds]", "[digest]", "[smtp]", "[database]", "[web]", "[scheduler]"):
        assert section in result.output


def test_config_command_prints_the_values_in_effect_and_their_sources(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\nhost = "relay.example"\nport = 2525\n', encoding="utf-8")
    env = {"FINEWS_SMTP_PORT": "587", "FINEWS_SMTP_PASSWORD": "hunter2"}
    result = CliRunner().invoke(cli, ["--config", str(path), "config", "--site", "my-site"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2] == f"# config file: {path}"
    smtp = lines[lines.index("[smtp]") + 1:lines.index("[smtp]") + 4]
    assert smtp == ['host = "relay.example"  # file', "port = 587  # environment FINEWS_SMTP_PORT",
                    'security = "starttls"  # default']
    assert 'source = "my-site"  # flag --site' in lines
    assert "# FINEWS_SMTP_PASSWORD = ********" in lines
    assert "hunter2" not in result.output


def test_config_defaults_prints_every_key_with_its_default_and_comment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[feeds]\nlimit = 7\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "config", "--defaults"])
    assert result.exit_code == 0
    assert result.stdout == describe()
    assert "limit = 50\n" in result.stdout


def test_unknown_environment_variable_is_warned_about_and_the_command_runs(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "config"], env={"FINEWS_SMTP_HOTS": "mail.example"})
    assert result.exit_code == 0
    assert "[smtp]" in result.output
    assert result.stderr.endswith(
        " WARNING finews_feeds.config: FINEWS_SMTP_HOTS is not a setting; did you mean FINEWS_SMTP_HOST?\n")
    assert result.stderr.count("\n") == 1
