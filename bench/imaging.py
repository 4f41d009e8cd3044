"""Post-processing: Pillow against pyvips, and threads against the process pool.

``python -m bench.imaging`` (``python -m bench --only imaging``), written to
``bench/out/imaging.md``. Three parts, each side by side in one run (the ratios hold on a shared
machine better than the absolute numbers):

1. ms per image for each strategy on the fake provider's answers (1024 and 1536 px, PNG and
   JPEG) and on a photo-like PNG, to the targets 1536 png, 1024 jpeg, 512 webp and 64 jpeg:
   ``pillow`` (a full decode, then LANCZOS: before), ``pillow+draft`` (JPEG decoded at a
   reduced scale first), ``pillow+draft+reduce`` (``imaging.process.postprocess`` now: also
   ``resize(reducing_gap=3)``, ``reduce()`` by an integer factor before LANCZOS) and
   ``pyvips`` (``thumbnail_buffer``: shrink-on-load, then embed), if it is installed. CPU ms
   (``process_time``, all threads: libvips runs its own) and wall ms.
2. images/s of ``postprocess`` through ``ThreadImaging`` and ``ProcessImaging`` at 1, 2 and
   4 calls at once.
3. the service end to end (``bench.overhead``'s pipeline, SQLite, zero-latency fake provider)
   with ``IMAGESTUDIO_IMAGING_PROCESSES=0`` (threads, as before) and with the pool: images/s
   and CPU ms per image, this process plus its imaging children.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bench import overhead
from imagestudio.domain import OutputSpec
from imagestudio.imaging import process
from imagestudio.imaging.pool import ImagingExecutor, ProcessImaging, ThreadImaging, cpu_count
from imagestudio.observability.logs import configure_logging
from imagestudio.providers.fake.images import render_edit
from imagestudio.providers.fake.samples import sample_product_photo
from imagestudio.runtime.services import open_services
from testkit import fleet
from testkit.settings import loopback_settings

try:  # measured when installed; not a dependency (docs/benchmarks.md says why)
    import pyvips
except (ImportError, OSError):  # pragma: no cover - depends on the machine
    pyvips = None

OUT = Path(__file__).resolve().parent / "out" / "imaging.md"
MAX_PIXELS = 64_000_000
TARGETS = (
    OutputSpec(1536, 1536, "png", 90),
    OutputSpec(1024, 1024, "jpeg", 90),
    OutputSpec(512, 512, "webp", 90),
    OutputSpec(64, 64, "jpeg", 90),
)
REPEATS = 7


def answers() -> dict[str, bytes]:
    """The fake provider's answers at 1024 and 1536 px in PNG and JPEG, and a photo-like PNG."""
    source = sample_product_photo(1, "bench", (1024, 1024))
    found = {
        f"fake {side} {fmt}": render_edit(source, "bench prompt", (side, side), fmt)
        for side in (1024, 1536)
        for fmt in ("png", "jpeg")
    }
    found["photo 1536 png"] = photo(1536)
    return found


def photo(side: int) -> bytes:
    """What a real provider returns: a photo's entropy (the fake's answers are posterized)."""
    size = (side, side)
    with Image.open(io.BytesIO(sample_product_photo(3, "photo", size))) as image:
        grain = Image.merge("RGB", [Image.effect_noise(size, 24) for _ in range(3)])
        buffer = io.BytesIO()
        Image.blend(image.convert("RGB"), grain, 0.15).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- strategies


def pillow(data: bytes, spec: OutputSpec) -> bytes:
    """What the service runs: draft for JPEG, reduce() before LANCZOS."""
    return process.postprocess(data, spec, max_pixels=MAX_PIXELS)


def _pillow_variant(data: bytes, spec: OutputSpec, *, draft: bool, gap: float | None) -> bytes:
    """``postprocess`` with a reduced-scale JPEG decode and/or ``reduce()`` before LANCZOS."""
    with Image.open(io.BytesIO(data)) as image:
        if draft and image.format == "JPEG":
            image.draft("RGB", (spec.width, spec.height))  # scale 1/2..1/8, still >= target
        image.load()
        alpha = bool(image.has_transparency_data)
        rgb = image.convert("RGBA" if alpha else "RGB")
    scale = min(spec.width / rgb.width, spec.height / rgb.height)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=gap)
    canvas = process._canvas(rgb, spec, alpha)
    buffer = io.BytesIO()
    process._SAVERS[spec.format](canvas, buffer, spec.quality)
    return buffer.getvalue()


def pillow_plain(data: bytes, spec: OutputSpec) -> bytes:
    """Before: a full decode, then LANCZOS."""
    return _pillow_variant(data, spec, draft=False, gap=None)


def pillow_draft(data: bytes, spec: OutputSpec) -> bytes:
    return _pillow_variant(data, spec, draft=True, gap=None)


def vips(data: bytes, spec: OutputSpec) -> bytes:
    assert pyvips is not None
    image = pyvips.Image.thumbnail_buffer(data, spec.width, height=spec.height)
    if image.hasalpha() and spec.format == "jpeg":
        image = image.flatten(background=[255, 255, 255])
    background = [255, 255, 255, 0] if image.hasalpha() else [255, 255, 255]
    image = image.gravity(
        "centre", spec.width, spec.height, extend="background", background=background
    )
    if spec.format == "png":
        result: bytes = image.write_to_buffer(".png", compression=process.PNG_COMPRESS_LEVEL)
    elif spec.format == "jpeg":
        result = image.write_to_buffer(".jpg", Q=spec.quality, optimize_coding=False)
    else:
        result = image.write_to_buffer(".webp", Q=spec.quality, effort=4)
    return result


def strategies() -> dict[str, Callable[[bytes, OutputSpec], bytes]]:
    found = {
        "pillow": pillow_plain,
        "pillow+draft": pillow_draft,
        "pillow+draft+reduce": pillow,
    }
    if pyvips is not None:
        pyvips.cache_set_max(0)  # every call decodes again, as in the service
        found["pyvips"] = vips
    return found


def _timed(step: Callable[[], Any]) -> tuple[float, float]:
    """Median CPU ms and wall ms of ``step``."""
    cpu, wall = [], []
    for _ in range(REPEATS):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return 1000 * statistics.median(cpu), 1000 * statistics.median(wall)


def libraries(images: dict[str, bytes]) -> str:
    chosen = strategies()
    names = list(chosen)
    head = " | ".join(f"{n} CPU ms" for n in names)
    ratios = " | ".join(f"{n} / pillow" for n in names[1:])
    lines = [
        "### ms per image by strategy (CPU ms, wall ms in brackets; ratios on CPU)",
        "",
        f"| answer | target | {head} | {ratios} |",
        "|---|---|" + "---:|" * (2 * len(names) - 1),
    ]
    for label, data in images.items():
        for spec in TARGETS:
            cells = []
            for strategy in chosen.values():
                cells.append(_timed(lambda s=strategy, d=data, o=spec: s(d, o)))
            base = cells[0][0]
            shown = [f"{c:.1f} ({w:.1f})" for c, w in cells]
            shown += [f"{c / base:.2f}x" for c, _ in cells[1:]]
            target = f"{spec.width} {spec.format}"
            lines.append(f"| {label} | {target} | {' | '.join(shown)} |")
            print(f"  {label} -> {target}: {', '.join(shown)}", flush=True)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- throughput


def _children_cpu(imaging: ImagingExecutor) -> float:
    if isinstance(imaging, ProcessImaging):
        return sum(fleet.cpu_seconds(pid) for pid in imaging.pids())
    return 0.0


async def _rate(
    imaging: ImagingExecutor, data: bytes, spec: OutputSpec, tasks: int, n: int
) -> tuple[float, float]:
    """Images/s and CPU ms per image (this process and its imaging children)."""
    queue = list(range(n))

    async def lane() -> None:
        while queue:
            queue.pop()
            await imaging.run(process.postprocess, data, spec, max_pixels=MAX_PIXELS)

    await imaging.run(process.postprocess, data, spec, max_pixels=MAX_PIXELS)  # warm
    cpu0, child0, started = overhead.own_cpu(), _children_cpu(imaging), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(tasks)))
    wall = time.perf_counter() - started
    cpu = overhead.own_cpu() - cpu0 + _children_cpu(imaging) - child0
    return n / wall, 1000 * cpu / n


async def _throughput(images: dict[str, bytes], n: int) -> str:
    pool = ProcessImaging(cpu_count())
    await pool.start()
    threads = ThreadImaging()
    lines = [
        f"### postprocess throughput, threads against a pool of {pool.processes} processes",
        "",
        "| answer -> target | tasks at once | threads images/s | pool images/s | pool / threads"
        " | threads CPU ms/image | pool CPU ms/image |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    try:
        for label, spec in (("fake 1536 png", TARGETS[0]), ("photo 1536 png", TARGETS[1])):
            for tasks in (1, 2, 4):
                t_rate, t_cpu = await _rate(threads, images[label], spec, tasks, n)
                p_rate, p_cpu = await _rate(pool, images[label], spec, tasks, n)
                row = (
                    f"| {label} -> {spec.width} {spec.format} | {tasks} | {t_rate:.1f} | "
                    f"{p_rate:.1f} | {p_rate / t_rate:.2f}x | {t_cpu:.0f} | {p_cpu:.0f} |"
                )
                lines.append(row)
                print(" ", row, flush=True)
    finally:
        await pool.aclose()
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the service


async def _service(
    url: str,
    workdir: Path,
    provider: overhead.FakeProvider,
    m: overhead.Measurement,
    processes: int,
) -> float:
    settings = loopback_settings(
        workdir / f"data-{processes}-{m.target.size}",
        url,
        poll_interval=0.05,
        imaging_processes=processes,
    )
    async with open_services(settings, migrate=False) as services:
        before = _children_cpu(services.imaging)
        await overhead._pipeline(services, provider, m)
        return _children_cpu(services.imaging) - before


def service(images: int) -> str:
    modes = {"threads (before)": 0, f"pool of {cpu_count()} (after)": cpu_count()}
    lines = [
        f"### the service, {images} images, SQLite, zero-latency fake provider, 8 slots",
        "",
        "| target | imaging | images/s | CPU ms/image: this process | imaging children | total |",
        "|---|---|---:|---:|---:|---:|",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="imagestudio-bench-") as tmp,
        overhead.fake_provider_process(Path(tmp)) as provider,
    ):
        for target in overhead.TARGETS:
            for mode, processes in modes.items():
                m = overhead.Measurement("sqlite", target, images)
                with overhead.fresh_database("sqlite", Path(tmp)) as url:
                    children = asyncio.run(_service(url, Path(tmp), provider, m, processes))
                own, kids = m.per_image_ms(m.service_cpu), m.per_image_ms(children)
                row = (
                    f"| {target.label} | {mode} | {m.per_second:.2f} | {own:.1f} | {kids:.1f} | "
                    f"{own + kids:.1f} |"
                )
                lines.append(row)
                print(" ", row, flush=True)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.imaging", description=__doc__)
    parser.add_argument("--images", type=int, default=100, help="service: images per run")
    parser.add_argument("--calls", type=int, default=24, help="throughput: calls per cell")
    parser.add_argument("--skip", default="", help="comma-separated: libraries,throughput,service")
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING)  # as ``python -m bench``: logs would be measured
    skip = set(args.skip.split(","))
    load, started = os.getloadavg()[0], time.perf_counter()
    images = answers()
    sections = []
    if "libraries" not in skip:
        print("strategies (CPU ms, wall ms):", flush=True)
        sections.append(libraries(images))
    if "throughput" not in skip:
        print("threads against the process pool:", flush=True)
        sections.append(asyncio.run(_throughput(images, args.calls)))
    if "service" not in skip:
        print("the service:", flush=True)
        sections.append(service(args.images))
    versions = f"Pillow {Image.__version__}"
    if pyvips is not None:
        versions += (
            f", pyvips {pyvips.__version__} (libvips {pyvips.version(0)}.{pyvips.version(1)})"
        )
    header = [
        "# imagestudio post-processing benchmark",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores "
        f"(shared with other work: compare within a table); {versions}; took "
        f"{time.perf_counter() - started:.0f} s; load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after.",
        "",
    ]
    text = "\n".join(header + [s + "\n" for s in sections])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print()
    print(text)
    print(f"written to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
