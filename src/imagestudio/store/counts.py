"""A job's images counted by status, kept on its ``ai_job`` row (``n_queued`` ... ``n_cancelled``).

Every statement that changes images' statuses shifts the counts in the same transaction:
``shift(conn, {job_pk: {from_status: -n, to_status: +n}})``, built from what the statement
returned (``moves``), so the counts are exact whenever the change commits. The roll-up and the
reads take them from the job row instead of counting the job's images: O(1) per change, not
O(images). ``recount`` rebuilds them from the images (tests check the two agree).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus
from imagestudio.store.tables import ai_job, ai_job_image

COLUMNS = {status.value: f"n_{status.value}" for status in ImageStatus}
Moves = Mapping[str, Mapping[str, int]]  # job pk -> status -> change


def of(row: Row[Any]) -> dict[str, int]:
    """The counts by status on an ``ai_job`` row."""
    return {status: int(getattr(row, column)) for status, column in COLUMNS.items()}


def moves(changes: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, int]]:
    """``(job pk, from status, to status)`` per image changed -> the shifts to apply."""
    shifts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for job_pk, before, after in changes:
        if before != after:
            shifts[job_pk][before] -= 1
            shifts[job_pk][after] += 1
    return {pk: dict(by_status) for pk, by_status in shifts.items()}


async def shift(conn: AsyncConnection, changes: Moves) -> None:
    """Add each change to its job's counts (one UPDATE per job, in job order)."""
    for job_pk in sorted(changes):
        values = {
            COLUMNS[status]: getattr(ai_job.c, COLUMNS[status]) + delta
            for status, delta in changes[job_pk].items()
            if delta
        }
        if values:
            await conn.execute(update(ai_job).where(ai_job.c.id == job_pk).values(**values))


async def recount(conn: AsyncConnection, job_pk: str) -> dict[str, int]:
    """The counts rebuilt from the job's images (O(images): for checks, not the hot path)."""
    img = ai_job_image
    query = select(img.c.status, func.count()).where(img.c.job_pk == job_pk).group_by(img.c.status)
    counts = dict.fromkeys(COLUMNS, 0)
    for status, n in (await conn.execute(query)).all():
        counts[str(status)] = int(n)
    return counts
