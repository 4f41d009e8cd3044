"""The seed's batch end to end through the real store, worker, fake provider and storage."""

from __future__ import annotations

import io

from PIL import Image

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.runtime.services import Services
from testkit.payloads import batch_payload


async def test_seed_batch_runs_to_success(
    services: Services, fake_provider: BackgroundServer
) -> None:
    result = await services.jobs.submit(batch_payload(fake_provider.url, "job-1"), None)
    assert result.created
    await services.worker(4).run_until_idle()
    progress = await services.store.progress(None, "job-1")
    assert progress.job.status == "succeeded"
    assert progress.counts["succeeded"] == 5
    urls = progress.job.result_image_urls
    assert [u.rsplit("/", 1)[1][:4] for u in urls] == ["0000", "0001", "0002", "0003", "0004"]
    images = await services.store.images(result.job.id)
    for image in images:
        assert image.result_key is not None
        data = await services.storage.get(image.result_key)
        with Image.open(io.BytesIO(data)) as decoded:
            assert (decoded.format, decoded.size) == ("PNG", (1536, 1536))
