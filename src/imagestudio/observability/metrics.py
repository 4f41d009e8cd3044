"""Prometheus metrics: one registry per process (and per test app)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from imagestudio.store.records import GovernorView


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
        self.tokens = Counter(
            "imagestudio_provider_tokens_total",
            "Tokens the providers' answers said calls used, by model and kind",
            ["model", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "imagestudio_estimated_cost_usd_total",
            "Estimated cost of provider calls in USD (price table), by model",
            ["model"],
            registry=self.registry,
        )
        self.budget_stops = Counter(
            "imagestudio_budget_stops_total",
            "Calls not started because the job's max_cost would have been passed",
            registry=self.registry,
        )
        self.webhook_tries = Counter(
            "imagestudio_webhook_tries_total",
            "Webhook delivery tries, by result (delivered, retry, failed)",
            ["result"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imagestudio_queue_depth",
            "Images queued",
            registry=self.registry,
        )
        labels = ["key", "api_base"]
        self.gov_window = Gauge(
            "imagestudio_provider_window",
            "Governor window W (calls allowed in flight)",
            labels,
            registry=self.registry,
        )
        self.gov_inflight = Gauge(
            "imagestudio_provider_inflight",
            "Tasks in flight per provider key (all workers)",
            labels,
            registry=self.registry,
        )
        self.gov_pace = Gauge(
            "imagestudio_provider_pace_per_minute",
            "Start pace per provider key (0: unpaced)",
            labels,
            registry=self.registry,
        )
        self.gov_cooldown = Gauge(
            "imagestudio_provider_cooldown_seconds",
            "Seconds until the key may send again",
            labels,
            registry=self.registry,
        )
        self.gov_429 = Gauge(
            "imagestudio_provider_rate_limited",
            "429s seen per provider key (all workers)",
            labels,
            registry=self.registry,
        )

    def refresh(self, queue_depth: int, governors: Sequence[GovernorView]) -> None:
        """Set the shared numbers (queue, governors), read from the database at scrape time."""
        self.queue_depth.set(queue_depth)
        now = time.time()
        for view in governors:
            labels = (view.key[:12], view.api_base)
            state = view.state
            self.gov_window.labels(*labels).set(state.effective_window)
            self.gov_inflight.labels(*labels).set(view.in_flight)
            self.gov_pace.labels(*labels).set((state.effective_rate or 0) * 60)
            self.gov_cooldown.labels(*labels).set(max(0.0, state.cooldown_until - now))
            self.gov_429.labels(*labels).set(state.rate_limited)
