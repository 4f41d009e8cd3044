"""The public surface SPEC.md fixes: CLI commands and options, HTTP routes, settings names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer
from fastapi.routing import APIRoute
from typer.testing import CliRunner

from imagestudio.api.app import create_app
from imagestudio.cli.main import app as cli_app
from imagestudio.domain import API_PREFIX
from imagestudio.settings import Settings

WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

COMMANDS: dict[str, set[str]] = {
    "serve": {"--host", "--port", "--workers"},
    "worker": {"--concurrency"},
    "fake-provider": {"--port", "--rpm", "--concurrency", "--latency-ms", "--error-rate"},
    "submit": {"--follow"},
    "demo": {"--keep"},
    "migrate": set(),
    "jobs": {"--url", "--token"},
    "show": {"--url", "--token"},
    "timeline": {"--url", "--token", "--png"},
}

ROUTES = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/images"),
    ("GET", "/jobs/{job_id}/events"),
    ("GET", "/jobs/{job_id}/timeline"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("POST", "/jobs/{job_id}/retry"),
    ("GET", "/jobs/{job_id}/results.zip"),
    ("GET", "/providers"),
]

SETTINGS_NAMES = [
    "IMAGESTUDIO_DATABASE_URL",
    "IMAGESTUDIO_DATA_DIR",
    "IMAGESTUDIO_STORAGE_URL",
    "IMAGESTUDIO_API_TOKENS",
    "IMAGESTUDIO_SECRET_KEY",
    "IMAGESTUDIO_ALLOW_PRIVATE_URLS",
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """CLI commands configure structlog to write to the runner's (then closed) stderr."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No IMAGESTUDIO_* variables and no .env file around: only what the test sets."""
    for name in list(os.environ):
        if name.startswith("IMAGESTUDIO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# -- CLI ------------------------------------------------------------------------------------


def commands() -> dict[str, Any]:
    """The click commands typer builds (typer may vendor click, so no isinstance checks)."""
    built: Any = typer.main.get_command(cli_app)
    return dict(built.commands)


def test_console_script_is_imagestudio() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("imagestudio") == "imagestudio.cli.main:main"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli_app, ["--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert f" {name} " in result.output


def test_no_arguments_shows_usage() -> None:
    result = CliRunner().invoke(cli_app, [], env=WIDE)
    assert "Usage" in result.output
    assert "serve" in result.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = CliRunner().invoke(cli_app, [name, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"imagestudio {name}" in result.output


@pytest.mark.parametrize(("name", "options"), list(COMMANDS.items()))
def test_every_command_takes_the_spec_options(name: str, options: set[str]) -> None:
    command = commands()[name]
    declared = {opt for param in command.params for opt in param.opts}
    assert options <= declared


def test_submit_takes_a_payload_file_argument() -> None:
    params = commands()["submit"].params
    arguments = [p for p in params if p.param_type_name == "argument"]
    assert len(arguments) == 1
    assert arguments[0].required


def test_serve_refuses_a_public_host_in_local_mode(clean_env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"], env=WIDE)
    assert result.exit_code == 2
    assert "loopback" in result.output


def test_migrate_applies_migrations_to_the_configured_database(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database = tmp_path / "cli" / "imagestudio.db"
    clean_env.setenv("IMAGESTUDIO_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    result = CliRunner().invoke(cli_app, ["migrate"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "migrated" in result.output
    assert database.is_file()


# -- HTTP routes ----------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]


def test_api_prefix() -> None:
    assert API_PREFIX == "/api/v1/image_studio"


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route_is_in_the_openapi(api: Settings, method: str, path: str) -> None:
    paths = create_app(api).openapi()["paths"]
    full = f"{API_PREFIX}{path}"
    assert full in paths, sorted(paths)
    assert method.lower() in paths[full]


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_health_and_metrics_routes(api: Settings, path: str) -> None:
    app = create_app(api)
    at_root = {
        (route.path, method)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert (path, "GET") in at_root
    assert "get" in app.openapi()["paths"][f"{API_PREFIX}{path}"]


@pytest.mark.parametrize("path", ["/", f"{API_PREFIX}/"])
def test_the_dashboard_is_served_at_the_root_and_under_the_api(api: Settings, path: str) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(api)) as client:
        answer = client.get(path)
    assert answer.status_code == 200
    assert "<title>imagestudio</title>" in answer.text
    assert "default-src 'none'" in answer.headers["content-security-policy"]


# -- settings -------------------------------------------------------------------------------


def test_settings_read_the_spec_environment_variables(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {
        "IMAGESTUDIO_DATABASE_URL": "postgresql+asyncpg://user@db-host/imagestudio",
        "IMAGESTUDIO_DATA_DIR": str(tmp_path / "state"),
        "IMAGESTUDIO_STORAGE_URL": "s3://bucket/prefix",
        "IMAGESTUDIO_API_TOKENS": "t1=alice, t2=bob",
        "IMAGESTUDIO_SECRET_KEY": "a-server-secret",
        "IMAGESTUDIO_ALLOW_PRIVATE_URLS": "10.0.0.0/8, minio.local",
    }
    assert set(values) == set(SETTINGS_NAMES)
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert settings.database_url == values["IMAGESTUDIO_DATABASE_URL"]
    assert settings.effective_database_url == values["IMAGESTUDIO_DATABASE_URL"]
    assert not settings.is_sqlite
    assert settings.data_dir == tmp_path / "state"
    assert settings.effective_storage_url == "s3://bucket/prefix"
    assert settings.token_users() == {"t1": "alice", "t2": "bob"}
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "a-server-secret"
    assert settings.private_allow_list() == ["10.0.0.0/8", "minio.local"]
    shown = repr(settings)
    assert "a-server-secret" not in shown
    assert "alice" not in shown


def test_settings_defaults_live_under_the_data_dir(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("IMAGESTUDIO_DATA_DIR", str(tmp_path / "state"))
    settings = Settings()
    assert settings.is_sqlite
    assert str((tmp_path / "state" / "imagestudio.db").resolve()) in (
        settings.effective_database_url
    )
    assert settings.effective_storage_url == str((tmp_path / "state" / "results").resolve())
    assert settings.token_users() == {}
    assert settings.secret_key is None
    assert settings.private_allow_list() == []


def test_settings_read_a_dotenv_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "IMAGESTUDIO_API_TOKENS=tok=carol\nIMAGESTUDIO_ALLOW_PRIVATE_URLS=127.0.0.1\n",
        encoding="utf-8",
    )
    settings = Settings()
    assert settings.token_users() == {"tok": "carol"}
    assert settings.private_allow_list() == ["127.0.0.1"]


def test_environment_wins_over_dotenv(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMAGESTUDIO_STORAGE_URL=/from/dotenv\n", encoding="utf-8")
    clean_env.setenv("IMAGESTUDIO_STORAGE_URL", "/from/env")
    assert Settings().effective_storage_url == "/from/env"


@pytest.mark.parametrize("tokens", ["justatoken", "=alice", "t1=", "t1=alice,t2"])
def test_malformed_api_tokens_are_refused(clean_env: pytest.MonkeyPatch, tokens: str) -> None:
    clean_env.setenv("IMAGESTUDIO_API_TOKENS", tokens)
    with pytest.raises(ValueError, match="token=user_id"):
        Settings().token_users()


def test_settings_read_the_webhook_secret_and_prices(clean_env: pytest.MonkeyPatch) -> None:
    """SPEC.md's IMAGESTUDIO_WEBHOOK_SECRET (hidden in the repr), and the price table."""
    secret = "whsec_" + "A" * 43
    clean_env.setenv("IMAGESTUDIO_WEBHOOK_SECRET", secret)
    clean_env.setenv("IMAGESTUDIO_PRICES", '{"my-model": {"per_image": {"*": 0.02}}}')
    settings = Settings()
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == secret
    assert secret not in repr(settings)
    table = settings.price_table()
    assert table["my-model"].per_image == {"*": 0.02}
    assert table["gpt-image-1"].output_per_mtok == 40.0
