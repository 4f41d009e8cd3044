"""Usage and estimated cost end to end on real SQLite and PostgreSQL: the fake provider answers
``usage`` like OpenAI's images API, every attempt records it with its cost from the price
table, images, SKUs and the job keep the sums, and ``max_cost`` stops a job at its cap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import Usage
from imagestudio.runtime.services import Services, open_services
from imagestudio.store.records import AttemptRecord
from testkit.payloads import batch_payload

# settings.DEFAULT_PRICES["gpt-image-1"], per million tokens
TEXT, IMAGE, OUTPUT = 5.0, 10.0, 40.0


def fake_cost(prompt: str) -> float:
    """What the fake provider's ``usage`` for ``prompt`` costs at gpt-image-1's prices."""
    text_tokens = max(1, len(prompt) // 4)
    return (text_tokens * TEXT + 272 * IMAGE + 4160 * OUTPUT) / 1_000_000


def total(attempts: list[AttemptRecord]) -> float:
    return sum(a.cost or 0.0 for a in attempts)


async def test_every_attempt_records_usage_and_the_sums_match(
    services: Services, fake_provider: BackgroundServer
) -> None:
    result = await services.jobs.submit(batch_payload(fake_provider.url, "cost-1"), None)
    await services.worker(4).run_until_idle()
    progress = await services.store.progress(None, "cost-1")
    job = progress.job
    assert job.status == "succeeded"
    attempts = await services.store.attempts(result.job.id)
    images = await services.store.images(result.job.id)
    by_id = {image.id: image for image in images}
    assert len(attempts) == 5
    for attempt in attempts:
        prompt = by_id[attempt.image_id].prompt
        assert attempt.usage is not None
        assert attempt.usage.input_image_tokens == 272
        assert attempt.usage.output_tokens == 4160
        assert attempt.usage.input_text_tokens == max(1, len(prompt) // 4)
        assert attempt.cost == pytest.approx(fake_cost(prompt))
    assert job.cost == pytest.approx(total(attempts))
    assert job.cost == pytest.approx(sum(image.cost for image in images))
    assert job.output_tokens == 5 * 4160
    assert job.input_tokens == sum(a.usage.input_tokens for a in attempts if a.usage)
    per_sku = progress.per_sku_usage
    assert list(per_sku) == ["SKU1", "SKU2", "SKU3"]
    for sku, spent in per_sku.items():
        mine = [image for image in images if image.sku == sku]
        assert spent.cost == pytest.approx(sum(image.cost for image in mine))
        assert spent.output_tokens == 4160 * len(mine)
    assert math.isclose(sum(s.cost for s in per_sku.values()), job.cost)


@pytest.mark.parametrize("slots", [1, 4])
async def test_max_cost_stops_new_calls_and_ends_the_job_naming_it(
    services: Services, fake_provider: BackgroundServer, slots: int
) -> None:
    cap = 0.4  # the seed's 5 images cost about 0.85
    # calls in flight follow the governor, not the worker's slots: one call at a time is the
    # job's own cap
    options: dict[str, Any] = {"max_cost": cap} | ({"max_concurrency": 1} if slots == 1 else {})
    payload = batch_payload(fake_provider.url, "capped", options=options)
    result = await services.jobs.submit(payload, None)
    await services.worker(slots).run_until_idle()
    job = (await services.store.progress(None, "capped")).job
    attempts = await services.store.attempts(result.job.id)
    assert job.status == "partially_failed"
    assert job.error is not None
    assert "options.max_cost" in job.error
    assert 0 < job.cost <= cap
    assert job.cost == pytest.approx(total(attempts))
    assert job.max_cost == cap
    called = [a for a in attempts if a.usage is not None]
    assert 1 <= len(called) < 5
    if slots == 1:  # one call at a time: the dearest call so far is the estimate
        assert len(called) == 2
    images = await services.store.images(result.job.id)
    stopped = [image for image in images if image.status == "failed"]
    assert stopped
    assert all("options.max_cost" in (image.error or "") for image in stopped)
    assert sum(image.cost for image in images) == pytest.approx(job.cost)


async def test_a_model_without_a_price_records_usage_but_no_cost(
    services: Services, fake_provider: BackgroundServer
) -> None:
    payload = batch_payload(fake_provider.url, "unpriced", model="fake-image-1")
    result = await services.jobs.submit(payload, None)
    await services.worker(2).run_until_idle()
    job = (await services.store.progress(None, "unpriced")).job
    assert job.status == "succeeded"
    attempts = await services.store.attempts(result.job.id)
    assert all(a.cost is None and a.usage is not None for a in attempts)
    assert job.cost == 0.0
    assert job.output_tokens == 5 * 4160


async def test_chat_models_record_usage_priced_by_a_settings_row(
    tmp_path: Path, db_url: str, fake_provider: BackgroundServer
) -> None:
    """A chat-completions image model: ``prompt_tokens`` / ``completion_tokens`` priced by a
    row of ``IMAGESTUDIO_PRICES`` (per million: 2 in, 30 out)."""
    row = {"text_input_per_mtok": 2.0, "output_per_mtok": 30.0, "estimate": 0.05}
    settings = make_settings(tmp_path, db_url, prices={"my-chat-image": row})
    async with open_services(settings) as services:
        payload = batch_payload(
            fake_provider.url, "chat", model="my-chat-image", options={"api_style": "chat"}
        )
        result = await services.jobs.submit(payload, None)
        await services.worker(2).run_until_idle()
        job = (await services.store.progress(None, "chat")).job
        attempts = await services.store.attempts(result.job.id)
    assert job.status == "succeeded"
    assert all(a.usage == Usage(300, None, 1300) for a in attempts)
    assert all(a.cost == pytest.approx((300 * 2 + 1300 * 30) / 1e6) for a in attempts)
    assert job.cost == pytest.approx(total(attempts))
