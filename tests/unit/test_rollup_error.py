"""The job-level error of a job whose every image failed (``policy.rollup.failed_job_error``)."""

from __future__ import annotations

import pytest

from imagestudio.domain import JobStatus
from imagestudio.policy.rollup import failed_job_error


@pytest.mark.parametrize(
    ("status", "counts", "last", "expected"),
    [
        (JobStatus.FAILED, {"failed": 1}, "404", "the image failed: 404"),
        (JobStatus.FAILED, {"failed": 5}, "404", "all 5 images failed; the last: 404"),
        (JobStatus.FAILED, {"failed": 5}, None, None),
        (JobStatus.PARTIALLY_FAILED, {"failed": 4, "succeeded": 1}, "x", None),
        (JobStatus.RUNNING, {"failed": 4, "queued": 1}, "x", None),
        (JobStatus.CANCELLED, {"failed": 4, "cancelled": 1}, "x", None),
        (JobStatus.SUCCEEDED, {"succeeded": 5}, "x", None),
    ],
)
def test_failed_job_error(
    status: JobStatus, counts: dict[str, int], last: str | None, expected: str | None
) -> None:
    assert failed_job_error(status, counts, last) == expected
