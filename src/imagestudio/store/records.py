"""Plain values the store returns and takes. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from imagestudio.domain import OutputSpec, Usage
from imagestudio.policy.governor import GovernorState

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """An ``ai_job`` row without its payload (``config``, loaded by no read on the hot path).

    ``counts`` are the images by status kept on the row (``store.counts``).
    ``result_image_urls`` is ``None`` where it was not loaded (the claim's records, the job
    list, the light lookups behind paginated reads): a big job's list is megabytes.
    """

    id: str
    user_id: str
    job_id: str
    mode: str
    status: str
    total: int
    counts: dict[str, int]
    payload_hash: str
    result_image_urls: list[str] | None
    error: str | None
    api_base: str
    model: str
    api_style: str
    provider_key: str
    output: OutputSpec
    max_concurrency: int | None
    sku_serial: bool
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    max_cost: float | None = None
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Spend:
    """What one attempt's provider call used and its estimated cost (``None``: a model the
    price table lacks)."""

    usage: Usage | None = None
    cost: float | None = None


@dataclass(frozen=True, slots=True)
class SealedWebhook:
    """A job's webhook endpoint as stored: URL and secret sealed (``SecretBox``)."""

    url_enc: bytes
    secret_enc: bytes | None
    image_events: bool


@dataclass(frozen=True, slots=True)
class SubmitResult:
    job: JobRecord
    created: bool


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """An image task this worker holds a lease on; ``fence`` identifies this attempt."""

    image_id: int
    job_pk: str
    fence: int
    attempts: int
    snoozes: int
    billed_timeouts: int
    position: int
    sku: str
    stem: str
    source_url: str
    prompt: str
    first_started_at: datetime
    job: JobRecord


@dataclass(frozen=True, slots=True)
class Succeeded:
    result_key: str
    result_url: str


@dataclass(frozen=True, slots=True)
class Requeue:
    run_after: datetime
    error: str
    error_kind: str
    wait_seconds: float
    consumes_attempt: bool = True
    billed_timeout: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    error_kind: str
    fail_job: bool = False


Outcome = Succeeded | Requeue | Failed


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: int
    position: int
    sku: str
    sku_index: int
    stem: str
    name: str
    source_url: str
    prompt: str
    status: str
    attempts: int
    calls: int
    snoozes: int
    result_url: str | None
    result_key: str | None
    error: str | None
    error_kind: str | None
    run_after: datetime
    first_started_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    id: int
    image_id: int
    position: int
    sku: str
    stem: str
    fence: int
    worker: str
    started_at: datetime
    ended_at: datetime | None
    call_started_at: datetime | None
    call_ended_at: datetime | None
    outcome: str | None
    error: str | None
    wait_seconds: float | None
    usage: Usage | None = None
    cost: float | None = None


@dataclass(frozen=True, slots=True)
class Spent:
    """Tokens and estimated cost summed over some images (a SKU's)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def plus(self, input_tokens: int, output_tokens: int, cost: float | None) -> Spent:
        return Spent(
            self.input_tokens + input_tokens,
            self.output_tokens + output_tokens,
            self.cost + float(cost or 0.0),
        )


@dataclass(frozen=True, slots=True)
class JobProgress:
    """A job with its counts and, for a job of at most ``SKU_DETAIL_MAX_IMAGES`` images, its
    counts per SKU in payload order (``skus_truncated`` when left out)."""

    job: JobRecord
    counts: dict[str, int]
    per_sku: dict[str, dict[str, int]] = field(default_factory=dict)
    skus_truncated: bool = False
    per_sku_usage: dict[str, Spent] = field(default_factory=dict)

    @property
    def result_image_urls(self) -> list[str]:
        return self.job.result_image_urls or []


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a job's rows in order: ``next_offset`` is ``None`` on the last page."""

    items: list[T]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if end < self.total and self.items else None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of the outbox (``store.outbox``); ``id`` is what a consumer acks."""

    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime
    job_pk: str


@dataclass(frozen=True, slots=True)
class Claim:
    tasks: list[ClaimedTask]
    wake_at: float | None  # epoch seconds when something held back may start


@dataclass(frozen=True, slots=True)
class GovernorView:
    key: str
    api_base: str
    model: str
    state: GovernorState
    in_flight: int
