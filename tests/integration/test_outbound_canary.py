"""Hostile URLs on the four outbound paths, against loopback canaries that count connections.

The legitimate servers (the fake provider, a redirecting server) live on 127.0.0.2 and are
allow-listed by port; canaries listen on 127.0.0.1 (at the fake's own port number, so a
name rebinding from 127.0.0.2 to 127.0.0.1 finds one) and on 127.0.0.2 at a port that is not
allow-listed. Every case must be refused with 0 connections to either canary; the controls
at the end show the canaries do count when something is let through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import SourceFile
from imagestudio.errors import ApiBaseRefused, ProviderBadRequest, SourceNotFound, UnsafeURL
from imagestudio.imaging.fetch import SourceFetcher
from imagestudio.providers.base import ImageRequest, ProviderConfig
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.providers.registry import make_provider
from imagestudio.security.http import Outbound, OutboundPolicy, send_webhook
from imagestudio.security.netguard import ensure_public_url, system_resolve
from testkit.canary import Canary, ScriptedResolver, shared_port

KEY = "sk-canary-SECRET-4242424242"
SOURCE = SourceFile(sample_product_photo(1, "SKU 1", (64, 64)), "sku-1.jpg", "image/jpeg")
REBIND = "rebind.test"  # first answers 127.0.0.2 (allowed), then 127.0.0.1 (the canary)


@dataclass
class Rig:
    fake: BackgroundServer  # 127.0.0.2:F, allow-listed
    hops: BackgroundServer  # 127.0.0.2:H, allow-listed: redirects on demand
    canary: Canary  # 127.0.0.1:F
    canary2: Canary  # 127.0.0.2:Q, not allow-listed (only F and H are)

    @property
    def allow_list(self) -> list[str]:
        return [f"127.0.0.2:{self.fake.port}", f"127.0.0.2:{self.hops.port}"]

    def hop(self, code: int, target: str) -> str:
        return f"{self.hops.url}/{code}/{target}"


def _hops_app(targets: dict[str, str]) -> Starlette:
    async def redirect(request: Request) -> Response:
        code, name = int(request.path_params["code"]), request.path_params["name"]
        return RedirectResponse(targets[name], status_code=code)

    return Starlette(routes=[Route("/{code:int}/{name:path}", redirect, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    port = shared_port("127.0.0.2", "127.0.0.1")
    targets: dict[str, str] = {}
    fake_app = create_fake_provider_app(FakeProviderConfig(latency_ms=0, render_size=64))
    with (
        BackgroundServer(fake_app, host="127.0.0.2", port=port) as fake,
        BackgroundServer(_hops_app(targets), host="127.0.0.2") as hops,
        Canary("127.0.0.1", port) as canary,
        Canary("127.0.0.2") as canary2,
    ):
        targets.update(
            canary=f"{canary.url}/x.png",
            canary2=f"{canary2.url}/x.png",
            localhost=f"http://localhost:{port}/x.png",
            rebind=f"http://{REBIND}:{port}/x.png",
            loop=f"{hops.url}/302/loop",
        )
        yield Rig(fake, hops, canary, canary2)


@pytest.fixture
def resolver() -> ScriptedResolver:
    return ScriptedResolver({REBIND: [["127.0.0.2"], ["127.0.0.1"]]}, system_resolve)


@pytest.fixture
async def outbound(rig: Rig, resolver: ScriptedResolver) -> AsyncIterator[Outbound]:
    rig.canary.reset()
    rig.canary2.reset()
    guarded = Outbound(OutboundPolicy.of(rig.allow_list, resolver), deadline=10.0)
    yield guarded
    await guarded.aclose()
    # The suite's one claim, checked after every case.
    assert (rig.canary.connections, rig.canary2.connections) == (0, 0), rig.canary.received


# ---------------------------------------------------------------------------- sources


def _source_cases(rig: Rig) -> dict[str, str]:
    f, q = rig.fake.port, rig.canary2.port
    return {
        "loopback literal": f"http://127.0.0.1:{f}/x.png",
        "localhost": f"http://localhost:{f}/x.png",
        "IPv4-mapped IPv6": f"http://[::ffff:127.0.0.1]:{f}/x.png",
        "decimal IPv4": f"http://2130706433:{f}/x.png",
        "hex IPv4": f"http://0x7f.0.0.1:{f}/x.png",
        "allowed host, other port": f"http://127.0.0.2:{q}/x.png",
        "userinfo pretending the allowed host": f"http://127.0.0.2:{f}@127.0.0.1:{f}/x.png",
        "302 to the canary": rig.hop(302, "canary"),
        "301 to the other port": rig.hop(301, "canary2"),
        "307 to localhost": rig.hop(307, "localhost"),
    }


SOURCE_CASES = [
    "loopback literal",
    "localhost",
    "IPv4-mapped IPv6",
    "decimal IPv4",
    "hex IPv4",
    "allowed host, other port",
    "userinfo pretending the allowed host",
    "302 to the canary",
    "301 to the other port",
    "307 to localhost",
]


@pytest.mark.parametrize("case", SOURCE_CASES)
async def test_hostile_source_urls_reach_no_canary(rig: Rig, outbound: Outbound, case: str) -> None:
    fetcher = SourceFetcher(outbound, max_bytes=1_000_000, timeout=5.0)
    with pytest.raises(UnsafeURL):
        await fetcher.fetch(_source_cases(rig)[case])


async def test_a_source_rebinding_after_the_check_is_refused_at_connect(
    rig: Rig, outbound: Outbound, resolver: ScriptedResolver
) -> None:
    url = f"http://{REBIND}:{rig.fake.port}/samples/1.jpg"
    await ensure_public_url(url, rig.allow_list, resolver)  # the check sees 127.0.0.2
    fetcher = SourceFetcher(outbound, max_bytes=1_000_000, timeout=5.0)
    with pytest.raises(UnsafeURL, match=r"resolves to 127\.0\.0\.1"):
        await fetcher.fetch(url)  # the connect resolves again and sees 127.0.0.1


async def test_a_rebind_inside_one_request_cannot_win(
    rig: Rig, outbound: Outbound, resolver: ScriptedResolver
) -> None:
    """The guarded path resolves once and connects to what it checked: the second answer
    (the canary) is never asked for, so the request lands on the allowed server."""
    source = await SourceFetcher(outbound, max_bytes=1_000_000, timeout=5.0).fetch(
        f"http://{REBIND}:{rig.fake.port}/samples/1.jpg"
    )
    assert source.mime == "image/jpeg"
    assert resolver.calls == [REBIND]


# ---------------------------------------------------------------------------- provider api_base


def _provider(outbound: Outbound, api_base: str, style: str = "images") -> Any:
    model = "gpt-image-1" if style == "images" else "google/gemini-2.5-flash-image"
    config = ProviderConfig(api_base, KEY, model, style, timeout_seconds=10.0)
    return make_provider(config, outbound=outbound)


def _request(prompt: str = "a mug", style: str = "images") -> ImageRequest:
    model = "gpt-image-1" if style == "images" else "google/gemini-2.5-flash-image"
    return ImageRequest(prompt, model, "256x256", SOURCE)


async def _generate(outbound: Outbound, api_base: str, prompt: str, style: str = "images") -> Any:
    provider = _provider(outbound, api_base, style)
    try:
        return await provider.generate(_request(prompt, style))
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    "api_base",
    ["http://127.0.0.1:{f}/v1", "http://localhost:{f}/v1", "http://127.0.0.2:{q}/v1"],
    ids=["loopback literal", "localhost", "allowed host, other port"],
)
async def test_a_hostile_api_base_reaches_no_canary(
    rig: Rig, outbound: Outbound, api_base: str
) -> None:
    url = api_base.format(f=rig.fake.port, q=rig.canary2.port)
    with pytest.raises(ApiBaseRefused, match=r"provider's api_base: refused host .*non-public"):
        await _generate(outbound, url, "a mug")


async def test_an_api_base_rebinding_after_submission_never_gets_the_key(
    rig: Rig, outbound: Outbound, resolver: ScriptedResolver
) -> None:
    api_base = f"http://{REBIND}:{rig.fake.port}/v1"
    await ensure_public_url(api_base, rig.allow_list, resolver)  # intake: 127.0.0.2, fine
    with pytest.raises(ApiBaseRefused, match=r"resolves to 127\.0\.0\.1"):
        await _generate(outbound, api_base, "a mug")
    assert all(KEY.encode() not in data for data in rig.canary.received)


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize(
    ("code", "target"),
    [(307, "127.0.0.1:{f}"), (308, "127.0.0.2:{q}"), (302, "127.0.0.1:{f}")],
    ids=["307 to the canary", "308 to the other port", "302 to the canary"],
)
async def test_a_provider_redirect_reaches_no_canary(
    rig: Rig, outbound: Outbound, style: str, code: int, target: str
) -> None:
    host = target.format(f=rig.fake.port, q=rig.canary2.port)
    with pytest.raises(ProviderBadRequest, match=rf"redirected \({code}\) to .*not followed"):
        await _generate(outbound, f"{rig.fake.url}/v1", f"[[redirect:{code}:{host}]]", style)


# ---------------------------------------------------------------------------- result URLs


@pytest.mark.parametrize("style", ["images", "chat"])
@pytest.mark.parametrize(
    "where",
    [
        "127.0.0.1:{f}",
        "127.0.0.2:{q}",
        "localhost:{f}",
        f"{REBIND}:{{f}}",
        "127.0.0.2:{h}:302/canary",
        "127.0.0.2:{h}:307/canary2",
    ],
    ids=[
        "loopback literal",
        "allowed host, other port",
        "localhost",
        "rebinding name",
        "allowed server redirecting to the canary",
        "allowed server redirecting to the other port",
    ],
)
async def test_a_hostile_result_url_reaches_no_canary(
    rig: Rig, outbound: Outbound, resolver: ScriptedResolver, style: str, where: str
) -> None:
    await resolver(REBIND, rig.fake.port)  # the rebinding name's first (allowed) answer is used
    at = where.format(f=rig.fake.port, q=rig.canary2.port, h=rig.hops.port)
    with pytest.raises(UnsafeURL, match="provider answered an image URL we refuse"):
        await _generate(outbound, f"{rig.fake.url}/v1", f"[[url:at:{at}]]", style)


# ---------------------------------------------------------------------------- webhooks


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{f}/hook",
        "http://localhost:{f}/hook",
        "http://127.0.0.2:{q}/hook",
        "http://[::ffff:7f00:1]:{f}/hook",
        f"http://{REBIND}:{{f}}/hook",
    ],
    ids=["loopback literal", "localhost", "allowed host, other port", "mapped IPv6", "rebind"],
)
async def test_a_hostile_webhook_url_reaches_no_canary(
    rig: Rig, outbound: Outbound, resolver: ScriptedResolver, url: str
) -> None:
    await resolver(REBIND, rig.fake.port)  # as if the webhook URL was checked at submission
    target = url.format(f=rig.fake.port, q=rig.canary2.port)
    with pytest.raises(UnsafeURL):
        await send_webhook(outbound, target, b'{"type": "job.finished"}', {"webhook-id": "1"})


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_webhook_redirect_to_another_host_is_not_followed(
    rig: Rig, outbound: Outbound, code: int
) -> None:
    answer = await send_webhook(outbound, rig.hop(code, "canary"), b"{}", {})
    assert answer.status == code  # given back as the answer: the body is not sent again
    assert answer.redirects == ()


# ---------------------------------------------------------------------------- controls


async def test_controls_the_canaries_count_what_reaches_them(rig: Rig) -> None:
    """Without the guard (or with the canary allow-listed) the same URLs do connect."""
    rig.canary.reset()
    async with httpx.AsyncClient(follow_redirects=True) as careless:
        await careless.get(rig.hop(302, "canary"))
    assert rig.canary.connections == 1
    opened = Outbound(OutboundPolicy.of([*rig.allow_list, f"127.0.0.1:{rig.fake.port}"]))
    try:
        answer = await send_webhook(opened, f"{rig.canary.url}/hook", b"{}", {})
    finally:
        await opened.aclose()
    assert (answer.status, rig.canary.connections) == (200, 2)
    assert rig.canary.received[-1].startswith(b"POST /hook HTTP/1.1")
    rig.canary.reset()


async def test_controls_the_legitimate_paths_work(rig: Rig, outbound: Outbound) -> None:
    result = await _generate(outbound, f"{rig.fake.url}/v1", "[[url:self]]")
    assert result.data.startswith(b"\x89PNG")
    with pytest.raises(SourceNotFound, match="redirected more than 3 times"):
        await SourceFetcher(outbound, max_bytes=1_000, timeout=5.0).fetch(rig.hop(302, "loop"))
