"""The worker loop: claim while slots are free, keep leases alive, drain on stop.

A task waiting on the provider costs a coroutine, not a thread: how many provider calls a
worker has in flight follows the governors (the claim admits a key's tasks only within its
window and pace), up to ``max_tasks`` in all, a safety cap for memory (docs/governor.md). The
rest of a task's life, fetching and preparing the source before the call and post-processing
and storing after it, is CPU and memory work: at most ``concurrency`` tasks are outside a
provider call at once (and post-processing is bounded again by the imaging pool).

Every ``heartbeat_interval`` the worker extends the leases it still holds; a task whose lease
it no longer holds (taken over after a stall, or cancelled) has its coroutine cancelled, so
a cancelled job stops calling the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass

import structlog

from imagestudio.scheduler.probe import Probe, Stage, timed
from imagestudio.scheduler.runner import RunHooks, TaskRunner
from imagestudio.store.records import ClaimedTask
from imagestudio.store.store import Store

log = structlog.get_logger("imagestudio.worker")


@dataclass(eq=False, slots=True)
class Running:
    """A task this worker runs: its coroutine, and whether its outcome is being recorded."""

    task: ClaimedTask
    runner: asyncio.Task[None] | None = None
    recording: bool = False
    in_call: bool = False

    def mark_recording(self) -> None:
        self.recording = True


def _until(wake_at: float | None, longest: float) -> float:
    """Seconds to sleep: until ``wake_at`` (epoch seconds), at most ``longest``."""
    if wake_at is None:
        return longest
    return min(longest, max(0.001, wake_at - time.time()))


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


MAX_TASKS = 512  # tasks one worker holds at most, most of them waiting on a provider


def free_slots(*, held: int, in_call: int, concurrency: int, max_tasks: int) -> int:
    """How many tasks a worker may claim (pure): up to ``concurrency`` outside a provider
    call (the calls themselves are bounded by the governors), ``max_tasks`` in all."""
    return max(0, min(max_tasks - held, concurrency - (held - in_call)))


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    concurrency: int = 8  # tasks outside a provider call (fetch, prepare, post-process, store)
    max_tasks: int = MAX_TASKS  # tasks in all, provider calls included
    lease_seconds: float = 30.0
    poll_interval: float = 0.5
    heartbeat_interval: float = 2.0
    drain_grace: float = 30.0


class Worker:
    def __init__(
        self,
        store: Store,
        runner: TaskRunner,
        config: WorkerConfig,
        *,
        worker_id: str | None = None,
        wakeup: asyncio.Event | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.store, self.runner, self.config = store, runner, config
        self.probe = runner.probe if probe is None else probe  # one probe sees a task's life
        self.id = worker_id or new_worker_id()
        self.wakeup = wakeup or asyncio.Event()
        # Keyed by (image id, fence): after a stall this worker may hold a newer attempt of
        # an image beside its own older, superseded one.
        self._inflight: dict[tuple[int, int], Running] = {}
        self._in_call = 0  # of them, tasks in their provider call
        self.peak_in_call = 0
        self._slot_freed = asyncio.Event()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain: finish in-flight tasks within the grace."""
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        log.info(
            "worker started",
            worker=self.id,
            concurrency=self.config.concurrency,
            max_tasks=self.config.max_tasks,
        )
        try:
            while not stop.is_set():
                _, wake_at = await self._fill()
                await self._idle(stop, wake_at)
        finally:
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            log.info("worker stopped", worker=self.id)

    async def run_until_idle(self, settle: float = 0.05) -> None:
        """Burst mode for tests and benchmarks: return when nothing is runnable or running."""
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        never = asyncio.Event()
        try:
            while True:
                claimed, wake_at = await self._fill()
                if claimed or self._inflight:
                    await self._idle(never, wake_at)
                    continue
                if not await self.store.has_pending():
                    return
                await asyncio.sleep(_until(wake_at, settle))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _fill(self) -> tuple[int, float | None]:
        """Claim into the free slots; returns how many, and when to try again if held back."""
        # Cleared before the claim, not after it: a slot that frees while the claim runs
        # must wake the next one at once, not wait for another call to end.
        self.wakeup.clear()
        self._slot_freed.clear()
        free = free_slots(
            held=len(self._inflight),
            in_call=self._in_call,
            concurrency=self.config.concurrency,
            max_tasks=self.config.max_tasks,
        )
        if free <= 0:
            return 0, None
        try:
            with timed(self.probe, Stage.CLAIM):
                claim = await self.store.claim_batch(self.id, free, self.config.lease_seconds)
        except Exception:
            log.exception("claim failed; will retry", worker=self.id)
            await asyncio.sleep(self.config.poll_interval)
            return 0, None
        for task in claim.tasks:
            running = Running(task)
            self._inflight[(task.image_id, task.fence)] = running
            running.runner = asyncio.create_task(
                self._run_one(running), name=f"image-{task.image_id}-a{task.fence}"
            )
        return len(claim.tasks), claim.wake_at

    def _call_started(self, running: Running) -> None:
        running.in_call = True
        self._in_call += 1
        self.peak_in_call = max(self.peak_in_call, self._in_call)
        self._slot_freed.set()  # a slot outside the provider calls is free

    def _call_done(self, running: Running) -> None:
        if running.in_call:
            running.in_call = False
            self._in_call -= 1
        self._slot_freed.set()

    async def _run_one(self, running: Running) -> None:
        task = running.task
        hooks = RunHooks(
            call_started=lambda: self._call_started(running),
            call_done=lambda: self._call_done(running),
            recording=running.mark_recording,
        )
        try:
            await self.runner.run(task, hooks)
        except asyncio.CancelledError:
            log.info("task cancelled", job_id=task.job.job_id, stem=task.stem)
        except Exception:
            log.exception("task crashed", job_id=task.job.job_id, stem=task.stem)
        finally:
            self._call_done(running)
            self._inflight.pop((task.image_id, task.fence), None)

    async def _idle(self, stop: asyncio.Event, wake_at: float | None) -> None:
        """Wait for a freed slot, a new job, a held-back task coming due or ``stop``; returns
        at once if one of them happened since the last claim began."""
        events = (stop, self.wakeup, self._slot_freed)
        if any(event.is_set() for event in events):
            return
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(
                waiters,
                timeout=_until(wake_at, self.config.poll_interval),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            await self._beat()

    async def _beat(self) -> None:
        attempts = list(self._inflight)
        if not attempts:
            return
        ids = sorted({image_id for image_id, _ in attempts})
        try:
            held = await self.store.heartbeat(self.id, ids, self.config.lease_seconds)
        except Exception:
            log.exception("heartbeat failed", worker=self.id)
            return
        for attempt in set(attempts) - held:
            running = self._inflight.get(attempt)
            if running is not None and not running.recording and running.runner is not None:
                log.info("lease gone (cancelled or taken over); stopping task", image=attempt[0])
                running.runner.cancel()

    async def _drain(self) -> None:
        if not self._inflight:
            return
        pending = [r.runner for r in self._inflight.values() if r.runner is not None]
        log.info("draining", worker=self.id, inflight=len(pending))
        _, still = await asyncio.wait(pending, timeout=self.config.drain_grace)
        leftovers = [r.task for r in list(self._inflight.values()) if r.runner in still]
        for runner in still:
            runner.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        for task in leftovers:
            await self.store.release(task)
