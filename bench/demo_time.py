"""Wall time of ``imagestudio demo`` (a fresh data dir each run), repeated, median."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from testkit.fleet import clean_env, console_script

TIMEOUT = 120


def run(repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="imagestudio-demo-bench-") as tmp:
            command = [console_script(), "demo", "--data-dir", str(Path(tmp) / "demo")]
            started = time.perf_counter()
            done = subprocess.run(
                command,
                env=clean_env() | {"COLUMNS": "120", "TERM": "dumb"},
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"imagestudio demo failed ({done.returncode}):\n{done.stdout}")
        times.append(elapsed)
        print(f"  demo run {len(times)}: {elapsed:.2f} s", flush=True)
    return times


def report(times: list[float]) -> str:
    runs = ", ".join(f"{t:.2f}" for t in times)
    median = statistics.median(times)
    return "\n".join(
        [
            "### `imagestudio demo` (seed batch: 3 SKUs, 5 images, fake latency ~1.5 s)",
            "",
            "| | seconds |",
            "|---|---:|",
            f"| median of {len(times)} runs (fresh data dir each) | {median:.2f} |",
            f"| runs | {runs} |",
            f"| machine | {os.cpu_count()} cores |",
            "",
        ]
    )
