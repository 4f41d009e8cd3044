"""The API behind the dashboard, over HTTP on SQLite and PostgreSQL: ``waiting_reason`` on the
image pages, ``GET /jobs?status=``, ``GET /providers`` per user, ``results.zip``."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api import KEY, Serve, _servers, payload, wait_until_ended

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app

TOKENS = {"api_tokens": "t1=alice,t2=bob"}


@pytest.fixture
def serve(tmp_path: Path, db_url: str) -> Iterator[Serve]:
    with _servers(tmp_path, db_url) as start:
        yield start


@pytest.fixture
def slow_provider() -> Iterator[BackgroundServer]:
    app = create_fake_provider_app(FakeProviderConfig(latency_ms=3000, seed=2, render_size=64))
    with BackgroundServer(app) as server:
        yield server


def test_queued_images_say_why_they_wait(
    serve: Serve, slow_provider: BackgroundServer, fake_provider: BackgroundServer
) -> None:
    client = serve(workers=4)
    capped = payload(slow_provider.url, "capped", images_per_sku=(4,))
    capped["options"]["max_concurrency"] = 1
    assert client.post("/jobs", json=capped).status_code == 201
    for _ in range(100):
        images = client.get("/jobs/capped/images").json()["images"]
        if any(i["status"] == "running" for i in images):
            break
    running = [i for i in images if i["status"] == "running"]
    queued = [i for i in images if i["status"] == "queued"]
    assert len(running) == 1
    assert all(i["waiting_reason"] is None for i in running)
    assert {i["waiting_kind"] for i in queued} == {"job_cap"}
    assert {i["waiting_reason"] for i in queued} == {"per-job cap: 1/1 running"}
    page = client.get("/jobs/capped/images?offset=2&limit=1").json()
    assert page["images"][0]["waiting_reason"] == "per-job cap: 1/1 running"
    client.post("/jobs/capped/cancel")
    done = client.post("/jobs", json=payload(fake_provider.url, "done", images_per_sku=(1,)))
    assert done.status_code == 201
    wait_until_ended(client, "done")
    images = client.get("/jobs/done/images").json()["images"]
    assert [i["waiting_reason"] for i in images] == [None]


def test_job_list_filters_by_status(serve: Serve, fake_provider: BackgroundServer) -> None:
    client = serve(workers=2)
    client.post("/jobs", json=payload(fake_provider.url, "a", images_per_sku=(1,)))
    wait_until_ended(client, "a")
    client.post("/jobs", json=payload("http://127.0.0.1:9", "b", images_per_sku=(1,)))
    client.post("/jobs/b/cancel")
    ids = {
        status: [j["job_id"] for j in client.get(f"/jobs?status={status}").json()["jobs"]]
        for status in ("succeeded", "cancelled")
    }
    assert ids == {"succeeded": ["a"], "cancelled": ["b"]}
    listed = client.get("/jobs").json()["jobs"]
    assert listed[0]["counts"] == {
        "total": 1, "queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1,
    }  # fmt: skip
    bad = client.get("/jobs?status=nope")
    assert bad.status_code == 422
    assert "status" in bad.text


def test_providers_are_per_user_and_never_show_the_key(
    serve: Serve, fake_provider: BackgroundServer
) -> None:
    alice = serve(workers=2, token="t1", **TOKENS)
    base = str(alice.base_url).rstrip("/")
    body = payload(fake_provider.url, "a1", images_per_sku=(2,), user_id="alice")
    assert alice.post("/jobs", json=body).status_code == 201
    wait_until_ended(alice, "a1")
    mine = alice.get("/providers").json()["providers"]
    assert len(mine) == 1
    assert mine[0]["api_base"] == f"{fake_provider.url}/v1"
    assert len(mine[0]["key"]) == 12
    assert KEY not in alice.get("/providers").text
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer t2"}, timeout=15) as bob:
        assert bob.get("/providers").json() == {"providers": []}
        assert bob.get("/jobs").json() == {"jobs": []}
        assert bob.get("/jobs/a1/results.zip").status_code == 404
    with httpx.Client(base_url=base, timeout=15) as nobody:
        assert nobody.get("/providers").status_code == 401


def test_results_zip_holds_every_result_in_order(
    serve: Serve, fake_provider: BackgroundServer
) -> None:
    client = serve(workers=4)
    client.post("/jobs", json=payload(fake_provider.url, "z", images_per_sku=(2, 1)))
    job = wait_until_ended(client, "z")
    answer = client.get("/jobs/z/results.zip")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        names = archive.namelist()
        assert names == ["SKU1/stem1.png", "SKU1/stem2.png", "SKU2/stem3.png"]
        for name, url in zip(names, job["result_image_urls"], strict=True):
            path = url.removeprefix("/api/v1/image_studio")
            assert archive.read(name) == client.get(path).content
