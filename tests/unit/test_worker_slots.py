"""How many tasks a worker may claim: provider calls are bounded by the governors, the rest
of a task's life by ``concurrency``, everything by ``max_tasks`` (``free_slots``, pure)."""

from __future__ import annotations

import pytest

from imagestudio.scheduler.worker import MAX_TASKS, WorkerConfig, free_slots


@pytest.mark.parametrize(
    ("held", "in_call", "concurrency", "max_tasks", "free"),
    [
        (0, 0, 16, 512, 16),  # idle: at most `concurrency` start their fetch at once
        (16, 0, 16, 512, 0),  # 16 fetching or post-processing: nothing more
        (16, 16, 16, 512, 16),  # all 16 wait on the provider: 16 more may prepare
        (200, 195, 16, 512, 11),  # 200 calls in flight need no slot of their own
        (510, 510, 16, 512, 2),  # the memory cap binds
        (512, 512, 16, 512, 0),
        (520, 520, 16, 512, 0),  # never negative
        (3, 1, 1, 512, 0),  # concurrency 1: one task outside a call at a time
    ],
)
def test_free_slots(held: int, in_call: int, concurrency: int, max_tasks: int, free: int) -> None:
    assert (
        free_slots(held=held, in_call=in_call, concurrency=concurrency, max_tasks=max_tasks) == free
    )


def test_the_default_cap_is_high() -> None:
    assert WorkerConfig().max_tasks == MAX_TASKS >= 300
