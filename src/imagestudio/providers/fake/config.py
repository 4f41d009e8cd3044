"""What a fake provider enforces and injects: its limits, latencies, faults and render size."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

LatencyDist = Literal["fixed", "uniform", "lognormal", "exponential"]
LATENCY_DISTS: tuple[str, ...] = ("fixed", "uniform", "lognormal", "exponential")
MIN_SIDE, MAX_SIDE = 16, 4096  # the image sides the fake accepts and draws
RATELIMIT_STYLES: tuple[str, ...] = ("openai", "ietf", "epoch", "bare")


@dataclass(slots=True)
class FakeProviderConfig:
    """Limits and faults of a fake provider. ``latency_ms`` is the mean of ``latency_dist``.

    ``render_size``: draw every image (answers and ``/samples`` photos) with this many pixels
    on its longer side, keeping the asked aspect ratio; ``None`` draws the asked size. Small
    renders keep Pillow off the CPU when a benchmark measures the client, not the drawing.
    """

    rpm: float | None = None
    concurrency: int | None = None
    latency_ms: float = 1000.0
    latency_dist: LatencyDist = "fixed"
    error_rate: float = 0.0
    seed: int | None = None
    rpm_burst: int | None = None
    max_log: int = 100_000
    ratelimit_headers: bool = True  # False: a provider that reports no x-ratelimit-* headers
    render_size: int | None = None
    # Rate-limit headers in another provider's shape (fake.wire.restyle_headers): "openai",
    # "ietf" (ratelimit-*), "epoch" (x-ratelimit-reset as unix seconds), "bare" (none, and a
    # plain "Too Many Requests" 429); and whether they come on 429s only.
    ratelimit_style: str = "openai"
    ratelimit_headers_on_429_only: bool = False
    fault: str | None = None  # a wire-fault trigger for every call, e.g. "[[drop:body]]"

    def validate(self) -> FakeProviderConfig:
        """Return self, or raise ``ValueError`` naming the bad field."""
        if self.rpm is not None and not self.rpm > 0:
            raise ValueError("rpm must be > 0 or None")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1 or None")
        if self.latency_ms < 0 or not math.isfinite(self.latency_ms):
            raise ValueError("latency_ms must be >= 0")
        if self.latency_dist not in LATENCY_DISTS:
            raise ValueError(f"latency_dist must be one of {', '.join(LATENCY_DISTS)}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.rpm_burst is not None and self.rpm_burst < 1:
            raise ValueError("rpm_burst must be >= 1 or None")
        if self.render_size is not None and not MIN_SIDE <= self.render_size <= MAX_SIDE:
            raise ValueError(f"render_size must be between {MIN_SIDE} and {MAX_SIDE} or None")
        if self.ratelimit_style not in RATELIMIT_STYLES:
            raise ValueError(f"ratelimit_style must be one of {', '.join(RATELIMIT_STYLES)}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
