"""S3 client libraries side by side: aiobotocore against obstore, 100 puts of distinct
1536x1536 PNGs (with content type and cache headers, as results are written) into a real S3
HTTP server (moto's, ``testkit.s3``) on loopback, in one run.

Each round puts the same 100 images with each client, one at a time (the latency of one put)
and 8 at a time (a worker's slots); rounds alternate which client goes first. Reported per
client: the median over rounds of wall time per 100 puts and of this process's CPU time (all
threads: obstore's Rust runtime included). moto's own CPU is in another process and is the same
work for both clients.

    python -m bench.s3_clients [--images 100] [--rounds 3] [--concurrency 8]

Writes ``bench/out/s3_clients.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.storage import S3Options
from imagestudio.storage.s3 import S3Storage
from imagestudio.storage.s3_url import IMMUTABLE, S3Location
from testkit.s3 import S3Server, s3_server

OUT = Path(__file__).resolve().parent / "out" / "s3_clients.md"
BUCKET = "bench-results"
CACHE = IMMUTABLE
SIDE = 1536

Put = Callable[[str, bytes], Awaitable[None]]


def make_pngs(count: int) -> list[bytes]:
    """``count`` distinct 1536 px PNGs like the service's results: a product photo with a
    little grain, about 2.4 MB each (a flat drawing would compress to a tenth of a real
    generated photo and measure request overhead only)."""
    photos = []
    for index in range(min(count, 10)):  # drawing one takes seconds: 10, each grained anew
        with Image.open(io.BytesIO(sample_product_photo(index, f"SKU-{index}", (SIDE, SIDE)))) as p:
            photos.append(p.convert("RGB"))
    images = []
    for index in range(count):
        grain = Image.merge("RGB", [Image.effect_noise((SIDE, SIDE), 8) for _ in range(3)])
        out = io.BytesIO()
        Image.blend(photos[index % len(photos)], grain, 0.1).save(out, "PNG")
        images.append(out.getvalue())
    assert len(set(images)) == count
    return images


async def _run_puts(put: Put, prefix: str, images: Sequence[bytes], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, data: bytes) -> None:
        async with gate:
            await put(f"{prefix}/{index:04d}.png", data)

    await asyncio.gather(*(one(i, d) for i, d in enumerate(images)))


async def with_aiobotocore(server: S3Server, body: Callable[[Put], Awaitable[None]]) -> None:
    """The service's own ``S3Storage`` (aiobotocore as it is configured there)."""
    storage = S3Storage(
        S3Location(BUCKET, ""),
        S3Options(
            endpoint_url=server.endpoint,
            region=server.region,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        ),
    )
    try:

        async def put(key: str, data: bytes) -> None:
            await storage.put(key, data, "image/png")

        await body(put)
    finally:
        await storage.aclose()


async def with_aiobotocore_defaults(
    server: S3Server, body: Callable[[Put], Awaitable[None]]
) -> None:
    """aiobotocore with botocore's default checksums (CRC32 computed on every put)."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=32)
    async with get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=config,
    ) as client:

        async def put(key: str, data: bytes) -> None:
            await client.put_object(
                Bucket=BUCKET, Key=key, Body=data, ContentType="image/png", CacheControl=CACHE
            )

        await body(put)


async def with_obstore(server: S3Server, body: Callable[[Put], Awaitable[None]]) -> None:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=server.endpoint,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True, "pool_max_idle_per_host": "32"},
    )

    async def put(key: str, data: bytes) -> None:
        await obstore.put_async(
            store,
            key,
            data,
            attributes={"Content-Type": "image/png", "Cache-Control": CACHE},
            use_multipart=False,
        )

    await body(put)


CLIENTS: dict[str, Callable[[S3Server, Callable[[Put], Awaitable[None]]], Awaitable[None]]] = {
    "aiobotocore (S3Storage)": with_aiobotocore,
    "aiobotocore (default checksums)": with_aiobotocore_defaults,
    "obstore": with_obstore,
}


async def measure(
    server: S3Server, name: str, images: Sequence[bytes], concurrency: int
) -> dict[str, tuple[float, float]]:
    """(wall s, CPU s) per mode for one client: a warm-up put, then 100 serial, 100 parallel."""
    results: dict[str, tuple[float, float]] = {}
    slug = _slug(name)

    async def body(put: Put) -> None:
        await put(f"{slug}/warmup.png", images[0])  # connection, credentials, first signing
        for mode, limit in (("serial", 1), (f"{concurrency} at a time", concurrency)):
            cpu, wall = time.process_time(), time.perf_counter()
            await _run_puts(put, f"{slug}/{limit}", images, limit)  # rounds overwrite
            results[mode] = (time.perf_counter() - wall, time.process_time() - cpu)

    await CLIENTS[name](server, body)
    return results


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def verify(server: S3Server, images: Sequence[bytes]) -> None:
    """Both clients wrote what was asked: the bytes, the content type, the cache header."""
    client = server.client()
    for name in CLIENTS:
        head = client.get_object(Bucket=BUCKET, Key=f"{_slug(name)}/1/0003.png")
        assert head["Body"].read() == images[3], name
        assert head["ContentType"] == "image/png", (name, head["ContentType"])
        assert head["CacheControl"] == CACHE, (name, head.get("CacheControl"))


def report(rows: dict[str, dict[str, list[tuple[float, float]]]], images: Sequence[bytes]) -> str:
    sizes = [len(i) for i in images]
    lines = [
        "# S3 client libraries: 100 puts of 1536 px PNGs into moto's S3 server on loopback",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores;"
        f" {len(images)} PNGs, {statistics.mean(sizes) / 1e6:.2f} MB each on average"
        f" ({sum(sizes) / 1e6:.0f} MB a run); median of {len(next(iter(rows.values()))['serial'])}"
        " rounds; CPU is this process's (all threads), moto's is not counted.",
        "",
        "| client | mode | wall s / 100 puts | ms per put | MB/s | client CPU ms per put |",
        "|---|---|---:|---:|---:|---:|",
    ]
    total_mb = sum(sizes) / 1e6
    for name, modes in rows.items():
        for mode, samples in modes.items():
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            lines.append(
                f"| {name} | {mode} | {wall:.2f} | {wall * 1000 / len(images):.1f} |"
                f" {total_mb / wall:.0f} | {cpu * 1000 / len(images):.1f} |"
            )
    return "\n".join(lines) + "\n"


async def run(images_count: int, rounds: int, concurrency: int) -> str:
    images = make_pngs(images_count)
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {n: {} for n in CLIENTS}
    with s3_server() as server:
        server.make_bucket(BUCKET)
        for round_no in range(rounds):
            order = list(CLIENTS) if round_no % 2 == 0 else list(reversed(CLIENTS))
            for name in order:
                result = await measure(server, name, images, concurrency)
                for mode, sample in result.items():
                    rows[name].setdefault(mode, []).append(sample)
                print(f"round {round_no} {name}: {result}", flush=True)
        verify(server, images)
    return report(rows, images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_clients")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args: Any = parser.parse_args(argv)
    text = asyncio.run(run(args.images, args.rounds, args.concurrency))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
