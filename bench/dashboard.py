"""The dashboard's first paint on a small and a 5,000-image job, side by side in one run.

``python -m bench.dashboard`` (or ``python -m bench --only dashboard``): a real
``imagestudio serve`` (SQLite, 8 task slots) and the fake provider as subprocesses, Debian's
Chromium through Playwright. Each job is running (``max_concurrency: 1``, 30 s calls), so most
of its images are queued with a waiting reason to compute. Per job and run, a fresh browser
context opens the job's page and reads:

- first contentful paint (the browser's ``first-contentful-paint`` entry);
- the time until the first gallery page (24 cards) shows, waiting reasons included;
- the API's answer time for that page (``GET /images?limit=24``) and, as a control, for a
  5,000-image page (``limit=5000``), which the dashboard never asks for.

Written to ``bench/out/dashboard.md``; figures, not asserted (docs/dashboard.md quotes them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Browser

from imagestudio.domain import API_PREFIX
from testkit.browser import chromium
from testkit.fleet import fake_provider_process
from testkit.payloads import batch_payload
from testkit.serve import serve_process

OUT = Path(__file__).resolve().parent / "out" / "dashboard.md"
FAKE = ("--latency-ms", "30000", "--render-size", "64")
SIZES = {"small (5 images)": (3, 1, 1), "big (5,000 images)": (50,) * 100}


def _api_ms(client: httpx.Client, path: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _load(browser: Browser, address: str) -> tuple[float, float]:
    """One page load in a fresh context: (first contentful paint, ms until the first gallery
    page shows with its waiting reasons)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        started = time.perf_counter()
        page.goto(address)
        page.locator(".gallery .card .waiting").first.wait_for(timeout=60_000)
        ms = (time.perf_counter() - started) * 1000
        fcp = page.evaluate(
            "() => performance.getEntriesByName('first-contentful-paint')[0].startTime"
        )
        return float(fcp), ms
    finally:
        context.close()


def run(repeats: int = 3) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="imagestudio-dash-bench-") as tmp:
        work = Path(tmp)
        db = f"sqlite+aiosqlite:///{work / 'bench.db'}"
        with (
            fake_provider_process(work, *FAKE) as (fake, _),
            serve_process(
                work, workers=8, database_url=db, allow_private_urls="127.0.0.1"
            ) as served,
            httpx.Client(base_url=f"{served.url}{API_PREFIX}", timeout=60) as client,
            chromium() as browser,
        ):
            jobs = {}
            for name, per_sku in SIZES.items():
                job_id = f"bench-{uuid.uuid4().hex[:6]}"
                payload = batch_payload(
                    fake, job_id, images_per_sku=per_sku, size=64, options={"max_concurrency": 1}
                )
                client.post("/jobs", json=payload).raise_for_status()
                jobs[name] = job_id
            time.sleep(1.0)
            paints: dict[str, list[float]] = {name: [] for name in jobs}
            shown: dict[str, list[float]] = {name: [] for name in jobs}
            for n in range(repeats + 1):  # the first round warms the browser and the server up
                for name, job_id in jobs.items():
                    fcp, ms = _load(browser, f"{served.url}/#/jobs/{job_id}")
                    if n:
                        paints[name].append(fcp)
                        shown[name].append(ms)
            for name, job_id in jobs.items():
                results[name] = {
                    "fcp_ms": statistics.median(paints[name]),
                    "gallery_ms": statistics.median(shown[name]),
                    "page_24_ms": _api_ms(client, f"/jobs/{job_id}/images?limit=24"),
                    "page_5000_ms": _api_ms(client, f"/jobs/{job_id}/images?limit=5000", 1),
                }
                print(f"  {name}: {results[name]}", flush=True)
            for job_id in jobs.values():
                client.post(f"/jobs/{job_id}/cancel")
    return results


def report(results: dict[str, dict[str, float]], repeats: int) -> str:
    small, big = (results[name] for name in SIZES)
    lines = [
        "# Dashboard first paint",
        "",
        f"`python -m bench.dashboard`: medians of {repeats} page loads per job (after one "
        "warm-up load each, the jobs interleaved), "
        f"{os.cpu_count()} cores, Debian's Chromium headless, `imagestudio serve` on SQLite "
        "with the job running (`max_concurrency: 1`), so its queued images carry waiting "
        "reasons.",
        "",
        "| | " + " | ".join(SIZES) + " | big / small |",
        "|---|---:|---:|---:|",
    ]
    rows = [
        ("first contentful paint (ms)", "fcp_ms"),
        ("first gallery page shown, with waiting reasons (ms)", "gallery_ms"),
        ("API: `GET /images?limit=24` (ms)", "page_24_ms"),
        ("API: `GET /images?limit=5000` (ms, control; never asked by the page)", "page_5000_ms"),
    ]
    for label, key in rows:
        ratio = big[key] / small[key] if small[key] else float("nan")
        lines.append(f"| {label} | {small[key]:.0f} | {big[key]:.0f} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = run(args.repeats)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(report(results, args.repeats))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
