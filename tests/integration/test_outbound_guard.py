"""``security.http`` against real loopback servers: caps, deadlines, addresses, redirects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.errors import AnswerTooLarge, DeadlineExceeded, UnsafeURL
from imagestudio.security.http import Outbound, OutboundPolicy, send_webhook
from imagestudio.security.netguard import system_resolve
from testkit.canary import Canary, ScriptedResolver, shared_port

STALL = 2.0  # far over the tests' 0.3 s deadlines; short so the servers stop quickly


async def stalls_after_headers(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"x"
        await asyncio.sleep(STALL)

    declared = request.query_params.get("declare")
    headers = {"content-length": declared} if declared else None
    return StreamingResponse(body(), headers=headers)


async def late_headers(request: Request) -> Response:
    await asyncio.sleep(STALL)
    return Response(b"late")


async def echo(request: Request) -> Response:
    return JSONResponse(
        {
            "method": request.method,
            "body": (await request.body()).decode(),
            "authorization": request.headers.get("authorization"),
            "cookie": request.headers.get("cookie"),
        }
    )


async def redirect(request: Request) -> Response:
    return RedirectResponse(request.query_params["to"], int(request.query_params["code"]))


APP = Starlette(
    routes=[
        Route("/stall", stalls_after_headers),
        Route("/late", late_headers, methods=["GET", "POST"]),
        Route("/echo", echo, methods=["GET", "POST"]),
        Route("/redirect", redirect, methods=["GET", "POST"]),
    ]
)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[BackgroundServer, BackgroundServer]]:
    """The same app on 127.0.0.2 at two ports: two origins, both allow-listed."""
    with (
        BackgroundServer(APP, host="127.0.0.2") as one,
        BackgroundServer(APP, host="127.0.0.2") as two,
    ):
        yield one, two


@pytest.fixture
async def outbound(servers: tuple[BackgroundServer, BackgroundServer]) -> AsyncIterator[Outbound]:
    allow = [f"127.0.0.2:{s.port}" for s in servers]
    guarded = Outbound(OutboundPolicy.of(allow), deadline=5.0)
    yield guarded
    await guarded.aclose()


# ---------------------------------------------------------------------------- caps and deadlines


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    # The body stalls after one byte: reading it would end at the deadline instead.
    with pytest.raises(
        AnswerTooLarge, match=r"answer of 9\.5 MB declared, over the cap of 1000 bytes"
    ):
        await outbound.request("GET", f"{servers[0].url}/stall?declare=10000000", max_bytes=1000)


async def test_the_deadline_covers_a_body_that_stalls(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    with pytest.raises(DeadlineExceeded, match=r"not done within the total deadline of 0\.3 s"):
        await outbound.request("GET", f"{servers[0].url}/stall", deadline=0.3)


async def test_the_deadline_covers_waiting_for_the_headers(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    with pytest.raises(DeadlineExceeded) as caught:
        await outbound.request("GET", f"{servers[0].url}/late", deadline=0.3)
    assert caught.value.seconds == 0.3


async def test_the_sdk_client_holds_each_request_to_its_deadline(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    async with outbound.client(deadline=0.3) as client:
        with pytest.raises(DeadlineExceeded):
            await client.get(f"{servers[0].url}/stall")  # httpx reads the whole body here


async def test_the_sdk_client_caps_the_body(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    async with outbound.client(max_bytes=10) as client:
        with pytest.raises(AnswerTooLarge, match="over the cap of 10 bytes"):
            await client.post(f"{servers[0].url}/echo", content=b"a body longer than ten")


# ---------------------------------------------------------------------------- addresses


async def test_the_next_checked_address_is_tried_when_one_refuses_the_connection() -> None:
    port = shared_port("127.0.0.2", "127.0.0.3")
    resolver = ScriptedResolver({"two.test": [["127.0.0.3", "127.0.0.2"]]}, system_resolve)
    policy = OutboundPolicy.of([f"127.0.0.2:{port}", f"127.0.0.3:{port}"], resolver)
    with BackgroundServer(APP, host="127.0.0.2", port=port):  # nothing on 127.0.0.3
        outbound = Outbound(policy)
        try:
            answer = await outbound.request("GET", f"http://two.test:{port}/echo")
        finally:
            await outbound.aclose()
    assert answer.status == 200
    assert resolver.calls == ["two.test"]


async def test_one_refused_address_refuses_the_host() -> None:
    port = shared_port("127.0.0.2", "127.0.0.1")
    resolver = ScriptedResolver({"mixed.test": [["127.0.0.2", "127.0.0.1"]]}, system_resolve)
    with (
        BackgroundServer(APP, host="127.0.0.2", port=port) as allowed,
        Canary("127.0.0.1", port) as canary,
    ):
        outbound = Outbound(OutboundPolicy.of([f"127.0.0.2:{allowed.port}"], resolver))
        try:
            with pytest.raises(UnsafeURL, match=r"resolves to 127\.0\.0\.1"):
                await outbound.request("GET", f"http://mixed.test:{port}/echo")
        finally:
            await outbound.aclose()
    assert canary.connections == 0


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.2/x", "file:///etc/passwd", "gopher://127.0.0.2:70/_x", "http:///x"]
)
async def test_other_schemes_are_refused_by_the_client_too(outbound: Outbound, url: str) -> None:
    async with outbound.client() as client:
        with pytest.raises((UnsafeURL, httpx.UnsupportedProtocol)):
            await client.get(url)
    with pytest.raises(UnsafeURL):
        await outbound.request("GET", url)


async def test_proxy_settings_are_ignored(
    servers: tuple[BackgroundServer, BackgroundServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a proxy the check would see the proxy, not the target: no proxy is used."""
    with Canary("127.0.0.1") as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        outbound = Outbound(OutboundPolicy.of([f"127.0.0.2:{servers[0].port}"]))
        try:
            answer = await outbound.request("GET", f"{servers[0].url}/echo")
        finally:
            await outbound.aclose()
    assert answer.status == 200
    assert proxy.connections == 0


# ---------------------------------------------------------------------------- redirects


def _via(server: BackgroundServer, code: int, to: str) -> str:
    return str(httpx.URL(f"{server.url}/redirect", params={"code": code, "to": to}))


async def test_credentials_follow_a_get_redirect_to_the_same_origin_only(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    one, two = servers
    secret = {"authorization": "Bearer sk-do-not-forward", "cookie": "session=1"}
    same = await outbound.request("GET", _via(one, 302, f"{one.url}/echo"), headers=secret)
    other = await outbound.request("GET", _via(one, 302, f"{two.url}/echo"), headers=secret)
    assert json.loads(same.body)["authorization"] == "Bearer sk-do-not-forward"
    assert json.loads(other.body)["authorization"] is None
    assert json.loads(other.body)["cookie"] is None
    assert other.redirects == (_via(one, 302, f"{two.url}/echo"),)


async def test_a_body_is_sent_again_on_a_same_origin_307_only(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    one, two = servers
    same = await outbound.request("POST", _via(one, 307, "/echo"), content=b"form")
    assert json.loads(same.body) == {
        "method": "POST",
        "body": "form",
        "authorization": None,
        "cookie": None,
    }
    other = await outbound.request("POST", _via(one, 307, f"{two.url}/echo"), content=b"form")
    assert (other.status, other.redirects) == (307, ())


async def test_at_most_three_redirects_are_followed(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    one, _ = servers
    url = f"{one.url}/echo"
    for _ in range(4):
        url = _via(one, 302, url)
    answer = await outbound.request("GET", url)
    assert answer.status == 302
    assert len(answer.redirects) == 3


# ---------------------------------------------------------------------------- webhooks


async def test_a_webhook_is_posted_with_its_headers(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    answer = await send_webhook(
        outbound, f"{servers[0].url}/echo", b'{"type":"job.finished"}', {"webhook-id": "m1"}
    )
    assert answer.status == 200
    assert json.loads(answer.body)["body"] == '{"type":"job.finished"}'


async def test_a_webhook_receivers_answer_is_capped_and_timed(
    servers: tuple[BackgroundServer, BackgroundServer], outbound: Outbound
) -> None:
    with pytest.raises(AnswerTooLarge, match="over the cap of 65536 bytes"):
        await send_webhook(outbound, f"{servers[0].url}/echo", b"x" * 70_000, {})
    with pytest.raises(DeadlineExceeded, match=r"total deadline of 0\.3 s"):
        await send_webhook(outbound, f"{servers[0].url}/late", b"{}", {}, deadline=0.3)
