"""The governor on a provider it was not tuned to: ``python -m bench.unseen``.

The provider is ``testkit.provider_sim`` (written apart from our fake, sharing no code), in a
process of its own; imagestudio runs in this process as ``imagestudio serve`` would, with
default settings (SQLite, ``WORKER_CONCURRENCY`` 16, ``WORKER_MAX_TASKS`` 512, default
governor, limits not told), logging at WARNING. Latency lognormal (sigma 0.5), mean L.

Scenarios (``width`` = the calls in flight the limits allow, C or R x L):

- ``conc``: C = 6, no headers, a generic 429 message;
- ``win1s``: R starts per 1-second window (R x L = 12), rate headers only on 429s
  (``x-ratelimit-*-requests`` whose reset is the 1-second window, not a minute);
- ``win10s``: R x 10 starts per 10-second window, IETF ``ratelimit-*`` headers on every answer;
- ``bare``: R per 1-second window, no headers at all, a generic message;
- ``bucket``: a token bucket (2 x R tokens, R per second: bursts allowed), 429s carry only
  ``retry-after-ms``;
- ``both``: C = 6 and R x L = 5, no headers, a generic message;
- ``rising``: C = 6, no headers; at 40% of the bound it rises to 12;
- ``wide``: C = 200, no headers (the many-calls-in-flight case).

Lower bound: ``max(W / C, (N - B) / R)`` with W the sum of the successful calls' latencies
(the simulator's log), B the burst the rate limit lets through at once (its window's count,
or the bucket's size), each term piecewise when limits change. The gap is the median time from
one call's end to the next call's start (the simulator's log) in the concurrency-bound runs,
while more images were queued than in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from imagestudio.cli.background_server import free_port
from imagestudio.observability.logs import configure_logging
from imagestudio.runtime.services import open_services
from testkit.payloads import batch_payload
from testkit.provider_sim import SimConfig
from testkit.settings import loopback_settings

OUT = Path(__file__).resolve().parent / "out" / "unseen.md"
SIGMA = 0.5


@dataclass(frozen=True)
class Scenario:
    slug: str
    latency: float
    images: int
    config: SimConfig
    binds: str = "one"  # one | both (both limits or changing): which target applies
    what: str = ""

    def target(self) -> tuple[float, float]:
        if self.binds == "one":
            return (1.20 if self.latency < 1 else 1.10), 0.015
        return 1.20, 0.03


def scenarios(latency: float, images: int) -> list[Scenario]:
    lat = latency
    per_s = 12 / lat  # R with R x L = 12
    win1 = max(1, round(per_s))
    base = SimConfig(latency=lat, sigma=SIGMA)

    def sc(slug: str, what: str, binds: str = "one", n: int = images, **kw: Any) -> Scenario:
        config = SimConfig(**{**asdict(base), **kw})
        return Scenario(f"{slug}@{lat:g}s", lat, n, config, binds, what)

    bound_conc = images * lat / 6
    return [
        sc("conc", "C = 6, no headers, generic 429", concurrency=6),
        sc(
            "win1s",
            f"{win1} starts per 1-s window, headers only on 429s",
            rate=win1,
            window=1.0,
            headers="on_429",
        ),
        sc(
            "win10s",
            f"{round(per_s * 10)} starts per 10-s window, IETF headers",
            n=max(images, 4 * round(per_s * 10)),  # the first window's burst is free
            rate=round(per_s * 10),
            window=10.0,
            headers="always",
            header_style="ietf",
        ),
        sc("bare", f"{win1} starts per 1-s window, no headers", rate=win1, window=1.0),
        sc(
            "bucket",
            f"token bucket {2 * per_s:g} tokens, {per_s:g}/s, retry-after-ms only",
            bucket_size=max(1.0, round(2 * per_s)),
            bucket_rate=per_s,
            headers="on_429",
            header_style="retry_ms",
        ),
        sc(
            "both",
            f"C = 6 and {max(1, round(5 / lat))} starts per 1-s window, no headers",
            "both",
            concurrency=6,
            rate=max(1, round(5 / lat)),
            window=1.0,
        ),
        sc(
            "rising",
            "C = 6, rising to 12 at 40%",
            "both",
            concurrency=6,
            changes=((0.4 * bound_conc, {"concurrency": 12}),),
        ),
    ]


def wide(latency: float, images: int) -> Scenario:
    config = SimConfig(latency=latency, sigma=SIGMA, concurrency=200)
    return Scenario(f"wide@{latency:g}s", latency, images, config, "one", "C = 200, no headers")


# ---------------------------------------------------------------------------- bounds


def _deliver(segments: Sequence[tuple[float, float | None]], demand: float) -> float:
    """When a capacity that is ``value`` per second from ``t`` on has delivered ``demand``."""
    done, t = 0.0, 0.0
    for i, (start, value) in enumerate(segments):
        end = segments[i + 1][0] if i + 1 < len(segments) else float("inf")
        if value is None:
            return start
        if done + (end - start) * value >= demand:
            return start + (demand - done) / value
        done += (end - start) * value
        t = end
    return t


def lower_bound(s: Scenario, work: float, n: int) -> float:
    c = s.config
    terms = [0.0]
    conc: list[tuple[float, float | None]] = [(0.0, c.concurrency)]
    for at, change in c.changes:
        conc.append((at, change.get("concurrency", conc[-1][1])))
    if c.concurrency is not None:
        terms.append(_deliver(conc, work))
    if c.rate is not None:
        terms.append(max(0.0, n - c.rate) / (c.rate / c.window))
    if c.bucket_size is not None and c.bucket_rate:
        terms.append(max(0.0, n - c.bucket_size) / c.bucket_rate)
    return max(terms)


def median_gap(log: Sequence[Sequence[float]], queued_until: float) -> float | None:
    """Median seconds from a successful call's end to the next call's start, for ends before
    ``queued_until`` (while work was still waiting)."""
    starts = sorted(entry[0] for entry in log)
    gaps = []
    for _, end, status in log:
        if status != 200 or end > queued_until:
            continue
        later = [s for s in starts if s >= end]
        if later:
            gaps.append(later[0] - end)
    return statistics.median(gaps) if gaps else None


# ---------------------------------------------------------------------------- one run


@dataclass
class Result:
    scenario: Scenario
    elapsed: float
    bound: float
    calls: int
    rejected: int
    failed: int
    peak: int
    gap: float | None
    peak_in_call: int
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.elapsed / self.bound if self.bound else float("nan")

    @property
    def share_429(self) -> float:
        return self.rejected / self.calls if self.calls else 0.0

    @property
    def met(self) -> bool:
        ratio, share = self.scenario.target()
        return self.ratio <= ratio and self.share_429 <= share and self.failed == 0


@contextlib.contextmanager
def simulator(workdir: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "testkit.provider_sim", "--port", str(port)]
    with (workdir / "sim.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/_sim/stats", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the simulator did not start")
                time.sleep(0.05)
            yield url
        finally:
            proc.kill()
            proc.wait(10)


def images_per_sku(n: int) -> tuple[int, ...]:
    sizes = (3, 5, 7, 5)
    out: list[int] = []
    while sum(out) < n:
        out.append(min(sizes[len(out) % len(sizes)], n - sum(out)))
    return tuple(out)


async def run(url: str, s: Scenario, workdir: Path) -> Result:
    settings = loopback_settings(workdir / f"svc-{uuid.uuid4().hex[:8]}", None)
    async with open_services(settings) as services:
        payload = batch_payload(
            url,
            f"unseen-{s.slug}-{uuid.uuid4().hex[:6]}",
            images_per_sku=images_per_sku(s.images),
            api_key=f"sk-unseen-{uuid.uuid4().hex[:12]}",
            size=256,
        )
        job = (await services.jobs.submit(payload, None)).job
        async with httpx.AsyncClient() as http:
            config = asdict(s.config)
            config["changes"] = [list(c) for c in s.config.changes]
            (await http.post(f"{url}/_sim/start", json=config)).raise_for_status()
            started = time.time()
            worker = services.worker(settings.worker_concurrency)
            await worker.run_until_idle()
            elapsed = time.time() - started
            stats = (await http.get(f"{url}/_sim/stats")).json()
        images = await services.store.images(job.id)
    log = stats["log"]
    ok = [(a, b) for a, b, status in log if status == 200]
    work = sum(b - a for a, b in ok)
    ends = sorted(b for _, b in ok)
    in_flight = s.config.concurrency or 12
    queued_until = ends[-in_flight - 1] if len(ends) > in_flight else started
    return Result(
        scenario=s,
        elapsed=elapsed,
        bound=lower_bound(s, work, len(images)),
        calls=stats["calls"],
        rejected=stats["rejected"],
        failed=sum(1 for i in images if i.status != "succeeded"),
        peak=stats["peak_in_flight"],
        gap=median_gap(log, queued_until) if s.config.rate is None else None,
        peak_in_call=worker.peak_in_call,
    )


# ---------------------------------------------------------------------------- report


def table(results: Sequence[Result]) -> str:
    lines = [
        "| scenario | limits | N | bound s | makespan s | x bound | target | 429s | failed "
        "| peak in flight | gap ms (median) | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio, share = r.scenario.target()
        gap = f"{r.gap * 1000:.1f}" if r.gap is not None else "-"
        lines.append(
            f"| {r.scenario.slug} | {r.scenario.what} | {r.scenario.images} | {r.bound:.1f} "
            f"| {r.elapsed:.1f} | {r.ratio:.2f} | <= {ratio:.2f}, <= {share:.1%} "
            f"| {r.rejected} ({r.share_429:.1%}) | {r.failed} | {r.peak} | {gap} "
            f"| {'yes' if r.met else '**no**'} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.unseen", description=__doc__)
    parser.add_argument("--latencies", default="0.5,2", help="mean latencies, seconds")
    parser.add_argument("--images", type=int, default=240, help="N per scenario")
    parser.add_argument("--only", default="", help="comma-separated scenario names (conc, ...)")
    parser.add_argument("--wide", type=float, default=0.0, help="run `wide` at this latency")
    parser.add_argument("--wide-images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="the report (markdown)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    configure_logging(level=logging.WARNING)  # two log lines per image would be measured too
    only = {name for name in args.only.split(",") if name}
    chosen: list[Scenario] = []
    for latency in (float(x) for x in args.latencies.split(",") if x):
        chosen += [
            s for s in scenarios(latency, args.images) if not only or s.slug.split("@")[0] in only
        ]
    if args.wide:
        chosen.append(wide(args.wide, args.wide_images))
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, simulator(Path(tmp)) as url:
        for s in chosen:
            for _ in range(args.repeat):
                result = asyncio.run(run(url, s, Path(tmp)))
                results.append(result)
                print(table([result]).splitlines()[-1], flush=True)
    text = f"# bench.unseen\n\n`python -m bench.unseen {' '.join(argv or sys.argv[1:])}`\n\n"
    text += table(results) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
