"""The `ehr` command's help: bare `ehr` helps, every option names its default and EHR_* variable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from headless_ehr.cli import main


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _described(out: str, option: str) -> str:
    """The help text of one option (argparse's wrapping undone)."""
    options = " ".join(out.split("options:", 1)[1].split())
    text = options[options.index(option + " ") :]
    return text.split(" --", 1)[0]


def test_bare_ehr_prints_the_help_and_succeeds(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: ehr" in out and "serve" in out and "import" in out


def test_bare_ehr_as_a_process_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "headless_ehr.cli"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "Traceback" not in done.stderr and "usage: ehr" in done.stdout


def test_top_level_help_lists_environment_only_settings(capsys):
    out = _help(capsys)
    for name in ("EHR_DATABASE_URL", "EHR_PUBLIC_BASE_URL", "EHR_TRUSTED_PROXIES", "EHR_ALLOWED_HOSTS"):
        assert name in out


@pytest.mark.parametrize(
    ("option", "default", "variable"),
    [
        ("--host", "127.0.0.1", "EHR_HOST"),
        ("--port", "8080", "EHR_PORT"),
        ("--data-dir", ".ehr-data", "EHR_DATA_DIR"),
        ("--workers", "default", "EHR_WORKERS"),
        ("--log-level", "info", "EHR_LOG_LEVEL"),
    ],
)
def test_serve_help_names_each_option_default_and_variable(capsys, option, default, variable):
    described = _described(_help(capsys, "serve"), option)
    assert default in described and variable in described


def test_serve_help_shows_every_option(capsys):
    out = _help(capsys, "serve")
    for option in ("--host", "--port", "--data-dir", "--workers", "--log-level", "--access-log"):
        assert option in out


@pytest.mark.parametrize("option", ["--data-dir", "--batch-size", "--concurrency", "--processes"])
def test_import_help_names_each_option_default(capsys, option):
    assert "default" in _described(_help(capsys, "import"), option)


def test_log_level_accepts_upper_case(monkeypatch):
    from headless_ehr.cli import build_parser

    args = build_parser().parse_args(["serve", "--log-level", "DEBUG"])
    assert args.log_level == "debug"


def test_a_malformed_trusted_proxies_setting_is_a_message_not_a_traceback():
    import os

    env = {**os.environ, "EHR_TRUSTED_PROXIES": "not-an-address", "EHR_DATABASE_URL": "postgresql://nowhere/x"}
    done = subprocess.run(
        [sys.executable, "-m", "headless_ehr.cli", "serve"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2
    assert "EHR_TRUSTED_PROXIES" in done.stderr and "Traceback" not in done.stderr


def _settings_read_from_the_environment() -> set[str]:
    """Every EHR_* variable the configuration and the command line read."""
    src = Path(__file__).resolve().parents[1] / "src" / "headless_ehr"
    text = (src / "config.py").read_text() + (src / "cli.py").read_text()
    return set(re.findall(r"\b(EHR_[A-Z_]+[A-Z])\b", text))


def test_every_setting_is_named_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = capsys.readouterr().out
    missing = sorted(v for v in _settings_read_from_the_environment() if v not in shown)
    assert not missing, f"ehr serve --help does not name {missing}"


def test_every_setting_is_in_the_readme_configuration_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    missing = sorted(v for v in _settings_read_from_the_environment() if f"`{v}`" not in table)
    assert not missing, f"the README's configuration table lacks {missing}"


def test_bare_ehr_lists_the_account_and_token_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("client", "user", "token"))


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (("client", "create"), ("--name", "--redirect-uri", "--scope", "--public", "--jwks-file", "--jwks-uri")),
        (("client", "create"), ("--policy", "--data-dir")),
        (("user", "create"), ("--username", "--password-stdin", "--password", "--fhir-user", "--role", "--patient")),
        (("user", "create"), ("--policy", "--data-dir")),
        (("token",), ("--data-dir", "--url", "--scope")),
    ],
)
def test_account_and_token_help_shows_every_option(capsys, argv, options):
    out = _help(capsys, *argv)
    for option in options:
        assert option in out


@pytest.mark.parametrize(
    ("option", "default"),
    [("--data-dir", ".ehr-data"), ("--url", "http://127.0.0.1:8080/fhir"), ("--scope", "system/*.*")],
)
def test_token_help_names_each_option_default(capsys, option, default):
    assert default in _described(_help(capsys, "token"), option)


def test_token_help_shows_the_curl_of_a_first_request(capsys):
    out = " ".join(_help(capsys, "token").split())
    assert 'curl -H "Authorization: Bearer $(ehr token)"' in out and "EHR_ADMIN_CLIENT_ID" in out


def test_serve_help_names_the_admin_client_variables(capsys):
    out = _help(capsys, "serve")
    assert "EHR_ADMIN_CLIENT_ID" in out and "EHR_ADMIN_CLIENT_SECRET" in out
