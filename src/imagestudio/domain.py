"""Pure types of imagestudio: states, the normalized job, what flows between the parts.

No I/O and no third-party imports, so every layer (and the CLI client) can import it cheaply.
The submitted payload's shape (pydantic) is intake's: ``imagestudio.jobs.payload``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

# Where the API lives (a fixed contract, SPEC.md); result files of local storage are under it.
API_PREFIX = "/api/v1/image_studio"
FILES_PATH = f"{API_PREFIX}/files"

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MIN_SIDE, MAX_SIDE = 64, 4096


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


# How a provider is called ("images": the images API; "chat": chat completions that return
# images). The styles are the keys of ``imagestudio.providers.registry.ADAPTERS``, the one list
# of them; intake refuses any other.
ApiStyle = str

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
class Usage:
    """What a provider's answer said one call used (OpenAI's ``usage``): input text and
    image tokens, and output (image) tokens. ``None`` where the answer did not say."""

    input_text_tokens: int | None = None
    input_image_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def input_tokens(self) -> int:
        return (self.input_text_tokens or 0) + (self.input_image_tokens or 0)


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
    api_style: ApiStyle


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
    max_cost: float | None = None
    webhook: WebhookSpec | None = None


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    """Where a job's events go: the URL, its own ``whsec_`` secret (``None``: the server's,
    IMAGESTUDIO_WEBHOOK_SECRET), and whether per-image events are sent too."""

    url: str
    secret: str | None
    image_events: bool = False


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A source image ready to upload: its bytes, a filename and its MIME type."""

    data: bytes
    filename: str
    mime: str
