"""Real ``imagestudio worker`` subprocesses for crash tests and benchmarks: where the console
script is, the environment a worker gets, a fleet that keeps N of them alive while some are
SIGKILLed, a restart of the local PostgreSQL cluster, and matching the provider's call log to
the recorded attempts afterwards.

Shared by ``tests/acceptance`` and ``bench/``, so the tests and the benchmarks kill and restart
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from imagestudio.cli.background_server import free_port
from imagestudio.settings import Settings
from imagestudio.store.records import AttemptRecord, ImageRecord
from imagestudio.store.store import Store

PG_RESTART_TIMEOUT = 60.0


def console_script() -> str:
    """The ``imagestudio`` command of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("imagestudio")
    found = str(beside) if beside.exists() else shutil.which("imagestudio")
    if found is None:
        raise RuntimeError(f"the imagestudio console script is not installed ({sys.executable})")
    return found


def clean_env() -> dict[str, str]:
    """This process's environment without any ``IMAGESTUDIO_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IMAGESTUDIO_")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc; 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def fake_provider_process(workdir: Path, *options: str) -> Iterator[tuple[str, int]]:
    """``imagestudio fake-provider OPTIONS`` in its own process on a free loopback port,
    answering when yielded as ``(url, pid)``; killed when the block ends. Its output goes to
    ``workdir/fake-provider.log``."""
    port = free_port()
    command = [console_script(), "fake-provider", "--port", str(port), *options]
    with (workdir / "fake-provider.log").open("wb") as log:
        proc = subprocess.Popen(command, env=clean_env(), cwd=workdir, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/_fake/stats?calls=0", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fake provider did not start")
                time.sleep(0.05)
            yield url, proc.pid
        finally:
            proc.kill()
            proc.wait(10)


@contextlib.asynccontextmanager
async def imagestudio_process(
    *args: str, env: Mapping[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``imagestudio ARGS`` in its own process, its output to ``log`` and ``log``'s folder its
    working directory (no stray .env file); killed when the block ends if still running."""
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            console_script(),
            *args,
            env=dict(env),
            cwd=log.parent,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker on ``settings``' database and data directory, loopback
    sources allowed; ``extra`` adds ``IMAGESTUDIO_*`` settings (``LEASE_SECONDS="2"``)."""
    env = clean_env()
    env.update(
        IMAGESTUDIO_DATABASE_URL=settings.effective_database_url,
        IMAGESTUDIO_DATA_DIR=str(settings.data_dir.resolve()),
        IMAGESTUDIO_ALLOW_PRIVATE_URLS="127.0.0.1",
    )
    env.update({f"IMAGESTUDIO_{name}": value for name, value in extra.items()})
    return env


@dataclass
class Slot:
    """One of the N worker places; a killed worker is replaced in the same slot."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    log: Path | None = None
    generation: int = 0
    up_since: float | None = None  # when it logged ``worker started`` (it claims from then)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def poll_started(self) -> None:
        if self.up_since is None and self.alive() and self.log is not None:
            if "worker started" in self.log.read_text(encoding="utf-8", errors="replace"):
                self.up_since = time.monotonic()


@dataclass
class WorkerFleet:
    """N ``imagestudio worker`` subprocesses kept alive: killed ones and ones that exit on
    their own (say, started while PostgreSQL was down) are replaced.

    Only a worker that has been up ``min_uptime`` may be killed, and never the last one up:
    where a worker takes seconds to start, killing every second or two would otherwise kill
    each one as soon as it came up, and prove nothing.
    """

    env: dict[str, str]
    logs: Path
    count: int
    concurrency: int
    min_uptime: float = 0.5
    slots: list[Slot] = field(default_factory=list)
    kills: int = 0
    killed_pids: set[int] = field(default_factory=set)
    boot_exits: list[str] = field(default_factory=list)  # exited before it started working
    crashes: list[str] = field(default_factory=list)  # exited on its own while working

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.slots = [Slot(i) for i in range(self.count)]
        for slot in self.slots:
            await self._spawn(slot)

    async def _spawn(self, slot: Slot) -> None:
        slot.generation += 1
        slot.up_since = None
        slot.log = self.logs / f"worker-{slot.index}-{slot.generation}.log"
        with slot.log.open("wb") as sink:
            slot.proc = await asyncio.create_subprocess_exec(
                console_script(),
                "worker",
                "--concurrency",
                str(self.concurrency),
                env=self.env,
                cwd=self.logs,  # no stray .env file
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )

    def killable(self) -> list[Slot]:
        now = time.monotonic()
        for slot in self.slots:
            slot.poll_started()
        up = [s for s in self.slots if s.alive() and s.up_since is not None]
        if len(up) < 2:
            return []
        return [s for s in up if s.up_since is not None and now - s.up_since >= self.min_uptime]

    async def kill_one(self, rng: random.Random) -> bool:
        """SIGKILL a random killable worker and start its replacement; False if none is."""
        candidates = self.killable()
        if not candidates:
            return False
        slot = rng.choice(candidates)
        assert slot.proc is not None
        slot.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(slot.proc.wait(), 10)
        self.kills += 1
        self.killed_pids.add(slot.proc.pid)
        await self._spawn(slot)
        return True

    async def replace_exited(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is not None:
                where = self.crashes if slot.up_since is not None else self.boot_exits
                where.append(f"worker {slot.index}.{slot.generation} exit {slot.proc.returncode}")
                await self._spawn(slot)

    def log_tails(self, chars: int = 1500) -> str:
        tails = []
        for slot in self.slots:
            if slot.log is not None and slot.log.exists():
                text = slot.log.read_text(encoding="utf-8", errors="replace")[-chars:]
                tails.append(f"--- {slot.log.name}\n{text}")
        return "\n".join(tails)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (drain), then SIGKILL whatever is still there after ``grace``."""
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    return versions[-1]


async def restart_postgresql() -> float:
    """``pg_ctlcluster <version> main restart`` (fast shutdown: every session is dropped);
    returns how long it took."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        _pg_version(),
        "main",
        "restart",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), PG_RESTART_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"PostgreSQL restart failed: {output.decode(errors='replace')}")
    return time.monotonic() - started


def pg_restart_enabled(default: bool = True) -> bool:
    """Whether chaos runs may restart the local PostgreSQL (``IMAGESTUDIO_CHAOS_PG_RESTART=0``
    says no)."""
    value = os.environ.get("IMAGESTUDIO_CHAOS_PG_RESTART")
    return default if value is None else value.strip() != "0"


async def image_counts(store: Store, job_pks: Iterable[str]) -> Counter[str] | None:
    """Image statuses over ``job_pks``; ``None`` while the database is unreachable (a chaos
    run restarts it)."""
    counts: Counter[str] = Counter()
    try:
        for pk in job_pks:
            counts.update(image.status for image in await store.images(pk))
    except Exception:
        return None
    return counts


CLOCK_SLACK = 0.05  # seconds between a worker's clock and the provider's (one machine)


def calls_per_image(
    calls: Iterable[Mapping[str, Any]],
    jobs: Iterable[tuple[str, Sequence[ImageRecord], Sequence[AttemptRecord]]],
) -> tuple[Counter[int], int]:
    """Provider calls per image id (from the fake provider's call log), and the calls that
    fit no recorded attempt; ``jobs`` are (key fingerprint, images, attempts).

    A call carries its job's key and its image's prompt (the same for many images of a job),
    and starts inside the window of the attempt that made it (one call per attempt at most).
    Within one (key, prompt), calls in start order take the fitting window that closes
    first: the greedy that matches the most calls to windows.
    """
    windows: dict[tuple[str, str], list[tuple[float, float, int]]] = defaultdict(list)
    for key, images, attempts in jobs:
        prompts = {image.id: image.prompt for image in images}
        for a in attempts:
            end = a.ended_at.timestamp() + CLOCK_SLACK if a.ended_at else float("inf")
            window = (a.started_at.timestamp() - CLOCK_SLACK, end, a.image_id)
            windows[(key, prompts[a.image_id])].append(window)
    per_image: Counter[int] = Counter()
    stray = 0
    for call in sorted(calls, key=lambda c: float(c["start"])):
        group = windows.get((call["key"], call["prompt"]), [])
        fits = [w for w in group if w[0] <= call["start"] <= w[1]]
        if not fits:
            stray += 1
            continue
        chosen = min(fits, key=lambda w: w[1])
        group.remove(chosen)
        per_image[chosen[2]] += 1
    return per_image, stray
