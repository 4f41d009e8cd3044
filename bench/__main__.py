"""``python -m bench`` (``make bench``): every benchmark, one after another.

Suites, in order (``--only`` / ``--skip`` pick them):

- ``overhead``: the service's own cost per image against a zero-latency provider, SQLite and
  PostgreSQL side by side (``bench/overhead.py``);
- ``demo``: the wall time of ``imagestudio demo`` (``bench/demo_time.py``);
  both written to ``bench/out/overhead.md``;
- ``imaging``: post-processing, Pillow strategies against pyvips, threads against the process
  pool, the service with each (``bench/imaging.py``, ``bench/out/imaging.md``);
- ``governor``: the provider governor against the seed's schemes (``bench/governor.py``,
  ``bench/out/governor.md``);
- ``unseen``: the governor on a provider it was not tuned to (``testkit.provider_sim``: other
  windows, header dialects, token buckets, 200 in flight; ``bench/unseen.py``,
  ``bench/out/unseen.md``);
- ``chaos``: workers killed and PostgreSQL restarted mid-run (``bench/chaos.py``,
  ``bench/out/chaos.md``; it restarts the local PostgreSQL cluster unless
  ``IMAGESTUDIO_CHAOS_PG_RESTART=0``);
- ``outbound``: hostile answers on the guarded outbound path, RSS growth and time
  (``bench/outbound_memory.py``, ``bench/out/outbound_memory.md``);
- ``scale``: throughput, claim latency, intake and worker processes as the queue and the job
  grow to 100,000 images (``bench/scale/``, ``bench/out/scale.md``; about 25 minutes);
- ``s3_clients``: aiobotocore against obstore, 100 puts of 1536 px PNGs into moto's S3
  server (``bench/s3_clients.py``, ``bench/out/s3_clients.md``).
- ``dashboard``: the dashboard's first paint on a 5-image and a 5,000-image job in Debian's
  Chromium (``bench/dashboard.py``, ``bench/out/dashboard.md``).

The exit code is 1 if any suite failed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import demo_time, overhead
from imagestudio.observability.logs import configure_logging

OUT = Path(__file__).resolve().parent / "out" / "overhead.md"
SUITES = (
    "overhead",
    "demo",
    "imaging",
    "governor",
    "unseen",
    "chaos",
    "outbound",
    "scale",
    "s3_clients",
    "dashboard",
)


def _suites(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SUITES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown suites: {', '.join(unknown)}")
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks.",
        epilog=f"suites: {', '.join(SUITES)}",
    )
    parser.add_argument("--only", type=_suites, help="comma-separated suites to run")
    parser.add_argument("--skip", type=_suites, default=[], help="comma-separated suites to skip")
    parser.add_argument("--images", type=int, default=100, help="overhead: images per run")
    parser.add_argument("--big", type=int, default=2000, help="overhead: store-scaling job")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="overhead: sqlite and/or postgresql"
    )
    parser.add_argument("--demo-runs", type=int, default=3, help="demo: repetitions")
    return parser.parse_args()


def run_overhead_and_demo(args: argparse.Namespace, with_demo: bool, with_overhead: bool) -> None:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    sections: list[str] = []
    if with_overhead:
        print("overhead per image (zero-latency fake provider):", flush=True)
        measurements, stages = overhead.run(
            images=args.images, big=args.big, backends=tuple(args.backends.split(","))
        )
        sections.append(overhead.report(measurements, stages))
    if with_demo and args.demo_runs > 0:
        print("imagestudio demo:", flush=True)
        sections.append(demo_time.report(demo_time.run(args.demo_runs)))
    header = [
        "# imagestudio overhead benchmark",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"took {time.perf_counter() - started:.0f} s; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
    ]
    text = "\n".join(header + sections)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print()
    print(text)
    print(f"written to {OUT}")


def run_module(name: str) -> bool:
    """Run ``bench.<name>.main([])``; False if it failed or reported failure."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ImportError as exc:
        print(f"{name}: not available ({exc}); skipped", flush=True)
        return True
    main: Callable[[list[str]], object] = module.main
    result = main([])
    return not (isinstance(result, int) and not isinstance(result, bool) and result != 0)


def main() -> int:
    args = parse_args()
    configure_logging(level=logging.WARNING)  # two log lines per image would be measured too
    chosen = [s for s in (args.only or SUITES) if s not in args.skip]
    failed: list[str] = []
    if "overhead" in chosen or "demo" in chosen:
        try:
            run_overhead_and_demo(args, "demo" in chosen, "overhead" in chosen)
        except Exception:
            traceback.print_exc()
            failed.append("overhead/demo")
    modules = {"outbound": "outbound_memory"}
    for name in SUITES[2:]:  # overhead and demo ran together above
        if name not in chosen:
            continue
        print(f"\n== {name}", flush=True)
        try:
            if not run_module(modules.get(name, name)):
                failed.append(name)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
