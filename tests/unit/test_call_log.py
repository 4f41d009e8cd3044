"""scheduler.calls.CallLog: this process's calls per key, counted at each call's start; and
policy.limits.covered, which keeps only the windows the process has called the key for."""

from __future__ import annotations

import pytest

from imagestudio.policy.limits import covered
from imagestudio.scheduler.calls import CallLog


def test_counts_in_flight_and_starts_per_window_including_the_call() -> None:
    log = CallLog()
    assert log.start("k", now=100.0) == (1, (1, 1, 1), 0.0)
    assert log.start("k", now=100.5) == (2, (2, 2, 2), 0.5)
    log.end("k")
    assert log.start("k", now=105.0) == (2, (1, 3, 3), 5.0)  # 100.0 and 100.5 are > 1 s back
    assert log.start("other", now=105.0) == (1, (1, 1, 1), 0.0)  # keys apart
    assert log.start("k", now=130.0) == (3, (1, 1, 4), 30.0)
    assert log.start("k", now=161.0) == (4, (1, 1, 3), 61.0)  # 100.x left the minute
    for _ in range(4):
        log.end("k")
    assert log.in_flight("k") == 0
    assert log.in_flight("other") == 1


@pytest.mark.parametrize(
    ("starts", "called_for", "expected"),
    [
        ((1, 1, 1), 0.0, (0, 0, 0)),
        ((2, 9, 9), 5.0, (2, 0, 0)),
        ((2, 9, 9), 10.0, (2, 9, 0)),
        ((2, 9, 40), 75.0, (2, 9, 40)),
        (None, 3.0, None),
        ((2, 9, 9), None, (2, 9, 9)),
    ],
)
def test_covered(
    starts: tuple[int, ...] | None, called_for: float | None, expected: tuple[int, ...] | None
) -> None:
    assert covered(starts, called_for) == expected
