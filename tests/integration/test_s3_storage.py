"""S3 storage against a real S3 HTTP server (moto's, ``testkit.s3``, started by the tests):
the storage's own operations, the seed job end to end through the API with its results in the
bucket on SQLite and PostgreSQL, and its result URLs fetching the exact bytes, presigned (the
API's files route redirecting to a signed GET) and public (the object's own URL, or a CDN's).
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog
from conftest import make_settings, s3_settings
from PIL import Image

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import API_PREFIX, FILES_PATH, TERMINAL_JOB_STATUSES
from imagestudio.errors import StorageError
from imagestudio.runtime.services import s3_options
from imagestudio.settings import Settings
from imagestudio.storage import Redirect, S3Options, open_storage, sweep
from imagestudio.storage.s3 import S3Storage
from imagestudio.storage.s3_url import IMMUTABLE, S3Location
from testkit.payloads import batch_payload
from testkit.s3 import S3Server

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
KEY = "job-7/0000-SKU1-stem1-a1.png"


@pytest.fixture
async def bucket_storage(s3: S3Server, s3_bucket: str) -> AsyncIterator[S3Storage]:
    storage = S3Storage(
        S3Location(s3_bucket, "studio/"),
        S3Options(
            endpoint_url=s3.endpoint,
            region=s3.region,
            access_key_id=s3.access_key,
            secret_access_key=s3.secret_key,
        ),
    )
    try:
        yield storage
    finally:
        await storage.aclose()


# -- the storage's operations --------------------------------------------------------------


async def test_put_get_list_delete_under_the_prefix(
    bucket_storage: S3Storage, s3: S3Server, s3_bucket: str
) -> None:
    await bucket_storage.put(KEY, PNG, "image/png")
    await bucket_storage.put("job-7/0001-SKU1-stem2-a1.webp", b"RIFFwebp", "image/webp")
    await bucket_storage.put("job-8/0000-SKU1-stem1-a1.png", b"other", "image/png")
    assert await bucket_storage.get(KEY) == PNG
    assert await bucket_storage.list("job-7/") == [KEY, "job-7/0001-SKU1-stem2-a1.webp"]
    assert s3.keys(s3_bucket) == [
        f"studio/{KEY}",
        "studio/job-7/0001-SKU1-stem2-a1.webp",
        "studio/job-8/0000-SKU1-stem1-a1.png",
    ]
    head = s3.client().head_object(Bucket=s3_bucket, Key=f"studio/{KEY}")
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == IMMUTABLE
    assert head["ContentLength"] == len(PNG)
    await bucket_storage.put(KEY, b"replaced", "image/png")  # by key: one object, new bytes
    assert await bucket_storage.get(KEY) == b"replaced"
    await bucket_storage.delete(KEY)
    await bucket_storage.delete(KEY)  # a missing key is not an error
    assert await bucket_storage.list("job-7/") == ["job-7/0001-SKU1-stem2-a1.webp"]
    with pytest.raises(StorageError, match="no stored result"):
        await bucket_storage.get(KEY)
    assert await bucket_storage.discard_partials("job-7/") == 0


async def test_listing_pages_past_a_thousand_keys(bucket_storage: S3Storage) -> None:
    keys = [f"big/{i:04d}-S-s-a1.png" for i in range(1005)]
    for key in keys:
        await bucket_storage.put(key, b"x", "image/png")
    assert await bucket_storage.list("big/") == keys
    assert await sweep(bucket_storage, "big/", set(keys[:3])) == 1002
    assert await bucket_storage.list("big/") == keys[:3]


@pytest.mark.parametrize("key", ["../x.png", ".hidden", "a//b.png", "a b.png", ""])
async def test_invalid_keys_are_refused_before_any_request(
    bucket_storage: S3Storage, key: str
) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        await bucket_storage.put(key, b"x", "image/png")
    with pytest.raises(StorageError, match="invalid storage key"):
        await bucket_storage.serve(key)


async def test_presigned_urls_fetch_the_bytes_with_the_chosen_expiry(
    s3: S3Server, s3_bucket: str, bucket_storage: S3Storage
) -> None:
    await bucket_storage.put(KEY, PNG, "image/png")
    served = await bucket_storage.serve(KEY)
    assert isinstance(served, Redirect)
    assert served.max_age == 0  # a presigned URL expires: the redirect is not cached
    query = parse_qs(urlsplit(served.url).query)
    assert query["X-Amz-Expires"] == ["3600"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith(f"{s3.access_key}/")
    assert len(query["X-Amz-Signature"][0]) == 64
    assert s3.secret_key not in served.url
    async with httpx.AsyncClient() as client:
        answer = await client.get(served.url)
    assert (answer.status_code, answer.content) == (200, PNG)
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["cache-control"] == IMMUTABLE

    short = S3Storage(bucket_storage.location, replace(bucket_storage.options, presign_seconds=90))
    try:
        again = await short.serve(KEY)
        assert isinstance(again, Redirect)
        assert parse_qs(urlsplit(again.url).query)["X-Amz-Expires"] == ["90"]
    finally:
        await short.aclose()


async def test_a_missing_object_is_a_storage_error_when_served(
    bucket_storage: S3Storage,
) -> None:
    with pytest.raises(StorageError, match="no stored result"):
        await bucket_storage.serve("job-7/missing.png")


async def test_an_unreachable_or_missing_bucket_fails_readiness_without_the_secret(
    s3: S3Server,
) -> None:
    options = s3_options(
        make_settings(Path("/nonexistent"), None, **s3_settings(s3, "no-such-bucket"))
    )
    storage = open_storage("s3://no-such-bucket/studio", s3=options)
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(StorageError) as caught:
            await storage.check()
        assert "no-such-bucket" in str(caught.value)
        assert s3.secret_key not in str(caught.value)
        assert s3.secret_key not in repr(logs)
        with pytest.raises(StorageError, match="cannot write"):
            await storage.put(KEY, PNG, "image/png")
    finally:
        await storage.aclose()


# -- the seed job end to end, results in the bucket -----------------------------------------


def _wait_until_ended(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["status"] in TERMINAL_JOB_STATUSES:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}: {job['counts']}"
        time.sleep(0.05)


@pytest.mark.parametrize("urls", ["presigned", "public", "cdn"])
def test_the_seed_job_runs_end_to_end_with_results_in_s3(
    tmp_path: Path,
    db_url: str,
    fake_provider: BackgroundServer,
    s3: S3Server,
    s3_bucket: str,
    urls: str,
) -> None:
    overrides = s3_settings(s3, s3_bucket)
    if urls != "presigned":  # objects readable without a signature: a canned ACL here
        overrides.update(s3_urls="public", s3_acl="public-read")
    if urls == "cdn":  # a CDN in front of the bucket's root: here the bucket's own address
        overrides["s3_public_base_url"] = f"{s3.endpoint}/{s3_bucket}/"
    settings = make_settings(tmp_path, db_url, **overrides)
    with (
        BackgroundServer(create_app(settings, workers=4)) as server,
        httpx.Client(base_url=f"{server.url}{API_PREFIX}", timeout=15) as client,
    ):
        created = client.post("/jobs", json=batch_payload(fake_provider.url, "seed-s3"))
        assert created.status_code == 201, created.text
        job = _wait_until_ended(client, "seed-s3")
        assert job["status"] == "succeeded", job
        images = client.get("/jobs/seed-s3/images").raise_for_status().json()["images"]
        result_urls = job["result_image_urls"]
        assert [i["result_url"] for i in images] == result_urls
        assert len(result_urls) == 5

        # Exactly the five results are in the bucket, under the prefix, nothing else.
        keys = s3.keys(s3_bucket)
        assert len(keys) == 5
        assert all(k.startswith("studio/") and k.endswith(".png") for k in keys)
        for url, key in zip(result_urls, keys, strict=True):
            stored = s3.client().get_object(Bucket=s3_bucket, Key=key)
            data = stored["Body"].read()
            assert stored["ContentType"] == "image/png"
            assert stored["CacheControl"] == IMMUTABLE
            with Image.open(io.BytesIO(data)) as decoded:
                assert (decoded.format, decoded.size) == ("PNG", (1536, 1536))
            if urls == "presigned":  # the API's files route, redirecting to a signed GET
                assert url == f"{FILES_PATH}/{key.removeprefix('studio/')}"
                redirect = httpx.get(f"{server.url}{url}", follow_redirects=False)
                assert redirect.status_code == 307
                assert redirect.headers["cache-control"] == "no-store"
                assert "X-Amz-Signature=" in redirect.headers["location"]
                fetched = httpx.get(f"{server.url}{url}", follow_redirects=True)
                unsigned = httpx.get(f"{s3.endpoint}/{s3_bucket}/{key}")
                assert unsigned.status_code == 403  # private: only the signature lets it out
            else:  # the object's own unsigned URL, recorded as the result URL
                assert url == f"{s3.endpoint}/{s3_bucket}/{key}"
                fetched = httpx.get(url)
            assert fetched.status_code == 200
            assert fetched.content == data  # the exact bytes


@pytest.mark.parametrize("urls", ["presigned", "public"])
async def test_result_urls_name_the_public_endpoint_when_it_differs(
    s3: S3Server, s3_bucket: str, bucket_storage: S3Storage, urls: str
) -> None:
    """Workers reach the store at one address, browsers at another (compose's minio:9000 and
    localhost:9000): URLs are made for the second one; here 127.0.0.1 and localhost."""
    public_endpoint = s3.endpoint.replace("127.0.0.1", "localhost")
    options = replace(
        bucket_storage.options,
        public_endpoint_url=public_endpoint,
        urls=urls,  # type: ignore[arg-type]
        acl="public-read" if urls == "public" else None,
    )
    storage = S3Storage(bucket_storage.location, options)
    try:
        await storage.put(KEY, PNG, "image/png")
        served = await storage.serve(KEY)
        assert isinstance(served, Redirect)
        assert served.url.startswith(f"{public_endpoint}/{s3_bucket}/studio/{KEY}")
        if urls == "public":
            assert storage.public_url(KEY) == f"{public_endpoint}/{s3_bucket}/studio/{KEY}"
        else:
            assert "X-Amz-Signature=" in served.url
        async with httpx.AsyncClient() as client:
            answer = await client.get(served.url)
        assert (answer.status_code, answer.content) == (200, PNG)
    finally:
        await storage.aclose()


async def test_credentials_from_a_profile_when_no_keys_are_given(
    s3: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_PROFILE and the shared credentials file, through botocore's own chain."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[studio]\naws_access_key_id = AKIAPROFILEKEY\naws_secret_access_key = profile-secret\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "studio")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_REGION", s3.region)
    monkeypatch.chdir(tmp_path)  # no .env file
    settings = Settings()
    assert settings.aws_access_key_id is None
    storage = open_storage(f"s3://{s3_bucket}/p", s3=s3_options(settings))
    try:
        await storage.put(KEY, PNG, "image/png")
        served = await storage.serve(KEY)
        assert isinstance(served, Redirect)
        credential = parse_qs(urlsplit(served.url).query)["X-Amz-Credential"][0]
        assert credential.startswith("AKIAPROFILEKEY/")
        assert "profile-secret" not in served.url
        assert await storage.list("") == [KEY]
    finally:
        await storage.aclose()


async def test_a_missing_profile_is_a_storage_error(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage = open_storage(
        "s3://results/p", s3=S3Options(endpoint_url=s3.endpoint, profile="nobody")
    )
    try:
        with pytest.raises(StorageError, match=r"cannot reach s3://results/p/.*nobody"):
            await storage.check()
        with pytest.raises(StorageError, match="cannot reach"):
            await storage.put(KEY, PNG, "image/png")
    finally:
        await storage.aclose()


def test_the_aws_settings_come_from_the_env_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(
        "IMAGESTUDIO_STORAGE_URL=s3://results/x\nAWS_REGION=eu-north-1\n"
        "AWS_SECRET_ACCESS_KEY=from-dotenv\n"
    )
    monkeypatch.chdir(tmp_path)
    options = s3_options(Settings())
    assert (options.region, options.secret_access_key) == ("eu-north-1", "from-dotenv")
