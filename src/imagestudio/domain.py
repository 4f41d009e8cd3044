"""Pure types of imagestudio: the submitted payload, the normalized job, states. No I/O.

The payload is the front end's ``batch_series_generate`` body exactly as the seed shows it.
Unknown extra fields are kept (``extra="allow"``) so that ``ai_job.config`` stores what was
sent, minus the API key.

Precedence of output settings (documented in docs/payload.md):
``options.target_width``/``target_height``/``output_format``/``quality`` win over
``options.settings.imageSize``/``imageFormat``/``quality``; when neither is given the
defaults are 1024x1024 png at quality 90.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SUPPORTED_MODES = ("batch_series_generate", "single_generate")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MIN_SIDE, MAX_SIDE = 64, 4096
BATCH_SKU = "__batch__"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.PARTIALLY_FAILED, JobStatus.FAILED, JobStatus.CANCELLED}
)


class ImageStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_IMAGE_STATUSES = frozenset(
    {ImageStatus.SUCCEEDED, ImageStatus.FAILED, ImageStatus.CANCELLED}
)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SourceImage(_Open):
    url: str
    name: str | None = None
    stem: str | None = None


class OutputSettings(_Open):
    image_size: str | None = Field(default=None, alias="imageSize")
    image_format: str | None = Field(default=None, alias="imageFormat")
    quality: int | None = None


class JobOptions(_Open):
    skus: list[str] = Field(default_factory=list)
    sku_images_map: dict[str, list[SourceImage]] = Field(default_factory=dict)
    settings: OutputSettings = Field(default_factory=OutputSettings)
    api_key: str | None = None
    api_base: str | None = None
    model: str | None = None
    target_width: int | None = None
    target_height: int | None = None
    output_format: str | None = None
    quality: int | None = None
    use_english: bool = False
    prompt_templates: dict[str, str] = Field(default_factory=dict)
    api_style: Literal["images", "chat"] | None = None
    max_concurrency: int | None = Field(default=None, ge=1)
    sku_serial: bool = False


class JobPayload(_Open):
    job_id: str | None = Field(default=None, min_length=1, max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    mode: str
    sku: str | None = None
    stem: str | None = None
    options: JobOptions

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in SUPPORTED_MODES:
            raise ValueError(f"unknown mode {value!r}; supported: {', '.join(SUPPORTED_MODES)}")
        return value


# Which of a provider's limits a 429 says was hit: requests per minute, or calls in flight.
LimitKind = Literal["requests", "concurrency"]


@dataclass(frozen=True, slots=True)
class RateInfo:
    """What a provider's ``x-ratelimit-*-requests`` headers said: the per-minute request
    limit, what remains of it, and seconds until it resets."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None


@dataclass(frozen=True, slots=True)
class OutputSpec:
    width: int
    height: int
    format: str
    quality: int


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One source image of a job, in payload order."""

    position: int
    sku: str
    sku_index: int
    stem: str
    name: str
    source_url: str
    prompt: str


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    api_base: str
    model: str
    api_style: Literal["images", "chat"]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated, normalized job ready to be written by the store."""

    job_id: str | None
    user_id: str
    mode: str
    output: OutputSpec
    provider: ProviderSpec
    images: tuple[ImageSpec, ...]
    config: dict[str, Any]
    payload_hash: str
    api_key: str
    max_concurrency: int | None
    sku_serial: bool


def payload_hash(config: dict[str, Any]) -> str:
    """A stable digest of a payload (without its API key): same payload, same hash."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def redacted_config(payload: JobPayload) -> dict[str, Any]:
    """The payload as JSON with the API key removed: what ``ai_job.config`` stores."""
    config = payload.model_dump(mode="json", by_alias=True, exclude_none=False)
    config["options"].pop("api_key", None)
    return config


def rollup_status(
    counts: dict[str, int], *, cancel_requested: bool, started: bool = False
) -> JobStatus:
    """A job's status from its images' counts by status (pure). ``started``: the job has
    run before, so an image waiting again (a 429, a retry) does not make it ``queued``."""
    total = sum(counts.values())
    active = counts.get(ImageStatus.QUEUED, 0) + counts.get(ImageStatus.RUNNING, 0)
    succeeded = counts.get(ImageStatus.SUCCEEDED, 0)
    failed = counts.get(ImageStatus.FAILED, 0)
    if active:
        begun = started or total > counts.get(ImageStatus.QUEUED, 0)
        return JobStatus.RUNNING if begun else JobStatus.QUEUED
    if cancel_requested or counts.get(ImageStatus.CANCELLED, 0):
        return JobStatus.CANCELLED
    if failed == 0:
        return JobStatus.SUCCEEDED
    return JobStatus.PARTIALLY_FAILED if succeeded else JobStatus.FAILED
