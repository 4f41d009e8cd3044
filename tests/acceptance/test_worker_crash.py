"""Real ``imagestudio worker`` processes: a killed worker loses and duplicates nothing, a
stopped one drains.

The job is submitted in this process; the work is done by worker subprocesses sharing the
database and the data dir (so the secret key and the results folder), against a real fake
provider on loopback. The test process only reads the database to decide when to strike.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import text

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import TERMINAL_JOB_STATUSES
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.runtime.services import Services, open_services
from imagestudio.settings import Settings
from imagestudio.store.records import ImageRecord
from testkit.fleet import imagestudio_process, worker_env
from testkit.payloads import batch_payload
from testkit.settings import loopback_settings

LATENCY_MS = 400
LEASE_SECONDS = 2.0
POLL = 0.05  # how often this test looks at the database
IMAGES_PER_SKU = (4, 4, 4)
TOTAL = sum(IMAGES_PER_SKU)
SIZE = 1024
STARTUP_TIMEOUT = 30.0
FINISH_TIMEOUT = 60.0
TEMP_PREFIX = ".tmp-"  # the local storage's in-progress writes


@pytest.fixture
def provider() -> Iterator[BackgroundServer]:
    app = create_fake_provider_app(FakeProviderConfig(latency_ms=LATENCY_MS, seed=7))
    with BackgroundServer(app) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return loopback_settings(
        tmp_path / "data", db_url, lease_seconds=LEASE_SECONDS, poll_interval=0.1
    )


class WorkerProcess:
    """One ``imagestudio worker --concurrency N`` subprocess, its output in a log file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc, self.log = proc, log

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            pytest.fail(f"worker exited early ({self.proc.returncode}):\n{self.output()}")

    async def wait(self, seconds: float) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), seconds)
        except TimeoutError:
            pytest.fail(f"worker still running after {seconds}s:\n{self.output()}")


@asynccontextmanager
async def worker_process(
    settings: Settings, name: str, concurrency: int = 4
) -> AsyncIterator[WorkerProcess]:
    env = worker_env(settings, LEASE_SECONDS=str(LEASE_SECONDS), POLL_INTERVAL="0.1")
    log = settings.data_dir / f"{name}.log"
    args = ("worker", "--concurrency", str(concurrency))
    async with imagestudio_process(*args, env=env, log=log) as proc:
        yield WorkerProcess(proc, log)


async def _submitted(services: Services, provider: BackgroundServer, job_id: str) -> str:
    payload = batch_payload(provider.url, job_id, images_per_sku=IMAGES_PER_SKU, size=SIZE)
    result = await services.jobs.submit(payload, None)
    assert result.created
    assert result.job.total == TOTAL
    return result.job.id


Predicate = Callable[[list[ImageRecord]], bool]


async def _wait_images(
    services: Services, job_pk: str, predicate: Predicate, worker: WorkerProcess, what: str
) -> list[ImageRecord]:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        images = await services.store.images(job_pk)
        if predicate(images):
            return images
        worker.check_alive()
        if time.monotonic() > deadline:
            states = Counter(i.status for i in images)
            pytest.fail(f"no {what} within {STARTUP_TIMEOUT}s ({states}):\n{worker.output()}")
        await asyncio.sleep(POLL)


async def _wait_job_end(services: Services, job_id: str, worker: WorkerProcess) -> str:
    deadline = time.monotonic() + FINISH_TIMEOUT
    while True:
        job = await services.store.get_job(None, job_id)
        if job.status in TERMINAL_JOB_STATUSES:
            return job.status
        worker.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"job still {job.status} after {FINISH_TIMEOUT}s:\n{worker.output()}")
        await asyncio.sleep(POLL)


def _count(images: list[ImageRecord], status: str) -> int:
    return sum(1 for image in images if image.status == status)


def _some_done_some_running(images: list[ImageRecord]) -> bool:
    return _count(images, "succeeded") >= 1 and _count(images, "running") >= 3


def _result_files(settings: Settings, job_pk: str) -> tuple[list[str], list[str]]:
    """Final files and leftover partial writes in the job's results folder."""
    folder = settings.data_dir / "results" / job_pk
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    return (
        [n for n in names if not n.startswith(TEMP_PREFIX)],
        [n for n in names if n.startswith(TEMP_PREFIX)],
    )


@pytest.mark.timeout(180)
async def test_killed_worker_loses_and_duplicates_nothing(
    settings: Settings, provider: BackgroundServer
) -> None:
    async with open_services(settings) as services:
        job_pk = await _submitted(services, provider, "crash-1")

        async with worker_process(settings, "worker-1") as first:
            await _wait_images(
                services, job_pk, _some_done_some_running, first, "progress to strike at"
            )
            first.proc.kill()  # SIGKILL: no drain, no release, leases left to expire
            assert await first.wait(10) == -signal.SIGKILL
        at_kill = await services.store.images(job_pk)
        orphaned = {i.id for i in at_kill if i.status == "running"}
        assert orphaned, "the killed worker held no task; the crash proved nothing"
        # Had the kill landed between an orphan's storage write and its finish, its result
        # would be on disk with no row naming it; make that so, for each orphan, under the
        # name its attempt would have used (``<position>-<sku>-<stem>-a<fence>``).
        fences = {a.image_id: a.fence for a in await services.store.attempts(job_pk)}
        folder = settings.data_dir / "results" / job_pk
        folder.mkdir(parents=True, exist_ok=True)
        planted = set()
        for image in at_kill:
            if image.id in orphaned:
                name = f"{image.position:04d}-{image.sku}-{image.stem}-a{fences[image.id]}.png"
                (folder / name).write_bytes(b"written by the killed worker")
                planted.add(name)

        async with worker_process(settings, "worker-2") as second:
            status = await _wait_job_end(services, "crash-1", second)
            second.proc.send_signal(signal.SIGTERM)  # let it finish its clean-up, then look
            assert await second.wait(30) == 0, second.output()

        progress = await services.store.progress(None, "crash-1")
        images = await services.store.images(job_pk)
        attempts = await services.store.attempts(job_pk)

    assert status == "succeeded", [(i.stem, i.status, i.error) for i in images]
    assert progress.counts["succeeded"] == TOTAL
    assert progress.counts["running"] == progress.counts["queued"] == 0
    assert all(i.status == "succeeded" and i.result_key for i in images)
    assert all(1 <= i.attempts <= settings.max_attempts for i in images)
    # The orphans came back after their lease and ran again: a second attempt each.
    assert all(i.attempts >= 2 for i in images if i.id in orphaned)

    wins = Counter(a.image_id for a in attempts if a.outcome == "succeeded")
    assert wins == Counter({i.id: 1 for i in images}), "every image succeeds exactly once"
    assert len(attempts) == sum(i.attempts for i in images)
    # The dead worker's calls are closed in the timeline as lost, not left open forever.
    assert all(a.ended_at is not None for a in attempts)
    assert {a.image_id for a in attempts if a.outcome == "lost"} == orphaned
    assert all(i.error is None for i in images)

    files, partials = _result_files(settings, job_pk)
    keys = sorted(i.result_key.rsplit("/", 1)[1] for i in images if i.result_key)
    assert files == keys, "exactly one result file per image: the one the database names"
    assert not planted & set(files), "a killed attempt's result was left behind"
    assert all(i.result_key.startswith(f"{job_pk}/") for i in images if i.result_key)
    assert not partials or len(partials) <= len(orphaned)  # a SIGKILL mid-write, at worst
    for image in images:
        assert image.result_key is not None
        with Image.open(settings.data_dir / "results" / image.result_key) as result:
            assert (result.format, result.size) == ("PNG", (SIZE, SIZE))
    assert progress.job.result_image_urls == [i.result_url for i in images]

    # Every provider call belongs to a recorded attempt: no call was made twice for one.
    async with httpx.AsyncClient(base_url=provider.url) as client:
        totals = (await client.get("/_fake/stats", params={"calls": "0"})).json()["totals"]
    assert TOTAL <= totals["ok"] <= totals["requests"] <= len(attempts)


@pytest.mark.timeout(120)
async def test_sigterm_drains_in_flight_tasks_and_exits_zero(
    settings: Settings, provider: BackgroundServer
) -> None:
    async with open_services(settings) as services:
        job_pk = await _submitted(services, provider, "drain-1")

        async with worker_process(settings, "worker-1") as worker:
            before = await _wait_images(
                services,
                job_pk,
                lambda images: _count(images, "running") >= 2,
                worker,
                "tasks in flight",
            )
            in_flight = {i.id for i in before if i.status == "running"}
            stopped_at = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            code = await worker.wait(30)
            drain_time = time.monotonic() - stopped_at
        assert code == 0, worker.output()
        # It finished what it held (each call takes LATENCY_MS) instead of waiting a grace out.
        assert drain_time < 15

        images = await services.store.images(job_pk)
        attempts = await services.store.attempts(job_pk)
        by_id = {i.id: i for i in images}
        assert _count(images, "running") == 0
        assert all(by_id[i].status == "succeeded" for i in in_flight), "in-flight work finished"
        # Nothing was released half-done or failed, and no lease is left behind.
        assert all(i.status in ("succeeded", "queued") for i in images)
        assert all(a.outcome == "succeeded" for a in attempts)
        assert all(a.ended_at is not None for a in attempts)
        assert all(i.attempts == (1 if i.status == "succeeded" else 0) for i in images)
        assert _count(images, "queued") > 0, "the job was stopped part-way"

        # The rest is picked up by the next worker, as usual.
        async with worker_process(settings, "worker-2") as second:
            status = await _wait_job_end(services, "drain-1", second)
        assert status == "succeeded"
        files, _ = _result_files(settings, job_pk)
        assert len(files) == TOTAL


async def _open_transactions(services: Services) -> int:
    """Other sessions inside a transaction or a statement (PostgreSQL).

    ``xact_start``, not ``state``: a client frozen between the extended protocol's messages
    leaves its session ``active`` while it holds its locks.
    """
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
    )
    async with services.store.engine.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def _freeze(services: Services, worker: WorkerProcess) -> None:
    """SIGSTOP the worker outside any transaction, so it stalls holding only its leases.

    (A process frozen inside a transaction holds row locks no lease can take back; that is
    the database's ``idle_in_transaction_session_timeout``'s job, not this test's.)
    """
    for _ in range(50):
        worker.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.1)  # a statement in flight ends, its session turns idle
        if await _open_transactions(services) == 0:
            return
        worker.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.02)
    pytest.fail("could not freeze the worker outside a transaction")


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_stalled_worker_cannot_overwrite_the_newer_attempt(
    tmp_path: Path, pg_url: str, provider: BackgroundServer
) -> None:
    settings = loopback_settings(tmp_path / "data", pg_url)
    async with open_services(settings) as services:
        job_pk = await _submitted(services, provider, "stall-1")

        async with worker_process(settings, "stalled") as stalled:
            await _wait_images(
                services, job_pk, _some_done_some_running, stalled, "progress to stall at"
            )
            await _freeze(services, stalled)
            held = {i.id for i in await services.store.images(job_pk) if i.status == "running"}
            assert held, "the stalled worker held no task"

            async with worker_process(settings, "rescuer") as rescuer:
                status = await _wait_job_end(services, "stall-1", rescuer)
            assert status == "succeeded"
            winners = {i.id: i.result_key for i in await services.store.images(job_pk)}

            # Wake the stale worker: its calls return, its leases are gone. Stop it; it must
            # drain without writing over anything and exit cleanly.
            stalled.proc.send_signal(signal.SIGCONT)
            stalled.proc.send_signal(signal.SIGTERM)
            assert await stalled.wait(30) == 0, stalled.output()

        images = await services.store.images(job_pk)
        attempts = await services.store.attempts(job_pk)

    assert {i.id: i.result_key for i in images} == winners, "a stale attempt overwrote a result"
    assert all(i.status == "succeeded" for i in images)
    wins = Counter(a.image_id for a in attempts if a.outcome == "succeeded")
    assert wins == Counter({i.id: 1 for i in images})
    assert all(i.attempts >= 2 for i in images if i.id in held)
    assert {a.image_id for a in attempts if a.outcome == "lost"} == held
    assert all(a.ended_at is not None for a in attempts)
    files, _ = _result_files(settings, job_pk)
    assert files == sorted(key.rsplit("/", 1)[1] for key in winners.values() if key)
