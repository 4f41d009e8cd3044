"""Post-processing in real worker processes: the same bytes as threads, typed errors back,
a bounded queue, and a killed child that costs a retry, never an image."""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import make_settings
from PIL import Image

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import OutputSpec
from imagestudio.errors import BadImage, ImageStudioError, SourceTooLarge
from imagestudio.imaging.pool import ProcessImaging, ThreadImaging, open_imaging
from imagestudio.imaging.process import postprocess, prepare_source
from imagestudio.policy.retry import AttemptState, Retry, RetryPolicy, decide
from imagestudio.providers.fake.images import render_edit
from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.runtime.services import open_services
from testkit.payloads import batch_payload

MAX_PIXELS = 10_000_000
SPECS = [
    OutputSpec(width=1536, height=1536, format="png", quality=90),
    OutputSpec(width=1024, height=1024, format="jpeg", quality=90),
    OutputSpec(width=512, height=512, format="webp", quality=80),
    OutputSpec(width=64, height=64, format="jpeg", quality=70),
]


@pytest.fixture
async def pool() -> AsyncIterator[ProcessImaging]:
    imaging = ProcessImaging(2)
    await imaging.start()
    try:
        yield imaging
    finally:
        await imaging.aclose()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.new("RGB", (120, 80), (10, 200, 30)), "JPEG", exif=exif)


def provider_answers() -> list[bytes]:
    source = sample_product_photo(1, "photo", (512, 512))
    return [render_edit(source, "a prompt", (1024, 1024), fmt) for fmt in ("png", "jpeg")]


async def test_start_starts_every_child(pool: ProcessImaging) -> None:
    pids = pool.pids()
    assert len(pids) == 2
    assert os.getpid() not in pids


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.width}-{s.format}")
async def test_postprocess_gives_the_same_bytes_as_threads(
    pool: ProcessImaging, spec: OutputSpec
) -> None:
    threads = ThreadImaging()
    for raw in provider_answers():
        in_process = await pool.run(postprocess, raw, spec, max_pixels=MAX_PIXELS)
        in_thread = await threads.run(postprocess, raw, spec, max_pixels=MAX_PIXELS)
        assert in_process == in_thread


@pytest.mark.parametrize(
    "source",
    [
        encode(Image.new("RGB", (64, 48), (1, 2, 3)), "PNG"),
        rotated_jpeg(),
        encode(Image.new("P", (30, 30)), "GIF"),
    ],
    ids=["png-pass-through", "rotated-jpeg", "gif"],
)
async def test_prepare_source_gives_the_same_result_as_threads(
    pool: ProcessImaging, source: bytes
) -> None:
    in_process = await pool.run(prepare_source, source, "a.jpg", max_pixels=MAX_PIXELS)
    in_thread = await ThreadImaging().run(prepare_source, source, "a.jpg", max_pixels=MAX_PIXELS)
    assert in_process == in_thread


async def test_errors_raised_in_a_child_come_back_typed(pool: ProcessImaging) -> None:
    spec = SPECS[0]
    with pytest.raises(BadImage, match=r"^cannot decode image") as bad:
        await pool.run(postprocess, b"not an image", spec, max_pixels=MAX_PIXELS)
    assert bad.value.message.startswith("cannot decode image")
    big = encode(Image.new("RGB", (200, 100)), "PNG")
    with pytest.raises(SourceTooLarge, match=r"200x100 pixels, over the cap of 1000$"):
        await pool.run(prepare_source, big, "big.png", max_pixels=1000)
    with pytest.raises(ValueError, match="unsupported output format 'gif'"):
        await pool.run(postprocess, big, OutputSpec(8, 8, "gif", 90), max_pixels=MAX_PIXELS)
    assert pool.rebuilds == 0


async def test_a_dead_child_is_a_transient_error_and_the_pool_is_rebuilt(
    pool: ProcessImaging,
) -> None:
    with pytest.raises(ImageStudioError, match="imaging worker process died") as died:
        await pool.run(os._exit, 1)
    assert type(died.value) is ImageStudioError
    assert pool.rebuilds == 1
    now = datetime.now(UTC)
    state = AttemptState(attempts=1, snoozes=0, billed_timeouts=0, first_started_at=now)
    decision = decide(died.value, state, RetryPolicy(), now=now, rng=random.Random(1))
    assert isinstance(decision, Retry)
    raw = provider_answers()[0]
    assert await pool.run(postprocess, raw, SPECS[3], max_pixels=MAX_PIXELS)
    assert len(pool.pids()) >= 1


async def test_calls_broken_together_rebuild_the_pool_once(pool: ProcessImaging) -> None:
    victim = pool.pids()[0]
    sleeping = [asyncio.ensure_future(pool.run(time.sleep, 2)) for _ in range(2)]
    await asyncio.sleep(0.3)  # both children are asleep
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.gather(*sleeping, return_exceptions=True)
    assert all(isinstance(r, ImageStudioError) for r in results), results
    assert pool.rebuilds == 1
    assert await pool.run(os.getpid) != victim


async def test_no_more_than_twice_the_processes_are_queued() -> None:
    imaging = ProcessImaging(1, queued_per_process=2)
    try:
        calls = [asyncio.ensure_future(imaging.run(time.sleep, 0.3)) for _ in range(4)]
        await asyncio.sleep(0.1)
        assert imaging.queued == 2  # the other two wait here, their bytes not yet pickled
        await asyncio.gather(*calls)
        assert imaging.queued == 0
    finally:
        await imaging.aclose()


def test_zero_processes_means_threads() -> None:
    assert isinstance(open_imaging(0), ThreadImaging)
    with pytest.raises(ValueError, match="at least one process"):
        ProcessImaging(0)


async def test_the_pipeline_retries_an_image_whose_child_was_killed(
    tmp_path: Path, fake_provider: BackgroundServer
) -> None:
    settings = make_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", imaging_processes=1
    )
    async with open_services(settings) as services:
        imaging = services.imaging
        assert isinstance(imaging, ProcessImaging)
        for pid in imaging.pids():
            os.kill(pid, signal.SIGKILL)  # the first image's call finds the pool broken
        result = await services.jobs.submit(batch_payload(fake_provider.url, "job-1"), None)
        await services.worker(4).run_until_idle()
        progress = await services.store.progress(None, "job-1")
        assert progress.job.status == "succeeded"
        images = await services.store.images(result.job.id)
        assert [image.status for image in images] == ["succeeded"] * 5
        assert any(image.attempts > 1 for image in images)
        assert imaging.rebuilds == 1
        for image in images:
            assert image.result_key is not None
            with Image.open(io.BytesIO(await services.storage.get(image.result_key))) as out:
                assert (out.format, out.size) == ("PNG", (1536, 1536))
