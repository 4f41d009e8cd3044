"""429s shaped as the service was not tuned to, from the second provider simulator
(``testkit.provider_sim``, no code shared with our fake), through a real ``serve``-style app
on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from conftest import make_settings

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import API_PREFIX
from testkit.payloads import batch_payload
from testkit.provider_sim import SimConfig, sim_thread

# OpenAI's own shape: a one-second retry-after, tokens to spare, tokens resetting in 6 min.
OPENAI_429 = {
    "retry-after": "1",
    "x-ratelimit-remaining-tokens": "149000",
    "x-ratelimit-reset-tokens": "6m0s",
}


@contextlib.contextmanager
def api(tmp_path: Path, db_url: str, workers: int = 4) -> Iterator[httpx.Client]:
    structlog.reset_defaults()
    settings = make_settings(tmp_path, db_url)
    with (
        BackgroundServer(create_app(settings, workers=workers)) as server,
        httpx.Client(base_url=f"{server.url}{API_PREFIX}", timeout=15) as client,
    ):
        yield client


def wait_job(client: httpx.Client, job_id: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "partially_failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {within} s")


def test_retry_after_1_with_a_6_minute_token_reset_costs_about_a_second(
    tmp_path: Path, db_url: str
) -> None:
    config = SimConfig(latency=0.05, reject_first=1, reject_headers=OPENAI_429)
    with sim_thread(config) as sim, api(tmp_path, db_url) as client:
        payload = batch_payload(sim.url, "openai-429", images_per_sku=(4,), size=256)
        started = time.monotonic()
        assert client.post("/jobs", json=payload).status_code == 201
        job = wait_job(client, "openai-429", within=30)
        elapsed = time.monotonic() - started
        stats = sim.stats()
    assert job["status"] == "succeeded", job
    assert stats["rejected"] == 1
    # The 429's wait is its retry-after (1 s), not the token reset (360 s).
    assert 0.9 < elapsed < 6.0, elapsed
    assert job["governor"]["rate_limited"] == 1


def test_a_long_cooldown_is_logged_and_shown_with_its_cause(
    tmp_path: Path, db_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    config = SimConfig(latency=0.05, reject_first=1, reject_headers={"retry-after-ms": "45000"})
    with sim_thread(config) as sim, api(tmp_path, db_url) as client:
        payload = batch_payload(sim.url, "long-wait", images_per_sku=(2,), size=256)
        assert client.post("/jobs", json=payload).status_code == 201
        deadline = time.monotonic() + 20
        governor: dict[str, Any] = {}
        while time.monotonic() < deadline:
            governor = client.get("/jobs/long-wait").json()["governor"] or {}
            if governor.get("cooldown_seconds", 0) > 30:
                break
            time.sleep(0.05)
        client.post("/jobs/long-wait/cancel")
    assert governor["cooldown_seconds"] > 30, governor
    assert governor["cooldown_cause"] == "429 with retry-after-ms: 45 s"
    # The line as ``imagestudio serve`` writes it.
    warned = [line for line in capfd.readouterr().out.splitlines() if "cooling down" in line]
    assert warned, "no log line for a 45 s cooldown"
    assert "cause='429 with retry-after-ms: 45 s'" in warned[0]
    assert "job_id=long-wait" in warned[0]
    assert "seconds=4" in warned[0]  # 45.0 or 44.9
