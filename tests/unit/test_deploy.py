"""The deployment files as data (no Docker engine runs here): the build context that
``.dockerignore`` keeps, the Dockerfile's stages, user and entrypoint, and compose.yaml's
services, commands, dependencies, settings and secrets. The entrypoint's commands themselves
run in tests/integration/test_deploy_commands.py."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from imagestudio.api.app import create_app
from imagestudio.settings import Settings
from testkit.buildcontext import (
    MissingVariable,
    build_context,
    dockerfile_instructions,
    ignored,
    interpolate,
    parse_dockerignore,
)

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("migrate", "api", "worker")


SECRETS = {
    "POSTGRES_PASSWORD": "pg-pass-123",
    "MINIO_ROOT_PASSWORD": "minio-pass-456",
    "IMAGESTUDIO_API_TOKENS": "tok=alice",
    "IMAGESTUDIO_SECRET_KEY": "fernet-key",
}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def resolved(env: dict[str, str]) -> dict[str, str]:
    """A service's environment as compose would pass it, with ``SECRETS`` as the .env file."""
    return {name: interpolate(str(value), SECRETS) for name, value in env.items()}


# -- the build context ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("src/imagestudio/api/app.py", True),
        ("src/imagestudio/store/migrations/script.py.mako", True),
        ("deploy/entrypoint.sh", True),
        ("deploy/compose.env.example", False),
        (".env", False),
        ("src/.env", False),
        ("src/imagestudio/x.db", False),
        (".venv/bin/python", False),
        (".git/config", False),
        (".imagestudio/secret.key", False),
        ("tests/conftest.py", False),
        ("testkit/pg.py", False),
        ("bench/out/overhead.md", False),
        ("src/imagestudio/__pycache__/app.cpython-311.pyc", False),
        ("src/imagestudio.egg-info/PKG-INFO", False),
        ("imagestudio-demo/results/x.png", False),
    ],
)
def test_dockerignore_rules(path: str, sent: bool) -> None:
    rules = parse_dockerignore((ROOT / ".dockerignore").read_text(encoding="utf-8"))
    assert ignored(rules, path) is not sent


def test_the_build_context_is_the_package_sources_and_nothing_else() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "src"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    context = build_context(ROOT)
    expected = {"pyproject.toml", "README.md", "deploy/entrypoint.sh", *tracked}
    assert context - expected == set(), "sent but not needed (or not committed)"
    assert expected - context == set(), "needed but not sent"
    assert not any(p.endswith((".env", ".key", ".db")) for p in context)


# -- the Dockerfile -------------------------------------------------------------------------


def test_the_dockerfile_builds_a_wheel_and_runs_it_slim_and_not_as_root() -> None:
    steps = dockerfile_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    froms = [s.args for s in steps if s.keyword == "FROM"]
    assert all(re.fullmatch(r"python:3\.11-slim( AS \w+)?", f) for f in froms), froms
    last = len(froms) - 1
    context = build_context(ROOT)
    for step in steps:
        if step.keyword != "COPY" or "--from=" in step.args:
            continue
        *sources, _target = [a for a in shlex.split(step.args) if not a.startswith("--")]
        for source in sources:
            assert source in context or any(p.startswith(f"{source}/") for p in context), source
    final = [s for s in steps if s.stage == last]
    users = [s.args for s in final if s.keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    assert any("useradd" in s.args and "10001" in s.args for s in final if s.keyword == "RUN")
    assert json.loads(next(s.args for s in final if s.keyword == "ENTRYPOINT")) == [
        "imagestudio-entrypoint"
    ]
    assert json.loads(next(s.args for s in final if s.keyword == "CMD")) == ["serve"]
    copied = [s.args for s in final if s.keyword == "COPY" and "entrypoint" in s.args]
    assert copied == ["--chmod=0755 deploy/entrypoint.sh /usr/local/bin/imagestudio-entrypoint"]
    env = " ".join(s.args for s in final if s.keyword == "ENV")
    assert "IMAGESTUDIO_PORT=8000" in env
    assert [s.args for s in final if s.keyword == "EXPOSE"] == ["8000"]
    assert "IMAGESTUDIO_DATA_DIR=/data" in env
    assert not any("pip install" in s.args and ".[dev]" in s.args for s in steps)


# -- compose.yaml ---------------------------------------------------------------------------


def test_compose_runs_postgres_a_store_the_api_and_two_workers() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "minio", "bucket", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["migrate"]
    assert services["api"]["command"][0] == "serve"
    assert services["worker"]["command"][0] == "worker"
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in APP_SERVICES:
        assert services[name]["build"] == "."
        assert services[name]["image"] == services["api"]["image"]
        assert services[name]["environment"] == services["api"]["environment"]
    for name in ("api", "worker"):  # migrations done and the bucket made before they start
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "bucket": {"condition": "service_completed_successfully"},
        }
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"


def test_compose_wires_the_services_to_each_other() -> None:
    services = compose()["services"]
    env = resolved(services["api"]["environment"])
    database = urlsplit(env["IMAGESTUDIO_DATABASE_URL"])
    assert database.scheme == "postgresql+asyncpg"
    assert (database.hostname, database.port, database.path) == ("postgres", 5432, "/imagestudio")
    pg_env = resolved(services["postgres"]["environment"])
    assert database.username == pg_env["POSTGRES_USER"]
    assert database.path.lstrip("/") == pg_env["POSTGRES_DB"]
    assert database.password == pg_env["POSTGRES_PASSWORD"] == "pg-pass-123"
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    assert (endpoint.hostname, endpoint.port) == ("minio", 9000)
    bucket = urlsplit(env["IMAGESTUDIO_STORAGE_URL"])
    assert bucket.scheme == "s3"
    assert f"mb --ignore-existing store/{bucket.hostname}" in services["bucket"]["command"][0]
    minio = resolved(services["minio"]["environment"])
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"] == "imagestudio"
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"] == "minio-pass-456"
    assert "9000:9000" in services["minio"]["ports"]
    assert env["IMAGESTUDIO_S3_PUBLIC_ENDPOINT_URL"] == "http://localhost:9000"
    assert services["api"]["ports"] == ["8000:8000"]


def test_compose_names_only_real_settings_and_writes_no_secret() -> None:
    env = compose()["services"]["api"]["environment"]
    fields = Settings.model_fields
    aliases = {
        choice
        for field in fields.values()
        if field.validation_alias is not None
        for choice in getattr(field.validation_alias, "choices", [field.validation_alias])
    }
    for name in env:
        if name.startswith("IMAGESTUDIO_"):
            assert name.removeprefix("IMAGESTUDIO_").lower() in fields, name
        else:
            assert name in aliases, name
    secret = re.compile(r"PASSWORD|SECRET|TOKENS?$")
    for service in compose()["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if secret.search(name):
                assert re.fullmatch(r"\$\{[A-Z_]+:[?-].*\}", str(value)), (name, value)
            assert "${" in str(value) or not re.search(r"://[^/]*:[^@/]*@", str(value))


def test_the_api_healthcheck_asks_a_route_the_app_has() -> None:
    test = compose()["services"]["api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    url = re.search(r"'(http://127\.0\.0\.1:(\d+)(/\w+))'", test[3])
    assert url is not None
    assert url.group(2) == "8000"
    paths = {getattr(route, "path", None) for route in create_app(Settings(_env_file=None)).routes}
    assert url.group(3) == "/readyz"
    assert "/readyz" in paths


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    given = {k: v for k, v in SECRETS.items() if k != missing}
    values = [
        str(value)
        for service in compose()["services"].values()
        for value in (service.get("environment") or {}).values()
    ]
    with pytest.raises(MissingVariable, match=missing):
        interpolate("\n".join(values), given)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "1"),
        ("${B:-x}", "x"),
        ("${E:-x}", "x"),
        ("${E-x}", ""),
        ("${A:-x}", "1"),
        ("$$A", "$A"),
        ("a${A}b${Z}c", "a1bc"),
    ],
)
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, {"A": "1", "E": ""}) == expected
