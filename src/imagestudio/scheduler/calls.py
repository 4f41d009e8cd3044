"""This process's provider calls per key: how many are in flight and when they started, for
the governor's evidence (``policy.limits``: what a 429 correlates with).

Counted per process: with several worker processes on one key each sees its own share, so
the evidence is weaker there (docs/governor.md says what that costs).
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque

from imagestudio.policy.limits import STARTS_WINDOWS

HORIZON = max(STARTS_WINDOWS)


class CallLog:
    def __init__(self) -> None:
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._starts: defaultdict[str, deque[float]] = defaultdict(deque)
        self._first: dict[str, float] = {}  # the key's first start seen by this process

    def start(self, key: str, now: float | None = None) -> tuple[int, tuple[int, ...], float]:
        """A call of ``key`` starts: the calls in flight with it and its starts per window
        (``STARTS_WINDOWS``), this one included, and for how many seconds this process has
        been calling the key (a window longer than that holds every start so far)."""
        now = time.monotonic() if now is None else now
        first = self._first.setdefault(key, now)
        self._in_flight[key] += 1
        starts = self._starts[key]
        starts.append(now)
        while starts and starts[0] < now - HORIZON:
            starts.popleft()
        ordered = list(starts)  # appended in time order
        counts = tuple(len(ordered) - bisect.bisect_left(ordered, now - w) for w in STARTS_WINDOWS)
        return self._in_flight[key], counts, now - first

    def end(self, key: str) -> None:
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
            if not self._starts[key]:
                del self._starts[key]

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)
