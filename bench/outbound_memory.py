"""Memory and time of hostile answers on the guarded outbound path (``security.http``).

``python -m bench.outbound_memory`` (``--json`` for the raw figures; ``--compare`` adds the
SDK's own client, as the adapters used before the guarded path, on the same 300 MB answer).
A fake provider runs as a subprocess (``imagestudio fake-provider``; it streams its padded
answers, so it holds 64 KB of them) and a streaming server runs here for sources and result
URLs. Each case runs in a fresh child process (so no case reuses memory another freed),
after one warm-up call and a reset of the kernel's peak-RSS mark (``/proc/self/clear_refs``),
and reports the growth of the peak over the RSS at the reset:

- a provider answer with a 300 MB image in ``b64_json`` (400 MB of base64), declared by
  ``content-length`` and chunked;
- a result URL (``data[0].url``) of 300 MB, chunked;
- a source of 300 MB, chunked;
- drip-fed answers (64 bytes every 100 ms) from the provider, a result URL and a source,
  under a 3 s deadline: each must end in about 3 s.

Written to ``bench/out/outbound_memory.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imagestudio.cli.background_server import BackgroundServer, free_port
from imagestudio.domain import SourceFile
from imagestudio.imaging.fetch import SourceFetcher
from imagestudio.providers.base import ImageRequest, ProviderConfig
from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.providers.registry import make_provider
from imagestudio.security.http import Outbound, OutboundPolicy

OUT = Path(__file__).resolve().parent / "out" / "outbound_memory.md"
MB = 1024 * 1024
BIG_MB = 300
DEADLINE = 3.0
SOURCE_CAP = 25 * MB  # the default IMAGESTUDIO_SOURCE_MAX_BYTES
PNG_START = b"\x89PNG\r\n\x1a\n"
SOURCE = SourceFile(sample_product_photo(1, "SKU 1", (64, 64)), "sku-1.jpg", "image/jpeg")


@dataclass
class Figure:
    case: str
    growth_mb: float
    seconds: float
    outcome: str


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS, and return that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


async def measured(case: str, run: Callable[[], Awaitable[Any]]) -> Figure:
    """Run ``run`` with the peak-RSS mark reset first; how far the peak rose, and the time."""
    start_rss = reset_peak()
    started = time.perf_counter()
    try:
        await run()
        outcome = "accepted"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"[:160]
    seconds = time.perf_counter() - started
    return Figure(case, (_status("VmHWM") - start_rss) / MB, seconds, outcome)


async def _zeros(total: int) -> AsyncIterator[bytes]:
    yield PNG_START
    block = bytes(64 * 1024)
    for _ in range(0, total, len(block)):
        yield block


async def big(request: Request) -> Response:
    del request
    return StreamingResponse(_zeros(BIG_MB * MB), media_type="image/png")


async def drip(request: Request) -> Response:
    del request

    async def chunks() -> AsyncIterator[bytes]:
        yield PNG_START
        for _ in range(10_000):
            await asyncio.sleep(0.1)
            yield bytes(64)

    return StreamingResponse(chunks(), media_type="image/png")


SERVER = Starlette(routes=[Route("/big", big), Route("/drip", drip)])


@contextmanager
def fake_provider(port: int) -> Any:
    command = [
        str(Path(sys.executable).with_name("imagestudio")),
        *("fake-provider", "--host", "127.0.0.1", "--port", str(port)),
        *("--latency-ms", "0", "--render-size", "64"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_fake/stats?calls=0").raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the fake provider did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def cases(
    fake: str, server: str, outbound: Outbound
) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    """Every case, by name; ``generate`` and ``fetch`` go through ``outbound``."""
    port = server.rsplit(":", 1)[1]

    async def generate(prompt: str, seconds: float = 30.0, **kwargs: Any) -> None:
        config = ProviderConfig(f"{fake}/v1", "sk-bench", "gpt-image-1", "images", seconds)
        adapter = make_provider(config, **({"outbound": outbound} | kwargs))
        try:
            await adapter.generate(ImageRequest(prompt, "gpt-image-1", "256x256", SOURCE))
        finally:
            await adapter.aclose()

    async def unguarded() -> None:
        import openai

        async with openai.DefaultAsyncHttpx2Client() as client:
            await generate(f"[[big:{BIG_MB}:chunked]]", http_client=client)

    fetcher = SourceFetcher(outbound, max_bytes=SOURCE_CAP, timeout=DEADLINE)
    image = f"{BIG_MB} MB image in b64_json ({BIG_MB * 4 // 3} MB)"
    return [
        ("warm-up", lambda: generate("warm-up")),
        (f"provider answer, {image}, declared", lambda: generate(f"[[big:{BIG_MB}]]")),
        (f"provider answer, {image}, chunked", lambda: generate(f"[[big:{BIG_MB}:chunked]]")),
        (f"result URL {BIG_MB} MB, chunked", lambda: generate(f"[[url:at:127.0.0.1:{port}:big]]")),
        (f"source {BIG_MB} MB, chunked", lambda: fetcher.fetch(f"{server}/big")),
        (f"provider drip-fed, {DEADLINE:g} s deadline", lambda: generate("[[drip:64:100]]", 3.0)),
        (
            f"result URL drip-fed, {DEADLINE:g} s deadline",
            lambda: generate(f"[[url:at:127.0.0.1:{port}:drip]]", DEADLINE),
        ),
        (f"source drip-fed, {DEADLINE:g} s deadline", lambda: fetcher.fetch(f"{server}/drip")),
        (f"before: the SDK's own client, {image}, chunked", unguarded),
    ]


async def child(index: int, fake: str, server: str) -> Figure:
    """One case in this (fresh) process, after a warm-up call."""
    outbound = Outbound(OutboundPolicy.of(["127.0.0.1"]), deadline=30.0)
    try:
        table = cases(fake, server, outbound)
        await table[0][1]()  # imports, the first connection
        name, run = table[index]
        return await measured(name, run)
    finally:
        await outbound.aclose()


def run_cases(fake: str, server: str, *, compare: bool) -> list[Figure]:
    count = len(cases(fake, server, Outbound(OutboundPolicy())))
    figures = []
    for index in range(1, count if compare else count - 1):
        command = [sys.executable, "-m", "bench.outbound_memory", "--child", str(index)]
        command += ["--fake", fake, "--server", server]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
        figures.append(Figure(**json.loads(done.stdout.strip().splitlines()[-1])))
    return figures


def report(figures: list[Figure]) -> str:
    lines = [
        "# Hostile answers on the guarded outbound path",
        "",
        f"`python -m bench.outbound_memory --compare`, {os.cpu_count()} cores. Growth: the peak "
        "RSS of the process during the case over its RSS when the case began.",
        "",
        "| case | RSS growth | time | outcome |",
        "|---|---:|---:|---|",
    ]
    for f in figures:
        lines.append(f"| {f.case} | {f.growth_mb:.1f} MB | {f.seconds:.2f} s | {f.outcome} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outbound_memory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--compare", action="store_true", help="also the SDK's own client")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fake", help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(asdict(asyncio.run(child(args.child, args.fake, args.server)))))
        return
    with fake_provider(free_port()) as fake, BackgroundServer(SERVER) as server:
        figures = run_cases(fake, server.url, compare=args.compare)
    if args.json:
        print(json.dumps([asdict(f) for f in figures]))
        return
    text = report(figures)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
