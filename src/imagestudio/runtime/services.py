"""Build the long-lived parts (store, storage, fetcher, providers, worker) from settings.

Used by the API's lifespan, ``imagestudio worker`` and the tests, so that all of them run
the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from imagestudio.domain import FILES_PATH
from imagestudio.imaging.fetch import SourceFetcher
from imagestudio.imaging.pool import ImagingExecutor, cpu_count, open_imaging
from imagestudio.jobs.intake import IntakeLimits
from imagestudio.jobs.service import JobService
from imagestudio.observability.metrics import Metrics
from imagestudio.policy.governor import GovernorParams
from imagestudio.policy.quota import Quota
from imagestudio.policy.retry import RetryPolicy
from imagestudio.runtime.memory import cap_malloc_arenas, release_freed_memory
from imagestudio.scheduler.probe import NO_PROBE, Probe
from imagestudio.scheduler.runner import ProviderPool, RunnerConfig, TaskRunner
from imagestudio.scheduler.worker import Worker, WorkerConfig
from imagestudio.security.crypto import SecretBox, load_or_create_key
from imagestudio.security.http import Outbound, OutboundPolicy
from imagestudio.security.netguard import Resolver, system_resolve
from imagestudio.settings import Settings
from imagestudio.storage import open_storage
from imagestudio.storage.base import ResultStorage
from imagestudio.store.db import create_engine, migrate_async
from imagestudio.store.store import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    storage: ResultStorage
    box: SecretBox
    outbound: Outbound
    providers: ProviderPool
    runner: TaskRunner
    metrics: Metrics
    wakeup: asyncio.Event
    jobs: JobService
    imaging: ImagingExecutor

    def wake_workers(self) -> None:
        """Tell in-process workers new work is there, so they claim without waiting a poll."""
        self.wakeup.set()

    def worker(self, concurrency: int, *, wakeup: asyncio.Event | None = None) -> Worker:
        s = self.settings
        config = WorkerConfig(
            concurrency=concurrency,
            lease_seconds=s.lease_seconds,
            poll_interval=s.poll_interval,
            heartbeat_interval=min(2.0, s.lease_seconds / 3),
        )
        return Worker(self.store, self.runner, config, wakeup=wakeup or self.wakeup)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        max_rate_limit_snoozes=settings.max_rate_limit_snoozes,
        max_billed_timeouts=settings.max_billed_timeouts,
        deadline_seconds=settings.image_deadline_seconds,
        backoff_base=settings.backoff_base_seconds,
        backoff_max=settings.backoff_max_seconds,
    )


def imaging_processes(settings: Settings) -> int:
    """Worker processes for post-processing: the setting, else one per core (0: threads)."""
    if settings.imaging_processes is None:
        return cpu_count()
    return settings.imaging_processes


def files_url(settings: Settings) -> str:
    """Where the API serves results (``public_base_url`` + the files route): the result URL
    of every key the storage has no public address for (``ResultStorage.public_url``)."""
    base = (settings.public_base_url or "").rstrip("/")
    return f"{base}{FILES_PATH}"


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    migrate: bool = True,
    probe: Probe = NO_PROBE,
    resolver: Resolver = system_resolve,
) -> AsyncIterator[Services]:
    """Everything a process needs, closed in order when the block ends. ``probe`` sees the
    workers' steps and governor moves (benchmarks, tests); ``resolver`` answers every DNS
    lookup of the submission check and of the guarded path (tests make names rebind)."""
    cap_malloc_arenas()  # before the threads (SQLite's, the executor's) take arenas of their own
    url = settings.effective_database_url
    if migrate:
        await migrate_async(url)
    store = Store(
        create_engine(url),
        reader=create_engine(url, reads_only=True) if settings.is_sqlite else None,
        governor=GovernorParams(initial_window=settings.governor_initial_window),
        pins=settings.provider_pins(),
    )
    box = SecretBox(load_or_create_key(_secret(settings), settings.data_dir))
    storage = open_storage(settings.effective_storage_url)
    # Every outbound request of this process (sources, provider calls, result URLs,
    # webhooks) goes through this one guarded path (security.http).
    http = Outbound(
        OutboundPolicy.of(settings.private_allow_list(), resolver),
        max_bytes=settings.source_max_bytes,
        deadline=settings.source_timeout_seconds,
    )
    config = RunnerConfig(
        policy=retry_policy(settings),
        max_pixels=settings.max_pixels,
        provider_timeout=settings.provider_timeout_seconds,
        files_url=files_url(settings),
    )
    providers = ProviderPool(
        box,
        store,
        config.provider_timeout,
        outbound=http,
        max_answer_bytes=settings.provider_max_answer_bytes,
    )
    fetcher = SourceFetcher(
        http, max_bytes=settings.source_max_bytes, timeout=settings.source_timeout_seconds
    )
    metrics = Metrics()
    imaging = open_imaging(imaging_processes(settings))
    runner = TaskRunner(
        metrics=metrics,
        store=store,
        storage=storage,
        fetcher=fetcher,
        providers=providers,
        config=config,
        probe=probe,
        imaging=imaging,
    )
    wakeup = asyncio.Event()
    jobs = JobService(
        store,
        storage,
        box,
        limits=IntakeLimits(
            max_images=settings.max_images_per_job, max_prompt_chars=settings.max_prompt_chars
        ),
        quota=Quota(max_jobs=settings.max_jobs_in_flight, max_images=settings.max_images_in_flight),
        quota_retry_after=settings.quota_retry_after_seconds,
        allow_list=settings.private_allow_list(),
        resolver=resolver,
        on_new_work=wakeup.set,
        release_memory=release_freed_memory,
    )
    try:
        await imaging.start()
        yield Services(
            settings, store, storage, box, http, providers, runner, metrics, wakeup, jobs, imaging
        )
    finally:
        await imaging.aclose()
        await providers.aclose()
        await http.aclose()
        await store.close()


def _secret(settings: Settings) -> str | None:
    return settings.secret_key.get_secret_value() if settings.secret_key else None
