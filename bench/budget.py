"""What cost tracking and ``max_cost`` add to the store's bookkeeping, side by side.

``python -m bench.budget [--images N] [--backends sqlite,postgresql]``: two jobs of N images
each (one with ``max_cost``, one without) on a fresh SQLite file and a fresh PostgreSQL
database; every image is claimed, then (job with a budget) reserved and finished with its
usage and cost, or (job without) finished as before. Prints the median and p90 milliseconds
per step, in one run, so the ratio is read on the same machine at the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from imagestudio.domain import Usage
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.cost import Price
from imagestudio.policy.governor import GovernorParams
from imagestudio.store.db import create_engine, migrate
from imagestudio.store.records import ClaimedTask, Spend, Succeeded
from imagestudio.store.store import Store
from testkit import pg
from testkit.payloads import batch_payload

PRICE = Price(text_input_per_mtok=5, image_input_per_mtok=10, output_per_mtok=40, estimate=0.25)
SPEND = Spend(usage=Usage(60, 272, 4160), cost=0.1667)


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "postgresql":
        with pg.scratch_database("imagestudio_bench_budget") as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        migrate(url)
        yield url


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"{statistics.median(ordered) * 1000:.2f} / {p90 * 1000:.2f}"


async def claim_all(store: Store, total: int) -> list[ClaimedTask]:
    tasks: list[ClaimedTask] = []
    while len(tasks) < total:
        batch = await store.claim("bench", 50, 300.0)
        if not batch:
            raise RuntimeError("claim returned nothing")
        tasks.extend(batch)
    return tasks


async def one_backend(url: str, images: int) -> dict[str, list[float]]:
    store = Store(create_engine(url), governor=GovernorParams(initial_window=10_000))
    try:
        return await _measure(store, images)
    finally:
        await store.close()


async def _submit(store: Store, job_id: str, images: int, max_cost: float | None) -> str:
    options = {"max_cost": max_cost} if max_cost else {}
    raw = batch_payload(
        "https://cdn.example.com", job_id, images_per_sku=(images,), options=options
    )
    limits = IntakeLimits(max_images=images)
    spec = build_job_spec(parse_payload(raw), user_id="bench", limits=limits)
    return (await store.submit(spec, b"sealed")).job.id


async def _measure(store: Store, images: int) -> dict[str, list[float]]:
    """The two jobs' images alternately, so both see the same database state."""
    times: dict[str, list[float]] = {"reserve": [], "finish+usage": [], "finish": []}
    capped = await _submit(store, "capped", images, 1e9)
    await _submit(store, "plain", images, None)
    tasks = await claim_all(store, 2 * images)
    budgeted = [t for t in tasks if t.job_pk == capped]
    plain = [t for t in tasks if t.job_pk != capped]
    for with_budget, without in zip(budgeted, plain, strict=True):
        started = time.perf_counter()
        await store.reserve(with_budget, PRICE)
        times["reserve"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await store.finish(with_budget, Succeeded(f"k/{with_budget.position}", "/f"), SPEND)
        times["finish+usage"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await store.finish(without, Succeeded(f"p/{without.position}", "/f"))
        times["finish"].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.budget")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"ms per image, median / p90, {args.images} images per job")
    print("| backend | reserve (max_cost) | finish with usage | finish without |")
    print("|---|---|---|---|")
    for backend in args.backends.split(","):
        with database(backend) as url:  # migrated outside the loop (``migrate`` runs its own)
            times = asyncio.run(one_backend(url, args.images))
        row = [ms(times["reserve"]), ms(times["finish+usage"]), ms(times["finish"])]
        print(f"| {backend} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
