"""Per-user admission at submit (``policy.quota.refusal``), as a table."""

from __future__ import annotations

import pytest

from imagestudio.policy.quota import InFlight, Quota, refusal

QUOTA = Quota(max_jobs=3, max_images=100)


@pytest.mark.parametrize(
    ("jobs", "images", "new", "refused_for"),
    [
        (0, 0, 1, None),
        (0, 0, 100, None),
        (0, 0, 101, "images"),
        (2, 99, 1, None),
        (2, 99, 2, "images"),
        (2, 0, 1, None),
        (3, 0, 1, "jobs"),
        (3, 100, 1, "jobs"),
        (5, 500, 1, "jobs"),
    ],
)
def test_refusal(jobs: int, images: int, new: int, refused_for: str | None) -> None:
    reason = refusal(InFlight(jobs=jobs, images=images), new, QUOTA)
    if refused_for is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused_for in reason
        assert ("IMAGESTUDIO_MAX_JOBS_IN_FLIGHT" in reason) is (refused_for == "jobs")
