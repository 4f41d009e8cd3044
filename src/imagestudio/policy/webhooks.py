"""Webhooks, the pure part: which outbox events become which messages, when a failed try is
tried again, when a message is given up, and a URL as it may be shown (docs/webhooks.md).

Events (Standard Webhooks ``type``): ``job.succeeded``, ``job.partially_failed``,
``job.failed``, ``job.cancelled`` once each time a job ends (the outbox event of the change
that ended it carries ``job_ended``), and, for jobs that ask (``webhook_image_events``),
``image.succeeded`` and ``image.failed`` when an image ends.

Retries: 5 s after the first failed try by default, then each delay x4 (20 s, 80 s, 5 min,
21 min, 85 min, 5.7 h), at most 10 h, with +-20 % jitter, until the message is a day old
(``max_age``): about ten tries in a day. Then it is ``failed`` and tried no more.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

JOB_EVENTS = frozenset({"succeeded", "partially_failed", "failed", "cancelled"})
IMAGE_EVENTS = frozenset({"succeeded", "failed"})
MAX_DELAY = 10 * 3600.0


def message_type(kind: str, data: dict[str, Any], *, image_events: bool) -> list[str]:
    """The webhook messages an outbox event (its ``type`` and ``data``) makes, in order."""
    types: list[str] = []
    status = data.get("status")
    if kind == "image" and image_events and status in IMAGE_EVENTS:
        types.append(f"image.{status}")
    if data.get("job_ended"):
        ended = data.get("job_status") if kind == "image" else status
        if ended in JOB_EVENTS:
            types.append(f"job.{ended}")
    return types


def message_id(event_id: int, kind: str) -> str:
    """The ``webhook-id`` of the message ``kind`` made from outbox event ``event_id``: the
    same on every try, so a receiver can drop what it has seen."""
    return f"msg_{event_id}_{kind.replace('.', '_')}"


@dataclass(frozen=True, slots=True)
class RetryPlan:
    base: float = 5.0
    factor: float = 4.0
    max_delay: float = MAX_DELAY
    max_age: float = 86400.0
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class TryAgain:
    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


def after_failure(
    attempts: int, created_at: datetime, now: datetime, plan: RetryPlan, rng: random.Random
) -> TryAgain | GiveUp:
    """What follows the ``attempts``-th failed try of a message made at ``created_at``."""
    delay = min(plan.max_delay, plan.base * plan.factor ** max(attempts - 1, 0))
    delay *= 1 + rng.uniform(-plan.jitter, plan.jitter)
    at = now + timedelta(seconds=delay)
    age = (at - created_at).total_seconds()
    if age > plan.max_age:
        return GiveUp(f"given up after {attempts} tries over {plan.max_age:g} s")
    return TryAgain(at)


def shown_url(url: str) -> str:
    """The URL as answers show it: scheme, host, port and path; no user, password, query or
    fragment (where receivers often put a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
