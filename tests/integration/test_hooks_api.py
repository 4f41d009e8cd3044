"""Webhooks and cost through the HTTP API of a real server with in-process workers (whose
webhook sender runs beside them), on SQLite and PostgreSQL: the job's answer shows its tokens,
its estimated cost and its webhook messages; /metrics counts tokens and cost; a private
webhook address is a 422 naming the field; no answer carries a secret."""

from __future__ import annotations

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
from testkit.webhook_receiver import WebhookReceiver, whsec

SECRET = whsec(21)


@pytest.fixture
def api(
    tmp_path: Path, db_url: str, fake_provider: BackgroundServer
) -> Iterator[tuple[httpx.Client, str, WebhookReceiver]]:
    structlog.reset_defaults()
    receiver = WebhookReceiver(SECRET, fail_first=1)
    settings = make_settings(
        tmp_path, db_url, webhook_backoff_base_seconds=0.05, webhook_poll_seconds=0.05
    )
    with (
        BackgroundServer(receiver) as hooks,
        BackgroundServer(create_app(settings, workers=4)) as server,
        httpx.Client(base_url=f"{server.url}{API_PREFIX}", timeout=15) as client,
    ):
        yield client, f"{hooks.url}/in?key=receiver-key-42", receiver


def until_delivered(client: httpx.Client, job_id: str, timeout: float = 45.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        hooks = job["webhooks"]
        if hooks and all(h["status"] == "delivered" for h in hooks):
            return job
        assert time.monotonic() < deadline, f"job {job['status']}, webhooks {hooks}"
        time.sleep(0.1)


def test_the_answer_shows_cost_and_webhook_deliveries(
    api: tuple[httpx.Client, str, WebhookReceiver], fake_provider: BackgroundServer
) -> None:
    client, url, receiver = api
    options = {"webhook_url": url, "webhook_secret": SECRET, "max_cost": 100}
    created = client.post(
        "/jobs", json=batch_payload(fake_provider.url, "api-1", size=256, options=options)
    )
    assert created.status_code == 201, created.text
    job = until_delivered(client, "api-1")
    assert job["status"] == "succeeded"
    [hook] = job["webhooks"]
    assert (hook["type"], hook["attempts"], hook["last_status_code"]) == ("job.succeeded", 2, 200)
    assert hook["webhook_id"] in receiver.unique
    usage = job["usage"]
    assert usage["max_cost"] == 100
    assert usage["output_tokens"] == 5 * 4160
    assert usage["estimated_cost_usd"] == pytest.approx(
        sum(s["usage"]["estimated_cost_usd"] for s in job["skus"])
    )
    images = client.get("/jobs/api-1/images").json()["images"]
    assert sum(i["usage"]["estimated_cost_usd"] for i in images) == pytest.approx(
        usage["estimated_cost_usd"]
    )
    timeline = client.get("/jobs/api-1/timeline").json()
    calls = timeline.get("attempts") or timeline.get("calls") or []
    assert sum(c["estimated_cost_usd"] or 0 for c in calls) == pytest.approx(
        usage["estimated_cost_usd"]
    )
    listed = client.get("/jobs").json()["jobs"][0]
    assert listed["estimated_cost_usd"] == pytest.approx(usage["estimated_cost_usd"])
    every_answer = created.text + str(job) + str(images) + str(timeline)
    assert SECRET not in every_answer
    assert "receiver-key-42" not in every_answer
    root = str(client.base_url).rstrip("/").removesuffix(API_PREFIX)
    metrics = httpx.get(f"{root}/metrics").text
    assert 'imagestudio_provider_tokens_total{kind="output",model="gpt-image-1"} 20800.0' in metrics
    assert "imagestudio_estimated_cost_usd_total" in metrics
    assert 'imagestudio_webhook_tries_total{result="delivered"} 1.0' in metrics


def test_a_private_webhook_address_is_a_422_naming_the_field(
    api: tuple[httpx.Client, str, WebhookReceiver],
) -> None:
    client, _, _ = api
    options = {"webhook_url": "http://10.1.2.3/hook", "webhook_secret": SECRET}
    answer = client.post("/jobs", json=batch_payload("http://127.0.0.1:9", "bad", options=options))
    assert answer.status_code == 422
    assert "options.webhook_url" in answer.text
    assert "10.1.2.3" in answer.text
    assert SECRET not in answer.text
