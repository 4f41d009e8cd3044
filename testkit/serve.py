"""A real ``imagestudio serve`` subprocess on a loopback port, and Debian's Chromium driven by
Playwright, for the dashboard's browser tests and its first-paint benchmark.

Chromium is the system one (``/usr/bin/chromium``, installed by ``scripts/ensure-browser``);
Playwright's own browser download is never used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
from playwright.sync_api import Browser, sync_playwright

from imagestudio.cli.background_server import free_port
from testkit.fleet import clean_env, console_script

CHROMIUM = os.environ.get("IMAGESTUDIO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or ``None``."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is not installed (scripts/ensure-browser installs it)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def serve_process(
    workdir: Path, database_url: str, *, workers: int = 8, settings: Mapping[str, str] = {}
) -> Iterator[str]:
    """``imagestudio serve`` on a free loopback port with its data under ``workdir``; yields
    its URL once ``/healthz`` answers, kills it when the block ends. ``settings`` are more
    ``IMAGESTUDIO_*`` variables (without the prefix). Output: ``workdir/serve.log``."""
    port = free_port()
    env = clean_env()
    env.update(
        IMAGESTUDIO_DATA_DIR=str(workdir / "data"),
        IMAGESTUDIO_DATABASE_URL=database_url,
        IMAGESTUDIO_ALLOW_PRIVATE_URLS="127.0.0.1",
        IMAGESTUDIO_IMAGING_PROCESSES="0",
    )
    env.update({f"IMAGESTUDIO_{k}": v for k, v in settings.items()})
    command = [console_script(), "serve", "--port", str(port), "--workers", str(workers)]
    with (workdir / "serve.log").open("wb") as log:
        proc = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (workdir / "serve.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"imagestudio serve did not start:\n{text}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
