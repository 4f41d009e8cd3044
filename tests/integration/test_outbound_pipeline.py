"""The guarded path end to end: jobs through the real store, worker and fake provider, on
SQLite and PostgreSQL, whose provider answers point at loopback canaries.

Only the fake's own port is allow-listed (``127.0.0.1:<port>``): a result URL on another port
of 127.0.0.1, or on 127.0.0.2, must fail the image with words that say why, after 0
connections to the canaries, and the provider's redirect must not carry the form away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.runtime.services import Services, open_services
from imagestudio.security.netguard import system_resolve
from testkit.canary import Canary, ScriptedResolver, shared_port
from testkit.payloads import batch_payload
from testkit.settings import loopback_settings


@pytest.fixture(scope="module")
def fake() -> Iterator[BackgroundServer]:
    app = create_fake_provider_app(FakeProviderConfig(latency_ms=0, render_size=64))
    with BackgroundServer(app) as server:
        yield server


@pytest.fixture
def canaries() -> Iterator[tuple[Canary, Canary]]:
    with Canary("127.0.0.1") as near, Canary("127.0.0.2") as far:
        yield near, far
    assert (near.connections, far.connections) == (0, 0)


@pytest.fixture
async def guarded(tmp_path: Path, db_url: str, fake: BackgroundServer) -> AsyncIterator[Services]:
    settings = loopback_settings(
        tmp_path / "data",
        db_url,
        allow_private_urls=f"127.0.0.1:{fake.port}",  # the fake's port only
        poll_interval=0.05,
        backoff_base_seconds=0.05,
    )
    async with open_services(settings) as services:
        yield services


def _payload(fake: BackgroundServer, job_id: str, trigger: str) -> dict[str, object]:
    templates = {"common_cn": f"on white marble {trigger}", "common_en": trigger}
    return batch_payload(
        fake.url, job_id, images_per_sku=(1,), size=64, options={"prompt_templates": templates}
    )


@pytest.mark.parametrize("where", ["near", "far"])
async def test_a_result_url_on_a_canary_fails_the_image_with_0_connections(
    guarded: Services, fake: BackgroundServer, canaries: tuple[Canary, Canary], where: str
) -> None:
    canary = canaries[0] if where == "near" else canaries[1]
    trigger = f"[[url:at:{canary.host}:{canary.port}]]"
    await guarded.jobs.submit(_payload(fake, f"url-{where}", trigger), None)
    await guarded.worker(2).run_until_idle()
    progress = await guarded.store.progress(None, f"url-{where}")
    assert progress.job.status == "failed"
    (image,) = await guarded.store.images(progress.job.id)
    assert image.error is not None
    assert "provider answered an image URL we refuse" in image.error
    assert f"{canary.host}' (port {canary.port})" in image.error
    assert image.attempts == 1  # refused is permanent: not retried


async def test_a_provider_redirect_to_a_canary_is_not_followed(
    guarded: Services, fake: BackgroundServer, canaries: tuple[Canary, Canary]
) -> None:
    near, _ = canaries
    trigger = f"[[redirect:307:{near.host}:{near.port}]]"
    await guarded.jobs.submit(_payload(fake, "redirect", trigger), None)
    await guarded.worker(2).run_until_idle()
    progress = await guarded.store.progress(None, "redirect")
    (image,) = await guarded.store.images(progress.job.id)
    assert image.status == "failed"
    assert image.error is not None
    assert f"provider redirected (307) to {near.url}/redirected/v1/images/edits" in image.error
    assert "not followed" in image.error


async def test_the_answer_cap_setting_reaches_the_provider_calls(
    tmp_path: Path, db_url: str, fake: BackgroundServer
) -> None:
    settings = loopback_settings(
        tmp_path / "data",
        db_url,
        allow_private_urls=f"127.0.0.1:{fake.port}",
        provider_max_answer_bytes=512 * 1024,
        max_attempts=1,
    )
    async with open_services(settings) as services:
        await services.jobs.submit(_payload(fake, "big", "[[big:1]]"), None)
        await services.worker(1).run_until_idle()
        progress = await services.store.progress(None, "big")
        (image,) = await services.store.images(progress.job.id)
    assert image.status == "failed"
    assert image.error is not None
    assert "provider's answer of 1.3 MB declared, over the cap of 524288 bytes" in image.error


async def test_an_api_base_rebinding_after_submission_stops_the_job_with_0_connections(
    tmp_path: Path, db_url: str
) -> None:
    """The issue's rebinding case end to end: a name that resolved to the allowed provider at
    submission and to a canary afterwards got 4 POSTs with the key; now the first call's
    connect is refused, the job stops with one error, and the canary saw nothing."""
    port = shared_port("127.0.0.1", "127.0.0.2")
    app = create_fake_provider_app(FakeProviderConfig(latency_ms=0, render_size=64))
    resolver = ScriptedResolver({"provider.test": [["127.0.0.1"], ["127.0.0.2"]]}, system_resolve)
    settings = loopback_settings(
        tmp_path / "data", db_url, allow_private_urls=f"127.0.0.1:{port}", poll_interval=0.05
    )
    with BackgroundServer(app, port=port) as fake, Canary("127.0.0.2", port) as canary:
        payload = batch_payload(fake.url, "rebind", images_per_sku=(2, 1), size=64)
        payload["options"]["api_base"] = f"http://provider.test:{port}/v1"  # type: ignore[index]
        async with open_services(settings, resolver=resolver) as services:
            await services.jobs.submit(payload, None)  # the check sees 127.0.0.1: accepted
            await services.worker(2).run_until_idle()
            progress = await services.store.progress(None, "rebind")
            images = await services.store.images(progress.job.id)
    assert canary.connections == 0
    assert progress.job.status == "failed"
    assert progress.job.error is not None
    assert "refused to connect to the provider's api_base" in progress.job.error
    assert "resolves to 127.0.0.2" in progress.job.error
    assert [image.status for image in images] == ["failed"] * 3
    # Only the calls already started when the first was refused tried (2 workers); the
    # third image failed with the job, never tried.
    assert sum(image.attempts for image in images) <= 2
