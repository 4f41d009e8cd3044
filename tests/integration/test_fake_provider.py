"""The fake OpenAI-compatible provider over real HTTP on 127.0.0.1: limits, triggers, stats."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.providers.fake.faults import sample_latency
from imagestudio.providers.fake.images import fit_long_side
from imagestudio.providers.fake.limits import Gcra, format_duration
from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.providers.retry_after import parse_duration

KEY = "sk-test-fake-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SOURCE = sample_product_photo(1, "SKU 1", (320, 240))

StartFake = Callable[..., str]


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with BackgroundServer(create_fake_provider_app(FakeProviderConfig(latency_ms=0))) as server:
        yield server.url


@pytest.fixture
def start_fake(fake_url: str) -> StartFake:
    """``start_fake(**config) -> base URL``: the module's fake, reconfigured and reset."""

    def start(**config: Any) -> str:
        settings = dataclasses.asdict(FakeProviderConfig(latency_ms=0)) | config
        httpx.post(f"{fake_url}/_fake/config", json=settings).raise_for_status()
        httpx.post(f"{fake_url}/_fake/reset").raise_for_status()
        return fake_url

    return start


def edit(client: httpx.AsyncClient, prompt: str = "studio shot", **fields: str) -> Any:
    data = {"prompt": prompt, "model": "gpt-image-1", "size": "256x256", **fields}
    files = {"image": ("sku.jpg", SOURCE, "image/jpeg")}
    return client.post("/v1/images/edits", data=data, files=files)


def decode(body: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_edit_returns_an_image_derived_from_the_source(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await edit(client, size="320x200")
    assert response.status_code == 200
    body = response.json()
    assert {"created", "data", "usage"} <= set(body)
    image = decode(body)
    assert image.format == "PNG"
    assert image.size == (320, 200)
    for name in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{name}-requests" in response.headers


async def test_edit_defaults_to_1024_and_honours_output_format(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        default = await client.post(
            "/v1/images/edits",
            data={"prompt": "p", "model": "gpt-image-1"},
            files={"image": ("a.jpg", SOURCE, "image/jpeg")},
        )
        jpeg = await edit(client, output_format="jpeg")
    assert decode(default.json()).size == (1024, 1024)
    assert decode(jpeg.json()).format == "JPEG"


async def test_generation_and_chat(start_fake: StartFake) -> None:
    source_url = "data:image/jpeg;base64," + base64.b64encode(SOURCE).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "put it on marble"},
                {"type": "image_url", "image_url": {"url": source_url}},
            ],
        }
    ]
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        generated = await client.post(
            "/v1/images/generations",
            json={"prompt": "a mug", "model": "gpt-image-1", "size": "256x256"},
        )
        chat = await client.post(
            "/v1/chat/completions", json={"model": "gemini", "messages": messages}
        )
    assert decode(generated.json()).size == (256, 256)
    message = chat.json()["choices"][0]["message"]
    assert message["content"]
    [image] = message["images"]
    assert image["type"] == "image_url"
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


async def test_response_format_is_refused_for_gpt_image_and_served_for_dall_e(
    start_fake: StartFake,
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        refused = await edit(client, response_format="url")
        served = await client.post(
            "/v1/images/generations",
            json={
                "prompt": "a mug",
                "model": "dall-e-2",
                "size": "256x256",
                "response_format": "url",
            },
        )
        url = served.json()["data"][0]["url"]
        image = await client.get(url)
    assert refused.status_code == 400
    assert error_of(refused)["message"] == "Unknown parameter: 'response_format'."
    assert error_of(refused)["param"] == "response_format"
    assert image.status_code == 200
    assert image.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer sk-bad-key-123456"}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer sk-noquota-123456"}, 429, "insufficient_quota"),
    ],
)
async def test_key_triggers(
    start_fake: StartFake, headers: dict[str, str], status: int, code: str
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=headers) as client:
        response = await edit(client)
    assert response.status_code == status
    assert error_of(response)["code"] == code


async def test_prompt_triggers(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(latency_ms=20), headers=AUTH) as client:
        refused = await edit(client, "a gun [[refuse]]")
        empty = await edit(client, "[[noimage]] nothing")
        started = time.monotonic()
        slow = await edit(client, "take your time [[slow]]")
        slow_seconds = time.monotonic() - started
    assert refused.status_code == 400
    assert error_of(refused)["code"] == "moderation_blocked"
    assert "safety system" in error_of(refused)["message"]
    assert empty.status_code == 200
    assert empty.json()["data"] == []
    assert slow.status_code == 200
    assert slow_seconds >= 0.2


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "huge"}, "size"),
        ({"prompt": ""}, "prompt"),
        ({"output_format": "bmp"}, "output_format"),
    ],
)
async def test_invalid_requests_name_the_parameter(
    start_fake: StartFake, fields: dict[str, str], param: str
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await edit(client, **fields)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


async def test_a_bad_source_image_is_a_400(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await client.post(
            "/v1/images/edits",
            data={"prompt": "p"},
            files={"image": ("a.png", b"not an image", "image/png")},
        )
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_image"


async def test_concurrency_limit_answers_429_with_headers(start_fake: StartFake) -> None:
    url = start_fake(concurrency=2, latency_ms=300)
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        responses = await asyncio.gather(*(edit(client) for _ in range(4)))
        stats = (await client.get("/_fake/stats")).json()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429]
    limited = next(r for r in responses if r.status_code == 429)
    assert error_of(limited)["code"] == "rate_limit_exceeded"
    assert error_of(limited)["message"].startswith("Rate limit reached for")
    assert int(limited.headers["retry-after"]) >= 1
    assert 0 < int(limited.headers["retry-after-ms"]) <= 300
    # A concurrency limit is not a per-minute request limit: the headers don't claim one.
    assert limited.headers["x-ratelimit-limit-requests"] == "10000"
    assert stats["totals"]["peak_in_flight"] == 2
    assert stats["totals"]["429"] == 2
    assert stats["totals"]["ok"] == 2


async def test_rpm_limit_answers_429_with_the_wait(start_fake: StartFake) -> None:
    url = start_fake(rpm=60)  # one request per second, bursts of one
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        first = await edit(client)
        second = await edit(client)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.status_code == 429
    assert 800 <= int(second.headers["retry-after-ms"]) <= 1000
    assert second.headers["retry-after"] == "1"
    assert "requests per min (RPM): Limit 60" in error_of(second)["message"]


async def test_error_rate_answers_500(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(
        base_url=start_fake(error_rate=1.0, seed=1), headers=AUTH
    ) as client:
        response = await edit(client)
    assert response.status_code == 500
    assert error_of(response)["code"] == "server_error"
    assert "x-ratelimit-limit-requests" in response.headers


async def test_ratelimit_headers_can_be_switched_off(start_fake: StartFake) -> None:
    url = start_fake(rpm=60, ratelimit_headers=False)
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        first = await edit(client)
        second = await edit(client)
    assert first.status_code == 200
    assert not [h for h in first.headers if h.startswith("x-ratelimit")]
    assert second.status_code == 429
    assert "retry-after" in second.headers


async def test_config_changes_at_runtime_and_reset_clears_stats(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(latency_ms=200), headers=AUTH) as client:
        assert [r.status_code for r in await asyncio.gather(edit(client), edit(client))] == [
            200,
            200,
        ]
        changed = await client.post("/_fake/config", json={"concurrency": 1, "latency_ms": 200})
        assert changed.json()["concurrency"] == 1
        statuses = sorted(r.status_code for r in await asyncio.gather(edit(client), edit(client)))
        assert statuses == [200, 429]
        refused = await client.post("/_fake/config", json={"error_rate": 2})
        assert refused.status_code == 400
        unknown = await client.post("/_fake/config", json={"colour": "red"})
        assert unknown.status_code == 400
        assert (await client.post("/_fake/reset")).status_code == 200
        stats = (await client.get("/_fake/stats")).json()
    assert stats["totals"]["requests"] == 0
    assert stats["calls"] == []
    assert stats["config"]["concurrency"] == 1


async def test_stats_log_every_call_without_the_key(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        await edit(client, "first")
        await edit(client, "[[refuse]]")
        stats = (await client.get("/_fake/stats")).json()
        brief = (await client.get("/_fake/stats", params={"calls": "0"})).json()
    assert stats["totals"] == {
        "requests": 2,
        "ok": 1,
        "429": 0,
        "500": 0,
        "401": 0,
        "400": 1,
        "peak_in_flight": 1,
        "in_flight": 0,
    }
    first, second = stats["calls"]
    assert first["endpoint"] == "images.edits"
    assert first["status"] == 200
    assert first["model"] == "gpt-image-1"
    assert first["prompt"] == "first"
    assert first["key"] == hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert first["start"] <= first["end"] <= second["start"]
    assert second["code"] == "moderation_blocked"
    assert KEY not in str(stats)
    assert "calls" not in brief


async def test_samples_are_served(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake()) as client:
        response = await client.get("/samples/7.jpg")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (800, 800)


def test_sample_photos_differ_per_index() -> None:
    first, second = sample_product_photo(0, "A", (64, 64)), sample_product_photo(1, "A", (64, 64))
    assert first != second
    assert Image.open(io.BytesIO(first)).format == "JPEG"


@pytest.mark.parametrize("dist", ["fixed", "uniform", "lognormal", "exponential"])
def test_latency_distributions_have_the_configured_mean(dist: str) -> None:
    import random

    rng = random.Random(7)
    samples = [sample_latency(rng, 100.0, dist) for _ in range(4000)]
    assert sum(samples) / len(samples) == pytest.approx(0.1, rel=0.1)
    assert min(samples) >= 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (0.0, "0ms"), (1.0, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_gcra_allows_bursts_then_paces() -> None:
    limiter = Gcra(rpm=600, burst=3)  # one every 0.1 s
    assert [limiter.acquire(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire(10.0) == pytest.approx(0.1)
    assert limiter.remaining(10.0) == 0
    assert limiter.acquire(10.1) == 0.0
    assert limiter.remaining(10.5) == 3
    assert limiter.reset_after(10.5) == 0.0


# ---------------------------------------------------------------------------- render size


def chat_messages(source: bytes) -> list[dict[str, Any]]:
    url = "data:image/jpeg;base64," + base64.b64encode(source).decode()
    content = [
        {"type": "text", "text": "on marble"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return [{"role": "user", "content": content}]


async def test_render_size_draws_every_answer_small_in_the_asked_aspect(
    start_fake: StartFake,
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(render_size=128), headers=AUTH) as client:
        edited = await edit(client, size="1536x1024")
        square = await edit(client, size="1024x1024")
        generated = await client.post(
            "/v1/images/generations",
            json={"prompt": "a mug", "model": "gpt-image-1", "size": "1024x1536"},
        )
        chat = await client.post(
            "/v1/chat/completions", json={"model": "gemini", "messages": chat_messages(SOURCE)}
        )
    assert decode(edited.json()).size == (128, 85)
    assert decode(square.json()).size == (128, 128)
    assert decode(generated.json()).size == (85, 128)
    chat_url = chat.json()["choices"][0]["message"]["images"][0]["image_url"]["url"]
    chat_image = Image.open(io.BytesIO(base64.b64decode(chat_url.partition(",")[2])))
    assert chat_image.size == (128, 96)  # the 320x240 source's aspect


async def test_render_size_draws_samples_small_and_each_once(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(render_size=64)) as client:
        first = await client.get("/samples/3.jpg")
        again = await client.get("/samples/3.jpg")
        other = await client.get("/samples/4.jpg")
        await client.post("/_fake/config", json={"render_size": None})
        full = await client.get("/samples/3.jpg")
    assert Image.open(io.BytesIO(first.content)).size == (64, 64)
    assert again.content == first.content
    assert other.content != first.content
    assert Image.open(io.BytesIO(full.content)).size == (800, 800)


async def test_render_size_is_validated_at_run_time(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake()) as client:
        refused = [
            await client.post("/_fake/config", json={"render_size": value})
            for value in (0, 8, 5000, "big")
        ]
        stats = (await client.get("/_fake/stats", params={"calls": "0"})).json()
    assert [r.status_code for r in refused] == [400, 400, 400, 400]
    assert "render_size" in error_of(refused[0])["message"]
    assert stats["config"]["render_size"] is None


@pytest.mark.parametrize("render_size", [0, 15, 4097])
def test_render_size_out_of_range_is_refused(render_size: int) -> None:
    with pytest.raises(ValueError, match="render_size"):
        FakeProviderConfig(render_size=render_size).validate()


@pytest.mark.parametrize(
    ("size", "long_side", "fitted"),
    [
        ((1024, 1024), None, (1024, 1024)),
        ((1024, 1024), 256, (256, 256)),
        ((1536, 1024), 256, (256, 171)),
        ((1024, 1792), 256, (146, 256)),
        ((320, 240), 1024, (1024, 768)),
        ((4096, 16), 256, (256, 16)),
    ],
)
def test_fit_long_side(
    size: tuple[int, int], long_side: int | None, fitted: tuple[int, int]
) -> None:
    assert fit_long_side(size, long_side) == fitted


# ---------------------------------------------------------------------------- wire faults


def generate(client: httpx.AsyncClient, prompt: str) -> Any:
    body = {"prompt": prompt, "model": "gpt-image-1", "size": "64x64"}
    return client.post("/v1/images/generations", json=body)


@pytest.mark.parametrize(
    ("shape", "check"),
    [
        ("truncated", lambda text: text.startswith('{"created"') and not text.endswith("}")),
        ("html", lambda text: text.startswith("<html>")),
        ("b64-int", lambda text: '"b64_json": 12345' in text),
        ("b64-list", lambda text: '"b64_json": ["' in text),
        ("b64-null", lambda text: '"b64_json": null' in text),
        ("no-data", lambda text: '"data"' not in text and '"created"' in text),
        ("empty-data", lambda text: '"data": []' in text),
    ],
)
async def test_malformed_answers_come_with_200(
    start_fake: StartFake, shape: str, check: Callable[[str], bool]
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await edit(client, f"studio [[json:{shape}]]")
    assert response.status_code == 200
    assert check(response.text), response.text[:200]


@pytest.mark.parametrize("where", ["headers", "body"])
async def test_a_dropped_connection_breaks_the_answer(start_fake: StartFake, where: str) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="received"):
            await edit(client, f"[[drop:{where}]]")
        again = await edit(client)  # the fake itself is fine
    assert again.status_code == 200


async def test_redirects_point_at_the_redirected_routes(start_fake: StartFake) -> None:
    url = start_fake()
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        same = await edit(client, "[[redirect:307]]")
        other = await edit(client, "[[redirect:302:127.0.0.2:9]]")
    assert same.status_code == 307
    assert same.headers["location"] == f"{url}/redirected/v1/images/edits"
    assert other.status_code == 302
    assert other.headers["location"] == "http://127.0.0.2:9/redirected/v1/images/edits"
    async with httpx.AsyncClient(base_url=url, headers=AUTH, follow_redirects=True) as client:
        followed = await edit(client, "[[redirect:307]]")  # the body is sent again
    assert followed.status_code == 200
    assert [r.status_code for r in followed.history] == [307]
    assert decode(followed.json()).size == (256, 256)


async def test_url_answers_point_at_the_fake_or_at_a_404(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        served = (await generate(client, "[[url:self]]")).json()["data"][0]["url"]
        missing = (await generate(client, "[[url:404]]")).json()["data"][0]["url"]
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "[[url:self]]"}]},
        )
        image = await client.get(served)
        gone = await client.get(missing)
    assert image.status_code == 200
    assert image.content.startswith(b"\x89PNG")
    assert gone.status_code == 404
    chat_url = chat.json()["choices"][0]["message"]["images"][0]["image_url"]["url"]
    assert chat_url.startswith("http://127.0.0.1:")


async def test_a_drip_fed_body_arrives_slowly_but_whole(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        fast = await generate(client, "same prompt")
        started = time.monotonic()
        slow = await generate(client, "same prompt [[drip:1000:20]]")
        seconds = time.monotonic() - started
    chunks = -(-len(slow.content) // 1000)
    assert chunks >= 3
    assert seconds >= chunks * 0.02
    assert slow.headers["content-length"] == str(len(slow.content))
    assert len(slow.content) > len(fast.content)  # the prompt with the trigger is longer


async def test_an_oversized_answer_pads_the_image(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await generate(client, "[[big:1.5]]")
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    assert data.startswith(b"\x89PNG")
    assert len(data) >= 1.5 * 1024 * 1024
    assert response.headers["content-length"] == str(len(response.content))


async def test_an_oversized_answer_may_come_chunked(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        chunked = await generate(client, "[[big:1:chunked]]")
    assert "content-length" not in chunked.headers
    assert chunked.headers["transfer-encoding"] == "chunked"
    padded = base64.b64decode(chunked.json()["data"][0]["b64_json"])
    assert padded.startswith(b"\x89PNG")
    assert len(padded) >= 1024 * 1024


@pytest.mark.parametrize(
    ("trigger", "url"),
    [
        ("[[url:at:127.0.0.9:19100]]", "http://127.0.0.9:19100/image.png"),
        ("[[url:at:localhost:8080:x/y.png]]", "http://localhost:8080/x/y.png"),
    ],
)
async def test_a_url_answer_may_point_anywhere(
    start_fake: StartFake, trigger: str, url: str
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await generate(client, trigger)
    assert response.json()["data"] == [{"url": url}]


@pytest.mark.parametrize("trigger", ["[[url:at]]", "[[url:at:host:port]]"])
async def test_a_url_fault_without_host_and_port_is_a_400(
    start_fake: StartFake, trigger: str
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await generate(client, trigger)
    assert response.status_code == 400
    assert "at:HOST:PORT[:PATH]" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("trigger", "status", "retry_after"),
    [("[[http:502]]", 502, None), ("[[http:503:7]]", 503, "7"), ("[[http:504]]", 504, None)],
)
async def test_gateway_errors(
    start_fake: StartFake, trigger: str, status: int, retry_after: str | None
) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await edit(client, trigger)
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert response.headers["content-type"].startswith("text/html")
    assert f"<title>{status} " in response.text


def _rate_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if "ratelimit" in k or "retry-after" in k}


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("openai", {"retry-after", "retry-after-ms", "x-ratelimit-reset-requests"}),
        ("ietf", {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"}),
        ("epoch", {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}),
        ("bare", set()),
    ],
)
async def test_429s_in_other_shapes(start_fake: StartFake, style: str, expected: set[str]) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await edit(client, f"[[429:{style}:3]]")
    assert response.status_code == 429
    headers = _rate_headers(response)
    assert expected <= set(headers)
    if style == "ietf":
        assert headers["ratelimit-reset"] == "3"
        assert "retry-after" not in headers
    if style == "epoch":
        assert abs(int(headers["x-ratelimit-reset"]) - (time.time() + 3)) <= 2
    if style == "bare":
        assert headers == {}
        assert response.text == "Too Many Requests"


@pytest.mark.parametrize("style", ["ietf", "epoch", "bare"])
async def test_the_limiter_answers_in_the_configured_style(
    start_fake: StartFake, style: str
) -> None:
    url = start_fake(rpm=60, ratelimit_style=style)
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        first, second = await edit(client), await edit(client)
    assert (first.status_code, second.status_code) == (200, 429)
    names = set(_rate_headers(first)) | set(_rate_headers(second))
    assert not any(name.endswith("-requests") or name.startswith("retry-after") for name in names)
    if style == "bare":
        assert names == set()
        assert second.text == "Too Many Requests"
    else:
        prefix = "ratelimit-" if style == "ietf" else "x-ratelimit-"
        assert second.headers[f"{prefix}remaining"] == "0"


async def test_rate_headers_can_come_on_429s_only(start_fake: StartFake) -> None:
    url = start_fake(rpm=60, ratelimit_headers_on_429_only=True)
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        first, second = await edit(client), await edit(client)
    assert _rate_headers(first) == {}
    assert second.status_code == 429
    assert second.headers["x-ratelimit-remaining-requests"] == "0"


async def test_the_fault_knob_applies_to_every_call(start_fake: StartFake) -> None:
    async with httpx.AsyncClient(base_url=start_fake(fault="[[http:503]]"), headers=AUTH) as client:
        answers = [await edit(client), await generate(client, "anything")]
    assert [answer.status_code for answer in answers] == [503, 503]


@pytest.mark.parametrize("prompt", ["[[json:weird]]", "[[429:klingon]]", "[[http:200]]"])
async def test_unknown_fault_arguments_are_a_400(start_fake: StartFake, prompt: str) -> None:
    async with httpx.AsyncClient(base_url=start_fake(), headers=AUTH) as client:
        response = await edit(client, prompt)
    assert response.status_code == 400


def test_ratelimit_style_is_validated() -> None:
    with pytest.raises(ValueError, match="ratelimit_style"):
        FakeProviderConfig(ratelimit_style="klingon").validate()
