"""The HTTP API against a real server (uvicorn on loopback), a real database and the fake provider.

Every test starts ``create_app(settings, workers=N)`` in a ``BackgroundServer`` and talks to it
with httpx, like the front end does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from conftest import make_settings
from PIL import Image
from sqlalchemy import text

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES
from imagestudio.observability.logs import configure_logging
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.store.db import create_engine
from testkit.payloads import batch_payload

KEY = "sk-test-key-0123456789"
BAD_KEY = "sk-bad-0123456789-secret"  # the fake answers 401 and echoes this key back
SIZE = 256  # small results keep the suite fast; the seed's 1536 runs in test_pipeline

Serve = Callable[..., httpx.Client]


def stored_config(value: Any) -> dict[str, Any]:
    """``ai_job.config`` as a raw SELECT returns it: jsonb on PostgreSQL, zlib-compressed JSON
    on SQLite (``store.tables.PayloadJson``)."""
    if isinstance(value, bytes):
        value = zlib.decompress(value)
    loaded: dict[str, Any] = json.loads(value) if isinstance(value, str | bytes) else value
    return loaded


def sql(db_url: str, statement: str, **params: Any) -> list[Any]:
    """Run one SQL statement on the test database, from sync code (even inside a loop)."""

    async def run() -> list[Any]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(text(statement), params)).all())
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


@contextlib.contextmanager
def _servers(tmp_path: Path, db_url: str) -> Iterator[Serve]:
    # Logging as a fresh process has it: a CLI test may have left structlog writing to a
    # stream that is closed now, and the worker's first log line would kill it.
    structlog.reset_defaults()
    with contextlib.ExitStack() as stack:

        def start(workers: int = 0, token: str | None = None, **overrides: Any) -> httpx.Client:
            settings = make_settings(tmp_path, db_url, **overrides)
            server = stack.enter_context(BackgroundServer(create_app(settings, workers=workers)))
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return stack.enter_context(
                httpx.Client(base_url=f"{server.url}{API_PREFIX}", headers=headers, timeout=15)
            )

        yield start


@pytest.fixture
def serve(tmp_path: Path, db_url: str) -> Iterator[Serve]:
    """``serve(workers=N, token=None, **settings) -> client`` on a fresh real server, for the
    tests whose answers depend on the database (run on SQLite and on PostgreSQL)."""
    with _servers(tmp_path, db_url) as start:
        yield start


@pytest.fixture
def serve_sqlite(tmp_path: Path) -> Iterator[Serve]:
    """The same on SQLite only, for behaviour that does not depend on the database."""
    with _servers(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'api.db'}") as start:
        yield start


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One API-only server on SQLite for the tests that create no job."""
    tmp_path = tmp_path_factory.mktemp("shared")
    with _servers(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'api.db'}") as start:
        yield start()


def payload(provider_url: str, job_id: str | None = "job-1", **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("size", SIZE)
    kwargs.setdefault("api_key", KEY)
    return batch_payload(provider_url, job_id, **kwargs)


def wait_until_ended(client: httpx.Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/jobs/{job_id}")
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        if job["status"] in TERMINAL_JOB_STATUSES:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}: {job['counts']}"
        time.sleep(0.05)


def stems(urls: list[str]) -> list[str]:
    """``.../<job>/0003-SKU2-stem4-a1.png`` -> ``0003-SKU2-stem4``."""
    return [url.rsplit("/", 1)[1].rsplit("-a", 1)[0] for url in urls]


SEED_ORDER = ["0000-SKU1-stem1", "0001-SKU1-stem2", "0002-SKU1-stem3", "0003-SKU2-stem4"]
SEED_ORDER += ["0004-SKU3-stem5"]


# -- submit ---------------------------------------------------------------------------------


def test_submit_is_idempotent_on_job_id(serve: Serve, db_url: str) -> None:
    client = serve()
    first = client.post("/jobs", json=payload("http://127.0.0.1:9"))
    assert first.status_code == 201, first.text
    job = first.json()
    assert (job["job_id"], job["user_id"], job["status"]) == ("job-1", "user-123", "queued")
    assert job["counts"] == {
        "total": 5,
        "queued": 5,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    again = client.post("/jobs", json=payload("http://127.0.0.1:9"))
    assert again.status_code == 200, again.text
    assert again.json()["id"] == job["id"]
    assert again.json()["job_id"] == "job-1"

    changed = client.post("/jobs", json=payload("http://127.0.0.1:9", options={"quality": 70}))
    assert changed.status_code == 409
    assert "job-1" in changed.json()["detail"]
    assert "already used for a different payload" in changed.json()["detail"]

    rows = sql(db_url, "SELECT id FROM ai_job WHERE job_id = 'job-1'")
    assert [r.id for r in rows] == [job["id"]]
    assert sql(db_url, "SELECT count(*) AS n FROM ai_job_image")[0].n == 5


def _unknown_mode(raw: dict[str, Any]) -> None:
    raw["mode"] = "everything_at_once"


def _bad_scheme(raw: dict[str, Any]) -> None:
    raw["options"]["sku_images_map"]["SKU2"][0]["url"] = "file:///etc/passwd"


def _too_small(raw: dict[str, Any]) -> None:
    raw["options"]["target_width"] = 10


def _gif(raw: dict[str, Any]) -> None:
    raw["options"]["output_format"] = "gif"


def _orphan_images(raw: dict[str, Any]) -> None:
    raw["options"]["skus"].remove("SKU3")


def _private_provider(raw: dict[str, Any]) -> None:
    raw["options"]["api_base"] = "http://169.254.169.254/v1"


def _no_key(raw: dict[str, Any]) -> None:
    del raw["options"]["api_key"]


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (_unknown_mode, "mode", "batch_series_generate"),
        (_bad_scheme, "options.sku_images_map.SKU2.0.url", "http"),
        (_too_small, "options.target_width", "64"),
        (_gif, "options.output_format", "png"),
        (_orphan_images, "options.sku_images_map.SKU3", "not in options.skus"),
        (_private_provider, "options.api_base", ""),
        (_no_key, "options.api_key", "API key"),
    ],
)
def test_invalid_payload_is_422_naming_the_field(
    shared: httpx.Client, mutate: Callable[[dict[str, Any]], None], field: str, words: str
) -> None:
    raw = payload("http://127.0.0.1:9", f"invalid-{field}")
    mutate(raw)
    response = shared.post("/jobs", json=raw)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["field"] == field
    assert words in detail[0]["msg"]
    assert shared.get(f"/jobs/invalid-{field}").status_code == 404


def test_too_many_images_is_422(serve_sqlite: Serve) -> None:
    client = serve_sqlite(max_images_per_job=4)
    response = client.post("/jobs", json=payload("http://127.0.0.1:9"))
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "options.sku_images_map"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'["not", "a", "job"]', "dictionary"),
        (b'{"type": "image_studio", "options": ', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_422_naming_the_body(
    shared: httpx.Client, body: bytes, words: str
) -> None:
    response = shared.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["field"] == "body"
    assert words in detail["msg"]


# -- a job, end to end ----------------------------------------------------------------------


def test_a_job_runs_and_every_view_shows_it(
    serve: Serve, fake_provider: BackgroundServer, db_url: str
) -> None:
    client = serve(workers=3)
    created = client.post("/jobs", json=payload(fake_provider.url))
    assert created.status_code == 201
    job = wait_until_ended(client, "job-1")

    assert job["status"] == "succeeded"
    assert job["error"] is None
    assert job["counts"] == {
        "total": 5,
        "queued": 0,
        "running": 0,
        "succeeded": 5,
        "failed": 0,
        "cancelled": 0,
    }
    assert [(s["sku"], s["total"], s["succeeded"]) for s in job["skus"]] == [
        ("SKU1", 3, 3),
        ("SKU2", 1, 1),
        ("SKU3", 1, 1),
    ]
    urls = job["result_image_urls"]
    assert stems(urls) == SEED_ORDER
    assert all(url.startswith(f"{API_PREFIX}/files/") for url in urls)

    images = client.get("/jobs/job-1/images").json()["images"]
    assert [(i["sku"], i["stem"], i["status"], i["attempts"]) for i in images] == [
        ("SKU1", "stem1", "succeeded", 1),
        ("SKU1", "stem2", "succeeded", 1),
        ("SKU1", "stem3", "succeeded", 1),
        ("SKU2", "stem4", "succeeded", 1),
        ("SKU3", "stem5", "succeeded", 1),
    ]
    assert [i["result_url"] for i in images] == urls
    assert all(i["error"] is None for i in images)
    main_prompt = (
        "根据图片内容生成电商产品图, 保持产品外观不变\n\n主图: 纯白背景, 产品居中\n\n去除水印"
    )
    assert [i["prompt"] for i in images] == [
        main_prompt,
        main_prompt.replace("主图: 纯白背景, 产品居中\n\n", ""),
        main_prompt.replace("主图: 纯白背景, 产品居中\n\n", ""),
        main_prompt,
        main_prompt,
    ]

    timeline = client.get("/jobs/job-1/timeline").json()
    calls = timeline["calls"]
    assert timeline["job_id"] == "job-1"
    assert sorted(c["position"] for c in calls) == [0, 1, 2, 3, 4]
    assert all(c["outcome"] == "succeeded" for c in calls)
    assert all(c["end"] >= c["start"] and c["seconds"] >= 0.02 for c in calls)

    listed = client.get("/jobs").json()["jobs"]
    assert [(j["job_id"], j["status"], j["total"], j["completed"]) for j in listed] == [
        ("job-1", "succeeded", 5, 5)
    ]

    result = client.get(urls[0].removeprefix(API_PREFIX))
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(result.content)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", (SIZE, SIZE))

    answers = [created, client.get("/jobs/job-1"), client.get("/jobs/job-1/images")]
    answers += [client.get("/jobs/job-1/timeline"), client.get("/jobs")]
    assert all(KEY not in answer.text for answer in answers)
    (row,) = sql(db_url, "SELECT config FROM ai_job")
    config = stored_config(row.config)
    assert "api_key" not in config["options"]
    assert KEY not in json.dumps(config)
    assert config["options"]["model"] == "gpt-image-1"  # the rest is kept as sent


def test_unknown_job_is_404(shared: httpx.Client) -> None:
    client = shared
    for path in ["/jobs/nope", "/jobs/nope/images", "/jobs/nope/timeline"]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert "nope" in response.json()["detail"]
    for path in ["/jobs/nope/cancel", "/jobs/nope/retry"]:
        assert client.post(path).status_code == 404, path
    assert client.get("/files/no-such-job/0000.png").status_code == 404


def test_events_of_an_unknown_job_is_404(serve_sqlite: Serve) -> None:
    client = serve_sqlite()
    assert client.get("/jobs/nope/events").status_code == 404
    assert client.get("/jobs").status_code == 200  # and the server still answers


def test_cancel_ends_the_job_cancelled(serve_sqlite: Serve) -> None:
    client = serve_sqlite(workers=0)
    client.post("/jobs", json=payload("http://127.0.0.1:9")).raise_for_status()
    response = client.post("/jobs/job-1/cancel")
    assert response.status_code in (200, 202)
    job = client.get("/jobs/job-1").json()
    assert job["status"] == "cancelled"
    assert job["counts"]["cancelled"] == 5


def test_health_and_metrics(shared: httpx.Client) -> None:
    root = str(shared.base_url).rstrip("/").removesuffix(API_PREFIX)
    assert httpx.get(f"{root}/healthz").json() == {"status": "ok"}
    metrics = httpx.get(f"{root}/metrics")
    assert metrics.status_code == 200
    assert "imagestudio_queue_depth" in metrics.text


# -- users ----------------------------------------------------------------------------------


def test_metrics_answer_only_the_metrics_token_when_tokens_are_set(serve_sqlite: Serve) -> None:
    """/metrics lists every user's provider keys: a user's token is not enough."""
    client = serve_sqlite(token="t1", api_tokens="t1=alice", metrics_token="m-secret-token")
    root = str(client.base_url).rstrip("/").removesuffix(API_PREFIX)
    for headers in ({}, {"Authorization": "Bearer t1"}, {"Authorization": "Bearer wrong"}):
        refused = httpx.get(f"{root}/metrics", headers=headers)
        assert refused.status_code == 401
        assert "imagestudio_" not in refused.text
    scraped = httpx.get(f"{root}/metrics", headers={"Authorization": "Bearer m-secret-token"})
    assert scraped.status_code == 200
    assert "imagestudio_queue_depth" in scraped.text
    closed = serve_sqlite(api_tokens="t1=alice")  # tokens set, no metrics token: closed
    closed_root = str(closed.base_url).rstrip("/").removesuffix(API_PREFIX)
    assert httpx.get(f"{closed_root}/metrics").status_code == 401


def test_tokens_bind_users_and_each_sees_only_their_jobs(serve_sqlite: Serve) -> None:
    tokens = {"api_tokens": "t1=alice,t2=bob"}
    alice = serve_sqlite(token="t1", **tokens)
    base = str(alice.base_url)
    with (
        httpx.Client(base_url=base, headers={"Authorization": "Bearer t2"}) as bob,
        httpx.Client(base_url=base) as nobody,
        httpx.Client(base_url=base, headers={"Authorization": "Bearer nope"}) as stranger,
    ):
        for client in (nobody, stranger):
            assert client.get("/jobs").status_code == 401
            assert client.post("/jobs", json=payload("http://127.0.0.1:9")).status_code == 401

        mine = payload("http://127.0.0.1:9", "shared-id")
        mine["user_id"] = None
        created = alice.post("/jobs", json=mine)
        assert created.status_code == 201
        assert created.json()["user_id"] == "alice"

        impostor = payload("http://127.0.0.1:9", "other-id", user_id="bob")
        refused = alice.post("/jobs", json=impostor)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["field"] == "user_id"

        assert bob.get("/jobs").json()["jobs"] == []
        for path in ["/jobs/shared-id", "/jobs/shared-id/images", "/jobs/shared-id/timeline"]:
            assert bob.get(path).status_code == 404, path
        assert bob.post("/jobs/shared-id/cancel").status_code == 404

        theirs = payload("http://127.0.0.1:9", "shared-id", user_id="bob")
        bobs = bob.post("/jobs", json=theirs)
        assert bobs.status_code == 201  # the same job_id is another job for another user
        assert bobs.json()["id"] != created.json()["id"]

        assert [j["user_id"] for j in alice.get("/jobs").json()["jobs"]] == ["alice"]
        assert [j["user_id"] for j in bob.get("/jobs").json()["jobs"]] == ["bob"]
        assert alice.get("/jobs/shared-id").json()["id"] == created.json()["id"]


# -- PostgreSQL only ------------------------------------------------------------------------


@pytest.fixture
def pg_server(tmp_path: Path, pg_url: str) -> Iterator[str]:
    settings = make_settings(tmp_path, pg_url)
    with BackgroundServer(create_app(settings, workers=0)) as server:
        yield f"{server.url}{API_PREFIX}"


@pytest.mark.postgres
async def test_concurrent_identical_posts_make_one_job(pg_server: str, pg_url: str) -> None:
    body = payload("http://127.0.0.1:9", "burst")
    async with httpx.AsyncClient(base_url=pg_server, timeout=30) as client:
        responses = await asyncio.gather(*(client.post("/jobs", json=body) for _ in range(20)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    rows = await asyncio.to_thread(sql, pg_url, "SELECT count(*) AS n FROM ai_job")
    assert rows[0].n == 1
    images = await asyncio.to_thread(sql, pg_url, "SELECT count(*) AS n FROM ai_job_image")
    assert images[0].n == 5


MONITORING_SQL = (
    "SELECT id, status, jsonb_array_length(result_image_urls), created_at, updated_at "
    "FROM ai_job WHERE type = 'image_studio' ORDER BY created_at DESC LIMIT 1"
)


def poll_monitoring_sql(db_url: str, timeout: float = 30.0) -> list[Any]:
    """Run the seed's query every 50 ms on one connection until the job has ended."""

    async def run() -> list[Any]:
        engine = create_engine(db_url)
        rows: list[Any] = []
        try:
            async with engine.connect() as conn:
                async with asyncio.timeout(timeout):
                    while True:
                        (row,) = (await conn.execute(text(MONITORING_SQL))).all()
                        await conn.rollback()  # a fresh snapshot for the next read
                        rows.append(row)
                        if row.status in TERMINAL_JOB_STATUSES:
                            return rows
                        await asyncio.sleep(0.05)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


@pytest.mark.postgres
def test_the_seeds_monitoring_query_sees_results_grow(tmp_path: Path, pg_url: str) -> None:
    slow = create_fake_provider_app(FakeProviderConfig(latency_ms=300, seed=3))
    # One task at a time in all: WORKER_CONCURRENCY (workers=1) bounds only the work outside
    # a provider call; the calls follow the governor up to WORKER_MAX_TASKS.
    settings = make_settings(tmp_path, pg_url, worker_max_tasks=1)
    with (
        BackgroundServer(slow) as provider,
        BackgroundServer(create_app(settings, workers=1)) as server,
        httpx.Client(base_url=f"{server.url}{API_PREFIX}") as client,
    ):
        created = client.post("/jobs", json=payload(provider.url)).json()
        rows = poll_monitoring_sql(pg_url)
    assert {row.id for row in rows} == {created["id"]}
    seen = [(row.status, row[2]) for row in rows]
    counts = [n for _, n in seen]
    assert seen[-1] == ("succeeded", 5)
    assert counts == sorted(counts)  # never shrinks
    # One by one (one worker slot, 300 ms a call), not all at the end.
    assert len({1, 2, 3, 4} & set(counts)) >= 3
    assert any(status == "running" and 0 < n < 5 for status, n in seen)
    updated = [row.updated_at for row in rows]
    assert updated == sorted(updated)
    assert updated[-1] > updated[0]
    (config,) = sql(
        pg_url,
        "SELECT config->'options'->'sku_images_map' AS m FROM ai_job WHERE type = 'image_studio'",
    )
    sku_map = json.loads(config.m) if isinstance(config.m, str) else config.m
    assert list(sku_map) == ["SKU1", "SKU2", "SKU3"]
    assert sku_map["SKU1"][0]["url"].endswith("/samples/1.jpg")


# -- secrets --------------------------------------------------------------------------------


def _run_good_and_bad_jobs(
    client: httpx.Client, provider_url: str, suffix: str = ""
) -> list[httpx.Response]:
    """A job that succeeds and a job whose key the provider rejects (and echoes back)."""
    good, bad = f"good{suffix}", f"bad{suffix}"
    responses = [
        client.post("/jobs", json=payload(provider_url, good)),
        client.post("/jobs", json=payload(provider_url, bad, api_key=BAD_KEY)),
    ]
    assert [r.status_code for r in responses] == [201, 201]
    assert wait_until_ended(client, good)["status"] == "succeeded"
    ended = wait_until_ended(client, bad)
    assert ended["status"] == "failed"
    assert "AuthFailed" in ended["error"]
    for job_id in (good, bad):
        for path in ["", "/images", "/timeline"]:
            responses.append(client.get(f"/jobs/{job_id}{path}"))
    responses.append(client.get("/jobs"))
    responses.append(client.post("/jobs", json=payload(provider_url, good)))
    return responses


def _assert_no_key_in(responses: list[httpx.Response], db_url: str) -> None:
    for response in responses:
        assert response.status_code in (200, 201)
        assert KEY not in response.text, response.url
        assert BAD_KEY not in response.text, response.url
    for row in sql(db_url, "SELECT config, error FROM ai_job"):
        stored = json.dumps(stored_config(row.config), ensure_ascii=False)
        assert "api_key" not in json.loads(stored)["options"]
        assert KEY not in stored
        assert BAD_KEY not in stored
        assert BAD_KEY not in (row.error or "")
    errors = "SELECT error FROM ai_job_image UNION ALL SELECT error FROM ai_job_attempt"
    for row in sql(db_url, errors):
        assert BAD_KEY not in (row.error or "")
    # Both jobs ended: their sealed keys are gone too.
    assert sql(db_url, "SELECT count(*) AS n FROM ai_job_secret")[0].n == 0


def test_api_key_is_in_no_answer_no_row_and_no_log(
    serve_sqlite: Serve,
    fake_provider: BackgroundServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    # Structured events, as the processors see them.
    with structlog.testing.capture_logs() as logs:
        client = serve_sqlite(workers=2)
        responses = _run_good_and_bad_jobs(client, fake_provider.url)
    _assert_no_key_in(responses, db_url)
    processing = [e for e in logs if str(e.get("event", "")).startswith("Processing image")]
    good = sorted((e["event"], e["sku"], e["stem"]) for e in processing if e["job_id"] == "good")
    assert good == [
        ("Processing image 1/5", "SKU1", "stem1"),
        ("Processing image 2/5", "SKU1", "stem2"),
        ("Processing image 3/5", "SKU1", "stem3"),
        ("Processing image 4/5", "SKU2", "stem4"),
        ("Processing image 5/5", "SKU3", "stem5"),
    ]
    assert any(e["job_id"] == "bad" for e in processing)
    assert any(e.get("error") and "AuthFailed" in e["error"] for e in logs)
    for entry in logs:
        shown = repr(entry)
        assert KEY not in shown
        assert BAD_KEY not in shown

    # Rendered lines, as `imagestudio serve --log-json` writes them.
    capfd.readouterr()
    configure_logging(json=True)
    try:
        responses = _run_good_and_bad_jobs(client, fake_provider.url, suffix="-2")
    finally:
        structlog.reset_defaults()
    out, err = capfd.readouterr()
    assert "Processing image" in err  # the logs really went through the captured stream
    assert "AuthFailed" in err
    assert KEY not in out + err
    assert BAD_KEY not in out + err
    _assert_no_key_in(responses, db_url)
