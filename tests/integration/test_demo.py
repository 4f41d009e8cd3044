"""``imagestudio demo`` as a person runs it: the seed batch offline, the dashboard's URL
printed, and with ``--keep`` the service left up (serving the dashboard and the job) until
SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from imagestudio.cli.background_server import free_port
from imagestudio.domain import API_PREFIX
from testkit.fleet import clean_env, console_script


def test_demo_keep_leaves_the_dashboard_up(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    command = [
        console_script(), "demo", "--keep", "--port", str(port), "--latency-ms", "100",
        "--data-dir", str(tmp_path / "demo"),
    ]  # fmt: skip
    env = clean_env() | {"COLUMNS": "160", "TERM": "dumb", "IMAGESTUDIO_IMAGING_PROCESSES": "0"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 90
        while "stays up" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert f"dashboard      http://127.0.0.1:{port}/" in text
        assert "status succeeded: 5/5" in text
        job_id = text.split("#/jobs/")[1].split()[0]
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200
        assert "imagestudio" in page.text
        job = httpx.get(f"http://127.0.0.1:{port}{API_PREFIX}/jobs/{job_id}", timeout=10)
        assert job.json()["status"] == "succeeded"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
