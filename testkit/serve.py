"""``imagestudio serve`` in its own process on a loopback port, and its memory from /proc:
for tests and benchmarks that measure what a request costs the server."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from imagestudio.cli.background_server import free_port
from testkit.fleet import clean_env, console_script


@dataclass(frozen=True, slots=True)
class ServeProcess:
    url: str
    pid: int
    log: Path

    def memory(self) -> tuple[int, int]:
        """``(rss, peak rss)`` in bytes (VmRSS, VmHWM)."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
        return values["VmRSS"], values["VmHWM"]


@contextlib.contextmanager
def serve_process(
    workdir: Path, *args: str, workers: int = 0, **settings: str
) -> Iterator[ServeProcess]:
    """``imagestudio serve --workers N ARGS`` in ``workdir`` (SQLite there unless
    ``database_url`` is given), ``IMAGESTUDIO_<NAME>`` settings from ``settings``; answering
    when yielded, stopped when the block ends. Its stdout and stderr go to ``log``."""
    port = free_port()
    env = clean_env()
    env.update(IMAGESTUDIO_DATA_DIR=str(workdir / "data"), IMAGESTUDIO_IMAGING_PROCESSES="0")
    env.update({f"IMAGESTUDIO_{name.upper()}": value for name, value in settings.items()})
    command = [console_script(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--workers", str(workers), *args],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=log,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"imagestudio serve did not start: {log_path.read_text()}")
                time.sleep(0.05)
            yield ServeProcess(url, proc.pid, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
