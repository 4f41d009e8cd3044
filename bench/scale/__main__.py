"""``python -m bench.scale [--quick]``: see ``bench/scale/__init__.py``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench.scale import intake, queue, report, workers
from bench.scale.rig import Fake, Shape, fake_provider
from imagestudio.observability.logs import configure_logging
from testkit import pg

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "out" / "scale.md"
PHASES = ("queue", "intake", "workers")
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    depths: tuple[int, ...]
    queue: queue.QueueConfig
    queue_timeout: float  # per (database, depth, shape)
    intake_sizes: tuple[int, ...]
    intake_running: float  # seconds of RSS sampling while the job runs
    intake_timeout: float
    fleet_images: int
    fleet_counts: tuple[int, ...]
    fleet_budget: float  # per process count
    fleet_timeout: float  # the whole phase, seeding included


FULL = Plan(
    depths=(400, 10_000, 100_000),
    queue=queue.QueueConfig(warmup=50, measured=400, claims=100, claim_budget=20, run_budget=75),
    queue_timeout=900,
    intake_sizes=(400, 10_000, 100_000),
    intake_running=10,
    intake_timeout=900,
    fleet_images=20_000,
    fleet_counts=(1, 2, 4),
    fleet_budget=150,
    fleet_timeout=1800,
)
QUICK = Plan(
    depths=(400, 2_000, 10_000),
    queue=queue.QueueConfig(warmup=20, measured=150, claims=30, claim_budget=10, run_budget=60),
    queue_timeout=300,
    intake_sizes=(400, 10_000),
    intake_running=5,
    intake_timeout=300,
    fleet_images=2_000,
    fleet_counts=(1, 2, 4),
    fleet_budget=120,
    fleet_timeout=600,
)


def many(depth: int) -> Shape:
    users = 4 if depth <= 400 else 100
    return Shape(users, depth // users)


async def guarded(what: str, step: Awaitable[T], limit: float, failed: Callable[[str], T]) -> T:
    """``step`` within ``limit`` seconds; on failure or timeout, ``failed(reason)``."""
    began = time.perf_counter()
    try:
        result = await asyncio.wait_for(step, limit)
    except TimeoutError:
        result = failed(f"timed out after {limit:.0f} s")
    except Exception as exc:
        traceback.print_exc()
        result = failed(f"{type(exc).__name__}: {exc}"[:300])
    print(f"  {what}: {time.perf_counter() - began:.0f} s", flush=True)
    return result


async def run_queue(plan: Plan, backends: Sequence[str], fake: Fake, workdir: Path) -> list[Any]:
    runs: list[queue.QueueRun] = []
    for depth in plan.depths:
        for shape in (Shape(1, depth), many(depth)):
            for backend in backends:

                def failed(
                    reason: str, b: str = backend, d: int = depth, s: Shape = shape
                ) -> queue.QueueRun:
                    return queue.QueueRun(b, d, s, error=reason)

                run = await guarded(
                    f"queue {backend} {depth:,} {shape.label}",
                    queue.measure(backend, depth, shape, fake, workdir, plan.queue),
                    plan.queue_timeout,
                    failed,
                )
                print(
                    f"    {report._cell(run)} images/s; claim p50 "
                    f"{report.ms(queue.percentile(run.claims, 0.5))} ms",
                    flush=True,
                )
                runs.append(run)
    return runs


async def run_intake(plan: Plan, backends: Sequence[str], fake: Fake, workdir: Path) -> list[Any]:
    runs: list[intake.IntakeRun] = []
    for images in plan.intake_sizes:
        for backend in backends:

            def failed(reason: str, b: str = backend, n: int = images) -> intake.IntakeRun:
                return intake.IntakeRun(b, n, error=reason)

            run = await guarded(
                f"intake {backend} {images:,}",
                intake.measure(backend, images, fake, workdir, plan.intake_running),
                plan.intake_timeout,
                failed,
            )
            print(
                f"    {report.num(run.seconds, 2)} s to 201, RSS running {run.rss_running:.0f} MiB",
                flush=True,
            )
            runs.append(run)
    return runs


async def run_fleet(plan: Plan, fake: Fake, workdir: Path) -> list[Any]:
    runs: list[workers.FleetRun] = []
    step = workers.measure(
        fake, workdir, plan.fleet_images, plan.fleet_counts, plan.fleet_budget, runs
    )
    await guarded("workers", step, plan.fleet_timeout, lambda _reason: None)
    done = {r.processes for r in runs}
    for count in plan.fleet_counts:
        if count not in done:
            runs.append(
                workers.FleetRun(count, plan.fleet_images, error="phase cut by its timeout")
            )
    return runs


def header(
    args: argparse.Namespace, plan: Plan, took: float, load: tuple[float, float]
) -> list[str]:
    def git(*command: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(ROOT), *command], capture_output=True, text=True, timeout=10
            )
        except OSError:
            return ""
        return out.stdout.strip()

    lines = [
        f"# imagestudio scale benchmark{' (--quick)' if args.quick else ''}",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"took {took / 60:.1f} min; load average {load[0]:.1f} before, {load[1]:.1f} after. "
        f"Queue depths {', '.join(f'{d:,}' for d in plan.depths)}; "
        f"{plan.queue.measured} completions timed after {plan.queue.warmup} (at most half "
        "the depth, after an eighth).",
        "",
    ]
    log = git("log", "--oneline", "-3")
    if log:
        lines += ["Code measured (`git log --oneline | head -3`):", "", "```", log, "```", ""]
    dirty = git("status", "--short", "src")
    if dirty:
        lines += ["Uncommitted changes under src/ at the end:", "", "```", dirty, "```", ""]
    if args.note:
        lines += [args.note, ""]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller queues and jobs")
    parser.add_argument("--only", nargs="+", choices=PHASES, help="phases to run")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default="", help="a line for the report's header")
    return parser.parse_args(argv)


async def _all(args: argparse.Namespace, plan: Plan, backends: list[str]) -> list[str]:
    chosen = args.only or PHASES
    sections: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="imagestudio-scale-") as tmp,
        fake_provider(Path(tmp)) as fake,
    ):
        workdir = Path(tmp)
        if "queue" in chosen:
            print("phase 1+3: queue depth", flush=True)
            sections += report.queue_tables(
                await run_queue(plan, backends, fake, workdir), plan.depths
            )
        if "intake" in chosen:
            print("phase 2: intake", flush=True)
            sections += report.intake_table(await run_intake(plan, backends, fake, workdir))
        if "workers" in chosen and "postgresql" in backends:
            print("phase 4: worker processes", flush=True)
            sections += report.fleet_table(
                await run_fleet(plan, fake, workdir), os.cpu_count() or 1
            )
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(level=logging.WARNING)
    plan = QUICK if args.quick else FULL
    backends = [b for b in args.backends.split(",") if b]
    if "postgresql" in backends and not pg.available("SQLite only"):
        backends.remove("postgresql")
    began, load = time.perf_counter(), os.getloadavg()[0]
    sections = asyncio.run(_all(args, plan, backends))
    took = time.perf_counter() - began
    text = "\n".join(header(args, plan, took, (load, os.getloadavg()[0])) + sections)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print()
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
