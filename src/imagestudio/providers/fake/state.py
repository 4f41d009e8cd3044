"""Everything one fake provider remembers: its configuration, limits, random sequence,
counters, call log, ``response_format=url`` files and drawn sample photos.

One ``FakeState`` per app (``app.state.fake``); it is only touched from the event loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from imagestudio.providers.fake.config import FakeProviderConfig
from imagestudio.providers.fake.faults import CallPlan, plan_call
from imagestudio.providers.fake.images import SampleCache
from imagestudio.providers.fake.limits import Admission, Limits

_MAX_FILES = 256


def key_fingerprint(key: str | None) -> str | None:
    """What the call log keeps of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else None


@dataclass(slots=True)
class Call:
    id: int
    endpoint: str
    key: str | None
    start: float
    end: float | None = None
    status: int | None = None
    code: str | None = None
    model: str | None = None
    prompt: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FakeState:
    """Everything one fake provider remembers. Mutated only from its event loop."""

    config: FakeProviderConfig
    rng: random.Random = field(init=False)
    limits: Limits = field(init=False)
    counts: Counter[str] = field(default_factory=Counter)
    calls: deque[Call] = field(init=False)
    files: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    samples: SampleCache = field(default_factory=SampleCache)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.calls = deque(maxlen=self.config.max_log)
        self.limits = Limits(self.config, self._ids)

    def reconfigure(self, changes: dict[str, Any]) -> None:
        """Apply runtime changes (rpm, concurrency, latency, error rate, ...)."""
        fields = {f.name for f in dataclasses.fields(FakeProviderConfig)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        self.config = dataclasses.replace(self.config, **changes).validate()
        self.limits.config = self.config
        if {"rpm", "rpm_burst"} & set(changes):
            self.limits.rebuild_limiter()
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        if "max_log" in changes:
            self.calls = deque(self.calls, maxlen=self.config.max_log)

    def reset(self) -> None:
        """Counters, log and files cleared, the random sequence and the limiter restarted."""
        self.counts.clear()
        self.calls.clear()
        self.files.clear()
        self.rng = random.Random(self.config.seed)
        self.limits.reset()

    def open_call(self, endpoint: str, key: str | None) -> Call:
        call = Call(
            id=next(self._ids), endpoint=endpoint, key=key_fingerprint(key), start=time.time()
        )
        self.calls.append(call)
        self.counts["requests"] += 1
        return call

    def close_call(self, call: Call, status: int, code: str | None) -> None:
        call.end, call.status, call.code = time.time(), status, code
        self.counts["ok" if status < 300 else str(status)] += 1

    def admit(self, model: str) -> Admission:
        """Take a concurrency slot and an rpm token, or raise a 429 ``Reject``."""
        return self.limits.admit(time.monotonic(), model)

    def plan(self, admission: Admission, prompt: str) -> CallPlan:
        """The admitted call's latency and fault, its planned end noted for the limits."""
        plan = plan_call(self.rng, self.config, prompt)
        self.limits.plan_end(admission, plan.latency)
        return plan

    def release(self, admission: Admission) -> None:
        self.limits.release(admission)

    def store_file(self, data: bytes) -> str:
        file_id = uuid.uuid4().hex
        self.files[file_id] = data
        while len(self.files) > _MAX_FILES:
            self.files.popitem(last=False)
        return file_id

    def stats(self, with_calls: bool = True) -> dict[str, Any]:
        totals = {
            name: self.counts.get(name, 0)
            for name in ("requests", "ok", "429", "500", "401", "400")
        }
        in_flight = len(self.limits.in_flight)
        totals |= {"peak_in_flight": self.limits.peak_in_flight, "in_flight": in_flight}
        by_status = {name: n for name, n in self.counts.items() if name != "requests"}
        answer: dict[str, Any] = {
            "totals": totals,
            "by_status": by_status,
            "config": self.config.as_dict(),
        }
        if with_calls:
            answer["calls"] = [call.as_dict() for call in self.calls]
        return answer
