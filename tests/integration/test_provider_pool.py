"""The provider-client pool: a client evicted while a task still calls through it stays open
until that task lets go (real store, real fake provider on loopback)."""

from __future__ import annotations

import asyncio

import pytest

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.base import ImageRequest
from imagestudio.runtime.services import Services
from imagestudio.scheduler.provider_pool import ProviderPool
from testkit.payloads import batch_payload


def _request(prompt: str = "a red mug on white") -> ImageRequest:
    return ImageRequest(prompt=prompt, model="dall-e-2", size="256x256")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_evicted_client_stays_open_until_its_call_ends(
    services: Services, fake_provider: BackgroundServer
) -> None:
    for n, key in enumerate(["sk-first-account-0123456789", "sk-second-account-0123456789"]):
        payload = batch_payload(fake_provider.url, f"job-{n}", images_per_sku=(1,), api_key=key)
        await services.jobs.submit(payload, None)
    first, second = await services.store.claim("w1", 2, 30)
    pool = ProviderPool(
        services.box, services.store, timeout=30, size=1, outbound=services.outbound
    )
    try:
        async with pool.lease(first) as in_use:
            call = asyncio.create_task(in_use.generate(_request("[[slow]] a red mug")))
            async with pool.lease(second) as other:  # evicts the first client
                assert other is not in_use
                assert pool.open_clients == 2  # the first is evicted but not closed
                await other.generate(_request())
            result = await call  # its connection was not pulled from under it
            assert result.data
        assert pool.open_clients == 1  # closed once its task let go
        async with pool.lease(first) as rebuilt:
            assert rebuilt is not in_use
            assert (await rebuilt.generate(_request())).data
    finally:
        await pool.aclose()
    assert pool.open_clients == 0
