"""SourceFetcher against a real HTTP server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from imagestudio.cli.background_server import BackgroundServer, free_port
from imagestudio.errors import (
    BadImage,
    SourceNotFound,
    SourceTooLarge,
    SourceUnavailable,
    UnsafeURL,
)
from imagestudio.imaging.fetch import SourceFetcher, filename_from_url
from imagestudio.security.http import Outbound, OutboundPolicy

MAX_BYTES = 50_000
LOOPBACK = ("127.0.0.1",)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()


async def image(request: Request) -> Response:
    # The header lies on purpose: the MIME type is sniffed from the bytes.
    return Response(PNG, media_type="application/octet-stream")


async def status(request: Request) -> Response:
    return Response(b"nope", status_code=int(request.path_params["code"]))


async def hop(request: Request) -> Response:
    left = int(request.path_params["left"])
    target = "/images/Product%20Shot.jpg" if left == 0 else f"/hop/{left - 1}"
    return RedirectResponse(target, status_code=302)


async def redirect_to(request: Request) -> Response:
    return RedirectResponse(request.query_params["url"], status_code=301)


async def declared_big(request: Request) -> Response:
    return Response(b"\0" * (MAX_BYTES + 1), media_type="image/png")


async def streamed_big(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\0" * 10_000

    return StreamingResponse(chunks(), media_type="image/png")  # chunked: no Content-Length


async def slow(request: Request) -> Response:
    await asyncio.sleep(1.0)
    return Response(PNG, media_type="image/png")


async def stalls_mid_body(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield PNG[:100]
        await asyncio.sleep(1.0)
        yield PNG[100:]

    return StreamingResponse(chunks(), media_type="image/png")


async def html(request: Request) -> Response:
    return Response(b"<html>not an image</html>", media_type="image/png")


APP = Starlette(
    routes=[
        Route("/images/{name:path}", image),
        Route("/status/{code:int}", status),
        Route("/hop/{left:int}", hop),
        Route("/redirect", redirect_to),
        Route("/big-declared", declared_big),
        Route("/big-streamed", streamed_big),
        Route("/slow", slow),
        Route("/stalls", stalls_mid_body),
        Route("/html", html),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(APP) as running:
        yield running


class Outbounds:
    """The guarded paths a test built (one per allow-list), closed after it."""

    def __init__(self) -> None:
        self.opened: list[Outbound] = []

    def __call__(self, allow_list: Sequence[str]) -> Outbound:
        self.opened.append(Outbound(OutboundPolicy.of(allow_list)))
        return self.opened[-1]


@pytest.fixture
async def client() -> AsyncIterator[Outbounds]:
    outbounds = Outbounds()
    yield outbounds
    for outbound in outbounds.opened:
        await outbound.aclose()


def fetcher(
    client: Outbounds,
    *,
    allow_list: Sequence[str] = LOOPBACK,
    timeout: float = 5.0,
    max_redirects: int = 5,
) -> SourceFetcher:
    return SourceFetcher(
        client(allow_list),
        max_bytes=MAX_BYTES,
        timeout=timeout,
        max_redirects=max_redirects,
    )


async def test_fetches_an_image_and_sniffs_its_type(
    server: BackgroundServer, client: Outbounds
) -> None:
    source = await fetcher(client).fetch(f"{server.url}/images/front.png?v=2")
    assert (source.data, source.mime, source.filename) == (PNG, "image/png", "front.png")


@pytest.mark.parametrize("code", [400, 403, 404, 410])
async def test_client_errors_are_not_found(
    server: BackgroundServer, client: Outbounds, code: int
) -> None:
    with pytest.raises(SourceNotFound, match=f"HTTP {code}"):
        await fetcher(client).fetch(f"{server.url}/status/{code}")


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_server_errors_are_unavailable(
    server: BackgroundServer, client: Outbounds, code: int
) -> None:
    with pytest.raises(SourceUnavailable, match=f"HTTP {code}"):
        await fetcher(client).fetch(f"{server.url}/status/{code}")


async def test_follows_a_redirect_chain(server: BackgroundServer, client: Outbounds) -> None:
    source = await fetcher(client).fetch(f"{server.url}/hop/3")
    assert source.data == PNG
    # The name comes from the URL asked for, with the sniffed extension.
    assert source.filename == "3.png"


async def test_too_many_redirects(server: BackgroundServer, client: Outbounds) -> None:
    with pytest.raises(SourceNotFound, match="redirected more than 2 times"):
        await fetcher(client, max_redirects=2).fetch(f"{server.url}/hop/3")


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.png",
        "http://[::1]/a.png",
        "file:///etc/passwd",
    ],
)
async def test_each_redirect_hop_is_rechecked(
    server: BackgroundServer, client: Outbounds, target: str
) -> None:
    url = str(httpx.URL(f"{server.url}/redirect", params={"url": target}))
    with pytest.raises(UnsafeURL):
        await fetcher(client).fetch(url)


async def test_oversize_by_content_length(server: BackgroundServer, client: Outbounds) -> None:
    with pytest.raises(SourceTooLarge, match=f"{MAX_BYTES + 1} bytes"):
        await fetcher(client).fetch(f"{server.url}/big-declared")


async def test_oversize_by_counting_the_stream(server: BackgroundServer, client: Outbounds) -> None:
    with pytest.raises(SourceTooLarge, match="over the cap"):
        await fetcher(client).fetch(f"{server.url}/big-streamed")


@pytest.mark.parametrize("path", ["/slow", "/stalls"])
async def test_slow_server_times_out_as_unavailable(
    server: BackgroundServer, client: Outbounds, path: str
) -> None:
    with pytest.raises(SourceUnavailable, match="timed out"):
        await fetcher(client, timeout=0.2).fetch(f"{server.url}{path}")


async def test_loopback_is_refused_unless_allow_listed(
    server: BackgroundServer, client: Outbounds
) -> None:
    with pytest.raises(UnsafeURL, match=r"127\.0\.0\.1"):
        await fetcher(client, allow_list=[]).fetch(f"{server.url}/images/a.png")


async def test_connection_refused_is_unavailable(client: Outbounds) -> None:
    with pytest.raises(SourceUnavailable):
        await fetcher(client).fetch(f"http://127.0.0.1:{free_port()}/a.png")


async def test_not_an_image_is_bad_image(server: BackgroundServer, client: Outbounds) -> None:
    with pytest.raises(BadImage):
        await fetcher(client).fetch(f"{server.url}/html")


async def test_the_guarded_client_never_follows_a_redirect_by_itself(
    server: BackgroundServer, client: Outbounds
) -> None:
    url = str(httpx.URL(f"{server.url}/redirect", params={"url": "http://10.0.0.1/"}))
    async with client(LOOPBACK).client() as careless:
        answer = await careless.get(url, follow_redirects=True)
    assert answer.status_code == 301


@pytest.mark.parametrize(
    ("url", "ext", "expected"),
    [
        ("http://h/a/b/Photo%201.JPG", "jpg", "Photo_1.JPG"),
        ("http://h/", "png", "source.png"),
        ("http://h/..%2F..%2Fetc%2Fpasswd", None, "etc_passwd"),
        ("http://h/x.php?img=1", "webp", "x.webp"),
    ],
)
def test_filename_from_url(url: str, ext: str | None, expected: str) -> None:
    assert filename_from_url(url, ext) == expected
