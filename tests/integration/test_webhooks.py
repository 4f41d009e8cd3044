"""Webhooks end to end on real SQLite and PostgreSQL: a real receiver on loopback verifies
every signature with ``standardwebhooks`` and answers 500 to its first tries; the sender
retries with back-off and the receiver gets each message once after dedup by ``webhook-id``;
the deliveries are visible in the job's answer; private addresses and bad secrets are
refused at submit naming the field; secrets are never stored in ``config`` or shown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_settings
from sqlalchemy import select

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.errors import PayloadInvalid
from imagestudio.runtime.services import Services, open_services
from imagestudio.settings import Settings
from imagestudio.store.tables import ai_job, ai_job_webhook
from testkit.payloads import batch_payload
from testkit.webhook_receiver import WebhookReceiver, whsec

SECRET = whsec(7)
FAST = {"webhook_backoff_base_seconds": 0.05, "webhook_timeout_seconds": 2.0}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, **FAST)


@pytest.fixture
def receiver() -> WebhookReceiver:
    return WebhookReceiver(SECRET, fail_first=3)


@pytest.fixture
def receiver_url(receiver: WebhookReceiver) -> Iterator[str]:
    with BackgroundServer(receiver) as server:
        yield f"{server.url}/hooks/imagestudio?token=receiver-token-123"


def hooked(provider: str, job_id: str, url: str, **options: object) -> dict[str, object]:
    return batch_payload(
        provider, job_id, options={"webhook_url": url, "webhook_secret": SECRET, **options}
    )


async def deliver_all(
    services: Services, job_pk: str, expected: int = 1, *, seconds: float = 20.0
) -> None:
    """Run the sender until the job has ``expected`` messages and none is pending (or
    ``seconds`` pass). On PostgreSQL an event is read once no older transaction anywhere in
    the cluster is open (``store.outbox``), so its message may take a moment to be made."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await services.webhooks.run_once()
        deliveries = await services.store.webhook_deliveries(job_pk)
        if len(deliveries) >= expected and all(d.status != "pending" for d in deliveries):
            return
        await asyncio.sleep(0.05)


async def test_job_ended_is_delivered_once_through_500s_with_verified_signatures(
    services: Services,
    fake_provider: BackgroundServer,
    receiver: WebhookReceiver,
    receiver_url: str,
) -> None:
    result = await services.jobs.submit(hooked(fake_provider.url, "hook-1", receiver_url), None)
    await services.worker(4).run_until_idle()
    await deliver_all(services, result.job.id)
    assert receiver.bad_signatures == 0
    assert receiver.statuses == [500, 500, 500, 200]
    assert receiver.types() == {"job.succeeded": 1}
    message = next(iter(receiver.unique.values())).body
    assert message["data"]["job_id"] == "hook-1"
    assert message["data"]["status"] == "succeeded"
    assert message["data"]["counts"]["succeeded"] == 5
    assert len(message["data"]["result_image_urls"]) == 5
    assert message["data"]["usage"]["estimated_cost_usd"] > 0
    [delivery] = await services.store.webhook_deliveries(result.job.id)
    assert (delivery.type, delivery.status, delivery.attempts) == ("job.succeeded", "delivered", 4)
    assert delivery.last_status_code == 200
    assert delivery.last_error is None
    assert delivery.msg_id in receiver.unique


async def test_image_events_and_a_failed_try_are_recorded(
    services: Services,
    fake_provider: BackgroundServer,
    receiver: WebhookReceiver,
    receiver_url: str,
) -> None:
    payload = hooked(fake_provider.url, "hook-2", receiver_url, webhook_image_events=True)
    result = await services.jobs.submit(payload, None)
    await services.worker(2).run_until_idle()
    deliveries = []
    for _ in range(200):  # until all six are made (PostgreSQL may hold events back a moment)
        await services.webhooks.pump()
        deliveries = await services.store.webhook_deliveries(result.job.id)
        if len(deliveries) == 6:
            break
        await asyncio.sleep(0.05)
    await services.webhooks.dispatch()  # 3 tries answered 500 (the receiver's first three)
    deliveries = await services.store.webhook_deliveries(result.job.id)
    failed = [d for d in deliveries if d.last_status_code == 500]
    assert len(failed) == 3
    assert all(d.status == "pending" and d.next_attempt_at is not None for d in failed)
    assert all("answered 500" in (d.last_error or "") for d in failed)
    assert all("receiver-token-123" not in (d.last_error or "") for d in failed)
    await deliver_all(services, result.job.id, 6)
    assert receiver.types() == {"image.succeeded": 5, "job.succeeded": 1}
    deliveries = await services.store.webhook_deliveries(result.job.id)
    assert [d.status for d in deliveries] == ["delivered"] * 6
    assert deliveries[-1].type == "job.succeeded"


async def test_a_cancelled_job_sends_job_cancelled(
    services: Services,
    fake_provider: BackgroundServer,
    receiver: WebhookReceiver,
    receiver_url: str,
) -> None:
    receiver.fail_first = 0
    result = await services.jobs.submit(hooked(fake_provider.url, "hook-3", receiver_url), None)
    await services.jobs.cancel(None, "hook-3")
    await deliver_all(services, result.job.id)
    assert receiver.types() == {"job.cancelled": 1}


async def test_the_server_secret_signs_jobs_without_their_own(
    tmp_path: Path, db_url: str, fake_provider: BackgroundServer
) -> None:
    server_secret = whsec(99)
    receiver = WebhookReceiver(server_secret, fail_first=0)
    settings = make_settings(tmp_path, db_url, webhook_secret=server_secret, **FAST)
    with BackgroundServer(receiver) as server:
        async with open_services(settings) as services:
            payload = batch_payload(
                fake_provider.url, "hook-4", options={"webhook_url": f"{server.url}/h"}
            )
            result = await services.jobs.submit(payload, None)
            await services.worker(4).run_until_idle()
            await deliver_all(services, result.job.id)
    assert receiver.bad_signatures == 0
    assert receiver.types() == {"job.succeeded": 1}


async def test_a_message_is_given_up_after_its_max_age(
    tmp_path: Path, db_url: str, fake_provider: BackgroundServer
) -> None:
    receiver = WebhookReceiver(SECRET, fail_first=1000)
    settings = make_settings(
        tmp_path,
        db_url,
        webhook_max_age_seconds=1.5,
        webhook_backoff_base_seconds=0.05,
        webhook_timeout_seconds=2.0,
    )
    with BackgroundServer(receiver) as server:
        async with open_services(settings) as services:
            result = await services.jobs.submit(
                hooked(fake_provider.url, "hook-5", f"{server.url}/h"), None
            )
            await services.worker(4).run_until_idle()
            await deliver_all(services, result.job.id)
            [delivery] = await services.store.webhook_deliveries(result.job.id)
    assert delivery.status == "failed"
    assert "given up after" in (delivery.last_error or "")
    assert delivery.attempts == len(receiver.statuses) >= 2
    assert receiver.unique == {}


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://10.0.0.7/hook", "10.0.0.7"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[::1]:9/hook", "::1"),
        ("http://192.168.1.20/hook?token=s3cr3t", "192.168.1.20"),
        ("ftp://example.com/hook", "http(s) URL"),
        ("https://user:pw@example.com/hook", "credentials"),
    ],
)
async def test_a_private_or_malformed_webhook_url_is_refused_naming_the_field(
    services: Services, url: str, needle: str
) -> None:
    payload = hooked("http://127.0.0.1:9", "refused", url)
    with pytest.raises(PayloadInvalid) as caught:
        await services.jobs.submit(payload, None)
    assert caught.value.field == "options.webhook_url"
    assert needle in caught.value.message
    assert "s3cr3t" not in caught.value.message
    assert "pw@" not in caught.value.message


@pytest.mark.parametrize(
    ("options", "field", "needle"),
    [
        ({"webhook_secret": "not-a-secret"}, "options.webhook_secret", "whsec_"),
        ({"webhook_secret": "whsec_!!!"}, "options.webhook_secret", "base64"),
        ({"webhook_secret": "whsec_c2hvcnQ="}, "options.webhook_secret", "24 to 64 bytes"),
        ({"webhook_secret": None}, "options.webhook_secret", "IMAGESTUDIO_WEBHOOK_SECRET"),
        ({"webhook_url": None}, "options.webhook_url", "needs a webhook URL"),
    ],
)
async def test_a_webhook_without_a_usable_secret_is_refused(
    services: Services, options: dict[str, object], field: str, needle: str
) -> None:
    payload = hooked("http://127.0.0.1:9", "no-secret", "http://127.0.0.1:9/h")
    payload["options"].update(options)  # type: ignore[attr-defined]
    with pytest.raises(PayloadInvalid) as caught:
        await services.jobs.submit(payload, None)
    assert (caught.value.field, needle in caught.value.message) == (field, True)


async def test_secrets_are_sealed_and_never_in_config(
    services: Services, fake_provider: BackgroundServer, receiver_url: str
) -> None:
    result = await services.jobs.submit(hooked(fake_provider.url, "sealed", receiver_url), None)
    async with services.store.reader.connect() as conn:
        config = await conn.scalar(select(ai_job.c.config).where(ai_job.c.id == result.job.id))
        row = (await conn.execute(select(ai_job_webhook))).one()
    text = str(config)
    assert SECRET not in text
    assert "receiver-token-123" not in text
    assert config["options"]["webhook_url"].endswith("/hooks/imagestudio")
    assert SECRET.encode() not in row.url_enc + (row.secret_enc or b"")
    assert services.box.open(row.secret_enc) == SECRET
    assert services.box.open(row.url_enc) == receiver_url


async def test_events_read_twice_make_each_message_once_and_a_late_try_writes_nothing(
    services: Services, fake_provider: BackgroundServer, receiver_url: str
) -> None:
    result = await services.jobs.submit(hooked(fake_provider.url, "twice", receiver_url), None)
    await services.jobs.cancel(None, "twice")
    store = services.store
    events: list = []  # type: ignore[type-arg]
    for _ in range(200):  # PostgreSQL may hold the events back a moment
        events = await store.outbox.read("test-consumer")
        if any(e.data.get("job_ended") for e in events):
            break
        await asyncio.sleep(0.05)
    assert await store.enqueue_webhooks(events) == 1
    assert await store.enqueue_webhooks(events) == 0  # a second reader makes nothing new
    [first] = await store.claim_webhooks(10, lease_seconds=0.2)
    assert first.attempts == 1
    assert await store.claim_webhooks(10, lease_seconds=0.2) == []  # leased
    await asyncio.sleep(0.3)
    [again] = await store.claim_webhooks(10, lease_seconds=30)  # the first lease ran out
    assert (again.msg_id, again.attempts) == (first.msg_id, 2)
    late = await store.record_webhook(first, status_code=200, error=None, next_attempt_at=None)
    assert late is False  # the first try's lease is no longer the message's
    kept = await store.record_webhook(again, status_code=200, error=None, next_attempt_at=None)
    assert kept is True
    [delivery] = await store.webhook_deliveries(result.job.id)
    assert (delivery.status, delivery.attempts, delivery.type) == ("delivered", 2, "job.cancelled")
