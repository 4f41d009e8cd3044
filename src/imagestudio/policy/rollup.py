"""A job's status from its images' counts (pure)."""

from __future__ import annotations

from imagestudio.domain import ImageStatus, JobStatus


def rollup_status(
    counts: dict[str, int], *, cancel_requested: bool, started: bool = False
) -> JobStatus:
    """A job's status from its images' counts by status (pure). ``started``: the job has
    run before, so an image waiting again (a 429, a retry) does not make it ``queued``."""
    total = sum(counts.values())
    active = counts.get(ImageStatus.QUEUED, 0) + counts.get(ImageStatus.RUNNING, 0)
    succeeded = counts.get(ImageStatus.SUCCEEDED, 0)
    failed = counts.get(ImageStatus.FAILED, 0)
    if active:
        begun = started or total > counts.get(ImageStatus.QUEUED, 0)
        return JobStatus.RUNNING if begun else JobStatus.QUEUED
    if cancel_requested or counts.get(ImageStatus.CANCELLED, 0):
        return JobStatus.CANCELLED
    if failed == 0:
        return JobStatus.SUCCEEDED
    return JobStatus.PARTIALLY_FAILED if succeeded else JobStatus.FAILED


def failed_job_error(
    status: JobStatus, counts: dict[str, int], last_error: str | None
) -> str | None:
    """The job-level error of a job that ended ``failed`` because each of its images failed
    (pure); None for any other status. A job stopped by a job-wide error (a bad key) has
    that error already."""
    if status is not JobStatus.FAILED or not last_error:
        return None
    failed = counts.get(ImageStatus.FAILED, 0)
    if failed == 1:
        return f"the image failed: {last_error}"
    return f"all {failed} images failed; the last: {last_error}"
