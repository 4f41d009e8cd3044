"""Per-user admission at submit (pure): may this user queue a job of ``images`` more images?

A user's work in flight is their jobs not ended (``queued`` or ``running``) and those jobs'
images still ``queued`` or ``running``. A submission that would take either past its limit is
refused with a 429 and a ``Retry-After``; the caller submits again once some work has ended.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quota:
    max_jobs: int = 100
    max_images: int = 100_000


@dataclass(frozen=True, slots=True)
class InFlight:
    jobs: int
    images: int


def refusal(in_flight: InFlight, images: int, quota: Quota) -> str | None:
    """Why a new job of ``images`` images may not be admitted now, or None if it may."""
    if in_flight.jobs + 1 > quota.max_jobs:
        return (
            f"{in_flight.jobs} jobs in flight already, the most a user may have"
            f" (IMAGESTUDIO_MAX_JOBS_IN_FLIGHT={quota.max_jobs})"
        )
    if in_flight.images + images > quota.max_images:
        return (
            f"{in_flight.images} images in flight and {images} more would pass the"
            f" {quota.max_images} a user may have (IMAGESTUDIO_MAX_IMAGES_IN_FLIGHT)"
        )
    return None
