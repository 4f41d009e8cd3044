"""Cooldowns long enough to tell someone about (pure): the runner logs them with their cause,
and the job's answer shows the cause while they last (docs/governor.md)."""

from __future__ import annotations

from imagestudio.policy.governor import GovernorState, Observation

LONG_COOLDOWN = 30.0  # a cooldown longer than this is logged with its cause


def long_cooldown(state: GovernorState, obs: Observation) -> float | None:
    """The seconds of cooldown ``obs`` asked for, when longer than ``LONG_COOLDOWN`` and
    in force in ``state`` (the state after it), else None: the runner logs those, with
    ``state.cooldown_cause``."""
    asked = obs.retry_after or 0.0
    info = obs.rate
    if info is not None and info.remaining_requests == 0 and info.reset_requests is not None:
        asked = max(asked, info.reset_requests)
    wait = state.cooldown_until - obs.now
    return wait if asked > LONG_COOLDOWN and wait > LONG_COOLDOWN else None
