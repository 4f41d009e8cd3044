"""A second OpenAI-compatible image provider, written apart from ``imagestudio.providers.fake``
(no code shared, not even its HTTP stack): a bare asyncio HTTP/1.1 server whose limits and
429s are shaped unlike the fake's, for ``bench/unseen.py`` and tests. Its limits are hidden
from the service; what it tells about them is set per run:

- limits: ``concurrency`` (calls in flight), ``rate`` starts per ``window`` seconds (a sliding
  log: any ``window`` seconds hold at most ``rate`` accepted starts), a token ``bucket``
  (``bucket_size`` tokens, refilled at ``bucket_rate`` per second, starting full: bursts);
- ``changes``: ``(seconds after the run started, {field: value})``, e.g. limits rising;
- ``headers``: ``"none"``, ``"on_429"`` (rate headers only on 429s) or ``"always"``;
  ``header_style``: ``"openai"`` (``x-ratelimit-*-requests``, reset as ``1s``), ``"ietf"``
  (``ratelimit-limit/remaining/reset``), ``"plain"`` (``x-ratelimit-limit/remaining/reset``,
  reset in seconds), ``"retry_ms"`` (only ``retry-after-ms`` on 429s);
- ``message``: every 429 says the same generic words (no hint of which limit);
- ``reject_first`` calls answer 429 with exactly ``reject_headers`` (a fixed shape for tests).

Latency is lognormal (``latency`` mean seconds, ``sigma``), drawn from a seeded generator in
the order calls are accepted. ``GET /samples/<n>.jpg`` serves source photos. Control:
``POST /_sim/start`` (JSON config; resets counters and the clock), ``GET /_sim/stats``.

``python -m testkit.provider_sim --port P`` runs it as a process; ``SimThread`` in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import io
import json
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from PIL import Image

GENERIC_429 = "Too many requests. Please slow down and try again later."


@dataclass(frozen=True)
class SimConfig:
    latency: float = 0.05
    sigma: float = 0.5
    seed: int = 1
    concurrency: int | None = None
    rate: float | None = None  # accepted starts per ``window`` seconds
    window: float = 1.0
    bucket_size: float | None = None
    bucket_rate: float | None = None
    headers: str = "none"  # none | on_429 | always
    header_style: str = "openai"  # openai | ietf | plain | retry_ms
    message: str = GENERIC_429
    changes: tuple[tuple[float, dict[str, Any]], ...] = ()
    reject_first: int = 0
    reject_headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "changes" in values:
            values["changes"] = tuple((float(at), dict(c)) for at, c in values["changes"])
        return cls(**values)


def _png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (180, 120, 60)).save(out, "PNG")
    return out.getvalue()


def _jpeg(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 320), (n * 37 % 256, n * 91 % 256, 128)).save(out, "JPEG")
    return out.getvalue()


class Limiter:
    """The hidden limits, checked at each call's start (the simulator's clock: ``now``)."""

    def __init__(self, config: SimConfig, t0: float) -> None:
        self.config, self.t0 = config, t0
        self.in_flight = 0
        self.starts: collections.deque[float] = collections.deque()
        self.tokens = config.bucket_size or 0.0
        self.refilled = t0
        self.applied = 0

    def _apply_changes(self, now: float) -> None:
        changes = self.config.changes
        while self.applied < len(changes) and now - self.t0 >= changes[self.applied][0]:
            self.config = replace(self.config, **changes[self.applied][1])
            self.applied += 1

    def _refill(self, now: float) -> None:
        c = self.config
        if c.bucket_size is None or c.bucket_rate is None:
            return
        self.tokens = min(c.bucket_size, self.tokens + (now - self.refilled) * c.bucket_rate)
        self.refilled = now

    def admit(self, now: float) -> tuple[bool, dict[str, str]]:
        """Whether a call starting now is accepted, and the rate headers to send."""
        self._apply_changes(now)
        self._refill(now)
        c = self.config
        while self.starts and self.starts[0] <= now - c.window:
            self.starts.popleft()
        over = (
            (c.concurrency is not None and self.in_flight >= c.concurrency)
            or (c.rate is not None and len(self.starts) >= c.rate)
            or (c.bucket_size is not None and self.tokens < 1.0)
        )
        if not over:
            self.in_flight += 1
            self.starts.append(now)
            if c.bucket_size is not None:
                self.tokens -= 1.0
        return not over, self._headers(now, rejected=over)

    def _headers(self, now: float, *, rejected: bool) -> dict[str, str]:
        c = self.config
        if c.headers == "none" or (c.headers == "on_429" and not rejected):
            return {}
        if c.rate is not None:
            limit, remaining = c.rate, c.rate - len(self.starts)
            reset = (self.starts[0] + c.window - now) if self.starts else c.window
        elif c.bucket_size is not None and c.bucket_rate:
            limit, remaining = c.bucket_size, math.floor(self.tokens)
            reset = max(0.0, 1.0 - self.tokens) / c.bucket_rate
        else:
            limit, remaining, reset = 0, 0 if rejected else 1, 0.5
        remaining, reset = max(0, int(remaining)), max(0.0, reset)
        if c.header_style == "retry_ms":
            return {"retry-after-ms": str(int(reset * 1000) + 1)} if rejected else {}
        if c.header_style == "ietf":
            return {
                "ratelimit-limit": str(int(limit)),
                "ratelimit-remaining": str(remaining),
                "ratelimit-reset": str(max(1, math.ceil(reset))),
            }
        if c.header_style == "plain":
            return {
                "x-ratelimit-limit": str(int(limit)),
                "x-ratelimit-remaining": str(remaining),
                "x-ratelimit-reset": f"{reset:.3f}",
            }
        return {
            "x-ratelimit-limit-requests": str(int(limit)),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }

    def done(self) -> None:
        self.in_flight -= 1


class Simulator:
    def __init__(self) -> None:
        self.config = SimConfig()
        self._reset()
        self.image = _png(256)
        self.b64 = base64.b64encode(self.image).decode()
        self.samples: dict[int, bytes] = {}

    def _reset(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.limiter = Limiter(self.config, self.t0)
        self.rng = random.Random(self.config.seed)
        self.calls = self.accepted = self.rejected = self.peak = 0
        self.log: list[tuple[float, float, int]] = []  # (start, end, status), epoch seconds

    def start(self, config: SimConfig) -> None:
        self.config = config
        self._reset()

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "peak_in_flight": self.peak,
            "log": self.log,
        }

    def _latency(self) -> float:
        c = self.config
        mu = math.log(c.latency) - c.sigma**2 / 2  # mean of the lognormal = c.latency
        return self.rng.lognormvariate(mu, c.sigma)

    async def image_call(self) -> tuple[int, dict[str, str], bytes]:
        self.calls += 1
        started = time.time()
        if self.calls <= self.config.reject_first:
            self.rejected += 1
            self.log.append((started, time.time(), 429))
            return 429, dict(self.config.reject_headers), self._error()
        ok, headers = self.limiter.admit(time.monotonic())
        if not ok:
            self.rejected += 1
            self.log.append((started, time.time(), 429))
            return 429, headers, self._error()
        self.accepted += 1
        self.peak = max(self.peak, self.limiter.in_flight)
        limiter = self.limiter
        try:
            await asyncio.sleep(self._latency())
        finally:
            limiter.done()
        self.log.append((started, time.time(), 200))
        body = json.dumps({"created": int(started), "data": [{"b64_json": self.b64}]})
        return 200, headers, body.encode()

    def _error(self) -> bytes:
        error = {"message": self.config.message, "type": "requests", "code": "rate_limited"}
        return json.dumps({"error": error}).encode()

    def sample(self, n: int) -> bytes:
        if n not in self.samples:
            self.samples[n] = _jpeg(n)
        return self.samples[n]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return method, target, bytes(body)
    length = int(headers.get("content-length", "0"))
    return method, target, await reader.readexactly(length) if length else b""


def _response(status: int, headers: dict[str, str], body: bytes, kind: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}.get(status, "OK")
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {kind}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class SimServer:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.writers: set[asyncio.StreamWriter] = set()

    def close_connections(self) -> None:
        for writer in list(self.writers):
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if request is None:
                    return
                writer.write(await self._route(*request))
                await writer.drain()
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(self, method: str, target: str, body: bytes) -> bytes:
        path = target.split("?", 1)[0]
        sim = self.sim
        if method == "POST" and path.endswith(("/images/edits", "/images/generations")):
            status, headers, data = await sim.image_call()
            return _response(status, headers, data, "application/json")
        if method == "GET" and path.startswith("/samples/"):
            number = int("".join(ch for ch in path.rsplit("/", 1)[-1] if ch.isdigit()) or "0")
            return _response(200, {}, sim.sample(number), "image/jpeg")
        if method == "POST" and path == "/_sim/start":
            sim.start(SimConfig.from_json(json.loads(body or b"{}")))
            return _response(200, {}, b"{}", "application/json")
        if method == "GET" and path == "/_sim/stats":
            return _response(200, {}, json.dumps(sim.stats()).encode(), "application/json")
        return _response(404, {}, b'{"error": {"message": "not found"}}', "application/json")


async def serve(host: str, port: int, ready: threading.Event | None = None) -> None:
    server = await asyncio.start_server(SimServer(Simulator()).handle, host, port, backlog=1024)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


class SimThread:
    """The simulator on a loopback port in a thread of its own (tests)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sim = Simulator()
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, config: SimConfig) -> None:
        async def restart() -> None:
            self.sim.start(config)

        asyncio.run_coroutine_threadsafe(restart(), self._loop).result(10)

    def stats(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return self.sim.stats()

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)

    def __enter__(self) -> SimThread:
        self._thread.start()
        self._handler = SimServer(self.sim)
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handler.handle, self.host, 0), self._loop
        ).result(10)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        return self

    def __exit__(self, *_: object) -> None:
        async def shut() -> None:
            self._server.close()
            self._handler.close_connections()
            await asyncio.sleep(0.01)
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def sim_thread(config: SimConfig) -> Iterator[SimThread]:
    with SimThread() as sim:
        sim.start(config)
        yield sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
