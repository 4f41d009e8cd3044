"""The provider interface the task runner calls, and the size rule for each model family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from imagestudio.domain import RateInfo, SourceFile, Usage


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str
    model: str
    size: str
    source: SourceFile | None = None


@dataclass(frozen=True, slots=True)
class ImageResult:
    """The image bytes, what the answer's rate-limit headers said and what its ``usage``
    said the call used (each ``None`` if the answer did not say)."""

    data: bytes
    rate: RateInfo | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    api_base: str
    api_key: str
    model: str
    api_style: str  # a key of ``providers.registry.ADAPTERS``
    timeout_seconds: float = 180.0


class ImageProvider(Protocol):
    """Generates one image. Raises only ``imagestudio.errors.ProviderError`` subclasses."""

    async def generate(self, request: ImageRequest) -> ImageResult: ...

    async def aclose(self) -> None: ...
