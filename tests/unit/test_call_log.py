"""scheduler.calls.CallLog: this process's calls per key, counted at each call's start."""

from __future__ import annotations

from imagestudio.scheduler.calls import CallLog


def test_counts_in_flight_and_starts_per_window_including_the_call() -> None:
    log = CallLog()
    # a window longer than the key has been called counts 0: its count would only grow
    assert log.start("k", now=100.0) == (1, (0, 0, 0))
    assert log.start("k", now=100.5) == (2, (0, 0, 0))
    log.end("k")
    assert log.start("k", now=105.0) == (2, (1, 0, 0))  # 100.0 and 100.5 are > 1 s back
    assert log.start("other", now=105.0) == (1, (0, 0, 0))  # keys apart
    assert log.start("k", now=130.0) == (3, (1, 1, 0))
    assert log.start("k", now=161.0) == (4, (1, 1, 3))  # 105, 130, 161: 100.x left the minute
    for _ in range(4):
        log.end("k")
    assert log.in_flight("k") == 0
    assert log.in_flight("other") == 1
