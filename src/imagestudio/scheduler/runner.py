"""The task runner: the one module that wires source -> provider -> imaging -> storage -> store.

One claimed task in, one recorded outcome out. Failures become values through the pure retry
policy; the store's fencing makes a stale attempt's result a no-op.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from imagestudio.domain import TERMINAL_JOB_STATUSES
from imagestudio.errors import (
    BudgetExceeded,
    ImageStudioError,
    LeaseLost,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from imagestudio.imaging.fetch import SourceFetcher
from imagestudio.imaging.pool import ImagingExecutor, ThreadImaging
from imagestudio.imaging.process import postprocess, prepare_source
from imagestudio.observability.metrics import Metrics
from imagestudio.policy.cooldown import long_cooldown
from imagestudio.policy.cost import Price, call_cost, price_for
from imagestudio.policy.governor import Observation
from imagestudio.policy.retry import (
    AttemptState,
    FailImage,
    FailJob,
    RetryPolicy,
    decide,
    describe,
    error_kind,
    run_after,
)
from imagestudio.providers.base import ImageProvider, ImageRequest, ImageResult
from imagestudio.providers.registry import provider_size
from imagestudio.scheduler.calls import CallLog
from imagestudio.scheduler.probe import NO_PROBE, Probe, Stage, timed
from imagestudio.scheduler.provider_pool import ProviderPool
from imagestudio.storage import ResultStorage, sweep
from imagestudio.store.budget import Refused
from imagestudio.store.records import ClaimedTask, Failed, Outcome, Requeue, Spend, Succeeded
from imagestudio.store.store import Store

log = structlog.get_logger("imagestudio.runner")

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def governor_observation(
    error: ProviderError,
    sent_at: float,
    now: float,
    started: tuple[int, tuple[int, ...], float] | None = None,
) -> Observation | None:
    """What a failed call tells the governor: a 429, back-pressure, or nothing about load.
    ``started``: the calls in flight and the starts per window when it started (CallLog)."""
    if isinstance(error, RateLimited):
        return Observation(
            "rate_limited",
            sent_at,
            now,
            retry_after=error.retry_after,
            rate=error.rate,
            limit=error.limit,
            wait_cause=error.wait_cause,
            started_with=None if started is None else started[0],
            starts=None if started is None else started[1],
            called_for=None if started is None else started[2],
        )
    if isinstance(error, ProviderUnavailable | ProviderTimeout):
        return Observation("backpressure", sent_at, now)
    return None


_ATTEMPT = re.compile(r"-a(\d+)\.[a-z]+$")


def attempt_of(key: str) -> int | None:
    """The fence of the attempt that wrote ``key`` (see ``result_key``)."""
    match = _ATTEMPT.search(key)
    return int(match.group(1)) if match else None


def result_prefix(task: ClaimedTask) -> str:
    return f"{task.job_pk}/{task.position:04d}-"


def result_key(task: ClaimedTask) -> str:
    """``<job>/<position>-<sku>-<stem>-a<fence>.<ext>``: one per attempt, so stale writers
    can never overwrite the winner; the winner removes the others."""
    sku = _UNSAFE.sub("_", task.sku)[:60] or "sku"
    stem = _UNSAFE.sub("_", task.stem)[:80] or "image"
    ext = EXTENSIONS[task.job.output.format]
    return f"{result_prefix(task)}{sku}-{stem}-a{task.fence}.{ext}"


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    policy: RetryPolicy
    max_pixels: int
    provider_timeout: float  # a total deadline per provider call (the pool's clients use it)
    files_url: str  # the API's files route, e.g. "/api/v1/image_studio/files"
    prices: Mapping[str, Price] = field(default_factory=dict)  # by model (``policy.cost``)


@dataclass(slots=True)
class _Spent:
    """What this attempt's provider call used, once it answered (recorded with the outcome)."""

    value: Spend | None = None


def result_url(storage: ResultStorage, files_url: str, key: str) -> str:
    """The URL recorded for a result: the storage's own stable address if it has one (a
    public bucket), else the API's files route, which asks the storage how to serve it."""
    return storage.public_url(key) or f"{files_url}/{key}"


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class RunHooks:
    """What the runner tells its worker: ``call_started`` when the provider call begins (the
    task waits on the provider from then on), ``call_done`` when it ended (a slot in the
    provider's window is free), ``recording`` right before the outcome is written (the lease
    ends by design from then on: a heartbeat must not take it for a lost one)."""

    call_started: Callable[[], None] = _nothing
    call_done: Callable[[], None] = _nothing
    recording: Callable[[], None] = _nothing


MAX_REPORTED = 256


def _origin(exc: BaseException) -> tuple[str, str]:
    """An exception's type and the place it was raised (its innermost frame)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    place = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    return type(exc).__name__, place


class TaskRunner:
    def __init__(
        self,
        *,
        store: Store,
        storage: ResultStorage,
        fetcher: SourceFetcher,
        providers: ProviderPool,
        config: RunnerConfig,
        metrics: Metrics,
        rng: random.Random | None = None,
        probe: Probe = NO_PROBE,
        imaging: ImagingExecutor | None = None,
    ) -> None:
        self.store, self.storage, self.fetcher, self.metrics = store, storage, fetcher, metrics
        self.providers, self.config = providers, config
        self.imaging = imaging or ThreadImaging()  # where decode/resize/encode run
        self.rng = rng or random.Random()
        self.probe = probe
        self._reported: set[tuple[str, str]] = set()  # unexpected errors' (type, place) seen
        self.calls = CallLog()  # this process's calls per key, for the governor's evidence

    async def run(self, task: ClaimedTask, hooks: RunHooks | None = None) -> None:
        """Run one claimed task to a recorded outcome (see ``RunHooks`` for what the worker
        is told on the way)."""
        hooks = hooks or RunHooks()
        bound = log.bind(
            job_id=task.job.job_id, sku=task.sku, stem=task.stem, attempt=task.attempts
        )
        bound.info(f"Processing image {task.position + 1}/{task.job.total}")
        outcome: Outcome
        spent = _Spent()
        try:
            outcome = await self._attempt(task, hooks, spent)
        except LeaseLost:
            bound.info("task no longer held (cancelled or taken over); stopped")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes a decision, never a crash
            outcome = self._decide(task, exc)
        hooks.recording()
        try:
            with timed(self.probe, Stage.FINISH):
                status = await self.store.finish(task, outcome, spent.value)
        except LeaseLost:
            bound.warning("lease lost; result discarded")
            if isinstance(outcome, Succeeded):
                await self.storage.delete(outcome.result_key)
            return
        self.metrics.images_finished.labels(type(outcome).__name__.lower()).inc()
        report = bound.warning if isinstance(outcome, Failed) else bound.info
        report(
            "image finished",
            outcome=type(outcome).__name__.lower(),
            error_kind=getattr(outcome, "error_kind", None),
            error=getattr(outcome, "error", None),
            job_status=status,
        )
        if status in TERMINAL_JOB_STATUSES:
            await sweep(self.storage, f"{task.job_pk}/", await self.store.result_keys(task.job_pk))

    async def _attempt(self, task: ClaimedTask, hooks: RunHooks, spent: _Spent) -> Succeeded:
        if task.attempts > self.config.policy.max_attempts:
            raise ImageStudioError(f"worker lost {task.attempts - 1} times while running it")
        job = task.job
        with timed(self.probe, Stage.SOURCE_FETCH):
            source = await self.fetcher.fetch(task.source_url)
        prepared = await self.imaging.run(
            prepare_source, source.data, source.filename, max_pixels=self.config.max_pixels
        )
        request = ImageRequest(
            prompt=task.prompt,
            model=job.model,
            size=provider_size(job.model, job.output.width, job.output.height),
            source=prepared,
        )
        async with self.providers.lease(task) as provider:
            with timed(self.probe, Stage.STILL_HELD):
                held = await self.store.still_held(task)
            if not held:  # cancelled while the source was fetched
                raise LeaseLost("the task was cancelled or taken over before the provider call")
            if job.max_cost is not None:
                await self._reserve(task)
            hooks.call_started()
            try:
                raw = await self._call(task, provider, request, spent)
            finally:
                hooks.call_done()
        data = await self.imaging.run(
            postprocess, raw, job.output, max_pixels=self.config.max_pixels
        )
        key = result_key(task)
        with timed(self.probe, Stage.STORAGE_PUT):
            await self.storage.put(key, data, CONTENT_TYPES[job.output.format])
        await self._remove_older(task)
        url = result_url(self.storage, self.config.files_url, key)
        return Succeeded(result_key=key, result_url=url)

    async def _reserve(self, task: ClaimedTask) -> None:
        """Reserve the call's estimate of the job's budget, or stop the job (``max_cost``)."""
        reserved = await self.store.reserve(task, price_for(self.config.prices, task.job.model))
        if isinstance(reserved, Refused):
            self.metrics.budget_stops.inc()
            raise BudgetExceeded(reserved.reason)

    def _spend(self, task: ClaimedTask, request: ImageRequest, result: ImageResult) -> Spend:
        """What the call used and its estimated cost, counted in the metrics too."""
        model = task.job.model
        price = price_for(self.config.prices, model)
        cost = call_cost(price, result.usage, request.size)
        used = result.usage
        if used is not None:
            for kind, tokens in (
                ("input_text", used.input_text_tokens),
                ("input_image", used.input_image_tokens),
                ("output", used.output_tokens),
            ):
                if tokens:
                    self.metrics.tokens.labels(model, kind).inc(tokens)
        if cost:
            self.metrics.cost.labels(model).inc(cost)
        return Spend(usage=used, cost=cost)

    async def _call(
        self, task: ClaimedTask, provider: ImageProvider, request: ImageRequest, spent: _Spent
    ) -> bytes:
        """One provider call; what it tells about the provider's limits goes to its governor."""
        key = task.job.provider_key
        started = self.calls.start(key)
        sent_at = time.time()
        try:
            with timed(self.probe, Stage.PROVIDER_CALL):
                result = await provider.generate(request)
        except ProviderError as exc:
            self.calls.end(key)
            self.metrics.provider_calls.labels(error_kind(exc)).inc()
            observed = governor_observation(exc, sent_at, time.time(), started)
            await self._end_call(task, sent_at, observed)
            raise
        except BaseException:
            self.calls.end(key)
            raise
        self.calls.end(key)
        now = time.time()
        spent.value = self._spend(task, request, result)
        self.metrics.provider_calls.labels("ok").inc()
        self.metrics.provider_latency.observe(now - sent_at)
        observation = Observation(
            "ok",
            sent_at,
            now,
            latency=now - sent_at,
            rate=result.rate,
            started_with=started[0],
            starts=started[1],
            called_for=started[2],
        )
        await self._end_call(task, sent_at, observation)
        return result.data

    async def _end_call(
        self, task: ClaimedTask, sent_at: float, observation: Observation | None
    ) -> None:
        if observation is not None and observation.kind == "rate_limited":
            self.metrics.rate_limited.inc()
        try:
            with timed(self.probe, Stage.END_CALL):
                state = await self.store.end_call(task, sent_at, observation)
        except Exception:  # the governor learns from the next call; the image goes on
            log.exception("recording the call's end failed", job_id=task.job.job_id)
            return
        if observation is None or state is None:
            return
        self.probe.governor(task, observation, state)
        wait = long_cooldown(state, observation)
        if wait is not None:
            log.warning(
                "provider key cooling down",
                job_id=task.job.job_id,
                seconds=round(wait, 1),
                cause=state.cooldown_cause,
            )

    def _decide(self, task: ClaimedTask, exc: BaseException) -> Outcome:
        now = self.store.clock()
        state = AttemptState(
            attempts=task.attempts,
            snoozes=task.snoozes,
            billed_timeouts=task.billed_timeouts,
            first_started_at=task.first_started_at,
        )
        decision = decide(exc, state, self.config.policy, now=now, rng=self.rng)
        if not isinstance(exc, ImageStudioError):
            self._report_unexpected(task, exc)
        if isinstance(decision, FailJob):
            return Failed(error=decision.reason, error_kind=error_kind(exc), fail_job=True)
        if isinstance(decision, FailImage):
            return Failed(error=decision.reason, error_kind=error_kind(exc))
        return Requeue(
            run_after=run_after(now, decision.delay),
            error=describe(exc),
            error_kind=error_kind(exc),
            wait_seconds=decision.delay,
            consumes_attempt=decision.consumes_attempt,
            billed_timeout=decision.billed_timeout,
        )

    def _report_unexpected(self, task: ClaimedTask, exc: BaseException) -> None:
        """An error outside our tree is a bug: its traceback is logged the first time it is
        raised from a place, later ones get one line (a broken deployment failing every
        image would otherwise log one traceback per image)."""
        origin = _origin(exc)
        first = origin not in self._reported
        if first and len(self._reported) < MAX_REPORTED:
            self._reported.add(origin)
        log.error(
            "unexpected error in task" + ("" if first else " (traceback logged before)"),
            job_id=task.job.job_id,
            error_kind=type(exc).__name__,
            cause=str(exc)[:300],
            exc_info=exc if first else None,
        )

    async def _remove_older(self, task: ClaimedTask) -> None:
        """Before recording its result, delete what earlier attempts of this image (crashed
        or fenced out: they can no longer win) left behind. Newer attempts' files are theirs."""
        for key in await self.storage.list(result_prefix(task)):
            fence = attempt_of(key)
            if fence is not None and fence < task.fence:
                await self.storage.delete(key)
