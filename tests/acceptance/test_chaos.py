"""Chaos on PostgreSQL: three real ``imagestudio worker`` processes, one SIGKILLed every
second or two and restarted, PostgreSQL restarted once, a provider that fails 10% of calls
with 500s and answers 429 above a concurrency limit lower than the workers' slots.

Every image must end succeeded, with exactly one stored result (the one the database names),
nothing left queued or running, and attempts within the limit. The test prints provider calls
per image (p50, max) from the fake provider's call log.

It runs twice: results in the local folder, and in an S3 bucket on a real S3 HTTP server
(moto's, ``testkit.s3``; the workers reach it through the usual AWS settings), where exactly
the objects the database names must be left, one per image.

The PostgreSQL restart restarts the local cluster (``pg_ctlcluster``), which drops every
session on it, other test runs' included: ``IMAGESTUDIO_CHAOS_PG_RESTART=0`` skips it.
``bench/chaos.py`` is the longer run (120+ images, 10+ kills).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import s3_settings

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.providers.fake.state import key_fingerprint
from imagestudio.runtime.services import Services, open_services
from imagestudio.settings import Settings
from testkit.fleet import (
    WorkerFleet,
    calls_per_image,
    image_counts,
    pg_restart_enabled,
    restart_postgresql,
    worker_env,
)
from testkit.payloads import batch_payload
from testkit.s3 import S3Server
from testkit.settings import loopback_settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKERS, SLOTS = 3, 3
PROVIDER_CONCURRENCY = 2  # below WORKERS * SLOTS: some calls answer 429
LATENCY_MS, ERROR_RATE = 150.0, 0.1
LEASE_SECONDS, MAX_ATTEMPTS = 2.0, 8
JOBS = (("alice", "sk-chaos-alice-0001", (4,) * 6), ("bob", "sk-chaos-bob-0002", (4,) * 4))
TOTAL = sum(sum(shape) for _, _, shape in JOBS)
SIZE = 256
MIN_KILLS = 5
KILL_EVERY = (1.0, 2.0)
MIN_UPTIME = 0.5  # a worker is killed only after it has been working this long
PG_RESTART_AT = 0.4  # share of the images done
TIME_LIMIT = 180.0
TEMP_PREFIX = ".tmp-"  # the local storage's in-progress writes
S3_PREFIX = "chaos"


@pytest.fixture
def provider() -> Iterator[BackgroundServer]:
    config = FakeProviderConfig(
        latency_ms=LATENCY_MS,
        latency_dist="uniform",
        error_rate=ERROR_RATE,
        concurrency=PROVIDER_CONCURRENCY,
        seed=11,
    )
    with BackgroundServer(create_fake_provider_app(config)) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def storage_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def bucket(request: pytest.FixtureRequest, storage_kind: str) -> tuple[S3Server, str] | None:
    """The S3 server and the bucket the results go to, or None for the local folder."""
    if storage_kind != "s3":
        return None
    server: S3Server = request.getfixturevalue("s3")
    name: str = request.getfixturevalue("s3_bucket")
    return server, name


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, bucket: tuple[S3Server, str] | None) -> Settings:
    extra = s3_settings(*bucket, prefix=S3_PREFIX) if bucket is not None else {}
    return loopback_settings(tmp_path / "data", pg_url, max_attempts=MAX_ATTEMPTS, **extra)


# ---------------------------------------------------------------------------- the chaos


@dataclass
class Run:
    seconds: float = 0.0
    pg_restart_at: float | None = None
    pg_restart_took: float | None = None
    timed_out: bool = False


def _quota(kills: int, done_at_kill: int) -> float:
    """A kill is also due once this many more images succeeded since the last one: the
    kills still owed spread over the work left, so a fast machine sees them all too."""
    return (TOTAL - done_at_kill) / (max(MIN_KILLS - kills, 0) + 1)


async def _chaos(services: Services, fleet: WorkerFleet, job_pks: list[str]) -> Run:
    """Kill a worker every 1-2 s (or sooner, see ``_quota``), restart PostgreSQL once, until
    nothing is queued or running."""
    rng, run = random.Random(5), Run()
    started = time.monotonic()
    next_kill, done_at_kill, done = started + rng.uniform(*KILL_EVERY), 0, 0
    restart: asyncio.Task[float] | None = None
    try:
        while True:
            now = time.monotonic()
            counts = await image_counts(services.store, job_pks)
            if counts is not None and counts["queued"] + counts["running"] == 0:
                break
            done = counts["succeeded"] if counts is not None else done
            if now - started > TIME_LIMIT:
                run.timed_out = True
                break
            await fleet.replace_exited()
            due = now >= next_kill or done - done_at_kill >= _quota(fleet.kills, done_at_kill)
            if due and await fleet.kill_one(rng):
                next_kill, done_at_kill = now + rng.uniform(*KILL_EVERY), done
            if pg_restart_enabled() and restart is None and done >= PG_RESTART_AT * TOTAL:
                run.pg_restart_at = now - started
                restart = asyncio.create_task(restart_postgresql())
            await asyncio.sleep(0.05)
        run.seconds = time.monotonic() - started
    finally:
        if restart is not None:
            run.pg_restart_took = await restart  # never leave PostgreSQL down
    return run


# ---------------------------------------------------------------------------- what happened


def _result_files(
    settings: Settings, job_pk: str, bucket: tuple[S3Server, str] | None
) -> tuple[list[str], list[str]]:
    """Final files and leftover partial writes in the job's results folder, or its objects
    in the bucket (a put is whole or absent: no partial writes there)."""
    if bucket is not None:
        server, name = bucket
        keys = server.keys(name, f"{S3_PREFIX}/{job_pk}/")
        return [key.rsplit("/", 1)[1] for key in keys], []
    folder = settings.data_dir / "results" / job_pk
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return (
        [n for n in names if not n.startswith(TEMP_PREFIX)],
        [n for n in names if n.startswith(TEMP_PREFIX)],
    )


async def _submit_jobs(services: Services, provider: BackgroundServer) -> list[tuple[str, str]]:
    jobs = []
    for user, key, shape in JOBS:
        payload = batch_payload(
            provider.url,
            f"chaos-{user}",
            images_per_sku=shape,
            api_key=key,
            user_id=user,
            size=SIZE,
        )
        result = await services.jobs.submit(payload, None)
        assert result.created
        jobs.append((result.job.id, key))
    return jobs


@pytest.mark.timeout(360)
async def test_chaos_every_image_succeeds_once(
    settings: Settings,
    bucket: tuple[S3Server, str] | None,
    provider: BackgroundServer,
    capsys: pytest.CaptureFixture[str],
    record_property: Any,
) -> None:
    async with open_services(settings) as services:
        jobs = await _submit_jobs(services, provider)
        env = worker_env(
            settings,
            LEASE_SECONDS=str(LEASE_SECONDS),
            POLL_INTERVAL="0.1",
            BACKOFF_BASE_SECONDS="0.05",
            BACKOFF_MAX_SECONDS="0.5",
            MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        )
        if bucket is not None:  # the workers find the bucket through the usual AWS settings
            env.update(bucket[0].env(), IMAGESTUDIO_STORAGE_URL=str(settings.storage_url))
        fleet = WorkerFleet(env, settings.data_dir / "logs", WORKERS, SLOTS, min_uptime=MIN_UPTIME)
        try:
            await fleet.start()
            run = await _chaos(services, fleet, [pk for pk, _ in jobs])
        finally:
            await fleet.stop(grace=0)  # teardown: no drain needed
        facts = [
            (pk, key, await services.store.images(pk), await services.store.attempts(pk))
            for pk, key in jobs
        ]
    async with httpx.AsyncClient(base_url=provider.url) as client:
        stats = (await client.get("/_fake/stats")).json()

    images = [image for _, _, job_images, _ in facts for image in job_images]
    attempts = [a for _, _, _, job_attempts in facts for a in job_attempts]
    calls = [c for c in stats["calls"] if c["prompt"] is not None]
    per_image, stray = calls_per_image(
        calls, [(key_fingerprint(key) or "", imgs, atts) for _, key, imgs, atts in facts]
    )
    counts = [per_image[image.id] for image in images]
    totals = stats["totals"]
    lost = [int(a.worker.rsplit(":", 2)[1]) for a in attempts if a.outcome == "lost"]
    orphaned = sum(1 for pid in lost if pid in fleet.killed_pids)
    report = (
        f"\nchaos: {len(images)} images in {run.seconds:.1f} s; {fleet.kills} workers SIGKILLed"
        f" ({orphaned} attempts orphaned by kills, {len(lost) - orphaned} lapsed while their"
        " worker lived); PostgreSQL restart "
        + (
            f"at {run.pg_restart_at:.1f} s (took {run.pg_restart_took:.1f} s)"
            if run.pg_restart_at is not None and run.pg_restart_took is not None
            else "skipped"
        )
        + f"\nchaos: provider calls per image p50 {statistics.median(counts):g}, max {max(counts)}"
        f" ({totals['requests']} calls: {totals['ok']} ok, {totals['500']} x 500,"
        f" {totals['429']} x 429, peak {totals['peak_in_flight']} in flight;"
        f" {stray} fit no attempt)"
        f"\nchaos: workers that exited while starting: {fleet.boot_exits or 'none'}\n"
    )
    with capsys.disabled():
        sys.stdout.write(report)
    record_property("chaos_calls_per_image_p50", statistics.median(counts))
    record_property("chaos_calls_per_image_max", max(counts))
    record_property("chaos_seconds", round(run.seconds, 1))

    failed = [(i.stem, i.status, i.attempts, i.error) for i in images if i.status != "succeeded"]
    assert not run.timed_out, f"not done in {TIME_LIMIT}s: {failed}\n{fleet.log_tails()}"
    assert failed == [], f"images did not succeed: {failed}"
    assert len(images) == TOTAL
    assert fleet.crashes == [], f"workers died on their own:\n{fleet.log_tails()}"
    assert fleet.kills >= MIN_KILLS, f"only {fleet.kills} kills: the job ended too fast"
    if pg_restart_enabled():
        assert run.pg_restart_took is not None, "PostgreSQL was not restarted"
    assert all(1 <= i.attempts <= MAX_ATTEMPTS for i in images), [i.attempts for i in images]
    wins = Counter(a.image_id for a in attempts if a.outcome == "succeeded")
    assert wins == Counter({i.id: 1 for i in images}), "every image succeeds exactly once"
    assert all(a.ended_at is not None for a in attempts), "an attempt was left open"

    partials = 0
    for pk, _, job_images, _ in facts:
        files, partial = _result_files(settings, pk, bucket)
        keys = sorted(i.result_key.rsplit("/", 1)[1] for i in job_images if i.result_key)
        extra, missing = sorted(set(files) - set(keys)), sorted(set(keys) - set(files))
        assert files == keys, f"one stored result per image, as named: {extra=} {missing=}"
        assert len(keys) == len(job_images)
        partials += len(partial)
    assert partials <= fleet.kills * SLOTS  # a SIGKILL mid-write leaves a temp file, at worst
    if bucket is not None:  # nothing anywhere else in the bucket either
        assert len(bucket[0].keys(bucket[1])) == TOTAL
    assert sum(counts) + stray == len(calls) <= len(attempts)
