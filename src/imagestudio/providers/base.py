"""The provider interface the task runner calls, and the size rule for each model family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from imagestudio.domain import RateInfo, SourceFile


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str
    model: str
    size: str
    source: SourceFile | None = None


@dataclass(frozen=True, slots=True)
class ImageResult:
    """The image bytes and what the answer's rate-limit headers said (if anything)."""

    data: bytes
    rate: RateInfo | None = None


MAX_ANSWER_BYTES = 32 * 1024 * 1024
"""The default cap on a provider's answer (JSON with ``b64_json``) and on a result URL's body:
a 24 MB image in base64. Counted on the stream, so a 300 MB answer costs at most this much."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    api_base: str
    api_key: str
    model: str
    api_style: str  # a key of ``providers.registry.ADAPTERS``
    timeout_seconds: float = 180.0  # a total deadline per call, download included
    # Used when the adapter builds its own guarded path (no ``outbound`` given): where it may
    # connect besides public addresses, and the answer cap.
    allow_list: tuple[str, ...] = ()
    max_answer_bytes: int = MAX_ANSWER_BYTES


class ImageProvider(Protocol):
    """Generates one image. Raises ``imagestudio.errors.ProviderError`` subclasses, or
    ``UnsafeURL`` when the guarded path refuses where a request would go (the ``api_base``
    now resolving to a private address, a result URL on loopback)."""

    async def generate(self, request: ImageRequest) -> ImageResult: ...

    async def aclose(self) -> None: ...
