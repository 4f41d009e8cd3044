"""What benchmarks and tests may watch of the scheduler, without patching it.

A ``Probe`` is told two things, on the event loop, as they happen:

- ``governor(task, observation, state)``: a provider call's end was recorded and the key's
  governor moved to ``state`` on ``observation`` (calls that tell it nothing are not shown);
- ``stage(name, seconds)``: one of the service's own steps (``Stage``) took ``seconds``.

The default sees nothing. Subclass it and override what you want to see; keep it quick and
never raise (it runs inside the task it watches).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from enum import StrEnum

from imagestudio.policy.governor import GovernorState, Observation
from imagestudio.store.records import ClaimedTask


class Stage(StrEnum):
    """The timed steps of a task's life, in their order."""

    CLAIM = "claim"  # the worker's claim of a batch
    SOURCE_FETCH = "source fetch"
    STILL_HELD = "still held"  # the check right before the provider call
    PROVIDER_CALL = "provider call"
    END_CALL = "end call"  # recording the call's end (and the governor's move)
    STORAGE_PUT = "storage put"
    FINISH = "finish"  # recording the outcome


class Probe:
    """Sees nothing (the default); subclasses override what they want to see."""

    def governor(self, task: ClaimedTask, observation: Observation, state: GovernorState) -> None:
        """The key's governor is now ``state`` after ``observation`` from ``task``'s call."""

    def stage(self, name: Stage, seconds: float) -> None:
        """``name`` took ``seconds`` (wall clock, failed steps too)."""


NO_PROBE = Probe()


@contextlib.contextmanager
def timed(probe: Probe, name: Stage) -> Iterator[None]:
    """Tell ``probe`` how long the block took, even when it raised."""
    began = time.perf_counter()
    try:
        yield
    finally:
        probe.stage(name, time.perf_counter() - began)
