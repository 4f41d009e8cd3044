"""What every scale phase shares: the fake provider process, scratch databases, the service's
settings, payloads of any size and shape, and reading CPU and memory from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from imagestudio.settings import Settings
from imagestudio.store.db import migrate
from testkit import fleet, pg
from testkit.payloads import batch_payload
from testkit.settings import loopback_settings

SLOTS = 32  # task slots of an in-process worker (and the pinned window per provider key)
SOURCES = 64  # distinct sample sources; image n uses source (n - 1) % SOURCES + 1
SKU_SIZE = 25  # images per SKU
TARGET = 64  # 64x64 jpeg results: post-processing costs next to nothing
MAX_IMAGES = 100_000


@dataclass(frozen=True)
class Shape:
    """``users`` users with one job of ``per_user`` images each."""

    users: int
    per_user: int

    @property
    def images(self) -> int:
        return self.users * self.per_user

    @property
    def label(self) -> str:
        if self.users == 1:
            return "one job"
        return f"{self.users} users x {self.per_user:,}"


# ---------------------------------------------------------------------------- /proc


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB; zeros if it is gone."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class CpuMeter:
    """CPU seconds used by a changing set of processes since the meter started: sample it
    often enough and processes that come and go are counted up to their last sample."""

    def __init__(self) -> None:
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.sampled = False

    def sample(self, pids: list[int]) -> None:
        """Processes seen at the first sample count from then; later ones from their birth."""
        first, self.sampled = not self.sampled, True
        for pid in pids:
            cpu = fleet.cpu_seconds(pid)
            if pid not in self.start:
                self.start[pid] = cpu if first else 0.0
            if cpu > 0:
                self.last[pid] = cpu

    def used(self) -> float:
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.last.items())


# ---------------------------------------------------------------------------- fake provider


@dataclass(frozen=True)
class Fake:
    url: str
    pid: int

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"


@contextlib.contextmanager
def fake_provider(workdir: Path, latency_ms: float = 0.0) -> Iterator[Fake]:
    """``imagestudio fake-provider`` in its own process, no limits, 64 px renders; killed when
    the block ends. Its sample sources are drawn once before it is handed out."""
    options = ["--latency-ms", str(latency_ms), "--render-size", str(TARGET)]
    with fleet.fake_provider_process(workdir, *options) as (url, pid):
        with httpx.Client(timeout=30) as client:
            for n in range(1, SOURCES + 1):
                client.get(f"{url}/samples/{n}.jpg").raise_for_status()
        yield Fake(url, pid)


# ---------------------------------------------------------------------------- databases


@contextlib.asynccontextmanager
async def database(
    backend: str, workdir: Path, *, template: str | None = None
) -> AsyncIterator[str]:
    """A new migrated database (PostgreSQL: a copy of ``template`` if given), removed when
    the block ends; yields its SQLAlchemy URL."""
    if backend == "sqlite":
        path = workdir / f"scale-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite+aiosqlite:///{path}"
        await asyncio.to_thread(migrate, url)
        try:
            yield url
        finally:
            _remove_sqlite(path)
        return
    name = f"imagestudio_scale_{uuid.uuid4().hex[:10]}"
    url = await asyncio.to_thread(pg.create, name, template=template)
    try:
        if template is None:
            await asyncio.to_thread(migrate, url)
        yield url
    finally:
        await asyncio.to_thread(pg.drop, name)


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def db_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def backend_pids(url: str) -> list[int]:
    """The PostgreSQL backends connected to ``url``'s database."""
    import asyncpg

    conn = await asyncpg.connect(pg.dsn(), timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            db_name(url),
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


# ---------------------------------------------------------------------------- the service


def pins(fake: Fake) -> dict[str, Any]:
    return {fake.api_base: {"max_concurrency": SLOTS}}


def settings(data_dir: Path, url: str, fake: Fake, **overrides: Any) -> Settings:
    """A service on loopback whose provider window is pinned open (SLOTS per key)."""
    values: dict[str, Any] = {
        "poll_interval": 0.05,
        "max_images_per_job": MAX_IMAGES,
        "max_images_in_flight": 10 * MAX_IMAGES,
        "worker_concurrency": SLOTS,
        "provider_limits": pins(fake),
        "governor_initial_window": float(SLOTS),
    }
    return loopback_settings(data_dir, url, **(values | overrides))


def service_env(fake: Fake) -> dict[str, str]:
    """The same settings as ``settings``, as ``IMAGESTUDIO_*`` names for subprocesses."""
    return {
        "POLL_INTERVAL": "0.05",
        "MAX_IMAGES_PER_JOB": str(MAX_IMAGES),
        "MAX_IMAGES_IN_FLIGHT": str(10 * MAX_IMAGES),
        "WORKER_CONCURRENCY": str(SLOTS),
        "PROVIDER_LIMITS": json.dumps(pins(fake)),
        "GOVERNOR_INITIAL_WINDOW": str(float(SLOTS)),
    }


def payload(fake: Fake, images: int, user: int = 0) -> dict[str, Any]:
    """One job of ``images`` 64x64 jpeg images for user ``user`` (its own API key), in SKUs of
    SKU_SIZE, with sources cycling over SOURCES sample photos."""
    sizes = [SKU_SIZE] * (images // SKU_SIZE) + ([images % SKU_SIZE] if images % SKU_SIZE else [])
    body = batch_payload(
        fake.url,
        f"scale-{user}-{uuid.uuid4().hex[:8]}",
        images_per_sku=sizes,
        api_key=f"sk-scale-user-{user:04d}-0123456789",
        user_id=f"user-{user:04d}",
        size=TARGET,
        output_format="jpeg",
    )
    n = 0
    for entries in body["options"]["sku_images_map"].values():
        for entry in entries:
            entry["url"] = f"{fake.url}/samples/{n % SOURCES + 1}.jpg"
            n += 1
    return body
