"""Phases 1 and 3: images/s and claim latency with 400, 10,000 or 100,000 images queued.

For each database, depth and shape (one job, or many users with a job each), a new database
is filled through the real intake (``JobService.submit``), then:

- claim latency: ``Store.claim_batch(limit=8)`` timed alone, each claim's tasks released
  at once (not timed), so the queue keeps its depth; up to ``claims`` calls within
  ``claim_budget`` seconds;
- throughput: one in-process worker with SLOTS slots runs against the zero-latency fake;
  the probe counts finishes, and images/s is taken over ``measured`` completions after
  ``warmup`` (the queue stays within ``warmup + measured`` of its depth). The worker's own
  claims in that window are timed too (claims under load).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.scale.rig import SLOTS, Fake, Shape, database, payload, settings
from imagestudio.runtime.services import Services, open_services
from imagestudio.scheduler.probe import Probe, Stage
from imagestudio.store.store import Store

CLAIM_LIMIT = 8


@dataclass
class QueueRun:
    backend: str
    depth: int
    shape: Shape
    seed_seconds: float = 0.0
    claims: list[float] = field(default_factory=list)  # direct claim_batch seconds
    worker_claims: list[float] = field(default_factory=list)  # the worker's, in the window
    completions: int = 0  # finishes counted in the measured window
    window: float = 0.0  # its seconds
    cut: bool = False  # the window ended on the time budget, not the count
    error: str | None = None

    @property
    def per_second(self) -> float | None:
        return self.completions / self.window if self.window > 0 and self.completions else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


class Window(Probe):
    """Counts finishes; opens a window after ``warmup`` of them and closes it ``measured``
    later, timing the worker's claims inside it."""

    def __init__(self, warmup: int, measured: int) -> None:
        self.warmup, self.measured = warmup, measured
        self.finishes = 0
        self.opened: float | None = None
        self.closed: float | None = None
        self.claims: list[float] = []
        self.done = asyncio.Event()

    def stage(self, name: Stage, seconds: float) -> None:
        if name == Stage.CLAIM and self.opened is not None and self.closed is None:
            self.claims.append(seconds)
        if name != Stage.FINISH:
            return
        self.finishes += 1
        if self.finishes == self.warmup:
            self.opened = time.perf_counter()
        elif self.finishes == self.warmup + self.measured:
            self.closed = time.perf_counter()
            self.done.set()


async def seed(services: Services, fake: Fake, shape: Shape) -> float:
    started = time.perf_counter()
    for user in range(shape.users):
        await services.jobs.submit(payload(fake, shape.per_user, user), None)
    return time.perf_counter() - started


async def time_claims(store: Store, count: int, budget: float) -> list[float]:
    """Seconds per ``claim_batch``; the claimed tasks are released, so the depth holds."""
    times: list[float] = []
    deadline = time.monotonic() + budget
    while len(times) < count and (len(times) < 3 or time.monotonic() < deadline):
        began = time.perf_counter()
        claim = await store.claim_batch("scale-bench", CLAIM_LIMIT, 60.0)
        times.append(time.perf_counter() - began)
        if not claim.tasks:
            raise RuntimeError("a claim found nothing to start")
        for task in claim.tasks:
            await store.release(task)
    return times


async def _throughput(services: Services, window: Window, run: QueueRun, budget: float) -> None:
    stop = asyncio.Event()
    worker = services.worker(SLOTS)
    working = asyncio.create_task(worker.run(stop))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(window.done.wait(), budget)
    finally:
        ended = time.perf_counter()
        stop.set()
        try:
            await asyncio.wait_for(working, 60)
        except TimeoutError:
            working.cancel()
    if window.opened is None:
        raise RuntimeError(f"only {window.finishes} finished within {budget:.0f} s")
    run.cut = window.closed is None
    run.window = (window.closed or ended) - window.opened
    run.completions = window.finishes - window.warmup if run.cut else window.measured
    run.worker_claims = window.claims


@dataclass(frozen=True)
class QueueConfig:
    warmup: int
    measured: int
    claims: int
    claim_budget: float
    run_budget: float


async def measure(
    backend: str, depth: int, shape: Shape, fake: Fake, workdir: Path, config: QueueConfig
) -> QueueRun:
    run = QueueRun(backend, depth, shape)
    window = Window(min(config.warmup, depth // 8), min(config.measured, depth // 2))
    async with database(backend, workdir) as url:
        data_dir = workdir / f"q-{backend}-{depth}-{shape.users}"
        async with open_services(
            settings(data_dir, url, fake), migrate=False, probe=window
        ) as services:
            run.seed_seconds = await seed(services, fake, shape)
            run.claims = await time_claims(services.store, config.claims, config.claim_budget)
            await _throughput(services, window, run, config.run_budget)
    return run
