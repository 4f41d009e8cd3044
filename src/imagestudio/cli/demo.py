"""``imagestudio demo``: the seed's example batch, offline, with nothing to set up.

It starts the fake provider (which also serves generated product photos as sources), starts
the service on SQLite with local storage, submits the seed's payload (3 SKUs, 5 images,
1536x1536 png), follows it with progress bars and prints where the results are.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

from rich.console import Console

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.cli.client import ApiClient, follow, summary_table
from imagestudio.cli.example import seed_example
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.settings import Settings

DEMO_KEY = "sk-demo-not-a-real-key"


def run_demo(
    console: Console,
    *,
    data_dir: Path,
    latency_ms: float,
    workers: int,
    keep: bool = False,
    port: int = 0,
) -> int:
    fake = FakeProviderConfig(latency_ms=latency_ms, latency_dist="lognormal", concurrency=8)
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=None,
        storage_url=None,
        allow_private_urls="127.0.0.1",
        worker_concurrency=workers,
    )
    started = time.monotonic()
    with (
        BackgroundServer(create_fake_provider_app(fake)) as provider,
        BackgroundServer(create_app(settings, workers=workers), port=port) as service,
    ):
        console.print(f"fake provider  {provider.url}/v1   (latency ~{latency_ms:.0f} ms)")
        console.print(f"service        {service.url}/api/v1/image_studio")
        console.print(f"dashboard      {service.url}/")
        client = ApiClient(service.url)
        try:
            job_id = f"demo-{uuid.uuid4().hex[:8]}"
            response = client.submit(seed_example(provider.url, job_id, api_key=DEMO_KEY))
            response.raise_for_status()
            job = follow(client, job_id, console)
            console.print(summary_table(job, client.images(job_id)))
            results = (settings.data_dir / "results" / job["id"]).resolve()
            elapsed = time.monotonic() - started
            console.print(
                f"status {job['status']}: {job['counts']['succeeded']}/{job['counts']['total']}"
                f" images in {elapsed:.1f}s"
            )
            console.print(f"results in {results}")
            if keep:
                _keep_up(console, f"{service.url}/#/jobs/{job_id}")
        finally:
            client.close()
    return 0 if job["status"] == "succeeded" else 1


def _keep_up(console: Console, page: str) -> None:
    """Keep the service (and its dashboard) up until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"dashboard of this job: {page}")
    console.print("the service stays up (--keep); Ctrl-C (or SIGTERM) stops it")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
