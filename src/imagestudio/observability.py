"""Structured logs (structlog) and Prometheus metrics."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from imagestudio.store.store import Store


def configure_logging(*, json: bool = False, level: int = logging.INFO) -> None:
    """Console logs for people, JSON lines (``--log-json``) for machines."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class Metrics:
    """One registry per process (and per test app), so nothing is registered twice."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.images_finished = Counter(
            "imagestudio_images_finished_total",
            "Image attempts finished, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.provider_calls = Counter(
            "imagestudio_provider_calls_total",
            "Provider calls, by result",
            ["result"],
            registry=self.registry,
        )
        self.provider_latency = Histogram(
            "imagestudio_provider_latency_seconds",
            "Provider call latency",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "imagestudio_rate_limited_total",
            "429 rate-limit answers from providers",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imagestudio_queue_depth",
            "Images queued",
            registry=self.registry,
        )
        self.inflight = Gauge(
            "imagestudio_inflight",
            "Image tasks running in this process",
            registry=self.registry,
        )

    async def refresh(self, store: Store) -> None:
        self.queue_depth.set(await store.queue_depth())
