"""The provider governor against the seed's schemes A-E, on a fake provider whose limits the
service is not told. ``python -m bench.governor`` (also run by ``python -m bench``).

Scenarios (time-compressed: lognormal latency, mean ``--latency`` seconds, N ``--images``):

- ``concurrency``: the provider allows C = 8 calls in flight, no rate limit;
- ``rate-headers`` / ``rate-no-headers``: only a rate limit, R = 8 / L per second (so R*L = 8,
  as 240 rpm at 2 s), with the ``x-ratelimit-*`` headers (the governor paces from them) and
  without (it must learn from 429s alone);
- ``both``: C = 8 and R = 7 / L: both near-binding (the rate by 12%);
- ``drop``: C = 8 and R = 10 / L, both halved at 40% of the ideal makespan;
- ``brownout``: C = 8 and 30% of calls answer 500 from 30% to 60% of the ideal makespan.

In each scenario, side by side: the seed's schemes (``bench/schemes.py``), imagestudio told
the limits (``provider_limits`` pinned, as known at the start) and imagestudio not told
(adaptive). Each run has a fake provider process of its own, reset when it starts (limiter,
counters, call log, random sequence): the same latencies are drawn in the same order. The
slow schemes (B, C, E) and D run in a separate process at the same time as A and imagestudio,
each against its own fake, so that the whole benchmark fits in minutes. Scheme C runs the
first ``--serial-images`` images and its makespan is extrapolated to N (it is serial: never
rate limited, every image costs one latency; the limit events all fall inside that prefix).

Lower bound of a run: ``max(W / C, N / R)`` where W is the provider time the N images need:
the sum of the run's successful call latencies (the fake's log, start to end); for a run that
failed images (its few successes, sent into an overloaded fake, are no measure of the work),
the mean W of the scenario's runs that completed every image. When limits change during the
run, each term is the time at which the piecewise capacity (C(t) seconds of calls per second,
R(t) calls per second) has delivered W, respectively N.

Also: one user with 2,000 images beside 20 users with 10 each, all on one provider key
(C = 16, mean latency 2.5 s: shorter latencies would ask more images per second than one
process on two cores turns over, and the service, not the provider, would set the pace),
for Jain's index and the small jobs' waits; and 1 vs 4 ``imagestudio worker`` processes on
PostgreSQL (scenario 1). imagestudio runs in this process with 64 slots (the governor, not the
slot count, limits), backoff scaled down like the latencies, logging at WARNING.

Writes ``bench/out/governor.md`` and ``bench/out/timeline-<scenario>-<scheme>.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from bench import timeline
from bench.schemes import (
    SCHEMES,
    Background,
    FakeServer,
    LimitEvent,
    SchemeResult,
    SchemeRun,
    drive_events,
    fake_servers,
    run_scheme,
)
from imagestudio.observability.logs import configure_logging
from imagestudio.policy.governor import GovernorState, Observation
from imagestudio.runtime.services import Services, open_services
from imagestudio.scheduler.probe import Probe, Stage
from imagestudio.settings import Settings
from imagestudio.store.records import AttemptRecord, ClaimedTask, JobRecord
from testkit import pg
from testkit.fleet import console_script, worker_env
from testkit.payloads import batch_payload
from testkit.settings import loopback_settings

OUT_DIR = Path(__file__).resolve().parent / "out"
OUT = OUT_DIR / "governor.md"
SKU_SIZES = (3, 5, 7, 5)  # images per SKU, repeated: 80 SKUs for 400 images
WORKER_SLOTS = 64  # imagestudio's slots: large, so the governor is what limits
TERMINAL = {"succeeded", "partially_failed", "failed", "cancelled"}
LABELS = {**SCHEMES, "told": "imagestudio, told", "adaptive": "imagestudio, not told"}
ORDER = ("A", "B", "C", "D", "E", "told", "adaptive")


# ---------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    slug: str
    title: str
    images: int
    latency: float  # mean seconds
    concurrency: int | None
    rpm: float | None
    headers: bool = True
    events: tuple[tuple[float, dict[str, Any]], ...] = ()  # (fraction of ideal, changes)
    error_until: float | None = None  # brownouts: fraction of ideal when it ends
    seed: int = 1
    binds: str = "one"  # "one", "both" (or dropping), "brownout": which target applies

    @property
    def ideal(self) -> float:
        """The nominal lower bound at the configured mean latency and starting limits."""
        terms = [0.0]
        if self.concurrency:
            terms.append(self.images * self.latency / self.concurrency)
        if self.rpm:
            terms.append(self.images * 60 / self.rpm)
        return max(terms)

    @property
    def width(self) -> float:
        """Calls in flight the limits allow at the start: C, or R*L for a rate limit."""
        if self.concurrency:
            return float(self.concurrency)
        return (self.rpm or 0) / 60 * self.latency

    def fake_config(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rpm": self.rpm,
            "rpm_burst": None,
            "latency_ms": self.latency * 1000,
            "latency_dist": "lognormal",
            "error_rate": 0.0,
            "seed": self.seed,
            "ratelimit_headers": self.headers,
        }

    def limit_events(self) -> tuple[LimitEvent, ...]:
        return tuple(LimitEvent(f * self.ideal, changes) for f, changes in self.events)

    def segments(self) -> list[tuple[float, int | None, float | None]]:
        """(from t, C, R per second) as the provider's limits change during a run."""
        c, r = self.concurrency, self.rpm
        out = [(0.0, c, r / 60 if r else None)]
        for event in self.limit_events():
            c = event.changes.get("concurrency", c)
            r = event.changes.get("rpm", r)
            out.append((event.at, c, r / 60 if r else None))
        return out

    def shaded(self) -> list[tuple[float, float, str]]:
        spans = []
        for event in self.limit_events():
            if "error_rate" in event.changes and event.changes["error_rate"] > 0:
                end = (self.error_until or 1.0) * self.ideal
                spans.append((event.at, end, f"{event.changes['error_rate']:.0%} 500s"))
            elif "error_rate" not in event.changes:
                changed = ", ".join(f"{k}={v:g}" for k, v in event.changes.items())
                spans.append((event.at, event.at, f"limits drop: {changed}"))
        return spans

    def pins(self, api_base: str) -> dict[str, dict[str, float]]:
        limit: dict[str, float] = {}
        if self.concurrency:
            limit["max_concurrency"] = self.concurrency
        if self.rpm:
            limit["rpm"] = self.rpm
        return {api_base: limit}

    def images_per_sku(self) -> tuple[int, ...]:
        sizes: list[int] = []
        while sum(sizes) < self.images:
            sizes.append(min(SKU_SIZES[len(sizes) % len(SKU_SIZES)], self.images - sum(sizes)))
        return tuple(sizes)

    def describe(self) -> str:
        parts = []
        if self.concurrency:
            parts.append(f"C = {self.concurrency}")
        if self.rpm:
            parts.append(f"R = {self.rpm:g} rpm ({self.rpm / 60:g}/s)")
        parts.append(f"latency lognormal, mean {self.latency:g} s")
        parts.append(f"N = {self.images}")
        parts.append("x-ratelimit headers " + ("on" if self.headers else "off"))
        for event in self.limit_events():
            changed = ", ".join(f"{k} {v:g}" for k, v in event.changes.items())
            parts.append(f"at {event.at:.1f} s: {changed}")
        return "; ".join(parts)


def scenarios(images: int, latency: float) -> list[Scenario]:
    n, lat = images, latency
    per_min = 60 / lat  # calls per minute one slot makes
    drop_at, brown = 0.4, (0.3, 0.6)
    return [
        Scenario("concurrency", "1. Concurrency-bound (C = 8, no rate limit)", n, lat, 8, None),
        Scenario(
            "rate-headers",
            "2a. Rate-bound (R*L = 8), x-ratelimit headers on",
            n,
            lat,
            None,
            8 * per_min,
        ),
        Scenario(
            "rate-no-headers",
            "2b. Rate-bound (R*L = 8), no x-ratelimit headers: 429s only",
            n,
            lat,
            None,
            8 * per_min,
            headers=False,
        ),
        Scenario(
            "both",
            "3. Both near-binding (C = 8, R*L = 7)",
            n,
            lat,
            8,
            7 * per_min,
            binds="both",
        ),
        Scenario(
            "drop",
            "4. Limits drop mid-run (C 8 -> 4, R*L 10 -> 5 at 40%)",
            n,
            lat,
            8,
            10 * per_min,
            events=((drop_at, {"concurrency": 4, "rpm": 5 * per_min}),),
            binds="both",
        ),
        Scenario(
            "brownout",
            "5. Brownout (C = 8; 30% of calls answer 500 from 30% to 60%)",
            n,
            lat,
            8,
            None,
            events=((brown[0], {"error_rate": 0.3}), (brown[1], {"error_rate": 0.0})),
            error_until=brown[1],
            binds="brownout",
        ),
    ]


# ---------------------------------------------------------------------------- one run


@dataclass
class Run:
    scenario: Scenario
    label: str  # A-E, told, adaptive
    started: float  # epoch seconds
    elapsed: float  # measured seconds
    succeeded: int
    failed: int
    attempted: int
    calls: list[dict[str, Any]]
    failures: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)  # governor over time
    # per attempt: claimed, call started, call ended (the window slot frees), attempt ended
    attempts: list[tuple[float, float | None, float | None, float]] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)  # seconds per call of a step
    reference_work: float | None = None  # for runs that failed images (see the module doc)

    @property
    def extrapolated(self) -> bool:
        return self.attempted < self.scenario.images

    @property
    def makespan(self) -> float:
        return self.elapsed * self.scenario.images / max(1, self.attempted)

    def count(self, status: int) -> int:
        return sum(1 for c in self.calls if c.get("status") == status)

    @property
    def share_429(self) -> float:
        return self.count(429) / len(self.calls) if self.calls else 0.0

    @property
    def work(self) -> float:
        """Provider seconds the N images need: successful latencies, scaled to N."""
        ok = [c["end"] - c["start"] for c in self.calls if c.get("status") == 200 and c["end"]]
        if not ok:
            return self.scenario.images * self.scenario.latency
        return float(sum(ok) * self.scenario.images / len(ok))

    @property
    def bound(self) -> float:
        work = self.work if self.reference_work is None else self.reference_work
        return lower_bound(self.scenario, work)

    @property
    def ratio(self) -> float:
        return self.makespan / self.bound

    @property
    def peak(self) -> int:
        """Most calls open at the provider at once (rejected ones too)."""
        marks = sorted(
            [(c["start"], 1) for c in self.calls] + [(c["end"], -1) for c in self.calls],
            key=lambda m: (m[0], m[1]),
        )
        peak = level = 0
        for _, step in marks:
            level += step
            peak = max(peak, level)
        return peak

    @property
    def provider_in_flight(self) -> float:
        """Mean calls in flight at the provider over the measured run."""
        busy = sum(c["end"] - c["start"] for c in self.calls if c.get("end"))
        return busy / self.elapsed if self.elapsed else 0.0

    @property
    def floor(self) -> float:
        """``greedy_floor`` on this run's successful latencies, in the order they started."""
        ok = sorted((c for c in self.calls if c.get("status") == 200), key=lambda c: c["start"])
        return greedy_floor(self.scenario, [c["end"] - c["start"] for c in ok])

    @property
    def slots_held(self) -> float | None:
        """Mean window slots held: attempts from their claim to their call's end."""
        if not self.attempts:
            return None
        held = sum((call_end or end) - start for start, _, call_end, end in self.attempts)
        return held / self.elapsed

    @property
    def before_call(self) -> float | None:
        """Mean seconds from an attempt's claim to its provider call (the slot held idle)."""
        waits = [cs - start for start, cs, _, _ in self.attempts if cs is not None]
        return statistics.mean(waits) if waits else None

    @property
    def after_call(self) -> float | None:
        """Mean seconds from a call's end to its attempt's end (post-process, store)."""
        tails = [end - ce for _, _, ce, end in self.attempts if ce is not None]
        return statistics.mean(tails) if tails else None


def lower_bound(scenario: Scenario, work: float) -> float:
    """``max(work / C, N / R)``, piecewise when the limits change (module doc)."""
    segments = scenario.segments()
    bounds = [0.0]
    if any(c for _, c, _ in segments):
        bounds.append(_time_to_deliver(segments, work, lambda s: s[1]))
    if any(r for _, _, r in segments):
        bounds.append(_time_to_deliver(segments, scenario.images, lambda s: s[2]))
    return max(bounds)


def greedy_floor(scenario: Scenario, latencies: Sequence[float]) -> float:
    """The makespan of a perfect client on these latencies: knows the limits, has no overhead,
    starts each call (in the given order) as soon as C(t) and R(t) allow (starts spaced
    1/R, no burst). What remains above the lower bound is the tail of the last calls."""
    segments = scenario.segments()

    def limits(t: float) -> tuple[int | None, float | None]:
        current = segments[0]
        for segment in segments:
            if segment[0] <= t:
                current = segment
        return current[1], current[2]

    running: list[float] = []
    t, last = 0.0, -math.inf
    for latency in latencies:
        while True:
            concurrency, rate = limits(t)
            if rate:
                t = max(t, last + 1 / rate)
            while running and running[0] <= t:
                heapq.heappop(running)
            if concurrency is None or len(running) < concurrency:
                break
            t = running[0]
        heapq.heappush(running, t + latency)
        last = t
    return max(running) if running else 0.0


def _time_to_deliver(segments: Sequence[Any], demand: float, capacity: Any) -> float:
    delivered = 0.0
    for i, segment in enumerate(segments):
        start = float(segment[0])
        end = float(segments[i + 1][0]) if i + 1 < len(segments) else math.inf
        rate = float(capacity(segment) or 0.0)
        if not rate:
            return start  # no limit from here on: nothing more to wait for
        if delivered + rate * (end - start) >= demand:
            return start + (demand - delivered) / rate
        delivered += rate * (end - start)
    return math.inf


def from_scheme(scenario: Scenario, result: SchemeResult) -> Run:
    return Run(
        scenario=scenario,
        label=result.scheme,
        started=result.started,
        elapsed=result.makespan,
        succeeded=result.succeeded,
        failed=result.failed,
        attempted=result.attempted,
        calls=result.calls,
        failures=result.errors,
    )


# ---------------------------------------------------------------------------- imagestudio


def service_settings(workdir: Path, **extra: Any) -> Settings:
    return loopback_settings(
        workdir / f"imagestudio-{uuid.uuid4().hex[:8]}",
        None,
        worker_concurrency=WORKER_SLOTS,
        backoff_base_seconds=0.1,  # time-compressed like the latencies
        backoff_max_seconds=2.0,
        **extra,
    )


def new_key() -> str:
    return f"sk-bench-{uuid.uuid4().hex[:16]}"  # a fresh key: a governor from scratch


class BenchProbe(Probe):
    """What the benchmark watches of the service, through ``scheduler.probe`` (nothing is
    patched): the governor's state after every call it observes, and the seconds of the
    service's own steps around the provider call. Nothing is kept before ``begin``.

    A probe, not polling: reading ``governor_states()`` often enough to see the window move
    costs the service measurably at this time compression.
    """

    def __init__(self) -> None:
        self.started: float | None = None  # epoch seconds
        self.samples: list[dict[str, Any]] = []  # governor over time
        self.stages: dict[str, list[float]] = {}  # seconds per call of a step

    def begin(self, started: float) -> None:
        self.started = started

    def governor(self, task: ClaimedTask, observation: Observation, state: GovernorState) -> None:
        if self.started is None:
            return
        self.samples.append(
            {
                "t": observation.now - self.started,
                "job": task.job.job_id,
                "kind": observation.kind,
                "window": state.effective_window,
                "rate": state.effective_rate,
                "ceiling": state.ceiling,
                "ssthresh": state.ssthresh,
                "rate_limited": state.rate_limited,
                "cooldown": max(0.0, state.cooldown_until - observation.now),
                "latency": state.latency,
                "base_latency": state.base_latency,
            }
        )

    def stage(self, name: Stage, seconds: float) -> None:
        if self.started is not None and name is not Stage.PROVIDER_CALL:
            self.stages.setdefault(str(name), []).append(seconds)


async def imagestudio_run(
    fake: FakeServer, scenario: Scenario, workdir: Path, *, told: bool
) -> Run:
    pins = scenario.pins(fake.api_base) if told else {}
    settings = service_settings(workdir, provider_limits=pins)
    probe = BenchProbe()
    async with open_services(settings, probe=probe) as services:
        payload = batch_payload(
            fake.url,
            f"governor-{scenario.slug}-{uuid.uuid4().hex[:6]}",
            images_per_sku=scenario.images_per_sku(),
            api_key=new_key(),
            size=256,
        )
        job = (await services.jobs.submit(payload, None)).job
        fake.start(**scenario.fake_config())
        started_wall, started = time.time(), time.monotonic()
        probe.begin(started_wall)
        events = asyncio.create_task(drive_events(fake.url, scenario.limit_events(), started))
        await services.worker(WORKER_SLOTS).run_until_idle()
        elapsed = time.monotonic() - started
        events.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await events
        images = await services.store.images(job.id)
        attempts = await services.store.attempts(job.id)
    stats = fake.stats()
    failures: dict[str, int] = {}
    for image in images:
        if image.status != "succeeded":
            kind = image.error_kind or image.status
            failures[kind] = failures.get(kind, 0) + 1
    return Run(
        scenario=scenario,
        label="told" if told else "adaptive",
        started=started_wall,
        elapsed=elapsed,
        succeeded=sum(1 for i in images if i.status == "succeeded"),
        failed=sum(1 for i in images if i.status != "succeeded"),
        attempted=len(images),
        calls=stats["calls"],
        failures=failures,
        samples=probe.samples,
        attempts=_attempt_spans(attempts, started_wall + elapsed),
        stages=probe.stages,
    )


def _attempt_spans(
    attempts: Sequence[AttemptRecord], end: float
) -> list[tuple[float, float | None, float | None, float]]:
    def ts(moment: datetime | None) -> float | None:
        return moment.timestamp() if moment is not None else None

    return [
        (
            a.started_at.timestamp(),
            ts(a.call_started_at),
            ts(a.call_ended_at),
            ts(a.ended_at) or end,
        )
        for a in attempts
    ]


# ---------------------------------------------------------------------------- one scenario


def run_scenario(
    scenario: Scenario,
    fakes: Sequence[FakeServer],
    workdir: Path,
    serial_images: int,
    schemes: bool = True,
) -> list[Run]:
    """A, told and adaptive here, one after another on ``fakes[0]``; B, E and C-then-D at the
    same time in a background process, each chain on a fake of its own."""
    main, f_b, f_e, f_cd = fakes

    def scheme(label: str, fake: FakeServer, limit: int = 1 << 30) -> SchemeRun:
        return SchemeRun(
            scheme=label,
            server_url=fake.url,
            images_per_sku=scenario.images_per_sku(),
            api_key=new_key(),
            fake_config=scenario.fake_config(),
            events=scenario.limit_events(),
            limit=limit,
        )

    runs: list[Run] = []
    background = None
    if schemes:
        background = Background(
            [
                [scheme("B", f_b)],
                [scheme("E", f_e)],
                [scheme("C", f_cd, serial_images), scheme("D", f_cd)],
            ]
        )
        runs.append(from_scheme(scenario, asyncio.run(run_scheme(scheme("A", main)))))
    for told in (True, False):
        runs.append(asyncio.run(imagestudio_run(main, scenario, workdir, told=told)))
    if background is not None:
        runs += [from_scheme(scenario, r) for r in background.result()]
    complete = [r.work for r in runs if r.failed == 0 and not r.extrapolated]
    for run in runs:
        if run.failed and complete:
            run.reference_work = statistics.mean(complete)
    return sorted(runs, key=lambda r: ORDER.index(r.label))


# ---------------------------------------------------------------------------- mixed users


@dataclass
class MixedResult:
    users: int
    big_images: int
    small_images: int
    concurrency: int
    latency: float
    window: tuple[float, float]  # while all users are backlogged, seconds from small submit
    starts: dict[str, int]  # per user, in the window
    slot_seconds: dict[str, float]
    first_start_waits: list[float]
    completion_waits: list[float]
    turnover: float  # mean attempt (slot) duration
    submit_seconds: list[float]
    arrivals: dict[str, tuple[float, float]]  # small user: (created, first start) from first
    claims: dict[str, list[float]]  # per user: attempt starts, seconds from the last submit
    mean_window: float
    big_queued_at_submit: int
    calls: int
    rate_limited: int

    @property
    def jain(self) -> float:
        return jain([self.starts[u] / self.span for u in self.starts])

    @property
    def jain_slots(self) -> float:
        return jain([self.slot_seconds[u] / self.span for u in self.slot_seconds])

    @property
    def span(self) -> float:
        return self.window[1] - self.window[0]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1 when all equal, 1/n when one has all."""
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares else 1.0


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


async def _wait_terminal(services: Services, jobs: Sequence[JobRecord], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        states = [await services.store.get_job(j.user_id, j.job_id) for j in jobs]
        if all(s.status in TERMINAL for s in states):
            return
        await asyncio.sleep(0.5)  # the timings come from the database, not from this poll
    raise RuntimeError("the small jobs did not finish in time")


async def mixed_users(
    fake: FakeServer,
    workdir: Path,
    *,
    big: int = 2000,
    users: int = 20,
    each: int = 10,
    concurrency: int = 16,
    latency: float = 2.5,
    head_start: float = 5.0,
) -> MixedResult:
    settings = service_settings(workdir)
    key = new_key()  # one team account: every user's jobs share the provider key
    probe = BenchProbe()
    async with open_services(settings, probe=probe) as services:
        fake.start(
            concurrency=concurrency,
            rpm=None,
            rpm_burst=None,
            latency_ms=latency * 1000,
            latency_dist="lognormal",
            error_rate=0.0,
            seed=7,
            ratelimit_headers=True,
        )
        big_payload = batch_payload(
            fake.url,
            "big",
            images_per_sku=(10,) * (big // 10),
            api_key=key,
            user_id="big",
            size=256,
        )
        big_job = (await services.jobs.submit(big_payload, None)).job
        samples = probe.samples
        probe.begin(time.time())
        stop = asyncio.Event()
        worker = asyncio.create_task(services.worker(WORKER_SLOTS).run(stop))
        await asyncio.sleep(head_start)  # the big job holds every slot when the others arrive
        queued_big = (await services.store.progress(None, "big")).counts.get("queued", 0)
        payloads = [
            batch_payload(
                fake.url,
                f"small-{u:02d}",
                images_per_sku=(5,) * (each // 5),
                api_key=key,
                user_id=f"user-{u:02d}",
                size=256,
            )
            for u in range(users)
        ]
        began = time.perf_counter()  # all at once, as twenty people pressing "generate"
        small = [
            r.job for r in await asyncio.gather(*(services.jobs.submit(p, None) for p in payloads))
        ]
        submit_seconds = [time.perf_counter() - began]
        await _wait_terminal(services, small, 600)
        await services.store.cancel(big_job.id)
        stop.set()
        await worker
        finished = [await services.store.get_job(j.user_id, j.job_id) for j in small]
        attempts = {j.user_id: await services.store.attempts(j.id) for j in [big_job, *small]}
    stats = fake.stats()["totals"]
    submitted = max(j.created_at.timestamp() for j in small)
    first_submit = min(j.created_at.timestamp() for j in small)
    drained = min(max(a.started_at.timestamp() for a in attempts[j.user_id]) for j in small)
    starts, slots = {}, {}
    for user, records in attempts.items():
        starts[user] = sum(1 for a in records if submitted <= a.started_at.timestamp() <= drained)
        slots[user] = sum(
            max(
                0.0,
                min(drained, (a.ended_at or a.started_at).timestamp())
                - max(submitted, a.started_at.timestamp()),
            )
            for a in records
        )
    first_waits = [
        min(a.started_at.timestamp() for a in attempts[j.user_id]) - j.created_at.timestamp()
        for j in small
    ]
    done_waits = [
        (j.finished_at or j.updated_at).timestamp() - j.created_at.timestamp() for j in finished
    ]
    spans = [
        (a.ended_at - a.started_at).total_seconds()
        for records in attempts.values()
        for a in records
        if a.ended_at is not None
    ]
    return MixedResult(
        users=users + 1,
        big_images=big,
        small_images=each,
        concurrency=concurrency,
        latency=latency,
        window=(0.0, drained - submitted),
        starts=starts,
        slot_seconds=slots,
        first_start_waits=first_waits,
        completion_waits=done_waits,
        turnover=statistics.mean(spans),
        submit_seconds=submit_seconds,
        claims={
            user: sorted(a.started_at.timestamp() - submitted for a in records)
            for user, records in attempts.items()
        },
        arrivals={
            j.user_id: (
                j.created_at.timestamp() - first_submit,
                min(a.started_at.timestamp() for a in attempts[j.user_id]) - first_submit,
            )
            for j in small
        },
        mean_window=statistics.mean(s["window"] for s in samples) if samples else 0.0,
        big_queued_at_submit=int(queued_big),
        calls=int(stats["requests"]),
        rate_limited=int(stats["429"]),
    )


# ---------------------------------------------------------------------------- PostgreSQL


@dataclass
class PgRun:
    workers: int
    makespan: float
    succeeded: int
    failed: int
    calls: int
    rate_limited: int
    work: float
    bound: float


def postgres_available() -> bool:
    return pg.available("skipping the worker-process runs")


def pg_database() -> contextlib.AbstractContextManager[str]:
    return pg.scratch_database("imagestudio_governor")


@contextlib.contextmanager
def worker_processes(count: int, env: dict[str, str], workdir: Path) -> Iterator[None]:
    procs, logs = [], []
    try:
        for i in range(count):
            log_path = workdir / f"worker-{count}-{i}.log"
            logs.append(log_path)
            with log_path.open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [console_script(), "worker", "--concurrency", str(WORKER_SLOTS)],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 60
        while not all("worker started" in p.read_text(errors="replace") for p in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"imagestudio workers did not start; see {workdir}")
            time.sleep(0.1)
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def _submit_and_wait(settings: Settings, fake: FakeServer, scenario: Scenario) -> PgRun:
    async with open_services(settings, migrate=False) as services:
        payload = batch_payload(
            fake.url,
            f"pg-{uuid.uuid4().hex[:6]}",
            images_per_sku=scenario.images_per_sku(),
            api_key=new_key(),
            size=256,
        )
        fake.start(**scenario.fake_config())
        job = (await services.jobs.submit(payload, None)).job
        await _wait_terminal(services, [job], 600)
        done = await services.store.get_job(job.user_id, job.job_id)
        images = await services.store.images(job.id)
    stats = fake.stats()
    ok = [c["end"] - c["start"] for c in stats["calls"] if c.get("status") == 200]
    work = sum(ok) * scenario.images / len(ok) if ok else 0.0
    assert done.finished_at is not None
    return PgRun(
        workers=0,
        makespan=(done.finished_at - done.created_at).total_seconds(),
        succeeded=sum(1 for i in images if i.status == "succeeded"),
        failed=sum(1 for i in images if i.status != "succeeded"),
        calls=int(stats["totals"]["requests"]),
        rate_limited=int(stats["totals"]["429"]),
        work=work,
        bound=lower_bound(scenario, work),
    )


def pg_workers(
    fake: FakeServer, scenario: Scenario, workdir: Path, counts: Sequence[int] = (1, 4)
) -> list[PgRun]:
    results = []
    for count in counts:
        with pg_database() as url:
            data_dir = workdir / f"pg-{count}"
            secret = Fernet.generate_key().decode()
            settings = loopback_settings(data_dir, url, secret_key=secret)
            env = worker_env(
                settings,
                SECRET_KEY=secret,
                WORKER_CONCURRENCY=str(WORKER_SLOTS),
                BACKOFF_BASE_SECONDS="0.1",
                BACKOFF_MAX_SECONDS="2",
            )
            with worker_processes(count, env, workdir):
                run = asyncio.run(_submit_and_wait(settings, fake, scenario))
            run.workers = count
            results.append(run)
            print(
                f"  {count} worker process(es): {run.makespan:.1f} s, "
                f"{run.rate_limited} x 429 of {run.calls} calls",
                flush=True,
            )
    return results


# ---------------------------------------------------------------------------- charts


def draw_charts(runs: Sequence[Run]) -> list[Path]:
    if not runs:
        return []
    scenario = runs[0].scenario
    span = max(max(r.elapsed for r in runs), max(r.bound for r in runs)) * 1.02
    limits = [(t, float(c) if c else None) for t, c, _ in scenario.segments()]
    paths = []
    for run in runs:
        window = sorted((s["t"], s["window"]) for s in run.samples)
        note = ""
        if run.extrapolated:
            note = f"first {run.attempted} of {scenario.images} images shown"
        subtitle = (
            f"{scenario.title}. Makespan {run.makespan:.1f} s"
            + (" (extrapolated)" if run.extrapolated else "")
            + f" = {run.ratio:.2f}x the lower bound; 429s {run.share_429:.1%} of "
            f"{len(run.calls)} calls; failed images {run.failed}"
        )
        path = OUT_DIR / f"timeline-{scenario.slug}-{run.label}.png"
        timeline.draw(
            timeline.Chart(
                title=LABELS[run.label],
                subtitle=subtitle,
                calls=run.calls,
                origin=run.started,
                span=span,
                limit=limits,
                bound=run.bound,
                events=scenario.shaded(),
                window=window,
                note=note,
            ),
            path,
        )
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- report


def target_of(scenario: Scenario) -> tuple[float, float]:
    return (1.10, 0.02) if scenario.binds == "one" else (1.20, 0.03)


def scenario_table(runs: Sequence[Run]) -> str:
    scenario = runs[0].scenario
    denominator = "C" if scenario.concurrency else "R*L"
    lines = [
        f"### {scenario.title}",
        "",
        scenario.describe() + f". Ideal (nominal) makespan {scenario.ideal:.1f} s.",
        "",
        f"| scheme | makespan s | / lower bound | 429s / calls | 500s | failed images "
        f"| peak in flight / {denominator} | mean in flight at provider | mean window slots held |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        star = "*" if run.extrapolated else ""
        slots = run.slots_held
        lines.append(
            f"| {LABELS[run.label]} | {run.makespan:.1f}{star} | {run.ratio:.2f}{star} "
            f"| {run.share_429:.1%} ({run.count(429)}/{len(run.calls)}) | {run.count(500)} "
            f"| {run.failed}{_of(run)} | {run.peak / scenario.width:.2f} "
            f"| {run.provider_in_flight:.1f} | {'' if slots is None else f'{slots:.1f}'} |"
        )
    c_run = next((r for r in runs if r.extrapolated), None)
    if c_run is not None:
        lines += [
            "",
            f"\\* C ran the first {c_run.attempted} images in {c_run.elapsed:.1f} s; "
            f"its makespan is that times {scenario.images}/{c_run.attempted}.",
        ]
    adaptive = next((r for r in runs if r.label == "adaptive"), None)
    if adaptive is not None and adaptive.failed == 0:
        floor = adaptive.floor
        lines += [
            "",
            f"A perfect client (knows the limits, no overhead, greedy) on the not-told run's "
            f"latencies: {floor:.1f} s = {floor / adaptive.bound:.2f}x the lower bound (the tail "
            "of the last calls); the rest of imagestudio's ratio is its own time per call and "
            "the governor's learning.",
        ]
    lines += ["", governor_notes(runs), ""]
    return "\n".join(lines)


def _of(run: Run) -> str:
    return f" of {run.attempted}" if run.extrapolated else ""


def governor_notes(runs: Sequence[Run]) -> str:
    out = []
    for run in runs:
        if not run.samples:
            continue
        windows = [s["window"] for s in run.samples]
        quarter = [
            windows[min(len(windows) - 1, int(q * len(windows)))] for q in (0.1, 0.25, 0.5, 0.75)
        ]
        last = run.samples[-1]
        rate = last["rate"]
        hits = [
            f"{c['start'] - run.started:.1f}"
            for c in sorted(run.calls, key=lambda c: c["start"])
            if c.get("status") == 429
        ]
        out.append(
            f"- {LABELS[run.label]}: W at 10/25/50/75% of the run "
            f"{'/'.join(f'{w:.1f}' for w in quarter)}, max {max(windows):.1f}, final "
            f"{windows[-1]:.1f}; ceiling {last['ceiling'] if last['ceiling'] else '-'}; pace "
            f"{f'{rate * 60:.0f}/min' if rate else 'none'}; 429s at t = "
            f"{', '.join(hits[:12]) or '-'}{' ...' if len(hits) > 12 else ''}"
            + (f"; failures {run.failures}" if run.failures else "")
        )
        before, after = run.before_call, run.after_call
        if before is not None and after is not None and run.stages:
            steps = ", ".join(
                f"{label} {1000 * statistics.median(times):.0f}"
                for label, times in run.stages.items()
                if times
            )
            out.append(
                f"  - per attempt: {before:.2f} s from claim to call (a window slot held before "
                f"the call), {after:.2f} s after it; median ms per step: {steps}"
            )
    return "\n".join(out)


def summary_table(all_runs: Sequence[Sequence[Run]]) -> str:
    header = "| scenario | " + " | ".join(LABELS[k] for k in ORDER) + " |"
    lines = [
        "Each cell: makespan / lower bound, 429s as a share of calls, failed images "
        "(C: extrapolated from its first images).",
        "",
        header,
        "|---|" + "---:|" * len(ORDER),
    ]
    for runs in all_runs:
        by = {r.label: r for r in runs}
        cells = []
        for key in ORDER:
            r = by.get(key)
            if r is None:
                cells.append("")
                continue
            failed = f", **{r.failed} failed**" if r.failed else ""
            cells.append(f"{r.ratio:.2f}x, {r.share_429:.0%}{failed}")
        lines.append(f"| {runs[0].scenario.slug} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(all_runs: Sequence[Sequence[Run]]) -> list[tuple[str, bool, str]]:
    out = []
    for runs in all_runs:
        scenario = runs[0].scenario
        by = {r.label: r for r in runs}
        a = by["adaptive"]
        ratio, share = target_of(scenario)
        ok = a.ratio <= ratio and a.share_429 < share and a.failed == 0
        held = (
            " (no target in the issue; held to the 'both' one)"
            if scenario.binds == "brownout"
            else ""
        )
        out.append(
            (
                f"{scenario.slug}: not told within {ratio:.2f}x, 429s < {share:.0%}, "
                f"0 failed{held}",
                ok,
                f"{a.ratio:.2f}x, {a.share_429:.1%}, {a.failed} failed",
            )
        )
        if not all(key in by for key in "ABCDE"):
            continue
        beaten, both = [], []
        for key in "ABCDE":
            s = by[key]
            # A run that failed images never delivered the job: its makespan is unbounded.
            faster = a.failed == 0 and (s.failed > 0 or a.makespan < s.makespan)
            fewer = a.share_429 < s.share_429
            if faster or fewer:
                beaten.append(key)
            if faster and fewer:
                both.append(key)
        out.append(
            (
                f"{scenario.slug}: A-E each beaten on makespan (a run that failed images never "
                "delivered the job) or 429s",
                len(beaten) == 5,
                f"beaten: {''.join(beaten) or '-'}; on both: {''.join(both) or '-'}",
            )
        )
    return out


def mixed_report(m: MixedResult) -> str:
    fair_done = m.small_images * m.turnover * m.users / max(1.0, m.mean_window)
    fifo = m.big_queued_at_submit * m.turnover / max(1.0, m.mean_window)
    small_median = statistics.median(v for k, v in m.starts.items() if k != "big")
    return "\n".join(
        [
            f"### Mixed users: 1 user with {m.big_images} images beside "
            f"{m.users - 1} users with {m.small_images} each",
            "",
            f"Provider C = {m.concurrency}, latency lognormal mean {m.latency:g} s, not told; "
            f"the small jobs arrive {m.big_queued_at_submit} queued images after the big one "
            "started. Every user's jobs use one provider key (one team account).",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| window while all {m.users} users are backlogged | {m.span:.1f} s |",
            f"| Jain's index, image starts per user per second in that window | {m.jain:.3f} |",
            f"| Jain's index, slot-seconds per user in that window | {m.jain_slots:.3f} |",
            f"| big user's starts / a small user's median starts in the window | "
            f"{m.starts['big']} / {small_median:g} |",
            f"| slot turnover (mean time an image holds a slot) | {m.turnover:.2f} s |",
            f"| mean governor window W | {m.mean_window:.1f} |",
            f"| small jobs: p95 wait, submit -> first image starts | "
            f"{p95(m.first_start_waits):.2f} s ({p95(m.first_start_waits) / m.turnover:.1f} "
            "turnovers) |",
            f"| small jobs: p95 wait, submit -> job finished | {p95(m.completion_waits):.2f} s |",
            f"| fair share reference: {m.small_images} images x turnover x users / W | "
            f"{fair_done:.1f} s |",
            f"| behind the big job (FIFO) it would be: queued big images x turnover / W | "
            f"{fifo:.0f} s |",
            f"| 429s / calls | {m.rate_limited} / {m.calls} |",
            "",
            "First start of each small job, seconds after its submission, in submission order: "
            + ", ".join(
                f"{first - created:.1f}"
                for created, first in sorted(m.arrivals.values(), key=lambda a: a[0])
            )
            + ".",
            "",
        ]
    )


def pg_report(runs: Sequence[PgRun]) -> str:
    if not runs:
        return "### 1 vs 4 worker processes on PostgreSQL\n\nskipped: PostgreSQL unreachable\n"
    one = runs[0]
    lines = [
        "### 1 vs 4 worker processes on PostgreSQL (scenario 1, not told)",
        "",
        "Real `imagestudio worker` processes (64 slots each) on a fresh database; makespan is "
        "the job's `created_at` to `finished_at`.",
        "",
        "| worker processes | makespan s | / lower bound | / 1 process | 429s / calls | failed |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.workers} | {r.makespan:.1f} | {r.makespan / r.bound:.2f} "
            f"| {r.makespan / one.makespan:.2f} | {r.rate_limited}/{r.calls} | {r.failed} |"
        )
    return "\n".join(lines) + "\n"


def verdict_lines(items: Sequence[tuple[str, bool, str]]) -> str:
    return "\n".join(f"- [{'x' if ok else ' '}] {what}: {got}" for what, ok, got in items)


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.governor", description=__doc__)
    parser.add_argument("--images", type=int, default=400, help="images per scenario run")
    parser.add_argument("--latency", type=float, default=2.0, help="mean call latency, s")
    parser.add_argument("--serial-images", type=int, default=30, help="scheme C's prefix")
    parser.add_argument("--only", nargs="*", help="scenario slugs to run (default: all)")
    parser.add_argument(
        "--imagestudio-only", action="store_true", help="skip the seed's schemes A-E"
    )
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-users run")
    parser.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL runs")
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)  # two log lines per image would be measured too

    began = time.perf_counter()
    chosen = [
        s for s in scenarios(args.images, args.latency) if not args.only or s.slug in args.only
    ]
    all_runs: list[list[Run]] = []
    mixed: MixedResult | None = None
    pg: list[PgRun] = []
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imagestudio-governor-") as tmp:
        workdir = Path(tmp)
        with fake_servers(4, workdir) as fakes:
            for fake in fakes:
                fake.warm(args.images)
            for scenario in chosen:
                print(f"{scenario.title} ...", flush=True)
                scenario_began = time.perf_counter()
                runs = run_scenario(
                    scenario, fakes, workdir, args.serial_images, not args.imagestudio_only
                )
                for run in runs:
                    print(
                        f"  {LABELS[run.label]:<32} {run.makespan:6.1f} s  {run.ratio:5.2f}x  "
                        f"429s {run.share_429:6.1%}  failed {run.failed}",
                        flush=True,
                    )
                draw_charts(runs)
                all_runs.append(runs)
                print(f"  ({time.perf_counter() - scenario_began:.0f} s)", flush=True)
            if not args.no_mixed:
                print("mixed users ...", flush=True)
                mixed = asyncio.run(mixed_users(fakes[0], workdir))
            if not args.no_pg and postgres_available():
                print("1 vs 4 worker processes on PostgreSQL ...", flush=True)
                pg = pg_workers(fakes[0], scenarios(args.images, args.latency)[0], workdir)
    text = report(all_runs, mixed, pg, time.perf_counter() - began, args)
    OUT.write_text(text, encoding="utf-8")
    print()
    print(text)
    print(f"written to {OUT} and {OUT_DIR}/timeline-*.png")
    return text


def report(
    all_runs: Sequence[Sequence[Run]],
    mixed: MixedResult | None,
    pg: Sequence[PgRun],
    seconds: float,
    args: argparse.Namespace,
) -> str:
    items = verdicts(all_runs) if all_runs else []
    if pg and len(pg) > 1:
        one, four = pg[0], pg[-1]
        items.append(
            (
                f"{four.workers} worker processes within 10% of 1, no more 429s",
                four.makespan <= 1.10 * one.makespan and four.rate_limited <= one.rate_limited,
                f"{four.makespan / one.makespan:.2f}x, 429s {four.rate_limited} vs "
                f"{one.rate_limited}",
            )
        )
    if mixed is not None:
        items.append(
            ("Jain's index >= 0.95 (mixed users)", mixed.jain >= 0.95, f"{mixed.jain:.3f}")
        )
        items.append(
            (
                "small jobs start within about one slot turnover (p95)",
                p95(mixed.first_start_waits) <= 1.5 * mixed.turnover,
                f"{p95(mixed.first_start_waits):.2f} s vs turnover {mixed.turnover:.2f} s",
            )
        )
    sections = [
        "# Provider governor benchmark",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"`python -m bench.governor --images {args.images} --latency {args.latency:g}` took "
        f"{seconds:.0f} s ({datetime.now().strftime('%Y-%m-%d %H:%M')}).",
        "",
        "## Targets (issue 4)",
        "",
        verdict_lines(items),
        "",
        "## Summary",
        "",
        summary_table(all_runs) if all_runs else "",
        "",
        "## Scenarios",
        "",
    ]
    sections += [scenario_table(runs) for runs in all_runs]
    if mixed is not None:
        sections.append(mixed_report(mixed))
    sections.append(pg_report(pg))
    return "\n".join(sections)


if __name__ == "__main__":
    main()
