"""Hostile and careless input against a real server on SQLite and PostgreSQL: every case is
a 4xx naming the field (or a stream that carries on), never a 500."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
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

KEY = "sk-hostile-0123456789abcdef"
Serve = Callable[..., httpx.Client]


@pytest.fixture
def serve(tmp_path: Path, db_url: str) -> Iterator[Serve]:
    structlog.reset_defaults()
    with contextlib.ExitStack() as stack:

        def start(workers: int = 0, **overrides: Any) -> httpx.Client:
            overrides.setdefault("events_poll_seconds", 0.05)
            overrides.setdefault("imaging_processes", 0)
            settings = make_settings(tmp_path, db_url, **overrides)
            server = stack.enter_context(BackgroundServer(create_app(settings, workers=workers)))
            return stack.enter_context(
                httpx.Client(base_url=f"{server.url}{API_PREFIX}", timeout=15)
            )

        yield start


def job(job_id: str = "job-1", **options: Any) -> dict[str, Any]:
    return batch_payload("http://127.0.0.1:9", job_id, api_key=KEY, size=256, options=options)


def fields(response: httpx.Response) -> list[str]:
    return [item["field"] for item in response.json()["detail"]]


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/jobs", {"offset": 2**63}, "query.offset"),
        ("/jobs", {"offset": 10**30}, "query.offset"),
        ("/jobs", {"offset": -1}, "query.offset"),
        ("/jobs", {"limit": 2**64}, "query.limit"),
        ("/jobs/job-1/images", {"offset": 2**63}, "query.offset"),
        ("/jobs/job-1/images", {"limit": 10**20}, "query.limit"),
        ("/jobs/job-1/timeline", {"cursor": "9" * 18 + ".1"}, "query.cursor"),
        ("/jobs/job-1/timeline", {"cursor": "1." + "9" * 19}, "query.cursor"),
        ("/jobs/job-1/timeline", {"cursor": "9" * 25 + ".1"}, "query.cursor"),
    ],
)
def test_out_of_range_queries_are_422_naming_the_parameter(
    serve: Serve, path: str, params: dict[str, Any], field: str
) -> None:
    client = serve()
    assert client.post("/jobs", json=job()).status_code == 201
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert fields(response) == [field]


def test_the_largest_offsets_allowed_read_an_empty_page(serve: Serve) -> None:
    client = serve()
    assert client.post("/jobs", json=job()).status_code == 201
    assert client.get("/jobs", params={"offset": 10**9}).json() == {"jobs": []}
    page = client.get("/jobs/job-1/images", params={"offset": 10**9})
    assert page.status_code == 200, page.text
    assert page.json()["images"] == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_concurrency": 2**63}, "options.max_concurrency"),
        ({"max_concurrency": 0}, "options.max_concurrency"),
        ({"target_width": 2**64}, "options.target_width"),
        ({"quality": -(2**63)}, "options.quality"),
        ({"api_base": "http://a..b/v1"}, "options.api_base"),
        ({"api_base": "http://host:99999/v1"}, "options.api_base"),
        ({"api_base": f"http://u:{KEY}@127.0.0.1:9/v1"}, "options.api_base"),
        ({"api_base": "http://no-such-host.invalid/v1"}, "options.api_base"),
        (
            {"prompt_templates": {"common_cn": "x" * 1_000_000}},
            "options.prompt_templates.common_cn",
        ),
        ({"skus": "SKU1"}, "options.skus"),
        ({"sku_images_map": {"SKU1": [{"url": 5}]}}, "options.sku_images_map.SKU1.0.url"),
        ({"use_english": {"a": 1}}, "options.use_english"),
    ],
)
def test_bad_payload_values_are_422_naming_the_field(
    serve: Serve, options: dict[str, Any], field: str
) -> None:
    client = serve()
    response = client.post("/jobs", json=job(**options))
    assert response.status_code == 422, response.text
    assert fields(response) == [field]
    assert KEY not in response.text


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b"null", b'"x"', b"1e999999", b'{"mode": NaN}', b"\xff\xfe"],
)
def test_malformed_bodies_are_422(serve: Serve, body: bytes) -> None:
    client = serve()
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


def test_a_number_of_10000_digits_is_422_naming_the_body(serve: Serve) -> None:
    """Past Python's 4,300-digit limit, the JSON parser itself refuses the body: a 422 naming
    the body, with the parser's reason."""
    client = serve()
    body = b'{"mode": "batch_series_generate", "options": {"max_concurrency": ' + b"9" * 10_000
    response = client.post(
        "/jobs", content=body + b"}}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert (detail["loc"], detail["field"]) == (["body"], "body")
    assert "not valid JSON" in detail["msg"]


@pytest.mark.parametrize(
    "last_event_id",
    [b"9" * 25, b"99999999999999999999", b"-1", b"1.5", b"\xff\xfe", "١٢".encode(), b"\xc2\xb2"],
)
def test_sse_resumes_from_the_start_on_a_bad_last_event_id(
    serve: Serve, last_event_id: bytes
) -> None:
    client = serve()
    assert client.post("/jobs", json=job()).status_code == 201
    assert client.post("/jobs/job-1/cancel").status_code == 202
    response = client.get("/jobs/job-1/events", headers={"Last-Event-ID": last_event_id})
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("event:")]
    assert events[0] == "event: snapshot"
    assert events[-1] == "event: end"
    assert len(events) > 2  # the job's events from the start came between


def test_sse_after_the_largest_valid_id_ends_normally(serve: Serve) -> None:
    """An id the log does not hold is a position (``store.outbox``): on SQLite past every
    event, on PostgreSQL ``(0, id)``, before every committed transaction's events."""
    client = serve()
    assert client.post("/jobs", json=job()).status_code == 201
    assert client.post("/jobs/job-1/cancel").status_code == 202
    response = client.get("/jobs/job-1/events", headers={"Last-Event-ID": "9" * 18})
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("event:")]
    assert (events[0], events[-1]) == ("event: snapshot", "event: end")


def test_a_user_past_the_jobs_quota_gets_429_with_retry_after(serve: Serve) -> None:
    client = serve(max_jobs_in_flight=2, quota_retry_after_seconds=12.5)
    for n in (1, 2):
        assert client.post("/jobs", json=job(f"job-{n}")).status_code == 201
    refused = client.post("/jobs", json=job("job-3"))
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "13"
    assert refused.json()["error"] == "too_much_in_flight"
    assert "2 jobs in flight" in refused.json()["detail"]
    # The same job again is not new work: it is answered whatever the quota.
    assert client.post("/jobs", json=job("job-1")).status_code == 200
    # Another user has their own quota.
    other = job("job-3")
    other["user_id"] = "someone-else"
    assert client.post("/jobs", json=other).status_code == 201
    # An ended job no longer counts.
    assert client.post("/jobs/job-1/cancel").status_code == 202
    assert client.post("/jobs", json=job("job-3")).status_code == 201


def test_a_user_past_the_images_quota_gets_429(serve: Serve) -> None:
    client = serve(max_images_in_flight=7)  # the seed's job has 5 images
    assert client.post("/jobs", json=job("job-1")).status_code == 201
    refused = client.post("/jobs", json=job("job-2"))
    assert refused.status_code == 429, refused.text
    assert "5 images in flight and 5 more" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1


def test_a_job_whose_every_image_failed_says_why(serve: Serve, fake_provider: Any) -> None:
    client = serve(workers=1)
    raw = batch_payload(fake_provider.url, "job-1", api_key=KEY, size=256)
    for images in raw["options"]["sku_images_map"].values():
        for image in images:
            image["url"] = f"{fake_provider.url}/no-such-photo.jpg"
    assert client.post("/jobs", json=raw).status_code == 201
    deadline = time.monotonic() + 30
    while (answer := client.get("/jobs/job-1").json())["status"] not in ("failed", "succeeded"):
        assert time.monotonic() < deadline, answer["status"]
        time.sleep(0.05)
    assert answer["status"] == "failed"
    assert answer["error"].startswith("all 5 images failed; the last: ")
    assert "404" in answer["error"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/jobs/a%00b", "path"),
        ("/jobs/a%00b/images", "path"),
        ("/jobs/x%00/retry", "path"),
        ("/files/a%00.png", "path"),
        ("/jobs?offset=1%00", "query"),
    ],
)
def test_a_nul_in_the_url_is_400_naming_the_part(serve: Serve, path: str, field: str) -> None:
    client = serve()
    method = "POST" if path.endswith("/retry") else "GET"
    response = client.request(method, path)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def _escaped(raw: dict[str, Any], old: str, new: str) -> bytes:
    text = json.dumps(raw)
    assert old in text
    return text.replace(old, new, 1).encode()


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        ('"job_id": "job-1"', '"job_id": "job\\u0000-1"', "job_id", "NUL"),
        ('"user_id": "user-123"', '"user_id": "u\\u0000"', "user_id", "NUL"),
        ('"skus": ["SKU1"', '"skus": ["SKU\\u00001"', "options.skus.0", "NUL"),
        ('"model": "gpt-image-1"', '"model": "gpt\\u0000"', "options.model", "NUL"),
        (
            '"common_cn": "',
            '"common_cn": "\\ud800',
            "options.prompt_templates.common_cn",
            "surrogate",
        ),
        ('"mode": ', '"extra\\u0000": 1, "mode": ', "extra\\u0000", "NUL"),
        ('"mode": ', '"x": "\\udfff", "mode": ', "x", "surrogate"),
    ],
)
def test_text_no_database_can_store_is_422_naming_the_field(
    serve: Serve, old: str, new: str, field: str, words: str
) -> None:
    client = serve()
    body = _escaped(job(), old, new)
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert fields(response) == [field]
    assert words in response.json()["detail"][0]["msg"]


def test_an_escaped_emoji_is_fine(serve: Serve) -> None:
    client = serve()
    body = _escaped(job(), '"common_cn": "', '"common_cn": "\\ud83d\\ude00 ')
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda raw: raw["options"].update(model="m" * 201), "options.model"),
        (
            lambda raw: raw["options"]["sku_images_map"]["SKU2"][0].update(stem="s" * 301),
            "options.sku_images_map.SKU2.0.stem",
        ),
        (
            lambda raw: raw["options"]["sku_images_map"]["SKU2"][0].update(name="n" * 301),
            "options.sku_images_map.SKU2.0.name",
        ),
        (lambda raw: raw["options"].update(skus=["S" * 201]), "options.skus.0"),
    ],
)
def test_values_longer_than_their_column_are_422(
    serve: Serve, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    client = serve()
    raw = job()
    mutate(raw)
    response = client.post("/jobs", json=raw)
    assert response.status_code == 422, response.text
    assert fields(response) == [field]


def test_a_stem_made_from_a_long_url_fits_its_column(serve: Serve) -> None:
    client = serve()
    raw = job()
    image = raw["options"]["sku_images_map"]["SKU2"][0]
    del image["stem"], image["name"]
    image["url"] = "http://127.0.0.1:9/" + "a" * 5000 + ".jpg"
    response = client.post("/jobs", json=raw)
    assert response.status_code == 201, response.text
    images = client.get("/jobs/job-1/images").json()["images"]
    assert len(images[3]["stem"]) == 300


@pytest.mark.parametrize("key", ["sk-a b", "sk-a\nX-Injected: 1", "sk-\u00e9t\u00e9", "k" * 4097])
def test_an_api_key_that_cannot_go_in_a_header_is_422(serve: Serve, key: str) -> None:
    client = serve()
    response = client.post("/jobs", json=job(api_key=key))
    assert response.status_code == 422, response.text
    assert fields(response) == ["options.api_key"]
    assert client.post("/jobs", json=job()).status_code == 201
    assert client.post("/jobs/job-1/cancel").status_code == 202
    retried = client.post("/jobs/job-1/retry", json={"api_key": key})
    assert retried.status_code == 422, retried.text
    assert fields(retried) == ["api_key"]
