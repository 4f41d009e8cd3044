"""A real S3 HTTP server for tests and benchmarks: moto's server (``moto_server``) in its own
process on a free loopback port, with test credentials and buckets made through boto3.

Its own process, not ``ThreadedMotoServer``: the server then neither shares the GIL with the
client being measured nor dies with a test's event loop, and ``imagestudio worker``
subprocesses reach it like any other endpoint.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from imagestudio.cli.background_server import free_port

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key-never-logged-0123456789"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running S3 server: its endpoint and the credentials it accepts (moto takes any)."""

    endpoint: str
    pid: int
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def env(self) -> dict[str, str]:
        """The usual AWS settings pointing at this server, for a subprocess or a ``.env``."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self) -> Any:
        """A plain synchronous boto3 S3 client, to look into the bucket from a test."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix``, sorted (all pages)."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _moto_server() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    return found


@contextlib.contextmanager
def s3_server(log: Path | None = None) -> Iterator[S3Server]:
    """``moto_server`` on 127.0.0.1 and a free port, answering when yielded; killed after."""
    port = free_port()
    sink = log.open("wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [_moto_server(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=sink,
        stderr=sink,
        stdin=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code < 500:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield S3Server(endpoint, proc.pid)
    finally:
        proc.kill()
        proc.wait(10)
        if log is not None and hasattr(sink, "close"):
            sink.close()
