"""The images and chat adapters through the real ``openai`` SDK against real loopback servers.

Each provider failure must come out as the right ``imagestudio.errors`` class, with the cause
kept and the API key nowhere in the message.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagestudio.cli.background_server import BackgroundServer, free_port
from imagestudio.domain import SourceFile
from imagestudio.errors import (
    AuthFailed,
    ConnectionDropped,
    ContentRejected,
    NoImageReturned,
    ProviderBadRequest,
    ProviderBusy,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    UnsafeURL,
)
from imagestudio.providers.base import ImageProvider, ImageRequest, ProviderConfig
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.providers.openai_images import OpenAIImagesProvider
from imagestudio.providers.registry import make_provider

KEY = "sk-test-adapter-SECRET-0123456789"
SOURCE = SourceFile(sample_product_photo(2, "SKU 2", (320, 320)), "sku-2.jpg", "image/jpeg")
MODELS = {"images": "gpt-image-1", "chat": "google/gemini-2.5-flash-image"}
LOOPBACK = ("127.0.0.1",)  # the fake's host: allow-listed for the adapters' guarded path


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with BackgroundServer(create_fake_provider_app(FakeProviderConfig(latency_ms=0))) as server:
        yield server.url


@pytest.fixture
def fake(fake_url: str) -> str:
    """The module's fake provider, reset to no limits and no latency; yields its base URL."""
    defaults = dataclasses.asdict(FakeProviderConfig(latency_ms=0))
    httpx.post(f"{fake_url}/_fake/config", json=defaults).raise_for_status()
    httpx.post(f"{fake_url}/_fake/reset").raise_for_status()
    return fake_url


async def fake_calls(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        calls: list[dict[str, Any]] = (await client.get(f"{url}/_fake/stats")).json()["calls"]
    return calls


async def configure(url: str, **changes: Any) -> None:
    async with httpx.AsyncClient() as client:
        (await client.post(f"{url}/_fake/config", json=changes)).raise_for_status()


@pytest.fixture
async def open_providers() -> AsyncIterator[list[ImageProvider]]:
    providers: list[ImageProvider] = []
    yield providers
    for provider in providers:
        await provider.aclose()


@pytest.fixture
def provider_for(open_providers: list[ImageProvider]) -> Any:
    """``provider_for(url, style, key=KEY, timeout=...)``; closed after the test."""

    def build(
        url: str, style: str = "images", key: str = KEY, timeout: float = 10.0
    ) -> ImageProvider:
        config = ProviderConfig(f"{url}/v1", key, MODELS[style], style, timeout, LOOPBACK)
        provider = make_provider(config)
        open_providers.append(provider)
        return provider

    return build


def request(
    style: str, prompt: str = "on white marble", source: SourceFile | None = SOURCE
) -> ImageRequest:
    return ImageRequest(prompt, MODELS[style], "256x256", source)


def assert_clean(error: ProviderError, key: str = KEY) -> None:
    assert error.__cause__ is not None
    for text in (str(error), repr(error), error.message):
        assert key not in text


# ---------------------------------------------------------------------------- success


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize("with_source", [True, False])
async def test_generates_an_image(
    fake: str, provider_for: Any, style: str, with_source: bool
) -> None:
    provider = provider_for(fake, style)
    data = (await provider.generate(request(style, source=SOURCE if with_source else None))).data
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    # chat models pick their own size (the fake keeps the source's aspect, 1024 long side)
    assert image.size == ((256, 256) if style == "images" else (1024, 1024))
    calls = await fake_calls(fake)
    endpoint = {
        "images": "images.edits" if with_source else "images.generations",
        "chat": "chat.completions",
    }
    assert [call["endpoint"] for call in calls] == [endpoint[style]]
    assert calls[0]["model"] == MODELS[style]


async def test_dall_e_asks_for_b64_json(fake: str, open_providers: list[ImageProvider]) -> None:
    provider = make_provider(
        ProviderConfig(f"{fake}/v1", KEY, "dall-e-2", "images", allow_list=LOOPBACK)
    )
    open_providers.append(provider)
    data = (await provider.generate(ImageRequest("a mug", "dall-e-2", "256x256"))).data
    assert data.startswith(b"\x89PNG")


async def test_url_answers_are_downloaded_through_the_guarded_path(fake: str) -> None:
    async with httpx.AsyncClient() as client:
        answer = client.post(
            f"{fake}/v1/images/generations",
            json={
                "prompt": "a mug",
                "model": "dall-e-2",
                "size": "256x256",
                "response_format": "url",
            },
            headers={"Authorization": f"Bearer {KEY}"},
        )
        url = (await answer).json()["data"][0]["url"]
    allowed = OpenAIImagesProvider(
        ProviderConfig(f"{fake}/v1", KEY, "dall-e-2", "images", allow_list=LOOPBACK)
    )
    refused = OpenAIImagesProvider(ProviderConfig(f"{fake}/v1", KEY, "dall-e-2", "images"))
    try:
        assert (await allowed.download(url)).startswith(b"\x89PNG")
        with pytest.raises(UnsafeURL, match="provider answered an image URL we refuse"):
            await refused.download(url)
    finally:
        await allowed.aclose()
        await refused.aclose()


@pytest.mark.parametrize("client_type", [httpx.AsyncClient, httpx2.AsyncClient])
async def test_works_with_an_injected_httpx_or_httpx2_client(fake: str, client_type: Any) -> None:
    async with client_type() as client:
        provider = make_provider(
            ProviderConfig(f"{fake}/v1", KEY, "gpt-image-1", "images"), http_client=client
        )
        data = (await provider.generate(request("images"))).data
        await provider.aclose()
        assert not client.is_closed
    assert data.startswith(b"\x89PNG")


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize(
    ("key", "prompt", "cls", "status"),
    [
        ("sk-bad-adapter-SECRET-0123456789", "p", AuthFailed, 401),
        ("sk-noquota-adapter-SECRET-0123456789", "p", QuotaExhausted, 429),
        (KEY, "a gun [[refuse]]", ContentRejected, 400),
    ],
)
async def test_provider_refusals_map_to_our_errors(
    fake: str,
    provider_for: Any,
    style: str,
    key: str,
    prompt: str,
    cls: type[ProviderError],
    status: int,
) -> None:
    provider = provider_for(fake, style, key=key)
    with pytest.raises(cls) as caught:
        await provider.generate(request(style, prompt))
    assert caught.value.status_code == status
    assert_clean(caught.value, key)


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_an_answer_without_image_is_no_image_returned(
    fake: str, provider_for: Any, style: str
) -> None:
    with pytest.raises(NoImageReturned):
        await provider_for(fake, style).generate(request(style, "[[noimage]]"))


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_concurrency_overflow_is_rate_limited_with_retry_after(
    fake: str, provider_for: Any, style: str
) -> None:
    await configure(fake, concurrency=1, latency_ms=300)
    provider = provider_for(fake, style)
    results = await asyncio.gather(
        provider.generate(request(style)), provider.generate(request(style)), return_exceptions=True
    )
    errors = [result for result in results if isinstance(result, BaseException)]
    assert len(errors) == 1
    [error] = errors
    assert isinstance(error, RateLimited)
    assert error.retry_after is not None
    assert 0 < error.retry_after <= 0.3
    assert error.status_code == 429
    assert_clean(error)


async def test_server_errors_are_provider_unavailable(fake: str, provider_for: Any) -> None:
    await configure(fake, error_rate=1.0)
    with pytest.raises(ProviderUnavailable) as caught:
        await provider_for(fake).generate(request("images"))
    assert caught.value.status_code == 500
    assert_clean(caught.value)


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_no_answer_in_time_is_provider_timeout(
    fake: str, provider_for: Any, style: str
) -> None:
    await configure(fake, latency_ms=40)
    provider = provider_for(fake, style, timeout=0.15)
    with pytest.raises(ProviderTimeout) as caught:
        await provider.generate(request(style, "[[slow]]"))  # 400 ms
    assert caught.value.sent is True
    assert "provider did not answer within 0.15 s" in caught.value.message
    assert_clean(caught.value)


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_connection_refused_is_provider_unavailable(provider_for: Any, style: str) -> None:
    provider = provider_for(f"http://127.0.0.1:{free_port()}", style)
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.generate(request(style))
    assert_clean(caught.value)


# ---------------------------------------------------------------------------- odd servers


async def odd_images(request: Request) -> Response:
    """An OpenAI-compatible server that misbehaves according to the prompt."""
    body = await request.form() if "multipart" in request.headers.get("content-type", "") else None
    prompt = str(body.get("prompt")) if body is not None else (await request.json())["prompt"]
    if body is not None:
        await body.close()
    secret = request.headers.get("authorization", "")
    answers: dict[str, Response] = {
        "garbage": JSONResponse({"created": 1, "data": [{"b64_json": "!!!not base64!!!"}]}),
        "not-an-image": JSONResponse({"created": 1, "data": [{"b64_json": "aGVsbG8="}]}),
        "html": Response("<html>oops</html>", media_type="text/html"),
        "404": JSONResponse(
            {"error": {"message": "The model does not exist", "code": "model_not_found"}}, 404
        ),
        "422": JSONResponse({"detail": "unprocessable"}, 422),
        "503": Response(f"upstream down, you sent {secret}", 503),
        "echo": JSONResponse(
            {"error": {"message": f"bad request from {secret}", "code": None}}, 400
        ),
        "retry": JSONResponse(
            {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
            429,
            # OpenAI's own shape: tokens to spare, so the 6-minute token reset is not the wait
            headers={
                "retry-after": "1",
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-limit-tokens": "150000",
                "x-ratelimit-remaining-tokens": "149000",
                "x-ratelimit-reset-tokens": "6m0s",
            },
        ),
    }
    return answers[prompt]


def completion(message: dict[str, Any], finish_reason: str = "stop") -> JSONResponse:
    choice = {
        "index": 0,
        "finish_reason": finish_reason,
        "message": {"role": "assistant", **message},
    }
    return JSONResponse(
        {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]}
    )


async def odd_chat(request: Request) -> Response:
    """A chat server answering images in the other known shapes, or misbehaving."""
    body = await request.json()
    prompt = body["messages"][0]["content"][0]["text"]
    png = (
        "data:image/png;base64," + base64.b64encode(sample_product_photo(5, "x", (32, 32))).decode()
    )
    answers: dict[str, Response] = {
        "markdown": completion({"content": f"Here you go:\n![edited]({png})"}),
        "parts": completion({"content": [{"type": "image_url", "image_url": {"url": png}}]}),
        "filtered": completion({"content": None}, finish_reason="content_filter"),
        "refusal": completion({"content": None, "refusal": "I cannot help with that."}),
        "no-choices": JSONResponse({"id": "c", "object": "chat.completion", "choices": []}),
        "html": Response("<html>oops</html>", media_type="text/html"),
    }
    return answers[prompt]


@pytest.fixture(scope="module")
def odd_url() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/v1/images/generations", odd_images, methods=["POST"]),
            Route("/v1/images/edits", odd_images, methods=["POST"]),
            Route("/v1/chat/completions", odd_chat, methods=["POST"]),
        ]
    )
    with BackgroundServer(app) as server:
        yield server.url


@pytest.mark.parametrize(
    ("prompt", "cls", "status"),
    [
        ("garbage", NoImageReturned, None),
        ("not-an-image", NoImageReturned, None),
        ("html", NoImageReturned, None),
        ("404", ProviderBadRequest, 404),
        ("422", ProviderBadRequest, 422),
        ("503", ProviderUnavailable, 503),
        ("echo", ProviderBadRequest, 400),
        ("retry", RateLimited, 429),
    ],
)
@pytest.mark.parametrize("with_source", [True, False])
async def test_odd_answers_map_to_our_errors(
    odd_url: str,
    provider_for: Any,
    prompt: str,
    cls: type[ProviderError],
    status: int | None,
    with_source: bool,
) -> None:
    provider = provider_for(odd_url)
    with pytest.raises(cls) as caught:
        await provider.generate(request("images", prompt, SOURCE if with_source else None))
    assert caught.value.status_code == status
    assert KEY not in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == pytest.approx(1.0)


@pytest.mark.parametrize("prompt", ["markdown", "parts"])
async def test_chat_images_in_content_are_found(
    odd_url: str, provider_for: Any, prompt: str
) -> None:
    data = (await provider_for(odd_url, "chat").generate(request("chat", prompt))).data
    assert Image.open(io.BytesIO(data)).size == (32, 32)


@pytest.mark.parametrize(
    ("prompt", "cls"),
    [
        ("filtered", ContentRejected),
        ("refusal", ContentRejected),
        ("no-choices", NoImageReturned),
        ("html", NoImageReturned),
    ],
)
async def test_odd_chat_answers_map_to_our_errors(
    odd_url: str, provider_for: Any, prompt: str, cls: type[ProviderError]
) -> None:
    with pytest.raises(cls):
        await provider_for(odd_url, "chat").generate(request("chat", prompt))


# ---------------------------------------------------------------------------- wire faults


def assert_no_secret(error: ProviderError, key: str = KEY) -> None:
    """For errors our adapters raise on their own (no foreign cause to keep)."""
    for text in (str(error), repr(error), error.message):
        assert key not in text


@pytest.mark.parametrize(
    ("style", "shape", "message"),
    [
        ("images", "truncated", "provider answered 200 with malformed JSON: Unterminated string"),
        ("chat", "truncated", "provider answered 200 with malformed JSON: Unterminated string"),
        ("images", "html", "provider answered 200 with text/html; charset=utf-8, not JSON"),
        ("chat", "html", "provider answered 200 with text/html; charset=utf-8, not JSON"),
        ("images", "b64-int", "provider answered 200 with b64_json as an int, not a string"),
        ("images", "b64-list", "provider answered 200 with b64_json as a list, not a string"),
        ("images", "b64-null", "provider answered 200 without an image (no b64_json or url)"),
        ("chat", "b64-int", "provider answered 200 with message.images but no image URL"),
        ("chat", "b64-null", "provider answered 200 with message.images but no image URL"),
        ("images", "no-data", "provider answered 200 without a data list"),
        ("chat", "no-data", "provider answered 200 without choices"),
        ("images", "empty-data", "provider answered 200 with an empty data list (no image)"),
        ("chat", "empty-data", "provider answered 200 with no choice in its choices"),
    ],
)
async def test_malformed_200s_say_what_was_wrong(
    fake: str, provider_for: Any, style: str, shape: str, message: str
) -> None:
    with pytest.raises(NoImageReturned) as caught:
        await provider_for(fake, style).generate(request(style, f"[[json:{shape}]] {KEY}"))
    assert caught.value.message.startswith(message), caught.value.message
    assert_no_secret(caught.value)
    if shape == "truncated":
        assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize("where", ["headers", "body"])
async def test_a_dropped_connection_may_be_billed(
    fake: str, provider_for: Any, style: str, where: str
) -> None:
    with pytest.raises(ConnectionDropped) as caught:
        await provider_for(fake, style).generate(request(style, f"[[drop:{where}]]"))
    error = caught.value
    assert isinstance(error, ProviderTimeout)
    assert error.sent is True
    assert error.message.startswith(
        "connection dropped after the request was sent (it may have been billed): "
        "peer closed connection without sending complete message body"
    )
    assert_clean(error)


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_a_drip_fed_answer_times_out_over_the_whole_call(
    fake: str, provider_for: Any, style: str
) -> None:
    provider = provider_for(fake, style, timeout=0.5)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderTimeout) as caught:
        await provider.generate(request(style, "[[drip:64:100]]"))  # each read well in time
    assert asyncio.get_running_loop().time() - started < 2.0
    assert caught.value.sent is True
    assert caught.value.message == "provider did not answer within 0.5 s"
    assert_clean(caught.value)


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_oversized_answers_are_capped(fake: str, provider_for: Any, style: str) -> None:
    provider = provider_for(fake, style)
    padded = (await provider.generate(request(style, "[[big:1.5]]"))).data
    assert padded.startswith(b"\x89PNG")
    assert len(padded) >= 1.5 * 1024 * 1024
    config = dataclasses.replace(provider.config, max_answer_bytes=1024 * 1024)
    capped = make_provider(config)
    try:
        with pytest.raises(NoImageReturned) as caught:
            await capped.generate(request(style, "[[big:1.5]]"))
    finally:
        await capped.aclose()
    assert re.fullmatch(  # 1.5 MB of image in base64, and the JSON around it
        r"provider's answer of 2\.\d MB declared, over the cap of 1\.0 MB", caught.value.message
    )


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_url_answers_are_fetched_and_their_errors_named(
    fake: str, provider_for: Any, style: str
) -> None:
    provider = provider_for(fake, style)
    data = (await provider.generate(request(style, "[[url:self]]"))).data
    assert data.startswith(b"\x89PNG")
    with pytest.raises(NoImageReturned) as caught:
        await provider.generate(request(style, "[[url:404]]"))
    assert caught.value.message == "provider image URL answered 404"
    assert caught.value.status_code == 404


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize(
    ("trigger", "cls", "message"),
    [
        (
            "[[http:502]]",
            ProviderUnavailable,
            "provider answered 502: an HTML page '502 Bad Gateway'",
        ),
        (
            "[[http:503:7]]",
            ProviderBusy,
            "provider answered 503: an HTML page '503 Service Unavailable' (retry after 7 s)",
        ),
        (
            "[[http:504]]",
            ProviderTimeout,
            "provider answered 504: an HTML page '504 Gateway Timeout' "
            "(a gateway gave up waiting: the request may have been billed)",
        ),
    ],
)
async def test_gateway_errors_map_by_status(
    fake: str, provider_for: Any, style: str, trigger: str, cls: type[ProviderError], message: str
) -> None:
    with pytest.raises(cls) as caught:
        await provider_for(fake, style).generate(request(style, trigger))
    error = caught.value
    assert error.message == message
    assert error.status_code == int(trigger[7:10])
    if isinstance(error, ProviderBusy):
        assert error.retry_after == 7.0
    if isinstance(error, ProviderTimeout):
        assert error.sent is True
    assert_clean(error)


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize(
    ("shape", "retry_after", "message"),
    [
        ("openai", 3.0, "provider answered 429 (rate_limit_exceeded): Rate limit reached"),
        ("ietf", 3.0, "provider answered 429 (rate_limit_exceeded): Rate limit reached"),
        ("epoch", 3.0, "provider answered 429 (rate_limit_exceeded): Rate limit reached"),
        ("bare", None, "provider answered 429: Too Many Requests"),
    ],
)
async def test_429s_of_every_shape_are_rate_limited(
    fake: str,
    provider_for: Any,
    style: str,
    shape: str,
    retry_after: float | None,
    message: str,
) -> None:
    with pytest.raises(RateLimited) as caught:
        await provider_for(fake, style).generate(request(style, f"[[429:{shape}:3]]"))
    error = caught.value
    assert error.message.startswith(message)
    if retry_after is None:
        assert error.retry_after is None
    else:
        assert error.retry_after == pytest.approx(retry_after, abs=1.5)  # epoch: whole seconds
    assert_clean(error)


@pytest.mark.parametrize("ratelimit_style", ["openai", "ietf", "epoch"])
async def test_rate_headers_of_other_shapes_are_read(
    fake: str, provider_for: Any, ratelimit_style: str
) -> None:
    await configure(fake, rpm=60, ratelimit_style=ratelimit_style)
    provider = provider_for(fake)
    rate = (await provider.generate(request("images"))).rate
    assert rate is not None
    assert (rate.limit_requests, rate.remaining_requests) == (60, 0)
    with pytest.raises(RateLimited) as caught:
        await provider.generate(request("images"))
    assert caught.value.retry_after == pytest.approx(1.0, abs=1.0)


@pytest.fixture(scope="module")
def other_host_url() -> Iterator[str]:
    """A second fake on 127.0.0.2: "another host" for redirects."""
    app = create_fake_provider_app(FakeProviderConfig(latency_ms=0))
    with BackgroundServer(app, host="127.0.0.2") as server:
        yield server.url


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_provider_redirect_is_never_followed(
    fake: str, provider_for: Any, style: str, code: int
) -> None:
    """The SDK would follow a 307 and re-POST the form (source image, prompt, key): the
    guarded client follows no redirect of a provider call, to the same host or another."""
    with pytest.raises(ProviderBadRequest) as caught:
        await provider_for(fake, style).generate(request(style, f"[[redirect:{code}]]"))
    assert caught.value.status_code == code
    assert caught.value.message.startswith(f"provider redirected ({code}) to {fake}/redirected/")
    assert caught.value.message.endswith(", not followed")
    assert_clean(caught.value)
    assert [call["status"] for call in await fake_calls(fake)] == [code]


@pytest.mark.parametrize("style", ["images", "chat"])
async def test_a_redirect_to_another_host_sends_nothing_there(
    fake: str, other_host_url: str, provider_for: Any, style: str
) -> None:
    host = other_host_url.removeprefix("http://")
    with pytest.raises(ProviderBadRequest) as caught:
        await provider_for(fake, style).generate(request(style, f"[[redirect:307:{host}]]"))
    assert caught.value.status_code == 307
    assert f"to {other_host_url}/redirected/v1/" in caught.value.message
    assert_clean(caught.value)
    assert await fake_calls(other_host_url) == []


async def test_a_redirect_not_followed_is_named(fake: str) -> None:
    async with httpx.AsyncClient() as client:  # legacy httpx: no redirects by default
        provider = make_provider(
            ProviderConfig(f"{fake}/v1", KEY, "gpt-image-1", "images"), http_client=client
        )
        with pytest.raises(ProviderBadRequest) as caught:
            await provider.generate(request("images", "[[redirect:307]]"))
    assert caught.value.status_code == 307
    assert caught.value.message == (
        f"provider redirected (307) to {fake}/redirected/v1/images/edits, not followed"
    )
    assert_clean(caught.value)
