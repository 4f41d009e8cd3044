"""Chaos on PostgreSQL: three real ``imagestudio worker`` processes, one SIGKILLed every
second or two and restarted, PostgreSQL restarted once, a provider that fails 10% of calls
with 500s and answers 429 above a concurrency limit lower than the workers' slots.

Every image must end succeeded, with exactly one stored result (the one the database names),
nothing left queued or running, and attempts within the limit. The test prints provider calls
per image (p50, max) from the fake provider's call log.

The PostgreSQL restart restarts the local cluster (``pg_ctlcluster``), which drops every
session on it, other test runs' included: ``IMAGESTUDIO_CHAOS_PG_RESTART=0`` skips it.
``bench/chaos.py`` is the longer run (120+ images, 10+ kills).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagestudio.background_server import BackgroundServer
from imagestudio.providers.fake_server import (
    FakeProviderConfig,
    create_fake_provider_app,
    key_fingerprint,
)
from imagestudio.services import Services, open_services
from imagestudio.settings import Settings
from imagestudio.store.models import AttemptRecord, ImageRecord
from imagestudio.submission import submit
from imagestudio.testing import batch_payload

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
SLACK = 0.05  # seconds between a worker's clock and the provider's (one machine)


def _pg_restart_enabled() -> bool:
    return os.environ.get("IMAGESTUDIO_CHAOS_PG_RESTART", "1").strip() != "0"


def _console_script() -> str:
    beside = Path(sys.executable).with_name("imagestudio")
    if not beside.exists():
        pytest.fail(f"the imagestudio console script is not installed beside {sys.executable}")
    return str(beside)


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


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url=pg_url,
        allow_private_urls="127.0.0.1",
        max_attempts=MAX_ATTEMPTS,
    )


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESTUDIO_")}
    env.update(
        IMAGESTUDIO_DATABASE_URL=settings.effective_database_url,
        IMAGESTUDIO_DATA_DIR=str(settings.data_dir.resolve()),
        IMAGESTUDIO_ALLOW_PRIVATE_URLS="127.0.0.1",
        IMAGESTUDIO_LEASE_SECONDS=str(LEASE_SECONDS),
        IMAGESTUDIO_POLL_INTERVAL="0.1",
        IMAGESTUDIO_BACKOFF_BASE_SECONDS="0.05",
        IMAGESTUDIO_BACKOFF_MAX_SECONDS="0.5",
        IMAGESTUDIO_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
    )
    return env


# ---------------------------------------------------------------------------- the workers


@dataclass
class Slot:
    """One of the worker places; a dead worker is replaced in the same slot."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    log: Path | None = None
    generation: int = 0
    up_since: float | None = None  # when it logged "worker started"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def poll_started(self) -> None:
        if self.up_since is None and self.alive() and self.log is not None:
            if "worker started" in self.log.read_text(encoding="utf-8", errors="replace"):
                self.up_since = time.monotonic()


@dataclass
class Fleet:
    """``WORKERS`` worker subprocesses kept alive. Only a worker up for ``MIN_UPTIME`` is
    killed, and never the last one up: a worker takes a while to start, and killing each as
    soon as it came up would prove nothing."""

    env: dict[str, str]
    logs: Path
    slots: list[Slot] = field(default_factory=list)
    kills: int = 0
    killed_pids: set[int] = field(default_factory=set)
    boot_exits: list[str] = field(default_factory=list)  # exited before working (DB down)
    crashes: list[str] = field(default_factory=list)  # exited on their own while working

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.slots = [Slot(i) for i in range(WORKERS)]
        for slot in self.slots:
            await self._spawn(slot)

    async def _spawn(self, slot: Slot) -> None:
        slot.generation += 1
        slot.up_since = None
        slot.log = self.logs / f"worker-{slot.index}-{slot.generation}.log"
        with slot.log.open("wb") as sink:
            slot.proc = await asyncio.create_subprocess_exec(
                _console_script(),
                "worker",
                "--concurrency",
                str(SLOTS),
                env=self.env,
                cwd=self.logs,  # no stray .env file
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def kill_one(self, rng: random.Random) -> bool:
        for slot in self.slots:
            slot.poll_started()
        up = [s for s in self.slots if s.alive() and s.up_since is not None]
        now = time.monotonic()
        ready = [s for s in up if s.up_since is not None and now - s.up_since >= MIN_UPTIME]
        if len(up) < 2 or not ready:
            return False
        slot = rng.choice(ready)
        assert slot.proc is not None
        slot.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(slot.proc.wait(), 10)
        self.kills += 1
        self.killed_pids.add(slot.proc.pid)
        await self._spawn(slot)
        return True

    async def replace_exited(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is not None:
                where = self.crashes if slot.up_since is not None else self.boot_exits
                where.append(f"worker {slot.index}.{slot.generation} exit {slot.proc.returncode}")
                await self._spawn(slot)

    def tails(self) -> str:
        logs = sorted(self.logs.glob("worker-*.log"), key=lambda p: p.stat().st_mtime)[-4:]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs)

    async def stop(self) -> None:
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 10)


async def _restart_postgresql() -> float:
    """Restart the local cluster (fast shutdown: every session is dropped)."""
    version = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        version[-1],
        "main",
        "restart",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"PostgreSQL restart failed: {output.decode(errors='replace')}"
    return time.monotonic() - started


# ---------------------------------------------------------------------------- the chaos


@dataclass
class Run:
    seconds: float = 0.0
    pg_restart_at: float | None = None
    pg_restart_took: float | None = None
    timed_out: bool = False


async def _counts(services: Services, job_pks: list[str]) -> Counter[str] | None:
    """Image statuses over the jobs; None while the database is unreachable."""
    counts: Counter[str] = Counter()
    try:
        for pk in job_pks:
            counts.update(image.status for image in await services.store.images(pk))
    except Exception:
        return None
    return counts


def _quota(kills: int, done_at_kill: int) -> float:
    """A kill is also due once this many more images succeeded since the last one: the
    kills still owed spread over the work left, so a fast machine sees them all too."""
    return (TOTAL - done_at_kill) / (max(MIN_KILLS - kills, 0) + 1)


async def _chaos(services: Services, fleet: Fleet, job_pks: list[str]) -> Run:
    """Kill a worker every 1-2 s (or sooner, see ``_quota``), restart PostgreSQL once, until
    nothing is queued or running."""
    rng, run = random.Random(5), Run()
    started = time.monotonic()
    next_kill, done_at_kill, done = started + rng.uniform(*KILL_EVERY), 0, 0
    restart: asyncio.Task[float] | None = None
    try:
        while True:
            now = time.monotonic()
            counts = await _counts(services, job_pks)
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
            if _pg_restart_enabled() and restart is None and done >= PG_RESTART_AT * TOTAL:
                run.pg_restart_at = now - started
                restart = asyncio.create_task(_restart_postgresql())
            await asyncio.sleep(0.05)
        run.seconds = time.monotonic() - started
    finally:
        if restart is not None:
            run.pg_restart_took = await restart  # never leave PostgreSQL down
    return run


# ---------------------------------------------------------------------------- what happened


def _result_files(settings: Settings, job_pk: str) -> tuple[list[str], list[str]]:
    """Final files and leftover partial writes in the job's results folder."""
    folder = settings.data_dir / "results" / job_pk
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return (
        [n for n in names if not n.startswith(TEMP_PREFIX)],
        [n for n in names if n.startswith(TEMP_PREFIX)],
    )


def _calls_per_image(
    calls: list[dict[str, Any]], jobs: list[tuple[str, list[ImageRecord], list[AttemptRecord]]]
) -> tuple[Counter[int], int]:
    """Provider calls per image id, and the calls that fit no recorded attempt.

    A call carries its job's key and its image's prompt (the same for many images of a job),
    and starts inside the window of the attempt that made it (one call per attempt at most).
    Within one (key, prompt), calls in start order take the fitting window that closes
    first: the greedy that matches the most calls to windows.
    """
    windows: dict[tuple[str, str], list[tuple[float, float, int]]] = defaultdict(list)
    for key, images, attempts in jobs:
        prompts = {image.id: image.prompt for image in images}
        for a in attempts:
            end = a.ended_at.timestamp() + SLACK if a.ended_at else float("inf")
            window = (a.started_at.timestamp() - SLACK, end, a.image_id)
            windows[(key, prompts[a.image_id])].append(window)
    per_image: Counter[int] = Counter()
    stray = 0
    for call in sorted(calls, key=lambda c: c["start"]):
        group = windows.get((call["key"], call["prompt"]), [])
        fits = [w for w in group if w[0] <= call["start"] <= w[1]]
        if not fits:
            stray += 1
            continue
        chosen = min(fits, key=lambda w: w[1])
        group.remove(chosen)
        per_image[chosen[2]] += 1
    return per_image, stray


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
        result = await submit(services, payload, None)
        assert result.created
        jobs.append((result.job.id, key))
    return jobs


@pytest.mark.timeout(360)
async def test_chaos_every_image_succeeds_once(
    settings: Settings,
    provider: BackgroundServer,
    capsys: pytest.CaptureFixture[str],
    record_property: Any,
) -> None:
    async with open_services(settings) as services:
        jobs = await _submit_jobs(services, provider)
        fleet = Fleet(_worker_env(settings), settings.data_dir / "logs")
        try:
            await fleet.start()
            run = await _chaos(services, fleet, [pk for pk, _ in jobs])
        finally:
            await fleet.stop()
        facts = [
            (pk, key, await services.store.images(pk), await services.store.attempts(pk))
            for pk, key in jobs
        ]
    async with httpx.AsyncClient(base_url=provider.url) as client:
        stats = (await client.get("/_fake/stats")).json()

    images = [image for _, _, job_images, _ in facts for image in job_images]
    attempts = [a for _, _, _, job_attempts in facts for a in job_attempts]
    calls = [c for c in stats["calls"] if c["prompt"] is not None]
    per_image, stray = _calls_per_image(
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
    assert not run.timed_out, f"not done in {TIME_LIMIT}s: {failed}\n{fleet.tails()}"
    assert failed == [], f"images did not succeed: {failed}"
    assert len(images) == TOTAL
    assert fleet.crashes == [], f"workers died on their own:\n{fleet.tails()}"
    assert fleet.kills >= MIN_KILLS, f"only {fleet.kills} kills: the job ended too fast"
    if _pg_restart_enabled():
        assert run.pg_restart_took is not None, "PostgreSQL was not restarted"
    assert all(1 <= i.attempts <= MAX_ATTEMPTS for i in images), [i.attempts for i in images]
    wins = Counter(a.image_id for a in attempts if a.outcome == "succeeded")
    assert wins == Counter({i.id: 1 for i in images}), "every image succeeds exactly once"
    assert all(a.ended_at is not None for a in attempts), "an attempt was left open"

    partials = 0
    for pk, _, job_images, _ in facts:
        files, partial = _result_files(settings, pk)
        keys = sorted(i.result_key.rsplit("/", 1)[1] for i in job_images if i.result_key)
        extra, missing = sorted(set(files) - set(keys)), sorted(set(keys) - set(files))
        assert files == keys, f"one stored result per image, as named: {extra=} {missing=}"
        assert len(keys) == len(job_images)
        partials += len(partial)
    assert partials <= fleet.kills * SLOTS  # a SIGKILL mid-write leaves a temp file, at worst
    assert sum(counts) + stray == len(calls) <= len(attempts)
