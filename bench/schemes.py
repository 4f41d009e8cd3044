"""The seed's schemes A-E as plain asyncio clients, and the fake provider they are run against.

Each scheme does what the seed's pseudo-code does for every image: download the source,
call the provider through the real SDK (``make_provider``: ``images.edit`` with the source),
post-process the answer to the target size. A-D have no retries (a failed call is a failed
image, as in the seed); E has the seed's "automatic retry" (up to 3 retries, short backoff):

- **A** ``asyncio.gather`` of every image at once;
- **B** batches of ``BATCH_SIZE = 5``: gather a batch, then the next;
- **C** serial, one image after another;
- **D** the SKUs in parallel, the images of one SKU one after another;
- **E** a queue and ``MAX_WORKERS = 3`` workers.

The fake provider runs in its own process (``FakeServer``), so its work is not billed to the
client under test. To leave this small machine's cores to the schedulers being measured, the
bench's fake renders its answers and sample source photos at 256 px instead of the requested
1024 px (``FakeProviderConfig(render_size=256)``; the fake caches the samples it has drawn);
the limits, latencies, faults and headers are the real fake's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from imagestudio.cli.background_server import free_port
from imagestudio.domain import OutputSpec
from imagestudio.errors import ProviderError, ProviderTimeout, ProviderUnavailable, RateLimited
from imagestudio.imaging.process import postprocess, prepare_source
from imagestudio.providers.base import ImageRequest, ProviderConfig
from imagestudio.providers.registry import make_provider, provider_size

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-image-1"
RENDER_SIZE = 256  # the longer side of what the bench's fake draws, whatever is asked for
TARGET = OutputSpec(width=256, height=256, format="png", quality=90)
MAX_PIXELS = 64_000_000
BATCH_SIZE = 5  # scheme B
MAX_WORKERS = 3  # scheme E
E_RETRIES = 3  # scheme E: retries after the first attempt
E_BACKOFF = 0.2  # scheme E: seconds before the first retry, doubled for each further one

SCHEMES: dict[str, str] = {
    "A": "A gather all",
    "B": f"B batches of {BATCH_SIZE}",
    "C": "C serial",
    "D": "D per SKU",
    "E": f"E queue, {MAX_WORKERS} workers, retries",
}


# ---------------------------------------------------------------------------- the fake provider


def serve_fake(port: int) -> None:
    """Child process: the real fake provider app, rendering small answers (see module doc)."""
    from imagestudio.providers.fake import FakeProviderConfig, run_fake_provider

    run_fake_provider("127.0.0.1", port, FakeProviderConfig(render_size=RENDER_SIZE))


@dataclass
class FakeServer:
    """A fake provider process: configure, reset and read it over HTTP."""

    url: str
    pid: int

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    def configure(self, **changes: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/_fake/config", json=changes, timeout=10)
        config: dict[str, Any] = response.raise_for_status().json()
        return config

    def reset(self) -> None:
        httpx.post(f"{self.url}/_fake/reset", timeout=10).raise_for_status()

    def start(self, **config: Any) -> None:
        """Configure and reset: a run starts clean (limiter, counts, log, random sequence)."""
        self.configure(**config)
        self.reset()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_fake/stats", timeout=30)
        stats: dict[str, Any] = response.raise_for_status().json()
        return stats

    def warm(self, count: int) -> None:
        """Draw the cached sample sources once, so no run pays for them."""
        with httpx.Client(timeout=30) as client:
            for n in range(1, count + 1):
                client.get(f"{self.url}/samples/{n}.jpg").raise_for_status()


@contextlib.contextmanager
def fake_servers(count: int, workdir: Path) -> Iterator[list[FakeServer]]:
    """``count`` fake provider processes, killed when the block ends."""
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[FakeServer] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESTUDIO_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        for i in range(count):
            port = free_port()
            log = (workdir / f"fake-{i}.log").open("wb")
            code = f"from bench.schemes import serve_fake; serve_fake({port})"
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code], env=env, cwd=ROOT, stdout=log, stderr=log
                )
            )
            servers.append(FakeServer(f"http://127.0.0.1:{port}", procs[-1].pid))
        for server, proc in zip(servers, procs, strict=True):
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{server.url}/_fake/stats?calls=0", timeout=2).is_success:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("a fake provider did not start")
                time.sleep(0.05)
        yield servers
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)


# ---------------------------------------------------------------------------- limit events


@dataclass(frozen=True, slots=True)
class LimitEvent:
    """At ``at`` seconds after a run starts, POST ``changes`` to the fake's /_fake/config."""

    at: float
    changes: dict[str, Any]


async def drive_events(url: str, events: Sequence[LimitEvent], started: float) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for event in sorted(events, key=lambda e: e.at):
            await asyncio.sleep(max(0.0, started + event.at - time.monotonic()))
            (await client.post(f"{url}/_fake/config", json=event.changes)).raise_for_status()


# ---------------------------------------------------------------------------- the schemes


@dataclass(frozen=True, slots=True)
class Image:
    sku: str
    index: int  # position in the payload, 0-based
    url: str


def images_of(server_url: str, images_per_sku: Sequence[int]) -> list[Image]:
    """The payload's images in order, sources served by the fake (as ``batch_payload``)."""
    out: list[Image] = []
    for s, count in enumerate(images_per_sku):
        for _ in range(count):
            n = len(out) + 1
            out.append(Image(f"SKU{s + 1}", n - 1, f"{server_url}/samples/{n}.jpg"))
    return out


@dataclass
class SchemeResult:
    scheme: str
    images: int
    started: float  # epoch seconds
    makespan: float
    succeeded: int = 0
    failed: int = 0
    attempted: int = 0  # images tried (scheme C may stop after a prefix)
    errors: dict[str, int] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)  # the fake's call log
    peak_admitted: int = 0


class Client:
    """What every scheme does for one image: fetch, prepare, call the provider, post-process."""

    def __init__(self, api_base: str, api_key: str, scheme: str) -> None:
        self.scheme = scheme
        self.http = httpx.AsyncClient(timeout=30)
        self.provider = make_provider(
            ProviderConfig(
                api_base=api_base,
                api_key=api_key,
                model=MODEL,
                api_style="images",
                timeout_seconds=60,
                allow_list=("127.0.0.1",),  # the fake provider on loopback
            )
        )
        self.succeeded = 0
        self.failed = 0
        self.errors: dict[str, int] = {}

    async def aclose(self) -> None:
        await self.provider.aclose()
        await self.http.aclose()

    async def call(self, image: Image) -> None:
        """One attempt; raises the provider's error."""
        source = (await self.http.get(image.url)).raise_for_status().content
        prepared = await asyncio.to_thread(
            prepare_source, source, f"{image.index}.jpg", max_pixels=MAX_PIXELS
        )
        request = ImageRequest(
            prompt=f"scheme {self.scheme}: {image.sku} image {image.index + 1}",
            model=MODEL,
            size=provider_size(MODEL, TARGET.width, TARGET.height),
            source=prepared,
        )
        result = await self.provider.generate(request)
        await asyncio.to_thread(postprocess, result.data, TARGET, max_pixels=MAX_PIXELS)

    async def process(self, image: Image, retries: int = 0) -> None:
        """Process one image, retrying transient errors ``retries`` times (scheme E)."""
        for attempt in range(retries + 1):
            try:
                await self.call(image)
            except (RateLimited, ProviderUnavailable, ProviderTimeout) as exc:
                if attempt < retries:
                    await asyncio.sleep(E_BACKOFF * 2**attempt)
                    continue
                self._fail(exc)
            except (ProviderError, httpx.HTTPError) as exc:
                self._fail(exc)
            else:
                self.succeeded += 1
            return

    def _fail(self, exc: BaseException) -> None:
        self.failed += 1
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


async def scheme_a(client: Client, images: list[Image], limit: int) -> int:
    del limit
    await asyncio.gather(*(client.process(image) for image in images))
    return len(images)


async def scheme_b(client: Client, images: list[Image], limit: int) -> int:
    del limit
    for i in range(0, len(images), BATCH_SIZE):
        await asyncio.gather(*(client.process(image) for image in images[i : i + BATCH_SIZE]))
    return len(images)


async def scheme_c(client: Client, images: list[Image], limit: int) -> int:
    """Serial; stops after ``limit`` images (the caller extrapolates the rest)."""
    done = 0
    for image in images[:limit]:
        await client.process(image)
        done += 1
    return done


async def scheme_d(client: Client, images: list[Image], limit: int) -> int:
    del limit
    by_sku: dict[str, list[Image]] = {}
    for image in images:
        by_sku.setdefault(image.sku, []).append(image)

    async def one_sku(chain: list[Image]) -> None:
        for image in chain:
            await client.process(image)

    await asyncio.gather(*(one_sku(chain) for chain in by_sku.values()))
    return len(images)


async def scheme_e(client: Client, images: list[Image], limit: int) -> int:
    del limit
    queue: asyncio.Queue[Image] = asyncio.Queue()
    for image in images:
        queue.put_nowait(image)

    async def worker() -> None:
        while True:
            try:
                image = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await client.process(image, retries=E_RETRIES)

    await asyncio.gather(*(worker() for _ in range(MAX_WORKERS)))
    return len(images)


RUNNERS = {"A": scheme_a, "B": scheme_b, "C": scheme_c, "D": scheme_d, "E": scheme_e}


@dataclass(frozen=True, slots=True)
class SchemeRun:
    """One scheme against one fake, with that fake's limit events."""

    scheme: str
    server_url: str
    images_per_sku: tuple[int, ...]
    api_key: str
    fake_config: dict[str, Any]  # applied, and the fake reset, when the run starts
    events: tuple[LimitEvent, ...] = ()
    limit: int = 1 << 30  # scheme C: images to run before extrapolating


async def _start_fake(url: str, config: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        (await http.post(f"{url}/_fake/config", json=config)).raise_for_status()
        (await http.post(f"{url}/_fake/reset")).raise_for_status()


async def _fake_stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        stats: dict[str, Any] = (await http.get(f"{url}/_fake/stats")).raise_for_status().json()
    return stats


async def run_scheme(run: SchemeRun) -> SchemeResult:
    """One scheme from a clean fake to its last image; the fake's log comes back with it."""
    images = images_of(run.server_url, run.images_per_sku)
    await _start_fake(run.server_url, run.fake_config)
    client = Client(f"{run.server_url}/v1", run.api_key, run.scheme)
    try:
        started_wall, started = time.time(), time.monotonic()
        driver = asyncio.create_task(drive_events(run.server_url, run.events, started))
        attempted = await RUNNERS[run.scheme](client, images, run.limit)
        makespan = time.monotonic() - started
        if not driver.done():
            driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driver
    finally:
        await client.aclose()
    stats = await _fake_stats(run.server_url)
    return SchemeResult(
        scheme=run.scheme,
        images=len(images),
        started=started_wall,
        makespan=makespan,
        succeeded=client.succeeded,
        failed=client.failed,
        attempted=attempted,
        errors=dict(client.errors),
        calls=list(stats.get("calls", [])),
        peak_admitted=int(stats["totals"]["peak_in_flight"]),
    )


async def run_chains(chains: Sequence[Sequence[SchemeRun]]) -> list[SchemeResult]:
    """Chains at once, the runs of a chain one after another (each chain has its own fake)."""

    async def chain(runs: Sequence[SchemeRun]) -> list[SchemeResult]:
        return [await run_scheme(run) for run in runs]

    done = await asyncio.gather(*(chain(runs) for runs in chains))
    return [result for results in done for result in results]


def _child(chains: Sequence[Sequence[SchemeRun]], conn: Any) -> None:
    conn.send(asyncio.run(run_chains(chains)))
    conn.close()


class Background:
    """``run_chains(chains)`` in a separate process (its own interpreter and event loop), so
    the slow schemes do not share a GIL or an event loop with the scheduler being measured."""

    def __init__(self, chains: Sequence[Sequence[SchemeRun]]) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._recv, send = context.Pipe(duplex=False)
        runs = [list(c) for c in chains]
        self._proc = context.Process(target=_child, args=(runs, send), daemon=True)
        self._proc.start()
        send.close()

    def result(self, timeout: float = 900.0) -> list[SchemeResult]:
        if not self._recv.poll(timeout):
            self._proc.kill()
            raise RuntimeError("the background schemes did not finish")
        results: list[SchemeResult] = self._recv.recv()
        self._proc.join(10)
        return results
