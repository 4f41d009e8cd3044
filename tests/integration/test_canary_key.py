"""A canary API key, sent in the payload, inside an ``api_base`` URL and echoed back by the
provider (plain, URL-encoded and base64-encoded, inside its error messages), is found 0 times
in the answers, the logs (console and JSON), the database and the metrics.

The service is a real ``imagestudio serve`` process (so every log line it writes, uvicorn's
included, is in its output); the provider is a small loopback server that echoes the key.
"""

from __future__ import annotations

import asyncio
import base64
import io
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from PIL import Image
from sqlalchemy import MetaData, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES
from imagestudio.security.redact import forms
from imagestudio.store.db import create_engine
from testkit.payloads import batch_payload
from testkit.serve import serve_process

CANARY = "sk-canary-7Hq2ZbXw9LmN4pRtVy6K"
PROMPT_MARK = "CANARY-PROMPT-TEXT-do-not-log"


def _photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 120, 40)).save(out, "JPEG")
    return out.getvalue()


def echo_provider() -> Starlette:
    """Serves source photos, and answers every image call with an error that echoes the key
    it was sent: odd calls a 500 (retried) with the Authorization header base64-encoded, even
    calls a 400 (the image fails) with the key plain, URL-encoded and base64-encoded."""
    photo = _photo()
    calls = 0

    async def sample(_: Request) -> Response:
        return Response(photo, media_type="image/jpeg")

    async def image_call(request: Request) -> Response:
        nonlocal calls
        calls += 1
        await request.body()
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ")
        if calls % 2:
            echoed = base64.b64encode(auth.encode()).decode()
            message = f"upstream rejected Authorization (b64) {echoed}"
            return JSONResponse({"error": {"message": message, "type": "server_error"}}, 500)
        b64 = base64.b64encode(key.encode()).decode()
        basic = base64.b64encode(f"user:{key}".encode()).decode()
        message = f"bad request for key {key} / {quote(key)} / {b64} / Basic {basic}"
        return JSONResponse({"error": {"message": message, "type": "invalid_request"}}, 400)

    return Starlette(
        routes=[
            Route("/samples/{n:int}.jpg", sample),
            Route("/v1/images/edits", image_call, methods=["POST"]),
            Route("/v1/images/generations", image_call, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with BackgroundServer(echo_provider()) as server:
        yield server.url


def database_text(db_url: str) -> str:
    """Every value of every table, as text (SQLite's zlib-compressed payloads inflated)."""

    async def dump() -> str:
        engine = create_engine(db_url)
        parts: list[str] = []
        try:
            async with engine.connect() as conn:
                meta = MetaData()
                await conn.run_sync(meta.reflect)
                for table in meta.sorted_tables:  # raw rows: no column type decodes them
                    rows = await conn.execute(text(f'SELECT * FROM "{table.name}"'))
                    for row in rows.all():
                        for value in row:
                            if isinstance(value, bytes):
                                try:
                                    value = zlib.decompress(value)
                                except zlib.error:
                                    pass
                                parts.append(value.decode("utf-8", "replace"))
                            else:
                                parts.append(str(value))
        finally:
            await engine.dispose()
        return "\n".join(parts)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, dump()).result()


def sqlite_files(db_url: str) -> str:
    """The SQLite database's files as bytes (the WAL too), decoded loosely."""
    if not db_url.startswith("sqlite"):
        return ""
    path = Path(db_url.split("///", 1)[1])
    found = [p.read_bytes() for p in path.parent.glob(path.name + "*")]
    return b"\n".join(found).decode("latin-1")


def found(text: str) -> dict[str, int]:
    """How many times each form of the canary occurs in ``text`` (only the non-zero ones)."""
    counts = {form: text.count(form) for form in forms(CANARY)}
    return {form: n for form, n in counts.items() if n}


def run_job(client: httpx.Client, provider: str) -> list[httpx.Response]:
    """Submit the canary's job (8 images) and a refused one, follow it to its end; every
    answer the service gave."""
    answers: list[httpx.Response] = []
    raw = batch_payload(provider, "canary-job", api_key=CANARY, size=64, images_per_sku=(4, 4))
    raw["options"]["prompt_templates"]["common_cn"] = PROMPT_MARK
    answers.append(client.post("/jobs", json=raw))
    assert answers[-1].status_code == 201, answers[-1].text
    with_userinfo = batch_payload(provider, "canary-url", api_key="sk-other-0123456789")
    with_userinfo["options"]["api_base"] = f"http://user:{CANARY}@{provider[7:]}/v1"
    answers.append(client.post("/jobs", json=with_userinfo))
    assert answers[-1].status_code == 422, answers[-1].text
    with_userinfo["options"]["api_base"] = f"http://{quote(CANARY, safe='')}@{provider[7:]}/v1"
    answers.append(client.post("/jobs", json=with_userinfo))
    assert answers[-1].status_code == 422, answers[-1].text
    for _ in range(600):
        answers.append(client.get("/jobs/canary-job"))
        if answers[-1].json()["status"] in TERMINAL_JOB_STATUSES:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert answers[-1].json()["status"] == "failed", answers[-1].json()
    answers.append(client.get("/jobs/canary-job/images"))
    answers.append(client.get("/jobs/canary-job/timeline"))
    answers.append(client.get("/jobs/canary-job/events"))
    answers.append(client.get("/jobs"))
    answers.append(client.post("/jobs/canary-job/retry", json={"api_key": CANARY}))
    return answers


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_the_canary_key_is_nowhere(
    tmp_path: Path, migrated: str, provider: str, log_format: str
) -> None:
    args = ["--log-json"] if log_format == "json" else []
    settings = {
        "database_url": migrated,
        "allow_private_urls": "127.0.0.1",
        "max_attempts": "2",
        "backoff_base_seconds": "0.01",
        "backoff_max_seconds": "0.05",
        "poll_interval": "0.05",
        "events_poll_seconds": "0.05",
    }
    with serve_process(tmp_path, *args, workers=2, **settings) as server:
        with httpx.Client(base_url=f"{server.url}{API_PREFIX}", timeout=15) as client:
            answers = run_job(client, provider)
            # the retry queued the images again with the key: let them fail again
            for _ in range(600):
                job = client.get("/jobs/canary-job").json()
                if job["status"] in TERMINAL_JOB_STATUSES:
                    break
                asyncio.run(asyncio.sleep(0.05))
            answers.append(client.get("/jobs/canary-job"))
            metrics = httpx.get(f"{server.url}/metrics").text
    logs = server.log.read_text()
    answer_text = "\n".join(f"{r.headers}\n{r.text}" for r in answers)

    assert "echoed" not in logs  # (the provider's words are in the errors, the key is not)
    assert found(answer_text) == {}
    assert found(logs) == {}
    assert found(metrics) == {}
    assert found(database_text(migrated)) == {}
    assert found(sqlite_files(migrated)) == {}

    # The key did reach the provider and its echoes reached us: what we kept is redacted.
    images = next(r for r in answers if r.url.path.endswith("/images")).json()["images"]
    assert all(image["status"] == "failed" for image in images)
    assert all("[REDACTED]" in image["error"] for image in images), images[0]["error"]
    # One line per failure, no payload: the prompt is never logged, and 16 image failures
    # (8 images, twice) with their retries stay within a few lines each.
    assert PROMPT_MARK not in logs
    assert "Traceback" not in logs
    assert len(logs.splitlines()) < 200, len(logs.splitlines())
    if log_format == "json":
        assert '"error_kind": "ProviderBadRequest"' in logs
    else:
        assert "error_kind=ProviderBadRequest" in logs
