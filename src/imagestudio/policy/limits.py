"""Which limit a 429 hit, told by what it correlates with, not by its wording (pure).

A provider may limit calls in flight (concurrency) or starts per window (rate), with a window
of a second, ten seconds or a minute, and it may say so in headers of any dialect, or not at
all. What does not depend on the dialect is what we did when it said no:

- **calls in flight when the call started** (``started_with``: this process's calls of the key
  in flight, this one included): a concurrency limit says no exactly when more calls are in
  flight than it allows, so a 429 that came with clearly *fewer* calls in flight (by more
  than one call or 10%: our count includes answers on their way) than a call that was
  accepted since the last decrease cannot be a concurrency limit;
- **starts in the last window** (``starts``: this process's starts of the key in the last 1, 10
  and 60 seconds before the call, this one included; 0 for a window longer than the process
  has been calling the key, whose count would only grow): a rate limit says no when a window
  holds more starts than it allows, so a 429 that came with fewer starts in *every* window
  than an accepted call had cannot be a rate limit.

Each success raises the evidence (``Evidence``: the most calls in flight, and the most starts
per window, that a call was accepted with); a decrease of the window clears the in-flight
evidence (a window that drew a 429 is no proof any more), a decrease of the pace the starts
evidence. A 429 that only one kind explains is that kind (``classify``). One that both
explain, or neither (the limits moved), is left to the caller (``None``).

The ``x-ratelimit-*`` headers are hints whose window is not known: ``header_window`` checks
the provider's count (``limit - remaining``) against our own starts per window and takes the
window whose count it matches, instead of assuming a minute.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagestudio.domain import LimitKind

STARTS_WINDOWS = (1.0, 10.0, 60.0)  # seconds: the windows starts are counted over


@dataclass(frozen=True, slots=True)
class Evidence:
    """What accepted calls had, since the last decrease of each control."""

    in_flight: float | None = None  # the most calls in flight a call was accepted with
    starts: tuple[float, ...] | None = None  # the most starts per window (STARTS_WINDOWS)


def covered(starts: tuple[int, ...] | None, called_for: float | None) -> tuple[int, ...] | None:
    """The counts of the windows the caller has been calling the key for at least; 0 for a
    longer one (its count only grows while a run is younger than it, and tells nothing)."""
    if starts is None or called_for is None:
        return starts
    return tuple(c if called_for >= w else 0 for c, w in zip(starts, STARTS_WINDOWS, strict=True))


def accepted(
    evidence: Evidence, started_with: int | None, starts: tuple[int, ...] | None
) -> Evidence:
    """The evidence after a call was accepted (answered without a 429)."""
    in_flight = evidence.in_flight
    if started_with is not None:
        in_flight = started_with if in_flight is None else max(in_flight, started_with)
    most = evidence.starts
    if starts is not None:
        most = (
            tuple(float(s) for s in starts)
            if most is None or len(most) != len(starts)
            else tuple(max(a, float(b)) for a, b in zip(most, starts, strict=True))
        )
    return Evidence(in_flight=in_flight, starts=most)


def classify(
    evidence: Evidence, started_with: int | None, starts: tuple[int, ...] | None
) -> LimitKind | None:
    """The limit a 429 hit when the evidence tells, else None.

    ``concurrency`` fits when the 429 came with more calls in flight than any accepted call
    had; ``requests`` fits when, in some window, it came with more starts than any accepted
    call had. Exactly one fitting is the answer.
    """
    concurrency = _exceeds_in_flight(evidence, started_with)
    rate = _exceeds_starts(evidence, starts)
    if concurrency is None or rate is None:
        return None
    if concurrency and not rate:
        return "concurrency"
    if rate and not concurrency:
        return "requests"
    return None


def _exceeds_in_flight(evidence: Evidence, started_with: int | None) -> bool | None:
    """Whether the 429 came with more calls in flight than accepted calls had; a call or
    10% short of the most counts as "as many" (our count at a start includes calls the
    provider has already answered, their answers on the way)."""
    if started_with is None or evidence.in_flight is None:
        return None
    return started_with > evidence.in_flight - max(1.0, 0.1 * evidence.in_flight)


def _exceeds_starts(evidence: Evidence, starts: tuple[int, ...] | None) -> bool | None:
    if starts is None or evidence.starts is None or len(starts) != len(evidence.starts):
        return None
    return any(s > most for s, most in zip(starts, evidence.starts, strict=True))


def header_window(
    limit: int | None, remaining: int | None, starts: tuple[int, ...] | None
) -> float | None:
    """The window (seconds) a header's request limit is per, checked against what we did.

    The provider's count of our starts in its window is ``limit - remaining``; of our own
    counts per window (``STARTS_WINDOWS``), the one closest to it (in ratio) names the
    window. None without a count to check against: the caller keeps its last estimate (or
    assumes a minute, the most cautious reading)."""
    if limit is None or remaining is None or starts is None or len(starts) != len(STARTS_WINDOWS):
        return None
    used = max(1, limit - remaining)
    best: tuple[float, float] | None = None
    # Longest window first: on a tie (all counts alike, early in a run) the cautious reading.
    for window, count in reversed(list(zip(STARTS_WINDOWS, starts, strict=True))):
        if count <= 0:
            continue
        distance = max(used, count) / min(used, count)
        if best is None or distance < best[0]:
            best = (distance, window)
    return None if best is None else best[1]


def evidence_rate(evidence: Evidence, starts: tuple[int, ...] | None) -> float | None:
    """Starts per second a rate limit allows, from the evidence, when a 429 came with more
    starts than accepted calls had in some window: the shortest such window's accepted
    count over its length (a 1-second limit of 6 shows as 6 accepted in a second; one of 1
    as 1), or None (no counts)."""
    if starts is None or evidence.starts is None or len(starts) != len(evidence.starts):
        return None
    for window, count, most in zip(STARTS_WINDOWS, starts, evidence.starts, strict=True):
        if count > most >= 1:
            return most / window
    return None
