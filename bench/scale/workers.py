"""Phase 4: 1, 2 and 4 ``imagestudio worker`` processes on PostgreSQL, one job of N images.

The job is submitted once, through the real intake, into a template database; each run works
on a copy of it (``CREATE DATABASE ... TEMPLATE``), so every run starts from the same queue.
The workers (``testkit.fleet.WorkerFleet``, SLOTS slots each) start together; the run ends
when every image has succeeded or the time budget is spent. Every 0.5 s: the succeeded count,
and the CPU of each side from ``/proc/<pid>/stat`` (the workers, the PostgreSQL backends of
the run's database from ``pg_stat_activity``, the fake provider).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from cryptography.fernet import Fernet

from bench.scale.queue import seed
from bench.scale.rig import (
    SLOTS,
    CpuMeter,
    Fake,
    Shape,
    backend_pids,
    database,
    db_name,
    service_env,
    settings,
)
from imagestudio.runtime.services import open_services
from testkit import pg
from testkit.fleet import WorkerFleet, worker_env


@dataclass
class FleetRun:
    processes: int
    images: int
    done: int = 0
    wall: float = 0.0  # workers spawned to the last image done (or the budget)
    steady: float | None = None  # images/s from the first completion to the last
    worker_cpu: float = 0.0
    db_cpu: float = 0.0
    provider_cpu: float = 0.0
    cut: bool = False
    error: str | None = None

    @property
    def per_second(self) -> float | None:
        return self.done / self.wall if self.wall > 0 and self.done else None


async def _succeeded(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM ai_job_image WHERE status = 'succeeded'"))


async def _run(
    count: int, template: str, fake: Fake, workdir: Path, secret: str, budget: float, images: int
) -> FleetRun:
    run = FleetRun(count, images)
    async with database("postgresql", workdir, template=template) as url:
        data_dir = workdir / f"fleet-{count}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = worker_env(
            settings(data_dir, url, fake, secret_key=secret),
            SECRET_KEY=secret,
            **service_env(fake),
        )
        fleet = WorkerFleet(env, data_dir / "logs", count, SLOTS)
        conn = await asyncpg.connect(pg.dsn().rsplit("/", 1)[0] + "/" + db_name(url))
        workers, db, provider = CpuMeter(), CpuMeter(), CpuMeter()
        try:
            began = time.perf_counter()
            await fleet.start()
            pids = [s.proc.pid for s in fleet.slots if s.proc is not None]
            first: tuple[float, int] | None = None
            last = (began, 0)
            while True:
                workers.sample(pids)
                db.sample(await backend_pids(url))
                provider.sample([fake.pid])
                done, now = await _succeeded(conn), time.perf_counter()
                if done and first is None:
                    first = (now, done)
                if done != last[1]:
                    last = (now, done)
                if done >= images or now - began > budget:
                    break
                if any(not s.alive() for s in fleet.slots):
                    raise RuntimeError(f"a worker exited:\n{fleet.log_tails()}")
                await asyncio.sleep(0.5)
            run.done, run.cut = done, done < images
            run.wall = (last[0] if not run.cut else now) - began
            if first is not None and last[0] > first[0]:
                run.steady = (last[1] - first[1]) / (last[0] - first[0])
        finally:
            await fleet.stop(grace=10)
            await conn.close()
        run.worker_cpu, run.db_cpu, run.provider_cpu = workers.used(), db.used(), provider.used()
    return run


async def measure(
    fake: Fake,
    workdir: Path,
    images: int,
    counts: Sequence[int],
    budget: float,
    on_run: list[FleetRun],
) -> None:
    """Appends a ``FleetRun`` per process count to ``on_run`` as each one ends (so a phase
    cut by its timeout keeps the runs it finished)."""
    secret = Fernet.generate_key().decode()
    async with database("postgresql", workdir) as url:
        async with open_services(
            settings(workdir / "fleet-seed", url, fake, secret_key=secret), migrate=False
        ) as services:
            await seed(services, fake, Shape(1, images))
        for count in counts:
            try:
                on_run.append(
                    await _run(count, db_name(url), fake, workdir, secret, budget, images)
                )
            except Exception as exc:
                on_run.append(FleetRun(count, images, error=f"{type(exc).__name__}: {exc}"[:300]))
            print(f"  {count} worker process(es): {_line(on_run[-1])}", flush=True)


def _line(run: FleetRun) -> str:
    if run.error:
        return f"failed ({run.error})"
    rate = f"{run.per_second:.1f}" if run.per_second else "-"
    cut = " (cut at the budget)" if run.cut else ""
    return f"{run.done}/{run.images} in {run.wall:.1f} s, {rate} images/s{cut}"
