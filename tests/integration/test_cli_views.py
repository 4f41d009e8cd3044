"""``imagestudio jobs``, ``show``, ``timeline [--png]`` and ``submit --follow`` as real
subprocesses against a real service (SQLite and PostgreSQL) and the fake provider."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from conftest import make_settings
from PIL import Image

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from testkit.fleet import clean_env, console_script
from testkit.payloads import batch_payload

WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[tuple[str, str]]:
    structlog.reset_defaults()
    fake = create_fake_provider_app(FakeProviderConfig(latency_ms=150, seed=3, render_size=64))
    settings = make_settings(tmp_path, db_url, imaging_processes=0)
    with BackgroundServer(fake) as provider, BackgroundServer(create_app(settings, workers=4)) as s:
        yield s.url, provider.url


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env() | WIDE
    return subprocess.run(
        [console_script(), *args], env=env, capture_output=True, text=True, timeout=60
    )


def submit_and_wait(url: str, payload: dict[str, Any]) -> None:
    with httpx.Client(base_url=f"{url}{API_PREFIX}", timeout=15) as c:
        assert c.post("/jobs", json=payload).status_code == 201
        for _ in range(300):
            if c.get(f"/jobs/{payload['job_id']}").json()["status"] in TERMINAL_JOB_STATUSES:
                return
            time.sleep(0.1)
    raise AssertionError("the job did not end")


def test_jobs_show_and_timeline(served: tuple[str, str], tmp_path: Path) -> None:
    url, provider = served
    serial = batch_payload(provider, "serial-1", images_per_sku=(4,), size=64)
    serial["options"]["max_concurrency"] = 1
    submit_and_wait(url, serial)
    submit_and_wait(url, batch_payload(provider, "wide-1", images_per_sku=(3, 3), size=64))

    listed = run("jobs", "--url", url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.index("wide-1") < listed.stdout.index("serial-1"), "newest first"
    assert "6/6" in listed.stdout
    only = run("jobs", "--url", url, "--status", "failed")
    assert "serial-1" not in only.stdout

    shown = run("show", "wide-1", "--url", url)
    assert shown.returncode == 0, shown.stderr
    for text in ("succeeded", "SKU1", "SKU2", "3/3", "stem6"):
        assert text in shown.stdout

    png = tmp_path / "serial.png"
    chart = run("timeline", "serial-1", "--url", url, "--png", str(png))
    assert chart.returncode == 0, chart.stderr
    assert "peak 1 in flight" in chart.stdout
    assert "█ succeeded" in chart.stdout  # the legend names each character
    with Image.open(png) as drawn:
        assert drawn.format == "PNG"
        assert drawn.width == 1100
    wide = run("timeline", "wide-1", "--url", url)
    peak = int(wide.stdout.split("peak ")[1].split(" ")[0])
    assert peak > 1, wide.stdout

    missing = run("show", "nope", "--url", url)
    assert missing.returncode == 1
    assert "404" in missing.stdout


def test_submit_follow_shows_why_images_wait(served: tuple[str, str], tmp_path: Path) -> None:
    url, provider = served
    payload = batch_payload(provider, "capped-1", images_per_sku=(10,), size=64)
    payload["options"]["max_concurrency"] = 1
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(payload))
    followed = run("submit", str(path), "--url", url, "--follow")
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "per-job cap: 1/1 running" in followed.stdout
