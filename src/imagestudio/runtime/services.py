"""Build the long-lived parts (store, storage, fetcher, providers, worker) from settings.

Used by the API's lifespan, ``imagestudio worker`` and the tests, so that all of them run
the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import SecretStr

from imagestudio.domain import FILES_PATH
from imagestudio.errors import ImageStudioError
from imagestudio.imaging.fetch import SourceFetcher
from imagestudio.imaging.pool import ImagingExecutor, cpu_count, open_imaging
from imagestudio.jobs.intake import IntakeLimits
from imagestudio.jobs.service import JobService
from imagestudio.observability.metrics import Metrics
from imagestudio.policy.cost import Price
from imagestudio.policy.governor import GovernorParams
from imagestudio.policy.quota import Quota
from imagestudio.policy.retry import RetryPolicy
from imagestudio.policy.webhooks import RetryPlan
from imagestudio.runtime.memory import cap_malloc_arenas, release_freed_memory
from imagestudio.scheduler.probe import NO_PROBE, Probe
from imagestudio.scheduler.provider_pool import ProviderPool
from imagestudio.scheduler.runner import RunnerConfig, TaskRunner
from imagestudio.scheduler.webhooks import SenderConfig, WebhookSender
from imagestudio.scheduler.worker import Worker, WorkerConfig
from imagestudio.security.crypto import SecretBox, load_or_create_key
from imagestudio.security.http import Outbound, OutboundPolicy
from imagestudio.security.netguard import Resolver, system_resolve
from imagestudio.security.webhook_secret import webhook_secret_problem
from imagestudio.settings import Settings
from imagestudio.storage import S3Options, open_storage
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
    webhooks: WebhookSender

    def wake_workers(self) -> None:
        """Tell in-process workers new work is there, so they claim without waiting a poll."""
        self.wakeup.set()

    def worker(self, concurrency: int, *, wakeup: asyncio.Event | None = None) -> Worker:
        s = self.settings
        config = WorkerConfig(
            concurrency=concurrency,
            max_tasks=s.worker_max_tasks,
            lease_seconds=s.lease_seconds,
            poll_interval=s.poll_interval,
            heartbeat_interval=min(2.0, s.lease_seconds / 3),
        )
        return Worker(
            self.store,
            self.runner,
            config,
            wakeup=wakeup or self.wakeup,
            sidecar=self.webhooks.run,
        )


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        max_rate_limit_snoozes=settings.max_rate_limit_snoozes,
        max_billed_timeouts=settings.max_billed_timeouts,
        deadline_seconds=settings.image_deadline_seconds,
        backoff_base=settings.backoff_base_seconds,
        backoff_max=settings.backoff_max_seconds,
    )


def price_table(settings: Settings) -> dict[str, Price]:
    """The settings' price table (defaults and overrides) as the cost policy's values."""
    return {
        model: Price(
            text_input_per_mtok=row.text_input_per_mtok,
            image_input_per_mtok=row.image_input_per_mtok,
            output_per_mtok=row.output_per_mtok,
            per_image=dict(row.per_image),
            estimate=row.estimate,
        )
        for model, row in settings.price_table().items()
    }


def sender_config(settings: Settings) -> SenderConfig:
    """The webhook sender's settings; a malformed IMAGESTUDIO_WEBHOOK_SECRET stops the start."""
    secret = settings.webhook_secret
    if secret is not None:
        problem = webhook_secret_problem(secret.get_secret_value())
        if problem is not None:
            raise ImageStudioError(f"IMAGESTUDIO_WEBHOOK_SECRET {problem}")
    return SenderConfig(
        plan=RetryPlan(
            base=settings.webhook_backoff_base_seconds, max_age=settings.webhook_max_age_seconds
        ),
        timeout=settings.webhook_timeout_seconds,
        poll_interval=settings.webhook_poll_seconds,
        server_secret=secret.get_secret_value() if secret else None,
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


def s3_options(settings: Settings) -> S3Options:
    """The bucket's endpoint, region, credentials and URL style, from the AWS settings."""
    s = settings
    return S3Options(
        endpoint_url=s.aws_endpoint_url or None,
        public_endpoint_url=s.s3_public_endpoint_url or None,
        region=s.aws_region or None,
        profile=s.aws_profile or None,
        access_key_id=s.aws_access_key_id or None,
        secret_access_key=_reveal(s.aws_secret_access_key),
        session_token=_reveal(s.aws_session_token),
        path_style=s.s3_path_style,
        urls=s.s3_urls,
        public_base_url=s.s3_public_base_url or None,
        presign_seconds=s.s3_presign_seconds,
        acl=s.s3_acl or None,
    )


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
    storage = open_storage(settings.effective_storage_url, s3=s3_options(settings))
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
        prices=price_table(settings),
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
        server_webhook_secret=settings.webhook_secret is not None,
        release_memory=release_freed_memory,
    )
    webhooks = WebhookSender(
        store,
        box,
        http,
        sender_config(settings),
        metrics=metrics,
    )
    try:
        await imaging.start()
        yield Services(
            settings,
            store,
            storage,
            box,
            http,
            providers,
            runner,
            metrics,
            wakeup,
            jobs,
            imaging,
            webhooks,
        )
    finally:
        await imaging.aclose()
        await providers.aclose()
        await http.aclose()
        await storage.aclose()
        await store.close()


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() or None if secret is not None else None


def _secret(settings: Settings) -> str | None:
    return settings.secret_key.get_secret_value() if settings.secret_key else None
