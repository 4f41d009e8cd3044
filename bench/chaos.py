"""Chaos run: real ``imagestudio worker`` processes SIGKILLed and restarted every second or
two, PostgreSQL restarted once, a provider that fails 10% of calls with 500s and answers 429
above a concurrency limit lower than the workers' slots.

    .venv/bin/python -m bench.chaos [--images 120] [--kills 10] [--no-pg-restart]

Prints a markdown summary (images, lost, duplicated stored results, stuck, provider calls per
image p50/max, run length, kills) and writes it to ``bench/out/chaos.md``. Needs PostgreSQL at
``IMAGESTUDIO_BENCH_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``); it works
in a database of its own and drops it afterwards. The PostgreSQL restart (``pg_ctlcluster``,
so the local cluster only) is skipped with ``--no-pg-restart`` or
``IMAGESTUDIO_CHAOS_PG_RESTART=0``.

Provider calls are matched to images through the attempts the database records: every call
carries its job's key and its image's prompt, and must start inside one attempt's window of
an image with that key and prompt (each attempt makes at most one call). A call that fits no
attempt is counted as a stray: a call made by no recorded attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.providers.fake.state import key_fingerprint
from imagestudio.runtime.services import Services, open_services
from imagestudio.settings import Settings
from imagestudio.store.records import AttemptRecord, ImageRecord
from testkit import pg
from testkit.fleet import (
    WorkerFleet,
    calls_per_image,
    image_counts,
    pg_restart_enabled,
    restart_postgresql,
    worker_env,
)
from testkit.payloads import batch_payload
from testkit.settings import loopback_settings

OUT = Path(__file__).resolve().parent / "out" / "chaos.md"
TEMP_PREFIX = ".tmp-"  # the local storage's in-progress writes
USERS = (("alice", "sk-chaos-alice-0001"), ("bob", "sk-chaos-bob-0002"))


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    images: int = 120
    workers: int = 3
    concurrency: int = 3
    min_kills: int = 10
    kill_every: tuple[float, float] = (1.0, 2.0)
    pg_restart: bool = True
    provider_concurrency: int = 2  # below workers * concurrency: some calls answer 429
    latency_ms: float = 150.0
    error_rate: float = 0.1
    size: int = 256
    lease_seconds: float = 2.0
    max_attempts: int = 8
    chaos_limit: float = 180.0  # then the kills stop and the workers get ``settle_limit``
    settle_limit: float = 60.0  # to finish; what is still queued or running then is stuck
    seed: int = 1

    def images_per_sku(self) -> list[tuple[int, ...]]:
        """Two users' jobs, 60/40, in SKUs of four images."""
        first = round(self.images * 0.6)
        return [_skus(first), _skus(self.images - first)]


def _skus(count: int) -> tuple[int, ...]:
    return (4,) * (count // 4) + ((count % 4,) if count % 4 else ())


# ------------------------------------------------------------------------ worker processes


def chaos_worker_env(settings: Settings, config: ChaosConfig) -> dict[str, str]:
    return worker_env(
        settings,
        LEASE_SECONDS=str(config.lease_seconds),
        POLL_INTERVAL="0.1",
        BACKOFF_BASE_SECONDS="0.05",
        BACKOFF_MAX_SECONDS="0.5",
        MAX_ATTEMPTS=str(config.max_attempts),
    )


# ------------------------------------------------------------------------ the run


@dataclass
class Timeline:
    seconds: float = 0.0
    kills: int = 0
    boot_exits: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    pg_restart_seconds: float | None = None
    pg_restart_at: float | None = None
    chaos_ended_early: bool = False  # the chaos phase hit its limit before the work was done
    settle_seconds: float = 0.0


def _all_done(counts: Counter[str] | None) -> bool:
    return counts is not None and counts["queued"] + counts["running"] == 0


@dataclass
class KillClock:
    """A kill is due every ``every`` seconds, and also once more images succeeded since the
    last kill than the work left shared among the kills still owed (so a fast machine
    still sees ``min_kills`` of them)."""

    rng: random.Random
    every: tuple[float, float]
    total: int
    min_kills: int
    next_at: float = 0.0
    done_at_last: int = 0

    def rearm(self, now: float, done: int) -> None:
        self.next_at, self.done_at_last = now + self.rng.uniform(*self.every), done

    def due(self, now: float, done: int, kills: int) -> bool:
        quota = (self.total - self.done_at_last) / (max(self.min_kills - kills, 0) + 1)
        return now >= self.next_at or done - self.done_at_last >= quota


async def run_chaos(
    services: Services, config: ChaosConfig, job_pks: list[str], fleet: WorkerFleet
) -> Timeline:
    """Kill workers (see ``KillClock``) and restart PostgreSQL once, when 40% of the images
    are done, until no image is queued or running. Past ``chaos_limit`` the kills stop and
    the workers get ``settle_limit`` more to finish."""
    rng = random.Random(config.seed)
    timeline = Timeline()
    started = time.monotonic()
    clock = KillClock(rng, config.kill_every, config.images, config.min_kills)
    clock.rearm(started, 0)
    restart: asyncio.Task[float] | None = None
    done = 0
    try:
        while not _all_done(counts := await image_counts(services.store, job_pks)):
            now = time.monotonic()
            if now - started > config.chaos_limit:
                timeline.chaos_ended_early = True
                break
            done = counts["succeeded"] if counts is not None else done
            await fleet.replace_exited()
            if clock.due(now, done, fleet.kills) and await fleet.kill_one(rng):
                clock.rearm(now, done)
            if config.pg_restart and restart is None and done >= 0.4 * config.images:
                timeline.pg_restart_at = now - started
                restart = asyncio.create_task(restart_postgresql())
            await asyncio.sleep(0.05)
    finally:
        if restart is not None:
            timeline.pg_restart_seconds = await restart  # never leave PostgreSQL down
    settling = time.monotonic()
    while timeline.chaos_ended_early and time.monotonic() - settling < config.settle_limit:
        await fleet.replace_exited()
        if _all_done(await image_counts(services.store, job_pks)):
            break
        await asyncio.sleep(0.1)
    timeline.settle_seconds = time.monotonic() - settling
    timeline.seconds = time.monotonic() - started
    timeline.kills = fleet.kills
    timeline.boot_exits, timeline.crashes = list(fleet.boot_exits), list(fleet.crashes)
    return timeline


# ------------------------------------------------------------------------ what happened


@dataclass
class Outcome:
    images: int
    succeeded: int
    lost: int  # ended other than succeeded
    stuck: int  # still queued or running
    duplicated: int  # stored result files beyond the one the database names, per image
    missing: int  # images whose named result file is not there
    partial_files: int  # leftover in-progress writes (a SIGKILL mid-write)
    max_attempts: int
    double_wins: int  # images with more than one succeeded attempt
    orphaned: int  # attempts lost with a killed worker (lease expired, rescued)
    lapsed: int  # attempts whose lease expired while their worker lived
    worst: str  # the attempts of the image that took the most, by outcome
    calls_per_image: list[int]
    stray_calls: int  # provider calls that fit no recorded attempt
    provider_totals: dict[str, int]
    statuses: Counter[str]

    def calls_p50(self) -> float:
        return statistics.median(self.calls_per_image) if self.calls_per_image else 0.0

    def calls_max(self) -> int:
        return max(self.calls_per_image, default=0)


@dataclass(frozen=True, slots=True)
class JobFacts:
    pk: str
    key: str
    images: list[ImageRecord]
    attempts: list[AttemptRecord]


def result_files(data_dir: Path, job_pk: str) -> tuple[list[str], list[str]]:
    """Final files and leftover partial writes in the job's results folder."""
    folder = data_dir / "results" / job_pk
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    finals = [n for n in names if not n.startswith(TEMP_PREFIX)]
    return finals, [n for n in names if n.startswith(TEMP_PREFIX)]


def _worst(facts: list[JobFacts]) -> str:
    """``stem: 8 attempts (5 lost, 2 retry, 1 succeeded)`` for the image with the most."""
    attempts: dict[int, list[str]] = defaultdict(list)
    for job in facts:
        for a in job.attempts:
            attempts[a.image_id].append(a.outcome or "open")
    if not attempts:
        return "none"
    image_id = max(attempts, key=lambda i: len(attempts[i]))
    stem = next(i.stem for job in facts for i in job.images if i.id == image_id)
    outcomes = Counter(attempts[image_id])
    parts = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.most_common())
    return f"{stem}: {len(attempts[image_id])} attempt records ({parts})"


def worker_pid(worker: str) -> int | None:
    """The process id in a worker id (``host:pid:nonce``)."""
    parts = worker.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


async def collect(
    services: Services,
    provider: BackgroundServer,
    jobs: list[tuple[str, str]],
    killed_pids: set[int],
) -> Outcome:
    """Everything the database, the results folder and the provider's call log say."""
    facts = [
        JobFacts(
            pk=pk,
            key=key_fingerprint(key) or "",
            images=await services.store.images(pk),
            attempts=await services.store.attempts(pk),
        )
        for pk, key in jobs
    ]
    async with httpx.AsyncClient(base_url=provider.url, timeout=30) as client:
        stats = (await client.get("/_fake/stats")).json()
    calls = [c for c in stats["calls"] if c["prompt"] is not None]
    per_image, stray = calls_per_image(
        calls, [(job.key, job.images, job.attempts) for job in facts]
    )
    images = [image for job in facts for image in job.images]
    duplicated = missing = partials = 0
    for job in facts:
        finals, partial = result_files(services.settings.data_dir, job.pk)
        named = {i.result_key.rsplit("/", 1)[1] for i in job.images if i.result_key}
        duplicated += len(set(finals) - named)
        missing += len(named - set(finals))
        partials += len(partial)
    wins = Counter(a.image_id for job in facts for a in job.attempts if a.outcome == "succeeded")
    lost = [a for job in facts for a in job.attempts if a.outcome == "lost"]
    statuses = Counter(image.status for image in images)
    return Outcome(
        images=len(images),
        succeeded=statuses["succeeded"],
        lost=len(images) - statuses["succeeded"] - statuses["queued"] - statuses["running"],
        stuck=statuses["queued"] + statuses["running"],
        duplicated=duplicated,
        missing=missing + sum(1 for i in images if i.status == "succeeded" and not i.result_key),
        partial_files=partials,
        max_attempts=max((i.attempts for i in images), default=0),
        double_wins=sum(1 for n in wins.values() if n > 1),
        orphaned=sum(1 for a in lost if worker_pid(a.worker) in killed_pids),
        lapsed=sum(1 for a in lost if worker_pid(a.worker) not in killed_pids),
        worst=_worst(facts),
        calls_per_image=[per_image[i.id] for i in images],
        stray_calls=stray,
        provider_totals=dict(stats["totals"]),
        statuses=statuses,
    )


def markdown(config: ChaosConfig, timeline: Timeline, outcome: Outcome) -> str:
    totals = outcome.provider_totals
    restart = (
        f"at {timeline.pg_restart_at:.1f} s, took {timeline.pg_restart_seconds:.1f} s"
        if timeline.pg_restart_at is not None and timeline.pg_restart_seconds is not None
        else "none"
    )
    rows = [
        (
            "images",
            f"{outcome.images} ({', '.join(f'{n} {s}' for s, n in outcome.statuses.items())})",
        ),
        ("lost (ended other than succeeded)", str(outcome.lost)),
        ("duplicated stored results", str(outcome.duplicated)),
        ("missing stored results", str(outcome.missing)),
        ("stuck (queued or running)", str(outcome.stuck)),
        ("images with two winning attempts", str(outcome.double_wins)),
        ("max attempts on an image", f"{outcome.max_attempts} (limit {config.max_attempts})"),
        ("the image that took the most", outcome.worst),
        (
            "provider calls per image",
            f"p50 {outcome.calls_p50():g}, max {outcome.calls_max()}, "
            f"mean {sum(outcome.calls_per_image) / max(outcome.images, 1):.2f}",
        ),
        (
            "provider answers",
            f"{totals.get('requests', 0)} calls: {totals.get('ok', 0)} ok, "
            f"{totals.get('500', 0)} x 500, {totals.get('429', 0)} x 429; "
            f"peak {totals.get('peak_in_flight', 0)} in flight",
        ),
        ("stray provider calls (no attempt)", str(outcome.stray_calls)),
        ("partial writes left by kills", str(outcome.partial_files)),
        (
            "run length",
            f"{timeline.seconds:.1f} s"
            + (
                f" (chaos stopped at {config.chaos_limit:g} s unfinished; "
                f"then {timeline.settle_seconds:.1f} s without kills)"
                if timeline.chaos_ended_early
                else ""
            ),
        ),
        ("workers SIGKILLed (and restarted)", str(timeline.kills)),
        ("attempts orphaned by a killed worker (rescued)", str(outcome.orphaned)),
        ("attempts whose lease lapsed while their worker lived", str(outcome.lapsed)),
        ("workers that crashed on their own", ", ".join(timeline.crashes) or "0"),
        (
            "workers that exited while starting (database down)",
            ", ".join(timeline.boot_exits) or "0",
        ),
        ("PostgreSQL restart", restart),
    ]
    setup = (
        f"{config.workers} `imagestudio worker --concurrency {config.concurrency}` processes; "
        f"fake provider: {config.latency_ms:g} ms latency (uniform), "
        f"{config.error_rate:.0%} 500s, concurrency limit {config.provider_concurrency}; "
        f"lease {config.lease_seconds:g} s, max attempts {config.max_attempts}; "
        f"a worker SIGKILLed every {config.kill_every[0]:g}-{config.kill_every[1]:g} s; "
        f"{config.size}x{config.size} PNG results; two users."
    )
    lines = ["# Chaos run", "", setup, "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ the bench itself


@contextlib.contextmanager
def fake_provider(config: ChaosConfig) -> Iterator[BackgroundServer]:
    fake = FakeProviderConfig(
        latency_ms=config.latency_ms,
        latency_dist="uniform",
        error_rate=config.error_rate,
        concurrency=config.provider_concurrency,
        seed=config.seed,
    )
    with BackgroundServer(create_fake_provider_app(fake)) as server:
        yield server


async def submit_jobs(
    services: Services, provider: BackgroundServer, config: ChaosConfig
) -> list[tuple[str, str]]:
    """One job per user; returns (job pk, API key) for each."""
    jobs = []
    for (user, key), shape in zip(USERS, config.images_per_sku(), strict=True):
        payload = batch_payload(
            provider.url,
            f"chaos-{user}",
            images_per_sku=shape,
            api_key=key,
            user_id=user,
            size=config.size,
        )
        result = await services.jobs.submit(payload, None)
        jobs.append((result.job.id, key))
    return jobs


async def chaos_bench(config: ChaosConfig, data_dir: Path) -> tuple[Timeline, Outcome]:
    with pg.scratch_database("imagestudio_chaos", migrated=False) as url:
        settings = loopback_settings(data_dir, url)
        with fake_provider(config) as provider:
            async with open_services(settings) as services:  # migrates the new database
                jobs = await submit_jobs(services, provider, config)
                fleet = WorkerFleet(
                    chaos_worker_env(settings, config),
                    data_dir / "logs",
                    config.workers,
                    config.concurrency,
                )
                try:
                    await fleet.start()
                    timeline = await run_chaos(services, config, [pk for pk, _ in jobs], fleet)
                finally:
                    await fleet.stop()
                outcome = await collect(services, provider, jobs, fleet.killed_pids)
                if outcome.stuck or timeline.crashes:  # say why, while the logs are there
                    print(fleet.log_tails(), file=sys.stderr)
    return timeline, outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--kills", type=int, default=10, help="at least this many SIGKILLs")
    parser.add_argument("--no-pg-restart", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data dir (worker logs)")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        images=args.images,
        min_kills=args.kills,
        pg_restart=not args.no_pg_restart and pg_restart_enabled(),
        seed=args.seed,
    )
    tmp = Path(tempfile.mkdtemp(prefix="imagestudio-chaos-"))
    try:
        timeline, outcome = asyncio.run(chaos_bench(config, tmp))
    finally:
        if args.keep:
            print(f"data dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = markdown(config, timeline, outcome)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(report, encoding="utf-8")
    print(report)
    print(f"written to {OUT}")
    healthy = outcome.lost == outcome.stuck == outcome.duplicated == outcome.missing == 0
    return 0 if healthy and timeline.kills >= config.min_kills else 1


if __name__ == "__main__":
    raise SystemExit(main())
