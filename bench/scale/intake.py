"""Phase 2: a job of 400, 10,000 or 100,000 images POSTed through the real HTTP API.

``imagestudio serve`` runs as a subprocess (in-process workers, SLOTS slots) on a new
database, ``IMAGESTUDIO_MAX_IMAGES_PER_JOB`` raised. Measured: seconds from sending the
request to the 201, and the server's memory (``/proc/<pid>/status``): VmRSS before, right
after the 201, the highest VmRSS seen while its workers run the job for ``run_seconds``
(sampled every 0.2 s), and VmHWM, the peak over the process's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.scale.rig import Fake, database, memory_mib, payload, service_env, settings
from imagestudio.cli.background_server import free_port
from imagestudio.domain import API_PREFIX
from testkit.fleet import imagestudio_process, worker_env


@dataclass
class IntakeRun:
    backend: str
    images: int
    seconds: float | None = None  # POST to 201
    body_mib: float = 0.0
    rss_idle: float = 0.0
    rss_accepted: float = 0.0
    rss_running: float = 0.0  # highest VmRSS while running
    hwm: float = 0.0
    done_while_running: int = 0  # images finished when the sampling ended
    error: str | None = None


async def _wait_healthy(client: httpx.AsyncClient, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{API_PREFIX}/healthz", timeout=2)).status_code == 200:
                return
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError("imagestudio serve did not start")
        await asyncio.sleep(0.1)


def _server(
    env: dict[str, str], port: int, log: Path
) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    return imagestudio_process("serve", "--port", str(port), env=env, log=log)


async def _sample_running(pid: int, seconds: float) -> float:
    peak, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, memory_mib(pid)[0])
        await asyncio.sleep(0.2)
    return peak


async def measure(
    backend: str, images: int, fake: Fake, workdir: Path, run_seconds: float
) -> IntakeRun:
    run = IntakeRun(backend, images)
    body = json.dumps(payload(fake, images)).encode()
    run.body_mib = len(body) / 2**20
    async with database(backend, workdir) as url:
        data_dir = workdir / f"serve-{backend}-{images}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = worker_env(settings(data_dir, url, fake), **service_env(fake))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        async with (
            _server(env, port, data_dir / "serve.log") as proc,
            httpx.AsyncClient(base_url=base, timeout=600) as client,
        ):
            await _wait_healthy(client, proc)
            await asyncio.sleep(1.0)  # let the start settle before the idle reading
            run.rss_idle = memory_mib(proc.pid)[0]
            began = time.perf_counter()
            response = await client.post(
                f"{API_PREFIX}/jobs", content=body, headers={"content-type": "application/json"}
            )
            run.seconds = time.perf_counter() - began
            if response.status_code != 201:
                raise RuntimeError(f"POST answered {response.status_code}: {response.text[:300]}")
            run.rss_accepted = memory_mib(proc.pid)[0]
            job_id = response.json()["job_id"]
            run.rss_running = await _sample_running(proc.pid, run_seconds)
            run.hwm = memory_mib(proc.pid)[1]
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                job = (await client.get(f"{API_PREFIX}/jobs/{job_id}", timeout=60)).json()
                run.done_while_running = int(job["counts"]["succeeded"])
    return run
