"""The service's own overhead per image, against a zero-latency fake provider.

With the provider answering at once, everything left is ours: claiming, bookkeeping, source
download and preparation, post-processing, storage. The fake provider runs in its own process
(``imagestudio fake-provider --latency-ms 0``) so its rendering is not billed to the service;
on a small machine it still shares the cores, so CPU time is reported per process as well as
wall time.

For each database (SQLite file, a fresh PostgreSQL database) and target (1024 and 1536 png):

- the pipeline: N images, one in-process worker with 8 slots (``run_until_idle``), timed end to
  end; CPU seconds of this process, of the fake provider and of the PostgreSQL backends;
- the stages, one at a time without contention: ``prepare_source`` on a fake source,
  ``postprocess`` on the fake provider's output, ``storage.put`` of the result, and the store's
  ``claim`` and ``finish`` per image (the first N images of a job of N, and of a job of
  ``BIG`` images, to show how the bookkeeping scales with the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from imagestudio.domain import OutputSpec
from imagestudio.imaging.process import postprocess, prepare_source
from imagestudio.providers.fake.images import render_edit
from imagestudio.providers.fake.protocol import parse_size
from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.providers.registry import provider_size
from imagestudio.runtime.services import Services, open_services
from imagestudio.settings import Settings
from imagestudio.store.db import migrate
from imagestudio.store.records import Succeeded
from testkit import fleet, pg
from testkit.payloads import batch_payload
from testkit.settings import loopback_settings

MODEL = "gpt-image-1"
CONCURRENCY = 8
SKUS = 4
STAGE_REPEATS = 15
STAGE_BUDGET = 2.0  # seconds per stage timing
MAX_PIXELS = Settings.model_fields["max_pixels"].default


@dataclass(frozen=True)
class Target:
    size: int
    format: str = "png"

    @property
    def label(self) -> str:
        return f"{self.size}x{self.size} {self.format}"


TARGETS = (Target(1024), Target(1536))


@dataclass
class Measurement:
    """One database x one target."""

    backend: str
    target: Target
    images: int
    wall: float = 0.0
    service_cpu: float = 0.0
    provider_cpu: float = 0.0
    db_cpu: float = 0.0
    claim_ms: float = 0.0
    finish_ms: float = 0.0
    claim_big_ms: float = 0.0
    finish_big_ms: float = 0.0
    big_images: int = 0
    provider_calls: int = 0
    storage_ms: float = 0.0

    @property
    def per_second(self) -> float:
        return self.images / self.wall

    def per_image_ms(self, seconds: float) -> float:
        return 1000.0 * seconds / self.images


@dataclass
class Stages:
    """Pure CPU stages, the same for every database."""

    prepare_ms: dict[str, float] = field(default_factory=dict)
    postprocess_ms: dict[str, float] = field(default_factory=dict)
    postprocess_photo_ms: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- processes


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class FakeProvider:
    url: str
    pid: int

    def reset(self) -> None:
        httpx.post(f"{self.url}/_fake/reset", timeout=10).raise_for_status()

    def totals(self) -> dict[str, int]:
        response = httpx.get(f"{self.url}/_fake/stats", params={"calls": "0"}, timeout=10)
        totals: dict[str, int] = response.raise_for_status().json()["totals"]
        return totals


@contextlib.contextmanager
def fake_provider_process(workdir: Path) -> Iterator[FakeProvider]:
    with fleet.fake_provider_process(workdir, "--latency-ms", "0") as (url, pid):
        yield FakeProvider(url, pid)


# ---------------------------------------------------------------------------- databases


def postgres_available() -> bool:
    return pg.available("SQLite only")


@contextlib.contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[str]:
    """A new, migrated database; PostgreSQL ones are dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        migrate(url)
        yield url
        return
    with pg.scratch_database("imagestudio_bench") as url:
        yield url


async def _backend_cpu(services: Services) -> dict[int, float]:
    """CPU seconds of every PostgreSQL backend serving this database (none on SQLite)."""
    if services.store.dialect != "postgresql":
        return {}
    async with services.store.engine.connect() as conn:
        result = await conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
        pids = [int(row[0]) for row in result]
    return {pid: fleet.cpu_seconds(pid) for pid in pids}


# ---------------------------------------------------------------------------- measurements


def _images_per_sku(total: int) -> tuple[int, ...]:
    base, extra = divmod(total, SKUS)
    return tuple(base + (1 if i < extra else 0) for i in range(SKUS))


async def _submit(services: Services, provider: FakeProvider, target: Target, n: int) -> str:
    payload = batch_payload(
        provider.url,
        f"bench-{uuid.uuid4().hex[:8]}",
        images_per_sku=_images_per_sku(n),
        size=target.size,
        output_format=target.format,
    )
    result = await services.jobs.submit(payload, None)
    return result.job.id


async def _pipeline(services: Services, provider: FakeProvider, m: Measurement) -> None:
    job_pk = await _submit(services, provider, m.target, m.images)
    provider.reset()
    db_before = await _backend_cpu(services)
    cpu0, provider0, started = own_cpu(), fleet.cpu_seconds(provider.pid), time.perf_counter()
    await services.worker(CONCURRENCY).run_until_idle()
    m.wall = time.perf_counter() - started
    m.service_cpu = own_cpu() - cpu0
    m.provider_cpu = fleet.cpu_seconds(provider.pid) - provider0
    db_after = await _backend_cpu(services)
    m.db_cpu = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
    done = sum(1 for image in await services.store.images(job_pk) if image.status == "succeeded")
    if done != m.images:
        raise RuntimeError(f"{m.backend} {m.target.label}: only {done}/{m.images} succeeded")
    m.provider_calls = provider.totals()["requests"]
    if m.provider_calls < m.images:
        raise RuntimeError(f"fewer provider calls than images: {provider.totals()}")


async def _store_ms(
    services: Services, provider: FakeProvider, target: Target, queued: int, measured: int
) -> tuple[float, float]:
    """Milliseconds per image of ``claim`` (batches of CONCURRENCY) and of ``finish``, over the
    first ``measured`` images of a job of ``queued``."""
    await _submit(services, provider, target, queued)
    store, claiming, finishing, done = services.store, 0.0, 0.0, 0
    while done < measured:
        started = time.perf_counter()
        tasks = await store.claim("bench", min(CONCURRENCY, measured - done), 60.0)
        claiming += time.perf_counter() - started
        if not tasks:
            raise RuntimeError(f"claimed {done} of {measured}")
        for task in tasks:
            key = f"{task.job_pk}/{task.position:04d}-bench.png"
            started = time.perf_counter()
            await store.finish(task, Succeeded(result_key=key, result_url=f"/files/{key}"))
            finishing += time.perf_counter() - started
        done += len(tasks)
    return 1000.0 * claiming / measured, 1000.0 * finishing / measured


async def _storage_ms(services: Services, data: bytes) -> float:
    key = f"bench-{uuid.uuid4().hex[:8]}/result.png"

    async def put() -> None:
        await services.storage.put(key, data, "image/png")

    try:
        return await _median_ms_async(put)
    finally:
        await services.storage.delete(key)


async def _median_ms_async(step: Callable[[], Awaitable[None]]) -> float:
    times: list[float] = []
    while _more(times):
        started = time.perf_counter()
        await step()
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def _median_ms(step: Callable[[], Any]) -> float:
    times: list[float] = []
    while _more(times):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def _more(times: list[float]) -> bool:
    """At least 3 and at most STAGE_REPEATS samples, within about STAGE_BUDGET seconds."""
    return len(times) < 3 or (len(times) < STAGE_REPEATS and sum(times) < STAGE_BUDGET)


def fake_output(provider: FakeProvider, target: Target) -> tuple[bytes, bytes]:
    """A source as the service downloads it and the fake provider's answer for it."""
    source = httpx.get(f"{provider.url}/samples/1.jpg", timeout=30).raise_for_status().content
    size = parse_size(provider_size(MODEL, target.size, target.size))
    assert size is not None
    return source, render_edit(source, "bench prompt", size, target.format)


def photographic_output(target: Target) -> bytes:
    """What a real provider returns: a photo-like PNG (the fake's are posterized, tiny)."""
    size = parse_size(provider_size(MODEL, target.size, target.size))
    assert size is not None
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(sample_product_photo(3, "photo", size))) as photo:
        grain = Image.merge("RGB", [Image.effect_noise(size, 24) for _ in range(3)])
        Image.blend(photo.convert("RGB"), grain, 0.15).save(buffer, "PNG")  # a photo's entropy
    return buffer.getvalue()


def measure_stages(provider: FakeProvider, stages: Stages) -> dict[str, bytes]:
    """Time the pure stages per target; returns a post-processed result per target."""
    results = {}
    for target in TARGETS:
        source, raw = fake_output(provider, target)
        spec = OutputSpec(width=target.size, height=target.size, format=target.format, quality=90)
        stages.prepare_ms[target.label] = _median_ms(
            lambda s=source: prepare_source(s, "src.jpg", max_pixels=MAX_PIXELS)
        )
        stages.postprocess_ms[target.label] = _median_ms(
            lambda r=raw, o=spec: postprocess(r, o, max_pixels=MAX_PIXELS)
        )
        photo = photographic_output(target)
        stages.postprocess_photo_ms[target.label] = _median_ms(
            lambda r=photo, o=spec: postprocess(r, o, max_pixels=MAX_PIXELS)
        )
        results[target.label] = postprocess(raw, spec, max_pixels=MAX_PIXELS)
        with Image.open(io.BytesIO(results[target.label])) as image:
            assert image.size == (target.size, target.size)
    return results


async def _measure_backend(
    url: str, workdir: Path, provider: FakeProvider, m: Measurement, result: bytes, big: int
) -> None:
    settings = loopback_settings(
        workdir / f"data-{m.backend}-{m.target.size}", url, poll_interval=0.05
    )
    async with open_services(settings, migrate=False) as services:
        await _pipeline(services, provider, m)
        m.storage_ms = await _storage_ms(services, result)
        m.claim_ms, m.finish_ms = await _store_ms(services, provider, m.target, m.images, m.images)
        if big:
            m.big_images = big
            m.claim_big_ms, m.finish_big_ms = await _store_ms(
                services, provider, m.target, big, m.images
            )


def run(
    images: int = 100, big: int = 2000, backends: tuple[str, ...] = ("sqlite", "postgresql")
) -> tuple[list[Measurement], Stages]:
    if "sqlite" not in backends:
        raise ValueError("the sqlite backend is the baseline of every ratio; keep it")
    if "postgresql" in backends and not postgres_available():
        backends = tuple(b for b in backends if b != "postgresql")
    measurements: list[Measurement] = []
    stages = Stages()
    with (
        tempfile.TemporaryDirectory(prefix="imagestudio-bench-") as tmp,
        fake_provider_process(Path(tmp)) as provider,
    ):
        workdir = Path(tmp)
        results = measure_stages(provider, stages)
        for target in TARGETS:
            for backend in backends:
                m = Measurement(backend, target, images)
                print(f"  {backend:<10} {target.label}: {images} images ...", end="", flush=True)
                began = time.perf_counter()
                with fresh_database(backend, workdir) as url:
                    # The big queue only once per database: it does not depend on the target.
                    size_big = big if target == TARGETS[0] else 0
                    asyncio.run(
                        _measure_backend(url, workdir, provider, m, results[target.label], size_big)
                    )
                measurements.append(m)
                print(
                    f" {m.per_second:.2f} images/s; {time.perf_counter() - began:.0f} s in all",
                    flush=True,
                )
    return measurements, stages


# ---------------------------------------------------------------------------- report


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(sqlite: float, pg: float) -> str:
    return f"{pg / sqlite:.2f}x" if sqlite > 0 else "-"


def _rows(by: dict[str, Measurement], stages: Stages, target: Target) -> list[tuple[str, ...]]:
    lite, pg = by["sqlite"], by.get("postgresql")
    label = target.label
    metrics: list[tuple[str, Callable[[Measurement], float]]] = [
        (f"images/s (concurrency {CONCURRENCY})", lambda m: m.per_second),
        ("provider calls per image (retries included)", lambda m: m.provider_calls / m.images),
        ("wall ms per image (1 / throughput)", lambda m: 1000.0 / m.per_second),
        ("service CPU ms per image (this process)", lambda m: m.per_image_ms(m.service_cpu)),
        ("PostgreSQL server CPU ms per image", lambda m: m.per_image_ms(m.db_cpu)),
        ("fake provider CPU ms per image (not ours)", lambda m: m.per_image_ms(m.provider_cpu)),
        ("stage: store claim, ms per image", lambda m: m.claim_ms),
        ("stage: store finish, ms per image", lambda m: m.finish_ms),
        ("stage: storage put (fsync), ms per image", lambda m: m.storage_ms),
        ("stage: prepare source, ms per image", lambda _m: stages.prepare_ms[label]),
        ("stage: post-process (fake output), ms", lambda _m: stages.postprocess_ms[label]),
        (
            "stage: post-process (photographic output), ms",
            lambda _m: stages.postprocess_photo_ms[label],
        ),
    ]
    rows = []
    for name, get in metrics:
        a = get(lite)
        b = get(pg) if pg else None
        rows.append(
            (
                name,
                _fmt(a),
                _fmt(b) if b is not None else "n/a",
                _ratio(a, b) if b is not None else "-",
            )
        )
    return rows


def report(measurements: list[Measurement], stages: Stages) -> str:
    header = "| | SQLite | PostgreSQL | PostgreSQL / SQLite |\n|---|---:|---:|---:|"
    lines = []
    for target in TARGETS:
        by = {m.backend: m for m in measurements if m.target == target}
        n = by["sqlite"].images
        lines += [f"### {n} images, {target.label} target, zero-latency provider", "", header]
        lines += [f"| {' | '.join(row)} |" for row in _rows(by, stages, target)]
        lines.append("")
    big = {m.backend: m for m in measurements if m.big_images}
    if big:
        lite, pg = big["sqlite"], big.get("postgresql")
        lines += [
            f"### Store bookkeeping as the queue grows (first {lite.images} images of a job)",
            "",
            header,
        ]
        for label, attr in (
            (f"claim, job of {lite.images}", "claim_ms"),
            (f"claim, job of {lite.big_images}", "claim_big_ms"),
            (f"finish, job of {lite.images}", "finish_ms"),
            (f"finish, job of {lite.big_images}", "finish_big_ms"),
        ):
            a = getattr(lite, attr)
            b = getattr(pg, attr) if pg else None
            cells = [_fmt(a), _fmt(b) if b is not None else "n/a"]
            cells.append(_ratio(a, b) if b is not None else "-")
            lines.append(f"| {label} (ms per image) | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)
