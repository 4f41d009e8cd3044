"""The files route and result URLs, for the local folder and for a bucket that serves by
redirect: the route asks the storage how a key is served and never looks at its type.

``Bucket`` is a small S3-like storage written for these tests: objects in memory, read back
over HTTP from a real loopback server, either with a signature (presigned URLs: the result
URL is the API's files route, which redirects) or without (a public bucket: the result URL
is the bucket's own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagestudio.api.app import create_app
from imagestudio.api.routes import files
from imagestudio.cli.background_server import BackgroundServer, free_port
from imagestudio.domain import API_PREFIX, FILES_PATH
from imagestudio.errors import StorageError
from imagestudio.runtime.services import Services
from imagestudio.scheduler.runner import TaskRunner
from imagestudio.scheduler.worker import Worker, WorkerConfig
from imagestudio.storage import LocalStorage, Redirect, Served
from imagestudio.storage.local import validate_key
from testkit.payloads import batch_payload

KEY = "job-7/0000-SKU1-stem1-a1.png"


class Bucket:
    """``ResultStorage`` in an S3-like bucket at ``base_url`` (see the module docstring)."""

    def __init__(self, base_url: str, *, public: bool) -> None:
        self.base_url, self.public = base_url, public
        self.objects: dict[str, tuple[bytes, str]] = {}

    def signature(self, key: str) -> str:
        return hashlib.sha256(f"bucket-secret:{key}".encode()).hexdigest()[:16]

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[validate_key(key)] = (data, content_type)

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key][0]
        except KeyError as exc:
            raise StorageError(f"no stored result under {key!r}") from exc

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def list(self, prefix: str) -> list[str]:
        return sorted(key for key in self.objects if key.startswith(prefix))

    async def discard_partials(self, prefix: str) -> int:
        return 0  # a bucket's puts are atomic: there is nothing half-written

    def public_url(self, key: str) -> str | None:
        return f"{self.base_url}/{validate_key(key)}" if self.public else None

    async def serve(self, key: str) -> Served:
        if validate_key(key) not in self.objects:
            raise StorageError(f"no stored result under {key!r}")
        if self.public:
            return Redirect(f"{self.base_url}/{key}", max_age=3600)
        return Redirect(f"{self.base_url}/{key}?signature={self.signature(key)}")


def bucket_server(bucket: Bucket) -> Starlette:
    """The bucket's HTTP side: objects by key, a valid signature required unless public."""

    async def read(request: Request) -> Response:
        key = request.path_params["key"]
        if key not in bucket.objects:
            return Response(status_code=404)
        if not bucket.public and request.query_params.get("signature") != bucket.signature(key):
            return Response(status_code=403)
        data, content_type = bucket.objects[key]
        return Response(data, media_type=content_type)

    return Starlette(routes=[Route("/{key:path}", read)])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    """The real app on SQLite with its own local storage: a client and the storage root."""
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'api.db'}")
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=f"{server.url}{API_PREFIX}", timeout=15) as client,
    ):
        yield client, Path(settings.effective_storage_url)


@pytest.fixture(params=[False, True], ids=["presigned", "public"])
def bucket_api(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[httpx.Client, Bucket]]:
    """The real app whose storage is a ``Bucket`` (the one dependency the route has)."""
    port = free_port()
    bucket = Bucket(f"http://127.0.0.1:{port}/results", public=request.param)
    app = create_app(make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"))
    app.dependency_overrides[files.get_storage] = lambda: bucket
    store_app = Starlette()
    store_app.mount("/results", bucket_server(bucket))
    with (
        BackgroundServer(store_app, port=port),
        BackgroundServer(app) as server,
        httpx.Client(base_url=f"{server.url}{API_PREFIX}", timeout=15) as client,
    ):
        yield client, bucket


# -- local storage: the route sends the file ------------------------------------------------


def test_a_local_result_is_sent_with_its_type_and_cached_for_good(
    api: tuple[httpx.Client, Path],
) -> None:
    client, root = api
    path = LocalStorage(root).path_for(KEY)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\nresult")
    answer = client.get(f"/files/{KEY}")
    assert answer.status_code == 200
    assert answer.content == b"\x89PNG\r\n\x1a\nresult"
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["cache-control"] == files.IMMUTABLE
    assert answer.headers["content-length"] == str(len(b"\x89PNG\r\n\x1a\nresult"))


@pytest.mark.parametrize(
    "path",
    [
        "/files/job-7/missing.png",
        "/files/job-7",  # a folder, not a result
        "/files/job-7/.tmp-x.part",  # a half-written file
        "/files/job-7/%2e%2e/%2e%2e/etc/passwd",
        "/files/job-7//0000.png",
        "/files/a%20b.png",
    ],
)
def test_missing_and_invalid_local_keys_are_404(api: tuple[httpx.Client, Path], path: str) -> None:
    client, root = api
    (root / "job-7").mkdir(parents=True)
    (root / "job-7" / ".tmp-x.part").write_bytes(b"half")
    answer = client.get(path)
    assert answer.status_code == 404
    assert answer.json() == {"detail": "no such file"}


# -- a bucket: the same route redirects -----------------------------------------------------


def test_a_bucket_result_is_a_redirect_the_client_can_follow(
    bucket_api: tuple[httpx.Client, Bucket],
) -> None:
    client, bucket = bucket_api
    bucket.objects[KEY] = (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp")
    answer = client.get(f"/files/{KEY}", follow_redirects=False)
    assert answer.status_code == 307
    location = answer.headers["location"]
    if bucket.public:
        assert location == bucket.public_url(KEY)
        assert answer.headers["cache-control"] == "private, max-age=3600"
    else:
        assert location == f"{bucket.base_url}/{KEY}?signature={bucket.signature(KEY)}"
        assert answer.headers["cache-control"] == "no-store"  # a presigned URL expires
    followed = client.get(f"/files/{KEY}", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.content == b"RIFF\0\0\0\0WEBPVP8 "
    assert followed.headers["content-type"] == "image/webp"


@pytest.mark.parametrize("path", ["/files/job-7/missing.png", "/files/.hidden", "/files/a%20b"])
def test_missing_and_invalid_bucket_keys_are_404(
    bucket_api: tuple[httpx.Client, Bucket], path: str
) -> None:
    client, _ = bucket_api
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 404
    assert answer.json() == {"detail": "no such file"}


# -- the result URL recorded per image ------------------------------------------------------


async def test_local_result_urls_are_the_api_files_route(
    services: Services, fake_provider: BackgroundServer
) -> None:
    assert isinstance(services.storage, LocalStorage)
    job = (await services.jobs.submit(batch_payload(fake_provider.url, "j", size=256), None)).job
    await services.worker(3).run_until_idle()
    images = await services.store.images(job.id)
    assert [i.result_url for i in images] == [f"{FILES_PATH}/{i.result_key}" for i in images]


@pytest.mark.parametrize("public", [False, True], ids=["presigned", "public"])
async def test_a_bucket_with_an_address_of_its_own_is_recorded_as_the_result_url(
    services: Services, fake_provider: BackgroundServer, public: bool
) -> None:
    bucket = Bucket("https://cdn.example/results", public=public)
    runner = TaskRunner(
        store=services.store,
        storage=bucket,
        fetcher=services.runner.fetcher,
        providers=services.providers,
        config=services.runner.config,
        metrics=services.metrics,
    )
    worker = Worker(services.store, runner, WorkerConfig(concurrency=3, poll_interval=0.05))
    job = (await services.jobs.submit(batch_payload(fake_provider.url, "j", size=256), None)).job
    await worker.run_until_idle()
    images = await services.store.images(job.id)
    keys = [i.result_key for i in images]
    assert sorted(bucket.objects) == keys  # every result is in the bucket, nothing else
    expected = [
        f"https://cdn.example/results/{key}" if public else f"{FILES_PATH}/{key}" for key in keys
    ]
    assert [i.result_url for i in images] == expected
    progress = await services.store.progress(None, "j")
    assert progress.job.result_image_urls == expected
