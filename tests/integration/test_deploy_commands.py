"""What of the deployment can run without a Docker engine: the wheel the Dockerfile's first
stage builds, from exactly the build context; and compose.yaml's stack with each container
replaced by a local process running the same entrypoint and command with the same
environment: PostgreSQL (a scratch database), MinIO (moto's S3 server), ``migrate``, ``api``
and 2 ``worker`` replicas (``deploy/entrypoint.sh ...`` as subprocesses), then the seed job
through the API with a bearer token, its results in the bucket and fetched by their URLs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet

from imagestudio.cli.background_server import BackgroundServer, free_port
from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES
from testkit.buildcontext import build_context, interpolate
from testkit.payloads import batch_payload
from testkit.s3 import S3Server

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
TOKEN = "tok-alice-0123456789"


def test_the_build_stage_makes_a_complete_wheel_from_the_context(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for rel in build_context(ROOT):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    wheels = tmp_path / "wheels"
    built = subprocess.run(  # the Dockerfile's `pip wheel .`, the dependencies left out
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("imagestudio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "imagestudio/store/migrations/script.py.mako" in names
    assert "imagestudio/store/migrations/env.py" in names
    assert any(n.startswith("imagestudio/store/migrations/versions/0001_") for n in names)
    assert "imagestudio/storage/s3.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "imagestudio = imagestudio.cli.main:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: aiobotocore" in requires
    assert "Requires-Dist: asyncpg" in requires
    assert "moto" not in requires.split("Provides-Extra: dev")[0]


# -- compose's stack as local processes ----------------------------------------------------


def _compose_env(
    pg_url: str, s3: S3Server, data_dir: Path, api_port: int, provider: str
) -> dict[str, str]:
    """The app services' environment from compose.yaml, with what the .env file would give,
    and each service host replaced by where it runs here."""
    spec: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    dotenv = {
        "POSTGRES_PASSWORD": "unused-here",
        "MINIO_ROOT_USER": s3.access_key,
        "MINIO_ROOT_PASSWORD": s3.secret_key,
        "IMAGESTUDIO_API_TOKENS": f"{TOKEN}=alice",
        "IMAGESTUDIO_SECRET_KEY": Fernet.generate_key().decode(),
        "IMAGESTUDIO_PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "IMAGESTUDIO_S3_PUBLIC_ENDPOINT_URL": s3.endpoint.replace("127.0.0.1", "localhost"),
    }
    env = {
        name: interpolate(str(value), dotenv)
        for name, value in spec["services"]["api"]["environment"].items()
    }
    assert urlsplit(env["AWS_ENDPOINT_URL"]).hostname == "minio"
    assert urlsplit(env["IMAGESTUDIO_DATABASE_URL"]).hostname == "postgres"
    env["AWS_ENDPOINT_URL"] = s3.endpoint
    env["IMAGESTUDIO_DATABASE_URL"] = pg_url
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESTUDIO_", "AWS_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    return (
        base
        | env
        | {
            "IMAGESTUDIO_DATA_DIR": str(data_dir),
            "IMAGESTUDIO_HOST": "127.0.0.1",  # the image's 0.0.0.0, kept to loopback here
            "IMAGESTUDIO_PORT": str(api_port),
            "IMAGESTUDIO_ALLOW_PRIVATE_URLS": urlsplit(provider).hostname or "",
            "IMAGESTUDIO_POLL_INTERVAL": "0.1",
        }
    )


class Stack:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [str(ENTRYPOINT), *command],
                env=self.env,
                cwd=self.logs,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, name: str, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            assert self.procs[name].poll() is None, f"{name} exited:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{name} never said {text!r}:\n{self.log(name)}"
            time.sleep(0.1)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM everything (workers drain), then wait; the exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(45)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        return codes


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, s3: S3Server) -> Iterator[tuple[Stack, int, str]]:
    with BackgroundServer(_fake_provider()) as provider:
        port = free_port()
        env = _compose_env(pg_url, s3, tmp_path / "data", port, provider.url)
        logs = tmp_path / "logs"
        logs.mkdir()
        running = Stack(env, logs)
        try:
            yield running, port, provider.url
        finally:
            running.stop()


def _fake_provider() -> Any:
    from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app

    return create_fake_provider_app(FakeProviderConfig(latency_ms=20, seed=3))


def _services() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return dict(spec["services"])


def _object_key(prefix: str, result_url: str) -> str:
    """The bucket key behind a files-route URL (signed for a while when tokens are set)."""
    return f"{prefix}/{urlsplit(result_url).path.split('/files/', 1)[1]}"


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_compose_stack_runs_the_seed_job_with_results_in_s3(
    stack: tuple[Stack, int, str], s3: S3Server
) -> None:
    running, port, provider = stack
    services = _services()
    bucket = urlsplit(running.env["IMAGESTUDIO_STORAGE_URL"]).hostname or ""
    prefix = urlsplit(running.env["IMAGESTUDIO_STORAGE_URL"]).path.strip("/")
    made = {b["Name"] for b in s3.client().list_buckets().get("Buckets", [])}
    if bucket not in made:  # the `bucket` service's `mc mb --ignore-existing`
        s3.make_bucket(bucket)

    migrate = running.start("migrate", services["migrate"]["command"])
    assert migrate.wait(120) == 0, running.log("migrate")
    assert "migrated" in running.log("migrate")

    running.start("api", services["api"]["command"])
    for replica in range(services["worker"]["deploy"]["replicas"]):
        running.start(f"worker-{replica}", services["worker"]["command"])
    running.wait_for_log("api", "Uvicorn running on http://127.0.0.1")
    for replica in range(2):
        running.wait_for_log(f"worker-{replica}", "worker started")
    api = f"http://127.0.0.1:{port}"
    ready = httpx.get(f"{api}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "schema": "ok", "storage": "ok"}

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"{api}{API_PREFIX}", headers=auth, timeout=15) as client:
        payload = batch_payload(provider, "compose-seed", user_id="alice")
        created = client.post("/jobs", json=payload)
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 120
        while (job := client.get("/jobs/compose-seed").json())["status"] not in (
            TERMINAL_JOB_STATUSES
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        keys = s3.keys(bucket, f"{prefix}/")
        images = client.get("/jobs/compose-seed/images").json()["images"]
        ours = sorted(_object_key(prefix, i["result_url"]) for i in images)
        assert sorted(set(keys) & set(ours)) == ours
        assert len(ours) == 5
        for image in images:  # absolute (PUBLIC_BASE_URL), redirecting to localhost's store
            url = image["result_url"]
            assert url.startswith(f"{api}{API_PREFIX}/files/")
            redirect = httpx.get(url, follow_redirects=False)
            assert redirect.status_code == 307
            assert redirect.headers["location"].startswith("http://localhost:")
            fetched = httpx.get(url, follow_redirects=True)
            key = _object_key(prefix, url)
            stored = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            assert fetched.content == stored

    workers_done = {f"worker-{r}": running.log(f"worker-{r}") for r in range(2)}
    assert any("image finished" in text for text in workers_done.values())
    codes = running.stop()
    # Workers drain and exit 0; uvicorn shuts down cleanly, then re-raises the SIGTERM.
    assert {name: code for name, code in codes.items() if name != "api"} == dict.fromkeys(
        ["migrate", "worker-0", "worker-1"], 0
    ), codes
    assert codes["api"] in (0, -signal.SIGTERM), codes
    assert "Application shutdown complete" in running.log("api")
    for name in running.procs:
        assert s3.secret_key not in running.log(name)
        assert running.env["IMAGESTUDIO_SECRET_KEY"] not in running.log(name)


def test_the_entrypoint_passes_other_commands_through(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESTUDIO_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["IMAGESTUDIO_DATA_DIR"] = str(tmp_path)
    helped = subprocess.run(
        [str(ENTRYPOINT), "worker", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    assert "--concurrency" in helped.stdout
    # Local mode (no API tokens) on the image's 0.0.0.0 is refused before listening.
    env["IMAGESTUDIO_MIGRATE_ON_START"] = "0"
    refused = subprocess.run(
        [str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert refused.returncode != 0
    assert "loopback only" in refused.stdout + refused.stderr
